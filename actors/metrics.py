"""Prometheus metrics for a node: every actor's statistics, served over HTTP on a localhost port.

Each node runs one :class:`MetricsServer` (its own ``CollectorRegistry`` and a WSGI server thread
that :meth:`MetricsServer.stop` shuts down). Nothing is counted twice: the actors already keep
counters and report them to the node's supervisor; a :class:`NodeCollector` asks the supervisor
for the latest snapshot *at scrape time* and turns it into metric families, so an idle
Prometheus costs the node nothing and a scrape costs one pykka ask.

Configuration (the cluster TOML)::

    [metrics]
    enabled = true          # default: true when the table exists, off without it
    host = "127.0.0.1"      # where every node serves (loopback unless you mean it)
    base_port = 9100        # node N (file order, from 0) serves on base_port + N

    [[node]]
    name = "book1"
    metrics_port = 9200     # optional: this node's own port

:class:`Log2Histogram` is the tiny histogram actors record into on their hot path (batch
handling time, batch sizes); see docs/observability.md for every series.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.registry import CollectorRegistry

from actors.config import ConfigError

log = logging.getLogger("matchwire.metrics")

DEFAULT_BASE_PORT = 9100


class Log2Histogram:
    """Counts of non-negative integers in power-of-two buckets, cheap enough for an actor's hot loop.

    Bucket ``i`` holds values ``v`` with ``2**(i-1) < v <= 2**i`` (bucket 0: ``v <= 1``), so the
    upper bound of bucket ``i`` is exactly ``2**i`` — what Prometheus's inclusive ``le`` needs.
    Values beyond the last bucket land in it. One record is an int ``bit_length``, two adds and a
    list store: about 100 ns, against the micro- to milliseconds of the batch it measures.
    """

    __slots__ = ("counts", "total", "count")

    def __init__(self, buckets: int = 40) -> None:
        self.counts = [0] * buckets
        self.total = 0
        self.count = 0

    def record(self, value: int) -> None:
        index = (value - 1).bit_length() if value > 0 else 0
        counts = self.counts
        if index >= len(counts):
            index = len(counts) - 1
        counts[index] += 1
        self.total += value
        self.count += 1

    def snapshot(self) -> dict:
        """A JSON-able copy: ``{"counts": [...], "sum": n, "count": n}``."""
        return {"counts": list(self.counts), "sum": self.total, "count": self.count}


def histogram_quantile(snapshot: dict, q: float) -> float | None:
    """The ``q`` quantile of a :meth:`Log2Histogram.snapshot` (or of a difference of two).

    Interpolated linearly inside the bucket, as Prometheus's ``histogram_quantile`` does; None
    when nothing was recorded.
    """
    counts = snapshot.get("counts") or []
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, n in enumerate(counts):
        if n and seen + n >= rank:
            low = 0 if index == 0 else 2 ** (index - 1)
            high = 2**index
            return low + (high - low) * max(0.0, rank - seen) / n
        seen += n
    return float(2 ** (len(counts) - 1))


def histogram_delta(new: dict, old: dict | None) -> dict:
    """What was recorded between two snapshots of the same histogram (``old`` may be None)."""
    if not old:
        return new
    counts = [a - b for a, b in zip(new.get("counts", []), old.get("counts", []), strict=False)]
    if any(n < 0 for n in counts):  # the actor restarted: its histogram started over
        return new
    return {"counts": counts, "sum": new.get("sum", 0) - old.get("sum", 0),
            "count": new.get("count", 0) - old.get("count", 0)}


# -- configuration -------------------------------------------------------------------------------


class MetricsConfigError(ConfigError):
    """A ``[metrics]`` table that cannot work; the message names the key (the node refuses to start)."""


@dataclass(frozen=True)
class MetricsSettings:
    """Where (and whether) nodes serve metrics, from the ``[metrics]`` table of ``config.raw``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    base_port: int = DEFAULT_BASE_PORT
    node_ports: dict[str, int] = field(default_factory=dict)

    def port_for(self, config: Any, node: str) -> int:
        """The port node ``node`` serves on: its own ``metrics_port``, else ``base_port`` + its index."""
        if node in self.node_ports:
            return self.node_ports[node]
        return self.base_port + config.node(node).index

    def url_for(self, config: Any, node: str) -> str:
        return f"http://{self.host}:{self.port_for(config, node)}/metrics"


