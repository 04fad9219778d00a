"""Nasdaq SoupBinTCP 4.0: one table-driven packet codec and a streaming decoder.

Wire format: every logical packet is a 2-byte big-endian length (of what follows: the type byte plus
the payload), a 1-byte packet type, then the payload. TCP may split or merge packets arbitrarily, so
:class:`SoupDecoder` takes chunks as they arrive and hands out whole packets.

The whole protocol is the table ``_PACKET_TABLE``: for each packet type its name, who may send it
(client, server or both) and either its fixed fields in wire order or ``None`` for a variable-length
payload (debug text, sequenced and unsequenced data). Lengths, encoders, decoders and validation are
all derived from it.

Field kinds (all ASCII):

* ``alpha``: left-justified, padded on the right with spaces (username, password, reject code);
* ``alpha_right``: right-justified, padded on the left with spaces. The specification says so for
  the session in Login Accepted ("left padded with spaces"); the requested session of a Login
  Request is written the same way, as Nassau does;
* ``numeric``: a non-negative decimal integer in ASCII, right-justified and padded on the left with
  spaces ("left padded with spaces" in the specification).

Decoding is liberal where real clients differ and strict where it matters: text fields are read with
padding stripped from both ends (nasdaq-protocols left-justifies its numbers, the specification
right-justifies them), an all-blank numeric field reads as 0, and anything else malformed — a wrong
length for a fixed-length type, an unknown type or one the other side may not send, an oversize
packet, a zero length, non-ASCII text, a non-numeric number — raises :class:`SoupError`, which names
the stream offset of the problem. No other exception escapes the decoder for any input.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple, TypeAlias

__all__ = [
    "ALPHA",
    "ALPHA_RIGHT",
    "CLIENT",
    "CLIENT_HEARTBEAT",
    "END_OF_SESSION",
    "LOGIN_REJECT_NOT_AUTHORIZED",
    "LOGIN_REJECT_SESSION_NOT_AVAILABLE",
    "LOGOUT_REQUEST",
    "MAX_PACKET_LENGTH",
    "NUMERIC",
    "PACKET_TYPES",
    "SERVER",
    "SERVER_HEARTBEAT",
    "Packet",
    "PacketType",
    "SoupDecoder",
    "SoupError",
    "debug",
    "decode_packet",
    "encode",
    "encode_packet",
    "login_accepted",
    "login_rejected",
    "login_request",
    "sequenced_data",
    "unsequenced_data",
]

ALPHA = "alpha"
ALPHA_RIGHT = "alpha_right"
NUMERIC = "numeric"

CLIENT = "client"  # packets a client sends to the server
SERVER = "server"  # packets a server sends to the client
BOTH = "both"

#: The largest value of the 2-byte length prefix (type byte + payload).
MAX_PACKET_LENGTH = 0xFFFF

LOGIN_REJECT_NOT_AUTHORIZED = "A"  # invalid username or password
LOGIN_REJECT_SESSION_NOT_AVAILABLE = "S"  # the requested session is not valid or not available

Field: TypeAlias = tuple[str, str, int]

# Packet type -> (name, sender, fixed fields in wire order or None for a variable-length payload), in the
# order of section 2 of the SoupBinTCP 4.0 specification.
_PACKET_TABLE: dict[str, tuple[str, str, tuple[Field, ...] | None]] = {
    "+": ("debug", BOTH, None),
    # Sent by the server
    "A": ("login_accepted", SERVER, (("session", ALPHA_RIGHT, 10), ("sequence_number", NUMERIC, 20))),
    "J": ("login_rejected", SERVER, (("reject_reason_code", ALPHA, 1),)),
    "S": ("sequenced_data", SERVER, None),
    "H": ("server_heartbeat", SERVER, ()),
    "Z": ("end_of_session", SERVER, ()),
    # Sent by the client
    "L": (
        "login_request",
        CLIENT,
        (
            ("username", ALPHA, 6),
            ("password", ALPHA, 10),
            ("requested_session", ALPHA_RIGHT, 10),
            ("requested_sequence_number", NUMERIC, 20),
        ),
    ),
    "U": ("unsequenced_data", CLIENT, None),
    "R": ("client_heartbeat", CLIENT, ()),
    "O": ("logout_request", CLIENT, ()),
}


class SoupError(ValueError):
    """Malformed SoupBinTCP input (``offset`` = stream offset of the problem), or unencodable arguments
    (``offset`` None)."""

    def __init__(self, reason: str, offset: int | None = None) -> None:
        super().__init__(reason if offset is None else f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class PacketType(NamedTuple):
    """Everything derived from one row of the packet table."""

    code: str
    name: str
    sender: str
    fields: tuple[Field, ...] | None  # None: variable-length payload
    length: int | None  # value of the length prefix for fixed-length types (type byte included)


def _build_types() -> dict[str, PacketType]:
    types = {}
    for code, (name, sender, fields) in _PACKET_TABLE.items():
        length = None if fields is None else 1 + sum(width for _, _, width in fields)
        types[code] = PacketType(code, name, sender, fields, length)
    return types


#: Packet type character -> :class:`PacketType`, for every type of the specification.
PACKET_TYPES: dict[str, PacketType] = _build_types()

# Indexed by the type byte so the decoder's loop needs no dict lookup: fixed length, or -1 for variable.
_LENGTH_BY_BYTE: list[int | None] = [None] * 256
for _t in PACKET_TYPES.values():
    _LENGTH_BY_BYTE[ord(_t.code)] = -1 if _t.length is None else _t.length
del _t


class Packet(NamedTuple):
    """One decoded packet: its type character and its payload (the bytes after the type byte)."""

    type: str
    payload: bytes

    @property
    def name(self) -> str:
        """The packet type's name in the table (``login_request``, ``sequenced_data``, ...)."""
        return PACKET_TYPES[self.type].name

    def fields(self) -> dict[str, Any]:
        """The packet's fields by name: text without padding, numbers as ints. Variable-length types
        give ``{"payload": bytes}`` (``{"text": str}`` for debug). Raises :class:`SoupError` if the
        payload does not fit the table (the decoder has already checked that for packets it made)."""
        spec = PACKET_TYPES.get(self.type)
        if spec is None:
            raise SoupError(f"unknown packet type {self.type!r}")
        return _decode_fields(spec, self.payload, 0)


