"""The host <-> card link frame format: the one definition shared by Python, gateware and host.

Wire format (a byte stream: UART, TCP socket to a simulated card, ...)::

    0x00 | COBS( type | payload | CRC-32 ) | 0x00
    ^lead  ^--------------- body ---------^   ^delimiter

* ``body`` is one type byte, 0..:data:`MAX_PAYLOAD` payload bytes and the CRC-32/ISO-HDLC (the
  CRC of zlib/Ethernet) of ``type | payload``, appended least significant byte first.
* The body is COBS encoded (Cheshire & Baker), so the encoded body never contains 0x00 and 0x00
  is free to delimit frames. Encoders close the final group even when the previous group was a
  full 254-byte one, as the paper's ``StuffData`` does (254 non-zero bytes encode to
  ``FF <254 bytes> 01``); decoders also accept the shorter form without that ``01``.
* Every sender emits a *leading* 0x00 before each frame as well as the trailing one. A receiver
  treats the bytes between two delimiters as one candidate frame; an empty candidate (``00 00``)
  is idle fill and ignored. The leading delimiter costs one byte per frame and guarantees that
  whatever garbage preceded a frame (line noise, a half-sent frame from before a reset) ends at
  that delimiter instead of corrupting the frame: a receiver resynchronises within one frame.
  Frames concatenated with only the trailing delimiter between them are equally valid.
* A non-empty candidate is rejected, never raised on, when its decoded body exceeds
  ``MAX_PAYLOAD + 5`` bytes (:attr:`FrameError.OVERSIZE`), its last COBS group is cut short or it
  decodes to fewer than 5 bytes (:attr:`FrameError.TRUNCATED`), or its CRC is wrong
  (:attr:`FrameError.CRC`), in that order of precedence.

The decoder here is the reference model of the gateware ``hdl.link.FrameDecoder``: it counts
decoded bytes exactly as the gateware does (a COBS group's implied zero is counted when the next
group's code byte arrives) so error classification and statistics agree byte for byte.

Pure standard library; imports nothing else of ours.
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

__all__ = [
    "CRC",
    "CRC_LEN",
    "DELIMITER",
    "MAX_BODY",
    "MAX_ENCODED",
    "MAX_PAYLOAD",
    "MIN_BODY",
    "TYPE_LEN",
    "BadFrame",
    "CrcSpec",
    "DecoderStats",
    "Frame",
    "FrameError",
    "StreamDecoder",
    "cobs_decode",
    "cobs_encode",
    "cobs_max_len",
    "crc32",
    "decode_stream",
    "encode_body",
    "encode_frame",
    "max_body",
]


@dataclass(frozen=True)
class CrcSpec:
    """A CRC in the Rocksoft/Williams parametrisation (the one Amaranth's ``lib.crc`` uses).

    :meth:`compute` is a plain bitwise reference model; :meth:`to_bytes` gives the order in which a
    CRC is appended to a message so that the CRC register over ``message | crc`` always ends at
    :attr:`residue` (reflected CRCs are appended LSB first, others MSB first).
    """

    name: str
    width: int
    poly: int
    init: int
    refin: bool
    refout: bool
    xorout: int
    check: int  # CRC of b"123456789", from the CRC catalogue

    def __post_init__(self) -> None:
        if self.width <= 0 or self.width % 8:
            raise ValueError(f"CRC width must be a positive multiple of 8, not {self.width}")
        mask = (1 << self.width) - 1
        for name in ("poly", "init", "xorout", "check"):
            if not 0 <= getattr(self, name) <= mask:
                raise ValueError(f"CRC {name} does not fit in {self.width} bits")
        if not self.poly & 1:
            raise ValueError("CRC polynomial must have its x^0 term set")

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1

    @property
    def nbytes(self) -> int:
        return self.width // 8

    def register(self, data: bytes | bytearray, reg: int | None = None) -> int:
        """Run the (unreflected-view) CRC shift register over ``data``; returns the raw register."""
        reg = self.init if reg is None else reg
        top = 1 << (self.width - 1)
        for byte in data:
            if self.refin:
                byte = int(f"{byte:08b}"[::-1], 2)
            reg ^= byte << (self.width - 8)
            for _ in range(8):
                reg = ((reg << 1) ^ self.poly) if reg & top else (reg << 1)
                reg &= self.mask
        return reg

    def finalize(self, reg: int) -> int:
        """Turn a raw register into the CRC value (output reflection and final XOR)."""
        if self.refout:
            reg = int(f"{reg:0{self.width}b}"[::-1], 2)
        return reg ^ self.xorout

    def compute(self, data: bytes | bytearray) -> int:
        """The CRC of ``data`` (bitwise reference implementation)."""
        return self.finalize(self.register(data))

    def to_bytes(self, value: int) -> bytes:
        """The bytes appended to a message carrying CRC ``value``."""
        return value.to_bytes(self.nbytes, "little" if self.refout else "big")

    @cached_property
    def residue(self) -> int:
        """The raw register value after processing any ``message | to_bytes(compute(message))``."""
        return self.register(self.to_bytes(self.compute(b"")))


#: The frame check sequence: CRC-32/ISO-HDLC, identical to ``zlib.crc32``.
CRC = CrcSpec(
    name="CRC-32/ISO-HDLC",
    width=32,
    poly=0x04C11DB7,
    init=0xFFFFFFFF,
    refin=True,
    refout=True,
    xorout=0xFFFFFFFF,
    check=0xCBF43926,
)

DELIMITER = 0x00
TYPE_LEN = 1
CRC_LEN = CRC.nbytes
#: Largest payload (bytes after the type byte, before the CRC) a frame may carry.
MAX_PAYLOAD = 1024
#: Smallest valid decoded body: a type byte and the CRC.
MIN_BODY = TYPE_LEN + CRC_LEN


def max_body(max_payload: int = MAX_PAYLOAD) -> int:
    """Largest valid decoded body for a given payload limit."""
    if max_payload < 0:
        raise ValueError(f"max_payload must be non-negative, not {max_payload}")
    return TYPE_LEN + max_payload + CRC_LEN


def cobs_max_len(n: int) -> int:
    """Length of the COBS encoding of ``n`` bytes in the worst case (no zeros)."""
    return n + n // 254 + 1


MAX_BODY = max_body(MAX_PAYLOAD)
#: Longest valid frame on the wire, both delimiters included.
MAX_ENCODED = 1 + cobs_max_len(MAX_BODY) + 1


def crc32(data: bytes | bytearray) -> int:
    """The frame CRC of ``data`` (fast path, equal to ``CRC.compute``)."""
    return binascii.crc32(data)


# -- COBS ------------------------------------------------------------------------------------------


def cobs_encode(data: bytes | bytearray) -> bytes:
    """COBS-encode ``data``; the result contains no zero byte (no delimiter added)."""
    out = bytearray()
    for piece in bytes(data).split(b"\x00"):
        while len(piece) >= 254:
            out.append(0xFF)
            out += piece[:254]
            piece = piece[254:]
        out.append(len(piece) + 1)
        out += piece
    return bytes(out)


def cobs_decode(data: bytes | bytearray) -> bytes:
    """Strictly decode a COBS block (no delimiters); raises ValueError when it is malformed."""
    out = bytearray()
    pos = 0
    pending_zero = False
    while pos < len(data):
        code = data[pos]
        if code == 0:
            raise ValueError(f"zero byte at offset {pos} inside a COBS block")
        if pending_zero:
            out.append(0)
        group = data[pos + 1 : pos + code]
        if len(group) != code - 1:
            raise ValueError("COBS block ends inside a group")
        if 0 in group:
            raise ValueError("zero byte inside a COBS group")
        out += group
        pos += code
        pending_zero = code != 0xFF
    return bytes(out)


# -- Frames ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A good frame: its type byte and payload."""

    type: int
    payload: bytes


class FrameError(enum.Enum):
    """Why a candidate frame was rejected."""

    CRC = "crc"
    OVERSIZE = "oversize"
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class BadFrame:
    """A rejected candidate frame: why, and how many wire bytes it spanned between delimiters."""

    error: FrameError
    wire_len: int


@dataclass
class DecoderStats:
    """Counts of decoder outcomes (the gateware keeps the same four counters)."""

    good: int = 0
    crc: int = 0
    oversize: int = 0
    truncated: int = 0

    def count(self, event: Frame | BadFrame) -> None:
        if isinstance(event, Frame):
            self.good += 1
        else:
            setattr(self, event.error.value, getattr(self, event.error.value) + 1)


def _check_frame_args(frame_type: int, payload: bytes | bytearray, max_payload: int) -> None:
    if not 0 <= frame_type <= 0xFF:
        raise ValueError(f"frame type must be a byte, not {frame_type!r}")
    if len(payload) > max_payload:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the maximum of {max_payload}")


def encode_body(
    frame_type: int, payload: bytes | bytearray = b"", *, max_payload: int = MAX_PAYLOAD
) -> bytes:
    """The decoded body ``type | payload | CRC`` (before COBS)."""
    _check_frame_args(frame_type, payload, max_payload)
    body = bytes([frame_type]) + bytes(payload)
    return body + CRC.to_bytes(crc32(body))


def encode_frame(
    frame_type: int,
    payload: bytes | bytearray = b"",
    *,
    lead: bool = True,
    max_payload: int = MAX_PAYLOAD,
) -> bytes:
    """Encode one frame for the wire. ``lead=False`` omits the leading delimiter (tests only: a
    conforming sender always sends it)."""
    encoded = cobs_encode(encode_body(frame_type, payload, max_payload=max_payload)) + b"\x00"
    return b"\x00" + encoded if lead else encoded


@dataclass
class _Candidate:
    wire_len: int = 0
    remaining: int = 0
    pending_zero: bool = False
    count: int = 0
    oversize: bool = False
    body: bytearray = field(default_factory=bytearray)


class StreamDecoder:
    """Streaming reference decoder: feed it arbitrary chunks of the byte stream.

    :meth:`feed` returns, in order, a :class:`Frame` for each good frame completed by the chunk and
    a :class:`BadFrame` for each rejected candidate. It never raises on any input and holds at most
    one body's worth of bytes however long a garbage run lasts.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.max_body = max_body(max_payload)
        self.stats = DecoderStats()
        self._cand = _Candidate()

    def reset(self) -> None:
        """Forget any partially received frame (the statistics are kept)."""
        self._cand = _Candidate()

    @property
    def in_frame(self) -> bool:
        """Whether bytes of an unfinished candidate frame are held."""
        return self._cand.wire_len > 0

    def _absorb(self, seg: bytes) -> None:
        c = self._cand
        c.wire_len += len(seg)
        pos = 0
        while pos < len(seg) and not c.oversize:
            if c.remaining == 0:
                code = seg[pos]
                pos += 1
                if c.pending_zero:
                    c.body.append(0)
                    c.count += 1
                c.remaining = code - 1
                c.pending_zero = code != 0xFF
            else:
                take = min(c.remaining, len(seg) - pos)
                c.body += seg[pos : pos + take]
                c.count += take
                c.remaining -= take
                pos += take
            if c.count > self.max_body:
                c.oversize = True
                c.body = bytearray()

    def _finish(self) -> Frame | BadFrame | None:
        c = self._cand
        self._cand = _Candidate()
        if c.wire_len == 0:
            return None
        if c.oversize:
            event: Frame | BadFrame = BadFrame(FrameError.OVERSIZE, c.wire_len)
        elif c.remaining != 0 or c.count < MIN_BODY:
            event = BadFrame(FrameError.TRUNCATED, c.wire_len)
        else:
            body = bytes(c.body)
            if crc32(body[:-CRC_LEN]) != int.from_bytes(body[-CRC_LEN:], "little"):
                event = BadFrame(FrameError.CRC, c.wire_len)
            else:
                event = Frame(body[0], body[TYPE_LEN:-CRC_LEN])
        self.stats.count(event)
        return event

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | BadFrame]:
        """Consume ``data``; return the frames (good and bad) it completed, in order."""
        data = bytes(data)
        events: list[Frame | BadFrame] = []
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                if start < len(data):
                    self._absorb(data[start:])
                return events
            if end > start:
                self._absorb(data[start:end])
            event = self._finish()
            if event is not None:
                events.append(event)
            start = end + 1

    def iter_feed(self, chunks: Iterable[bytes]) -> Iterator[Frame | BadFrame]:
        """Feed every chunk of ``chunks``, yielding events as they complete."""
        for chunk in chunks:
            yield from self.feed(chunk)


def decode_stream(data: bytes | bytearray, *, max_payload: int = MAX_PAYLOAD) -> list[Frame | BadFrame]:
    """Decode a complete captured byte stream (a trailing unterminated candidate is ignored)."""
    return StreamDecoder(max_payload).feed(data)