def metrics_settings(config: Any) -> MetricsSettings:
    """Read ``[metrics]`` (and each ``[[node]]``'s ``metrics_port``) from a ClusterConfig's raw TOML."""
    raw = getattr(config, "raw", {}) or {}
    table = raw.get("metrics")
    source = getattr(config, "source", "<config>")
    node_ports: dict[str, int] = {}
    for entry in raw.get("node", []):
        if isinstance(entry, dict) and "metrics_port" in entry:
            port = entry["metrics_port"]
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise MetricsConfigError(f"{source}: node {entry.get('name')!r}: metrics_port must be a port number")
            node_ports[str(entry.get("name"))] = port
    if table is None:
        return MetricsSettings(enabled=False, node_ports=node_ports)
    if not isinstance(table, dict):
        raise MetricsConfigError(f"{source}: [metrics] must be a table")
    unknown = set(table) - {"enabled", "host", "base_port"}
    if unknown:
        raise MetricsConfigError(f"{source}: [metrics]: unknown keys {sorted(unknown)}")
    enabled = table.get("enabled", True)
    host = table.get("host", "127.0.0.1")
    base_port = table.get("base_port", DEFAULT_BASE_PORT)
    if not isinstance(enabled, bool):
        raise MetricsConfigError(f"{source}: metrics.enabled must be true or false")
    if not isinstance(host, str) or not host:
        raise MetricsConfigError(f"{source}: metrics.host must be a host name or address")
    if not isinstance(base_port, int) or isinstance(base_port, bool) or not 0 < base_port < 65536:
        raise MetricsConfigError(f"{source}: metrics.base_port must be a port number")
    return MetricsSettings(enabled=enabled, host=host, base_port=base_port, node_ports=node_ports)


# -- snapshot -> metric families ------------------------------------------------------------------


@dataclass
class NodeSnapshot:
    """What a node knows about itself at one instant; the collector's only input."""

    node: str
    up: bool
    uptime_s: float
    actors: dict[str, dict]
    inbound: dict[str, int]
    backlog: dict[str, int]
    info: dict[str, str] = field(default_factory=dict)


# Histograms exported from Log2Histogram snapshots: (stats key, metric name, help, scale, first, last bucket).
# Time histograms keep buckets 2**10 ns (~1 us) .. 2**30 ns (~1.07 s): finer is noise; slower lands in +Inf.
_HISTOGRAMS = (
    ("batch_ns", "matchwire_stage_batch_seconds",
     "Time an actor spends handling one inbound batch (its stage's service time)", 1e-9, 10, 30),
    ("flush_ns", "matchwire_stage_flush_seconds",
     "Time an actor spends flushing its outbox after work (sends; for durable books the journal commit)",
     1e-9, 10, 30),
    ("batch_records", "matchwire_batch_records", "Records per inbound batch", 1.0, 0, 12),
    ("age_orders_ns", "matchwire_stage_order_age_seconds",
     "Age of a batch's first order record when the actor takes it: since the client sent it (binary API) or "
     "the gateway took it in (OUCH); one-host clusters only", 1e-9, 10, 30),
    ("age_reports_ns", "matchwire_stage_report_age_seconds",
     "Age of a batch's first report record when the actor takes it: since its order was sent (as above)",
     1e-9, 10, 30),
)

