"""Nasdaq OUCH 5.0 order entry: one table-driven message codec, and the mapping to matchwire.

The codec
---------
The protocol is two tables, ``_INBOUND_TABLE`` (client to exchange: Enter, Replace, Cancel, Modify,
Account Query) and ``_OUTBOUND_TABLE`` (exchange to client: System Event, Order Accepted, Replaced,
Canceled, Executed, Rejected, Cancel Reject, Modified, ...), with the fields of each message type in
wire order, names being the specification's in snake_case. Type characters overlap between the
directions ('U', 'M', 'Q'), hence two tables. Everything else — lengths, ``struct`` layouts, encoders,
decoders — is derived from them.

Wire types: integers are unsigned big-endian; ``price`` is the specification's Price, an 8-byte
unsigned integer with 4 implied decimals (the maximum is $199,999.9900; $214,748.3647 =
``0x7FFFFFFF`` flags a market order, and so does any price of $200,000.0000 or more); ``timestamp`` is
8 bytes of nanoseconds since midnight; ``alpha`` is ASCII, left-justified and padded with spaces
(multi-character values are returned without the padding, one-character codes exactly). Messages
that end in ``options`` carry the Appendage: a 2-byte length, then TagValue elements of 1 length byte
(counting the tag byte and the value), 1 tag byte and the value. Known tags are decoded by name
(``_OPTION_TABLE``); unknown ones are kept as raw bytes under ``"tag_<n>"`` and skipped.

Decoded messages are plain dicts ``{"type": "O", "user_ref_num": ..., ...}`` in wire order. Anything
malformed raises :class:`OuchError` naming the byte offset; no other exception escapes the decoders
for any input. Encoding problems raise :class:`OuchError` too (offset None).

The mapping
-----------
:class:`OuchTranslator` is the order-entry logic of a gateway without any I/O: it turns a user's
inbound OUCH messages into matchwire commands (or immediate OUCH answers), and matchwire events into
the OUCH messages each user must receive. It enforces the OUCH rules the gateway owns: UserRefNums
strictly increasing per user (a lower or repeated one is ignored as a retransmission), orders
addressed by (user, UserRefNum) so nobody can touch another user's orders, accounts restricted to the
user's own. ``REASON_MAP`` is the one table from matchwire reason codes to OUCH reject/cancel codes.
See docs/order-entry.md for the field-by-field mapping.
"""

from __future__ import annotations

import collections
import itertools
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from exchange.orders import (
    Accepted,
    Cancelled,
    CancelOrder,
    CancelReason,
    Command,
    Event,
    Fill,
    Modified,
    ModifyOrder,
    NewOrder,
    OrderType,
    Rejected,
    RejectReason,
    Side,
    TimeInForce,
)

__all__ = [
    "ALPHA",
    "APPENDAGE",
    "INBOUND_SPECS",
    "MARKET_PRICE",
    "MARKET_PRICE_THRESHOLD",
    "MAX_PRICE",
    "OUTBOUND_SPECS",
    "PRICE",
    "REASON_MAP",
    "REJECT_REASON_NAMES",
    "CANCEL_REASON_NAMES",
    "TIMESTAMP",
    "UINT",
    "MessageSpec",
    "OuchError",
    "OuchOrder",
    "OuchResult",
    "OuchTranslator",
    "decode_inbound",
    "decode_outbound",
    "encode_inbound",
    "encode_outbound",
    "matchwire_reason",
    "ouch_reason",
    "timestamp_now",
]

# Field kinds.
UINT = "uint"  # unsigned big-endian integer of 1, 2, 4 or 8 bytes
PRICE = "price"  # 8-byte unsigned integer, 4 implied decimals
TIMESTAMP = "timestamp"  # 8-byte unsigned nanoseconds since midnight
ALPHA = "alpha"  # ASCII, left-justified, space-padded on the right
APPENDAGE = "appendage"  # 2-byte length + TagValue options; always the last field

Field: TypeAlias = tuple[str, str, int]
OuchMessage: TypeAlias = dict[str, Any]

MAX_PRICE = 1_999_999_900  # $199,999.9900, the highest limit price the specification supports
MARKET_PRICE = 0x7FFFFFFF  # $214,748.3647: the specification's market-order price
MARKET_PRICE_THRESHOLD = 2_000_000_000  # $200,000.0000 and above are market orders too

_ORDER_ECHO: tuple[Field, ...] = (
    ("side", ALPHA, 1),
    ("quantity", UINT, 4),
    ("symbol", ALPHA, 8),
    ("price", PRICE, 8),
    ("time_in_force", ALPHA, 1),
    ("display", ALPHA, 1),
    ("order_reference_number", UINT, 8),
    ("capacity", ALPHA, 1),
    ("inter_market_sweep_eligibility", ALPHA, 1),
    ("cross_type", ALPHA, 1),
    ("order_state", ALPHA, 1),
    ("cl_ord_id", ALPHA, 14),
    ("options", APPENDAGE, 2),
)

# Client -> exchange, section 2 of the OUCH 5.0 specification ("Inbound Messages").
_INBOUND_TABLE: dict[str, tuple[str, tuple[Field, ...]]] = {
    "O": (
        "enter_order",
        (
            ("user_ref_num", UINT, 4),
            ("side", ALPHA, 1),
            ("quantity", UINT, 4),
            ("symbol", ALPHA, 8),
            ("price", PRICE, 8),
            ("time_in_force", ALPHA, 1),
            ("display", ALPHA, 1),
            ("capacity", ALPHA, 1),
            ("inter_market_sweep_eligibility", ALPHA, 1),
            ("cross_type", ALPHA, 1),
            ("cl_ord_id", ALPHA, 14),
            ("options", APPENDAGE, 2),
        ),
    ),
    "U": (
        "replace_order",
        (
            ("orig_user_ref_num", UINT, 4),
            ("user_ref_num", UINT, 4),
            ("quantity", UINT, 4),
            ("price", PRICE, 8),
            ("time_in_force", ALPHA, 1),
            ("display", ALPHA, 1),
            ("inter_market_sweep_eligibility", ALPHA, 1),
            ("cl_ord_id", ALPHA, 14),
            ("options", APPENDAGE, 2),
        ),
    ),
    "X": ("cancel_order", (("user_ref_num", UINT, 4), ("quantity", UINT, 4))),
    "M": ("modify_order", (("user_ref_num", UINT, 4), ("side", ALPHA, 1), ("quantity", UINT, 4))),
    "Q": ("account_query", ()),
}

