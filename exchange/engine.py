"""The reference matching engine: one precise definition of what a book does.

Every other matcher in matchwire (the gateware, the simulated card) is tested event for event
against this one. Rules, in one place:

* Price-time priority. A trade prints at the resting (maker) order's price.
* An incoming order first trades against the opposite side while prices cross, best price
  first and oldest first within a price; then its remainder rests (GTC/DAY limit), or is
  cancelled (IOC and market orders: reason ``ioc``). A FOK order trades completely or not at
  all (reason ``fok``). A post-only order that would trade on entry is cancelled (``post_only``).
* Reserve (iceberg) orders show ``display_qty`` at a time; when the shown part is used up it
  refreshes from the reserve at the back of its price level, and may trade again within the
  same sweep once the orders ahead of it are done.
* Modify: a quantity decrease at the same price keeps time priority; a price change or a
  quantity increase loses it (the order leaves and re-enters, and may trade on re-entry).
* Self-trade prevention is the incoming order's choice: ``cancel_newest`` cancels the incoming
  remainder, ``cancel_oldest`` cancels the resting order and goes on, ``cancel_both`` cancels both.
* The same commands give the same events, byte for byte. The engine never raises on input:
  a bad command gets a ``rejected`` event with a reason code and a text.
"""

from __future__ import annotations

from bisect import insort
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from exchange.instruments import Instrument, valid_symbol
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
from exchange.recent_ids import RecentOrderIds, ids_of_state

BUY = Side.BUY
SELL = Side.SELL
_event = tuple.__new__  # builds an event from its items without a Python-level call
LIMIT = OrderType.LIMIT
GTC = TimeInForce.GTC
IOC = TimeInForce.IOC
FOK = TimeInForce.FOK
STP_NONE = SelfTradePrevention.NONE
STP_NEWEST = SelfTradePrevention.CANCEL_NEWEST
STP_OLDEST = SelfTradePrevention.CANCEL_OLDEST
MAX_ACCOUNT_LEN = 8  # binary formats carry the account as 8 ASCII bytes


@dataclass(frozen=True, slots=True)
class BookProfile:
    """Capacity limits and supported features of a book.

    The default profile is the unlimited software engine. A hardware profile mirrors what the
    gateware matcher can hold and do, so that both produce identical events for any command
    stream; whatever a profile does not support is rejected with reason ``unsupported``.

    ``window_ticks`` limits prices to ``2 * window_ticks`` tick positions: from
    ``base - window_ticks * tick`` up to ``base + (window_ticks - 1) * tick``, where the base is
    set by :class:`~exchange.orders.SetBasePrice` on an empty book.
    """

    name: str = "software"
    max_orders: int | None = None
    window_ticks: int | None = None
    market_orders: bool = True
    reserve_orders: bool = True
    post_only: bool = True
    self_trade_prevention: bool = True
    day_orders: bool = True
    fok_orders: bool = True
    max_qty: int | None = None  # the widest quantity an order may have (a hardware book's quantity field)

    def __post_init__(self) -> None:
        if self.max_orders is not None and (type(self.max_orders) is not int or self.max_orders <= 0):
            raise ValueError(f"max_orders must be a positive integer, got {self.max_orders!r}")
        if self.max_qty is not None and (type(self.max_qty) is not int or self.max_qty <= 0):
            raise ValueError(f"max_qty must be a positive integer, got {self.max_qty!r}")
        if self.window_ticks is not None and (type(self.window_ticks) is not int or self.window_ticks <= 0):
            raise ValueError(f"window_ticks must be a positive integer, got {self.window_ticks!r}")


SOFTWARE_PROFILE = BookProfile()


class RestingOrder:
    """An order in the book. ``displayed`` is its visible part, ``leaves`` all that remains."""

    __slots__ = ("order_id", "account", "side", "price", "leaves", "displayed", "display_qty", "tif", "stp",
                 "post_only")

    def __init__(self, order_id: int, account: str, side: Side, price: int, leaves: int, displayed: int,
                 display_qty: int, tif: TimeInForce, stp: SelfTradePrevention, post_only: bool = False) -> None:
        self.order_id = order_id
        self.account = account
        self.side = side
        self.price = price
        self.leaves = leaves
        self.displayed = displayed
        self.display_qty = display_qty
        self.tif = tif
        self.stp = stp
        self.post_only = post_only

    def copy(self) -> RestingOrder:
        return RestingOrder(self.order_id, self.account, self.side, self.price, self.leaves, self.displayed,
                            self.display_qty, self.tif, self.stp, self.post_only)


