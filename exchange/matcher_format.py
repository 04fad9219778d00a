"""The gateware matcher's command and event records, and the book profile that mirrors it.

One definition serves the gateware (``hdl.formats`` builds its stream payloads from these
layouts), the host driver (``host.matcher_driver``) and the simulation benches. Everything here
is stdlib plus :mod:`exchange`.

The matcher holds one instrument. Prices travel as signed tick *offsets* from the window base
(the host subtracts the base and divides by the tick size), so the gateware never needs an
absolute price and any Python integer price works: offsets outside the ``int32`` field saturate,
which is still outside every window. Quantities are plain integers of ``qty_width`` bits.
Orders are named by *handles*, small integers the gateware allocates when an order rests and
reports in its event records; the host maps them to order ids and accounts.

Command record (one per command; ``op`` decides which fields matter)::

    op | side | tif | flags | handle | price | ref | qty

* ``NEW``: side, tif (GTC/DAY rest, IOC, FOK), flags (``MARKET``, ``POST_ONLY``), price (limit,
  as tick offset; ignored for market orders), qty.
* ``CANCEL``: handle, ref (the order's current price offset, a hint the gateware checks).
* ``MODIFY``: handle, ref, flags ``HAS_QTY``/``HAS_PRICE`` with the new qty/price.
* ``SET_BASE``: places the window (the host keeps the absolute base); only on an empty book.
* ``RESET``: empties the book and forgets the window (administrative; no engine equivalent).

Event record (one per gateware action; the host expands some into two engine events)::

    kind | reason | side | flags | handle | price | qty | leaves

``flags & LAST`` marks the final record of a command's burst; every command yields at least one
record. See docs/matcher.md for the record-to-event table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from exchange.engine import BookProfile
from exchange.layout import Layout, enum_field, sint, uint

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
PRICE_WIDTH = 32  # tick offsets travel as int32 in both records


class MatcherOp(IntEnum):
    """What a command record asks the matcher to do."""

    NEW = 1
    CANCEL = 2
    MODIFY = 3
    SET_BASE = 4
    RESET = 5


class RecordKind(IntEnum):
    """What an event record reports."""

    ADDED = 1  # an order now rests: handle, side, price, qty visible
    FILL = 2  # a trade: maker handle, maker price, qty, maker leaves after it
    CANCELLED = 3  # the command's order (or its remainder) left: handle, qty, reason
    REDUCED = 4  # modify down in place: qty cut, leaves = new remaining
    REMOVED = 5  # modify that loses priority: the order left its level (qty = old leaves)
    REJECTED = 6  # the command changed nothing: reason
    BASE_SET = 7  # the window is placed
    RESET_DONE = 8  # the book is empty and the window unset


class MatcherReason(IntEnum):
    """Reason codes carried by CANCELLED and REJECTED records."""

    NONE = 0
    REQUESTED = 1  # a CANCEL command (the host knows why: user, admin, expired)
    IOC = 2
    FOK = 3
    POST_ONLY = 4
    BOOK_FULL = 5
    UNKNOWN_ORDER = 6
    PRICE_OUTSIDE_WINDOW = 7
    NO_CHANGE = 8
    BOOK_NOT_EMPTY = 9
    INVALID_COMMAND = 10  # a record the host never sends (bad op, side, tif, zero qty)


# Command ``flags`` bits.
FLAG_MARKET = 1
FLAG_POST_ONLY = 2
FLAG_HAS_QTY = 4
FLAG_HAS_PRICE = 8

# Event ``flags`` bits.
EVENT_LAST = 1

# ``side`` field values: the engine's Side numbers.
SIDE_BUY = 1
SIDE_SELL = 2

# ``tif`` field values: the engine's TimeInForce numbers.
TIF_GTC = 1
TIF_DAY = 2
TIF_IOC = 3
TIF_FOK = 4

_LAYOUT_WIDTHS = (8, 16, 32, 64)


def _field_width(bits: int) -> int:
    """The smallest record field width (8/16/32/64) that holds ``bits`` bits."""
    for width in _LAYOUT_WIDTHS:
        if bits <= width:
            return width
    raise ValueError(f"{bits} bits do not fit a 64-bit field")


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


class CommandRecord(NamedTuple):
    """A command record's fields as Python integers."""

    op: int
    side: int = 0
    tif: int = 0
    flags: int = 0
    handle: int = 0
    price: int = 0
    ref: int = 0
    qty: int = 0


class EventRecord(NamedTuple):
    """An event record's fields; ``kind`` and ``reason`` as enum members when known."""

    kind: RecordKind | int
    reason: MatcherReason | int
    side: int
    flags: int
    handle: int
    price: int
    qty: int
    leaves: int

    @property
    def last(self) -> bool:
        return bool(self.flags & EVENT_LAST)


