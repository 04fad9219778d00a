"""MarketDataActor: every book's events, in each book's order, published as ITCH 5.0 over MoldUDP64.

It keeps what it always did: a check of each book's sequence numbers (a gap is counted and reported,
never hidden), a public view of the books rebuilt from the events alone, and trade statistics. On top
of the same event stream (issue #5):

* :class:`exchange.itch_publisher.ItchPublisher` turns the events into ITCH messages;
* messages are numbered and packed into MoldUDP64 packets of at most ``max_payload`` bytes, sent over
  UDP to the configured unicast subscribers and/or a multicast group. A partly filled packet leaves when
  the actor's inbox runs dry (so packets fill up under load), and a heartbeat goes out after
  ``heartbeat_interval`` seconds without a packet. Sends never block: a full socket buffer drops the
  packet (counted; subscribers recover it by re-request);
* the last ``history`` messages are kept, and MoldUDP64 re-request packets arriving on the UDP
  retransmission port are answered from them, to the requester's address;
* when ``capture_file`` is set, every message is also written there in the ITCH file format.

Configuration: the ``[market_data]`` table of the cluster file (see :class:`MarketDataSettings`).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import pykka

from actors.base import ClusterActor, NodeContext
from actors.config import ConfigError
from actors.durable import (
    ActorSnapshots,
    ResendGate,
    SnapshotArchive,
    commit_and_wait,
    journal_directory,
    open_journal,
    resend_request_record,
)
from actors.transport import Batch
from exchange.eventbook import EventBook
from exchange.itch import ItchFileWriter
from exchange.itch_publisher import DirectoryEntry, ItchPublisher, ns_since_midnight
from exchange.layout import LayoutError
from exchange.moldudp64 import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MoldError,
    MoldPacketizer,
    encode_packet,
    parse_packet,
    parse_request,
)
from exchange.wire import (
    EV_RECOVERED,
    MSG_REPORTS,
    REPORT_SIZE,
    ReplayFilter,
    iter_records,
    record_to_event,
)

# Journal records of a market-data actor (docs/durability.md "Market data"):
_TAG_SESSION = b"S"  # the MoldUDP64 session name: a restart continues it
_TAG_EVENT = b"E"  # an event as applied (96 bytes), then the ITCH messages it was published as
_TAG_MESSAGES = b"P"  # ITCH messages published without an event (start of day)
_LEN = struct.Struct(">H")
_SEQ = struct.Struct("<Q")  # an archive record: the message's sequence number, then the message


def _pack_messages(messages: list[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(m)) + m for m in messages)


def _unpack_messages(data: bytes, offset: int) -> list[bytes]:
    out = []
    while offset + 2 <= len(data):
        (length,) = _LEN.unpack_from(data, offset)
        out.append(data[offset + 2:offset + 2 + length])
        offset += 2 + length
    return out

log = logging.getLogger("matchwire.md")

Address = tuple[str, int]


def parse_address(text: object, what: str) -> Address:
    """``"host:port"`` -> (host, port); ValueError names ``what`` on anything else."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"{what}: expected 'host:port', got {text!r}")
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{what}: bad port in {text!r}") from None
    if not 0 <= number <= 65535 or not host:
        raise ValueError(f"{what}: bad address {text!r}")
    return host, number


def actor_table(raw: dict, key: str, actor: str) -> dict:
    """The ``[key]`` table of a decoded cluster file, with the actor's own sub-table (``[key."md/1"]``,
    keys containing "/") merged over it, so several actors of a kind can differ in ports or files."""
    table = raw.get(key, {}) or {}
    if not isinstance(table, dict):
        raise ValueError(f"[{key}] must be a table")
    merged = {k: v for k, v in table.items() if "/" not in k}
    override = table.get(actor)
    if isinstance(override, dict):
        merged.update(override)
    return merged


def default_session() -> str:
    """A session name for today's feed: a restarted publisher starts a new session (MMDDHHMMSS)."""
    return time.strftime("%m%d%H%M%S")


