"""The launcher: ``matchwire run`` starts a configuration's nodes on this machine, drives demo
traders, shows a live view, and shuts everything down with a summary.

Each node is a child process that dies with the launcher (PR_SET_PDEATHSIG), and the launcher
kills any child still alive when it exits, however it exits: no orphans. A child that dies
while the cluster runs is reported loudly, with the instruments that became unavailable, and, when
the configuration has journals, started again: it recovers from them and the cluster carries on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import zmq
from hdrh.histogram import HdrHistogram

from actors.config import ClusterConfig, most_traded, name_list
from actors.demo import DemoTrader, MarketMaker, Taker, TraderStats

RESTARTS_PER_MINUTE = 3  # a node that dies this often is broken, not unlucky: it is left dead


@dataclass
class NodeProcess:
    """A running node: its process, log file, and what the launcher heard from it."""

    name: str
    process: subprocess.Popen
    log_path: Path
    ready: bool = False
    last_report: float = 0.0
    stats: dict = field(default_factory=dict)
    reported_dead: bool = False
    failures: list = field(default_factory=list)
    restarted: bool = False  # started again by :meth:`Cluster.restart_dead`
    given_up: bool = False  # died too often to be started again


class Cluster:
    """A local cluster of node processes, controlled from this (launcher) process."""

    def __init__(self, config: ClusterConfig, config_path: str | None, log_dir: Path | None = None,
                 out: TextIO = sys.stdout) -> None:
        self.config = config
        self.config_path = config_path
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="matchwire-run-"))
        self.out = out
        self.nodes: dict[str, NodeProcess] = {}
        self.context = zmq.Context()
        self.control = self.context.socket(zmq.PULL)
        self.control.setsockopt(zmq.LINGER, 0)
        try:
            self.control.bind(config.control_endpoint(bind=True))
        except zmq.ZMQError as exc:
            self.control.close(linger=0)
            self.context.term()
            raise RuntimeError(f"cannot listen for the nodes' reports on {config.control_endpoint(bind=True)} "
                               f"(cluster.control_port in {config.source}): {exc.strerror}; is another cluster "
                               "running with the same ports?") from exc
        self.events: list[str] = []
        self._lock = threading.Lock()
        # Journals: the configured directory, or a fresh one inside this run's directory.
        self.state_dir = config.durability.state_dir or str(self.log_dir / "state")
        self.restarts: dict[str, int] = {}  # node -> times started again by restart_dead
        # What the nodes' earlier incarnations counted (a restarted node counts from zero).
        self.retired_counts = {"orders": 0, "trades": 0, "reports": 0}
        self._restart_times: dict[str, list[float]] = {}

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, name: str) -> NodeProcess:
        log_path = self.log_dir / f"{name}.log"
        argv = [sys.executable, "-m", "actors.cli", "node", "--name", name, "--control",
                self.config.control_endpoint(), "--parent", str(os.getpid()), "--state-dir", self.state_dir]
        if self.config_path:
            argv += ["--config", self.config_path]
        log_file = open(log_path, "ab")  # noqa: SIM115  # handed to the child; a restart appends
        # A process group of its own: a terminal's Ctrl-C reaches the launcher alone, which shuts the nodes down in
        # order (demo traders first, then SIGTERM). In the launcher's group, a Ctrl-C while a node was still
        # importing (before it could ignore SIGINT) killed it mid-start. It still dies with the launcher
        # (PR_SET_PDEATHSIG).
        # And SIGINT blocked from the fork on: the child joins its own group only just before it runs the node, and
        # a Ctrl-C landing in between stayed pending and killed it once it ran (exit -2, seen in a clean-clone run).
        # The node discards a pending one when it ignores SIGINT, then unblocks it (actors/node.py main).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       process_group=0)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log_file.close()
        node = NodeProcess(name, process, log_path)
        self.nodes[name] = node
        return node

    def restart_node(self, name: str, timeout: float = 30.0) -> None:
        """Start a node again (after it died) and wait until it reports ready."""
        old = self.nodes[name]
        if old.process.poll() is None:
            raise RuntimeError(f"node {name} is still running")
        node = self._spawn(name)
        deadline = time.monotonic() + timeout
        while not node.ready:
            self.pump(0.05)
            if node.process.poll() is not None:
                raise RuntimeError(f"node {name} exited with code {node.process.returncode} while restarting:\n"
                                   f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {name} not ready {timeout:.0f} s after restart")
        self.say(f"node {name} restarted")

    def start(self, timeout: float = 30.0) -> None:
        """Spawn every node and wait until all report ready; raises RuntimeError naming the culprit."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for node in self.config.nodes:
            self._spawn(node.name)
        deadline = time.monotonic() + timeout
        while not all(n.ready for n in self.nodes.values()):
            self.pump(0.05)
            for node in self.nodes.values():
                if node.process.poll() is not None:
                    raise RuntimeError(f"node {node.name} exited with code {node.process.returncode} while "
                                       f"starting:\n{self.log_tail(node.name)}")
            if time.monotonic() > deadline:
                waiting = [n.name for n in self.nodes.values() if not n.ready]
                raise RuntimeError(f"nodes not ready after {timeout:.0f} s: {', '.join(waiting)}")

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.nodes[name].log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    def pump(self, timeout: float = 0.0) -> None:
        """Read control messages from nodes; notice nodes that died."""
        if self.control.poll(int(timeout * 1000)):
            while True:
                try:
                    message = json.loads(self.control.recv(flags=zmq.NOBLOCK))
                except zmq.Again:
                    break
                except ValueError:
                    continue
                node = self.nodes.get(message.get("node"))
                if node is None:
                    continue
                node.last_report = time.monotonic()
                kind = message.get("type")
                if kind == "ready":
                    if node.restarted and not node.ready:
                        self.say(f"node {node.name} is back (recovered from its journals)")
                    node.ready = True
                    if message.get("peers_down"):
                        self.say(f"node {node.name} started, but cannot reach: {', '.join(message['peers_down'])}")
                elif kind == "stats":
                    node.stats = merge_stats(node.stats, message)
                elif kind == "failed":
                    node.failures.append(message)
                    self.say(f"!!! node {node.name}: actor {message.get('actor')} failed: {message.get('error')}")
        for node in self.nodes.values():
            if node.process.poll() is not None and not node.reported_dead:
                node.reported_dead = True
                lost = [a.split("/", 1)[1] for a in self.config.node(node.name).actors if a.startswith("book/")]
                what = f"; instruments unavailable: {name_list(lost)}" if lost else ""
                self.say(f"!!! NODE {node.name.upper()} DIED (exit code {node.process.returncode}){what}")

    def say(self, text: str) -> None:
        with self._lock:
            self.events.append(text)
        print(text, file=sys.stderr, flush=True)

    def restart_dead(self, now: float | None = None, max_per_minute: int = RESTARTS_PER_MINUTE) -> None:
        """Start again every node that died, as a supervisor would; without waiting for it (:meth:`pump`
        says when it is back). Only for clusters with journals: a book node started empty would have lost
        its orders. A node that dies ``max_per_minute`` times within a minute is left dead."""
        now = time.monotonic() if now is None else now
        for name, node in list(self.nodes.items()):
            if not node.reported_dead or node.given_up:
                continue
            recent = [t for t in self._restart_times.get(name, []) if now - t < 60.0]
            if len(recent) >= max_per_minute:
                node.given_up = True
                self.say(f"!!! node {name} died {len(recent) + 1} times within a minute: not starting it again")
                continue
            self._restart_times[name] = [*recent, now]
            for key, value in node_counts(node.stats).items():
                self.retired_counts[key] += value
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.say(f"restarting node {name} from its journals")
            self._spawn(name).restarted = True

    def alive(self) -> dict[str, bool]:
        return {name: node.process.poll() is None for name, node in self.nodes.items()}

    def kill_node(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one node (tests and failure drills)."""
        self.nodes[name].process.send_signal(sig)

    def stop(self, grace: float = 5.0) -> dict[str, int | None]:
        """SIGTERM every node, wait, SIGKILL stragglers; returns exit codes."""
        for node in self.nodes.values():
            if node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for node in self.nodes.values():
            left = max(0.0, deadline - time.monotonic())
            try:
                node.process.wait(left)
            except subprocess.TimeoutExpired:
                self.say(f"node {node.name} did not stop within {grace:.0f} s; killing it")
                node.process.kill()
                node.process.wait(5)
        self.control.close(linger=0)
        self.context.term()
        return {name: node.process.returncode for name, node in self.nodes.items()}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.control.closed:
            self.stop()


def _percentiles(histogram: HdrHistogram) -> dict[str, float]:
    """The summary's percentiles in µs of an HdrHistogram of µs (empty when nothing was recorded)."""
    if not histogram.get_total_count():
        return {}
    pick = histogram.get_value_at_percentile
    return {"p50": pick(50), "p90": pick(90), "p99": pick(99), "p99.9": pick(99.9), "max": histogram.get_max_value()}


def _price(value: object) -> str:
    if not isinstance(value, int):
        return "-"
    return f"{value // 10_000}.{value % 10_000:04d}"[:-2]


#: Instruments in the live view: beyond, the most traded are shown and the rest counted (a cluster of 2,000
#: instruments printed 2,000 lines a second, and a terminal cannot redraw a view taller than itself in place).
VIEW_INSTRUMENTS = 16


def cpu_reading(cluster: Cluster) -> dict[str, tuple[int, float]]:
    """Each node's process CPU seconds as it last reported them (:func:`nodes_cpu`), this launcher's own (the live
    view and the demo traders) and the machine's."""
    reading = nodes_cpu({name: node.stats for name, node in cluster.nodes.items()})
    reading[LAUNCHER] = (os.getpid(), time.process_time())
    busy = machine_busy_seconds()
    if busy is not None:
        reading[MACHINE] = (0, busy)
    return reading


def nodes_cpu(stats: dict[str, dict]) -> dict[str, tuple[int, float]]:
    """``(pid, CPU seconds)`` of each node from its last statistics, tagged with the pid because a node started
    again counts from zero; a node whose report lacks them (or holds something else) is left out."""
    return {name: (report["pid"], float(report["cpu_s"])) for name, report in stats.items()
            if type(report.get("pid")) is int and type(report.get("cpu_s")) in (int, float)}


def machine_busy_seconds(path: str = "/proc/stat") -> float | None:
    """CPU seconds the whole machine has been busy since boot, every core (``/proc/stat``'s first line: all but
    idle and I/O wait), or None where there is no such file or it says something else. The kernel's own work for
    the cluster (loopback TCP, the journals' disk writes) shows here and in no process."""
    try:
        with open(path) as stat:
            name, *values = stat.readline().split()
        fields = [int(v) for v in values[:8]]
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if name != "cpu" or len(fields) < 4 or min(fields) < 0:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def cores_used(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]],
               seconds: float) -> dict[str, float]:
    """Cores each process kept busy on average between two :func:`cpu_reading`\\ s ``seconds`` apart (only the
    processes that ran throughout)."""
    return {name: (cpu - before[name][1]) / seconds for name, (pid, cpu) in after.items()
            if name in before and before[name][0] == pid and cpu >= before[name][1] and seconds > 0}