class PriceLevel:
    """The orders resting at one price, oldest first; ``displayed`` is their visible total."""

    __slots__ = ("price", "orders", "displayed")

    def __init__(self, price: int) -> None:
        self.price = price
        self.orders: OrderedDict[int, RestingOrder] = OrderedDict()
        self.displayed = 0


class BookSide:
    """One side of a book: price levels plus a sorted key list whose last entry is the best price.

    Keys are the prices for bids and the negated prices for asks, so the best level is always
    ``keys[-1]`` and leaves by ``pop()``.
    """

    __slots__ = ("side", "levels", "keys", "sign")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.levels: dict[int, PriceLevel] = {}
        self.keys: list[int] = []
        self.sign = 1 if side == BUY else -1

    def best_price(self) -> int | None:
        return self.keys[-1] * self.sign if self.keys else None

    def level_for(self, price: int) -> PriceLevel:
        level = self.levels.get(price)
        if level is None:
            level = PriceLevel(price)
            self.levels[price] = level
            insort(self.keys, price * self.sign)
        return level

    def drop_level(self, price: int) -> None:
        del self.levels[price]
        key = price * self.sign
        keys = self.keys
        if keys[-1] == key:
            keys.pop()
        else:
            keys.remove(key)

    def prices_best_first(self) -> list[int]:
        sign = self.sign
        return [key * sign for key in reversed(self.keys)]


