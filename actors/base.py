"""What every matchwire actor shares: batches in, an outbox out, ticks, statistics, failure."""

from __future__ import annotations

import collections
import functools
import logging
import os
import queue
import struct
import sys
import time
from dataclasses import dataclass

import pykka
import zmq

from actors.config import ClusterConfig
from actors.metrics import Log2Histogram
from actors.transport import (
    HEARTBEAT_MS,
    Batch,
    ControlRequest,
    LocalDirectory,
    Outbox,
    PeerDown,
    PeerUp,
    SendResult,
    Tick,
)
from exchange.wire import MSG_ORDERS, MSG_REPORTS, ORDER, ORDER_SIZE, REPORT, REPORT_SIZE, MessageKind

_unpack_trace = struct.Struct("<Q").unpack_from
_ORDER_TRACE_AT = ORDER.offset_of("trace_ns") // 8
_REPORT_TRACE_AT = REPORT.offset_of("trace_ns") // 8

log = logging.getLogger("matchwire")


@dataclass(slots=True)
class ActorFailed:
    """Told to the supervisor when an actor dies of an exception."""

    actor: str
    error: str


@dataclass(slots=True)
class StatsReport:
    """Told to the supervisor by every actor on each statistics tick."""

    actor: str
    stats: dict


@dataclass
class NodeContext:
    """What a node gives its actors: configuration, ZeroMQ context, local registry, supervisor."""

    config: ClusterConfig
    node: str
    zmq_context: zmq.Context
    local: LocalDirectory
    supervisor: pykka.ActorRef | None = None
    stats_interval: float = 1.0
    many_books: bool = False  # the node ticks its books in turn (Node.tick)
    heartbeat_ms: int = HEARTBEAT_MS  # the ZMTP heartbeat interval of the node's sockets (heartbeat_interval_ms)


