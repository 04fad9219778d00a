"""MoldUDP64 framing: downstream packets (messages, heartbeats, end of session) and re-request packets.

Wire format (all integers unsigned big-endian):

* Downstream packet header, 20 bytes: session (10 ASCII bytes, space-padded), sequence number (u64: the
  sequence number of the first message in the packet, or for heartbeats/end of session the next one
  expected), message count (u16). Count 0 is a heartbeat, 0xFFFF marks the end of the session.
* Then ``count`` message blocks: length (u16) followed by that many bytes.
* Request packet, 20 bytes: session (10), sequence number (u64), requested message count (u16).

Parsing is strict and total: a packet must hold exactly its declared blocks. Anything else raises
:class:`MoldError`, which names the byte offset of the problem; no other exception escapes the parsers
for any ``bytes`` input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "END_OF_SESSION_COUNT",
    "HEADER_SIZE",
    "MAX_MESSAGES_PER_PACKET",
    "DownstreamPacket",
    "MoldError",
    "MoldPacketizer",
    "RequestPacket",
    "SequenceTracker",
    "encode_end_of_session",
    "encode_heartbeat",
    "encode_packet",
    "encode_request",
    "packetize",
    "parse_packet",
    "parse_request",
]

_HEADER = struct.Struct(">10sQH")
HEADER_SIZE = _HEADER.size  # 20
SESSION_WIDTH = 10
END_OF_SESSION_COUNT = 0xFFFF
MAX_MESSAGES_PER_PACKET = 0xFFFE  # 0xFFFF is reserved for end of session
DEFAULT_MAX_PAYLOAD = 1400  # keeps a packet inside a 1500-byte Ethernet MTU with IP/UDP headers
_MAX_SEQUENCE = (1 << 64) - 1


class MoldError(ValueError):
    """Malformed MoldUDP64 input (``offset`` = byte offset of the problem) or unencodable arguments."""

    def __init__(self, reason: str, offset: int | None = None) -> None:
        super().__init__(reason if offset is None else f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DownstreamPacket:
    """A parsed downstream packet. Heartbeats and end-of-session packets carry no messages."""

    session: str
    sequence_number: int
    messages: tuple[bytes, ...]
    end_of_session: bool = False

    @property
    def is_heartbeat(self) -> bool:
        """True for a heartbeat (message count 0)."""
        return not self.messages and not self.end_of_session

    @property
    def next_sequence_number(self) -> int:
        """Sequence number of the message that follows this packet."""
        return self.sequence_number + len(self.messages)


@dataclass(frozen=True, slots=True)
class RequestPacket:
    """A re-request for ``requested_count`` messages starting at ``sequence_number``."""

    session: str
    sequence_number: int
    requested_count: int


def _session_bytes(session: str | bytes) -> bytes:
    raw = session.encode("ascii", "strict") if isinstance(session, str) else bytes(session)
    if len(raw) > SESSION_WIDTH or not raw.isascii():
        raise MoldError(f"session {session!r} is not at most {SESSION_WIDTH} ASCII characters")
    return raw.ljust(SESSION_WIDTH, b" ")


def _check_sequence(sequence_number: int) -> None:
    if not isinstance(sequence_number, int) or not 0 <= sequence_number <= _MAX_SEQUENCE:
        raise MoldError(f"sequence number {sequence_number!r} is not a u64")


def _encode_session(session: str | bytes) -> bytes:
    try:
        return _session_bytes(session)
    except UnicodeEncodeError:
        raise MoldError(f"session {session!r} is not ASCII") from None


def encode_packet(session: str | bytes, sequence_number: int, messages: Sequence[bytes]) -> bytes:
    """A downstream packet carrying ``messages`` (``sequence_number`` is that of the first one)."""
    _check_sequence(sequence_number)
    if len(messages) > MAX_MESSAGES_PER_PACKET:
        raise MoldError(f"{len(messages)} messages exceed the {MAX_MESSAGES_PER_PACKET} per packet limit")
    parts = [_HEADER.pack(_encode_session(session), sequence_number, len(messages))]
    for msg in messages:
        if len(msg) > 0xFFFF:
            raise MoldError(f"message of {len(msg)} bytes does not fit a u16 length")
        parts.append(len(msg).to_bytes(2, "big"))
        parts.append(bytes(msg))
    return b"".join(parts)


def encode_heartbeat(session: str | bytes, next_sequence_number: int) -> bytes:
    """A heartbeat: message count 0, carrying the next expected sequence number."""
    _check_sequence(next_sequence_number)
    return _HEADER.pack(_encode_session(session), next_sequence_number, 0)


def encode_end_of_session(session: str | bytes, next_sequence_number: int) -> bytes:
    """An end-of-session packet: message count 0xFFFF, carrying the next expected sequence number."""
    _check_sequence(next_sequence_number)
    return _HEADER.pack(_encode_session(session), next_sequence_number, END_OF_SESSION_COUNT)


def encode_request(session: str | bytes, sequence_number: int, requested_count: int) -> bytes:
    """A re-request packet for ``requested_count`` messages from ``sequence_number`` on."""
    _check_sequence(sequence_number)
    if not isinstance(requested_count, int) or not 0 <= requested_count <= 0xFFFF:
        raise MoldError(f"requested count {requested_count!r} is not a u16")
    return _HEADER.pack(_encode_session(session), sequence_number, requested_count)


def _decode_session(raw: bytes) -> str:
    if not raw.isascii():
        bad = next(i for i, b in enumerate(raw) if b > 0x7F)
        raise MoldError(f"non-ASCII byte 0x{raw[bad]:02x} in session", bad)
    return raw.decode("ascii").rstrip(" ")


def parse_packet(data: bytes | bytearray | memoryview) -> DownstreamPacket:
    """Parse one downstream packet (a whole UDP payload). Raises :class:`MoldError` on anything malformed."""
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise MoldError(f"truncated header: {len(data)} of {HEADER_SIZE} bytes", 0)
    raw_session, sequence_number, count = _HEADER.unpack_from(data, 0)
    session = _decode_session(raw_session)
    if count == END_OF_SESSION_COUNT:
        if len(data) != HEADER_SIZE:
            raise MoldError(f"{len(data) - HEADER_SIZE} bytes after an end-of-session header", HEADER_SIZE)
        return DownstreamPacket(session, sequence_number, (), end_of_session=True)
    if sequence_number + count > _MAX_SEQUENCE + 1:
        raise MoldError(f"{count} messages from sequence {sequence_number} overflow u64", 10)
    messages = []
    pos, end = HEADER_SIZE, len(data)
    for index in range(count):
        if pos + 2 > end:
            raise MoldError(f"truncated length of message block {index} of {count}", pos)
        n = (data[pos] << 8) | data[pos + 1]
        if pos + 2 + n > end:
            raise MoldError(
                f"truncated message block {index} of {count}: length {n}, {end - pos - 2} bytes left", pos
            )
        messages.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    if pos != end:
        raise MoldError(f"{end - pos} bytes after the {count} declared message blocks", pos)
    return DownstreamPacket(session, sequence_number, tuple(messages))


def parse_request(data: bytes | bytearray | memoryview) -> RequestPacket:
    """Parse a re-request packet; raises :class:`MoldError` unless it is exactly 20 well-formed bytes."""
    data = bytes(data)
    if len(data) != HEADER_SIZE:
        raise MoldError(f"request packet must be {HEADER_SIZE} bytes, got {len(data)}", min(len(data), 20))
    raw_session, sequence_number, count = _HEADER.unpack_from(data, 0)
    return RequestPacket(_decode_session(raw_session), sequence_number, count)


def packetize(
    session: str | bytes,
    first_sequence_number: int,
    messages: Iterable[bytes],
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> Iterator[bytes]:
    """Pack ``messages`` greedily, in order, into downstream packets of at most ``max_payload`` bytes each.

    Sequence numbers run on from ``first_sequence_number``. A message too large for an otherwise empty
    packet raises :class:`MoldError`.
    """
    packer = MoldPacketizer(session, first_sequence_number, max_payload)
    for msg in messages:
        yield from packer.add(msg)
    yield from packer.flush()


class MoldPacketizer:
    """Stateful sender side: accumulates messages, emits full packets, tracks the next sequence number.

    ``add`` returns the packets completed by that message (zero or one); ``flush`` returns the partly
    filled packet, if any. ``heartbeat``/``end_of_session`` flush nothing: call ``flush`` first.
    """

    def __init__(
        self, session: str | bytes, first_sequence_number: int = 1, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        _check_sequence(first_sequence_number)
        if max_payload < HEADER_SIZE + 2:
            raise MoldError(f"max_payload {max_payload} leaves no room for a message block")
        self.session = _encode_session(session)
        self.max_payload = max_payload
        self.next_sequence_number = first_sequence_number  # of the first message not yet in a packet
        self._pending: list[bytes] = []
        self._size = HEADER_SIZE

    def add(self, msg: bytes) -> list[bytes]:
        """Queue one message; returns the packet it closed, if the message did not fit the current one."""
        block = 2 + len(msg)
        if HEADER_SIZE + block > self.max_payload:
            raise MoldError(f"message of {len(msg)} bytes cannot fit a {self.max_payload}-byte packet")
        out = []
        if self._size + block > self.max_payload or len(self._pending) == MAX_MESSAGES_PER_PACKET:
            out = self.flush()
        self._pending.append(bytes(msg))
        self._size += block
        return out

    def flush(self) -> list[bytes]:
        """Emit the pending messages as one packet (empty list if nothing is pending)."""
        if not self._pending:
            return []
        packet = encode_packet(self.session, self.next_sequence_number, self._pending)
        self.next_sequence_number += len(self._pending)
        self._pending = []
        self._size = HEADER_SIZE
        return [packet]

    def heartbeat(self) -> bytes:
        """A heartbeat carrying the next sequence number to be sent."""
        return encode_heartbeat(self.session, self.next_sequence_number)

    def end_of_session(self) -> bytes:
        """An end-of-session packet carrying the next sequence number."""
        return encode_end_of_session(self.session, self.next_sequence_number)


class SequenceTracker:
    """Receiver side: delivers messages in sequence order once, and reports gaps to re-request.

    ``accept`` takes a parsed packet and returns the new in-order messages as ``(sequence, bytes)``;
    duplicates are dropped; a packet from the future is buffered and the gap recorded in ``gaps()``.
    """

    def __init__(self, session: str | None = None, next_expected: int = 1) -> None:
        self.session = session
        self.next_expected = next_expected
        self.end_of_session = False
        self.duplicates = 0
        self._future: dict[int, bytes] = {}
        self._highest_seen = next_expected  # one past the highest sequence number seen

    def accept(self, packet: DownstreamPacket) -> list[tuple[int, bytes]]:
        """Process a packet; returns newly deliverable messages. Raises MoldError on a session change."""
        if self.session is None:
            self.session = packet.session
        elif packet.session != self.session:
            raise MoldError(f"packet for session {packet.session!r}, tracking {self.session!r}")
        if packet.end_of_session:
            self.end_of_session = True
        seq = packet.sequence_number
        for msg in packet.messages:
            if seq < self.next_expected or seq in self._future:
                self.duplicates += 1
            else:
                self._future[seq] = msg
            seq += 1
        self._highest_seen = max(self._highest_seen, seq if packet.messages else packet.sequence_number)
        delivered = []
        while self.next_expected in self._future:
            delivered.append((self.next_expected, self._future.pop(self.next_expected)))
            self.next_expected += 1
        return delivered

    def gaps(self, max_count: int = 0xFFFF) -> list[tuple[int, int]]:
        """Missing ranges as ``(first_sequence, count)``, each count at most ``max_count``."""
        missing = []
        seq = self.next_expected
        while seq < self._highest_seen:
            if seq in self._future:
                seq += 1
                continue
            start = seq
            while seq < self._highest_seen and seq not in self._future and seq - start < max_count:
                seq += 1
            missing.append((start, seq - start))
        return missing
