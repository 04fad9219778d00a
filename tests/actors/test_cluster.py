"""Multi-process cluster tests on loopback: real node processes, real ZeroMQ, real clients."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from actors.client import ClusterClient
from exchange.orders import Accepted, Cancelled, Fill, Modified, NewOrder, Rejected, Side
from tests.actors.cluster_helpers import ouch_reports, start_cluster, wait_for, write_config


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet (PID 1 here need not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _descendants(pid: int) -> set[int]:
    children: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            children.add(int(entry))
            children |= _descendants(int(entry))
    return children


@pytest.fixture
def cluster(tmp_path):
    path = write_config(tmp_path)
    running = start_cluster(path, tmp_path / "logs")
    yield running
    running.stop()


def _terminal(events, order_ids):
    """True when every order id got accepted-or-rejected."""
    acked = {e.order_id for e in events if isinstance(e, (Accepted, Rejected))}
    return set(order_ids) <= acked


def test_orders_across_two_book_nodes_trade_and_report(cluster):
    endpoint = cluster.config.client_endpoint()
    with ClusterClient(endpoint, name="maker") as maker, ClusterClient(endpoint, name="taker") as taker:
        for i, symbol in enumerate(("AAPL", "MSFT", "GOOG", "TSLA")):
            maker.new_order(symbol, 10 + i, "A1", "sell", 300, price=1_000_000)
        maker_events = maker.collect(lambda ev: len([e for e in ev if isinstance(e, Accepted)]) == 4)
        assert {e.symbol for e in maker_events if isinstance(e, Accepted)} == {"AAPL", "MSFT", "GOOG", "TSLA"}
        for i, symbol in enumerate(("AAPL", "MSFT", "GOOG", "TSLA")):
            taker.new_order(symbol, 20 + i, "A2", "buy", 200, price=1_000_000)
        taker_events = taker.collect(lambda ev: len([e for e in ev if isinstance(e, Fill)]) == 4)
        fills = [e for e in taker_events if isinstance(e, Fill)]
        assert sorted((f.symbol, f.qty, f.price, f.taker_order_id, f.maker_order_id) for f in fills) == [
            ("AAPL", 200, 1_000_000, 20, 0), ("GOOG", 200, 1_000_000, 22, 0),
            ("MSFT", 200, 1_000_000, 21, 0), ("TSLA", 200, 1_000_000, 23, 0)]
        # The counterparty stays anonymous; the maker hears of its fills in its own ids.
        assert all(f.maker_account == "" for f in fills)
        maker_fills = maker.collect(lambda ev: len([e for e in ev if isinstance(e, Fill)]) == 4)
        assert sorted(f.maker_order_id for f in maker_fills if isinstance(f, Fill)) == [10, 11, 12, 13]
        # Nobody touches another session's orders: the taker cannot cancel the maker's order 10.
        taker.cancel("AAPL", 10)
        reject = taker.collect(lambda ev: any(isinstance(e, Rejected) for e in ev))
        assert [(e.reason, e.op) for e in reject if isinstance(e, Rejected)] == [("unknown_order", "cancel")]
        maker.cancel("AAPL", 10)
        cancelled = maker.collect(lambda ev: any(isinstance(e, Cancelled) for e in ev))
        assert [(e.order_id, e.qty, e.reason) for e in cancelled if isinstance(e, Cancelled)] == [(10, 100, "user")]
        # A cut takes shares off what is open (100 of order 11 after its fill), priority kept; all of it cancels.
        maker.reduce("MSFT", 11, 30)
        modified = maker.collect(lambda ev: any(isinstance(e, Modified) for e in ev))
        assert [(e.order_id, e.qty, e.kept_priority) for e in modified if isinstance(e, Modified)] == [(11, 70, True)]
        maker.reduce("MSFT", 11, 500)
        cancelled = maker.collect(lambda ev: any(isinstance(e, Cancelled) for e in ev))
        assert [(e.order_id, e.qty, e.reason) for e in cancelled if isinstance(e, Cancelled)] == [(11, 70, "user")]


def test_sequence_numbers_have_no_gaps_and_market_data_sees_every_event(cluster):
    endpoint = cluster.config.client_endpoint()
    clients = [ClusterClient(endpoint, name=f"c{i}") for i in range(3)]
    try:
        sent = []
        for n in range(300):
            client = clients[n % 3]
            symbol = ("AAPL", "GOOG", "MSFT")[n % 3]
            side = "buy" if n % 2 else "sell"
            price = 1_000_000 + (n % 7 - 3) * 100
            client.new_order(symbol, n + 1, f"A{n % 4 + 1}", side, 100, price=price)
            sent.append((client, n + 1))
        events = {c.name: [] for c in clients}
        for client in clients:
            ids = [oid for c, oid in sent if c is client]
            events[client.name] = client.collect(lambda ev, ids=ids: _terminal(ev, ids), timeout=15)
            assert _terminal(events[client.name], ids)
    finally:
        for client in clients:
            client.close()

    def md_caught_up() -> bool:
        cluster.pump(0.05)
        md = cluster.nodes["md"].stats.get("actors", {}).get("md/0", {})
        books = {s: b["seq"] for s, b in md.get("books", {}).items()}
        book_seqs = {}
        for node in ("book1", "book2"):
            for name, stats in cluster.nodes[node].stats.get("actors", {}).items():
                book_seqs[name.split("/")[1]] = stats.get("seq")
        return bool(books) and all(books.get(s) == q for s, q in book_seqs.items() if q)

    assert wait_for(md_caught_up, timeout=10)
    md = cluster.nodes["md"].stats["actors"]["md/0"]
    assert md["gaps"] == 0
    assert md["anomalies"] == 0


def test_killed_book_node_gives_rejects_not_hangs(cluster):
    endpoint = cluster.config.client_endpoint()
    with ClusterClient(endpoint, name="k") as client:
        client.new_order("GOOG", 1, "A1", "buy", 100, price=1_000_000)
        client.new_order("AAPL", 2, "A1", "buy", 100, price=1_000_000)
        assert _terminal(client.collect(lambda ev: _terminal(ev, [1, 2])), [1, 2])
        cluster.kill_node("book2")
        assert wait_for(lambda: (cluster.pump(0.05), not cluster.alive()["book2"])[1], timeout=5)
        # The resting GOOG order is gone with its node, and the owner is told so.
        gone = client.collect(lambda ev: any(isinstance(e, Cancelled) for e in ev), timeout=5)
        assert [(e.order_id, e.qty, e.reason) for e in gone if isinstance(e, Cancelled)] == [
            (1, 100, "instrument_unavailable")], gone
        started = time.monotonic()
        client.new_order("GOOG", 3, "A1", "buy", 100, price=1_000_000)
        client.new_order("TSLA", 4, "A1", "buy", 100, price=1_000_000)
        client.new_order("AAPL", 5, "A1", "buy", 100, price=1_000_000)
        events = client.collect(lambda ev: _terminal(ev, [3, 4, 5]), timeout=5)
        assert time.monotonic() - started < 5
        outcome = {e.order_id: (type(e).__name__, getattr(e, "reason", None)) for e in events
                   if isinstance(e, (Accepted, Rejected))}
        assert outcome == {3: ("Rejected", "instrument_unavailable"), 4: ("Rejected", "instrument_unavailable"),
                           5: ("Accepted", None)}
    assert any("BOOK2 DIED" in line for line in cluster.events)


def test_an_ouch_order_on_a_killed_book_node_is_canceled_with_what_was_left(tmp_path):
    from actors.ouch_client import OuchClient
    from exchange.accounts import hash_password

    user = f'[[user]]\nname = "ALICE"\npassword_hash = "{hash_password("alice-pw", n=1 << 10)}"\naccounts = ["A1"]\n'
    cluster = start_cluster(write_config(tmp_path, extra=user), tmp_path / "logs")
    try:
        client = OuchClient(*cluster.config.ouch_address(), "ALICE", "alice-pw", next_seq=0)
        try:
            ref = client.enter_order("GOOG", "B", 300, 1_000_000)
            assert [m["type"] for m in ouch_reports(client, 1)] == ["A"]
            cluster.kill_node("book2")
            # A Canceled that takes the whole order off (an OUCH client subtracts the quantity from what it
            # thinks is open: 0 would leave it open forever), reason "Z", system cancel.
            got = ouch_reports(client, 1)
            assert [(m["type"], m["user_ref_num"], m["quantity"], m["reason"]) for m in got] == [
                ("C", ref, 300, "Z")], got
        finally:
            client.close()
    finally:
        cluster.stop()


def test_shutdown_leaves_no_process_behind(tmp_path):
    path = write_config(tmp_path)
    cluster = start_cluster(path, tmp_path / "logs")
    pids = {node.process.pid for node in cluster.nodes.values()}
    assert pids <= _descendants(os.getpid())
    codes = cluster.stop()
    assert codes == dict.fromkeys(codes, 0)
    for pid in pids:
        assert _gone(pid)
    assert not (_descendants(os.getpid()) & pids)


def test_nodes_die_with_a_killed_launcher(tmp_path):
    """Even kill -9 of the launcher leaves no node behind (PR_SET_PDEATHSIG)."""
    import subprocess
    import sys

    path = write_config(tmp_path)
    launcher = subprocess.Popen([sys.executable, "-m", "actors.cli", "run", "--config", str(path), "--no-demo",
                                 "--duration", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=_run_env(tmp_path))
    try:
        assert wait_for(lambda: len(_descendants(launcher.pid)) >= 5, timeout=20)
        nodes = _descendants(launcher.pid)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(5)

        def all_gone() -> bool:
            return all(_gone(pid) for pid in nodes)

        assert wait_for(all_gone, timeout=10), "node processes outlived their launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_ctrl_c_to_the_terminal_group_is_an_orderly_shutdown(tmp_path):
    """Ctrl-C in a terminal signals the launcher and every node at once: the launcher alone shuts down, nobody
    is reported dead, and it exits 0 with its summary."""
    import subprocess
    import sys

    path = write_config(tmp_path)
    launcher = subprocess.Popen([sys.executable, "-m", "actors.cli", "run", "--config", str(path), "--no-demo",
                                 "--duration", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True, env=_run_env(tmp_path))
    try:
        assert wait_for(lambda: len(_descendants(launcher.pid)) >= 5, timeout=20)
        nodes = _descendants(launcher.pid)
        # At once, while the nodes are still starting (CI once sent it 1 s in, and a node still importing died).
        os.killpg(launcher.pid, signal.SIGINT)
        output, _ = launcher.communicate(timeout=30)
        assert launcher.returncode == 0, output[-3000:]
        assert "DIED" not in output and "matchwire summary" in output, output[-3000:]
        assert "nodes exited: gateway=0, risk=0, book1=0, book2=0, md=0" in output, output[-3000:]
        assert all(_gone(pid) for pid in nodes)
    finally:
        if launcher.poll() is None:
            launcher.kill()


def _run_env(tmp_path: Path) -> dict[str, str]:
    """The environment for a ``matchwire run`` under test: its run directory (logs, journals) inside ``tmp_path``."""
    return {**os.environ, "TMPDIR": str(tmp_path)}


def _run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("matchwire-run-*"))


def test_a_clean_run_removes_its_own_journals_and_keeps_its_logs(tmp_path):
    """Without a configured state_dir the journals serve one run (the next starts a fresh directory): after a clean
    run they go; every `make run` had left its journals and archives behind in /tmp."""
    import subprocess
    import sys

    path = write_config(tmp_path, extra='[durability]\nenabled = true\nfsync = "none"\n')
    result = subprocess.run([sys.executable, "-m", "actors.cli", "run", "--config", str(path), "--no-demo",
                             "--duration", "2"], capture_output=True, text=True, timeout=90, env=_run_env(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [run_dir] = _run_dirs(tmp_path)
    assert f"logs in {run_dir} (this run's journals removed" in result.stdout, result.stdout[-2000:]
    assert (run_dir / "gateway.log").is_file() and not (run_dir / "state").exists()
    # Every node reported its CPU: the summary says what each cost the machine.
    [cpu] = [line for line in result.stdout.splitlines() if line.startswith("  CPU while running: ")]
    assert all(f" {node} " in cpu for node in ("gateway", "risk", "book1", "book2", "md")), cpu


def _node_pid(launcher_pid: int, name: str) -> int | None:
    for pid in _descendants(launcher_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if f"\0--name\0{name}\0".encode() in cmdline.read():
                    return pid
        except OSError:
            continue
    return None


def _read_until(launcher, text: str, timeout: float = 60.0) -> str:  # noqa: ANN001
    """The launcher's output up to and including the line holding ``text`` (ready, say), as it comes."""
    import select

    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([launcher.stdout], [], [], 0.2)[0]:
            continue
        line = launcher.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"no {text!r} from the launcher:\n{''.join(seen)[-3000:]}")


