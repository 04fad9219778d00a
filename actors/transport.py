"""ZeroMQ between nodes, pykka within a node.


Each node binds one ROUTER socket (its *inbound* socket, routing id = node name), read by one
thread, the :class:`Inbound` pump, which hands every batch to the local actor it is addressed
to. Each actor that sends owns an :class:`Outbox`: a ROUTER socket made in ``on_start`` and
closed in ``on_stop``, connected to every peer node, with ``ROUTER_MANDATORY`` so an unreachable
peer is an error instead of a silent drop, and non-blocking sends so a full peer is seen at
once (counted, and answered "busy" by the caller) instead of blocking the actor. Records for
the same destination are batched until the actor's inbox runs dry, then sent as one message.

No socket is ever used by two threads. Messages for an actor on the same node skip ZeroMQ
and go through pykka directly.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pykka
import zmq

from actors.config import ClusterConfig
from exchange.layout import LayoutError
from exchange.wire import HEADER, MSG_CONTROL, MSG_PING, MessageKind, pack_header, parse_header

# Plain ints: pyzmq combines Flag members in Python, which costs on every send.
log = logging.getLogger("matchwire.transport")

NOBLOCK = int(zmq.NOBLOCK)
MORE_NOBLOCK = int(zmq.NOBLOCK | zmq.SNDMORE)
MORE = int(zmq.SNDMORE)


def recv_frames(socket: zmq.Socket, flags: int = NOBLOCK) -> list[bytes]:
    """One multipart message as bytes, like ``recv_multipart`` at about two thirds of its cost.

    ``Frame.more`` says whether another part follows without a ``getsockopt(RCVMORE)`` per part.
    """
    frame = socket.recv(flags, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = socket.recv(flags, copy=False)
        frames.append(frame.bytes)
    return frames


def send_frames(socket: zmq.Socket, routing_id: bytes, header: bytes, payload: bytes, flags: int = NOBLOCK) -> None:
    """``send_multipart([routing_id, header, payload], flags)`` by three plain sends.

    pyzmq's ``send_multipart`` checks every part in Python (about 2 us a message); the sends are
    the same, and a ROUTER refuses a message (EAGAIN, EHOSTUNREACH) on its first part, before
    anything of it is queued, so errors are as with ``send_multipart``.
    """
    more = flags | MORE
    socket.send(routing_id, more)
    socket.send(header, more)
    socket.send(payload, flags)

PING_HEADER_KIND = MessageKind.PING

HEARTBEAT_MS = 1000  # ZMTP heartbeat interval of a node with few connections
HEARTBEAT_MAX_MS = 10_000
HEARTBEATS_PER_SECOND = 500  # connections a node heartbeats each second at most (below the cap)


def heartbeat_interval_ms(connections: int) -> int:
    """The ZMTP heartbeat interval for the sockets of a node with ``connections`` connections (its actors' to their
    peers and its peers' to it).

    libzmq cancels a timer by walking every timer of its I/O thread, and a heartbeat answered is a timer cancelled, so a
    node's heartbeats cost the square of its connections each interval: at 4,000 instruments (6,000 connections a
    book node) the I/O thread spent most of a core walking timers while the cluster stood idle, and orders waited
    seconds behind it. So a node of many connections heartbeats less often, at most every ``HEARTBEAT_MAX_MS``; a peer
    that dies with its process is still seen at once (its connections close), one whose host vanishes later.
    """
    return min(HEARTBEAT_MAX_MS, max(HEARTBEAT_MS, connections * 1000 // HEARTBEATS_PER_SECOND))


def heartbeat_timeout_ms(interval_ms: int) -> int:
    """How long a connection may stay silent before it counts as dead: generous, since a peer merely starved of CPU
    must not be taken for dead (kill -9 closes the connection and is seen at once anyway)."""
    return max(5000, 3 * interval_ms)


@dataclass(slots=True)
class Batch:
    """Records addressed to one actor: ``count`` fixed-size records of ``kind`` in ``payload``."""

    kind: MessageKind
    source: int
    payload: bytes | memoryview
    count: int
    session: bytes = b""  # set for batches from a client connection


@dataclass(slots=True)
class Tick:
    """Sent to every actor periodically: retry pending sends, probe peers, report statistics."""

    now: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class PeerDown:
    """A peer node stopped answering; the actor decides what that means for its work."""

    node: str


@dataclass(slots=True)
class ControlRequest:
    """An operator's request (JSON object) for one actor; answered with a JSON-able dict."""

    request: dict