# Counters with a name of their own: stats key -> (metric name without _total, help).
_ACTOR_COUNTERS = {
    "fills": ("matchwire_fills", "Fills seen by the actor (book: trades it made; gateway: fills it reported)"),
    "outbox_messages_sent": ("matchwire_outbox_messages", "Messages the actor sent to other nodes"),
    "outbox_records_sent": ("matchwire_outbox_records", "Records the actor sent (other nodes and local actors)"),
    "outbox_local_batches": ("matchwire_outbox_local_batches", "Batches the actor handed to actors on its node"),
    "outbox_busy": ("matchwire_outbox_busy", "Sends refused because the peer's queue was full (EAGAIN)"),
    "outbox_unreachable": ("matchwire_outbox_unreachable", "Sends refused because the peer was not connected"),
    "journal_fsyncs": ("matchwire_journal_fsyncs", "fsync calls of the book's journal"),
    "journal_records": ("matchwire_journal_records", "Commands appended to the book's journal"),
    "journal_bytes": ("matchwire_journal_bytes", "Bytes appended to the book's journal"),
    "journal_snapshots": ("matchwire_journal_snapshots", "Snapshots the book wrote"),
    "reports_out": ("matchwire_gateway_reports", "Reports the gateway sent to its clients"),
    "soup_archive_read_errors": ("matchwire_gateway_archive_read_errors",
                                 "SoupBinTCP messages the archive could not give back (damaged files)"),
    "events": ("matchwire_md_events", "Book events received by market data"),
    "messages": ("matchwire_md_itch_messages", "ITCH messages market data published"),
    "packets": ("matchwire_md_packets", "MoldUDP64 packets market data sent"),
    "udp_dropped": ("matchwire_md_udp_dropped", "UDP packets dropped because the socket buffer was full"),
    "heartbeats": ("matchwire_md_heartbeats", "MoldUDP64 heartbeats sent"),
    "retransmit_requests": ("matchwire_md_retransmit_requests", "MoldUDP64 re-requests received"),
}
_ACTOR_GAUGES = {
    "outbox_pending": ("matchwire_outbox_pending", "Records buffered in the actor's outbox, not yet sent"),
    "open_orders": ("matchwire_risk_open_orders", "Orders the risk shard holds open"),
    "in_flight": ("matchwire_risk_in_flight", "Commands the risk shard passed on and awaits answers for"),
    "live_orders": ("matchwire_gateway_live_orders", "Orders the gateway tracks"),
    "gaps": ("matchwire_md_sequence_gaps", "Book sequence gaps market data has seen"),
    "next_seq": ("matchwire_md_next_sequence", "Next MoldUDP64 sequence number"),
    "soup_connections_open": ("matchwire_gateway_connections", "Open SoupBinTCP connections"),
    "soup_sessions_live": ("matchwire_gateway_sessions", "Logged-in SoupBinTCP sessions"),
    "soup_messages_in_memory": ("matchwire_gateway_sequenced_in_memory",
                                "SoupBinTCP messages held in memory (not yet in the archive or the spill file)"),
}
# Keys that are consumed elsewhere (or are not numbers worth a series).
_SPECIAL = {"orders", "client_orders", "ouch_messages", "rejects", "seq", "bid", "bid_qty", "ask", "ask_qty",
            "batch_ns", "flush_ns", "batch_records", "age_orders_ns", "age_reports_ns", "card_link_errors"}
_INBOUND = (
    ("messages", "matchwire_inbound_messages", "Messages the node's inbound socket delivered to actors"),
    ("records", "matchwire_inbound_records", "Records the node's inbound socket delivered to actors"),
    ("pings", "matchwire_inbound_pings", "Liveness probes received"),
    ("malformed", "matchwire_inbound_malformed", "Malformed messages dropped"),
    ("misaddressed", "matchwire_inbound_misaddressed", "Messages for an actor this node does not host"),
    ("control", "matchwire_inbound_control", "Operator (admin) requests received"),
)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def actor_kind(actor: str) -> str:
    return actor.split("/", 1)[0]