class OrderBook:
    """The reference engine for one instrument.

    ``process(command)`` returns the list of events the command caused, in order, each with
    the next sequence number. Queries: :meth:`bbo`, :meth:`depth`, :meth:`orders_at`.
    """

    def __init__(self, instrument: Instrument, profile: BookProfile = SOFTWARE_PROFILE) -> None:
        self.instrument = instrument
        self.symbol = instrument.symbol
        self.profile = profile
        self.bids = BookSide(BUY)
        self.asks = BookSide(SELL)
        self.orders: dict[int, RestingOrder] = {}
        # Every order id the book has seen (the duplicate rule), unless remember_ids gave it a window.
        self.seen_ids: set[int] | RecentOrderIds = set()
        self.seq = 0
        self.match_number = 0
        self.base_price: int | None = None
        self._tick = instrument.tick_size
        self._lot = instrument.lot_size
        self._band = instrument.band
        # Fast paths apply only where no band, window or feature limit needs checking.
        self._plain = instrument.band is None and profile is SOFTWARE_PROFILE
        self._good_accounts: set[str] = set()
        self._stopped = False

    # -- commands -------------------------------------------------------------------------

    def process(self, command: Command) -> list[Event]:
        """Apply one command; never raises on bad input."""
        out: list[Event] = []
        kind = type(command)
        if kind is NewOrder:
            self._new(command, out)  # type: ignore[arg-type]
        elif kind is ModifyOrder:
            self._modify(command, out)  # type: ignore[arg-type]
        elif kind is CancelOrder:
            self._cancel(command, out)  # type: ignore[arg-type]
        elif kind is EndOfDay:
            self._end_of_day(out)
        elif kind is SetBasePrice:
            self._set_base(command, out)  # type: ignore[arg-type]
        else:
            self._reject(out, getattr(command, "order_id", None), getattr(command, "op", "?"),
                         RejectReason.INVALID_COMMAND, f"not a command: {type(command).__name__}")
        return out

    def _reject(self, out: list[Event], order_id: object, op: str, reason: str, text: str) -> None:
        self.seq += 1
        out.append(_event(Rejected, (self.seq, self.symbol, order_id, op, reason, text)))

    def _check_price(self, price: object, out: list[Event], order_id: object, op: str) -> bool:
        if type(price) is not int or price <= 0:
            self._reject(out, order_id, op, RejectReason.INVALID_PRICE,
                         f"price must be a positive integer, got {price!r}")
            return False
        if price % self._tick:
            self._reject(out, order_id, op, RejectReason.PRICE_OFF_TICK,
                         f"price {price} is not a multiple of tick size {self._tick}")
            return False
        band = self._band
        if band is not None and not band[0] <= price <= band[1]:
            self._reject(out, order_id, op, RejectReason.PRICE_OUTSIDE_BAND,
                         f"price {price} outside band {band[0]}..{band[1]}")
            return False
        window = self.profile.window_ticks
        if window is not None:
            base = self.base_price
            if base is None:
                self._reject(out, order_id, op, RejectReason.PRICE_OUTSIDE_WINDOW,
                             "no price window set: send set_base first")
                return False
            offset = (price - base) // self._tick
            if not -window <= offset < window:
                self._reject(out, order_id, op, RejectReason.PRICE_OUTSIDE_WINDOW,
                             f"price {price} outside window {base - window * self._tick}.."
                             f"{base + (window - 1) * self._tick}")
                return False
        return True

    def _check_qty(self, qty: object, out: list[Event], order_id: object, op: str) -> bool:
        if type(qty) is not int or qty <= 0:
            self._reject(out, order_id, op, RejectReason.INVALID_QTY,
                         f"quantity must be a positive integer, got {qty!r}")
            return False
        if qty % self._lot:
            self._reject(out, order_id, op, RejectReason.QTY_OFF_LOT,
                         f"quantity {qty} is not a multiple of lot size {self._lot}")
            return False
        return True

    def _validate_new(self, cmd: NewOrder, out: list[Event]) -> bool:
        oid = cmd.order_id
        reject = self._reject
        if type(oid) is not int or oid <= 0:
            reject(out, oid, "new", RejectReason.INVALID_ORDER_ID, f"order_id must be a positive integer, got {oid!r}")
            return False
        if oid in self.seen_ids or oid in self.orders:  # a window (remember_ids) may have let go of a resting order
            reject(out, oid, "new", RejectReason.DUPLICATE_ORDER_ID, f"order_id {oid} was used before")
            return False
        account = cmd.account
        if (not isinstance(account, str) or not 0 < len(account) <= MAX_ACCOUNT_LEN or not account.isascii()
                or not account.isprintable() or " " in account):
            reject(out, oid, "new", RejectReason.INVALID_ACCOUNT,
                   f"account must be 1-{MAX_ACCOUNT_LEN} printable ASCII characters, got {account!r}")
            return False
        if cmd.side is not BUY and cmd.side is not SELL:
            reject(out, oid, "new", RejectReason.INVALID_SIDE, f"side must be buy or sell, got {cmd.side!r}")
            return False
        order_type, tif = cmd.order_type, cmd.tif
        if not isinstance(order_type, OrderType):
            reject(out, oid, "new", RejectReason.INVALID_TYPE, f"type must be limit or market, got {order_type!r}")
            return False
        if not isinstance(tif, TimeInForce):
            reject(out, oid, "new", RejectReason.INVALID_TIF, f"tif must be gtc, day, ioc or fok, got {tif!r}")
            return False
        if not isinstance(cmd.stp, SelfTradePrevention):
            reject(out, oid, "new", RejectReason.INVALID_STP,
                   f"stp must be none, cancel_newest, cancel_oldest or cancel_both, got {cmd.stp!r}")
            return False
        if not self._check_qty(cmd.qty, out, oid, "new"):
            return False
        if order_type is OrderType.MARKET:
            if cmd.price is not None:
                reject(out, oid, "new", RejectReason.INVALID_PRICE, "a market order carries no price")
                return False
            if tif is TimeInForce.GTC or tif is TimeInForce.DAY:
                reject(out, oid, "new", RejectReason.INVALID_TIF, "a market order must be ioc or fok")
                return False
        elif not self._check_price(cmd.price, out, oid, "new"):
            return False
        display = cmd.display_qty
        if display:
            if type(display) is not int or display < 0 or display > cmd.qty or display % self._lot:
                reject(out, oid, "new", RejectReason.INVALID_DISPLAY_QTY,
                       f"display_qty must be a positive multiple of lot size {self._lot} not above qty, "
                       f"got {display!r}")
                return False
            if order_type is OrderType.MARKET or tif is TimeInForce.IOC or tif is TimeInForce.FOK:
                reject(out, oid, "new", RejectReason.INVALID_DISPLAY_QTY,
                       "only a resting (gtc or day) limit order can have a display quantity")
                return False
        if type(cmd.post_only) is not bool:
            reject(out, oid, "new", RejectReason.INVALID_POST_ONLY,
                   f"post_only must be true or false, got {cmd.post_only!r}")
            return False
        if cmd.post_only and (order_type is OrderType.MARKET or tif is TimeInForce.IOC or tif is TimeInForce.FOK):
            reject(out, oid, "new", RejectReason.INVALID_POST_ONLY,
                   "post_only needs a resting (gtc or day) limit order")
            return False
        profile = self.profile
        if profile is not SOFTWARE_PROFILE:
            missing = None
            if order_type is OrderType.MARKET and not profile.market_orders:
                missing = "market orders"
            elif display and not profile.reserve_orders:
                # Any display quantity: one equal to qty would become a reserve after a quantity increase.
                missing = "reserve orders"
            elif cmd.post_only and not profile.post_only:
                missing = "post-only orders"
            elif cmd.stp and not profile.self_trade_prevention:
                missing = "self-trade prevention"
            elif tif is TimeInForce.DAY and not profile.day_orders:
                missing = "day orders"
            elif tif is TimeInForce.FOK and not profile.fok_orders:
                missing = "fill-or-kill orders"
            elif profile.max_qty is not None and cmd.qty > profile.max_qty:
                missing = f"quantities above {profile.max_qty}"
            if missing:
                reject(out, oid, "new", RejectReason.UNSUPPORTED, f"the {profile.name} book does not support {missing}")
                return False
        return True

    def _new(self, cmd: NewOrder, out: list[Event]) -> None:
        oid, qty, price, side, tif, account = cmd.order_id, cmd.qty, cmd.price, cmd.side, cmd.tif, cmd.account
        # A plain valid limit order skips the full validation (which would accept it too).
        if not (self._plain and type(oid) is int and oid > 0 and oid not in self.seen_ids and oid not in self.orders
                and type(account) is str and account in self._good_accounts and (side is BUY or side is SELL)
                and cmd.order_type is LIMIT and type(qty) is int and qty > 0 and not qty % self._lot
                and type(price) is int and price > 0 and not price % self._tick
                and not cmd.display_qty and not cmd.post_only and (tif is GTC or tif is IOC)
                and cmd.stp.__class__ is SelfTradePrevention):
            if not self._validate_new(cmd, out):
                return
            self._good_accounts.add(account)
        self.seen_ids.add(oid)
        seq = self.seq + 1
        self.seq = seq
        out.append(_event(Accepted, (seq, cmd.symbol, oid, account, side, cmd.order_type, tif, price, qty,
                                     cmd.display_qty, cmd.post_only, cmd.stp)))
        opposite = self.asks if side is BUY else self.bids
        keys = opposite.keys
        crosses = bool(keys) and (price is None or (price >= -keys[-1] if side is BUY else price <= keys[-1]))
        if not crosses:
            remaining = qty
            if tif is FOK:
                self.seq += 1
                out.append(_event(Cancelled, (self.seq, self.symbol, oid, account, qty, CancelReason.FOK)))
                return
        else:
            if cmd.post_only:
                self.seq += 1
                out.append(_event(Cancelled, (self.seq, self.symbol, oid, account, qty, CancelReason.POST_ONLY)))
                return
            if tif is FOK and self._fillable(oid, account, side, price, qty, cmd.stp, opposite) < qty:
                self.seq += 1
                out.append(_event(Cancelled, (self.seq, self.symbol, oid, account, qty, CancelReason.FOK)))
                return
            remaining = self._match(oid, account, side, price, qty, cmd.stp, opposite, out)
            if not remaining:
                return
        if self._stopped or tif is IOC or tif is FOK or price is None:
            reason = CancelReason.STP if self._stopped else CancelReason.IOC
            self._stopped = False
            self.seq += 1
            out.append(_event(Cancelled, (self.seq, self.symbol, oid, account, remaining, reason)))
            return
        display = cmd.display_qty
        shown = display if display and display < remaining else remaining
        order = RestingOrder(oid, account, side, price, remaining, shown, display, tif, cmd.stp, cmd.post_only)
        if not self._plain:
            self._rest(order, out)
            return
        # _rest, inlined for the common case of an unlimited book.
        own = self.bids if side is BUY else self.asks
        level = own.levels.get(price)
        if level is None:
            level = own.level_for(price)
        level.orders[oid] = order
        level.displayed += shown
        self.orders[oid] = order
        seq = self.seq + 1
        self.seq = seq
        out.append(_event(OrderAdded, (seq, self.symbol, oid, side, price, shown)))

    def _rest(self, order: RestingOrder, out: list[Event]) -> None:
        max_orders = self.profile.max_orders
        if max_orders is not None and len(self.orders) >= max_orders:
            self.seq += 1
            out.append(_event(Cancelled, (self.seq, self.symbol, order.order_id, order.account, order.leaves,
                                 CancelReason.BOOK_FULL)))
            return
        price = order.price
        side = self.bids if order.side is BUY else self.asks
        level = side.levels.get(price)
        if level is None:
            level = side.level_for(price)
        level.orders[order.order_id] = order
        level.displayed += order.displayed
        self.orders[order.order_id] = order
        self.seq += 1
        out.append(_event(OrderAdded, (self.seq, self.symbol, order.order_id, order.side, price, order.displayed)))

    def _match(self, taker_id: int, taker_account: str, taker_side: Side, limit: int | None, remaining: int,
               stp: SelfTradePrevention, opposite: BookSide, out: list[Event]) -> int:
        """Trade an incoming order against ``opposite`` while prices cross; returns what remains.

        Sets ``self._stopped`` when self-trade prevention ended the matching.
        """
        keys = opposite.keys
        levels = opposite.levels
        sign = opposite.sign
        symbol = self.symbol
        book_orders = self.orders
        append = out.append
        stopped = False
        while remaining and keys:
            price = keys[-1] * sign
            if limit is not None and (price > limit if taker_side is BUY else price < limit):
                break
            level = levels[price]
            orders = level.orders
            while remaining and orders:
                maker = next(iter(orders.values()))
                if stp and maker.account == taker_account:
                    if stp is STP_NEWEST:
                        stopped = True
                        break
                    # cancel_oldest and cancel_both both remove the resting order; an emptied
                    # level is dropped below, by this loop.
                    self._remove_resting(maker, level, CancelReason.STP, out, drop_empty=False)
                    if stp is STP_OLDEST:
                        continue
                    stopped = True
                    break
                displayed = maker.displayed
                qty = displayed if displayed < remaining else remaining
                self.match_number += 1
                self.seq += 1
                append(_event(Fill, (self.seq, symbol, price, qty, maker.order_id, taker_id, maker.account,
                            taker_account, taker_side, self.match_number)))
                remaining -= qty
                displayed -= qty
                maker.displayed = displayed
                maker.leaves -= qty
                level.displayed -= qty
                if not displayed:
                    orders.popitem(last=False)
                    if maker.leaves:
                        # Reserve refresh: a new visible slice at the back of the level.
                        shown = maker.display_qty if maker.display_qty < maker.leaves else maker.leaves
                        maker.displayed = shown
                        level.displayed += shown
                        orders[maker.order_id] = maker
                        self.seq += 1
                        append(_event(OrderAdded, (self.seq, symbol, maker.order_id, maker.side, price, shown)))
                    else:
                        del book_orders[maker.order_id]
            if not orders:
                opposite.drop_level(price)
            if stopped:
                break
        self._stopped = stopped
        return remaining

    def _fillable(self, taker_id: int, account: str, side: Side, limit: int | None, qty: int,
                  stp: SelfTradePrevention, opposite: BookSide) -> int:
        """How much a FOK order would trade, found by matching a copy of the crossing levels."""
        scratch = OrderBook(self.instrument, SOFTWARE_PROFILE)
        scratch_side = scratch.asks if side is BUY else scratch.bids
        for price in opposite.prices_best_first():
            if limit is not None and (price > limit if side is BUY else price < limit):
                break
            level = scratch_side.level_for(price)
            for order in opposite.levels[price].orders.values():
                clone = order.copy()
                level.orders[clone.order_id] = clone
                level.displayed += clone.displayed
                scratch.orders[clone.order_id] = clone
        return qty - scratch._match(taker_id, account, side, limit, qty, stp, scratch_side, [])

    def _remove_resting(self, order: RestingOrder, level: PriceLevel, reason: str, out: list[Event],
                        report_cancel: bool = True, drop_empty: bool = True) -> None:
        """Take a resting order out of the book (not by trading)."""
        del level.orders[order.order_id]
        level.displayed -= order.displayed
        del self.orders[order.order_id]
        if report_cancel:
            self.seq += 1
            out.append(_event(Cancelled, (self.seq, self.symbol, order.order_id, order.account, order.leaves, reason)))
        self.seq += 1
        out.append(_event(OrderRemoved, (self.seq, self.symbol, order.order_id, order.displayed)))
        if drop_empty and not level.orders:
            (self.bids if order.side is BUY else self.asks).drop_level(level.price)

    def _cancel(self, cmd: CancelOrder, out: list[Event]) -> None:
        order = self.orders.get(cmd.order_id) if type(cmd.order_id) is int else None
        if order is None:
            self._reject(out, cmd.order_id, "cancel", RejectReason.UNKNOWN_ORDER,
                         f"no resting order {cmd.order_id!r}")
            return
        self._cancel_resting(order, cmd.reason if isinstance(cmd.reason, str) and cmd.reason else CancelReason.USER,
                             out)

    def _cancel_resting(self, order: RestingOrder, reason: str, out: list[Event]) -> None:
        """Cancel what remains of a resting order (a user's cancel, a cut of all of it, a DAY order's expiry)."""
        side = self.bids if order.side is BUY else self.asks
        self._remove_resting(order, side.levels[order.price], reason, out)

    def _modify(self, cmd: ModifyOrder, out: list[Event]) -> None:
        oid = cmd.order_id
        order = self.orders.get(oid) if type(oid) is int else None
        if order is None:
            self._reject(out, oid, "modify", RejectReason.UNKNOWN_ORDER, f"no resting order {oid!r}")
            return
        new_qty, new_price = cmd.qty, cmd.price
        old_price, leaves = order.price, order.leaves
        if cmd.reduce is True:
            if not self._check_qty(new_qty, out, oid, "modify"):
                return
            if new_price is not None:
                self._reject(out, oid, "modify", RejectReason.INVALID_PRICE, "a reduce carries no price")
                return
            if new_qty >= leaves:  # type: ignore[operator]
                self._cancel_resting(order, CancelReason.USER, out)
                return
            new_qty = leaves - new_qty  # type: ignore[operator]
        if new_qty is None:
            new_qty = leaves
        elif not (type(new_qty) is int and new_qty > 0 and not new_qty % self._lot):
            self._check_qty(new_qty, out, oid, "modify")
            return
        if new_price is None:
            new_price = old_price
        elif not (self._plain and type(new_price) is int and new_price > 0 and not new_price % self._tick):
            if not self._check_price(new_price, out, oid, "modify"):
                return
        max_qty = self.profile.max_qty
        if max_qty is not None and new_qty > max_qty:
            self._reject(out, oid, "modify", RejectReason.UNSUPPORTED,
                         f"the {self.profile.name} book does not support quantities above {max_qty}")
            return
        if new_qty == leaves and new_price == old_price:
            self._reject(out, oid, "modify", RejectReason.NO_CHANGE, "modify changes neither price nor quantity")
            return
        side = order.side
        own = self.bids if side is BUY else self.asks
        level = own.levels[old_price]
        symbol = self.symbol
        if new_price == old_price and new_qty < leaves:
            # Quantity down in place: the reserve shrinks first, then the visible part.
            order.leaves = new_qty
            self.seq += 1
            out.append(_event(Modified, (self.seq, symbol, oid, order.account, new_price, new_qty, True)))
            if order.displayed > new_qty:
                cut = order.displayed - new_qty
                order.displayed = new_qty
                level.displayed -= cut
                self.seq += 1
                out.append(_event(OrderReduced, (self.seq, symbol, oid, cut, new_qty)))
            return
        # Price change or quantity up: leave the level and come back as a new arrival.
        seq = self.seq + 1
        out.append(_event(Modified, (seq, symbol, oid, order.account, new_price, new_qty, False)))
        displayed = order.displayed
        del level.orders[oid]
        level.displayed -= displayed
        seq += 1
        out.append(_event(OrderRemoved, (seq, symbol, oid, displayed)))
        self.seq = seq
        if not level.orders:
            own.drop_level(old_price)
        opposite = self.asks if side is BUY else self.bids
        keys = opposite.keys
        remaining = new_qty
        if keys and (new_price >= -keys[-1] if side is BUY else new_price <= keys[-1]):
            del self.orders[oid]
            if order.post_only:
                # A post-only order stays post-only: repriced through the spread, it is cancelled.
                self.seq += 1
                out.append(_event(Cancelled, (self.seq, symbol, oid, order.account, new_qty, CancelReason.POST_ONLY)))
                return
            remaining = self._match(oid, order.account, side, new_price, new_qty, order.stp, opposite, out)
            if not remaining:
                return
            if self._stopped:
                self._stopped = False
                self.seq += 1
                out.append(_event(Cancelled, (self.seq, symbol, oid, order.account, remaining, CancelReason.STP)))
                return
            # The order left the book while it traded; it rests again like any new arrival.
            order.leaves = remaining
            order.price = new_price
            display = order.display_qty
            order.displayed = display if display and display < remaining else remaining
            self._rest(order, out)
            return
        # No cross: the same order object moves to the back of its new level.
        order.price = new_price
        order.leaves = remaining
        display = order.display_qty
        order.displayed = shown = display if display and display < remaining else remaining
        level = own.levels.get(new_price)
        if level is None:
            level = own.level_for(new_price)
        level.orders[oid] = order
        level.displayed += shown
        self.seq += 1
        out.append(_event(OrderAdded, (self.seq, symbol, oid, side, new_price, shown)))

    def _end_of_day(self, out: list[Event]) -> None:
        expiring = [order for order in self.orders.values() if order.tif is TimeInForce.DAY]
        # Expire in order-id order so the result does not depend on book layout.
        for order in sorted(expiring, key=lambda o: o.order_id):
            self._cancel_resting(order, CancelReason.EXPIRED, out)

    def _set_base(self, cmd: SetBasePrice, out: list[Event]) -> None:
        price = cmd.price
        if type(price) is not int or price <= 0 or price % self._tick:
            self._reject(out, None, "set_base", RejectReason.INVALID_PRICE,
                         f"base price must be a positive multiple of tick size {self._tick}, got {price!r}")
            return
        if self.orders and self.profile.window_ticks is not None:
            self._reject(out, None, "set_base", RejectReason.BOOK_NOT_EMPTY,
                         "the price window can move only while the book is empty")
            return
        self.base_price = price
        self.seq += 1
        out.append(_event(BasePriceSet, (self.seq, self.symbol, price)))

    # -- queries ---------------------------------------------------------------------------

    def bbo(self) -> tuple[int | None, int, int | None, int]:
        """(best bid price, its visible qty, best ask price, its visible qty); None price when empty."""
        bid = self.bids.best_price()
        ask = self.asks.best_price()
        return (bid, self.bids.levels[bid].displayed if bid is not None else 0,
                ask, self.asks.levels[ask].displayed if ask is not None else 0)

    def depth(self, levels: int | None = None) -> dict[str, list[tuple[int, int, int]]]:
        """Visible depth by price level, best first: {"bids"|"asks": [(price, qty, order count)]}."""
        result = {}
        for name, side in (("bids", self.bids), ("asks", self.asks)):
            prices = side.prices_best_first()
            if levels is not None:
                prices = prices[:levels]
            result[name] = [(p, side.levels[p].displayed, len(side.levels[p].orders)) for p in prices]
        return result

    def orders_at(self, side: Side, price: int) -> list[dict]:
        """The orders resting at one price, in priority order (L3)."""
        book_side = self.bids if side == BUY else self.asks
        level = book_side.levels.get(price)
        if level is None:
            return []
        return [{"order_id": o.order_id, "account": o.account, "displayed": o.displayed, "leaves": o.leaves}
                for o in level.orders.values()]

    def remember_ids(self, window: RecentOrderIds) -> None:
        """Remember order ids for the duplicate rule in ``window`` (the newest per origin) instead of all of them.

        Alone the engine rejects any id it has ever seen. In a cluster a copy of an order (sent again by a gateway
        that had no answer) is always among its gateway's newest, so the books keep a window per gateway and do not
        grow with the day (exchange/recent_ids.py). Set on a fresh book, before :meth:`restore`."""
        if self.seq or self.seen_ids:
            raise ValueError("remember_ids needs a fresh book")
        self.seen_ids = window

    def snapshot(self) -> dict:
        """The whole book state as plain data (JSON-able): restoring it gives identical behaviour."""
        orders = []
        for side in (self.bids, self.asks):
            for price in side.prices_best_first():
                for o in side.levels[price].orders.values():  # priority order within the level
                    orders.append([o.order_id, o.account, int(o.side), o.price, o.leaves, o.displayed, o.display_qty,
                                   int(o.tif), int(o.stp), o.post_only])
        return {"symbol": self.symbol, "seq": self.seq, "match_number": self.match_number,
                "base_price": self.base_price, "orders": orders,
                "seen_ids": sorted(seen) if isinstance(seen := self.seen_ids, set) else seen.save_state()}

    def restore(self, state: dict) -> None:
        """Load a :meth:`snapshot` into this (empty) book."""
        if state.get("symbol") != self.symbol:
            raise ValueError(f"snapshot of {state.get('symbol')!r} cannot restore book {self.symbol}")
        if self.orders or self.seq:
            raise ValueError("restore needs an empty, fresh book")
        self.seq = state["seq"]
        self.match_number = state["match_number"]
        self.base_price = state["base_price"]
        if isinstance(self.seen_ids, set):
            self.seen_ids = set(ids_of_state(state["seen_ids"]))
        else:
            self.seen_ids.load_state(state["seen_ids"])
        for order_id, account, side, price, leaves, displayed, display_qty, tif, stp, post_only in state["orders"]:
            order = RestingOrder(order_id, account, Side(side), price, leaves, displayed, display_qty,
                                 TimeInForce(tif), SelfTradePrevention(stp), post_only)
            book_side = self.bids if order.side is BUY else self.asks
            level = book_side.level_for(price)
            level.orders[order_id] = order
            level.displayed += displayed
            self.orders[order_id] = order

    def resting_qty(self) -> int:
        """All remaining quantity in the book, reserves included."""
        return sum(order.leaves for order in self.orders.values())


