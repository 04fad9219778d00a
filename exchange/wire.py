"""The cluster's binary messages, defined once and versioned.

Every message between nodes is two ZeroMQ frames: a fixed :data:`HEADER` naming the version,
the kind, the record count and the source and destination actors, then a payload of ``count``
fixed-size records of the kind's layout, back to back. Batching many records in one message is
what amortises the per-message cost. Nothing is pickled; any peer that speaks this module's
layouts can join.

Reason codes travel as one byte (:data:`REASON_CODES`); the receiver renders the standard text
for a code. Engine rejects carry a more detailed text in-process; on the wire the code is the
contract.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from exchange.layout import Layout, LayoutError, ascii_field, enum_field, sint, uint
from exchange.orders import (
    Accepted,
    BasePriceSet,
    Cancelled,
    CancelOrder,
    CancelReason,
    Command,
    EndOfDay,
    Event,
    Fill,
    Modified,
    ModifyOrder,
    NewOrder,
    OrderAdded,
    OrderReduced,
    OrderRemoved,
    OrderType,
    Rejected,
    RejectReason,
    SelfTradePrevention,
    SetBasePrice,
    Side,
    TimeInForce,
)
from exchange.risk import RISK_REASON_TEXT, RiskReason

# 2: an order record's last field carries a modify's version (``display_qty`` of new orders only).
# 3: a modify may be a cut (FLAG_REDUCE: qty is the shares to take off), which a node of version 2 would apply
#    as an absolute quantity.
WIRE_VERSION = 3


class MessageKind(IntEnum):
    """What the records of a message are."""

    ORDERS = 1  # order commands (new, cancel, modify, ...) on their way to a book
    REPORTS = 2  # events on their way back (execution reports, book changes, rejects)
    PING = 3  # liveness probe; no records
    CONTROL = 4  # one UTF-8 JSON document (admin and supervision; never on a hot path)


class Op(IntEnum):
    """Which command an order record carries."""

    NEW = 1
    CANCEL = 2
    MODIFY = 3
    END_OF_DAY = 4
    SET_BASE = 5


class EventKind(IntEnum):
    """Which event a report record carries."""

    ACCEPTED = 1
    REJECTED = 2
    FILL = 3
    CANCELLED = 4
    MODIFIED = 5
    ORDER_ADDED = 6
    ORDER_REDUCED = 7
    ORDER_REMOVED = 8
    BASE_PRICE_SET = 9
    RECOVERED = 10  # not an engine event: a restarted book has re-sent its events up to ``extra`` (seq is 0)


# Python 3.11 looks every attribute of an Enum class up through ``EnumType.__getattr__``: ``Op.NEW`` costs ~100 ns
# where a global costs ~20, and per-record code compares kinds several times a record. It uses these globals,
# the members themselves (so ``is`` and ``==`` both hold).
OP_NEW, OP_CANCEL, OP_MODIFY, OP_END_OF_DAY, OP_SET_BASE = Op
(EV_ACCEPTED, EV_REJECTED, EV_FILL, EV_CANCELLED, EV_MODIFIED, EV_ORDER_ADDED, EV_ORDER_REDUCED, EV_ORDER_REMOVED,
 EV_BASE_PRICE_SET, EV_RECOVERED) = EventKind
MSG_ORDERS, MSG_REPORTS, MSG_PING, MSG_CONTROL = MessageKind

class ClusterReason:
    """Reasons only a cluster produces (the engine never does)."""

    BUSY = "busy"  # a downstream queue is full: the order was not taken, nothing was lost
    INSTRUMENT_UNAVAILABLE = "instrument_unavailable"  # the book's node is down


# Reason strings <-> one-byte codes. Append only: codes are part of the wire format.
_REASONS = [
    "", CancelReason.USER, CancelReason.IOC, CancelReason.FOK, CancelReason.STP, CancelReason.POST_ONLY,
    CancelReason.EXPIRED, CancelReason.BOOK_FULL, CancelReason.ADMIN,
    RejectReason.UNKNOWN_SYMBOL, RejectReason.INVALID_SYMBOL, RejectReason.INVALID_ORDER_ID,
    RejectReason.DUPLICATE_ORDER_ID, RejectReason.UNKNOWN_ORDER, RejectReason.INVALID_ACCOUNT,
    RejectReason.INVALID_SIDE, RejectReason.INVALID_TYPE, RejectReason.INVALID_TIF, RejectReason.INVALID_STP,
    RejectReason.INVALID_QTY, RejectReason.QTY_OFF_LOT, RejectReason.INVALID_PRICE, RejectReason.PRICE_OFF_TICK,
    RejectReason.PRICE_OUTSIDE_BAND, RejectReason.PRICE_OUTSIDE_WINDOW, RejectReason.INVALID_DISPLAY_QTY,
    RejectReason.INVALID_POST_ONLY, RejectReason.NO_CHANGE, RejectReason.UNSUPPORTED, RejectReason.BOOK_NOT_EMPTY,
    RejectReason.INVALID_COMMAND, ClusterReason.BUSY, ClusterReason.INSTRUMENT_UNAVAILABLE,
    RiskReason.MAX_ORDER_QTY, RiskReason.MAX_ORDER_NOTIONAL, RiskReason.PRICE_COLLAR, RiskReason.MAX_OPEN_ORDERS,
    RiskReason.CREDIT_LIMIT, RiskReason.MAX_POSITION, RiskReason.RATE_LIMIT, RiskReason.KILL_SWITCH,
    RiskReason.NO_REFERENCE_PRICE,
]
REASON_CODES: dict[str, int] = {reason: code for code, reason in enumerate(_REASONS)}
REASONS_BY_CODE: dict[int, str] = dict(enumerate(_REASONS))

REASON_TEXT: dict[str, str] = {
    CancelReason.USER: "cancelled by the user",
    CancelReason.IOC: "immediate-or-cancel remainder",
    CancelReason.FOK: "fill-or-kill order could not fill completely",
    CancelReason.STP: "self-trade prevention",
    CancelReason.POST_ONLY: "post-only order would have taken liquidity",
    CancelReason.EXPIRED: "day order expired",
    CancelReason.BOOK_FULL: "book full",
    CancelReason.ADMIN: "cancelled by an operator",
    ClusterReason.BUSY: "busy: downstream queue full, order not taken",
    ClusterReason.INSTRUMENT_UNAVAILABLE: "instrument unavailable: its book node is down",
    **RISK_REASON_TEXT,
}


def register_reason(reason: str, text: str) -> int:
    """Add a reason code (e.g. a risk check's) at the end of the table; returns its code.

    Call at import time only, always in the same order, so every node agrees on the codes.
    """
    if reason not in REASON_CODES:
        if len(_REASONS) >= 255:
            raise ValueError("reason table full")
        _REASONS.append(reason)
        REASON_CODES[reason] = len(_REASONS) - 1
        REASONS_BY_CODE[len(_REASONS) - 1] = reason
    REASON_TEXT.setdefault(reason, text)
    return REASON_CODES[reason]


def reason_text(reason: str) -> str:
    """The standard text for a reason code."""
    return REASON_TEXT.get(reason, reason.replace("_", " "))


HEADER = Layout("header", [
    uint("version", 8),
    enum_field("kind", MessageKind),
    uint("count", 16),
    uint("source", 16),  # actor index of the sender (see the cluster configuration)
    uint("destination", 16),  # actor index of the receiver
    uint("batch", 64),  # per (source, destination) batch counter: gaps show loss, repeats show duplication
])

ORDER = Layout("order", [
    enum_field("op", Op),
    uint("side", 8),  # raw, so a bad value reaches the engine and is rejected with a reason
    uint("order_type", 8),
    uint("tif", 8),
    uint("stp", 8),
    uint("flags", 8),  # bit 0: post_only
    uint("reserved", 16),
    uint("trace_ns", 64),  # the client's send time, carried through for latency measurement
    ascii_field("symbol", 8),
    ascii_field("account", 8),
    uint("order_id", 64),
    sint("price", 64),  # 0: none (market order, or unchanged on modify)
    uint("qty", 64),  # 0: unchanged on modify
    # New orders: the display quantity. Modifies: the gateway's version of this modify of the order (1, 2, ...
    # per order; 0: unversioned), so a book can tell a copy sent again after a crash from a new modify.
    uint("display_qty", 64),
])

REPORT = Layout("report", [
    enum_field("kind", EventKind),
    uint("side", 8),  # order side; the taker's side for a fill
    uint("order_type", 8),
    uint("tif", 8),
    uint("stp", 8),
    uint("flags", 8),  # bit 0: post_only (accepted) / kept_priority (modified); bit 1: price is null
    uint("reason", 8),
    enum_field("op", Op),  # for rejects: which command was refused
    uint("seq", 64),  # the book's event sequence number; 0 when no book produced it
    uint("trace_ns", 64),
    ascii_field("symbol", 8),
    ascii_field("account", 8),  # the order's account; the maker's for a fill
    ascii_field("account2", 8),  # the taker's account for a fill
    uint("order_id", 64),  # the order; the maker's for a fill
    uint("order_id2", 64),  # the taker's order for a fill
    sint("price", 64),
    uint("qty", 64),
    uint("extra", 64),  # remaining (order_reduced), display_qty (accepted)
    uint("match_number", 64),
])

FLAG_POST_ONLY = 1  # order records, new orders
FLAG_ADMIN = 2  # order records, cancels: an operator's (or the kill switch's) cancel
FLAG_REDUCE = 4  # order records, modifies: qty is the number of shares to cut (ModifyOrder.reduce)
FLAG_KEPT_PRIORITY = 1
FLAG_NULL_PRICE = 2

_OPS = {NewOrder: Op.NEW, CancelOrder: Op.CANCEL, ModifyOrder: Op.MODIFY, EndOfDay: Op.END_OF_DAY,
        SetBasePrice: Op.SET_BASE}
_OP_NAMES = {Op.NEW: "new", Op.CANCEL: "cancel", Op.MODIFY: "modify", Op.END_OF_DAY: "end_of_day",
             Op.SET_BASE: "set_base"}
_OPS_BY_NAME = {name: op for op, name in _OP_NAMES.items()}

# The hot paths pack raw values themselves, skipping the generic checks of Layout.pack.
_pack_order = ORDER.struct.pack
_unpack_order = ORDER.struct.unpack_from
_pack_report = REPORT.struct.pack
_unpack_report = REPORT.struct.unpack_from
ORDER_SIZE = ORDER.size
REPORT_SIZE = REPORT.size


# Symbols and accounts are few and repeat on every record: encode/decode each once. Bounded, since
# clients choose account texts (past the bound, values are converted each time as before).
_CACHE_LIMIT = 65536
_ASCII8: dict[object, bytes] = {}
_TEXT8: dict[bytes, str] = {}


def _ascii8(text: str) -> bytes:
    try:
        return _ASCII8[text]
    except (KeyError, TypeError):  # TypeError: unhashable junk, packed as blanks below
        pass
    data = (text.encode("ascii", "replace") if isinstance(text, str) else b"")[:8].ljust(8, b" ")
    if isinstance(text, str) and len(_ASCII8) < _CACHE_LIMIT:
        _ASCII8[text] = data
    return data


def text8(data: bytes) -> str:
    """An 8-byte ASCII field of a record as text (trailing blanks dropped; bytes outside ASCII as U+FFFD)."""
    text = _TEXT8.get(data)
    if text is None:
        text = data.decode("ascii", "replace").rstrip(" ")
        if len(_TEXT8) < _CACHE_LIMIT:
            _TEXT8[data] = text
    return text


def _int(value: object, default: int = 0) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


# Every message crosses these twice: the raw Struct, not Layout's generic (dict, per-field enum) path.
_pack_header = HEADER.struct.pack
_unpack_header = HEADER.struct.unpack
HEADER_SIZE = HEADER.size
_KINDS: dict[int, MessageKind] = {int(k): k for k in MessageKind}


def pack_header(kind: MessageKind, count: int, source: int, destination: int, batch: int) -> bytes:
    """The header frame of a message; raises LayoutError on a value the header cannot carry."""
    try:
        return _pack_header(WIRE_VERSION, kind, count, source, destination, batch)
    except struct.error as exc:
        raise LayoutError(f"header: {exc}") from exc


def parse_header(frame: bytes) -> tuple[MessageKind, int, int, int, int]:
    """``(kind, count, source, destination, batch)`` of a header frame, for the hot paths.

    Raises LayoutError on a short frame, an unknown kind or version, as :func:`unpack_header`.
    """
    if len(frame) != HEADER_SIZE:
        raise LayoutError(f"header is {len(frame)} bytes, expected {HEADER_SIZE}")
    version, kind, count, source, destination, batch = _unpack_header(frame)
    if version != WIRE_VERSION:
        raise LayoutError(f"wire version {version} not supported (this node speaks {WIRE_VERSION})")
    member = _KINDS.get(kind)
    if member is None:
        raise LayoutError(f"header.kind: unknown value {kind}")
    return member, count, source, destination, batch


def unpack_header(frame: bytes) -> dict:
    """Decode a header frame by field name; raises LayoutError on a short frame, an unknown kind or version."""
    kind, count, source, destination, batch = parse_header(frame)
    return {"version": WIRE_VERSION, "kind": kind, "count": count, "source": source, "destination": destination,
            "batch": batch}


def command_to_record(command: Command, trace_ns: int = 0, version: int = 0) -> bytes:
    """One order record. Values the format cannot carry become 0, which the engine rejects.

    ``version`` numbers a modify per order (see :func:`record_version`); other commands ignore it.
    """
    kind = type(command)
    if kind is NewOrder:
        c: NewOrder = command  # type: ignore[assignment]
        return _pack_order(OP_NEW, _int(c.side) & 0xFF, _int(c.order_type) & 0xFF, _int(c.tif) & 0xFF,
                           _int(c.stp) & 0xFF, FLAG_POST_ONLY if c.post_only else 0, 0, trace_ns,
                           _ascii8(c.symbol), _ascii8(c.account), _int(c.order_id) & 0xFFFF_FFFF_FFFF_FFFF,
                           _clamp_price(c.price), _clamp_qty(c.qty), _clamp_qty(c.display_qty))
    op = _OPS.get(kind)
    if op is None:
        raise TypeError(f"not a command: {command!r}")
    order_id = _int(getattr(command, "order_id", 0)) & 0xFFFF_FFFF_FFFF_FFFF
    price = _clamp_price(getattr(command, "price", None))
    qty = _clamp_qty(getattr(command, "qty", None))
    if kind is CancelOrder:
        flags = FLAG_ADMIN if command.reason == CancelReason.ADMIN else 0  # type: ignore[attr-defined]
    else:
        flags = FLAG_REDUCE if kind is ModifyOrder and command.reduce is True else 0  # type: ignore[attr-defined]
    return _pack_order(op, 0, 0, 0, 0, flags, 0, trace_ns, _ascii8(command.symbol), b"        ", order_id, price,
                       qty, _int(version) & 0xFFFF_FFFF_FFFF_FFFF if op == OP_MODIFY else 0)


_MODIFY_VERSION = struct.Struct("<Q")
_VERSION_OFFSET = ORDER.size - 8  # the last field: display_qty of a new order, the version of a modify


def record_version(buffer: bytes | memoryview, offset: int = 0) -> int:
    """The version of a modify record (0 for other commands and unversioned modifies).

    A gateway numbers the modifies of each order 1, 2, ... so that one it sends again after a crash is
    recognised by the book (which keeps the last version applied per order) and applied at most once.
    """
    if buffer[offset] != OP_MODIFY:
        return 0
    return _MODIFY_VERSION.unpack_from(buffer, offset + _VERSION_OFFSET)[0]


def _clamp_price(price: object) -> int:
    if type(price) is not int or not -(2**63) <= price < 2**63:
        return 0
    return price


def _clamp_qty(qty: object) -> int:
    if type(qty) is not int or not 0 <= qty < 2**64:
        return 0
    return qty


_SIDES = {int(m): m for m in Side}
_TYPES = {int(m): m for m in OrderType}
_TIFS = {int(m): m for m in TimeInForce}
_STPS = {int(m): m for m in SelfTradePrevention}


def record_to_command(buffer: bytes | memoryview, offset: int = 0) -> tuple[Command, int]:
    """(command, trace_ns) from an order record; raises LayoutError on a malformed record."""
    try:
        (op, side, order_type, tif, stp, flags, _, trace_ns, symbol, account, order_id, price, qty,
         display) = _unpack_order(buffer, offset)
    except Exception as exc:  # struct.error on a short buffer
        raise LayoutError(f"order record at offset {offset}: {exc}") from exc
    symbol_text = text8(symbol)
    if op == OP_NEW:
        # Unknown enum values pass through raw, so the engine rejects them with a reason.
        return NewOrder(symbol_text, order_id, text8(account),
                        _SIDES.get(side, side), price if price else None, qty,  # type: ignore[arg-type]
                        _TYPES.get(order_type, order_type), _TIFS.get(tif, tif),  # type: ignore[arg-type]
                        bool(flags & FLAG_POST_ONLY), display, _STPS.get(stp, stp)), trace_ns  # type: ignore[arg-type]
    if op == OP_CANCEL:
        reason = CancelReason.ADMIN if flags & FLAG_ADMIN else CancelReason.USER
        return CancelOrder(symbol_text, order_id, reason), trace_ns
    if op == OP_MODIFY:
        return ModifyOrder(symbol_text, order_id, qty=qty or None, price=price or None,
                           reduce=bool(flags & FLAG_REDUCE)), trace_ns
    if op == OP_END_OF_DAY:
        return EndOfDay(symbol_text), trace_ns
    if op == OP_SET_BASE:
        return SetBasePrice(symbol_text, price), trace_ns
    raise LayoutError(f"order record at offset {offset}: unknown op {op}")


def event_to_record(event: Event, trace_ns: int = 0) -> bytes:
    """One report record."""
    kind = type(event)
    seq = event[0] or 0
    symbol = _ascii8(event[1])
    if kind is Fill:
        _, _, price, qty, maker_id, taker_id, maker_acct, taker_acct, taker_side, match = event
        return _pack_report(EV_FILL, taker_side, 0, 0, 0, 0, 0, 0, seq, trace_ns, symbol,
                            _ascii8(maker_acct), _ascii8(taker_acct), maker_id, taker_id, price, qty, 0, match)
    if kind is Accepted:
        (_, _, order_id, account, side, order_type, tif, price, qty, display, post_only, stp) = event
        flags = (FLAG_POST_ONLY if post_only else 0) | (FLAG_NULL_PRICE if price is None else 0)
        return _pack_report(EV_ACCEPTED, side, order_type, tif, stp, flags, 0, OP_NEW, seq, trace_ns, symbol,
                            _ascii8(account), b"        ", order_id, 0, price or 0, qty, display, 0)
    if kind is Cancelled:
        _, _, order_id, account, qty, reason = event
        return _pack_report(EV_CANCELLED, 0, 0, 0, 0, 0, REASON_CODES.get(reason, 0), 0, seq, trace_ns,
                            symbol, _ascii8(account), b"        ", order_id, 0, 0, qty, 0, 0)
    if kind is Rejected:
        _, _, order_id, op, reason, _text = event
        return _pack_report(EV_REJECTED, 0, 0, 0, 0, 0, REASON_CODES.get(reason, 0),
                            _OPS_BY_NAME.get(op, OP_NEW), seq, trace_ns, symbol, b"        ", b"        ",
                            _int(order_id) & 0xFFFF_FFFF_FFFF_FFFF, 0, 0, 0, 0, 0)
    if kind is Modified:
        _, _, order_id, account, price, qty, kept = event
        return _pack_report(EV_MODIFIED, 0, 0, 0, 0, FLAG_KEPT_PRIORITY if kept else 0, 0, OP_MODIFY, seq,
                            trace_ns, symbol, _ascii8(account), b"        ", order_id, 0, price, qty, 0, 0)
    if kind is OrderAdded:
        _, _, order_id, side, price, qty = event
        return _pack_report(EV_ORDER_ADDED, side, 0, 0, 0, 0, 0, 0, seq, trace_ns, symbol, b"        ",
                            b"        ", order_id, 0, price, qty, 0, 0)
    if kind is OrderReduced:
        _, _, order_id, qty, remaining = event
        return _pack_report(EV_ORDER_REDUCED, 0, 0, 0, 0, 0, 0, 0, seq, trace_ns, symbol, b"        ",
                            b"        ", order_id, 0, 0, qty, remaining, 0)
    if kind is OrderRemoved:
        _, _, order_id, qty = event
        return _pack_report(EV_ORDER_REMOVED, 0, 0, 0, 0, 0, 0, 0, seq, trace_ns, symbol, b"        ",
                            b"        ", order_id, 0, 0, qty, 0, 0)
    if kind is BasePriceSet:
        return _pack_report(EV_BASE_PRICE_SET, 0, 0, 0, 0, 0, 0, OP_SET_BASE, seq, trace_ns, symbol,
                            b"        ", b"        ", 0, 0, event[2], 0, 0, 0)
    raise TypeError(f"not an event: {event!r}")


_new_event = tuple.__new__


_text = text8


def record_to_event(buffer: bytes | memoryview, offset: int = 0) -> tuple[Event, int]:
    """(event, trace_ns) from a report record; raises LayoutError on a malformed record."""
    try:
        (kind, side, order_type, tif, stp, flags, reason, op, seq, trace_ns, symbol, account, account2, order_id,
         order_id2, price, qty, extra, match) = _unpack_report(buffer, offset)
    except Exception as exc:
        raise LayoutError(f"report record at offset {offset}: {exc}") from exc
    seq_value = seq or None
    sym = _text(symbol)
    # The most frequent kinds first (a book's acceptances and resting orders), the reason code looked up last.
    if kind == EV_ACCEPTED:
        return _new_event(Accepted, (seq_value, sym, order_id, _text(account), _SIDES.get(side, side),
                                     _TYPES.get(order_type, order_type), _TIFS.get(tif, tif),
                                     None if flags & FLAG_NULL_PRICE else price, qty, extra,
                                     bool(flags & FLAG_POST_ONLY), _STPS.get(stp, stp))), trace_ns
    if kind == EV_ORDER_ADDED:
        return _new_event(OrderAdded, (seq_value, sym, order_id, _SIDES.get(side, side), price, qty)), trace_ns
    if kind == EV_ORDER_REMOVED:
        return _new_event(OrderRemoved, (seq_value, sym, order_id, qty)), trace_ns
    if kind == EV_FILL:
        return _new_event(Fill, (seq_value, sym, price, qty, order_id, order_id2, _text(account), _text(account2),
                                 _SIDES.get(side, side), match)), trace_ns
    if kind == EV_ORDER_REDUCED:
        return _new_event(OrderReduced, (seq_value, sym, order_id, qty, extra)), trace_ns
    if kind == EV_MODIFIED:
        return _new_event(Modified, (seq_value, sym, order_id, _text(account), price, qty,
                                     bool(flags & FLAG_KEPT_PRIORITY))), trace_ns
    if kind == EV_BASE_PRICE_SET:
        return _new_event(BasePriceSet, (seq_value, sym, price)), trace_ns
    reason_name = REASONS_BY_CODE.get(reason, f"reason_{reason}")
    if kind == EV_CANCELLED:
        return _new_event(Cancelled, (seq_value, sym, order_id, _text(account), qty, reason_name)), trace_ns
    if kind == EV_REJECTED:
        return _new_event(Rejected, (seq_value, sym, order_id, _OP_NAMES.get(op, "new"), reason_name,
                                     reason_text(reason_name))), trace_ns
    raise LayoutError(f"report record at offset {offset}: unknown kind {kind}")


_SEQ_AND_SYMBOL = struct.Struct("<Q8x8s")  # a report record's seq (byte 8) and symbol (byte 24)


class ReplayFilter:
    """Drops report records a receiver has seen already, by each book's sequence number.

    A book that recovers from its journal re-sends its events since its last snapshot; every
    receiver keeps the last sequence number it saw per book and lets only newer events through.
    Records without a sequence number (rejects made outside a book) always pass.
    """

    __slots__ = ("last", "dropped")

    def __init__(self) -> None:
        self.last: dict[bytes, int] = {}
        self.dropped = 0

    def fresh(self, buffer: bytes | memoryview, offset: int) -> bool:
        seq, symbol = _SEQ_AND_SYMBOL.unpack_from(buffer, offset + 8)
        if not seq:
            return True
        if seq <= self.last.get(symbol, 0):
            self.dropped += 1
            return False
        self.last[symbol] = seq
        return True

    def save_state(self) -> dict:
        """The last sequence number seen per book (keys are the symbols as on the wire, space padded)."""
        return {symbol.decode("ascii"): seq for symbol, seq in self.last.items()}

    def load_state(self, state: dict) -> None:
        self.last = {symbol.encode("ascii"): seq for symbol, seq in state.items()}


def report_kind(buffer: bytes | memoryview, offset: int = 0) -> int:
    """The event kind of a report record, for routing without a full decode."""
    return buffer[offset]


def iter_records(payload: bytes | memoryview, size: int, count: int) -> range:
    """Offsets of ``count`` records of ``size`` bytes; raises LayoutError if the payload disagrees."""
    if len(payload) != size * count:
        raise LayoutError(f"payload is {len(payload)} bytes, expected {count} records of {size}")
    return range(0, size * count, size)
