"""Orders, commands and events: the vocabulary every matchwire component shares.

Commands go into a book; events come out. Both are plain slotted objects so the engine stays
fast; :mod:`exchange.script` turns them into and out of JSON lines. Enumerations are
``IntEnum`` so binary formats carry them as small integers, and their lower-case names are the
JSON spellings ("buy", "gtc", "cancel_oldest", ...).
"""

from __future__ import annotations

from enum import IntEnum
from operator import itemgetter


class Side(IntEnum):
    """Which side of the book an order is on."""

    BUY = 1
    SELL = 2


class OrderType(IntEnum):
    """Limit orders carry a price; market orders take whatever the book offers."""

    LIMIT = 1
    MARKET = 2


class TimeInForce(IntEnum):
    """How long an order may live: until cancelled, until end of day, or not at all (IOC/FOK)."""

    GTC = 1
    DAY = 2
    IOC = 3
    FOK = 4


class SelfTradePrevention(IntEnum):
    """What happens when an order would trade with a resting order of its own account.

    The incoming (taker) order's mode decides. ``NONE`` lets an account trade with itself.
    """

    NONE = 0
    CANCEL_NEWEST = 1
    CANCEL_OLDEST = 2
    CANCEL_BOTH = 3


def enum_name(value: IntEnum) -> str:
    """The JSON spelling of an enumeration member."""
    return value.name.lower()


def parse_enum(enum: type[IntEnum], text: object) -> IntEnum | None:
    """The member whose JSON spelling is ``text``, or None."""
    if not isinstance(text, str):
        return None
    try:
        return enum[text.upper()]
    except KeyError:
        return None


class CancelReason:
    """Why an order (or its remainder) left the book without trading."""

    USER = "user"
    IOC = "ioc"  # the part of an IOC or market order that found nothing to trade with
    FOK = "fok"  # a fill-or-kill order that could not fill completely
    STP = "stp"  # self-trade prevention
    POST_ONLY = "post_only"  # a post-only order that would have taken liquidity
    EXPIRED = "expired"  # a DAY order at end of day
    BOOK_FULL = "book_full"  # no room left to rest (capacity-limited profiles)
    ADMIN = "admin"  # cancelled by an operator or the risk kill switch


class RejectReason:
    """Why a command was refused. Each code comes with a human-readable text."""

    UNKNOWN_SYMBOL = "unknown_symbol"
    INVALID_SYMBOL = "invalid_symbol"
    INVALID_ORDER_ID = "invalid_order_id"
    DUPLICATE_ORDER_ID = "duplicate_order_id"
    UNKNOWN_ORDER = "unknown_order"
    INVALID_ACCOUNT = "invalid_account"
    INVALID_SIDE = "invalid_side"
    INVALID_TYPE = "invalid_type"
    INVALID_TIF = "invalid_tif"
    INVALID_STP = "invalid_stp"
    INVALID_QTY = "invalid_qty"
    QTY_OFF_LOT = "qty_off_lot"
    INVALID_PRICE = "invalid_price"
    PRICE_OFF_TICK = "price_off_tick"
    PRICE_OUTSIDE_BAND = "price_outside_band"
    PRICE_OUTSIDE_WINDOW = "price_outside_window"
    INVALID_DISPLAY_QTY = "invalid_display_qty"
    INVALID_POST_ONLY = "invalid_post_only"
    NO_CHANGE = "no_change"
    UNSUPPORTED = "unsupported"
    BOOK_NOT_EMPTY = "book_not_empty"
    INVALID_COMMAND = "invalid_command"


# ---------------------------------------------------------------------------------------------
# Commands


class Command:
    """Base class of everything a book accepts."""

    __slots__ = ("symbol",)
    op = ""