def _type_repr(byte: int) -> str:
    return f"{chr(byte)!r} (0x{byte:02x})" if 0x20 < byte < 0x7F else f"0x{byte:02x}"


def _decode_fields(spec: PacketType, payload: bytes, base: int) -> dict[str, Any]:
    """Decode and validate a payload; ``base`` is the stream offset of the payload for error reports."""
    if spec.fields is None:
        if spec.code == "+":
            if not payload.isascii():
                raise SoupError("debug text is not ASCII", base)
            return {"text": payload.decode("ascii")}
        return {"payload": payload}
    if len(payload) + 1 != spec.length:
        raise SoupError(f"{spec.name} payload is {len(payload)} bytes, the table says {spec.length - 1}", base)
    out: dict[str, Any] = {}
    pos = 0
    for name, kind, width in spec.fields:
        raw = payload[pos:pos + width]
        if not raw.isascii():
            raise SoupError(f"field {name!r} of {spec.name} is not ASCII", base + pos)
        text = raw.decode("ascii")
        if kind == NUMERIC:
            digits = text.strip(" ")
            if not digits:
                out[name] = 0
            elif digits.isdigit():  # ASCII-only here, so isdigit means 0-9
                out[name] = int(digits)
            else:
                raise SoupError(f"field {name!r} of {spec.name} is not a number: {text!r}", base + pos)
        elif kind == ALPHA and width == 1:
            out[name] = text  # a one-character code: a space would be meaningful
        elif kind == ALPHA:
            out[name] = text.rstrip(" ")
        else:
            out[name] = text.strip(" ")
        pos += width
    return out


def _encode_field(name: str, kind: str, width: int, value: Any) -> bytes:
    if kind == NUMERIC:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SoupError(f"field {name!r}: expected a non-negative int, got {value!r}")
        text = str(value)
        if len(text) > width:
            raise SoupError(f"field {name!r}: {value} does not fit {width} digits")
        return text.rjust(width).encode("ascii")
    if not isinstance(value, str) or not value.isascii():
        raise SoupError(f"field {name!r}: expected an ASCII str, got {value!r}")
    if len(value) > width:
        raise SoupError(f"field {name!r}: {value!r} is longer than {width} characters")
    padded = value.rjust(width) if kind == ALPHA_RIGHT else value.ljust(width)
    return padded.encode("ascii")


