"""``matchwire top``: a live terminal view of a running cluster (rich).

Every interval it asks every actor of the configuration for its statistics, and every book for
its depth, over the same ZeroMQ control path as ``matchwire admin`` (a node's inbound socket
answers CONTROL messages), so it needs nothing but the cluster's configuration file and works
while the cluster is under load. It shows:

* per node: health (every actor answered / some / none / unreachable, and the peers its actors
  cannot reach) with the share of a core its process used (every thread), input and output rates,
  trades/s, rejects, per-batch handling time (p50/p99 from the actors' histograms over the last
  interval), outbox and busy sends;
* per instrument: a five-level ladder (orders, quantity, price each side), last price, trades and
  volume from market data; for the instruments given with ``--symbols``, or all if there are at most
  ``--ladders`` (12), or else the most traded ones (only their books are asked for depth);
* a tape of recent trading, from the change in market data's per-symbol trade counts.

``--once`` takes two samples one interval apart and prints one frame (for scripts and tests);
it exits 1 when a node is unreachable or silent.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import zmq
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from actors.config import ClusterConfig, most_traded
from actors.metrics import histogram_delta, histogram_quantile
from exchange.layout import LayoutError
from exchange.wire import MessageKind, pack_header, unpack_header

LEVELS = 5
TAPE = 10
#: Ladders shown by default: the most active instruments (by market data's trade counts) when there are more.
LADDERS = 12
LADDER_WIDTH = 59  # columns one ladder takes, the gap to the next included
NODE_COLUMNS = ("node", "health", "actors", "in/s", "out/s", "fills/s", "rejects/s", "p50 us", "p99 us",
                "pending", "flush p99", "busy/s")
NODES_WIDE = 118  # terminal columns the whole node table needs (node names up to 7 characters)


@dataclass
class NodeSample:
    """One node's answers in one sample."""

    name: str
    status: str = "unreachable"  # ok | partial | no answer | unreachable
    actors: dict[str, dict] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    expected: int = 0
    answered: int = 0
    process: tuple[int, float] | None = None  # (pid, CPU seconds of the node process) from its actors' answers


@dataclass
class Sample:
    """Everything one round of requests brought back."""

    time: float
    wall: float
    nodes: dict[str, NodeSample]
    depth: dict[str, dict]