class NewOrder(Command):
    """Enter a new order. ``price`` is None for market orders; ``display_qty`` > 0 makes it a
    reserve (iceberg) order showing at most that many shares at a time."""

    __slots__ = ("order_id", "account", "side", "order_type", "tif", "price", "qty", "post_only",
                 "display_qty", "stp")
    op = "new"

    def __init__(self, symbol: str, order_id: int, account: str, side: Side, price: int | None, qty: int,
                 order_type: OrderType = OrderType.LIMIT, tif: TimeInForce | None = None,
                 post_only: bool = False, display_qty: int = 0,
                 stp: SelfTradePrevention = SelfTradePrevention.NONE) -> None:
        self.symbol = symbol
        self.order_id = order_id
        self.account = account
        self.side = side
        self.order_type = order_type
        # The default time in force: GTC for a limit order, IOC for a market order.
        self.tif = tif if tif is not None else (TimeInForce.IOC if order_type is OrderType.MARKET else TimeInForce.GTC)
        self.price = price
        self.qty = qty
        self.post_only = post_only
        self.display_qty = display_qty
        self.stp = stp

    def __repr__(self) -> str:
        return (f"NewOrder({self.symbol} #{self.order_id} {self.account} {self.side!r} {self.order_type!r} "
                f"{self.tif!r} {self.qty}@{self.price} post_only={self.post_only} "
                f"display={self.display_qty} stp={self.stp!r})")


class CancelOrder(Command):
    """Cancel what remains of a resting order."""

    __slots__ = ("order_id", "reason")
    op = "cancel"

    def __init__(self, symbol: str, order_id: int, reason: str = CancelReason.USER) -> None:
        self.symbol = symbol
        self.order_id = order_id
        self.reason = reason

    def __repr__(self) -> str:
        return f"CancelOrder({self.symbol} #{self.order_id})"


class ModifyOrder(Command):
    """Change a resting order's remaining quantity and/or price (None leaves it unchanged).

    A quantity decrease at the same price keeps time priority; a price change or a quantity
    increase loses it, and a repriced order may trade on the way back in.

    ``reduce=True`` makes it a cut: ``qty`` is the number of shares to take off the order's open
    quantity, as the book finds it when the command arrives (fills still on their way to the sender
    included), priority kept; a cut of all that is open or more cancels the order. It carries no
    price. A sender that knows only an older open quantity cannot make the order grow with it, as an
    absolute quantity would when fills overtook the command (OUCH's "intended order size").
    """

    __slots__ = ("order_id", "qty", "price", "reduce")
    op = "modify"

    def __init__(self, symbol: str, order_id: int, qty: int | None = None, price: int | None = None,
                 reduce: bool = False) -> None:
        self.symbol = symbol
        self.order_id = order_id
        self.qty = qty
        self.price = price
        self.reduce = reduce

    def __repr__(self) -> str:
        if self.reduce:
            return f"ModifyOrder({self.symbol} #{self.order_id} reduce by {self.qty})"
        return f"ModifyOrder({self.symbol} #{self.order_id} qty={self.qty} price={self.price})"


class EndOfDay(Command):
    """Expire every DAY order of the book."""

    __slots__ = ()
    op = "end_of_day"

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol

    def __repr__(self) -> str:
        return f"EndOfDay({self.symbol})"


class SetBasePrice(Command):
    """Place the price window of a capacity-limited (hardware-profile) book around ``price``.

    Only an empty book can move its window. Unlimited books accept it too (a ``base_price_set``
    event with its sequence number) and are otherwise unaffected, so a script behaves the same
    on every backend.
    """

    __slots__ = ("price",)
    op = "set_base"

    def __init__(self, symbol: str, price: int) -> None:
        self.symbol = symbol
        self.price = price

    def __repr__(self) -> str:
        return f"SetBasePrice({self.symbol} {self.price})"


# ---------------------------------------------------------------------------------------------
# Events. ``seq`` is the book's event sequence number (1, 2, 3, ... with no gaps); None for the
# rare events no book produced (a command for an unknown symbol).
#
# Events are tuples underneath (a book emits several per command, so they must be cheap to make),
# with named read-only attributes. ``attrs`` lists the tuple's items in order; ``fields`` lists the
# JSON keys after "event" and "seq", with the attribute each one reads.

_tuple_new = tuple.__new__