# Exchange -> client, section 3 of the OUCH 5.0 specification ("Outbound Messages").
_OUTBOUND_TABLE: dict[str, tuple[str, tuple[Field, ...]]] = {
    "S": ("system_event", (("timestamp", TIMESTAMP, 8), ("event_code", ALPHA, 1))),
    "A": ("order_accepted", (("timestamp", TIMESTAMP, 8), ("user_ref_num", UINT, 4), *_ORDER_ECHO)),
    "U": (
        "order_replaced",
        (("timestamp", TIMESTAMP, 8), ("orig_user_ref_num", UINT, 4), ("user_ref_num", UINT, 4), *_ORDER_ECHO),
    ),
    "C": (
        "order_canceled",
        (("timestamp", TIMESTAMP, 8), ("user_ref_num", UINT, 4), ("quantity", UINT, 4), ("reason", ALPHA, 1)),
    ),
    "D": (
        "aiq_canceled",
        (
            ("timestamp", TIMESTAMP, 8),
            ("user_ref_num", UINT, 4),
            ("decrement_shares", UINT, 4),
            ("reason", ALPHA, 1),
            ("quantity_prevented_from_trading", UINT, 4),
            ("execution_price", PRICE, 8),
            ("liquidity_flag", ALPHA, 1),
        ),
    ),
    "E": (
        "order_executed",
        (
            ("timestamp", TIMESTAMP, 8),
            ("user_ref_num", UINT, 4),
            ("quantity", UINT, 4),
            ("price", PRICE, 8),
            ("liquidity_flag", ALPHA, 1),
            ("match_number", UINT, 8),
            ("options", APPENDAGE, 2),
        ),
    ),
    "B": (
        "broken_trade",
        (
            ("timestamp", TIMESTAMP, 8),
            ("user_ref_num", UINT, 4),
            ("match_number", UINT, 8),
            ("reason", ALPHA, 1),
            ("cl_ord_id", ALPHA, 14),
        ),
    ),
    "F": (
        "trade_correction",
        (
            ("timestamp", TIMESTAMP, 8),
            ("user_ref_num", UINT, 4),
            ("quantity", UINT, 4),
            ("price", PRICE, 8),
            ("liquidity_flag", ALPHA, 1),
            ("match_number", UINT, 8),
            ("reason", ALPHA, 1),
            ("cl_ord_id", ALPHA, 14),
        ),
    ),
    "J": (
        "order_rejected",
        (("timestamp", TIMESTAMP, 8), ("user_ref_num", UINT, 4), ("reason", UINT, 2), ("cl_ord_id", ALPHA, 14)),
    ),
    "P": ("cancel_pending", (("timestamp", TIMESTAMP, 8), ("user_ref_num", UINT, 4))),
    "I": ("cancel_reject", (("timestamp", TIMESTAMP, 8), ("user_ref_num", UINT, 4))),
    "T": (
        "order_priority_update",
        (
            ("timestamp", TIMESTAMP, 8),
            ("user_ref_num", UINT, 4),
            ("price", PRICE, 8),
            ("display", ALPHA, 1),
            ("order_reference_number", UINT, 8),
        ),
    ),
    "M": (
        "order_modified",
        (("timestamp", TIMESTAMP, 8), ("user_ref_num", UINT, 4), ("side", ALPHA, 1), ("quantity", UINT, 4)),
    ),
    "R": (
        "order_restated",
        (("timestamp", TIMESTAMP, 8), ("user_ref_num", UINT, 4), ("reason", ALPHA, 1), ("options", APPENDAGE, 2)),
    ),
    "Q": ("account_query_response", (("timestamp", TIMESTAMP, 8), ("next_user_ref_num", UINT, 4))),
}

# TagValue options of the Appendage (Appendix of the specification): tag -> (name, kind, value width).
# Tags not listed are parsed, kept raw and skipped.
_OPTION_TABLE: dict[int, tuple[str, str, int]] = {
    1: ("secondary_ord_ref_num", UINT, 8),
    2: ("firm", ALPHA, 4),
    3: ("min_qty", UINT, 4),
    4: ("customer_type", ALPHA, 1),
    5: ("max_floor", UINT, 4),
    6: ("price_type", ALPHA, 1),
    12: ("post_only", ALPHA, 1),
    15: ("expire_time", UINT, 4),
    16: ("trade_now", ALPHA, 1),
    17: ("handle_inst", ALPHA, 1),
    18: ("bbo_weight_indicator", ALPHA, 1),
    22: ("display_quantity", UINT, 4),
    23: ("display_price", PRICE, 8),
}
_OPTION_BY_NAME = {name: (tag, kind, width) for tag, (name, kind, width) in _OPTION_TABLE.items()}


