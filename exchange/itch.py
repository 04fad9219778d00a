"""Nasdaq TotalView-ITCH 5.0: one table-driven codec for every message type, plus file I/O.

The whole protocol is the single table ``_SPEC_TABLE`` below: for each message type an ordered tuple of
``(field_name, kind, width)`` in wire order, names being the spec's field names in snake_case. The wire
length, the ``struct`` layout, the decoder, the encoder and the JSON field order are all derived from it.

Decoded messages are plain dicts: ``{"type": "A", "stock_locate": ..., ...}`` with the fields in spec
order. Integers stay integers: timestamps are nanoseconds since midnight, prices are the raw wire integer
(4 implied decimals, 8 for ``price8`` fields). Multi-character alpha fields have trailing spaces
stripped; single-character alpha fields are returned exactly (a space is a meaningful code there, e.g.
"not available").

Error model: anything malformed is reported as :class:`ItchDecodeError`, which carries the byte offset
of the problem. ``decode_message`` raises it; the stream readers yield it in place of a message and carry
on with the next frame whenever the 2-byte length prefix lets them resynchronise. Encoding problems raise
:class:`ItchEncodeError`. Both derive from :class:`ItchError` (a ``ValueError``).

ITCH file format (as written by Nasdaq and read here): each message is preceded by its length as a 2-byte
big-endian integer. Reported offsets for stream records are positions of that length prefix in the
(decompressed) stream.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeAlias

__all__ = [
    "ALPHA",
    "PRICE4",
    "PRICE8",
    "TIMESTAMP",
    "UINT",
    "ItchDecodeError",
    "ItchEncodeError",
    "ItchError",
    "ItchFileWriter",
    "ItchMessage",
    "MESSAGE_SPECS",
    "MessageSpec",
    "decode_message",
    "encode_message",
    "iter_messages",
    "message_length",
    "read_itch_file",
    "to_json_dict",
    "write_itch_file",
]

# Field kinds.
UINT = "uint"  # unsigned big-endian integer of 1, 2, 4 or 8 bytes
TIMESTAMP = "timestamp"  # 6-byte unsigned big-endian nanoseconds since midnight
ALPHA = "alpha"  # ASCII, left-justified and space-padded on the right
PRICE4 = "price4"  # 4-byte unsigned integer with 4 implied decimal places
PRICE8 = "price8"  # 8-byte unsigned integer with 8 implied decimal places

Field: TypeAlias = tuple[str, str, int]
ItchMessage: TypeAlias = dict[str, Any]

_HEADER: tuple[Field, ...] = (
    ("stock_locate", UINT, 2),
    ("tracking_number", UINT, 2),
    ("timestamp", TIMESTAMP, 6),
)

_ADD_ORDER_BODY: tuple[Field, ...] = (
    ("order_reference_number", UINT, 8),
    ("buy_sell_indicator", ALPHA, 1),
    ("shares", UINT, 4),
    ("stock", ALPHA, 8),
    ("price", PRICE4, 4),
)

_EXECUTED_BODY: tuple[Field, ...] = (
    ("order_reference_number", UINT, 8),
    ("executed_shares", UINT, 4),
    ("match_number", UINT, 8),
)

# Message type -> (descriptive name, body fields after the common header), in the order of section 4
# of the TotalView-ITCH 5.0 specification. The message type byte itself precedes the header.
_SPEC_TABLE: dict[str, tuple[str, tuple[Field, ...]]] = {
    "S": ("system_event", (("event_code", ALPHA, 1),)),
    "R": (
        "stock_directory",
        (
            ("stock", ALPHA, 8),
            ("market_category", ALPHA, 1),
            ("financial_status_indicator", ALPHA, 1),
            ("round_lot_size", UINT, 4),
            ("round_lots_only", ALPHA, 1),
            ("issue_classification", ALPHA, 1),
            ("issue_sub_type", ALPHA, 2),
            ("authenticity", ALPHA, 1),
            ("short_sale_threshold_indicator", ALPHA, 1),
            ("ipo_flag", ALPHA, 1),
            ("luld_reference_price_tier", ALPHA, 1),
            ("etp_flag", ALPHA, 1),
            ("etp_leverage_factor", UINT, 4),
            ("inverse_indicator", ALPHA, 1),
        ),
    ),
    "H": (
        "stock_trading_action",
        (
            ("stock", ALPHA, 8),
            ("trading_state", ALPHA, 1),
            ("reserved", ALPHA, 1),
            ("reason", ALPHA, 4),
        ),
    ),
    "Y": ("reg_sho_restriction", (("stock", ALPHA, 8), ("reg_sho_action", ALPHA, 1))),
    "L": (
        "market_participant_position",
        (
            ("mpid", ALPHA, 4),
            ("stock", ALPHA, 8),
            ("primary_market_maker", ALPHA, 1),
            ("market_maker_mode", ALPHA, 1),
            ("market_participant_state", ALPHA, 1),
        ),
    ),
    "V": ("mwcb_decline_level", (("level_1", PRICE8, 8), ("level_2", PRICE8, 8), ("level_3", PRICE8, 8))),
    "W": ("mwcb_status", (("breached_level", ALPHA, 1),)),
    "K": (
        "ipo_quoting_period_update",
        (
            ("stock", ALPHA, 8),
            ("ipo_quotation_release_time", UINT, 4),
            ("ipo_quotation_release_qualifier", ALPHA, 1),
            ("ipo_price", PRICE4, 4),
        ),
    ),
    "J": (
        "luld_auction_collar",
        (
            ("stock", ALPHA, 8),
            ("auction_collar_reference_price", PRICE4, 4),
            ("upper_auction_collar_price", PRICE4, 4),
            ("lower_auction_collar_price", PRICE4, 4),
            ("auction_collar_extension", UINT, 4),
        ),
    ),
    "h": (
        "operational_halt",
        (("stock", ALPHA, 8), ("market_code", ALPHA, 1), ("operational_halt_action", ALPHA, 1)),
    ),
    "A": ("add_order", _ADD_ORDER_BODY),
    "F": ("add_order_mpid_attribution", (*_ADD_ORDER_BODY, ("attribution", ALPHA, 4))),
    "E": ("order_executed", _EXECUTED_BODY),
    "C": (
        "order_executed_with_price",
        (*_EXECUTED_BODY, ("printable", ALPHA, 1), ("execution_price", PRICE4, 4)),
    ),
    "X": ("order_cancel", (("order_reference_number", UINT, 8), ("cancelled_shares", UINT, 4))),
    "D": ("order_delete", (("order_reference_number", UINT, 8),)),
    "U": (
        "order_replace",
        (
            ("original_order_reference_number", UINT, 8),
            ("new_order_reference_number", UINT, 8),
            ("shares", UINT, 4),
            ("price", PRICE4, 4),
        ),
    ),
    "P": ("trade", (*_ADD_ORDER_BODY, ("match_number", UINT, 8))),
    "Q": (
        "cross_trade",
        (
            ("shares", UINT, 8),
            ("stock", ALPHA, 8),
            ("cross_price", PRICE4, 4),
            ("match_number", UINT, 8),
            ("cross_type", ALPHA, 1),
        ),
    ),
    "B": ("broken_trade", (("match_number", UINT, 8),)),
    "I": (
        "noii",
        (
            ("paired_shares", UINT, 8),
            ("imbalance_shares", UINT, 8),
            ("imbalance_direction", ALPHA, 1),
            ("stock", ALPHA, 8),
            ("far_price", PRICE4, 4),
            ("near_price", PRICE4, 4),
            ("current_reference_price", PRICE4, 4),
            ("cross_type", ALPHA, 1),
            ("price_variation_indicator", ALPHA, 1),
        ),
    ),
    "N": ("retail_price_improvement_indicator", (("stock", ALPHA, 8), ("interest_flag", ALPHA, 1))),
    "O": (
        "dlcr_price_discovery",
        (
            ("stock", ALPHA, 8),
            ("open_eligibility_status", ALPHA, 1),
            ("minimum_allowable_price", PRICE4, 4),
            ("maximum_allowable_price", PRICE4, 4),
            ("near_execution_price", PRICE4, 4),
            ("near_execution_time", UINT, 8),
            ("lower_price_range_collar", PRICE4, 4),
            ("upper_price_range_collar", PRICE4, 4),
        ),
    ),
}


class ItchError(ValueError):
    """Base class of every error this module reports about ITCH data."""


class ItchDecodeError(ItchError):
    """Malformed ITCH input; ``offset`` is the byte offset (in the buffer or stream) where it was found."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class ItchEncodeError(ItchError):
    """A message could not be encoded: unknown type, missing/unknown field or a value out of range."""


