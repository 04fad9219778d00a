"""The normalised ITCH record the gateware decoder (``hdl.itch``) emits, one per length-prefixed frame.

The record is an :class:`exchange.layout.Layout`, so Python and gateware share one definition
(``hdl.formats.struct_layout(ITCH_RECORD)`` is the decoder's output payload). Its message fields are
derived from ``exchange.itch.MESSAGE_SPECS``: every field of the book types A F E C X D U P gets a
record field named after it, except that fields meaning the same thing share one (``ALIASES``:
executed and cancelled shares are ``shares``, the execution price is ``price``, U's original
order reference is ``order_reference_number``). Widths come from the ITCH table too: an ``alpha``
field of ``w`` bytes is ``ascii`` of ``w`` bytes, integers (and the 6-byte timestamp) widen to the
next of 8/16/32/64 bits. Nothing here repeats a width or an offset of the protocol.

Record fields, in layout order (first field in the least significant bits of the gateware payload):

* ``status`` (:class:`ItchStatus`), ``type`` (the type byte; 0 for ZERO_LENGTH and truncated frames),
  ``offset`` (of the frame's length prefix within its packet), ``length`` (the length prefix),
  ``detail`` (TRUNCATED: body bytes that arrived; otherwise 0);
* the message fields (:data:`MESSAGE_FIELDS`). Only records with status OK or NON_ASCII carry them,
  and only those of the record's type; every other message field is 0.

Python helpers: :func:`reference_records` is the reference model (what the gateware must emit for a
payload, with the field values taken from ``exchange.itch.decode_message``); :func:`record_to_message`
turns an OK record back into ``decode_message``'s dict; :func:`records_to_feed` builds, from the
gateware's records, exactly what ``exchange.feed_decoder.SoftwareFeedDecoder.decode`` returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

from exchange.itch import ALPHA, MESSAGE_SPECS, ItchDecodeError, ItchMessage, _type_repr, decode_message
from exchange.layout import Field, Layout, ascii_field, enum_field, uint

__all__ = [
    "ALIASES",
    "BOOK_TYPES",
    "BUFFER_BYTES",
    "ITCH_RECORD",
    "MESSAGE_FIELDS",
    "SOURCES",
    "ItchStatus",
    "Source",
    "describe",
    "error_reason",
    "field_width",
    "pack_record",
    "record_from_message",
    "record_to_feed",
    "record_to_message",
    "records_to_feed",
    "reference_records",
    "unpack_record",
]

#: The message types a book needs; the gateware decodes their fields and skips every other type.
BOOK_TYPES = "AFECXDUP"

#: ITCH field name -> the record field it shares (same meaning, same kind and width).
ALIASES = {
    "executed_shares": "shares",
    "cancelled_shares": "shares",
    "execution_price": "price",
    "original_order_reference_number": "order_reference_number",
}


class ItchStatus(IntEnum):
    """What a record says about its frame. Errors mirror ``exchange.itch``'s stream errors."""

    OK = 0  # a book type, decoded: its fields are in the record
    SKIPPED = 1  # a well-formed message of another type: type, offset and length only
    UNKNOWN_TYPE = 2  # the type byte is not an ITCH 5.0 type
    BAD_LENGTH = 3  # the length prefix disagrees with the type's length
    ZERO_LENGTH = 4  # a length prefix of 0
    NON_ASCII = 5  # a book type with a byte above 0x7F in an alpha field (its fields are present)
    TRUNCATED = 6  # the packet ended inside the message (detail = body bytes received)
    TRUNCATED_PREFIX = 7  # the packet ended after the first byte of a length prefix


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record field comes from in one message type: ITCH field ``itch_name``, ``width`` bytes at
    byte ``offset`` of the message (type byte = 0), of ITCH kind ``kind``."""

    field: str
    itch_name: str
    offset: int
    width: int
    kind: str


_INT_WIDTHS = (8, 16, 32, 64)


def _record_field(name: str, kind: str, width: int) -> Field:
    if kind == ALPHA:
        return ascii_field(name, width)
    bits = next(w for w in _INT_WIDTHS if w >= 8 * width)
    return uint(name, bits)


def _derive() -> tuple[list[Field], dict[str, tuple[Source, ...]]]:
    fields: dict[str, Field] = {}
    kinds: dict[str, tuple[str, int]] = {}
    sources: dict[str, tuple[Source, ...]] = {}
    for code in BOOK_TYPES:
        spec = MESSAGE_SPECS[code]
        rows = []
        for (name, kind, width), offset in zip(spec.fields, spec.field_offsets, strict=True):
            target = ALIASES.get(name, name)
            shape = ("alpha" if kind == ALPHA else "int", width)
            if kinds.setdefault(target, shape) != shape:
                raise AssertionError(f"{code}.{name} does not fit record field {target} {kinds[target]}")
            fields.setdefault(target, _record_field(target, kind, width))
            rows.append(Source(target, name, offset, width, kind))
        sources[code] = tuple(rows)
    return list(fields.values()), sources


_MESSAGE_FIELD_LIST, SOURCES = _derive()
#: Record field names holding message fields, in layout order.
MESSAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in _MESSAGE_FIELD_LIST)
#: Bytes of a message the gateware keeps: enough for every field of every book type.
BUFFER_BYTES = max(s.offset + s.width for rows in SOURCES.values() for s in rows)

#: The decoder's output record.
ITCH_RECORD = Layout(
    "itch_record",
    [
        enum_field("status", ItchStatus),
        uint("type", 8),
        uint("offset", 16),
        uint("length", 16),
        uint("detail", 16),
        *_MESSAGE_FIELD_LIST,
    ],
)

_FIELD_BY_NAME = {f.name: f for f in ITCH_RECORD.fields}


def _zero_record() -> dict[str, int]:
    return dict.fromkeys(ITCH_RECORD.names, 0)


def _field_value(source: Source, raw: bytes) -> int:
    """A field's record value from its wire bytes: integers big-endian; text as the little-endian int of
    its bytes (character 0 in the low byte), which is how the Layout packs an ascii field."""
    if source.kind == ALPHA:
        return int.from_bytes(raw, "little")
    return int.from_bytes(raw, "big")


def _raw_of(source: Source, value: int) -> bytes:
    if source.kind == ALPHA:
        return value.to_bytes(source.width, "little")
    return value.to_bytes(source.width, "big")


def record_from_message(wire: bytes, *, offset: int, status: ItchStatus = ItchStatus.OK) -> dict[str, int]:
    """The record of a well-formed book-type message ``wire`` (type byte first, no length prefix) whose
    length prefix sits at ``offset`` of its packet: every layout field as a raw integer."""
    code = chr(wire[0])
    record = _zero_record()
    record.update(status=int(status), type=wire[0], offset=offset, length=len(wire))
    for source in SOURCES[code]:
        record[source.field] = _field_value(source, wire[source.offset : source.offset + source.width])
    return record


def _alpha_text(raw: bytes) -> str:
    # exchange.itch's rules: one-character codes exactly, longer text with trailing spaces stripped.
    text = raw.decode("ascii")
    return text if len(raw) == 1 else text.rstrip(" ")


def record_to_message(record: Mapping[str, int]) -> ItchMessage:
    """An OK record -> the dict ``exchange.itch.decode_message`` returns for the same message."""
    if record["status"] != ItchStatus.OK:
        raise ValueError(f"record status {ItchStatus(record['status']).name} carries no message")
    code = chr(record["type"])
    msg: ItchMessage = {"type": code}
    for source in SOURCES[code]:
        value = record[source.field]
        msg[source.itch_name] = _alpha_text(_raw_of(source, value)) if source.kind == ALPHA else value
    return msg


def _non_ascii(record: Mapping[str, int]) -> tuple[int, Source, int]:
    """The first byte above 0x7F, in message order, of a NON_ASCII record's alpha fields: (index in the
    message, its field, its value). The record carries those fields, so the gateware need not say where."""
    sources = sorted((s for s in SOURCES[chr(record["type"])] if s.kind == ALPHA), key=lambda s: s.offset)
    for source in sources:
        for i, byte in enumerate(_raw_of(source, record[source.field])):
            if byte > 0x7F:
                return source.offset + i, source, byte
    raise ValueError("NON_ASCII record without a non-ASCII byte in its alpha fields")


def error_reason(record: Mapping[str, int]) -> tuple[int, str]:
    """(offset, reason) of an error record, worded as ``exchange.itch`` words the same error.

    Offsets are within the record's packet: the length prefix, except the type byte for an unknown type
    and the offending byte for a non-ASCII field, as in ``exchange.itch.iter_messages``.
    """
    status = ItchStatus(record["status"])
    offset, n = record["offset"], record["length"]
    if status is ItchStatus.ZERO_LENGTH:
        return offset, "zero-length message"
    if status is ItchStatus.UNKNOWN_TYPE:
        return offset + 2, f"unknown message type {_type_repr(record['type'])}"
    if status is ItchStatus.BAD_LENGTH:
        code = chr(record["type"])
        return offset, (f"length prefix {n} disagrees with the {MESSAGE_SPECS[code].length}-byte length"
                        f" of {code!r} messages")
    if status is ItchStatus.NON_ASCII:
        index, source, byte = _non_ascii(record)
        return (offset + 2 + index,
                f"non-ASCII byte 0x{byte:02x} in field {source.itch_name!r} of {chr(record['type'])!r}")
    if status is ItchStatus.TRUNCATED:
        return offset, f"truncated message: length prefix says {n} bytes, only {record['detail']} remain"
    if status is ItchStatus.TRUNCATED_PREFIX:
        return offset, "truncated length prefix (1 byte at end of stream)"
    raise ValueError(f"record status {status.name} is not an error")


def record_to_feed(record: Mapping[str, int], payload: bytes | memoryview, base: int = 0) -> dict:
    """One record -> the dict ``SoftwareFeedDecoder.decode`` gives for its frame.

    OK records become the message; error records ``{"type": "error", "offset", "reason"}``. A SKIPPED
    record is the one place the host reads the frame: it checks that the gateware's type and length
    match the bytes at the record's offset, then decodes them with ``exchange.itch.decode_message``
    (whose own ASCII check may still turn it into an error record). ``base`` is added to offsets (the
    packet's position in a longer stream).
    """
    status = record["status"]
    if status == ItchStatus.OK:
        return record_to_message(record)
    if status == ItchStatus.SKIPPED:
        at, n = record["offset"], record["length"]
        frame = bytes(payload[at : at + 2 + n])
        if len(frame) != 2 + n or int.from_bytes(frame[:2], "big") != n or frame[2] != record["type"]:
            raise ValueError(f"SKIPPED record at offset {at} does not match the payload bytes there")
        try:
            return decode_message(frame, 2)
        except ItchDecodeError as exc:
            return {"type": "error", "offset": base + at + exc.offset, "reason": exc.reason}
    offset, reason = error_reason(record)
    return {"type": "error", "offset": base + offset, "reason": reason}


def records_to_feed(records: Iterable[Mapping[str, int]], payload: bytes | memoryview, base: int = 0) -> list[dict]:
    """Every record of one packet -> ``SoftwareFeedDecoder.decode(payload)`` (same dicts, same order).

    The gateware's ``offset`` is 16 bits (a MoldUDP64 packet is shorter than 64 KiB); for longer payloads
    the full offset is recovered from the previous record's offset and length, and each record's 16 bits
    are checked against it, so a record that skipped or repeated a frame raises ValueError.
    """
    out = []
    expected = 0
    for record in records:
        if record["offset"] != expected & 0xFFFF:
            raise ValueError(f"record offset {record['offset']} where the frame at {expected} was expected")
        if expected > 0xFFFF:
            record = {**record, "offset": expected}
        out.append(record_to_feed(record, payload, base))
        expected += 2 + record["length"]
    return out


def reference_records(payload: bytes | memoryview) -> list[dict[str, int]]:
    """What the gateware must emit for one packet ``payload`` (length-prefixed ITCH): one record per frame.

    Framing is walked here by the length prefixes; the message fields, and whether an alpha field holds a
    non-ASCII byte, come from ``exchange.itch.decode_message`` (the software decoder).
    """
    data = bytes(payload)
    out: list[dict[str, int]] = []
    pos, end = 0, len(data)
    while pos < end:
        record = _zero_record()
        record["offset"] = pos & 0xFFFF
        if pos + 2 > end:
            record["status"] = ItchStatus.TRUNCATED_PREFIX
            out.append(record)
            break
        n = int.from_bytes(data[pos : pos + 2], "big")
        record["length"] = n
        body = data[pos + 2 : pos + 2 + n]
        if len(body) < n:
            record.update(status=ItchStatus.TRUNCATED, detail=len(body))
            out.append(record)
            break
        pos += 2 + n
        if n == 0:
            record["status"] = ItchStatus.ZERO_LENGTH
            out.append(record)
            continue
        record["type"] = body[0]
        spec = MESSAGE_SPECS.get(chr(body[0]))
        if spec is None:
            record["status"] = ItchStatus.UNKNOWN_TYPE
        elif n != spec.length:
            record["status"] = ItchStatus.BAD_LENGTH
        elif spec.code not in BOOK_TYPES:
            record["status"] = ItchStatus.SKIPPED
        else:
            try:
                decode_message(body)
            except ItchDecodeError:
                record = record_from_message(body, offset=record["offset"], status=ItchStatus.NON_ASCII)
            else:
                record = record_from_message(body, offset=record["offset"])
        out.append(record)
    return out


def pack_record(record: Mapping[str, int]) -> int:
    """A record dict of raw integers -> the gateware payload integer (first field in the low bits)."""
    value, shift = 0, 0
    for f in ITCH_RECORD.fields:
        value |= (int(record[f.name]) & ((1 << f.width) - 1)) << shift
        shift += f.width
    return value


def unpack_record(value: int) -> dict[str, int]:
    """The inverse of :func:`pack_record`."""
    out, shift = {}, 0
    for f in ITCH_RECORD.fields:
        out[f.name] = (value >> shift) & ((1 << f.width) - 1)
        shift += f.width
    return out


def field_width(name: str) -> int:
    """Width in bits of a record field."""
    return _FIELD_BY_NAME[name].width


def describe(records: Sequence[Mapping[str, int]]) -> list[str]:
    """One short line per record (for assertion messages)."""
    lines = []
    for r in records:
        status = ItchStatus(r["status"]).name
        text = f"{status} type=0x{r['type']:02x} off={r['offset']} len={r['length']} detail={r['detail']}"
        fields = {k: r[k] for k in MESSAGE_FIELDS if r[k]}
        lines.append(text + (f" {fields}" if fields else ""))
    return lines


def _check() -> None:
    # The layout and the sources must agree (a change of exchange.itch that broke this would fail here).
    for code, rows in SOURCES.items():
        for s in rows:
            if 8 * s.width > _FIELD_BY_NAME[s.field].width:
                raise AssertionError(f"{code}.{s.itch_name} wider than record field {s.field}")


_check()