class ClusterProbe:
    """Asks every actor of a running cluster for its statistics, and each book for its depth.

    One ROUTER socket per node, kept across samples: a live node answers at once, a dead one is
    unroutable (``IMMEDIATE`` + ``ROUTER_MANDATORY``) and reported as such after ``timeout``, and
    a node that comes back is reconnected by ZeroMQ without our help.
    """

    def __init__(self, config: ClusterConfig, timeout: float = 1.0) -> None:
        self.config = config
        self.timeout = timeout
        self.context = zmq.Context()
        self.sockets: dict[str, zmq.Socket] = {}
        for node in config.nodes:
            socket = self.context.socket(zmq.ROUTER)
            socket.setsockopt(zmq.ROUTING_ID, f"top@{os.getpid()}:{node.name}".encode())
            socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            socket.setsockopt(zmq.IMMEDIATE, 1)
            socket.setsockopt(zmq.LINGER, 0)
            # A round is one request per actor of the node: with a thousand books it must not stop at the default
            # high-water mark of 1,000 (and what did not go is sent on from where it stopped, never again).
            socket.setsockopt(zmq.SNDHWM, 100_000)
            socket.setsockopt(zmq.RECONNECT_IVL, 100)
            socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            socket.connect(config.endpoint(node))
            self.sockets[node.name] = socket

    def close(self) -> None:
        for socket in self.sockets.values():
            socket.close(linger=0)
        self.context.term()

    def __enter__(self) -> ClusterProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _requests(self, node_name: str, depth_for: set[str] | None) -> list[dict]:
        actors = self.config.node(node_name).actors
        requests = [{"actor": actor, "command": "stats"} for actor in actors]
        requests += [{"actor": actor, "command": "depth"} for actor in actors
                     if actor.startswith("book/") and (depth_for is None or actor[5:] in depth_for)]
        return requests

    def sample(self, depth_for: Iterable[str] | None = None) -> Sample:
        """One round: send every request, collect answers until all came or ``timeout`` passed. ``depth_for``:
        the symbols whose books are asked for their depth (default: all)."""
        wanted = None if depth_for is None else set(depth_for)
        header = pack_header(MessageKind.CONTROL, 1, 0, 0, 0)
        nodes = {name: NodeSample(name) for name in self.sockets}
        depth: dict[str, dict] = {}
        for socket in self.sockets.values():  # answers that came after the last round's deadline
            while socket.poll(0):
                socket.recv_multipart()
        unsent = {name: self._requests(name, wanted)[::-1] for name in self.sockets}  # sent from the end
        for name, requests in unsent.items():
            nodes[name].expected = len(requests)
        deadline = time.monotonic() + self.timeout
        poller = zmq.Poller()
        for socket in self.sockets.values():
            poller.register(socket, zmq.POLLIN)
        waiting = sum(n.expected for n in nodes.values())
        while waiting and time.monotonic() < deadline:
            for name in list(unsent):
                requests = unsent[name]
                try:
                    while requests:
                        self.sockets[name].send_multipart(
                            [name.encode(), header, json.dumps(requests[-1]).encode()], flags=zmq.NOBLOCK)
                        requests.pop()
                except zmq.ZMQError as exc:
                    if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                        raise
                    if len(requests) == nodes[name].expected:
                        continue  # not connected (yet): try again until the deadline
                nodes[name].status = "no answer"  # connected: it has what went, and gets the rest on the next turn
                if not requests:
                    del unsent[name]
            left = max(0.0, deadline - time.monotonic())
            for socket, _ in poller.poll(min(left, 0.02 if unsent else left) * 1000):
                while socket.poll(0):
                    frames = socket.recv_multipart()
                    answer = self._parse(frames)
                    name = next(n for n, s in self.sockets.items() if s is socket)
                    if answer is None:
                        continue
                    node = nodes[name]
                    node.answered += 1
                    waiting -= 1
                    if "stats" in answer and "actor" in answer:
                        node.actors[answer["actor"]] = answer["stats"]
                        process = _process(answer.get("process"))
                        if process is not None and (node.process is None or process[1] > node.process[1]):
                            node.process = process
                    elif "depth" in answer and "symbol" in answer:
                        depth[answer["symbol"]] = answer["depth"]
                    else:
                        node.errors.append(str(answer.get("error", answer)))
        for node in nodes.values():
            if node.status == "unreachable":
                continue
            if node.answered >= node.expected and not node.errors:
                node.status = "ok"
            elif node.answered:
                node.status = "partial"
        return Sample(time.monotonic(), time.time(), nodes, depth)

    @staticmethod
    def _parse(frames: list[bytes]) -> dict | None:
        if len(frames) != 3:
            return None
        try:
            if unpack_header(frames[1])["kind"] is not MessageKind.CONTROL:
                return None
            answer = json.loads(frames[2])
        except (LayoutError, ValueError):
            return None
        return answer if isinstance(answer, dict) else None


# -- from two samples to what is shown -------------------------------------------------------------

_INPUT_KEYS = {"gateway": ("client_orders", "ouch_messages"), "risk": ("orders",), "book": ("orders",),
               "md": ("events",), "feed": ("messages",)}


def _counter(keys_of: object) -> Callable[[str, dict], float]:
    """A measure (actor, stats) -> number: the sum of some statistics, by key or by a function actor -> keys."""

    def measure(actor: str, stats: dict) -> float:
        keys = keys_of(actor) if callable(keys_of) else keys_of
        total = 0.0
        for key in keys:  # type: ignore[union-attr]
            value = stats.get(key, 0)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total += value
        return total

    return measure


def _sum(actors: dict[str, dict], measure: Callable[[str, dict], float]) -> float:
    return sum(measure(actor, stats) for actor, stats in actors.items())


def _input_keys(actor: str) -> tuple[str, ...]:
    return _INPUT_KEYS.get(actor.split("/", 1)[0], ())


def _rejects(actor: str, stats: dict) -> int:
    total = stats.get("rejects", 0) if isinstance(stats.get("rejects"), int) else 0
    return total + sum(v for k, v in stats.items() if k.startswith("rejected_") and isinstance(v, int))