LAUNCHER = "launcher"  # this process, in CPU readings: the live view, the control socket and the demo traders
MACHINE = "machine"  # the whole machine, in CPU readings (Linux)

#: Above this share of the cores in use, the run's latency is mostly waiting for a core (the summary says so).
BUSY_SHARE = 0.85


@dataclass
class CpuUse:
    """What a run cost the machine over ``seconds``: cores each process kept busy on average (nodes by name, and
    :data:`LAUNCHER`), the cores there were, and the commands the books took meanwhile."""

    cores: dict[str, float]
    seconds: float
    available: int
    book_commands: int

    @property
    def nodes(self) -> dict[str, float]:
        return {name: share for name, share in self.cores.items() if name not in (LAUNCHER, MACHINE)}

    @property
    def busy(self) -> float:
        """Cores busy in all: the machine's figure where there is one, else the processes' sum."""
        return max(self.cores.get(MACHINE, 0.0), sum(self.nodes.values()) + self.cores.get(LAUNCHER, 0.0))

    @property
    def full(self) -> bool:
        """The cores were nearly all busy: work waited for a core."""
        return self.busy >= BUSY_SHARE * self.available

    def line(self) -> str | None:
        """The summary's CPU line (None when the nodes did not report their CPU)."""
        nodes = self.nodes
        if not nodes:
            return None
        processes = sum(nodes.values()) + self.cores.get(LAUNCHER, 0.0)
        total = self.busy
        text = (f"  CPU while running: {total:.2f} of {self.available} cores busy (nodes {sum(nodes.values()):.2f}: "
                + ", ".join(f"{name} {share:.2f}" for name, share in nodes.items()))
        if LAUNCHER in self.cores:
            text += f"; this process and its demo traders {self.cores[LAUNCHER]:.2f}"
        if MACHINE in self.cores:
            text += f"; the kernel and other processes {max(0.0, total - processes):.2f}"
        text += ")"
        if self.book_commands:
            per_command = sum(nodes.values()) * self.seconds / self.book_commands * 1e6
            text += f"; the nodes' CPU per book command {per_command:,.0f} us"
        return text