def encode_packet(type: str, payload: bytes = b"") -> bytes:
    """Frame ``payload`` as one packet of ``type`` (length prefix, type byte, payload).

    Fixed-length types must get a payload of exactly their length; raises :class:`SoupError`.
    """
    spec = PACKET_TYPES.get(type)
    if spec is None:
        raise SoupError(f"unknown packet type {type!r}")
    n = len(payload) + 1
    if spec.length is not None and n != spec.length:
        raise SoupError(f"{spec.name} payload must be {spec.length - 1} bytes, got {len(payload)}")
    if n > MAX_PACKET_LENGTH:
        raise SoupError(f"payload of {len(payload)} bytes does not fit a SoupBinTCP packet")
    return n.to_bytes(2, "big") + spec.code.encode("ascii") + payload


def encode(type: str, **fields: Any) -> bytes:
    """Encode a fixed-length packet from its named fields (all required, no others); for the
    variable-length types pass ``payload=`` (``text=`` for debug). Raises :class:`SoupError`."""
    spec = PACKET_TYPES.get(type)
    if spec is None:
        raise SoupError(f"unknown packet type {type!r}")
    if spec.fields is None:
        key = "text" if spec.code == "+" else "payload"
        if set(fields) != {key}:
            raise SoupError(f"{spec.name} takes exactly one field, {key!r}")
        value = fields[key]
        if key == "text":
            if not isinstance(value, str) or not value.isascii():
                raise SoupError("debug text must be an ASCII str")
            value = value.encode("ascii")
        elif not isinstance(value, bytes | bytearray | memoryview):
            raise SoupError(f"{spec.name} payload must be bytes")
        return encode_packet(spec.code, bytes(value))
    names = [name for name, _, _ in spec.fields]
    if set(fields) != set(names):
        missing = sorted(set(names) - set(fields))
        extra = sorted(set(fields) - set(names))
        raise SoupError(f"{spec.name}: missing fields {missing}, unknown fields {extra}")
    payload = b"".join(_encode_field(name, kind, width, fields[name]) for name, kind, width in spec.fields)
    return encode_packet(spec.code, payload)


def login_request(username: str, password: str, requested_session: str = "",
                  requested_sequence_number: int = 0) -> bytes:
    """A Login Request packet. Session blank: the current session. Sequence 0: start with the next
    message the server generates (no replay); N: replay from message N."""
    return encode("L", username=username, password=password, requested_session=requested_session,
                  requested_sequence_number=requested_sequence_number)


def login_accepted(session: str, sequence_number: int) -> bytes:
    """A Login Accepted packet: the session joined and the number of the next sequenced message."""
    return encode("A", session=session, sequence_number=sequence_number)


def login_rejected(reason: str) -> bytes:
    """A Login Rejected packet: ``"A"`` not authorized, ``"S"`` session not available."""
    if reason not in (LOGIN_REJECT_NOT_AUTHORIZED, LOGIN_REJECT_SESSION_NOT_AVAILABLE):
        raise SoupError(f"unknown login reject reason {reason!r}")
    return encode("J", reject_reason_code=reason)


def sequenced_data(payload: bytes) -> bytes:
    """A Sequenced Data packet carrying ``payload`` (server to client)."""
    n = len(payload) + 1
    if n > MAX_PACKET_LENGTH:
        raise SoupError(f"payload of {len(payload)} bytes does not fit a SoupBinTCP packet")
    return n.to_bytes(2, "big") + b"S" + payload


def unsequenced_data(payload: bytes) -> bytes:
    """An Unsequenced Data packet carrying ``payload`` (client to server)."""
    n = len(payload) + 1
    if n > MAX_PACKET_LENGTH:
        raise SoupError(f"payload of {len(payload)} bytes does not fit a SoupBinTCP packet")
    return n.to_bytes(2, "big") + b"U" + payload


def debug(text: str) -> bytes:
    """A Debug packet (either direction; receivers ignore it)."""
    return encode("+", text=text)


SERVER_HEARTBEAT = encode_packet("H")
CLIENT_HEARTBEAT = encode_packet("R")
END_OF_SESSION = encode_packet("Z")
LOGOUT_REQUEST = encode_packet("O")