@dataclass(slots=True)
class PeerUp:
    """A peer node answers again."""

    node: str


class LocalDirectory:
    """Node-local registry: actor index -> pykka ActorRef, plus per-actor backlog counters.

    The inbound pump increments ``delivered`` and the actor increments ``processed``; each
    counter has one writer, so the backlog (their difference) needs no lock.
    """

    def __init__(self) -> None:
        self.refs: dict[int, pykka.ActorRef] = {}
        self.delivered: dict[int, int] = {}
        self.processed: dict[int, int] = {}
        # Actors delivered to and not yet seen caught up. A backlog only grows by a delivery, so only these can be
        # over a limit: over() looks at them, not at every actor (a node of a thousand books called it for every
        # message its pump read, and that was a fifth of its idle CPU).
        self._behind: set[int] = set()
        # Actors that want every tick of the node even where it ticks its books in turn (Node.tick).
        self.wants_ticks: set[int] = set()

    def register(self, index: int, ref: pykka.ActorRef) -> None:
        self.delivered.setdefault(index, 0)
        self.processed.setdefault(index, 0)
        self.refs[index] = ref

    def deliver(self, index: int, message: object) -> bool:
        ref = self.refs.get(index)
        if ref is None:
            return False
        delivered = self.delivered[index] = self.delivered[index] + 1
        if delivered > self.processed[index]:
            self._behind.add(index)
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            return False
        return True

    def done(self, index: int) -> None:
        self.processed[index] += 1

    def max_backlog(self) -> int:
        return max((self.delivered[i] - self.processed[i] for i in self.refs), default=0)

    def over(self, limit: int) -> bool:
        """True while some local actor is more than ``limit`` batches behind (``max_backlog() > limit``, cheaper).

        Safe beside threads that deliver meanwhile: an actor is dropped from ``_behind`` only when it has caught up,
        and checked again after (a delivery counts before it adds the actor)."""
        if not self._behind:
            return False
        delivered, processed = self.delivered, self.processed
        over = False
        for index in list(self._behind):
            backlog = delivered[index] - processed[index]
            if backlog > limit:
                over = True
            elif backlog <= 0:
                self._behind.discard(index)
                if delivered[index] > processed[index]:
                    self._behind.add(index)
        return over


class SendResult:
    """What happened to a flush: batches that could not go, by reason."""

    __slots__ = ("busy", "unreachable")

    def __init__(self) -> None:
        self.busy: list[tuple[int, MessageKind, list[bytes]]] = []
        self.unreachable: list[tuple[int, MessageKind, list[bytes]]] = []