@pytest.mark.parametrize("flags", [[], ["--no-restart"]], ids=["journals", "no-restart"])
def test_with_journals_the_launcher_starts_a_killed_node_again(tmp_path, flags):
    import subprocess
    import sys

    path = write_config(tmp_path, extra='[durability]\nenabled = true\nfsync = "batch"\n')
    launcher = subprocess.Popen([sys.executable, "-m", "actors.cli", "run", "--config", str(path), "--no-demo",
                                 "--duration", "8", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True, env=_run_env(tmp_path))
    try:
        started = _read_until(launcher, "cluster ready")
        os.kill(_node_pid(launcher.pid, "book2"), signal.SIGKILL)
        output, _ = launcher.communicate(timeout=60)
        output = started + output
        assert "NODE BOOK2 DIED (exit code -9)" in output, output[-3000:]
        if flags:
            assert "restarting" not in output and launcher.returncode == 1, output[-3000:]
            assert "book2=-9" in output, output[-3000:]
        else:
            assert "restarting node book2 from its journals" in output, output[-3000:]
            assert "node book2 is back" in output, output[-3000:]
            assert "nodes started again after dying: book2 x1" in output, output[-3000:]
            assert "nodes exited: gateway=0, risk=0, book1=0, book2=0, md=0" in output, output[-3000:]
            assert launcher.returncode == 0, output[-3000:]
        # A node died: the run's journals stay for inspection.
        [run_dir] = _run_dirs(tmp_path)
        assert f"journals kept for inspection in {run_dir / 'state'}" in output, output[-3000:]
        assert (run_dir / "state" / "book2").is_dir()
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_make_run_trades_and_its_demo_traders_ride_out_a_gateway_restart(tmp_path):
    """What `make run` runs (the embedded default with its demo traders, on ports of its own here), with the
    gateway killed mid-run: started again from its journals, the traders log in again, trading goes on."""
    import re
    import subprocess
    import sys

    from actors.config import default_config_text
    from actors.ports import free_port_block

    base = free_port_block(100)
    text = default_config_text()
    for key, port in (("base_port = 7100", base), ("control_port = 7190", base + 90),
                      ("client_port = 7191", base + 91), ("ouch_port = 7195", base + 95),
                      ("base_port = 9100", base + 50), ('"127.0.0.1:31002"', f'"127.0.0.1:{base + 97}"'),
                      ('"239.192.0.1:31000"', f'"239.192.0.1:{base + 98}"')):
        assert key in text, key
        text = text.replace(key, key.split("=")[0] + f"= {port}" if "=" in key else str(port))
    path = tmp_path / "default.toml"
    path.write_text(text)
    launcher = subprocess.Popen([sys.executable, "-m", "actors.cli", "run", "--config", str(path), "--duration", "14"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
                                env=_run_env(tmp_path))
    try:
        started = _read_until(launcher, "demo traders over OUCH")
        time.sleep(3.0)  # trading
        os.kill(_node_pid(launcher.pid, "gateway"), signal.SIGKILL)
        output, _ = launcher.communicate(timeout=90)
        output = started + output
        tail = output[-4000:]
        assert launcher.returncode == 0, tail
        assert "node gateway is back" in output and "trader error" not in output, tail
        assert re.search(r"demo traders logged in again \d+ times", output), tail
        assert re.search(r"messages sent over OUCH \d+ \(\d+/s of the 2000/s asked\)", output), tail
        # The gateway's CPU before its restart is not known: the summary says it left it out.
        [cpu] = [line for line in output.splitlines() if line.startswith("  CPU while running: ")]
        assert "gateway 0." not in cpu and cpu.endswith("not counted: gateway (restarted or silent)"), cpu
        trades = int(re.search(r"  trades (\d+) ", output).group(1))
        executions = int(re.search(r"executions reported to traders (\d+)", output).group(1))
        assert trades > 100 and executions > 100, tail
        # Trading went on after the restart: the live view's last lines show orders.
        rates = [int(m) for m in re.findall(r"orders/s\s+(\d+)", output)]
        assert rates and min(rates[-3:]) > 0, tail
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_a_second_cluster_on_the_same_ports_is_refused_with_a_reason(tmp_path):
    import socket
    import subprocess
    import sys

    from actors.config import load_config

    path = write_config(tmp_path)
    host, port = load_config(path).control_endpoint(bind=True).rsplit("/", 1)[1].rsplit(":", 1)
    with socket.socket() as taken:  # as a running cluster's launcher would hold it
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((host, int(port)))
        taken.listen()
        result = subprocess.run([sys.executable, "-m", "actors.cli", "run", "--config", str(path), "--no-demo",
                                 "--duration", "1"], capture_output=True, text=True, timeout=60,
                                env=_run_env(tmp_path))
    assert result.returncode == 1
    assert "cannot listen for the nodes' reports" in result.stderr and "another cluster" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def test_overload_gives_busy_rejects_and_loses_nothing(tmp_path):
    # Tiny queues: the cluster must push back rather than buffer without bound.
    path = write_config(tmp_path, send_hwm=1, max_backlog=1, socket_buffer=4096,
                        extra="[risk.defaults]\nmax_open_orders = 1000000\n")
    cluster = start_cluster(path, tmp_path / "logs")
    try:
        with ClusterClient(cluster.config.client_endpoint(), name="blaster", send_hwm=100_000) as client:
            sent_ids = []
            for n in range(1, 40_001):
                client.queue(NewOrder(("AAPL", "GOOG")[n % 2], n, "A1", Side.BUY if n % 2 else Side.SELL,
                                      1_000_000 + (n % 50) * 100, 100))
                if n % 200 == 0:
                    assert client.flush()
                    sent_ids.extend(range(n - 199, n + 1))
            events = client.collect(lambda ev: _terminal(ev, sent_ids), timeout=60)
        answered = {}
        for event in events:
            if isinstance(event, (Accepted, Rejected)):
                assert event.order_id not in answered, f"order {event.order_id} answered twice"
                answered[event.order_id] = event
        assert set(answered) == set(sent_ids), f"{len(set(sent_ids) - set(answered))} orders never answered"
        reasons = {e.reason for e in answered.values() if isinstance(e, Rejected)}
        assert "busy" in reasons, "no backpressure seen"
        assert reasons <= {"busy"}
    finally:
        cluster.stop()


def test_nodes_freeze_what_survives_and_report_garbage_collector_pauses(cluster):
    # Every node freezes its long-lived objects once a second (actors/node.py tune_gc), so a collection
    # never walks the whole heap; the statistics say how often and how long the collector stopped the node.
    def reported() -> bool:
        cluster.pump(0.05)
        return all(node.stats.get("gc", {}).get("freezes", 0) >= 2 for node in cluster.nodes.values())

    assert wait_for(reported, timeout=10), {n: node.stats.get("gc") for n, node in cluster.nodes.items()}
    for node in cluster.nodes.values():
        gc_stats = node.stats["gc"]
        assert gc_stats["mode"] == "freeze" and gc_stats["frozen"] > 1000 and len(gc_stats["collections"]) == 3


def test_gc_pauses_counts_each_collection_and_its_longest_pause():
    import gc

    from actors.node import GcPauses

    pauses = GcPauses()
    pauses.install()
    try:
        garbage = [[i] for i in range(200_000)]
        for item in garbage:
            item.append(item)  # cycles: only the collector frees them
        del garbage, item
        gc.collect()
    finally:
        pauses.remove()
    report = pauses.report()
    assert report["collections"][2] >= 1 and report["total_ms"][2] > 0 and report["max_us"] > 0
    assert pauses.report()["max_us"] == 0  # the longest pause is per report
