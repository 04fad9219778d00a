"""The cluster benchmark runs end to end: every order it offers is answered, in each placement of the actors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.bench_cluster import _zmq_plan
from exchange.orders import CancelOrder, NewOrder
from exchange.wire import record_to_command


@pytest.mark.parametrize("placement, tick", [("per-role", "0"), ("single", "0"), ("per-role", "2000")])
def test_bench_cluster_answers_every_order(placement, tick, tmp_path):
    # A 2 ms send tick: the orders due go out together (about two per message at 800/s), and all are answered.
    done = subprocess.run([sys.executable, "-m", "actors.bench_cluster", "--quick", "--book-nodes", "1",
                           "--rates", "800", "--seconds", "0.5", "--placement", placement, "--send-tick-us", tick],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if "offered=800" in line)
    sent, answered = int(re.search(r"answered=(\d+)/(\d+)", line)[2]), int(re.search(r"answered=(\d+)/", line)[1])
    assert sent == 400 and answered == sent, line
    assert re.search(r"cpu_us_per_order=.*client:\d+", line), line
    assert ("placement=single" in line) == (placement == "single")
    messages = int(re.search(r"client_messages=(\d+)", line)[1])
    assert (messages < 300) == (tick != "0"), line  # 400 orders: about 200 messages with the tick, ~400 without
    # A clean run leaves nothing behind: its cluster's directory (configuration, logs) went with it.
    assert not list(tmp_path.glob("matchwire-bench-*")), list(tmp_path.iterdir())
    assert "logs of this cluster are kept" not in done.stderr


def test_the_plan_is_deterministic_and_cancels_only_live_orders():
    plan = _zmq_plan(2000, seed=7)
    assert plan == _zmq_plan(2000, seed=7) and plan != _zmq_plan(2000, seed=8)
    live = set()
    for record in plan:
        command = record_to_command(record)[0]
        if type(command) is NewOrder:
            live.add(command.order_id)
        else:
            assert type(command) is CancelOrder and command.order_id in live
            live.discard(command.order_id)


def test_bench_instruments_prints_every_node_and_answers_every_instrument(capsys):
    from actors import bench_instruments

    assert bench_instruments.main(["--instruments", "30", "--idle", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "accepted=30/30" in out
    for node in ("gateway", "risk", "book1", "book2", "md"):
        line = next(line for line in out.splitlines() if line.startswith(f"node={node} "))
        threads = int(line.split("threads=")[1].split()[0])
        assert threads > (15 if node.startswith("book") else 2), line  # one thread per book actor
    with pytest.raises(SystemExit):
        bench_instruments.main(["--instruments", "1"])


@pytest.mark.parametrize("options", [[], ["--client", "ouch", "--fsync", "none"]], ids=["binary", "ouch-journals"])
def test_bench_memory_prints_every_node_after_every_run(capsys, options):
    from actors import bench_memory

    assert bench_memory.main(["--runs", "2", "--seconds", "0.5", "--rate", "2000", *options]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("run=")]
    assert [line.split()[0] for line in lines] == ["run=1", "run=2"]
    for line in lines:
        sizes = dict(item.split("=") for item in line.split("rss_mb: ")[1].split(" gateway_")[0].split())
        assert set(sizes) == {"gateway", "risk", "book1", "md"} and all(int(v) > 10 for v in sizes.values()), line
        assert "gateway_live_orders=" in line and "risk0_open_orders=" in line and " rejected=" in line
        # The gateway's OUCH streams go to disk: it says how many messages it still holds in memory.
        assert "soup_messages_in_memory=" in line, line
    with pytest.raises(SystemExit):
        bench_memory.main(["--runs", "0"])


def test_bench_instruments_names_a_node_that_refuses_to_start():
    import resource
    import subprocess
    import sys

    limits = (1024, 1024)  # 400 books need some 1,500 files a book node
    result = subprocess.run([sys.executable, "-m", "actors.bench_instruments", "--instruments", "400"],
                            capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "bench_instruments: node book" in result.stderr and "open files" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_negative_send_tick_is_refused():
    done = subprocess.run([sys.executable, "-m", "actors.bench_cluster", "--quick", "--send-tick-us", "-5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--send-tick-us must be 0 or more" in done.stderr


def test_a_bench_whose_node_died_keeps_the_logs_and_says_where(tmp_path):
    """The other branch of the clean-up: a cluster that lost a node keeps its logs for a post-mortem (its journals,
    only bulk, go) and the bench says where they are."""
    bench = subprocess.Popen([sys.executable, "-m", "actors.bench_cluster", "--quick", "--book-nodes", "1",
                              "--rates", "500", "--seconds", "4", "--fsync", "none"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        def market_data_node() -> int | None:
            for entry in os.listdir("/proc"):
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                        arguments = cmdline.read().split(b"\0")
                except OSError:
                    continue
                if b"md" in arguments and str(tmp_path).encode() in b" ".join(arguments):
                    return int(entry)
            return None

        deadline = time.monotonic() + 60
        while (pid := market_data_node()) is None and time.monotonic() < deadline and bench.poll() is None:
            time.sleep(0.1)
        assert pid is not None, bench.communicate(timeout=60)
        time.sleep(2.0)  # ready and under load
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
    kept = re.search(r"# the nodes' logs of this cluster are kept in (\S+)", stderr)
    assert kept, stderr[-3000:]
    logs = Path(kept[1])
    assert logs.parent.parent == tmp_path and (logs / "md.log").is_file(), sorted(tmp_path.rglob("*"))
    assert not (logs / "state").exists()