def render_view(cluster: Cluster, rates: dict[str, float], cores: dict[str, float] | None = None) -> list[str]:
    """The live view: rates, per-instrument top of book, node health (and, given ``cores``, the share of a core
    each node used since the last view)."""
    lines = [f"matchwire {cluster.config.name}: orders/s {rates.get('orders', 0):>8.0f}   "
             f"trades/s {rates.get('trades', 0):>7.0f}   reports/s {rates.get('reports', 0):>8.0f}"]
    books: dict = {}
    for node in cluster.nodes.values():
        for stats in node.stats.get("actors", {}).values():
            books.update(stats.get("books", {}))
    lines.append(f"  {'symbol':<6} {'bid qty':>8} {'bid':>9}  {'ask':>9} {'ask qty':>8}  {'last':>9} {'trades':>8}")
    instruments = list(cluster.config.instruments)
    shown = instruments
    if len(instruments) > VIEW_INSTRUMENTS:
        shown = most_traded(instruments, lambda s: books.get(s, {}).get("trades") or 0, VIEW_INSTRUMENTS)
    for symbol in shown:
        info = books.get(symbol, {})
        bid, bid_qty, ask, ask_qty = info.get("bbo", (None, 0, None, 0))
        lines.append(f"  {symbol:<6} {bid_qty or '':>8} {_price(bid):>9}  {_price(ask):>9} {ask_qty or '':>8}  "
                     f"{_price(info.get('last')):>9} {info.get('trades', 0):>8}")
    if len(shown) < len(instruments):
        traded = sum(1 for symbol in set(instruments) - set(shown) if books.get(symbol, {}).get("trades"))
        lines.append(f"  ... and {len(instruments) - len(shown):,} more instruments ({traded:,} of them traded)")
    now = time.monotonic()
    health = []
    for name, node in cluster.nodes.items():
        if node.process.poll() is not None:
            health.append(f"{name}:DEAD({node.process.returncode})")
        elif now - node.last_report > 3:
            health.append(f"{name}:silent")
        else:
            share = (cores or {}).get(name)
            health.append(f"{name}:ok" + (f" {share * 100:.0f}%" if share is not None else ""))
    lines.append("  nodes: " + "  ".join(health) + ("  (CPU, % of a core)" if cores else ""))
    return lines