def _merged(actors: dict[str, dict], previous: dict[str, dict] | None, key: str) -> dict:
    """The node's histogram ``key`` over the interval: every actor's difference, added up."""
    counts: list[int] = []
    for actor, stats in actors.items():
        hist = stats.get(key)
        if not isinstance(hist, dict):
            continue
        delta = histogram_delta(hist, (previous or {}).get(actor, {}).get(key))
        for i, n in enumerate(delta.get("counts", [])):
            if i >= len(counts):
                counts.append(0)
            counts[i] += n
    return {"counts": counts}


def _process(value: object) -> tuple[int, float] | None:
    """An answer's ``[pid, CPU seconds]``, or None for anything else (a node of another version, a bad answer)."""
    if isinstance(value, list) and len(value) == 2 and type(value[0]) is int and \
            type(value[1]) in (int, float) and value[1] >= 0:
        return value[0], float(value[1])
    return None


def _cpu_share(now: NodeSample, before: NodeSample | None, elapsed: float) -> float | None:
    """The share of a core the node's process used between two samples (None: no figure, or it restarted)."""
    if before is None or now.process is None or before.process is None or elapsed <= 0:
        return None
    (pid, cpu), (pid_before, cpu_before) = now.process, before.process
    return (cpu - cpu_before) / elapsed if pid == pid_before and cpu >= cpu_before else None


def _us(ns: float | None) -> str:
    if ns is None:
        return "-"
    return f"{ns / 1000:.0f}" if ns >= 10_000 else f"{ns / 1000:.1f}"


def format_price(value: object) -> str:
    """Price units with 4 implied decimals (the cluster's ITCH-style convention), at least 2 shown."""
    if not isinstance(value, int) or isinstance(value, bool):
        return "-"
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10_000)
    text = f"{frac:04d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{text}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