@dataclass(frozen=True, slots=True, eq=False)
class MessageSpec:
    """Everything derived from one row of the spec table: layout, length, codec functions."""

    code: str
    name: str
    fields: tuple[Field, ...]  # including the common header, excluding the type byte
    length: int  # wire length including the type byte
    layout: struct.Struct  # whole message, type byte first; a timestamp takes two slots (hi16, lo32)
    field_names: tuple[str, ...]
    field_offsets: tuple[int, ...]  # of each field within the message
    decode: Callable[[Any, int], ItchMessage]  # unchecked: caller guarantees type byte and length


_INT_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}
_KIND_WIDTHS = {TIMESTAMP: (6,), PRICE4: (4,), PRICE8: (8,), UINT: tuple(_INT_FORMATS)}


def _struct_format(fields: tuple[Field, ...]) -> str:
    parts = [">c"]
    for name, kind, width in fields:
        if kind == ALPHA:
            if width < 1:
                raise ValueError(f"bad width for {name}")
            parts.append(f"{width}s")
        elif width not in _KIND_WIDTHS.get(kind, ()):
            raise ValueError(f"bad kind/width for {name}: {kind}/{width}")
        elif kind == TIMESTAMP:
            # struct has no 6-byte integer: split into the high 16 and low 32 bits.
            parts.append("HI")
        else:
            parts.append(_INT_FORMATS[width])
    return "".join(parts)