class Outbox:
    """An actor's outbound side: batching per destination, non-blocking sends, liveness of peers.

    ``add`` buffers a record; ``flush`` sends every buffer as one message per destination and
    returns what could not be sent (``busy``: the peer's queue is full; ``unreachable``: the
    peer is not connected). The caller decides: reject new orders, keep reports for a retry.
    ``peers`` names the nodes it connects to (default: every other node); records for actors elsewhere are
    unreachable.
    """

    def __init__(self, context: zmq.Context, config: ClusterConfig, owner: str, local: LocalDirectory,
                 local_node: str, peers: Iterable[str] | None = None, heartbeat_ms: int = HEARTBEAT_MS) -> None:
        self.config = config
        self.owner = owner
        self.owner_index = config.actor_index[owner]
        self.local = local
        self.local_node = local_node
        self.socket = context.socket(zmq.ROUTER)
        # A fresh routing id per incarnation: a restarted actor never inherits its old pipes.
        self.socket.setsockopt(zmq.ROUTING_ID, f"{owner}@{os.getpid()}:{next(_incarnation)}".encode())
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, config.send_hwm)
        # Kernel buffers are queues too: bound them, or "bounded queues" hide megabytes.
        self.socket.setsockopt(zmq.SNDBUF, config.socket_buffer)
        self.socket.setsockopt(zmq.LINGER, 0)
        # Without IMMEDIATE a connecting socket keeps its pipe to a dead peer and queues into it,
        # silently; with it, a dead peer is unroutable at once and the sender knows.
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        # Heartbeats find a peer that vanished without closing its connection (heartbeat_interval_ms).
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_timeout_ms(heartbeat_ms))
        self.socket.setsockopt(zmq.RECONNECT_IVL, 50)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        self.peer_ids: dict[str, bytes] = {}
        wanted = None if peers is None else set(peers)
        for node in config.nodes:
            if node.name != local_node and (wanted is None or node.name in wanted):
                self.socket.connect(config.endpoint(node))
                self.peer_ids[node.name] = node.name.encode()
        self.node_of = [config.actor_node[name].name for name in config.actor_names]
        self.buffers: dict[tuple[int, MessageKind], list[bytes]] = {}
        self.buffered = 0
        self.oldest_ns = 0  # when the oldest buffered record was added
        self.batch_counters: dict[int, itertools.count] = {}
        self.up: dict[str, bool] = dict.fromkeys(self.peer_ids, False)  # as last seen, by a send or a ping
        # As last reported by probe(): a send that finds a node gone marks it down at once, and the next
        # probe still reports the change, so the actor's on_peer_down runs whoever noticed first.
        self.reported_up: dict[str, bool] = dict.fromkeys(self.peer_ids, False)
        self.stats = {"messages_sent": 0, "records_sent": 0, "busy": 0, "unreachable": 0, "local_batches": 0}

    def close(self) -> None:
        self.socket.close(linger=0)

    def add(self, destination: int, kind: MessageKind, record: bytes) -> None:
        key = (destination, kind)
        buffer = self.buffers.get(key)
        if buffer is None:
            if not self.buffers:
                self.oldest_ns = time.perf_counter_ns()
            self.buffers[key] = [record]
        else:
            buffer.append(record)
        self.buffered += 1

    def take(self, destination: int, kind: MessageKind) -> list[bytes]:
        """Remove and return what is buffered for ``destination`` and ``kind``."""
        records = self.buffers.pop((destination, kind), [])
        self.buffered -= len(records)
        return records

    def put(self, destination: int, kind: MessageKind, records: list[bytes]) -> None:
        """Buffer ``records`` for ``destination`` ahead of anything buffered for it since."""
        if not records:
            return
        key = (destination, kind)
        if not self.buffers:
            self.oldest_ns = time.perf_counter_ns()
        self.buffers[key] = records + self.buffers.get(key, [])
        self.buffered += len(records)

    def peer_up(self, destination: int) -> bool:
        """Whether ``destination``'s node was reachable when last tried (always, for a local actor)."""
        node = self.node_of[destination]
        return node == self.local_node or self.up.get(node, False)

    def due(self, max_records: int, max_delay_ns: int) -> bool:
        """True when the buffers are big or old enough to go even though more input is waiting."""
        return self.buffered >= max_records or (
            self.buffered > 0 and time.perf_counter_ns() - self.oldest_ns >= max_delay_ns)

    def pending(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    def flush(self) -> SendResult:
        result = SendResult()
        if not self.buffers:
            return result
        buffers, self.buffers = self.buffers, {}
        self.buffered = 0
        for (destination, kind), records in buffers.items():
            self._send(destination, kind, records, result)
        return result

    def send_now(self, destination: int, kind: MessageKind, records: list[bytes]) -> SendResult:
        result = SendResult()
        self._send(destination, kind, records, result)
        return result

    def _send(self, destination: int, kind: MessageKind, records: list[bytes], result: SendResult) -> None:
        node = self.node_of[destination]
        counter = self.batch_counters.get(destination)
        if counter is None:
            counter = self.batch_counters[destination] = itertools.count(1)
        payload = b"".join(records)
        if node == self.local_node:
            batch = Batch(kind, self.owner_index, payload, len(records))
            if self.local.deliver(destination, batch):
                self.stats["local_batches"] += 1
                self.stats["records_sent"] += len(records)
            else:
                result.unreachable.append((destination, kind, records))
            return
        routing_id = self.peer_ids.get(node)
        if routing_id is None:  # a node this outbox does not connect to (see ``peers``)
            self.stats["unreachable"] += 1
            result.unreachable.append((destination, kind, records))
            return
        header = pack_header(kind, len(records), self.owner_index, destination, next(counter))
        try:
            send_frames(self.socket, routing_id, header, payload)
        except zmq.Again:
            self.stats["busy"] += 1
            result.busy.append((destination, kind, records))
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.stats["unreachable"] += 1
            self.up[node] = False
            result.unreachable.append((destination, kind, records))
            return
        self.stats["messages_sent"] += 1
        self.stats["records_sent"] += len(records)
        self.up[node] = True

    def probe(self) -> tuple[list[str], list[str]]:
        """Ping every peer node; returns (nodes that came up, nodes that went down)."""
        came_up, went_down = [], []
        header = pack_header(PING_HEADER_KIND, 0, self.owner_index, 0, 0)
        for node, routing_id in self.peer_ids.items():
            try:
                send_frames(self.socket, routing_id, header, b"")
                alive = True
            except zmq.Again:
                alive = True  # connected, merely full
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                alive = False
            self.up[node] = alive
            if alive != self.reported_up[node]:
                (came_up if alive else went_down).append(node)
                self.reported_up[node] = alive
        return came_up, went_down

    def keep_current(self) -> None:
        """Let ZeroMQ apply what its I/O thread has queued for this socket (a dropped connection, a new one).

        It does so only when the socket is used. A book that neither sent nor pinged for a while had a restarted
        peer's new connection queued behind the end of the old one, both with the peer's routing id: the new
        pipe was refused, and sends to a peer that was back failed for tens of seconds (seen under load). Reading
        ``EVENTS`` is such a use, without a message.
        """
        self.socket.getsockopt(zmq.EVENTS)

    def wait_for_peers(self, nodes: list[str], timeout: float) -> list[str]:
        """Probe until the given peers are reachable or ``timeout`` passes; returns those still down."""
        deadline = time.monotonic() + timeout
        while True:
            self.probe()
            down = [n for n in nodes if n in self.up and not self.up[n]]
            if not down or time.monotonic() >= deadline:
                return down
            time.sleep(0.02)


_incarnation = itertools.count(1)


class Inbound(threading.Thread):
    """The node's inbound pump: one bound ROUTER socket, read by this thread alone.

    It stops reading while any local actor is more than ``max_backlog`` batches behind, so the
    socket's queue fills and senders see "busy": bounded queues end to end.
    """

    def __init__(self, context: zmq.Context, config: ClusterConfig, node_name: str, local: LocalDirectory,
                 heartbeat_ms: int = HEARTBEAT_MS, backlog: int = 100) -> None:
        super().__init__(name=f"inbound-{node_name}", daemon=True)
        self.heartbeat_ms = heartbeat_ms
        self.backlog = backlog
        self.context = context
        self.config = config
        self.node = config.node(node_name)
        self.local = local
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.stats = {"messages": 0, "records": 0, "pings": 0, "malformed": 0, "misaddressed": 0, "paused_ms": 0,
                      "control": 0, "wrong_source": 0}
        self.pending_control: list[tuple[bytes, object, float]] = []
        # A batch names its source actor by number, and actors answer to that number (a book sends a reject to
        # the risk shard that sent the command). The sending socket's routing id starts with the actor's name
        # (Outbox), so a number that is out of range or not the sender's (a peer started with another
        # configuration file numbers the actors otherwise; a forged message) is refused here: it once made a
        # book answer actor 9999 and die of it.
        self.source_prefixes = [f"{name}@".encode() for name in config.actor_names]
        self.wrong_senders: set[bytes] = set()

    def run(self) -> None:
        socket = self.context.socket(zmq.ROUTER)
        try:
            socket.setsockopt(zmq.ROUTING_ID, self.node.name.encode())
            socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
            socket.setsockopt(zmq.RCVHWM, self.config.send_hwm)
            socket.setsockopt(zmq.RCVBUF, self.config.socket_buffer)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ms)
            socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_timeout_ms(self.heartbeat_ms))
            # Every actor elsewhere that sends here connects at its start, thousands at once with many books: a
            # connection the listen queue drops waits for the kernel's SYN retry (1 s, then 3 s...).
            socket.setsockopt(zmq.BACKLOG, self.backlog)
            socket.bind(self.config.endpoint(self.node, bind=True))
        except zmq.ZMQError as exc:
            self.error = exc
            self.ready.set()
            socket.close(linger=0)
            return
        self.ready.set()
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poll = poller.poll
        limit = self.config.max_backlog
        over = self.local.over
        stopping = self.stopping
        try:
            while not stopping.is_set():
                if self.pending_control:
                    self._answer_control(socket)
                if over(limit):
                    time.sleep(0.001)
                    self.stats["paused_ms"] += 1
                    continue
                # One message per poll: with more queued the poll returns at once, and it costs less
                # than the zmq.Again exception that ends a non-blocking drain (most wake-ups bring one).
                if not poll(5 if self.pending_control else 50):
                    continue
                try:
                    frames = recv_frames(socket)
                except zmq.Again:
                    continue
                self._dispatch(frames)
        finally:
            socket.close(linger=0)

    def _dispatch(self, frames: list) -> None:
        if len(frames) != 3:
            self.stats["malformed"] += 1
            return
        sender, header_frame, payload = frames
        try:
            kind, count, source, destination, _ = parse_header(header_frame)
        except LayoutError:
            self.stats["malformed"] += 1
            return
        if kind is MSG_PING:
            self.stats["pings"] += 1
            return
        if kind is MSG_CONTROL:
            self._control(sender, payload)
            return
        stats = self.stats
        prefixes = self.source_prefixes
        if not (0 <= source < len(prefixes) and sender.startswith(prefixes[source])):
            stats["wrong_source"] += 1
            name = sender.split(b"@", 1)[0]
            if name not in self.wrong_senders and len(self.wrong_senders) < 64:  # said once per sender
                self.wrong_senders.add(name)
                log.error("node %s: a message from %r names source actor #%d (%s): refused; is that node running "
                          "with another configuration?", self.node.name, name.decode(errors="replace"), source,
                          self.config.actor_names[source] if 0 <= source < len(prefixes) else "no such actor")
            return
        if not self.local.deliver(destination, Batch(kind, source, payload, count)):
            stats["misaddressed"] += 1
            return
        stats["messages"] += 1
        stats["records"] += count


    def _control(self, sender: bytes, payload: bytes) -> None:
        """An operator's JSON request for a local actor: ask it, answer when it answers."""
        self.stats["control"] += 1
        try:
            request = json.loads(payload)
            index = self.config.actor_index[request["actor"]]
            ref = self.local.refs[index]
        except (ValueError, KeyError, TypeError) as exc:
            self.pending_control.append((sender, {"error": f"bad control request: {exc!r}"}, 0.0))
            return
        future = ref.ask(ControlRequest(request), block=False)
        self.pending_control.append((sender, future, time.monotonic() + 10))

    def _answer_control(self, socket: zmq.Socket) -> None:
        waiting = []
        for sender, future, deadline in self.pending_control:
            if isinstance(future, dict):
                answer = future
            else:
                try:
                    answer = future.get(timeout=0)  # type: ignore[union-attr]
                except pykka.Timeout:
                    if time.monotonic() < deadline:
                        waiting.append((sender, future, deadline))
                        continue
                    answer = {"error": "the actor did not answer in time"}
                except Exception as exc:  # the actor died answering
                    answer = {"error": repr(exc)}
            header = pack_header(MSG_CONTROL, 1, 0, 0, 0)
            try:
                send_frames(socket, sender, header, json.dumps(answer).encode())
            except zmq.ZMQError:
                pass  # the operator went away
        self.pending_control = waiting


HEADER_SIZE = HEADER.size