@dataclass(frozen=True)
class MatcherConfig:
    """Size parameters of one matcher instance, shared by gateware, host and benches.

    ``max_orders`` resting orders (handles ``0..max_orders-1``), prices within
    ``-window_ticks .. window_ticks-1`` ticks of the base, quantities of ``qty_width`` bits,
    handles carried in ``id_width``-bit record fields (8, 16, 32 or 64). ``group_width`` is the
    word size of the level-occupancy bitmap (a power of two, at most 64). Bad values raise
    ValueError.
    """

    max_orders: int = 4096
    window_ticks: int = 1024
    qty_width: int = 32
    id_width: int = 16
    group_width: int = 32
    command_layout: Layout = field(init=False, repr=False, compare=False)
    event_layout: Layout = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int("max_orders", self.max_orders, 1, 1 << 20)
        _check_int("window_ticks", self.window_ticks, 1, 1 << 20)
        _check_int("qty_width", self.qty_width, 2, 64)
        if self.id_width not in _LAYOUT_WIDTHS:
            raise ValueError(f"id_width must be one of {_LAYOUT_WIDTHS}, got {self.id_width!r}")
        if (1 << self.id_width) < self.max_orders:
            raise ValueError(f"id_width {self.id_width} cannot name {self.max_orders} order handles")
        if self.group_width not in (2, 4, 8, 16, 32, 64):
            raise ValueError(f"group_width must be a power of two from 2 to 64, got {self.group_width!r}")
        qty_field = _field_width(self.qty_width)
        object.__setattr__(self, "command_layout", Layout("matcher_command", [
            enum_field("op", MatcherOp),
            uint("side", 8),
            uint("tif", 8),
            uint("flags", 8),
            uint("handle", self.id_width),
            sint("price", PRICE_WIDTH),
            sint("ref", PRICE_WIDTH),
            uint("qty", qty_field),
        ]))
        object.__setattr__(self, "event_layout", Layout("matcher_event", [
            enum_field("kind", RecordKind),
            enum_field("reason", MatcherReason),
            uint("side", 8),
            uint("flags", 8),
            uint("handle", self.id_width),
            sint("price", PRICE_WIDTH),
            uint("qty", qty_field),
            uint("leaves", qty_field),
        ]))

    # -- derived sizes ---------------------------------------------------------------------

    @property
    def handle_bits(self) -> int:
        """Bits of an order handle inside the gateware."""
        return max(1, (self.max_orders - 1).bit_length())

    @property
    def levels(self) -> int:
        """Price positions in the window (both sides share them: the book never rests crossed)."""
        return 2 * self.window_ticks

    @property
    def level_bits(self) -> int:
        return max(1, (self.levels - 1).bit_length())

    @property
    def groups(self) -> int:
        """Words of the occupancy bitmap."""
        return -(-self.levels // self.group_width)

    @property
    def max_qty(self) -> int:
        return (1 << self.qty_width) - 1

    def profile(self, name: str = "hardware") -> BookProfile:
        """The reference engine's profile for this matcher (see :func:`hardware_profile`)."""
        return hardware_profile(max_orders=self.max_orders, window_ticks=self.window_ticks, name=name,
                                max_qty=self.max_qty)

    # -- records -----------------------------------------------------------------------------

    def encode_command(self, record: CommandRecord) -> bytes:
        """Pack a command record (LayoutError if a field does not fit)."""
        return self.command_layout.pack_values(record)

    def decode_command(self, data: bytes) -> CommandRecord:
        return CommandRecord(*self.command_layout.unpack_values(data))

    def encode_event(self, record: EventRecord) -> bytes:
        return self.event_layout.pack_values(record)

    def decode_event(self, data: bytes) -> EventRecord:
        """Unpack an event record (LayoutError on an unknown kind or reason)."""
        return EventRecord(*self.event_layout.unpack_values(data))

    def command_word(self, record: CommandRecord) -> int:
        """The command as the bit vector the gateware's payload sees."""
        return self.command_layout.to_int(self.encode_command(record))

    def event_from_word(self, word: int) -> EventRecord:
        """An event record from the gateware's payload bit vector."""
        return self.decode_event(self.event_layout.from_int(word))


def clamp_offset(offset: int) -> int:
    """A tick offset saturated to the int32 price field (saturated values lie outside any window)."""
    return INT32_MIN if offset < INT32_MIN else INT32_MAX if offset > INT32_MAX else offset


def hardware_profile(max_orders: int = 4096, window_ticks: int = 1024, name: str = "hardware",
                     max_qty: int = (1 << 32) - 1) -> BookProfile:
    """The reference engine's profile for the gateware matcher.

    Supported: limit orders GTC, DAY (expired by the host at end of day), IOC and FOK; market
    orders (IOC, FOK); post-only; cancel; modify; the price window. Not supported, so rejected
    with reason ``unsupported``: reserve (iceberg) orders (any display quantity: one equal to the
    quantity would become a reserve after a quantity increase), self-trade prevention, and quantities
    above ``max_qty`` (the matcher's quantity field).
    """
    return BookProfile(name=name, max_orders=max_orders, window_ticks=window_ticks, market_orders=True,
                       reserve_orders=False, post_only=True, self_trade_prevention=False, day_orders=True,
                       fok_orders=True, max_qty=max_qty)