@dataclass
class MarketDataSettings:
    """The ``[market_data]`` table, with defaults (no table: no UDP, no capture, history kept anyway).

    ``targets``: unicast subscribers, ``["127.0.0.1:31001", ...]``; ``multicast``: ``"239.1.1.1:31000"``
    with ``multicast_interface`` (the local address to send from) and ``multicast_ttl``;
    ``retransmit``: ``"host:port"`` to answer re-requests on (empty: no retransmission server);
    ``history``: messages kept for re-requests; ``retransmit_max_packets``: packets per answer;
    ``session``: MoldUDP64 session name (default: the start time, MMDDHHMMSS); ``max_payload``: UDP
    payload bytes per packet; ``heartbeat_interval``: seconds; ``capture_file``: path of the ITCH capture
    (``{actor}`` is replaced by the actor name with "/" as "-"); ``attribution``: account -> MPID table,
    whose orders are published as ``F`` messages; ``round_lot_size`` for the stock directory;
    ``send_buffer``: the UDP socket's kernel send buffer (bytes). A sub-table named after the actor
    (``[market_data."md/1"]``) overrides the shared values for that actor.
    """

    targets: list[Address] = field(default_factory=list)
    multicast: Address | None = None
    multicast_interface: str = "127.0.0.1"
    multicast_ttl: int = 1
    retransmit: Address | None = None
    history: int = 100_000
    retransmit_max_packets: int = 8
    session: str = ""
    max_payload: int = DEFAULT_MAX_PAYLOAD
    heartbeat_interval: float = 1.0
    capture_file: str = ""
    attribution: dict[str, str] = field(default_factory=dict)
    round_lot_size: int = 100
    send_buffer: int = 1 << 20

    @classmethod
    def from_raw(cls, raw: dict, actor: str = "md/0") -> MarketDataSettings:
        """Read the ``[market_data]`` table of a decoded cluster file; ValueError on a bad value."""
        table = actor_table(raw, "market_data", actor)
        out = cls()
        out.targets = [parse_address(t, "market_data.targets") for t in table.get("targets", [])]
        if table.get("multicast"):
            out.multicast = parse_address(table["multicast"], "market_data.multicast")
        out.multicast_interface = str(table.get("multicast_interface", out.multicast_interface))
        out.multicast_ttl = int(table.get("multicast_ttl", out.multicast_ttl))
        if table.get("retransmit"):
            out.retransmit = parse_address(table["retransmit"], "market_data.retransmit")
        out.history = max(0, int(table.get("history", out.history)))
        out.retransmit_max_packets = max(1, int(table.get("retransmit_max_packets", out.retransmit_max_packets)))
        out.session = str(table.get("session", "")) or default_session()
        out.max_payload = int(table.get("max_payload", out.max_payload))
        out.heartbeat_interval = float(table.get("heartbeat_interval", out.heartbeat_interval))
        out.capture_file = str(table.get("capture_file", "")).replace("{actor}", actor.replace("/", "-"))
        out.attribution = {str(k): str(v) for k, v in dict(table.get("attribution", {})).items()}
        out.round_lot_size = int(table.get("round_lot_size", out.round_lot_size))
        out.send_buffer = int(table.get("send_buffer", out.send_buffer))
        if len(out.session) > 10 or not out.session.isascii():
            raise ValueError(f"market_data.session {out.session!r}: at most 10 ASCII characters")
        if out.max_payload < HEADER_SIZE + 64 or out.max_payload > 65507:
            raise ValueError(f"market_data.max_payload {out.max_payload}: between {HEADER_SIZE + 64} and 65507")
        return out


@dataclass(slots=True)
class UdpDatagrams:
    """Datagrams a :class:`UdpPump` read: (payload, sender address) pairs, in arrival order."""

    datagrams: list[tuple[bytes, Address]]