# Decoding alpha fields is a large share of decode time; feeds repeat the same few symbols and codes, so
# both are served from tables. A byte outside ASCII raises KeyError / UnicodeDecodeError, which the callers
# turn into ItchDecodeError.
_ONE_CHAR: dict[bytes, str] = {bytes([i]): chr(i) for i in range(128)}
_ALPHA_CACHE: dict[bytes, str] = {}
_ALPHA_CACHE_LIMIT = 1 << 16  # garbage input must not grow it without bound
_DECODE_FAILURES = (UnicodeDecodeError, KeyError)


def _alpha_slow(raw: bytes) -> str:
    text = raw.decode("ascii").rstrip(" ")
    if len(_ALPHA_CACHE) < _ALPHA_CACHE_LIMIT:
        _ALPHA_CACHE[raw] = text
    return text


def _make_decoder(code: str, fields: tuple[Field, ...], layout: struct.Struct) -> Callable[[Any, int], Any]:
    # Generated straight-line code (the technique namedtuple uses): one unpack_from, then a dict display.
    # It is several times faster than a generic per-field loop, and it is still derived from the table.
    targets = ["_t"]
    items = [f'"type": {code!r}']
    for i, (name, kind, width) in enumerate(fields):
        if not name.isidentifier():
            raise ValueError(f"bad field name {name!r}")
        var = f"v{i}"
        if kind == TIMESTAMP:
            targets += [var + "h", var + "l"]
            items.append(f'"{name}": ({var}h << 32) | {var}l')
        elif kind == ALPHA:
            targets.append(var)
            if width == 1:
                items.append(f'"{name}": _one[{var}]')
            else:
                # `or` also sends an all-space value (cached as "") down the slow path: rare and harmless.
                items.append(f'"{name}": _cached({var}) or _slow({var})')
        else:
            targets.append(var)
            items.append(f'"{name}": {var}')
    src = (
        "def decode(buf, offset):\n"
        f"    ({', '.join(targets)},) = _unpack_from(buf, offset)\n"
        f"    return {{{', '.join(items)}}}\n"
    )
    namespace: dict[str, Any] = {
        "_unpack_from": layout.unpack_from,
        "_one": _ONE_CHAR,
        "_cached": _ALPHA_CACHE.get,
        "_slow": _alpha_slow,
    }
    exec(src, namespace)  # source built only from the static table above
    decode = namespace["decode"]
    decode.__name__ = decode.__qualname__ = f"decode_{code}"
    return decode


def _build_specs() -> dict[str, MessageSpec]:
    specs: dict[str, MessageSpec] = {}
    for code, (name, body) in _SPEC_TABLE.items():
        fields = _HEADER + body
        layout = struct.Struct(_struct_format(fields))
        offsets, pos = [], 1
        for _, _, width in fields:
            offsets.append(pos)
            pos += width
        if layout.size != pos:
            raise AssertionError(f"layout of {code!r} is {layout.size} bytes, table says {pos}")
        specs[code] = MessageSpec(
            code=code,
            name=name,
            fields=fields,
            length=pos,
            layout=layout,
            field_names=tuple(f[0] for f in fields),
            field_offsets=tuple(offsets),
            decode=_make_decoder(code, fields, layout),
        )
    return specs