class ClusterActor(pykka.ThreadingActor):
    """Base of the cluster's actors.

    Subclasses implement :meth:`handle_batch`, and may override :meth:`on_tick`,
    :meth:`on_peer_down`, :meth:`on_peer_up`, :meth:`handle_send_failures` and :meth:`stats`.
    After each message, when the inbox is empty, buffered output is flushed: under load, many
    records leave in one message.
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        # pykka calls on_failure when handling a message raises, but not when on_start raises: the actor just
        # stops. An actor that failed half-way through its start (a gateway with its client port and SoupBinTCP
        # server up, and no journal) would then keep those running and never tell its supervisor. So every
        # on_start of a subclass goes through on_failure when it raises.
        super().__init_subclass__(**kwargs)
        start = cls.__dict__.get("on_start")
        if start is None:
            return

        @functools.wraps(start)
        def on_start(self: ClusterActor) -> None:
            try:
                start(self)
            except Exception:
                if not self._start_failed:  # once, in the innermost on_start that raised
                    self._start_failed = True
                    self.on_failure(*sys.exc_info())
                raise

        cls.on_start = on_start  # type: ignore[method-assign]

    _start_failed = False

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue:  # type: ignore[override]
        # pykka's default inbox is a queue.Queue: a Python-level Condition per get that allocates
        # a lock and costs ~10 us of CPU per hand-off between threads. SimpleQueue (C) has the
        # same put/get/empty and FIFO order at about half that; every batch crosses one inbox.
        return queue.SimpleQueue()

    def __init__(self, context: NodeContext, name: str) -> None:
        super().__init__()
        self.ctx = context
        self.config = context.config
        self.name = name
        self.index = context.config.actor_index[name]
        self.outbox: Outbox | None = None
        self.counters: dict[str, int] = {}
        # What peers could not take yet, per (destination, kind), oldest first (hold_for_peer()).
        self.held_for_peers: dict[tuple[int, MessageKind], collections.deque] = {}
        self._held_tried: dict[tuple[int, MessageKind], float] = {}
        self._held_dropping: set[tuple[int, MessageKind]] = set()
        self._last_stats = 0.0
        # Per-stage timing for the metrics endpoint (actors/metrics.py): ~100 ns per batch.
        self.batch_ns = Log2Histogram()
        self.flush_ns = Log2Histogram()
        self.batch_records = Log2Histogram(16)
        # How old a batch's first record is when the actor takes it: time since the client sent it (binary API)
        # or the gateway took it in (OUCH), so stage after stage shows where latency accumulates. The trace
        # time is the sender's CLOCK_MONOTONIC: comparable only when every node runs on one host.
        self.age_orders_ns = Log2Histogram()
        self.age_reports_ns = Log2Histogram()
        self._ages = len({node.host for node in context.config.nodes}) == 1

    # -- pykka life cycle ----------------------------------------------------------------

    def on_start(self) -> None:
        # Registered before anything can address it (a gateway's client threads start in on_start).
        self.ctx.local.register(self.index, self.actor_ref)
        self.outbox = Outbox(self.ctx.zmq_context, self.config, self.name, self.ctx.local, self.ctx.node,
                             peers=self.peer_nodes(), heartbeat_ms=self.ctx.heartbeat_ms)

    def on_stop(self) -> None:
        if self.outbox is not None:
            self.flush()
            self.outbox.close()
            self.outbox = None

    def on_failure(self, exception_type: type, exception_value: BaseException, traceback: object) -> None:
        log.error("actor %s failed: %r", self.name, exception_value)
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        if self.ctx.supervisor is not None:
            self.ctx.supervisor.tell(ActorFailed(self.name, repr(exception_value)))

    def on_receive(self, message: object) -> object:
        kind = type(message)
        if kind is not Tick:
            self._handled += 1
        if kind is Batch:
            started = time.perf_counter_ns()
            if self._ages and message.count:  # type: ignore[union-attr]
                self._record_age(message, started)  # type: ignore[arg-type]
            try:
                self.handle_batch(message)  # type: ignore[arg-type]
            finally:
                self.ctx.local.done(self.index)
                self.batch_ns.record(time.perf_counter_ns() - started)
                self.batch_records.record(message.count)  # type: ignore[union-attr]
        elif kind is Tick:
            self._tick(message)  # type: ignore[arg-type]
        elif kind is PeerDown:
            self.on_peer_down(message.node)  # type: ignore[union-attr]
        elif kind is PeerUp:
            self.on_peer_up(message.node)  # type: ignore[union-attr]
        elif kind is ControlRequest:
            try:
                answer = self.on_control(message.request)  # type: ignore[union-attr]
            except Exception as exc:  # an operator's bad request must not kill the actor
                log.exception("%s: control request %r failed", self.name, message.request)  # type: ignore[union-attr]
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            if self.actor_inbox.empty() or self.flush_due():
                self.flush()
            return answer
        else:
            answer = self.on_other(message)
            if self.actor_inbox.empty() or self.flush_due():
                self.flush()
            return answer
        # Flush when idle (so batches grow with load), but never hold output back for long.
        if self.actor_inbox.empty() or self.flush_due():
            if kind is Batch:
                started = time.perf_counter_ns()
                self.flush()
                self.flush_ns.record(time.perf_counter_ns() - started)
            else:
                self.flush()
        return None

    def _record_age(self, batch: Batch, now: int) -> None:
        payload = batch.payload
        if batch.kind is MSG_ORDERS and len(payload) >= ORDER_SIZE:
            trace, histogram = _unpack_trace(payload, _ORDER_TRACE_AT)[0], self.age_orders_ns
        elif batch.kind is MSG_REPORTS and len(payload) >= REPORT_SIZE:
            trace, histogram = _unpack_trace(payload, _REPORT_TRACE_AT)[0], self.age_reports_ns
        else:
            return  # other kinds, or too short (handle_batch counts a malformed batch)
        if 0 < trace < now:  # 0: no trace (replays, records made inside the cluster)
            histogram.record(now - trace)

    MAX_BATCH_RECORDS = 512
    MAX_BATCH_DELAY_NS = 500_000

    def flush_due(self) -> bool:
        return self.outbox is not None and self.outbox.due(self.MAX_BATCH_RECORDS, self.MAX_BATCH_DELAY_NS)

    # -- behaviour for subclasses --------------------------------------------------------

    def handle_batch(self, batch: Batch) -> None:
        raise NotImplementedError

    def peer_nodes(self) -> list[str] | None:
        """The nodes this actor sends to: its outbox connects to these only (None: every other node)."""
        return None

    def on_other(self, message: object) -> object:
        """Messages other than batches and ticks (admin asks in tests, for instance)."""
        return None

    def on_control(self, request: dict) -> dict:
        """Answer an operator's request; subclasses add their commands and call this last."""
        if request.get("command") == "stats":
            # The process's CPU time (every thread) with its pid: `matchwire top` shows each node's share of a core.
            return {"actor": self.name, "stats": self.stats(), "process": [os.getpid(), time.process_time()]}
        if request.get("command") == "journal_state" and hasattr(self, "save_state"):
            # What a journal snapshot of this actor would hold now: tests compare it across a restart.
            return {"actor": self.name, "state": self.save_state()}
        return {"error": f"{self.name}: unknown command {request.get('command')!r}"}

    def on_tick(self, now: float) -> None:
        """Periodic work beyond flushing and probing."""

    def on_peer_down(self, node: str) -> None:
        log.warning("%s: node %s is down", self.name, node)

    def on_peer_up(self, node: str) -> None:
        log.info("%s: node %s is up", self.name, node)

    def handle_send_failures(self, result: SendResult) -> None:
        """Default: keep what could not go and send it again when the peer can take it (:meth:`hold_for_peer`)."""
        for destination, kind, records in result.busy + result.unreachable:
            self.hold_for_peer(destination, kind, records)

    #: Records held for a peer are tried again this often while its node is down, and go this many at a time.
    HELD_RETRY_SECONDS = 1.0
    HELD_CHUNK = 4096

    def hold_for_peer(self, destination: int, kind: MessageKind, records: list[bytes]) -> None:
        """Keep records a peer could not take, in order, ahead of any held for it already (they are older).

        They go again in order before anything newer for that peer: every flush while its node is reachable,
        once a second while it is not. They used to go back into the outbox one by one and be tried on every
        flush: with market data dead, a book re-buffered and re-sent all it had produced since, ten times a
        second, and its node's CPU went to that (the order rate fell to a quarter in a minute). At most
        ``max_held`` are kept per peer actor; beyond, the oldest are dropped, counted (``held_dropped``) and said
        once: a peer that returns from its journal asks the books for what it missed, as far back as they keep.
        """
        key = (destination, kind)
        queue = self.held_for_peers.get(key)
        if queue is None:
            queue = self.held_for_peers[key] = collections.deque()
        queue.extendleft(reversed(records))
        self._trim_held_for_peer(key, queue)

    def _trim_held_for_peer(self, key: tuple[int, MessageKind], queue: collections.deque) -> None:
        over = len(queue) - self.config.max_held
        if over <= 0:
            return
        for _ in range(over):
            queue.popleft()
        self.count("held_dropped", over)
        if key not in self._held_dropping:
            self._held_dropping.add(key)
            log.error("%s: %s has not taken its %s for long: more than %d held, the oldest are dropped (it asks for "
                      "what it missed when it returns from its journal)", self.name,
                      self.config.actor_names[key[0]], key[1].name.lower(), self.config.max_held)

    def _send_held_for_peers(self) -> None:
        assert self.outbox is not None
        outbox = self.outbox
        now = time.monotonic()
        for key in list(self.held_for_peers):
            destination, kind = key
            queue = self.held_for_peers[key]
            queue.extend(outbox.take(destination, kind))  # added since: behind the held ones
            self._trim_held_for_peer(key, queue)
            if not outbox.peer_up(destination) and now - self._held_tried.get(key, 0.0) < self.HELD_RETRY_SECONDS:
                continue
            self._held_tried[key] = now
            chunk = [queue.popleft() for _ in range(min(len(queue), self.HELD_CHUNK))]
            if not queue:
                del self.held_for_peers[key]
            outbox.put(destination, kind, chunk)

    def stats(self) -> dict:
        out = dict(self.counters)
        if self.outbox is not None:
            out.update({f"outbox_{k}": v for k, v in self.outbox.stats.items()})
            out["held_records"] = sum(len(queue) for queue in self.held_for_peers.values())
            out["outbox_pending"] = self.outbox.pending() + out["held_records"]
            out["peers_down"] = sorted(node for node, up in self.outbox.up.items() if not up)
        out["batch_ns"] = self.batch_ns.snapshot()
        out["flush_ns"] = self.flush_ns.snapshot()
        out["batch_records"] = self.batch_records.snapshot()
        out["age_orders_ns"] = self.age_orders_ns.snapshot()
        out["age_reports_ns"] = self.age_reports_ns.snapshot()
        return out

    # -- helpers ------------------------------------------------------------------------

    def count(self, key: str, amount: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + amount

    def flush(self) -> None:
        if self.outbox is None:
            return
        if self.held_for_peers:
            self._send_held_for_peers()
        result = self.outbox.flush()
        if result.busy or result.unreachable:
            self.handle_send_failures(result)
        # An actor with records held for a peer wants every tick of its node, also where the node ticks its books
        # in turn (Node.tick): they go again on each.
        wants_ticks = self.ctx.local.wants_ticks
        if self.held_for_peers:
            wants_ticks.add(self.index)
        elif self.index in wants_ticks:
            wants_ticks.discard(self.index)

    #: Seconds between this actor's pings of every peer node. Risk shards and gateways act on a peer's death
    #: (refuse, cancel, answer) and probe every tick; see BookActor for the actors that do not.
    PROBE_INTERVAL = 0.0
    _last_probe = 0.0
    #: Until every peer has been seen up once, probes come at least this often (a node is ready when its actors
    #: see their peers: a longer PROBE_INTERVAL must not hold a start back).
    STARTING_PROBE_INTERVAL = 1.0
    _peers_seen = False

    #: Whether statistics go to the supervisor only when something changed (and at least every QUIET_STATS_SECONDS):
    #: for the actors a node may host by the thousand (books), whose reports, four a second each with their
    #: histograms, were most of an idle node's CPU (docs/cluster.md "Many instruments").
    QUIET_STATS = False
    QUIET_STATS_SECONDS = 5.0
    _handled = 0  # messages other than ticks taken so far
    _stats_key: tuple | None = None
    _stats_sent = 0.0

    def stats_key(self) -> tuple:
        """A cheap fingerprint of what :meth:`stats` shows: a report whose key has not changed is not sent
        (QUIET_STATS). Subclasses add what changes without a message."""
        outbox = self.outbox
        return (self._handled, len(self.counters), sum(self.counters.values()),
                sum(len(queue) for queue in self.held_for_peers.values()),
                None if outbox is None else (tuple(outbox.stats.values()), tuple(outbox.up.values())))

    def _tick(self, tick: Tick) -> None:
        interval = self.PROBE_INTERVAL if self._peers_seen else min(self.PROBE_INTERVAL, self.STARTING_PROBE_INTERVAL)
        if self.outbox is not None and tick.now - self._last_probe >= interval:
            self._last_probe = tick.now
            came_up, went_down = self.outbox.probe()
            for node in went_down:
                self.on_peer_down(node)
            for node in came_up:
                self.on_peer_up(node)
            if not self._peers_seen and all(self.outbox.up.values()):
                self._peers_seen = True
        elif self.outbox is not None:
            self.outbox.keep_current()
        self.on_tick(tick.now)
        self.flush()
        now = time.monotonic()
        if self.ctx.supervisor is not None and now - self._last_stats >= self.ctx.stats_interval:
            self._last_stats = now
            if self.QUIET_STATS:
                key = self.stats_key()
                if key == self._stats_key and now - self._stats_sent < self.QUIET_STATS_SECONDS:
                    return
                self._stats_key, self._stats_sent = key, now
            self.ctx.supervisor.tell(StatsReport(self.name, self.stats()))