class SoupDecoder:
    """Streaming decoder: ``feed`` TCP chunks as they arrive, then iterate ``packets()``.

    ``sender`` says whose packets these are (``"client"`` for a server's decoder, ``"server"`` for a
    client's): a type the other side may not send is as malformed as an unknown one.
    ``max_packet_length`` bounds the length prefix (type byte + payload); a bigger packet is refused as
    soon as its prefix arrives, without buffering it. Problems are found as early as possible: a bad
    type or a wrong length for a fixed-length type is reported once the first 3 bytes are in.

    ``packets()`` yields complete packets in order and raises :class:`SoupError` when it reaches a
    malformed one; everything before it has been yielded. After an error the decoder stays failed:
    further calls raise the same error (a byte stream cannot be trusted past a framing error).
    """

    def __init__(self, sender: str = CLIENT, max_packet_length: int = MAX_PACKET_LENGTH) -> None:
        if sender not in (CLIENT, SERVER):
            raise ValueError("sender must be 'client' or 'server'")
        if not 1 <= max_packet_length <= MAX_PACKET_LENGTH:
            raise ValueError(f"max_packet_length must be 1..{MAX_PACKET_LENGTH}")
        self.sender = sender
        self.max_packet_length = max_packet_length
        allowed = [None] * 256
        for spec in PACKET_TYPES.values():
            if spec.sender in (sender, BOTH):
                allowed[ord(spec.code)] = _LENGTH_BY_BYTE[ord(spec.code)]
        self._lengths = allowed
        self._buf = bytearray()
        self._pos = 0  # first unconsumed byte of _buf
        self._base = 0  # stream offset of _buf[0]
        self.error: SoupError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a yielded packet."""
        return len(self._buf) - self._pos

    @property
    def offset(self) -> int:
        """Stream offset of the next byte to decode (bytes consumed so far)."""
        return self._base + self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (any chunking)."""
        if self.error is None:
            self._buf += data

    def packets(self) -> Iterator[Packet]:
        """Yield every complete packet buffered so far; raise :class:`SoupError` at a malformed one."""
        if self.error is not None:
            raise self.error
        buf = self._buf
        lengths = self._lengths
        limit = self.max_packet_length
        try:
            while True:
                pos = self._pos
                have = len(buf) - pos
                if have < 2:
                    break
                n = (buf[pos] << 8) | buf[pos + 1]
                if n == 0:
                    self._fail("zero-length packet (no type byte)", pos)
                if n > limit:
                    self._fail(f"packet length {n} exceeds the limit of {limit}", pos)
                if have < 3:
                    break
                byte = buf[pos + 2]
                fixed = lengths[byte]
                if fixed is None:
                    if _LENGTH_BY_BYTE[byte] is None:
                        self._fail(f"unknown packet type {_type_repr(byte)}", pos + 2)
                    self._fail(f"packet type {_type_repr(byte)} may not be sent by a {self.sender}", pos + 2)
                if fixed >= 0 and n != fixed:
                    self._fail(f"{PACKET_TYPES[chr(byte)].name} packet has length {n}, must be {fixed}", pos)
                if have < 2 + n:
                    break
                payload = bytes(buf[pos + 3:pos + 2 + n])
                code = chr(byte)
                if fixed > 1 or code == "+":  # text fields: validate now, so no bad login reaches anyone
                    try:
                        _decode_fields(PACKET_TYPES[code], payload, self._base + pos + 3)
                    except SoupError as exc:
                        self.error = exc
                        raise
                self._pos = pos + 2 + n
                yield Packet(code, payload)
        finally:
            self._compact()

    def _fail(self, reason: str, pos: int) -> None:
        self.error = SoupError(reason, self._base + pos)
        raise self.error

    def _compact(self) -> None:
        # Drop consumed bytes once they are a large share of the buffer: amortised O(1) per byte.
        if self._pos and (self._pos == len(self._buf) or self._pos > 65536):
            del self._buf[:self._pos]
            self._base += self._pos
            self._pos = 0


def decode_packet(data: bytes, sender: str | None = None) -> Packet:
    """Decode exactly one complete packet from ``data``; raise :class:`SoupError` if it is malformed,
    incomplete or followed by extra bytes. ``sender`` (``"client"``/``"server"``) restricts the types
    accepted; None accepts all."""
    if sender is None:
        spec = PACKET_TYPES.get(chr(data[2])) if len(data) >= 3 else None
        sender = CLIENT if spec is None or spec.sender in (CLIENT, BOTH) else SERVER
    decoder = SoupDecoder(sender)
    decoder.feed(data)
    found = list(decoder.packets())
    if len(found) != 1 or decoder.buffered:
        if not found:
            raise SoupError(f"incomplete packet: {len(data)} bytes", 0)
        raise SoupError("more than one packet" if len(found) > 1 else "trailing bytes after the packet",
                        decoder.offset if len(found) == 1 else None)
    return found[0]