def families(snapshot: NodeSnapshot) -> Iterator[Metric]:
    """The metric families for one node snapshot (pure: also used by tests and tools)."""
    node = snapshot.node
    up = GaugeMetricFamily("matchwire_node_up", "1 while the node runs and its supervisor answers", labels=["node"])
    up.add_metric([node], 1.0 if snapshot.up else 0.0)
    yield up
    uptime = GaugeMetricFamily("matchwire_node_uptime_seconds", "Seconds since the node started", labels=["node"])
    uptime.add_metric([node], snapshot.uptime_s)
    yield uptime
    if snapshot.info:
        keys = sorted(snapshot.info)
        info = GaugeMetricFamily("matchwire_node_info", "Static facts about the node (value 1)",
                                 labels=["node", *keys])
        info.add_metric([node, *(snapshot.info[k] for k in keys)], 1.0)
        yield info

    for key, name, text in _INBOUND:
        family = CounterMetricFamily(name, text, labels=["node"])
        family.add_metric([node], float(snapshot.inbound.get(key, 0)))
        yield family
    paused = CounterMetricFamily("matchwire_inbound_paused_seconds",
                                 "Time the inbound pump stopped reading because an actor was too far behind",
                                 labels=["node"])
    paused.add_metric([node], snapshot.inbound.get("paused_ms", 0) / 1000.0)
    yield paused

    # Card link errors: counted by a card backend once one exists (issue #8); zero until then, so
    # dashboards and alerts can be written today.
    link_errors = sum(v for s in snapshot.actors.values() for k, v in s.items()
                      if k == "card_link_errors" and _number(v))
    card = CounterMetricFamily("matchwire_card_link_errors",
                               "Errors on the link to the matcher card (0 without a card)", labels=["node"])
    card.add_metric([node], float(link_errors))
    yield card

    labels = ["node", "actor", "kind"]
    actor_up = GaugeMetricFamily("matchwire_actor_up", "1 for each actor that has reported statistics",
                                 labels=labels)
    backlog = GaugeMetricFamily("matchwire_inbound_backlog",
                                "Batches delivered to the actor and not yet handled (its queue)", labels=labels)
    orders = CounterMetricFamily("matchwire_orders",
                                 "Commands (new, cancel, modify) the actor received: gateway from clients "
                                 "(ZeroMQ records and OUCH messages), risk from gateways, book from risk",
                                 labels=labels)
    rejects = CounterMetricFamily("matchwire_rejects", "Commands the actor rejected, by reason (book: 'engine')",
                                  labels=[*labels, "reason"])
    counters = {key: CounterMetricFamily(name, text, labels=labels) for key, (name, text) in _ACTOR_COUNTERS.items()}
    gauges = {key: GaugeMetricFamily(name, text, labels=labels) for key, (name, text) in _ACTOR_GAUGES.items()}
    histograms = {key: HistogramMetricFamily(name, text, labels=labels)
                  for key, name, text, _, _, _ in _HISTOGRAMS}
    other = GaugeMetricFamily("matchwire_actor_stat", "Every other numeric statistic an actor reports, by name",
                              labels=[*labels, "stat"])
    book_labels = ["node", "actor", "symbol"]
    book_seq = GaugeMetricFamily("matchwire_book_sequence", "The book's last event sequence number",
                                 labels=book_labels)
    book_price = GaugeMetricFamily("matchwire_book_best_price", "Best bid/ask price (price units), absent when empty",
                                   labels=[*book_labels, "side"])
    book_qty = GaugeMetricFamily("matchwire_book_best_qty", "Quantity at the best bid/ask",
                                 labels=[*book_labels, "side"])
    md_trades = CounterMetricFamily("matchwire_md_trades", "Trades market data has seen, per symbol",
                                    labels=book_labels)
    md_volume = CounterMetricFamily("matchwire_md_volume", "Shares traded, per symbol", labels=book_labels)
    md_last = GaugeMetricFamily("matchwire_md_last_price", "Last trade price (price units), per symbol",
                                labels=book_labels)

    for actor in sorted(snapshot.actors):
        stats = snapshot.actors[actor]
        kind = actor_kind(actor)
        values = [node, actor, kind]
        actor_up.add_metric(values, 1.0)
        backlog.add_metric(values, float(snapshot.backlog.get(actor, 0)))
        received = stats.get("orders", 0) if kind != "gateway" else \
            stats.get("client_orders", 0) + stats.get("ouch_messages", 0)
        if kind in ("gateway", "risk", "book"):
            orders.add_metric(values, float(received))
        if kind == "book" and _number(stats.get("rejects")):
            rejects.add_metric([*values, "engine"], float(stats["rejects"]))
        for key, value in stats.items():
            if not _number(value) or key in _SPECIAL:
                continue
            if key.startswith("rejected_"):
                rejects.add_metric([*values, key[len("rejected_"):]], float(value))
            elif key in counters:
                counters[key].add_metric(values, float(value))
            elif key in gauges:
                gauges[key].add_metric(values, float(value))
            else:
                other.add_metric([*values, key], float(value))
        for key, _, _, scale, first, last in _HISTOGRAMS:
            hist = stats.get(key)
            if isinstance(hist, dict) and hist.get("counts"):
                histograms[key].add_metric(values, _buckets(hist["counts"], scale, first, last),
                                           float(hist.get("sum", 0)) * scale)
        if kind == "book":
            symbol = stats.get("symbol", actor.split("/", 1)[1])
            key_values = [node, actor, symbol]
            if _number(stats.get("seq")):
                book_seq.add_metric(key_values, float(stats["seq"]))
            for side, price_key, qty_key in (("bid", "bid", "bid_qty"), ("ask", "ask", "ask_qty")):
                if _number(stats.get(price_key)):
                    book_price.add_metric([*key_values, side], float(stats[price_key]))
                    book_qty.add_metric([*key_values, side], float(stats.get(qty_key) or 0))
        books = stats.get("books") if kind == "md" else None
        if isinstance(books, dict):
            for symbol, book in sorted(books.items()):
                key_values = [node, actor, symbol]
                md_trades.add_metric(key_values, float(book.get("trades", 0) or 0))
                md_volume.add_metric(key_values, float(book.get("volume", 0) or 0))
                if _number(book.get("last")):
                    md_last.add_metric(key_values, float(book["last"]))
    yield from (actor_up, backlog, orders, rejects, *counters.values(), *gauges.values(), *histograms.values(),
                book_seq, book_price, book_qty, md_trades, md_volume, md_last, other)