class Book(Protocol):
    """What a book actor needs of a book, whatever matches behind it (Python, a simulated or a
    real card): commands in, events out, and the market-data queries."""

    symbol: str

    def process(self, command: Command) -> list[Event]: ...

    def bbo(self) -> tuple[int | None, int, int | None, int]: ...

    def depth(self, levels: int | None = None) -> dict[str, list[tuple[int, int, int]]]: ...

    def remember_ids(self, window: RecentOrderIds) -> None: ...


BookFactory = Callable[[Instrument], Book]


class Exchange:
    """A set of books, one per symbol, with commands routed by symbol.

    With ``instruments`` given, other symbols are rejected (``unknown_symbol``); without, a book
    is created on first use with tick size 1, lot size 1 and no band. ``book_factory`` chooses
    the matcher behind each book (default: the reference engine).
    """

    def __init__(self, instruments: dict[str, Instrument] | None = None,
                 profile: BookProfile = SOFTWARE_PROFILE, book_factory: BookFactory | None = None) -> None:
        self.instruments = instruments
        self.profile = profile
        self.book_factory: BookFactory = book_factory or (lambda instrument: OrderBook(instrument, profile))
        self.books: dict[str, Book] = {}
        if instruments:
            for symbol, instrument in instruments.items():
                self.books[symbol] = self.book_factory(instrument)

    def book(self, symbol: str) -> Book | None:
        """The book for ``symbol``, created on first use when no instruments are configured."""
        book = self.books.get(symbol)
        if book is None and self.instruments is None and valid_symbol(symbol):
            book = self.book_factory(Instrument(symbol))
            self.books[symbol] = book
        return book

    def process(self, command: Command) -> list[Event]:
        """Route one command to its book; never raises on bad input."""
        symbol = getattr(command, "symbol", None)
        try:
            book = self.books.get(symbol)  # type: ignore[arg-type]
        except TypeError:  # an unhashable symbol
            book = None
        if book is None:
            book = self.book(symbol) if isinstance(symbol, str) else None
        if book is None:
            op = getattr(command, "op", "?")
            order_id = getattr(command, "order_id", None)
            if not valid_symbol(symbol):
                return [_event(Rejected, (None, symbol, order_id, op, RejectReason.INVALID_SYMBOL,
                                 f"symbol must be 1-8 printable ASCII characters, got {symbol!r}"))]
            return [_event(Rejected, (None, symbol, order_id, op, RejectReason.UNKNOWN_SYMBOL,
                                      f"unknown symbol {symbol}"))]
        return book.process(command)