class UdpPump(threading.Thread):
    """A thread that owns UDP sockets: reads datagrams from all of them and hands them, in small batches,
    to ``deliver`` (an actor's ``tell``), and sends the datagrams queued with :meth:`send` from ``sock``
    (so that answers to them come back to ``sock``).

    One socket, one thread: the actor never touches these sockets. ``stop()`` ends the thread, which
    closes them.
    """

    def __init__(self, sock: socket.socket, deliver: Callable[[UdpDatagrams], None], name: str,
                 extra_sockets: tuple[socket.socket, ...] = (), max_batch: int = 64) -> None:
        super().__init__(name=name, daemon=True)
        self.sock = sock
        self.sockets = [sock, *extra_sockets]
        self.deliver = deliver
        self.max_batch = max_batch
        self.outgoing: queue.SimpleQueue[tuple[bytes, Address]] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.received = 0
        self.sent = 0
        self.send_errors = 0
        for each in self.sockets:
            each.setblocking(False)

    def send(self, data: bytes, address: Address) -> None:
        """Queue a datagram; the thread sends it within its poll interval (20 ms)."""
        self.outgoing.put((data, address))

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._drain_outgoing()
                readable, _, _ = select.select(self.sockets, [], [], 0.02)
                batch: list[tuple[bytes, Address]] = []
                for sock in readable:
                    while len(batch) < self.max_batch:
                        try:
                            data, address = sock.recvfrom(65535)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            break  # e.g. an ICMP error reported on the socket: nothing to read
                        batch.append((data, address))
                if batch:
                    self.received += len(batch)
                    try:
                        self.deliver(UdpDatagrams(batch))
                    except pykka.ActorDeadError:
                        return
        finally:
            for sock in self.sockets:
                sock.close()

    def _drain_outgoing(self) -> None:
        while True:
            try:
                data, address = self.outgoing.get_nowait()
            except queue.Empty:
                return
            try:
                self.sock.sendto(data, address)
                self.sent += 1
            except OSError:
                self.send_errors += 1

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (which closes the sockets) and wait for it."""
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)
        else:
            for sock in self.sockets:
                sock.close()


def udp_socket(bind: Address | None = None, send_buffer: int = 0) -> socket.socket:
    """A non-blocking IPv4 UDP socket, optionally bound."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        if bind is not None:
            sock.bind(bind)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class MarketDataActor(ClusterActor):
    """The cluster's public view of its books, and its ITCH 5.0 / MoldUDP64 feed."""

    def __init__(self, context: NodeContext, name: str) -> None:
        super().__init__(context, name)
        self.view = EventBook()
        self.listeners: list = []  # callables taking (event, trace_ns), called for every event
        self.replays = ReplayFilter()
        try:
            self.settings = MarketDataSettings.from_raw(context.config.raw, name)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{context.config.source}: {exc}") from exc
        self.publisher: ItchPublisher | None = None
        self.packetizer: MoldPacketizer | None = None
        # The history is a ring indexed by sequence number: answering a re-request is O(messages sent).
        self.history_size = self.settings.history
        self.history: list[bytes] = [b""] * self.history_size
        self.next_seq = 1  # sequence number of the next message published
        self.sock: socket.socket | None = None
        self.destinations: list[Address] = []
        self.retransmit_pump: UdpPump | None = None
        self.capture: ItchFileWriter | None = None
        self._capture_file: BinaryIO | None = None
        self.retransmit_address: Address | None = None
        self._last_send = 0.0
        self._last_capture_flush = 0.0
        self.journal = None
        self.snapshots: ActorSnapshots | None = None
        self.archive: SnapshotArchive | None = None
        self._archived_seq = 1  # the first message not yet in the snapshot archive
        self._archive_at_snapshot = 0  # archive records the newest snapshot covers
        self.gate = ResendGate()
        self.recovery: str | None = None
        self.stopping = False
        self._unsent: list[bytes] = []  # packets waiting for the journal commit that makes them durable

    # -- life cycle ---------------------------------------------------------------------------------------

    def on_start(self) -> None:
        super().on_start()
        s = self.settings
        # Timestamps: ns since local midnight. Midnight is found once, so a message costs no localtime();
        # a session running past midnight keeps counting up (> 24 h) rather than wrapping to 0.
        midnight = time.time_ns() - ns_since_midnight()
        self.publisher = ItchPublisher(self.config.instruments, clock=lambda: time.time_ns() - midnight,
                                       attribution=s.attribution,
                                       default_directory=DirectoryEntry(round_lot_size=s.round_lot_size))
        recovered = False
        if self.config.durability.enabled:
            durability = self.config.durability
            self.journal, state, records, report = open_journal(durability, self.ctx.node, self.name)
            self.snapshots = ActorSnapshots(durability, self.journal)
            self.recovery = str(report)
            recovered = state is not None or bool(records)
            self.archive = SnapshotArchive(journal_directory(durability, self.ctx.node, self.name),
                                           state.get("archive", 0) if state else 0, keep=self.history_size)
            if state is not None:
                self.load_state(state)
                first = self.next_seq - self.history_size
                for record in self.archive.records:
                    seq = _SEQ.unpack_from(record)[0]
                    if first <= seq < self.next_seq:
                        self.history[seq % self.history_size] = record[_SEQ.size:]
                self._archived_seq = self.next_seq
            self._archive_at_snapshot = self.archive.count
            self.archive.records = []
            if records:
                self._replay(records)  # the session, its numbering, the history and the public books
            elif not recovered:
                self.journal.append(_TAG_SESSION + s.session.encode())
        self.packetizer = MoldPacketizer(s.session, self.next_seq, s.max_payload)
        if s.capture_file:
            # Our own file object, so the capture can be flushed for readers while the feed runs.
            self._capture_file = open(s.capture_file, "wb")  # closed in on_stop
            self.capture = ItchFileWriter(self._capture_file)
        self.destinations = list(s.targets)
        if self.destinations or s.multicast is not None or s.retransmit is not None:
            self.sock = udp_socket(send_buffer=s.send_buffer)
            if s.multicast is not None:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                     socket.inet_aton(s.multicast_interface))
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, s.multicast_ttl)
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                self.destinations.append(s.multicast)
        if s.retransmit is not None:
            request_socket = udp_socket(bind=s.retransmit)
            self.retransmit_address = request_socket.getsockname()
            self.retransmit_pump = UdpPump(request_socket, self.actor_ref.tell, f"{self.name}-retransmit")
            self.retransmit_pump.start()
        if recovered:
            # Events the old process took in but had not journaled died with it: ask every book for its
            # events after the last one journaled, and hold its live events until they are in.
            for symbol in self.config.instruments:
                self._request_resend(symbol)
            self.flush()
            return
        messages = self.publisher.start_of_day()
        if self.journal is not None:
            self.journal.append(_TAG_MESSAGES + _pack_messages(messages))
        self._publish(messages)
        self._flush_packets()

    def _replay(self, records: list[bytes]) -> None:
        """Rebuild the public books, the publisher's order map, the MoldUDP64 numbering and the history."""
        assert self.publisher is not None
        for record in records:
            tag = record[:1]
            if tag == _TAG_SESSION:
                self.settings.session = record[1:].decode("ascii", "replace")
            elif tag == _TAG_MESSAGES:
                self._keep(_unpack_messages(record, 1))
            elif tag == _TAG_EVENT:
                if not self.replays.fresh(record, 1):
                    continue
                try:
                    event, _ = record_to_event(record, 1)
                except LayoutError:
                    self.count("malformed_records")
                    continue
                self.view.apply(event)
                self.publisher.on_event(event)  # its state; the messages sent then are in the record
                self._keep(_unpack_messages(record, 1 + REPORT_SIZE))
            else:
                self.count("journal_unknown_records")
        log.warning("%s: recovered %d journal records: session %s continues at message %d", self.name, len(records),
                    self.settings.session, self.next_seq)

    # -- journal snapshots ---------------------------------------------------------------------------------

    def save_state(self) -> dict:
        """What replaying this actor's journal up to now rebuilds: the MoldUDP64 session and numbering, the
        public books, the publisher's order map and the books' high-water marks. The messages kept for
        re-requests are not in it: each snapshot appends the new ones to the archive (below)."""
        return {
            "session": self.settings.session,
            "next_seq": self.next_seq,
            "view": self.view.save_state(),
            "publisher": self.publisher.save_state() if self.publisher is not None else None,
            "replays": self.replays.save_state(),
        }

    def load_state(self, state: dict) -> None:
        """Continue from a snapshot made by :meth:`save_state`."""
        self.settings.session = state["session"]
        self.next_seq = state["next_seq"]
        self.view.load_state(state["view"])
        if self.publisher is not None and state["publisher"] is not None:
            self.publisher.load_state(state["publisher"])
        self.replays.load_state(state["replays"])

    def _keep(self, messages: list[bytes]) -> None:
        size = self.history_size
        if size:
            for i, msg in enumerate(messages):
                self.history[(self.next_seq + i) % size] = msg
        self.next_seq += len(messages)

    def _request_resend(self, symbol: str) -> None:
        """Ask book ``symbol`` for its events after the last one journaled; hold its events until they come."""
        self.gate.wait_for(symbol)
        last = self.replays.last.get(symbol.encode().ljust(8, b" "), 0)
        self.outbox.add(self.config.actor_index[f"book/{symbol}"], MSG_REPORTS,  # type: ignore[union-attr]
                        resend_request_record(symbol, last))

    def on_stop(self) -> None:
        self.stopping = True
        if self.publisher is not None and self.packetizer is not None:
            messages = self.publisher.end_of_day()
            if self.journal is not None:
                self.journal.append(_TAG_MESSAGES + _pack_messages(messages))
            self._publish(messages)
            self._flush_packets()
            self._transmit(self.packetizer.end_of_session())
        if self.retransmit_pump is not None:
            self.retransmit_pump.stop()
            self.retransmit_pump = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._close_capture()
        super().on_stop()
        if self.journal is not None:
            self.journal.close()
        if self.archive is not None:
            self.archive.close()

    def _close_capture(self) -> None:
        if self.capture is not None:
            self.capture.close()
            self.capture = None
        if self._capture_file is not None:
            self._capture_file.close()
            self._capture_file = None

    def on_failure(self, exception_type: type, exception_value: BaseException, traceback: object) -> None:
        if self.retransmit_pump is not None:
            self.retransmit_pump.stop()
        if self.sock is not None:
            self.sock.close()
        self._close_capture()
        super().on_failure(exception_type, exception_value, traceback)

    # -- events in ----------------------------------------------------------------------------------------

    def handle_batch(self, batch: Batch) -> None:
        if batch.kind is not MSG_REPORTS:
            self.count("unexpected_batches")
            return
        try:
            offsets = iter_records(batch.payload, REPORT_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        apply = self.view.apply
        payload = batch.payload
        listeners = self.listeners
        on_event = self.publisher.on_event if self.publisher is not None else None
        publish = self._publish
        fresh = self.replays.fresh
        gate = self.gate
        journal = self.journal
        self.count("events", batch.count)
        # The batch's messages are numbered and packetized together at its end (or before anything else leaves):
        # the same packets, in the same order, for one call per batch instead of one per event.
        messages: list[bytes] = []
        try:
            for offset in offsets:
                if gate.waiting or journal is not None:
                    if messages:
                        publish(messages)
                        messages = []
                    if gate.waiting:
                        gate.route(payload, offset, REPORT_SIZE, self._event, self._request_resend)
                    else:
                        self._event(payload, offset)
                    continue
                # A recovered book re-sends its events since its snapshot: drop the ones seen already,
                # and take its RECOVERED marker as what it is, not as an event.
                if not fresh(payload, offset):
                    continue
                if payload[offset] == EV_RECOVERED:
                    if payload[offset + 7] == 1:
                        self.count("books_recovered")
                    continue
                try:
                    event, trace_ns = record_to_event(payload, offset)
                except LayoutError:
                    self.count("malformed_records")
                    continue
                apply(event)
                for listener in listeners:
                    listener(event, trace_ns)
                if on_event is not None:
                    messages += on_event(event)
        finally:
            if messages:
                publish(messages)

    def _event(self, payload: bytes | memoryview, offset: int) -> None:
        """One event with durability on: journaled with the messages it becomes before any packet leaves."""
        if not self.replays.fresh(payload, offset):
            return
        if payload[offset] == EV_RECOVERED:
            if payload[offset + 7] == 1:
                self.count("books_recovered")
            return
        try:
            event, trace_ns = record_to_event(payload, offset)
        except LayoutError:
            self.count("malformed_records")
            return
        self.view.apply(event)
        for listener in self.listeners:
            listener(event, trace_ns)
        messages = self.publisher.on_event(event) if self.publisher is not None else []
        self.journal.append(_TAG_EVENT + bytes(payload[offset:offset + REPORT_SIZE])  # type: ignore[union-attr]
                            + _pack_messages(messages or []))
        if messages:
            self._publish(messages)

    # -- feed out -----------------------------------------------------------------------------------------

    def _publish(self, messages: list[bytes]) -> None:
        """Number, keep, capture and packetize messages; full packets leave at once."""
        packetizer = self.packetizer
        assert packetizer is not None
        size = self.history_size
        if size:
            history = self.history
            seq = self.next_seq
            for msg in messages:
                history[seq % size] = msg
                seq += 1
        self.next_seq += len(messages)
        self.count("messages", len(messages))
        if self.capture is not None:
            write = self.capture.write
            for msg in messages:
                write(msg)
        send = self._send
        for msg in messages:
            for packet in packetizer.add(msg):
                send(packet)

    def _take_snapshot(self) -> None:
        """The history goes to the archive a snapshot at a time (only what is new), so a snapshot costs what
        changed, not the 100,000 messages kept (~60 ms of JSON when they were in it); the archive keeps
        the segments that hold the last ``history`` messages."""
        if self.snapshots is None or self.archive is None or not self.snapshots.due():
            return
        size = self.history_size
        first = max(self._archived_seq, self.next_seq - size, 1)
        self.archive.extend([_SEQ.pack(seq) + self.history[seq % size] for seq in range(first, self.next_seq)])
        # What the older of the two snapshots kept needs stays (recovery falls back to it if the newer is bad).
        self.archive.prune(self._archive_at_snapshot - size)
        self._archive_at_snapshot = self.archive.count
        self._archived_seq = self.next_seq
        state = self.save_state()
        state["archive"] = self.archive.count
        self.snapshots.take(state)

    def on_control(self, request: dict) -> dict:
        if request.get("command") == "journal_state":
            # The state a snapshot holds, plus what the archive restores: the messages kept for re-requests.
            return {"actor": self.name, "state": {**self.save_state(), "history": self.history_digest()}}
        return super().on_control(request)

    def history_digest(self) -> str:
        """CRC-32 of the messages kept for re-requests, in order (tests compare it across a restart)."""
        first = max(1, self.next_seq - self.history_size)
        crc = 0
        for seq in range(first, self.next_seq):
            crc = zlib.crc32(self.history[seq % self.history_size], crc)
        return f"{first}-{self.next_seq}:{crc:08x}"

    def _flush_packets(self) -> None:
        if self.packetizer is not None:
            for packet in self.packetizer.flush():
                self._send(packet)
        if self._unsent:
            # Group commit: the journal holds every message numbered so far before any packet goes
            # (with more input queued, the packets wait for the next flush).
            if not commit_and_wait(self.journal, self.stopping or self.actor_inbox.empty()):  # type: ignore[arg-type]
                return
            unsent, self._unsent = self._unsent, []
            for packet in unsent:
                self._transmit(packet)

    def _send(self, packet: bytes, destinations: list[Address] | None = None) -> None:
        if self.journal is not None and destinations is None:
            # A packet leaves only once its messages are durable (see _flush_packets).
            self._unsent.append(packet)
            return
        self._transmit(packet, destinations)

    def _transmit(self, packet: bytes, destinations: list[Address] | None = None) -> None:
        self._last_send = time.monotonic()
        self.count("packets")
        sock = self.sock
        if sock is None:
            return
        for address in self.destinations if destinations is None else destinations:
            try:
                sock.sendto(packet, address)
            except BlockingIOError:
                self.count("udp_dropped")  # the socket buffer is full: never block the actor
            except OSError:
                self.count("udp_errors")
            else:
                self.count("udp_sent")

    def flush(self) -> None:
        # Called when the inbox is empty (and on ticks): the partly filled packet leaves now.
        self._flush_packets()
        super().flush()
        self._take_snapshot()

    def on_tick(self, now: float) -> None:
        if self.packetizer is not None and time.monotonic() - self._last_send >= self.settings.heartbeat_interval:
            self._flush_packets()
            # (No heartbeat while packets wait for their commit: it would announce their numbers early.)
            if time.monotonic() - self._last_send >= self.settings.heartbeat_interval and not self._unsent:
                self.count("heartbeats")
                self._transmit(self.packetizer.heartbeat())
        if self._capture_file is not None and now - self._last_capture_flush >= 1.0:
            self._last_capture_flush = now
            self._capture_file.flush()

    # -- retransmission ----------------------------------------------------------------------------------

    def _answer(self, data: bytes, address: Address) -> None:
        self.count("retransmit_requests")
        try:
            request = parse_request(data)
        except MoldError:
            self.count("retransmit_bad")
            return
        assert self.packetizer is not None
        if request.session != self.settings.session:
            self.count("retransmit_wrong_session")
            return
        sent_end = self.packetizer.next_sequence_number  # messages up to here have been sent
        if self._unsent:
            # ... except those in packets still waiting for their commit: a crash could take them back.
            sent_end = parse_packet(self._unsent[0]).sequence_number
        first_kept = max(1, self.next_seq - self.history_size)
        start, count = request.sequence_number, request.requested_count
        if count == 0 or start >= sent_end:
            self.count("retransmit_future")
            return
        if start < first_kept:
            # Older than the history: nothing can answer this; the subscriber gives up after its retries.
            self.count("retransmit_too_old")
            return
        end = min(start + count, sent_end)
        max_payload = self.settings.max_payload
        packets = 0
        seq = start
        history, ring = self.history, self.history_size
        while seq < end and packets < self.settings.retransmit_max_packets:
            batch: list[bytes] = []
            size = HEADER_SIZE
            while seq + len(batch) < end:
                msg = history[(seq + len(batch)) % ring]
                if size + 2 + len(msg) > max_payload:
                    break
                batch.append(msg)
                size += 2 + len(msg)
            self._send(encode_packet(self.settings.session, seq, batch), [address])
            seq += len(batch)
            packets += 1
        self.count("retransmit_packets", packets)
        self.count("retransmit_messages", seq - start)

    # -- queries ------------------------------------------------------------------------------------------

    def stats(self) -> dict:
        out = super().stats()
        out["duplicate_events_dropped"] = self.replays.dropped
        if self.journal is not None:
            out.update({f"journal_{k}": v for k, v in self.journal.stats.items()})
            out["resend_waiting"] = self.gate.symbols()
        if self.recovery:
            out["recovery"] = self.recovery
        view = self.view
        out["gaps"] = len(view.gaps)
        out["anomalies"] = view.anomalies
        out["books"] = {
            symbol: {"seq": view.last_seq.get(symbol), "bbo": view.bbo(symbol), "trades": view.trades.get(symbol, 0),
                     "volume": view.volume.get(symbol, 0), "last": view.last_price.get(symbol)}
            for symbol in sorted(set(view.last_seq) | set(view.orders))
        }
        out["session"] = self.settings.session
        out["next_seq"] = self.next_seq
        if self.publisher is not None:
            out["itch"] = dict(self.publisher.stats)
        return out

    def on_other(self, message: object) -> object:
        if type(message) is UdpDatagrams:
            for data, address in message.datagrams:  # type: ignore[attr-defined]
                self._answer(data, address)
            return None
        if message == "gaps":
            return list(self.view.gaps)
        if isinstance(message, tuple) and message and message[0] == "depth":
            return self.view.depth(message[1])
        if message == "last_seq":
            return dict(self.view.last_seq)
        if message == "feed":
            return {"session": self.settings.session, "next_seq": self.next_seq,
                    "retransmit": self.retransmit_address}
        return None