class OuchError(ValueError):
    """Malformed OUCH input (``offset`` = byte offset in the message) or an unencodable message."""

    def __init__(self, reason: str, offset: int | None = None) -> None:
        super().__init__(reason if offset is None else f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


_INT_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


@dataclass(frozen=True, slots=True, eq=False)
class MessageSpec:
    """Everything derived from one row of a message table."""

    code: str
    name: str
    fields: tuple[Field, ...]
    length: int  # fixed part, type byte and appendage length included (the minimum length)
    has_options: bool
    layout: struct.Struct  # type byte + fixed fields (the appendage length included as an 'H')
    field_names: tuple[str, ...]
    fast_decode: Callable[[bytes], OuchMessage]  # unchecked: the caller has checked type and length


def _build(table: dict[str, tuple[str, tuple[Field, ...]]]) -> dict[str, MessageSpec]:
    specs = {}
    for code, (name, fields) in table.items():
        fmt = [">c"]
        for i, (fname, kind, width) in enumerate(fields):
            if kind == ALPHA:
                fmt.append(f"{width}s")
            elif kind == APPENDAGE:
                if i != len(fields) - 1 or width != 2:
                    raise AssertionError(f"{code}: the appendage must be the last field, 2 bytes")
                fmt.append("H")
            elif kind in (PRICE, TIMESTAMP) and width == 8 or kind == UINT and width in _INT_FORMATS:
                fmt.append(_INT_FORMATS[width])
            else:
                raise AssertionError(f"{code}.{fname}: bad kind/width {kind}/{width}")
        layout = struct.Struct("".join(fmt))
        length = 1 + sum(width for _, _, width in fields)
        if layout.size != length:
            raise AssertionError(f"layout of {code!r} is {layout.size} bytes, the table says {length}")
        specs[code] = MessageSpec(code, name, fields, length, bool(fields) and fields[-1][1] == APPENDAGE,
                                  layout, tuple(f[0] for f in fields), _make_decoder(code, fields, layout, length))
    return specs


# One-character codes and multi-character text, decoded from tables; a non-ASCII byte raises KeyError or
# UnicodeDecodeError, after which the slow path finds and reports the offending field.
_ONE_CHAR: dict[bytes, str] = {bytes([i]): chr(i) for i in range(128)}


def _make_decoder(code: str, fields: tuple[Field, ...], layout: struct.Struct, length: int) -> Callable:
    # Generated straight-line code (as exchange.itch does): one unpack_from and a dict display, derived
    # from the table. Several times faster than a loop over the fields.
    targets = ["_t"]
    items = [f'"type": {code!r}']
    for i, (name, kind, width) in enumerate(fields):
        if not name.isidentifier():
            raise AssertionError(f"bad field name {name!r}")
        var = f"v{i}"
        targets.append(var)
        if kind == ALPHA:
            items.append(f'"{name}": _one[{var}]' if width == 1 else f'"{name}": {var}.decode("ascii").rstrip(" ")')
        elif kind == APPENDAGE:
            items.append(f'"{name}": _options(buf, {length}, {var}) if {var} else {{}}')
        else:
            items.append(f'"{name}": {var}')
    src = (f"def decode(buf):\n"
           f"    ({', '.join(targets)},) = _unpack_from(buf, 0)\n"
           f"    return {{{', '.join(items)}}}\n")
    namespace: dict[str, Any] = {"_unpack_from": layout.unpack_from, "_one": _ONE_CHAR,
                                 "_options": lambda buf, start, n: _decode_options(buf, start, start + n)}
    exec(src, namespace)  # source built only from the static tables above
    return namespace["decode"]


#: Inbound (client to exchange) message type -> :class:`MessageSpec`.
INBOUND_SPECS: dict[str, MessageSpec] = _build(_INBOUND_TABLE)
#: Outbound (exchange to client) message type -> :class:`MessageSpec`.
OUTBOUND_SPECS: dict[str, MessageSpec] = _build(_OUTBOUND_TABLE)


# --------------------------------------------------------------------------------------------------
# Decoding


def _decode_options(buf: bytes, start: int, end: int) -> dict[str, Any]:
    options: dict[str, Any] = {}
    pos = start
    while pos < end:
        n = buf[pos]
        if n < 1:
            raise OuchError("option element of length 0 (no tag)", pos)
        if pos + 1 + n > end:
            raise OuchError(f"option element of length {n} runs past the appendage", pos)
        tag = buf[pos + 1]
        value = buf[pos + 2:pos + 1 + n]
        known = _OPTION_TABLE.get(tag)
        if known is None:
            name, decoded = f"tag_{tag}", bytes(value)
        else:
            name, kind, width = known
            if len(value) != width:
                raise OuchError(f"option {name} (tag {tag}) has {len(value)} value bytes, must be {width}", pos)
            if kind == ALPHA:
                if not value.isascii():
                    raise OuchError(f"option {name} is not ASCII", pos + 2)
                text = value.decode("ascii")
                decoded = text if width == 1 else text.rstrip(" ")
            else:
                decoded = int.from_bytes(value, "big")
        if name in options:
            raise OuchError(f"option {name} appears twice", pos)
        options[name] = decoded
        pos += 1 + n
    return options


def _decode(specs: dict[str, MessageSpec], direction: str, data: bytes | bytearray | memoryview) -> OuchMessage:
    buf = bytes(data)
    if not buf:
        raise OuchError("empty message", 0)
    spec = specs.get(chr(buf[0]))
    if spec is None:
        b = buf[0]
        shown = f"{chr(b)!r}" if 0x20 < b < 0x7F else f"0x{b:02x}"
        raise OuchError(f"unknown {direction} message type {shown}", 0)
    if len(buf) < spec.length or (not spec.has_options and len(buf) != spec.length):
        raise OuchError(f"{spec.name} message is {len(buf)} bytes, must be {spec.length}"
                        f"{' plus its appendage' if spec.has_options else ''}", 0)
    if spec.has_options and len(buf) != spec.length + ((buf[spec.length - 2] << 8) | buf[spec.length - 1]):
        n = (buf[spec.length - 2] << 8) | buf[spec.length - 1]
        raise OuchError(f"appendage length {n} disagrees with the {len(buf) - spec.length} bytes that follow",
                        spec.length - 2)
    try:
        return spec.fast_decode(buf)
    except (KeyError, UnicodeDecodeError):
        pass  # a non-ASCII text field: find it and report it below
    values = spec.layout.unpack_from(buf, 0)
    out: OuchMessage = {"type": spec.code}
    pos = 1
    for (name, kind, width), value in zip(spec.fields, values[1:], strict=True):
        if kind == ALPHA:
            if not value.isascii():
                raise OuchError(f"field {name!r} of {spec.name} is not ASCII", pos)
            text = value.decode("ascii")
            out[name] = text if width == 1 else text.rstrip(" ")
        elif kind == APPENDAGE:
            if len(buf) != spec.length + value:
                raise OuchError(f"appendage length {value} disagrees with the {len(buf) - spec.length}"
                                f" bytes that follow", pos)
            out[name] = _decode_options(buf, spec.length, len(buf))
        else:
            out[name] = value
        pos += width
    return out


def decode_inbound(data: bytes | bytearray | memoryview) -> OuchMessage:
    """Decode one client-to-exchange message (a SoupBinTCP Unsequenced Data payload)."""
    return _decode(INBOUND_SPECS, "inbound", data)


def decode_outbound(data: bytes | bytearray | memoryview) -> OuchMessage:
    """Decode one exchange-to-client message (a SoupBinTCP Sequenced Data payload)."""
    return _decode(OUTBOUND_SPECS, "outbound", data)


# --------------------------------------------------------------------------------------------------
# Encoding


def _alpha(name: str, value: Any, width: int) -> bytes:
    if not isinstance(value, str) or not value.isascii():
        raise OuchError(f"field {name!r}: expected an ASCII str, got {value!r}")
    if len(value) > width:
        raise OuchError(f"field {name!r}: {value!r} is longer than {width} characters")
    return value.ljust(width).encode("ascii")


def _uint(name: str, value: Any, width: int) -> int:
    # Integer prices only: bool and float are refused rather than silently truncated.
    if not isinstance(value, int) or isinstance(value, bool):
        raise OuchError(f"field {name!r}: expected int, got {type(value).__name__}")
    if not 0 <= value < 1 << (8 * width):
        raise OuchError(f"field {name!r}: {value} does not fit in {width} unsigned bytes")
    return value


def encode_options(options: Mapping[str, Any]) -> bytes:
    """Encode TagValue options (names from the option table, or ``tag_<n>`` with raw bytes)."""
    if not isinstance(options, Mapping):
        raise OuchError(f"options: expected a mapping of option names to values, got {type(options).__name__}")
    parts = []
    for name, value in options.items():
        known = _OPTION_BY_NAME.get(name)
        if known is not None:
            tag, kind, width = known
            raw = _alpha(name, value, width) if kind == ALPHA else _uint(name, value, width).to_bytes(width, "big")
        elif isinstance(name, str) and name.startswith("tag_") and name[4:].isdigit() and int(name[4:]) < 256:
            tag = int(name[4:])
            if not isinstance(value, bytes | bytearray) or len(value) > 254:
                raise OuchError(f"option {name}: expected at most 254 raw bytes")
            raw = bytes(value)
        else:
            raise OuchError(f"unknown option {name!r}")
        parts.append(bytes((len(raw) + 1, tag)) + raw)
    return b"".join(parts)


def _encode(specs: dict[str, MessageSpec], direction: str, type: str, fields: dict[str, Any]) -> bytes:
    spec = specs.get(type) if isinstance(type, str) else None
    if spec is None:
        raise OuchError(f"unknown {direction} message type {type!r}")
    values: list[Any] = [spec.code.encode("ascii")]
    appendage = b""
    for name, kind, width in spec.fields:
        if kind == APPENDAGE:
            appendage = encode_options(fields.get(name) or {})
            if len(appendage) > 0xFFFF:
                raise OuchError("appendage longer than 65535 bytes")
            values.append(len(appendage))
            continue
        try:
            value = fields[name]
        except KeyError:
            raise OuchError(f"{spec.name}: missing field {name!r}") from None
        values.append(_alpha(name, value, width) if kind == ALPHA else _uint(name, value, width))
    unknown = set(fields) - set(spec.field_names) - {"type"}
    if unknown:
        raise OuchError(f"{spec.name}: unknown field(s) {sorted(unknown)}")
    return spec.layout.pack(*values) + appendage


def _make_encoder(spec: MessageSpec, specs: dict[str, MessageSpec], direction: str) -> Callable[..., bytes]:
    # Generated straight-line code like the decoders: keyword-only parameters from the table, one pack. Values
    # that the checks of _encode would refuse (wrong type, too long, out of range, unknown or missing fields)
    # fail here too, and _encode then raises its precise OuchError: the result is the same, only faster
    # (an Order Accepted was ~25 calls of _alpha/_uint; the gateway encodes one or more per order).
    params, prepare, checks, values, names = [], [], [], ["_code"], []
    appendage = "b''"
    for i, (name, kind, width) in enumerate(spec.fields):
        if not name.isidentifier():
            raise AssertionError(f"bad field name {name!r}")
        names.append(name)
        if kind == APPENDAGE:
            params.append(f"{name}=None")
            prepare.append(f"_app = _options({name}) if {name} else b''")
            checks.append("len(_app) > 0xFFFF")
            values.append("len(_app)")
            appendage = "_app"
        elif kind == ALPHA:
            params.append(name)
            prepare.append(f"_a{i} = {name}.ljust({width}).encode('ascii')")
            checks.append(f"len(_a{i}) != {width}")
            values.append(f"_a{i}")
        else:
            params.append(name)
            checks.append(f"type({name}) is not int")  # bool and float are refused, as by _uint
            values.append(name)
    body = "".join(f"        {line}\n" for line in prepare)
    if checks:
        body += f"        if {' or '.join(checks)}:\n            raise ValueError\n"
    slow_fields = ", ".join(f'"{n}": {n}' for n in names)
    src = (f"def encode({'*, ' if params else ''}{', '.join(params)}):\n"
           f"    try:\n{body}"
           f"        return _pack({', '.join(values)}) + {appendage}\n"
           f"    except Exception:\n"
           f"        pass\n"
           f"    return _slow(_specs, _direction, _code_text, {{{slow_fields}}})\n")
    namespace: dict[str, Any] = {"_pack": spec.layout.pack, "_code": spec.code.encode("ascii"),
                                 "_code_text": spec.code, "_options": encode_options, "_slow": _encode,
                                 "_specs": specs, "_direction": direction}
    exec(src, namespace)  # source built only from the static tables above
    return namespace["encode"]


_FAST_INBOUND = {code: _make_encoder(spec, INBOUND_SPECS, "inbound") for code, spec in INBOUND_SPECS.items()}
_FAST_OUTBOUND = {code: _make_encoder(spec, OUTBOUND_SPECS, "outbound") for code, spec in OUTBOUND_SPECS.items()}


def _encode_fast(fast: dict[str, Callable[..., bytes]], specs: dict[str, MessageSpec], direction: str, type: str,
                 fields: dict[str, Any]) -> bytes:
    encoder = fast.get(type) if isinstance(type, str) else None
    if encoder is not None:
        try:
            return encoder(**fields)
        except TypeError:  # a field missing or unknown: _encode names it
            pass
    return _encode(specs, direction, type, fields)


# The messages of nearly every order, encoded by their generated encoders straight (see _make_encoder: bad values
# still end in _encode's precise OuchError), without the generic path's keyword dicts.
_ENCODE_ACCEPTED = _FAST_OUTBOUND["A"]
_ENCODE_CANCELED = _FAST_OUTBOUND["C"]
_ENCODE_EXECUTED = _FAST_OUTBOUND["E"]


def encode_inbound(type: str, **fields: Any) -> bytes:
    """Encode a client-to-exchange message; ``options`` may be omitted (no appendage).
    ``encode_inbound(**decode_inbound(b))`` round-trips."""
    return _encode_fast(_FAST_INBOUND, INBOUND_SPECS, "inbound", type, fields)


def encode_outbound(type: str, **fields: Any) -> bytes:
    """Encode an exchange-to-client message; ``options`` may be omitted (no appendage)."""
    return _encode_fast(_FAST_OUTBOUND, OUTBOUND_SPECS, "outbound", type, fields)


def timestamp_now() -> int:
    """Nanoseconds since midnight (UTC), the OUCH timestamp."""
    return time.time_ns() % 86_400_000_000_000


# --------------------------------------------------------------------------------------------------
# Reason codes

#: OUCH 5.0 Rejected Order reason codes (2-byte integer) and the specification's name for each.
REJECT_REASON_NAMES: dict[int, str] = {
    0x01: "quote_unavailable",
    0x02: "destination_closed",
    0x03: "invalid_display",
    0x04: "invalid_max_floor",
    0x05: "invalid_peg_type",
    0x06: "fat_finger",
    0x07: "halted",
    0x08: "iso_not_allowed",
    0x09: "invalid_side",
    0x0A: "processing_error",
    0x0B: "cancel_pending",
    0x0C: "firm_not_authorized",
    0x0D: "invalid_min_quantity",
    0x0E: "no_closing_reference_price",
    0x0F: "other",
    0x10: "cancel_not_allowed",
    0x11: "pegging_not_allowed",
    0x12: "crossed_market",
    0x13: "invalid_quantity",
    0x14: "invalid_cross_order",
    0x15: "replace_not_allowed",
    0x16: "routing_not_allowed",
    0x17: "invalid_symbol",
    0x18: "test",
    0x19: "late_loc_too_aggressive",
    0x1A: "retail_not_allowed",
    0x1B: "invalid_midpoint_post_only_price",
    0x1C: "invalid_destination",
    0x1D: "invalid_price",
    0x1E: "shares_exceed_threshold",
    0x1F: "exceeds_maximum_allowed_notional_value",
}

#: OUCH 5.0 Order Canceled reason codes (1 character) and the specification's meaning.
CANCEL_REASON_NAMES: dict[str, str] = {
    "U": "user_requested",
    "I": "immediate_or_cancel",
    "T": "timeout",
    "S": "supervisory",
    "D": "regulatory_restriction",
    "Q": "self_match_prevention",
    "Z": "system_cancel",
    "C": "cross_canceled",
    "K": "market_collars",
    "H": "halted",
    "X": "open_protection",
    "E": "closed",
    "F": "post_only_cancel_nms",
    "G": "post_only_cancel_displayed",
}

REJECT = "J"  # the reason goes into an Order Rejected message (a 2-byte code)
CANCEL = "C"  # the reason goes into an Order Canceled message (a 1-character code)

#: THE table: matchwire reason code -> (OUCH message, OUCH code). Engine reject and cancel reasons,
#: the gateway's own OUCH-level reasons, the cluster's and risk's. A new reason is one more entry, e.g.
#: ``REASON_MAP["new_reason"] = (REJECT, 0x0F)``. Unlisted reasons map to "other" (0x0F) for rejects
#: and "system cancel" ('Z') for cancels.
REASON_MAP: dict[str, tuple[str, int | str]] = {
    # engine rejects (exchange.orders.RejectReason)
    RejectReason.UNKNOWN_SYMBOL: (REJECT, 0x17),
    RejectReason.INVALID_SYMBOL: (REJECT, 0x17),
    RejectReason.INVALID_ORDER_ID: (REJECT, 0x0A),  # the gateway assigns order ids: our fault
    RejectReason.DUPLICATE_ORDER_ID: (REJECT, 0x0A),
    RejectReason.UNKNOWN_ORDER: (REJECT, 0x0F),
    RejectReason.INVALID_ACCOUNT: (REJECT, 0x0C),
    RejectReason.INVALID_SIDE: (REJECT, 0x09),
    RejectReason.INVALID_TYPE: (REJECT, 0x1D),  # a market order where the book takes none
    RejectReason.INVALID_TIF: (REJECT, 0x0F),
    RejectReason.INVALID_STP: (REJECT, 0x0F),
    RejectReason.INVALID_QTY: (REJECT, 0x13),
    RejectReason.QTY_OFF_LOT: (REJECT, 0x13),
    RejectReason.INVALID_PRICE: (REJECT, 0x1D),
    RejectReason.PRICE_OFF_TICK: (REJECT, 0x1D),
    RejectReason.PRICE_OUTSIDE_BAND: (REJECT, 0x06),  # the instrument's price band: a fat-finger check
    RejectReason.PRICE_OUTSIDE_WINDOW: (REJECT, 0x1D),
    RejectReason.INVALID_DISPLAY_QTY: (REJECT, 0x04),  # display qty comes from the MaxFloor option
    RejectReason.INVALID_POST_ONLY: (REJECT, 0x03),  # post-only comes from Display 'P' / PostOnly
    RejectReason.NO_CHANGE: (REJECT, 0x15),
    RejectReason.UNSUPPORTED: (REJECT, 0x0F),
    RejectReason.BOOK_NOT_EMPTY: (REJECT, 0x0F),
    RejectReason.INVALID_COMMAND: (REJECT, 0x0A),
    # gateway (OUCH-level) rejects
    "invalid_display": (REJECT, 0x03),
    "invalid_cross_type": (REJECT, 0x14),
    "invalid_min_qty": (REJECT, 0x0D),
    "price_too_high": (REJECT, 0x1D),
    "replace_not_allowed": (REJECT, 0x15),
    # cluster rejects (#3, exchange.wire.ClusterReason)
    "busy": (REJECT, 0x0A),
    "instrument_unavailable": (REJECT, 0x07),
    # risk rejects (#7, exchange.risk.RiskReason)
    "max_order_qty": (REJECT, 0x1E),
    "max_order_notional": (REJECT, 0x1F),
    "price_collar": (REJECT, 0x06),
    "max_open_orders": (REJECT, 0x0F),
    "credit_limit": (REJECT, 0x1F),
    "max_position": (REJECT, 0x1E),
    "rate_limit": (REJECT, 0x0F),
    "kill_switch": (REJECT, 0x0C),
    "no_reference_price": (REJECT, 0x01),
    # engine cancels (exchange.orders.CancelReason)
    CancelReason.USER: (CANCEL, "U"),
    CancelReason.IOC: (CANCEL, "I"),
    CancelReason.FOK: (CANCEL, "I"),  # FOK is IOC + MinQty in OUCH
    CancelReason.STP: (CANCEL, "Q"),
    CancelReason.POST_ONLY: (CANCEL, "G"),
    CancelReason.EXPIRED: (CANCEL, "T"),
    CancelReason.BOOK_FULL: (CANCEL, "Z"),
    CancelReason.ADMIN: (CANCEL, "S"),
}


def ouch_reason(reason: str, kind: str) -> int | str:
    """The OUCH code for a matchwire reason in a ``"J"`` (reject) or ``"C"`` (cancel) message."""
    entry = REASON_MAP.get(reason)
    if entry is not None and entry[0] == kind:
        return entry[1]
    return 0x0F if kind == REJECT else "Z"


def matchwire_reason(kind: str, code: int | str) -> str | None:
    """The first matchwire reason that maps to an OUCH code (the reverse of ``REASON_MAP``), or None."""
    for reason, (k, c) in REASON_MAP.items():
        if k == kind and c == code:
            return reason
    return None


# --------------------------------------------------------------------------------------------------
# OUCH <-> matchwire

SIDES = {"B": Side.BUY, "S": Side.SELL, "T": Side.SELL, "E": Side.SELL}  # short sales are sells here
TIME_IN_FORCE = {"0": TimeInForce.DAY, "3": TimeInForce.IOC, "5": TimeInForce.GTC}  # GTX: lives past close
VISIBLE_DISPLAYS = {"Y": False, "A": False, "P": True}  # display code -> post-only


@dataclass(slots=True)
class OuchOrder:
    """What the translator remembers about one of a user's orders (its current UserRefNum token)."""

    username: str
    user_ref_num: int
    order_id: int
    symbol: str
    side: str  # as entered: B, S, T or E
    account: str
    price: int | None  # None: market
    quantity: int  # shares of the current token (what Order Accepted / Replaced reported)
    leaves: int = 0
    executed: int = 0  # executed under the current token
    time_in_force: str = "0"
    display: str = "Y"
    capacity: str = "A"
    inter_market_sweep_eligibility: str = "N"
    cross_type: str = "N"
    cl_ord_id: str = ""
    accepted: bool = False
    # The open shares the book will leave once every pending request is applied (meaningful while ``pending``): a
    # cancel behind another request is judged against it, not against the open shares the book last reported.
    promised: int = 0
    # Requests sent to the book and not yet answered, oldest first: ("replace", msg) / ("modify", msg) /
    # ("cancel", None) / ("reduce", None). The book answers each, in order, with one event.
    pending: deque = field(default_factory=deque)


def _open_shares(order: OuchOrder) -> int:
    """The order's open shares as far as the translator knows: before the book's answer, all it was entered with."""
    return order.leaves if order.accepted else order.quantity


def _expected_open(order: OuchOrder) -> int:
    """The open shares a new request on the order starts from: what the requests before it will leave, else all
    that is open as far as the translator knows."""
    return order.promised if order.pending else _open_shares(order)


def _done(order: OuchOrder) -> bool:
    """Nothing left to cancel, replace or modify. An order not yet answered is not done: the book takes requests
    in the order they were sent, so one sent behind the order finds it there (Nasdaq handles a user's messages in
    sequence, and a client may cancel before the Order Accepted reaches it)."""
    return order.accepted and order.leaves == 0


@dataclass(slots=True)
class OuchResult:
    """What to do with one inbound message: commands for the books, OUCH payloads to send to the user
    now (as sequenced data), and an error when the message was malformed (the gateway should treat
    it as a protocol violation and may end the session)."""

    commands: list[Command] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    error: OuchError | None = None
    ignored: bool = False  # dropped by the UserRefNum rules (a retransmission)


def _price_of(order: OuchOrder) -> int:
    return MARKET_PRICE if order.price is None else order.price


class OuchTranslator:
    """OUCH 5.0 order-entry logic for every user of a gateway, without I/O or threads.

    ``accounts`` maps each username to the accounts it may trade for (the first is its default; the
    Firm option picks another). ``next_order_id`` allocates matchwire order ids (unique per book);
    ``clock`` gives OUCH timestamps. Call :meth:`on_message` with each Unsequenced Data payload and
    send the commands to the books; call :meth:`on_event` with every event the books produce and send
    each ``(username, payload)`` it returns as sequenced data. Events for orders that did not come
    through this translator are ignored.
    """

    def __init__(self, accounts: Mapping[str, Sequence[str]], next_order_id: Callable[[], int] | None = None,
                 clock: Callable[[], int] = timestamp_now) -> None:
        self.accounts = accounts
        self.next_order_id = next_order_id or itertools.count(1).__next__
        self.clock = clock
        # Each message type's handler, found once (a name built and looked up per message showed in profiles).
        self._handlers = {code: getattr(self, "_on_" + spec.name) for code, spec in INBOUND_SPECS.items()}
        self.last_user_ref_num: dict[str, int] = {}
        self.orders: dict[tuple[str, int], OuchOrder] = {}  # (username, current UserRefNum) -> order
        self.by_id: dict[int, OuchOrder] = {}  # matchwire order id -> order
        # Rejects sent, by matchwire reason: several reasons share an OUCH code (0x0F "other"), and an
        # operator wants to know which (the run's summary prints them).
        self.rejects: collections.Counter[str] = collections.Counter()

    # -- journal snapshots -------------------------------------------------------------------------

    def save_state(self) -> dict:
        """Every user's UserRefNum mark and the orders remembered (with requests in flight), JSON-ready."""
        unique = {id(order): order for order in (*self.orders.values(), *self.by_id.values())}
        orders = []
        for order in unique.values():
            values = {name: getattr(order, name) for name in OuchOrder.__dataclass_fields__ if name != "pending"}
            # A request keeps what its answer needs (UserRefNum, ClOrdID, side); the appendage, which may hold
            # raw bytes of unknown options, is not needed once the request has been translated.
            values["pending"] = [[request, None if msg is None else
                                  {k: v for k, v in msg.items() if type(v) in (int, str)}]
                                 for request, msg in order.pending]
            values["keyed"] = self.orders.get((order.username, order.user_ref_num)) is order
            values["by_id"] = self.by_id.get(order.order_id) is order
            orders.append(values)
        return {"last_user_ref_num": self.last_user_ref_num, "orders": orders}

    def load_state(self, state: dict) -> None:
        """Continue from what :meth:`save_state` described."""
        self.last_user_ref_num = dict(state["last_user_ref_num"])
        self.orders, self.by_id = {}, {}
        for values in state["orders"]:
            values = dict(values)
            keyed, by_id = values.pop("keyed"), values.pop("by_id")
            pending = deque((request, msg) for request, msg in values.pop("pending"))
            order = OuchOrder(**values, pending=pending)
            if keyed:
                self.orders[(order.username, order.user_ref_num)] = order
            if by_id:
                self.by_id[order.order_id] = order

    # -- inbound -----------------------------------------------------------------------------------

    def on_message(self, username: str, payload: bytes) -> OuchResult:
        """Translate one inbound OUCH message of ``username``."""
        result = OuchResult()
        try:
            msg = decode_inbound(payload)
        except OuchError as exc:
            result.error = exc
            return result
        self._handlers[msg["type"]](username, msg, result)
        return result

    def _fresh_ref(self, username: str, user_ref_num: int) -> bool:
        # UserRefNums are strictly increasing per user; anything else is a retransmission to ignore.
        if user_ref_num <= self.last_user_ref_num.get(username, 0):
            return False
        self.last_user_ref_num[username] = user_ref_num
        return True

    def _reject_code(self, reason: str) -> int:
        self.rejects[reason] += 1
        return ouch_reason(reason, REJECT)  # type: ignore[return-value]

    def _reject(self, result: OuchResult, user_ref_num: int, reason: str, cl_ord_id: str) -> None:
        result.replies.append(encode_outbound("J", timestamp=self.clock(), user_ref_num=user_ref_num,
                                              reason=self._reject_code(reason), cl_ord_id=cl_ord_id))

    def _on_enter_order(self, username: str, msg: OuchMessage, result: OuchResult) -> None:
        ref = msg["user_ref_num"]
        if not self._fresh_ref(username, ref):
            result.ignored = True
            return
        options = msg["options"]
        cl_ord_id = msg["cl_ord_id"]
        allowed = self.accounts.get(username, ())
        account = options.get("firm") or (allowed[0] if allowed else "")
        price = msg["price"]
        tif = TIME_IN_FORCE.get(msg["time_in_force"])
        reason = None
        if msg["side"] not in SIDES:
            reason = RejectReason.INVALID_SIDE
        elif tif is None:
            reason = RejectReason.INVALID_TIF
        elif msg["display"] not in VISIBLE_DISPLAYS:
            reason = "invalid_display"
        elif msg["cross_type"] != "N":
            reason = "invalid_cross_type"
        elif account not in allowed:
            reason = RejectReason.INVALID_ACCOUNT
        elif MAX_PRICE < price < MARKET_PRICE_THRESHOLD:
            reason = "price_too_high"
        if reason is not None:
            self._reject(result, ref, reason, cl_ord_id)
            return
        market = price >= MARKET_PRICE_THRESHOLD
        min_qty = options.get("min_qty", 0)
        if min_qty:
            # OUCH has no fill-or-kill TIF: IOC with MinQty = Quantity is one. Other minimums: unsupported.
            if tif != TimeInForce.IOC or min_qty != msg["quantity"]:
                self._reject(result, ref, "invalid_min_qty", cl_ord_id)
                return
            tif = TimeInForce.FOK
        post_only = VISIBLE_DISPLAYS[msg["display"]] or options.get("post_only") == "P"
        order_id = self.next_order_id()
        command = NewOrder(msg["symbol"], order_id, account, SIDES[msg["side"]], None if market else price,
                           msg["quantity"], order_type=OrderType.MARKET if market else OrderType.LIMIT,
                           tif=TimeInForce.IOC if market and tif != TimeInForce.FOK else tif,
                           post_only=post_only, display_qty=options.get("max_floor", 0))
        order = OuchOrder(username, ref, order_id, msg["symbol"], msg["side"], account, command.price,
                          msg["quantity"], time_in_force=msg["time_in_force"], display=msg["display"],
                          capacity=msg["capacity"], cross_type=msg["cross_type"], cl_ord_id=cl_ord_id,
                          inter_market_sweep_eligibility=msg["inter_market_sweep_eligibility"])
        self.orders[(username, ref)] = order
        self.by_id[order_id] = order
        result.commands.append(command)

    def _on_replace_order(self, username: str, msg: OuchMessage, result: OuchResult) -> None:
        order = self.orders.get((username, msg["orig_user_ref_num"]))
        # Spec: an unknown/dead original or a used replacement UserRefNum is silently ignored, and
        # the replacement UserRefNum is not consumed then.
        if order is None or _done(order) or msg["user_ref_num"] <= self.last_user_ref_num.get(username, 0):
            result.ignored = True
            return
        self._fresh_ref(username, msg["user_ref_num"])
        price = msg["price"]
        reason = None
        if order.price is None:
            reason = "replace_not_allowed"  # a market order never rests: nothing to replace
        elif msg["quantity"] == 0:
            reason = RejectReason.INVALID_QTY
        elif price > MAX_PRICE:
            reason = RejectReason.INVALID_PRICE  # a limit order stays a limit order
        if reason is not None:
            self._reject(result, msg["user_ref_num"], reason, msg["cl_ord_id"])
            return
        if order.accepted and msg["quantity"] == order.leaves and price == order.price and not order.pending:
            self._apply_replace(order, msg)  # only the token (and ClOrdID) change: nothing for the book
            result.replies.append(self._replaced(order, msg["orig_user_ref_num"]))
            return
        order.pending.append(("replace", msg))
        order.promised = msg["quantity"]
        result.commands.append(ModifyOrder(order.symbol, order.order_id, qty=msg["quantity"], price=price))

    def _on_cancel_order(self, username: str, msg: OuchMessage, result: OuchResult) -> None:
        ref = msg["user_ref_num"]
        order = self.orders.get((username, ref))
        if order is None or _done(order):
            result.replies.append(encode_outbound("I", timestamp=self.clock(), user_ref_num=ref))
            return
        # Quantity is the intended order size: the most shares that may have executed, in total, once
        # the cancel is applied. So the new open quantity is what remains after the executions. Executions
        # may be on their way here: the book is asked to cut the shares this view says are too many, which
        # it takes off what it has open then, so shares executed meanwhile count against the intended size
        # (an absolute open quantity would make the order grow by them).
        target = msg["quantity"] - order.executed
        expected = _expected_open(order)
        if target <= 0:
            order.pending.append(("cancel", None))
            order.promised = 0
            result.commands.append(CancelOrder(order.symbol, order.order_id))
        elif target < expected:
            order.pending.append(("reduce", None))
            order.promised = target
            result.commands.append(ModifyOrder(order.symbol, order.order_id, qty=expected - target, reduce=True))
        else:
            result.replies.append(encode_outbound("I", timestamp=self.clock(), user_ref_num=ref))

    def _on_modify_order(self, username: str, msg: OuchMessage, result: OuchResult) -> None:
        ref = msg["user_ref_num"]
        order = self.orders.get((username, ref))
        if order is None or _done(order):
            self._reject(result, ref, RejectReason.UNKNOWN_ORDER, "")
            return
        sells = ("S", "T", "E")
        if msg["side"] != order.side and not (msg["side"] in sells and order.side in sells):
            self._reject(result, ref, RejectReason.INVALID_SIDE, order.cl_ord_id)
            return
        target = msg["quantity"] - order.executed  # the same "intended order size" as a cancel
        if target <= 0:
            self._reject(result, ref, RejectReason.INVALID_QTY, order.cl_ord_id)
            return
        if order.accepted and target == order.leaves and not order.pending:
            order.side = msg["side"]
            result.replies.append(self._modified(order))
            return
        expected = _expected_open(order)
        if target == expected:
            # The size the requests before it (or the order's own entry) will leave: nothing for the book, where an
            # absolute quantity would add executions on their way. Answered in its turn, after theirs.
            order.pending.append(("modify_same", msg))
            order.promised = target
            return
        order.pending.append(("modify", msg))
        order.promised = target
        if target < expected:  # a cut, as for a cancel: executions on their way count against the intended size
            result.commands.append(ModifyOrder(order.symbol, order.order_id, qty=expected - target, reduce=True))
        else:
            result.commands.append(ModifyOrder(order.symbol, order.order_id, qty=target))

    def _on_account_query(self, username: str, msg: OuchMessage, result: OuchResult) -> None:
        next_ref = min(self.last_user_ref_num.get(username, 0) + 1, 0xFFFFFFFF)
        result.replies.append(encode_outbound("Q", timestamp=self.clock(), next_user_ref_num=next_ref))

    # -- outbound ----------------------------------------------------------------------------------

    def on_event(self, event: Event) -> list[tuple[str, bytes]]:
        """The OUCH messages (``(username, payload)``) one matchwire event gives rise to."""
        kind = type(event)
        if kind is Fill:
            out = []
            for order_id, flag in ((event.maker_order_id, "A"), (event.taker_order_id, "R")):
                order = self.by_id.get(order_id)
                if order is not None:
                    order.executed += event.qty
                    order.leaves -= event.qty
                    out.append((order.username, _ENCODE_EXECUTED(
                        timestamp=self.clock(), user_ref_num=order.user_ref_num, quantity=event.qty,
                        price=event.price, liquidity_flag=flag, match_number=event.match_number)))
                    self._maybe_forget(order)
            return out
        order = self.by_id.get(getattr(event, "order_id", None))  # type: ignore[arg-type]
        if order is None:
            return []
        out = self._on_order_event(order, kind, event)
        if order.pending and order.pending[0][0] == "modify_same" and order.accepted:
            out += self._answer_same_sizes(order)
        return out

    def _answer_same_sizes(self, order: OuchOrder) -> list[tuple[str, bytes]]:
        """Modify Orders of the size the requests before them leave, now that those are answered: an Order Modified
        each (the side may change), or an Order Rejected for an order that ended meanwhile, as the book would."""
        out = []
        while order.pending and order.pending[0][0] == "modify_same":
            _, msg = order.pending.popleft()
            if order.leaves > 0:
                order.side = msg["side"]
                out.append((order.username, self._modified(order)))
            else:
                out.append((order.username, self._refusal(order, "modify", msg, RejectReason.UNKNOWN_ORDER)))
        self._maybe_forget(order)
        return out

    def _on_order_event(self, order: OuchOrder, kind: type, event: Event) -> list[tuple[str, bytes]]:
        if kind is Accepted:
            order.accepted = True
            order.leaves = event.qty
            return [(order.username, self._accepted(order))]
        if kind is Cancelled:
            # The user's cancel, or a cut (a cancel's or a modify's) that found no more open than it cuts: it ends the
            # order. Never the answer to a request behind an unanswered modify, since the book answers in order.
            if event.reason == CancelReason.USER and order.pending and order.pending[0][0] in ("cancel", "reduce",
                                                                                             "modify"):
                order.pending.popleft()
            order.leaves -= event.qty
            payload = _ENCODE_CANCELED(timestamp=self.clock(), user_ref_num=order.user_ref_num, quantity=event.qty,
                                       reason=ouch_reason(event.reason, CANCEL))
            self._maybe_forget(order)
            return [(order.username, payload)]
        if kind is Modified:
            request, msg = order.pending.popleft() if order.pending else ("modify", None)
            old_leaves = order.leaves
            order.leaves = event.qty
            order.price = event.price
            if request == "replace":
                orig = order.user_ref_num
                self._apply_replace(order, msg)
                return [(order.username, self._replaced(order, orig))]
            # A cut: the shares the book took off, as a cancel (every execution before it is in old_leaves already,
            # since the book's events come in its order). Never a cancel of a negative quantity: a cut that
            # somehow took nothing off would be reported as an Order Modified.
            if request == "reduce" and event.qty < old_leaves:
                return [(order.username, encode_outbound(
                    "C", timestamp=self.clock(), user_ref_num=order.user_ref_num, quantity=old_leaves - event.qty,
                    reason="U"))]
            if msg is not None:
                order.side = msg["side"]
            return [(order.username, self._modified(order))]
        if kind is Rejected:
            return self._on_rejected(order, event)
        return []

    def _on_rejected(self, order: OuchOrder, event: Rejected) -> list[tuple[str, bytes]]:
        if event.op == "new" and not order.accepted:
            self._forget(order)
            out = [(order.username, encode_outbound(
                "J", timestamp=self.clock(), user_ref_num=order.user_ref_num,
                reason=self._reject_code(event.reason), cl_ord_id=order.cl_ord_id))]
            # Requests sent behind the order, before its answer: the book refuses them as for an unknown order,
            # and with the order forgotten those refusals reach nobody, so each is answered here, once.
            while order.pending:
                out.append((order.username, self._refusal(order, *order.pending.popleft(), RejectReason.UNKNOWN_ORDER)))
            return out
        request, msg = order.pending.popleft() if order.pending else ("cancel", None)
        out = self._refusal(order, request, msg, event.reason)
        self._maybe_forget(order)
        return [(order.username, out)]

    def _refusal(self, order: OuchOrder, request: str, msg: OuchMessage | None, reason: str) -> bytes:
        """The answer to a refused request on ``order``: Cancel Reject for a cancel, Order Rejected otherwise."""
        if request in ("cancel", "reduce"):
            return encode_outbound("I", timestamp=self.clock(), user_ref_num=order.user_ref_num)
        if request == "replace":
            # The order itself is unchanged; the reject carries the replacement's UserRefNum.
            return encode_outbound("J", timestamp=self.clock(), user_ref_num=msg["user_ref_num"],  # type: ignore[index]
                                   reason=self._reject_code(reason), cl_ord_id=msg["cl_ord_id"])  # type: ignore[index]
        return encode_outbound("J", timestamp=self.clock(), user_ref_num=order.user_ref_num,
                               reason=self._reject_code(reason), cl_ord_id=order.cl_ord_id)

    def _apply_replace(self, order: OuchOrder, msg: OuchMessage) -> None:
        # The order continues under the replacement's UserRefNum; the old one no longer addresses it.
        self.orders.pop((order.username, order.user_ref_num), None)
        order.user_ref_num = msg["user_ref_num"]
        order.quantity = order.leaves
        order.executed = 0
        order.cl_ord_id = msg["cl_ord_id"]
        self.orders[(order.username, order.user_ref_num)] = order

    def _maybe_forget(self, order: OuchOrder) -> None:
        if order.leaves <= 0 and not order.pending and order.accepted:
            self._forget(order)

    def _forget(self, order: OuchOrder) -> None:
        self.by_id.pop(order.order_id, None)
        if self.orders.get((order.username, order.user_ref_num)) is order:
            del self.orders[(order.username, order.user_ref_num)]

    def _echo(self, order: OuchOrder) -> dict[str, Any]:
        return {"side": order.side, "quantity": order.quantity, "symbol": order.symbol, "price": _price_of(order),
                "time_in_force": order.time_in_force, "display": order.display,
                "order_reference_number": order.order_id, "capacity": order.capacity,
                "inter_market_sweep_eligibility": order.inter_market_sweep_eligibility,
                "cross_type": order.cross_type, "order_state": "L", "cl_ord_id": order.cl_ord_id}

    def _accepted(self, order: OuchOrder) -> bytes:
        return _ENCODE_ACCEPTED(timestamp=self.clock(), user_ref_num=order.user_ref_num, side=order.side,
                                quantity=order.quantity, symbol=order.symbol, price=_price_of(order),
                                time_in_force=order.time_in_force, display=order.display,
                                order_reference_number=order.order_id, capacity=order.capacity,
                                inter_market_sweep_eligibility=order.inter_market_sweep_eligibility,
                                cross_type=order.cross_type, order_state="L", cl_ord_id=order.cl_ord_id)

    def _replaced(self, order: OuchOrder, orig_user_ref_num: int) -> bytes:
        return encode_outbound("U", timestamp=self.clock(), orig_user_ref_num=orig_user_ref_num,
                               user_ref_num=order.user_ref_num, **self._echo(order))

    def _modified(self, order: OuchOrder) -> bytes:
        return encode_outbound("M", timestamp=self.clock(), user_ref_num=order.user_ref_num, side=order.side,
                               quantity=order.executed + order.leaves)

    def on_events(self, events: Iterable[Event]) -> list[tuple[str, bytes]]:
        """:meth:`on_event` for each event, in order."""
        out: list[tuple[str, bytes]] = []
        for event in events:
            out += self.on_event(event)
        return out