class Event(tuple):
    """Base class of everything a book reports."""

    __slots__ = ()
    kind = ""
    attrs: tuple[str, ...] = ("seq", "symbol")
    fields: tuple[tuple[str, str], ...] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for index, name in enumerate(cls.attrs):
            setattr(cls, name, property(itemgetter(index), doc=f"item {index} of the event"))
        if not cls.fields:
            cls.fields = tuple((name, name) for name in cls.attrs[1:])

    def __new__(cls, *values: object) -> Event:
        if len(values) != len(cls.attrs):
            raise TypeError(f"{cls.__name__} takes {len(cls.attrs)} values ({', '.join(cls.attrs)})")
        return _tuple_new(cls, values)

    def to_dict(self) -> dict:
        out: dict = {"event": self.kind}
        if self[0] is not None:
            out["seq"] = self[0]
        for key, attr in self.fields:
            value = getattr(self, attr)
            if isinstance(value, IntEnum):
                value = value.name.lower()
            out[key] = value
        return out

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"

    def __reduce__(self) -> tuple:
        return (_rebuild_event, (type(self).kind, tuple(self)))


def _rebuild_event(kind: str, values: tuple) -> Event:
    return _tuple_new(EVENT_TYPES[kind], values)


class Accepted(Event):
    """A new order passed validation and entered the book's sequence."""

    __slots__ = ()
    kind = "accepted"
    attrs = ("seq", "symbol", "order_id", "account", "side", "order_type", "tif", "price", "qty", "display_qty",
             "post_only", "stp")
    fields = (("symbol", "symbol"), ("order_id", "order_id"), ("account", "account"), ("side", "side"),
              ("type", "order_type"), ("tif", "tif"), ("price", "price"), ("qty", "qty"))

    def __new__(cls, seq: int, order: NewOrder) -> Accepted:  # type: ignore[override]
        return _tuple_new(cls, (seq, order.symbol, order.order_id, order.account, order.side, order.order_type,
                                order.tif, order.price, order.qty, order.display_qty, order.post_only,
                                order.stp))

    @property
    def type(self) -> OrderType:
        return self.order_type  # type: ignore[attr-defined]

    def to_dict(self) -> dict:
        out = Event.to_dict(self)
        # Optional attributes appear only when used, so plain scripts give plain output.
        if self[10]:
            out["post_only"] = True
        if self[9]:
            out["display_qty"] = self[9]
        if self[11]:
            out["stp"] = self[11].name.lower()
        return out


class Rejected(Event):
    """A command was refused; nothing changed in the book."""

    __slots__ = ()
    kind = "rejected"
    attrs = ("seq", "symbol", "order_id", "op", "reason", "text")


class Fill(Event):
    """A trade between a resting (maker) order and an incoming (taker) order, at the maker's price."""

    __slots__ = ()
    kind = "fill"
    attrs = ("seq", "symbol", "price", "qty", "maker_order_id", "taker_order_id", "maker_account",
             "taker_account", "taker_side", "match_number")


class Cancelled(Event):
    """An order's remaining quantity (``qty``, hidden reserve included) left without trading."""

    __slots__ = ()
    kind = "cancelled"
    attrs = ("seq", "symbol", "order_id", "account", "qty", "reason")


class Modified(Event):
    """A modify took effect: ``qty`` is the new remaining quantity, ``price`` the (new) price."""

    __slots__ = ()
    kind = "modified"
    attrs = ("seq", "symbol", "order_id", "account", "price", "qty", "kept_priority")


class OrderAdded(Event):
    """Book change: ``qty`` shares of an order became visible at the back of its price level.

    Also reported when a reserve order's displayed part refreshes.
    """

    __slots__ = ()
    kind = "order_added"
    attrs = ("seq", "symbol", "order_id", "side", "price", "qty")


class OrderReduced(Event):
    """Book change: a resting order's visible quantity fell by ``qty`` (to ``remaining``) without
    trading and without losing its place. Fills reduce makers too, but are reported as fills."""

    __slots__ = ()
    kind = "order_reduced"
    attrs = ("seq", "symbol", "order_id", "qty", "remaining")


class OrderRemoved(Event):
    """Book change: a resting order's visible ``qty`` left the book without trading.

    A maker whose last share trades leaves the book with its fill; no removal is reported then.
    """

    __slots__ = ()
    kind = "order_removed"
    attrs = ("seq", "symbol", "order_id", "qty")


class BasePriceSet(Event):
    """A book's price window now centres on ``price``."""

    __slots__ = ()
    kind = "base_price_set"
    attrs = ("seq", "symbol", "price")


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (Accepted, Rejected, Fill, Cancelled, Modified, OrderAdded, OrderReduced, OrderRemoved,
                BasePriceSet)
}