class TopView:
    """Turns successive samples into rich renderables, keeping the tape of recent trading."""

    def __init__(self, config: ClusterConfig, interval: float, symbols: list[str] | None = None,
                 ladders: int | None = None) -> None:
        unknown = [symbol for symbol in symbols or () if symbol not in config.instruments]
        if unknown:
            raise ValueError(f"no such instrument in the configuration: {', '.join(unknown)}")
        ladders = LADDERS if ladders is None else ladders
        if ladders < 1:
            raise ValueError(f"ladders must be at least 1, not {ladders}")
        self.config = config
        self.interval = interval
        self.symbols = symbols or None
        self.ladders = ladders
        self.previous: Sample | None = None
        self.current: Sample | None = None
        self.tape: deque[tuple[float, str, int, int, object]] = deque(maxlen=TAPE)

    def update(self, sample: Sample) -> None:
        self.previous, self.current = self.current, sample
        if self.previous is None:
            return
        old, new = self._md_books(self.previous), self._md_books(sample)
        for symbol in self.config.instruments:
            before, after = old.get(symbol, {}), new.get(symbol, {})
            trades = (after.get("trades") or 0) - (before.get("trades") or 0)
            if trades > 0 and before:
                volume = (after.get("volume") or 0) - (before.get("volume") or 0)
                self.tape.appendleft((sample.wall, symbol, trades, volume, after.get("last")))

    @staticmethod
    def _md_books(sample: Sample) -> dict[str, dict]:
        books: dict[str, dict] = {}
        for node in sample.nodes.values():
            for actor, stats in node.actors.items():
                if actor.startswith("md/") and isinstance(stats.get("books"), dict):
                    books.update(stats["books"])
        return books

    def shown(self) -> list[str]:
        """The instruments that get a ladder: those asked for, or all if they fit, or else the most traded ones
        (market data's counts in the last sample; configuration order among equals and before any sample)."""
        if self.symbols is not None:
            return self.symbols
        instruments = list(self.config.instruments)
        if len(instruments) <= self.ladders:
            return instruments
        md = self._md_books(self.current) if self.current is not None else {}
        return most_traded(instruments, lambda s: md.get(s, {}).get("trades") or 0, self.ladders)

    def unhealthy(self) -> list[str]:
        if self.current is None:
            return [n.name for n in self.config.nodes]
        return [n.name for n in self.current.nodes.values() if n.status in ("unreachable", "no answer")]

    def render(self, width: int = 120) -> Group:
        """One frame; ``width`` (the terminal's) decides how many ladders share a row."""
        sample = self.current
        if sample is None:
            return Group(Text("matchwire top: no sample yet"))
        up = sum(1 for n in sample.nodes.values() if n.status in ("ok", "partial"))
        header = Text.assemble(
            ("matchwire top", "bold"), f"  cluster {self.config.name!r}  ",
            (f"{up}/{len(sample.nodes)} nodes up", "green" if up == len(sample.nodes) else "bold red"),
            f"  {time.strftime('%H:%M:%S', time.localtime(sample.wall))}  every {self.interval:g} s")
        return Group(header, self._nodes_table(width), self._ladders(max(1, (width + 2) // LADDER_WIDTH)),
                     self._tape_table())

    def _nodes_table(self, width: int) -> Table:
        sample, previous = self.current, self.previous
        assert sample is not None
        elapsed = (sample.time - previous.time) if previous is not None else 0.0
        table = Table(title="Nodes", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                      show_edge=False)
        # A narrow terminal drops the last two columns rather than cutting every header short.
        longest = max(len(n.name) for n in self.config.nodes)
        wide = width >= NODES_WIDE + max(0, longest - len("gateway"))
        columns = NODE_COLUMNS if wide else NODE_COLUMNS[:-2]
        for column in columns:
            table.add_column(column, justify="left" if column in ("node", "health") else "right", no_wrap=True,
                             min_width=longest if column == "node" else 11 if column == "health" else None)
        unreachable_peers: dict[str, set[str]] = {}
        for config_node in self.config.nodes:
            node = sample.nodes[config_node.name]
            before = previous.nodes[config_node.name].actors if previous is not None else {}
            actors = node.actors
            style = {"ok": "green", "partial": "yellow"}.get(node.status, "bold red")
            health = node.status
            for stats in actors.values():
                for peer in stats.get("peers_down", []) or []:
                    unreachable_peers.setdefault(peer, set()).add(config_node.name)
            cpu = _cpu_share(node, previous.nodes[config_node.name] if previous is not None else None, elapsed)
            if cpu is not None and node.status in ("ok", "partial"):
                health += f" {cpu:.0%}"
            if node.errors:
                health += f" ({len(node.errors)} errors)"

            def rate(measure: Callable[[str, dict], float], now: dict = actors, old: dict = before) -> str:
                if not elapsed or not now or not old:
                    return "-"
                common = {a: s for a, s in now.items() if a in old}
                return _rate(max(0.0, (_sum(common, measure) - _sum({a: old[a] for a in common}, measure)) / elapsed))

            fills = rate(_counter(lambda a: ("fills",) if a.startswith("book/") else ()))
            batch = _merged(actors, before if elapsed else None, "batch_ns")
            flush = _merged(actors, before if elapsed else None, "flush_ns")
            cells = [config_node.name, Text(health, style=style), f"{len(actors)}/{len(config_node.actors)}",
                     rate(_counter(_input_keys)), rate(_counter(("outbox_records_sent",))), fills, rate(_rejects),
                     _us(histogram_quantile(batch, 0.5)), _us(histogram_quantile(batch, 0.99)),
                     str(int(_sum(actors, _counter(("outbox_pending",))))) if actors else "-",
                     _us(histogram_quantile(flush, 0.99)), rate(_counter(("outbox_busy",)))]
            table.add_row(*cells[:len(columns)])
        if unreachable_peers:
            table.caption = "; ".join(f"{peer} unreachable from {', '.join(sorted(by))}"
                                      for peer, by in sorted(unreachable_peers.items()))
            table.caption_style = "yellow"
            table.caption_justify = "left"
        return table

    def _ladders(self, per_row: int) -> Table:
        sample = self.current
        assert sample is not None
        md = self._md_books(sample)
        grid = Table.grid(padding=(0, 2))
        for _ in range(per_row):
            grid.add_column()
        shown = self.shown()
        ladders = [self._ladder(symbol, sample.depth.get(symbol), md.get(symbol, {}), sample) for symbol in shown]
        for start in range(0, len(ladders), per_row):
            grid.add_row(*ladders[start:start + per_row])
        hidden = len(self.config.instruments) - len(shown)
        if hidden:
            traded = sum(1 for symbol, book in md.items() if book.get("trades") and symbol not in shown)
            why = ("not in --symbols" if self.symbols is not None
                   else f"the {len(shown)} most traded are shown; --symbols picks, --ladders sets how many")
            grid.add_row(Text(f"{hidden:,} more instruments ({traded:,} of them traded): {why}", style="dim"))
        return grid

    def _ladder(self, symbol: str, depth: dict | None, md: dict, sample: Sample) -> Table:
        title = Text.assemble((symbol, "bold"), f"  last {format_price(md.get('last'))}  "
                              f"trades {md.get('trades', 0)}  vol {md.get('volume', 0)}")
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                      show_edge=False)
        for column, justify, style, width in (("#", "right", "dim", 3), ("bid qty", "right", "green", 7),
                                              ("bid", "right", "green", 11), ("ask", "left", "red", 11),
                                              ("ask qty", "left", "red", 7), ("# ", "left", "dim", 3)):
            table.add_column(column, justify=justify, style=style, no_wrap=True, width=width)
        if depth is None:
            node = self.config.actor_node.get(f"book/{symbol}")
            status = sample.nodes[node.name].status if node is not None else "no book"
            table.add_row("", "", Text(node.name if node else "?", style="bold red"), Text(status, style="bold red"),
                          "", "")
            for _ in range(LEVELS - 1):
                table.add_row("", "", "", "", "", "")
            return table
        bids, asks = depth.get("bids", [])[:LEVELS], depth.get("asks", [])[:LEVELS]
        for level in range(LEVELS):
            bid = bids[level] if level < len(bids) else None
            ask = asks[level] if level < len(asks) else None
            table.add_row(str(bid[2]) if bid else "", str(bid[1]) if bid else "", format_price(bid[0]) if bid else "",
                          format_price(ask[0]) if ask else "", str(ask[1]) if ask else "", str(ask[2]) if ask else "")
        return table

    def _tape_table(self) -> Table:
        table = Table(title="Recent trading (market data, per interval)", title_justify="left", box=box.SIMPLE_HEAD,
                      pad_edge=False, padding=(0, 1), show_edge=False)
        for column, justify in (("time", "left"), ("symbol", "left"), ("trades", "right"), ("shares", "right"),
                                ("last", "right")):
            table.add_column(column, justify=justify, no_wrap=True)
        if not self.config.market_data:
            table.add_row("-", "no md actor in this cluster", "", "", "")
        elif not self.tape:
            table.add_row("-", "no trades yet", "", "", "")
        for wall, symbol, trades, volume, last in self.tape:
            table.add_row(time.strftime("%H:%M:%S", time.localtime(wall)), symbol, str(trades), str(volume),
                          format_price(last))
        return table


def run_top(config: ClusterConfig, interval: float = 1.0, once: bool = False, console: Console | None = None,
            timeout: float | None = None, symbols: list[str] | None = None, ladders: int | None = None) -> int:
    """``matchwire top``: live until Ctrl-C, or one frame with ``once`` (exit 1 if a node is down). Ladders for
    ``symbols``, or the ``ladders`` most traded instruments (only their books are asked for depth)."""
    console = console or Console()
    view = TopView(config, interval, symbols, ladders)
    with ClusterProbe(config, timeout=min(interval, 2.0) if timeout is None else timeout) as probe:
        if once:
            view.update(probe.sample(view.shown()))
            time.sleep(max(0.0, interval - 0.05))
            view.update(probe.sample(view.shown()))
            console.print(view.render(console.width))
            return 1 if view.unhealthy() else 0
        try:
            view.update(probe.sample(view.shown()))
            with Live(view.render(console.width), console=console, auto_refresh=False, screen=False) as live:
                while True:
                    next_at = time.monotonic() + interval
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    view.update(probe.sample(view.shown()))
                    live.update(view.render(console.width), refresh=True)
        except KeyboardInterrupt:
            return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m actors.top``: the same as ``matchwire top`` (its options are defined once, in actors/cli.py)."""
    from actors.cli import main as cli_main

    return cli_main(["top", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