def run_cluster(config: ClusterConfig, config_path: str | None, duration: float | None, demo: bool,
                out: TextIO = sys.stdout, restart: bool | None = None) -> int:
    """``matchwire run``: start, trade, watch, stop, summarise. ``restart``: start dead nodes again (default:
    when the configuration has journals, so nothing is lost by it)."""
    if restart is None:
        restart = config.durability.enabled
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cluster = Cluster(config, config_path, out=out)
    except RuntimeError as exc:
        print(f"matchwire run: {exc}", file=sys.stderr)
        signal.signal(signal.SIGINT, previous)
        return 1
    traders: list[DemoTrader] = []
    started = time.monotonic()
    exit_codes: dict[str, int | None] = {}
    try:
        print(f"matchwire: starting {len(config.nodes)} nodes ({', '.join(n.name for n in config.nodes)}); "
              f"logs in {cluster.log_dir}", file=out, flush=True)
        cluster.start()
        print(f"matchwire: cluster ready in {time.monotonic() - started:.1f} s; gateway client API at "
              f"{config.client_endpoint()}", file=out, flush=True)
        if demo and not stop.is_set():  # (Ctrl-C while the nodes were starting: straight to the shutdown)
            traders = _start_demo(config, stop)
            host, port = config.ouch_address()
            print(f"matchwire: {len(traders)} demo traders over OUCH 5.0 / SoupBinTCP 4.0 at {host}:{port}, "
                  f"{demo_rate(config):g} orders/s in all", file=out, flush=True)
        t0 = time.monotonic()
        last_view = t0
        last_counts = {"orders": 0, "trades": 0, "reports": 0}
        first_counts, first_cpu = _counts(cluster), cpu_reading(cluster)
        last_cpu = first_cpu
        tty = out.isatty()
        drawn = 0
        while not stop.is_set():
            cluster.pump(0.1)
            if restart:
                cluster.restart_dead()
            now = time.monotonic()
            if duration is not None and now - t0 >= duration:
                break
            if now - last_view >= 1.0:
                counts, reading = _counts(cluster), cpu_reading(cluster)
                rates = {k: (counts[k] - last_counts[k]) / (now - last_view) for k in counts}
                cores = cores_used(last_cpu, reading, now - last_view)
                last_counts, last_cpu, last_view = counts, reading, now
                lines = render_view(cluster, rates, cores)
                if tty and drawn:
                    out.write(f"\x1b[{drawn}F\x1b[J")
                out.write("\n".join(lines) + "\n")
                out.flush()
                drawn = len(lines) if tty else 0
        elapsed = time.monotonic() - t0
        cpu = CpuUse(cores_used(first_cpu, cpu_reading(cluster), elapsed), elapsed, os.cpu_count() or 1,
                     _counts(cluster)["orders"] - first_counts["orders"])
    except RuntimeError as exc:
        print(f"matchwire: {exc}", file=sys.stderr)
        stop.set()
        for trader in traders:
            trader.join(2)
        cluster.stop()
        signal.signal(signal.SIGINT, previous)
        return 1
    finally:
        stop.set()
    for trader in traders:
        trader.join(3)
    cluster.pump(0.5)
    final_counts = _counts(cluster)
    exit_codes = cluster.stop()
    signal.signal(signal.SIGINT, previous)
    _summary(out, traders, final_counts, elapsed, exit_codes, cluster, cpu)
    _tidy_run_state(out, cluster, exit_codes)
    return 0 if not any(n.reported_dead for n in cluster.nodes.values()) or not cluster.events else 1