def _buckets(counts: list[int], scale: float, first: int, last: int) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets from Log2Histogram counts, kept between 2**first and 2**last."""
    out: list[tuple[str, float]] = []
    running = 0
    for index, n in enumerate(counts):
        running += n
        if first <= index <= last:
            out.append((_format_bound((2**index) * scale), float(running)))
    out.append(("+Inf", float(sum(counts))))
    return out


def _format_bound(value: float) -> str:
    return repr(float(value)) if value < 1e-3 or value != int(value) else str(float(value))


class NodeCollector:
    """A prometheus-client collector that turns the node's latest snapshot into metric families."""

    def __init__(self, source: Callable[[], NodeSnapshot]) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return list(families(self.source()))


# -- the node's side ------------------------------------------------------------------------------


def node_snapshot(node: Any) -> NodeSnapshot:
    """Ask a running :class:`actors.node.Node` (in this process) for its current statistics.

    The supervisor already holds every actor's last report (refreshed every 0.25 s); one ask
    returns a copy, so a scrape never touches an actor's own state from another thread.
    """
    actors: dict[str, dict] = {}
    up = not node.fatal.is_set()
    if node.supervisor is not None:
        try:
            actors = node.supervisor.ask("stats", timeout=2.0) or {}
        except Exception:  # noqa: BLE001 - a dead or stuck supervisor is what node_up=0 reports
            up = False
    else:
        up = False
    inbound = dict(node.inbound.stats) if node.inbound is not None else {}
    local = node.local
    backlog = {}
    for actor in node.node.actors:
        index = node.config.actor_index[actor]
        backlog[actor] = local.delivered.get(index, 0) - local.processed.get(index, 0)
    info = {"backend": node.node.backend, "endpoint": node.config.endpoint(node.node)}
    started = getattr(node, "metrics_started", None) or time.monotonic()
    return NodeSnapshot(node=node.name, up=up, uptime_s=time.monotonic() - started, actors=actors,
                        inbound=inbound, backlog=backlog, info=info)


class MetricsServer:
    """One node's metrics endpoint: a private registry and a WSGI server thread that can be stopped."""

    def __init__(self, source: Callable[[], NodeSnapshot], host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(source))  # type: ignore[arg-type]
        # The standard process_* series (CPU seconds, memory, open files; Linux): what each node costs the machine,
        # under the names every Prometheus dashboard already knows.
        ProcessCollector(registry=self.registry)
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        self._server, self._thread = start_wsgi_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._server.server_address[1]  # port 0: the one the kernel chose
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None


def start_node_metrics(node: Any) -> MetricsServer | None:
    """Start the metrics endpoint of a node if ``[metrics]`` enables it; None otherwise.

    A port that cannot be bound is logged as an error and the node runs on without metrics:
    losing the view of an exchange must not stop the exchange.
    """
    settings = metrics_settings(node.config)
    if not settings.enabled:
        return None
    port = settings.port_for(node.config, node.name)
    try:
        server = MetricsServer(lambda: node_snapshot(node), settings.host, port).start()
    except OSError as exc:
        log.error("node %s: cannot serve metrics on %s:%d: %s", node.name, settings.host, port, exc)
        return None
    log.info("node %s: metrics at %s", node.name, server.url)
    return server
