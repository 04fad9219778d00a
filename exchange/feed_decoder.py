"""The feed handler's software core: the decoder interface, its software implementation, and the sans-IO
pipeline from MoldUDP64 packets (or ITCH file bytes) to L3/L2 books.

Layers, each replaceable on its own:

* :class:`FeedDecoder` is the interface issue #9 implements again in gateware. Its input is a run of
  length-prefixed ITCH messages: a 2-byte big-endian length before each message. That is, byte for byte,
  both the body of a MoldUDP64 packet (its message blocks, after the 20-byte header) and a chunk of an ITCH
  file, so one decoder serves the network and files. Its output is one dict per frame, in order: a decoded
  message (``exchange.itch`` field names) or, for a frame that could not be decoded, an error record
  ``{"type": "error", "offset": n, "reason": "..."}``. One record per frame keeps a decoder's output aligned
  with the sequence numbers of its input. :class:`SoftwareFeedDecoder` is ``exchange.itch.iter_messages``.
* :class:`FeedHandler` is everything between a socket and the books, with no I/O of its own: parse the
  MoldUDP64 packet, deliver messages once and in sequence order, say which retransmissions to request and
  when, decode through the decoder, apply to an :class:`exchange.l3book.L3Book` (L3 orders and L2 levels per
  stock), and report which books' BBO or top-of-book depth changed. ``actors.feed.FeedHandlerActor`` puts it
  behind sockets; ``bench`` measures it.

Nothing raises on bad input: malformed packets, packets of another session, sequence numbers far outside
the window, undecodable frames and messages about orders the book never saw are all counted in ``stats``.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, runtime_checkable

from exchange.itch import ItchDecodeError, iter_messages
from exchange.l3book import L3Book
from exchange.moldudp64 import (
    HEADER_SIZE,
    MoldError,
    encode_request,
    parse_packet,
)

__all__ = [
    "ERROR_TYPE",
    "BookUpdate",
    "FeedDecoder",
    "FeedHandler",
    "SoftwareFeedDecoder",
    "bench",
    "decoder_for",
    "known_decoders",
    "register_decoder",
]

ERROR_TYPE = "error"  # "type" of the record a decoder returns for a frame it could not decode


@runtime_checkable
class FeedDecoder(Protocol):
    """Decodes length-prefixed ITCH messages (a MoldUDP64 packet body, or ITCH file bytes) into dicts.

    ``decode`` returns one dict per frame, in order: the decoded message, or an error record
    (``"type": "error"`` with ``offset`` and ``reason``); a truncated tail gives one final error record. It
    never raises on bad bytes.
    """

    name: str

    def decode(self, payload: bytes) -> list[dict]:
        """Decode every frame of ``payload``."""
        ...


class SoftwareFeedDecoder:
    """The software decoder: ``exchange.itch`` (table-driven, generated straight-line decoders)."""

    name = "software"

    def decode(self, payload: bytes) -> list[dict]:
        """Decode every frame of ``payload`` (see :class:`FeedDecoder`)."""
        return [record if type(record) is dict else _error_record(record)  # type: ignore[arg-type]
                for _, record in iter_messages(payload)]


def _error_record(error: ItchDecodeError) -> dict:
    return {"type": ERROR_TYPE, "offset": error.offset, "reason": error.reason}


def _card_decoder(**options: Any) -> FeedDecoder:
    """The gateware decoder on the ITCH decoder card, over the card link (``host.itch_card``; imported
    only when asked for, so the software path needs no serial library): ``link=URL`` is required."""
    from host.itch_card import CardFeedDecoder

    return CardFeedDecoder(**options)


_DECODERS: dict[str, Callable[..., FeedDecoder]] = {"software": SoftwareFeedDecoder, "card": _card_decoder}


def register_decoder(name: str, factory: Callable[..., FeedDecoder]) -> None:
    """Make another decoder available by name (the gateware one of issue #9 registers here)."""
    _DECODERS[name] = factory


def known_decoders() -> list[str]:
    """Names :func:`decoder_for` accepts (without creating a decoder: ``card`` would open its link)."""
    return sorted(_DECODERS)


def decoder_for(name: str = "software", **options: Any) -> FeedDecoder:
    """A new decoder of the named backend, given ``options`` (``card``: ``link``, ``timeout``,
    ``retries``); ValueError names the known ones."""
    factory = _DECODERS.get(name)
    if factory is None:
        raise ValueError(f"unknown feed decoder {name!r} (known: {', '.join(sorted(_DECODERS))})")
    return factory(**options)


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """A stock's book changed at the top: its BBO and top ``n`` levels after the change.

    ``sequence`` is the MoldUDP64 sequence number of the last message applied (None when reading a file);
    ``timestamp`` the ITCH timestamp (ns since midnight) of the last message that touched this stock.
    """

    symbol: str
    locate: int
    bbo: tuple[int | None, int | None, int | None, int | None]
    depth: dict[str, list[tuple[int, int, int]]]
    sequence: int | None
    timestamp: int


# Message types that can change a book (others are applied too, but cannot move a BBO).
_BOOK_TYPES = frozenset("AFECXDU")


class _Sequencer:
    """Receiver-side sequencing: delivers each message once, in order; buffers the future, finds the gap."""

    __slots__ = ("duplicates", "future", "highest", "next_expected")

    def __init__(self, next_expected: int) -> None:
        self.next_expected = next_expected
        self.highest = next_expected  # one past the highest sequence number seen
        self.future: dict[int, bytes] = {}
        self.duplicates = 0

    def accept(self, first: int, messages: Iterable[bytes]) -> tuple[list[bytes], int]:
        """Take a packet's messages; returns (newly deliverable messages in order, how many were new)."""
        seq = first
        future = self.future
        expected = self.next_expected
        new = 0
        delivered: list[bytes] = []
        for msg in messages:
            if seq == expected and not future:
                delivered.append(msg)  # the common case: in order, nothing buffered
                expected += 1
                new += 1
            elif seq < expected or seq in future:
                self.duplicates += 1
            else:
                future[seq] = msg
                new += 1
            seq += 1
        if seq > self.highest:
            self.highest = seq
        while expected in future:
            delivered.append(future.pop(expected))
            expected += 1
        self.next_expected = expected
        return delivered, new

    def saw(self, next_sequence: int) -> None:
        """A heartbeat or end of session announced ``next_sequence``: anything before it exists."""
        if next_sequence > self.highest:
            self.highest = next_sequence

    def head_gap(self) -> tuple[int, int] | None:
        """The missing range that blocks delivery, as (first, count), or None."""
        if self.highest <= self.next_expected:
            return None
        end = min(self.future) if self.future else self.highest
        return self.next_expected, end - self.next_expected

    def skip_to(self, sequence: int) -> list[bytes]:
        """Give up on everything before ``sequence``; returns what became deliverable."""
        for seq in [s for s in self.future if s < sequence]:
            del self.future[seq]
        self.next_expected = max(self.next_expected, sequence)
        self.highest = max(self.highest, self.next_expected)
        return self.accept(self.next_expected, ())[0]


class FeedHandler:
    """Sans-IO feed handler: MoldUDP64 packets or ITCH bytes in; books, book updates and re-requests out.

    ``on_packet(data, now)`` takes one UDP payload and returns the :class:`BookUpdate` list it caused;
    ``poll(now)`` returns the re-request packets (bytes) to send to the retransmission server now;
    every list of updates also goes to the ``on_updates`` callback, when one is given;
    ``feed_stream(data)`` applies ITCH-file-format bytes directly (no sequencing); ``read_file(path)``
    reads a whole ITCH file (gzip or plain) in chunks through the decoder.

    Sequencing: ``first_sequence`` is the first message wanted (1 = the whole session: a late joiner asks
    for what it missed; None = join live at the first packet seen). Only the gap that blocks delivery is
    requested, at most ``max_request`` messages at a time; a request that brings nothing for
    ``retransmit_timeout`` seconds is repeated, up to ``max_retries`` times, after which the gap is given up
    (counted in ``lost``) and delivery resumes after it. A packet more than ``window`` messages ahead is
    dropped (``out_of_window``) unless ``resync_after`` such packets come in a row, which means the sender
    really is that far ahead: then the handler skips forward to it (``resyncs``).
    """

    def __init__(
        self,
        decoder: FeedDecoder | None = None,
        *,
        session: str | None = None,
        first_sequence: int | None = 1,
        depth: int = 5,
        retransmit_timeout: float = 0.25,
        max_retries: int = 20,
        max_request: int = 0xFFFE,
        window: int = 1_000_000,
        resync_after: int = 8,
        on_updates: Callable[[list[BookUpdate]], None] | None = None,
    ) -> None:
        self.decoder = decoder or SoftwareFeedDecoder()
        self.session = session or None
        self.first_sequence = first_sequence
        self.depth = depth
        self.retransmit_timeout = retransmit_timeout
        self.max_retries = max_retries
        self.max_request = max(1, min(max_request, 0xFFFF))
        self.window = window
        self.resync_after = resync_after
        self.on_updates = on_updates
        self.book = L3Book()
        self.seq: _Sequencer | None = None if first_sequence is None else _Sequencer(first_sequence)
        self.end_of_session = False
        self.last_system_event: str | None = None
        self._request: list[Any] | None = None  # [first, end, sent_at, tries] of the outstanding re-request
        self._out_of_window_streak = 0
        self._last_top: dict[int, tuple] = {}  # locate -> (bbo, depth) last reported
        self._timestamps: dict[int, int] = {}
        self.stats: dict[str, int] = {
            "packets": 0,
            "heartbeats": 0,
            "bad_packets": 0,
            "wrong_session": 0,
            "messages": 0,
            "decode_errors": 0,
            "duplicates": 0,
            "gaps": 0,
            "retransmit_requests": 0,
            "recovered": 0,
            "lost": 0,
            "out_of_window": 0,
            "resyncs": 0,
            "updates": 0,
        }

    # -- queries ---------------------------------------------------------------------------------------

    @property
    def next_sequence(self) -> int | None:
        """The sequence number of the next message to deliver (None before the first packet, joining live)."""
        return None if self.seq is None else self.seq.next_expected

    @property
    def unknown_order_messages(self) -> int:
        """Messages about orders the book never saw (a feed joined mid-day), all types together."""
        return sum(self.book.unknown_order_messages.values())

    def all_stats(self) -> dict[str, Any]:
        """Counters plus the book's own (unknown-order messages, anomalies) and the sequencing state."""
        out: dict[str, Any] = dict(self.stats)
        out["unknown_order_messages"] = self.unknown_order_messages
        out["anomalies"] = sum(self.book.anomalies.values())
        out["next_sequence"] = self.next_sequence
        out["gap_open"] = self.seq is not None and self.seq.head_gap() is not None
        out["session"] = self.session
        out["end_of_session"] = self.end_of_session
        return out

    # -- packets ---------------------------------------------------------------------------------------

    def on_packet(self, data: bytes, now: float | None = None) -> list[BookUpdate]:
        """Handle one UDP payload (a MoldUDP64 downstream packet); returns the book updates it caused."""
        self.stats["packets"] += 1
        try:
            packet = parse_packet(data)
        except MoldError:
            self.stats["bad_packets"] += 1
            return []
        if self.session is None:
            self.session = packet.session
        elif packet.session != self.session:
            self.stats["wrong_session"] += 1
            return []
        count = len(packet.messages)
        first = packet.sequence_number
        seq = self.seq
        if seq is None:
            seq = self.seq = _Sequencer(first)
        if first > seq.next_expected + self.window:
            self._out_of_window_streak += 1
            if self._out_of_window_streak < self.resync_after:
                self.stats["out_of_window"] += 1
                return []
            # The sender is really that far ahead: give up what lies before and follow it.
            self.stats["resyncs"] += 1
            self.stats["lost"] += first - seq.next_expected - len(seq.future)
            self._deliver(seq.skip_to(first), None)
            self._request = None
        self._out_of_window_streak = 0
        if packet.end_of_session:
            self.end_of_session = True
        if not count:
            self.stats["heartbeats"] += 1
            if first > seq.highest:
                self.stats["gaps"] += 1  # the heartbeat says messages were sent that never arrived
            seq.saw(first)
            return []
        highest_before = seq.highest
        if first > highest_before:
            self.stats["gaps"] += 1  # a new hole: messages between the highest seen and this packet
        dups_before = seq.duplicates
        delivered, new = seq.accept(first, packet.messages)
        self.stats["duplicates"] += seq.duplicates - dups_before
        if first < highest_before:
            # Messages that arrive below the highest already seen fill a gap: a retransmission (or reordering).
            self.stats["recovered"] += new
        if not delivered:
            return []
        last = seq.next_expected - 1
        if len(delivered) == count and last == first + count - 1:
            # Delivered exactly this packet's messages: its body is already the decoder's input format.
            return self._deliver(None, last, memoryview(data)[HEADER_SIZE:])
        return self._deliver(delivered, last)

    def _deliver(self, messages: list[bytes] | None, last: int | None, body: Any = None) -> list[BookUpdate]:
        if body is None:
            if not messages:
                return []
            body = b"".join(len(m).to_bytes(2, "big") + m for m in messages)
        return self._apply(self.decoder.decode(bytes(body)), last)

    def _apply(self, decoded: list[dict], sequence: int | None) -> list[BookUpdate]:
        # One pass to note which stocks may have moved (and when), then the book's own batch apply.
        touched: dict[int, int] = {}
        errors = 0
        book_types = _BOOK_TYPES
        for msg in decoded:
            kind = msg["type"]
            if kind in book_types:
                touched[msg["stock_locate"]] = msg["timestamp"]
            elif kind == ERROR_TYPE:
                errors += 1
            elif kind == "S":
                self.last_system_event = msg["event_code"]
        if errors:
            decoded = [msg for msg in decoded if msg["type"] != ERROR_TYPE]
        self.book.apply_all(decoded)
        self.stats["messages"] += len(decoded)
        self.stats["decode_errors"] += errors
        if not touched:
            return []
        self._timestamps.update(touched)
        return self._updates(touched, sequence)

    def _updates(self, locates: Iterable[int], sequence: int | None) -> list[BookUpdate]:
        out = []
        books = self.book.books
        for locate in locates:
            stock = books.get(locate)
            if stock is None:
                continue
            top = (stock.bbo(), stock.depth(self.depth))
            if self._last_top.get(locate) == top:
                continue
            self._last_top[locate] = top
            out.append(BookUpdate(stock.symbol, locate, top[0], top[1], sequence, self._timestamps.get(locate, 0)))
        if out:
            self.stats["updates"] += len(out)
            if self.on_updates is not None:
                self.on_updates(out)
        return out

    # -- retransmission --------------------------------------------------------------------------------

    def poll(self, now: float | None = None) -> list[bytes]:
        """Re-request packets due now (at most one: for the gap that blocks delivery). May also give a gap
        up after ``max_retries``; what that made deliverable is applied (its updates go to ``on_updates``)."""
        seq = self.seq
        if seq is None or self.session is None:
            return []
        now = time.monotonic() if now is None else now
        gap = seq.head_gap()
        request = self._request
        if gap is None:
            self._request = None
            return []
        first, count = gap
        if request is not None and request[0] <= first < request[1]:
            if first > request[0]:
                # Progress inside the outstanding request: it is being answered; wait from now.
                request[0], request[2], request[3] = first, now, 0
                return []
            if now - request[2] < self.retransmit_timeout:
                return []
            if request[3] >= self.max_retries:
                self.stats["lost"] += count
                self._request = None
                self._deliver(seq.skip_to(first + count), None)
                return self.poll(now)
            request[3] += 1
        else:
            request = self._request = [first, first, now, 0]
        count = min(count, self.max_request)
        request[1], request[2] = first + count, now
        self.stats["retransmit_requests"] += 1
        return [encode_request(self.session, first, count)]

    # -- files and raw ITCH streams --------------------------------------------------------------------

    def feed_stream(self, data: bytes) -> list[BookUpdate]:
        """Apply ITCH-file-format bytes (whole frames) without sequencing; returns the book updates."""
        return self._apply(self.decoder.decode(data), None)

    def read_file(self, source: str | os.PathLike[str] | BinaryIO, chunk_size: int = 1 << 20) -> int:
        """Read a whole ITCH file (gzip detected by its magic bytes) through the decoder, chunk by chunk;
        returns the number of messages applied. Book updates are computed per chunk (and go to
        ``on_updates``). A truncated tail or unreadable gzip counts as a decode error."""
        before = self.stats["messages"]
        owned = isinstance(source, str | os.PathLike)
        raw: BinaryIO = open(source, "rb") if owned else source  # type: ignore[arg-type]
        stream = raw
        try:
            if hasattr(raw, "peek"):
                head = raw.peek(2)[:2]
            else:
                where = raw.tell()
                head = raw.read(2)
                raw.seek(where)
            if head == b"\x1f\x8b":
                stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
            # read1: a truncated gzip stream must not lose what was already decompressed.
            read = getattr(stream, "read1", stream.read)
            pending = b""
            while True:
                try:
                    chunk = read(chunk_size)
                except (OSError, EOFError):
                    chunk = b""
                    self.stats["decode_errors"] += 1
                data = pending + chunk if pending else chunk
                cut = _whole_frames(data)
                if cut:
                    self.feed_stream(data[:cut])
                pending = data[cut:]
                if not chunk:
                    break
            if pending:
                self.stats["decode_errors"] += 1
        finally:
            if stream is not raw:
                stream.close()
            if owned:
                raw.close()
        return self.stats["messages"] - before


def _whole_frames(data: bytes) -> int:
    """Length of the longest prefix of ``data`` made of whole length-prefixed frames."""
    pos, end = 0, len(data)
    while pos + 2 <= end:
        stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
        if stop > end:
            break
        pos = stop
    return pos


def bench(messages: list[bytes], session: str = "BENCH", min_seconds: float = 1.0,
          max_payload: int = 1400) -> dict[str, float]:
    """Feed-handler throughput: ``messages`` (encoded ITCH) packed into MoldUDP64 packets once, then whole
    passes of ``FeedHandler.on_packet`` (parse, sequence, decode, L3/L2 book, BBO/depth change detection)
    over fresh handlers until ``min_seconds`` have elapsed. Returns messages/s and packets/s."""
    from exchange.moldudp64 import packetize

    packets = list(packetize(session, 1, messages, max_payload))
    passes = 0
    start = time.perf_counter()
    while True:
        handler = FeedHandler(session=session)
        on_packet = handler.on_packet
        for packet in packets:
            on_packet(packet)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    return {"msgs_per_s": passes * len(messages) / elapsed, "packets_per_s": passes * len(packets) / elapsed,
            "updates": handler.stats["updates"], "packets": len(packets)}