def _tidy_run_state(out: TextIO, cluster: Cluster, exit_codes: dict[str, int | None]) -> None:
    """Journals in the run's own directory (no ``state_dir`` configured) serve this run only: the next run starts a
    fresh one. After a clean run they go (every ``make run`` left its journals and archives in /tmp); after a node
    died they stay, for ``matchwire journal inspect``. The logs stay either way."""
    durability = cluster.config.durability
    if not durability.enabled or durability.state_dir:
        return
    state = Path(cluster.state_dir)
    clean = all(code == 0 for code in exit_codes.values()) and not cluster.restarts and \
        not any(node.reported_dead for node in cluster.nodes.values())
    if clean:
        shutil.rmtree(state, ignore_errors=True)
        print(f"  logs in {cluster.log_dir} (this run's journals removed: set [durability] state_dir to keep "
              "them)", file=out, flush=True)
    else:
        print(f"  logs in {cluster.log_dir}; journals kept for inspection in {state} "
              "(matchwire journal inspect)", file=out, flush=True)


def demo_rate(config: ClusterConfig) -> float:
    """Messages per second the demo traders are asked to send, all together (``[demo] orders_per_second``)."""
    return float(config.demo.get("orders_per_second", 2000))


def _start_demo(config: ClusterConfig, stop: threading.Event) -> list[DemoTrader]:
    demo = config.demo
    entries = demo.get("trader", [])
    total = demo_rate(config)
    instruments = list(config.instruments.values())
    users = {u.get("name"): u for u in config.raw.get("user", [])}
    makers = [e for e in entries if e.get("role") == "maker"]
    takers = [e for e in entries if e.get("role") != "maker"]
    traders: list[DemoTrader] = []
    address = config.ouch_address()
    for i, entry in enumerate(entries):
        # Makers send most messages (requotes), so the books stay two-sided while takers trade.
        role_share = 0.8 / max(1, len(makers)) if entry in makers else 0.2 / max(1, len(takers))
        if not makers or not takers:
            role_share = 1.0 / len(entries)
        cls = MarketMaker if entry in makers else Taker
        accounts = list(users.get(entry.get("user"), {}).get("accounts", []))
        traders.append(cls(f"{entry.get('role', 'taker')}-{entry.get('user')}", address, entry.get("user", ""),
                           entry.get("password", ""), accounts, instruments, total * role_share, seed=i + 1,
                           stop=stop))
    for trader in traders:
        trader.start()
    return traders


def merge_stats(previous: dict, message: dict) -> dict:
    """A node's statistics after its latest report: a full one replaces them, a partial one ("full": false,
    the actors that reported since the node's last) updates the actors it names."""
    if message.get("full", True) or not previous:
        return message
    return {**message, "actors": {**previous.get("actors", {}), **message.get("actors", {})}}