#: Message type character -> :class:`MessageSpec`, for every type of the specification.
MESSAGE_SPECS: dict[str, MessageSpec] = _build_specs()

# Indexed by the type byte so the hot loop needs no dict lookup or chr().
_DECODERS: list[Callable[[Any, int], ItchMessage] | None] = [None] * 256
_LENGTHS: list[int] = [0] * 256
for _spec in MESSAGE_SPECS.values():
    _DECODERS[ord(_spec.code)] = _spec.decode
    _LENGTHS[ord(_spec.code)] = _spec.length
del _spec


def message_length(type: str | bytes) -> int:
    """Wire length in bytes (type byte included) of a message type; raises ItchError if unknown."""
    return _spec_for(type).length


def _spec_for(type: str | bytes) -> MessageSpec:
    code = type.decode("latin-1") if isinstance(type, bytes | bytearray) else type
    spec = MESSAGE_SPECS.get(code) if isinstance(code, str) else None
    if spec is None:
        raise ItchEncodeError(f"unknown ITCH message type {type!r}")
    return spec


def _type_repr(byte: int) -> str:
    return f"{chr(byte)!r} (0x{byte:02x})" if 0x20 < byte < 0x7F else f"0x{byte:02x}"


def _ascii_error(code: str, buf: Any, offset: int) -> ItchDecodeError:
    # Slow path, only taken after the generated decoder hit a non-ASCII byte: find which one.
    spec = MESSAGE_SPECS[code]
    for (name, kind, width), field_offset in zip(spec.fields, spec.field_offsets, strict=True):
        if kind != ALPHA:
            continue
        start = offset + field_offset
        for i in range(start, start + width):
            if buf[i] > 0x7F:
                return ItchDecodeError(i, f"non-ASCII byte 0x{buf[i]:02x} in field {name!r} of {code!r}")
    return ItchDecodeError(offset, f"undecodable alpha field in {code!r} message")