def node_counts(node_stats: dict) -> dict[str, int]:
    """Orders the node's books took, trades they made, reports its gateways sent (from its last stats)."""
    orders = trades = reports = 0
    for name, stats in node_stats.get("actors", {}).items():
        if name.startswith("book/"):
            orders += stats.get("orders", 0)
            trades += stats.get("fills", 0)
        if name.startswith("gateway/"):
            reports += stats.get("reports_out", 0) + stats.get("soup_sequenced_sent", 0)
    return {"orders": orders, "trades": trades, "reports": reports}


def _counts(cluster: Cluster) -> dict[str, int]:
    total = dict(cluster.retired_counts)
    for node in cluster.nodes.values():
        for key, value in node_counts(node.stats).items():
            total[key] += value
    return total


def _summary(out: TextIO, traders: list[DemoTrader], counts: dict[str, int], elapsed: float,
             exit_codes: dict[str, int | None], cluster: Cluster, cpu: CpuUse | None = None) -> None:
    total = TraderStats()
    for trader in traders:
        total.merge(trader.stats)
    print("\nmatchwire summary", file=out)
    print(f"  ran {elapsed:.1f} s; nodes exited: " + ", ".join(f"{k}={v}" for k, v in exit_codes.items()), file=out)
    if cluster.restarts:
        print("  nodes started again after dying: " + ", ".join(f"{k} x{v}" for k, v in cluster.restarts.items()),
              file=out)
    for trader in traders:
        if trader.error:
            print(f"  trader error: {trader.error}", file=out)
    if traders:
        print(f"  messages sent over OUCH {total.sent} ({total.sent / max(elapsed, 1e-9):.0f}/s of the "
              f"{demo_rate(cluster.config):g}/s asked); answers: "
              f"accepted {total.messages.get('A', 0)}, replaced {total.messages.get('U', 0)}, "
              f"rejected {total.messages.get('J', 0)}, canceled {total.messages.get('C', 0)}, "
              f"executed {total.messages.get('E', 0)}", file=out)
        print(f"  trades {counts['trades']} ({counts['trades'] / max(elapsed, 1e-9):.0f}/s); executions reported "
              f"to traders {total.executions}", file=out)
        if total.reconnects:
            print(f"  demo traders logged in again {total.reconnects} times (their connection dropped)", file=out)
        if total.rejects:
            print("  rejects by reason: " + ", ".join(f"{k} {v}" for k, v in total.rejects.most_common()), file=out)
            # OUCH has one code for several of matchwire's reasons (0x0F "other"): the gateways know which.
            cluster_reasons: Counter[str] = Counter()
            for node in cluster.nodes.values():
                for name, stats in node.stats.get("actors", {}).items():
                    if name.startswith("gateway/"):
                        cluster_reasons.update(stats.get("ouch_rejects_by_reason", {}))
            if cluster_reasons:
                reasons = ", ".join(f"{k} {v}" for k, v in cluster_reasons.most_common())
                print(f"    as the gateways sent them: {reasons}", file=out)
        if total.cancels:
            print("  cancels by reason: " + ", ".join(f"{k} {v}" for k, v in total.cancels.most_common()), file=out)
        pct = _percentiles(total.latency_us)
        if pct:
            print("  latency, send -> first answer over OUCH (us): "
                  + "  ".join(f"{k} {v:.0f}" for k, v in pct.items()), file=out)
            durability = cluster.config.durability
            if durability.enabled and durability.fsync != "none":
                # Users compare this with the benchmarks, which run without journals by default.
                every = f" (when idle, else every {durability.batch_ms:g} ms)" if durability.fsync == "batch" else ""
                print(f"  (journals on, fsync {durability.fsync}{every}: an answer waits for the gateway's, "
                      "risk's and the book's commits; docs/benchmarks.md has the cost)", file=out)
    else:
        print(f"  book commands {counts['orders']}, trades {counts['trades']}", file=out)
    cpu_line = cpu.line() if cpu is not None else None
    if cpu is not None and cpu_line:
        uncounted = [name for name in cluster.nodes if name not in cpu.nodes]
        if uncounted:  # started again, or silent: their CPU since the start is not known
            cpu_line += f"; not counted: {', '.join(uncounted)} (restarted or silent)"
        print(cpu_line, file=out)
        if cpu.full and traders and total.latency_us.get_total_count():
            print("  (the cores were nearly all busy: much of the latency above is waiting for a core; "
                  "docs/benchmarks.md, \"What make run measures\")", file=out)
    for event in cluster.events:
        print(f"  event: {event}", file=out)
    out.flush()