def _as_byte_buffer(buf: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    if isinstance(buf, memoryview) and (buf.format != "B" or buf.ndim != 1):
        return buf.tobytes()
    return buf


def decode_message(buf: bytes | bytearray | memoryview, offset: int = 0) -> ItchMessage:
    """Decode the ITCH message that starts at ``buf[offset]`` (its type byte; no length prefix).

    Bytes after the message's fixed length are ignored. Raises :class:`ItchDecodeError` (naming the byte
    offset) on an unknown type, a truncated message or a non-ASCII alpha field.
    """
    buf = _as_byte_buffer(buf)
    if offset < 0 or offset >= len(buf):
        raise ItchDecodeError(offset, f"no message at offset {offset} of a {len(buf)}-byte buffer")
    byte = buf[offset]
    decode = _DECODERS[byte]
    if decode is None:
        raise ItchDecodeError(offset, f"unknown message type {_type_repr(byte)}")
    need = _LENGTHS[byte]
    have = len(buf) - offset
    if have < need:
        raise ItchDecodeError(offset, f"truncated {chr(byte)!r} message: need {need} bytes, have {have}")
    try:
        return decode(buf, offset)
    except _DECODE_FAILURES:
        raise _ascii_error(chr(byte), buf, offset) from None


def _alpha_bytes(value: Any, width: int, name: str) -> bytes:
    if isinstance(value, str):
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise ItchEncodeError(f"field {name!r}: {value!r} is not ASCII") from None
    elif isinstance(value, bytes | bytearray):
        raw = bytes(value)
        if not raw.isascii():
            raise ItchEncodeError(f"field {name!r}: {value!r} is not ASCII")
    else:
        raise ItchEncodeError(f"field {name!r}: expected str, got {type(value).__name__}")
    if len(raw) > width:
        raise ItchEncodeError(f"field {name!r}: {value!r} is longer than {width} characters")
    return raw.ljust(width, b" ")


def encode_message(type: str | bytes, **fields: Any) -> bytes:
    """Encode one message (no length prefix). Every spec field is required; ``encode_message(**msg)``
    round-trips a decoded message. Raises :class:`ItchEncodeError` on any bad input."""
    spec = _spec_for(type)
    values: list[Any] = [spec.code.encode("ascii")]
    for name, kind, width in spec.fields:
        try:
            value = fields[name]
        except KeyError:
            raise ItchEncodeError(f"{spec.code!r} message: missing field {name!r}") from None
        if kind == ALPHA:
            values.append(_alpha_bytes(value, width, name))
            continue
        # Integer prices only: bool and float are refused rather than silently truncated.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ItchEncodeError(f"field {name!r}: expected int, got {_type_name(value)}")
        if not 0 <= value < 1 << (8 * width):
            raise ItchEncodeError(f"field {name!r}: {value} does not fit in {width} unsigned bytes")
        if kind == TIMESTAMP:
            values += (value >> 32, value & 0xFFFFFFFF)
        else:
            values.append(value)
    if len(fields) != len(spec.fields):
        extra = sorted(set(fields) - set(spec.field_names))
        raise ItchEncodeError(f"{spec.code!r} message: unknown field(s) {extra}")
    return spec.layout.pack(*values)


def _type_name(value: object) -> str:
    return type(value).__name__


def to_json_dict(msg: ItchMessage) -> dict[str, Any]:
    """One JSON-ready dict per message: "type" first, then the spec fields in spec order (all ints/strs)."""
    spec = _spec_for(msg.get("type", ""))
    out: dict[str, Any] = {"type": spec.code}
    for name in spec.field_names:
        out[name] = msg[name]
    return out


# --------------------------------------------------------------------------------------------------
# Streams in the ITCH file format (2-byte big-endian length before each message)

StreamRecord: TypeAlias = tuple[int, "ItchMessage | ItchDecodeError"]


def _scan(buf: Any, pos: int, end: int, base: int) -> Generator[StreamRecord, None, int]:
    """Yield a record per complete frame in ``buf[pos:end]``; return where the first incomplete one starts.

    ``base`` is the stream offset of ``buf[0]``, so every reported offset is a stream offset.
    """
    decoders, lengths = _DECODERS, _LENGTHS
    while pos + 2 <= end:
        n = (buf[pos] << 8) | buf[pos + 1]
        stop = pos + 2 + n
        if stop > end:
            break
        if n == 0:
            yield base + pos, ItchDecodeError(base + pos, "zero-length message")
            pos = stop
            continue
        byte = buf[pos + 2]
        decode = decoders[byte]
        if decode is None:
            yield base + pos, ItchDecodeError(base + pos + 2, f"unknown message type {_type_repr(byte)}")
        elif n != lengths[byte]:
            yield (
                base + pos,
                ItchDecodeError(
                    base + pos,
                    f"length prefix {n} disagrees with the {lengths[byte]}-byte length"
                    f" of {chr(byte)!r} messages",
                ),
            )
        else:
            try:
                yield base + pos, decode(buf, pos + 2)
            except _DECODE_FAILURES:
                err = _ascii_error(chr(byte), buf, pos + 2)
                yield base + pos, ItchDecodeError(base + err.offset, err.reason)
        pos = stop
    return pos


def _tail_error(offset: int, leftover: bytes | bytearray | memoryview) -> ItchDecodeError:
    if len(leftover) < 2:
        return ItchDecodeError(offset, f"truncated length prefix ({len(leftover)} byte at end of stream)")
    n = (leftover[0] << 8) | leftover[1]
    return ItchDecodeError(
        offset, f"truncated message: length prefix says {n} bytes, only {len(leftover) - 2} remain"
    )


def iter_messages(data: bytes | bytearray | memoryview, base_offset: int = 0) -> Iterator[StreamRecord]:
    """Fast path for an in-memory ITCH-file-format buffer: yields ``(offset, message | ItchDecodeError)``.

    Same records as :func:`read_itch_file` (offsets are ``base_offset`` + position of the length prefix)
    but with no chunking; a truncated tail yields one final error record.
    """
    data = _as_byte_buffer(data)
    pos = yield from _scan(data, 0, len(data), base_offset)
    if pos < len(data):
        yield base_offset + pos, _tail_error(base_offset + pos, data[pos:])


_GZIP_MAGIC = b"\x1f\x8b"


def _open_source(source: str | os.PathLike[str] | BinaryIO) -> tuple[BinaryIO, BinaryIO, bool]:
    """Return (stream to read, underlying file, whether we opened it); gzip is detected by magic bytes."""
    if isinstance(source, str | os.PathLike):
        raw: BinaryIO = open(source, "rb")  # closed by _read_stream
        owned = True
    else:
        raw, owned = source, False
    try:
        if hasattr(raw, "peek"):
            head = raw.peek(2)[:2]
        elif raw.seekable():
            where = raw.tell()
            head = raw.read(2)
            raw.seek(where)
        else:
            raw = io.BytesIO(raw.read())
            head = raw.getvalue()[:2]
    except BaseException:
        if owned:
            raw.close()
        raise
    if head == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw, owned  # type: ignore[return-value]
    return raw, raw, owned


def read_itch_file(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    errors: str = "yield",
    chunk_size: int = 1 << 20,
) -> Iterator[StreamRecord]:
    """Read an ITCH file (gzip detected by magic bytes, else plain) as ``(offset, record)`` pairs.

    ``record`` is a decoded message dict, or an :class:`ItchDecodeError` for a frame that could not be
    decoded (unknown type, length prefix disagreeing with the type, zero length, non-ASCII alpha); the
    reader then skips the frame by its length prefix and carries on. A truncated tail or a corrupt gzip
    stream ends the iteration with one last error record. ``offset`` is the position of the frame's
    length prefix in the decompressed stream. With ``errors="raise"`` the first error is raised instead.
    """
    if errors not in ("yield", "raise"):
        raise ValueError("errors must be 'yield' or 'raise'")
    records = _read_stream(source, chunk_size)
    if errors == "yield":
        yield from records
        return
    for offset, record in records:
        if isinstance(record, ItchDecodeError):
            raise record
        yield offset, record


def _read_stream(source: str | os.PathLike[str] | BinaryIO, chunk_size: int) -> Iterator[StreamRecord]:
    stream, raw, owned = _open_source(source)
    # read1 returns what one underlying read produced; a plain read(n) of a truncated gzip stream would
    # raise and drop everything it had already decompressed towards n.
    read = getattr(stream, "read1", stream.read)
    try:
        buf: bytes = b""
        base = 0  # stream offset of buf[0]
        while True:
            failure: ItchDecodeError | None = None
            try:
                chunk = read(chunk_size)
            except (OSError, EOFError, zlib.error) as exc:
                # Corrupt or truncated gzip: decode what was already read, then report.
                chunk = b""
                failure = ItchDecodeError(base + len(buf), f"unreadable input: {exc}")
            if chunk:
                buf += chunk
            pos = yield from _scan(buf, 0, len(buf), base)
            if failure is not None:
                yield failure.offset, failure
                return
            if not chunk:
                break
            base += pos
            buf = buf[pos:]
        if pos < len(buf):
            yield base + pos, _tail_error(base + pos, buf[pos:])
    finally:
        if stream is not raw:
            stream.close()  # a GzipFile: does not close raw
        if owned:
            raw.close()


class ItchFileWriter:
    """Writes messages in the ITCH file format (2-byte big-endian length before each), optionally gzipped.

    ``write`` takes a decoded/constructed message dict (encoded here) or already-encoded message bytes
    (written as given, which lets tests produce deliberately broken files).
    """

    def __init__(self, target: str | os.PathLike[str] | BinaryIO, *, compress: bool = False) -> None:
        self._owned = isinstance(target, str | os.PathLike)
        raw: BinaryIO = open(target, "wb") if self._owned else target  # type: ignore[arg-type]
        self._raw = raw
        # mtime=0 keeps compressed output byte-identical across runs.
        self._out: BinaryIO = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else raw  # type: ignore[assignment]
        self.count = 0
        self.bytes_written = 0  # uncompressed, length prefixes included

    def write(self, msg: ItchMessage | bytes | bytearray) -> None:
        """Append one message."""
        payload = bytes(msg) if isinstance(msg, bytes | bytearray) else encode_message(**msg)
        if len(payload) > 0xFFFF:
            raise ItchEncodeError(f"message of {len(payload)} bytes does not fit a 2-byte length prefix")
        self._out.write(len(payload).to_bytes(2, "big") + payload)
        self.count += 1
        self.bytes_written += 2 + len(payload)

    def close(self) -> None:
        """Flush and close (the underlying file object too, when this writer opened it)."""
        if self._out is not self._raw:
            self._out.close()
        if self._owned:
            self._raw.close()
        else:
            self._raw.flush()

    def __enter__(self) -> ItchFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_itch_file(
    target: str | os.PathLike[str] | BinaryIO,
    messages: Iterable[ItchMessage | bytes],
    *,
    compress: bool = False,
) -> int:
    """Write ``messages`` to ``target`` in the ITCH file format; returns the number written."""
    with ItchFileWriter(target, compress=compress) as writer:
        for msg in messages:
            writer.write(msg)
        return writer.count
