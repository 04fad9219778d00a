"""Host side of the gateware matcher: engine commands in, matcher records out, and back.

:class:`MatcherDriver` makes one gateware matcher (one instrument) behave exactly like the
reference engine's ``OrderBook`` with the hardware profile:

* It validates each command as the engine does, in the engine's order, with the engine's
  reject texts. The one check the gateware makes itself is the price window: an order outside
  it is still sent (as a plain limit order), and the gateware's reject is translated; the driver
  predicts the outcome and raises :class:`MatcherDriverError` if the gateware disagrees.
* What the gateware lacks (reserve orders, self-trade prevention, quantities wider than the
  gateware's) is rejected with reason ``unsupported``; DAY orders rest as GTC and the driver
  expires them at end of day by cancelling them in order-id order, as the engine does.
* It maps order ids to gateware handles (the gateware allocates them and reports them when an
  order rests), keeps each resting order's account, side, price and quantity, and rebuilds the
  engine's events from the event records: sequence numbers, match numbers, accounts, symbols,
  absolute prices (records carry tick offsets from the window base), and the events the
  gateware folds into one record (``accepted`` before an order's first record, ``modified``
  before a modify's, ``order_removed`` after a cancel's ``cancelled``).

Transport-agnostic: :meth:`MatcherDriver.steps` is a generator that yields command records and
receives each one's burst of event records (up to and including the one flagged LAST), so a
synchronous pump (:meth:`MatcherDriver.process`) and a cocotb coroutine can both drive it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass

from exchange.engine import MAX_ACCOUNT_LEN, BookProfile
from exchange.instruments import Instrument
from exchange.matcher_format import (
    FLAG_HAS_PRICE,
    FLAG_HAS_QTY,
    FLAG_MARKET,
    FLAG_POST_ONLY,
    CommandRecord,
    EventRecord,
    MatcherConfig,
    MatcherOp,
    MatcherReason,
    RecordKind,
    clamp_offset,
)
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
from exchange.recent_ids import RecentOrderIds

__all__ = ["MatcherDriver", "MatcherDriverError", "RestingOrder", "Steps"]

_event = tuple.__new__  # events are tuples: build them exactly as the engine does
BUY = Side.BUY
SELL = Side.SELL

#: What :meth:`MatcherDriver.steps` is: yields command records, is sent event-record bursts,
#: returns the engine events.
Steps = Generator[CommandRecord, list[EventRecord], list[Event]]

_CANCEL_REASONS = {
    MatcherReason.IOC: CancelReason.IOC,
    MatcherReason.FOK: CancelReason.FOK,
    MatcherReason.POST_ONLY: CancelReason.POST_ONLY,
    MatcherReason.BOOK_FULL: CancelReason.BOOK_FULL,
}


class MatcherDriverError(RuntimeError):
    """The gateware answered something the protocol (or the host's view of the book) rules out."""


@dataclass(slots=True)
class RestingOrder:
    """The host's view of an order resting in the gateware."""

    order_id: int
    account: str
    side: Side
    price: int
    leaves: int
    tif: TimeInForce
    handle: int


_WINDOW = "window"  # validation outcome: leave the price-window verdict to the gateware


class MatcherDriver:
    """Drives one gateware matcher as the reference engine's book for ``instrument``.

    ``profile`` defaults to ``config.profile()``; it may restrict features further (they are
    then rejected ``unsupported`` here) but cannot add what the gateware lacks.

    ``auto_window``: when a limit order arrives and no window was ever set, place the window
    around its price first, silently (no event, no sequence number). This is how a script
    written for the unlimited software book runs unchanged on the gateware; see docs/matcher.md.
    """

    def __init__(self, instrument: Instrument, config: MatcherConfig | None = None,
                 profile: BookProfile | None = None, *, auto_window: bool = False) -> None:
        self.config = config or MatcherConfig()
        self.profile = profile or self.config.profile()
        if self.profile.reserve_orders or self.profile.self_trade_prevention:
            raise ValueError("the gateware matcher has no reserve orders or self-trade prevention")
        if (self.profile.max_orders, self.profile.window_ticks) != (self.config.max_orders, self.config.window_ticks):
            raise ValueError("the profile's max_orders and window_ticks must be the gateware's")
        self.instrument = instrument
        self.auto_window = auto_window
        self.symbol = instrument.symbol
        self._tick = instrument.tick_size
        self._lot = instrument.lot_size
        self._band = instrument.band
        self._window: RecentOrderIds | None = None  # what remember_ids set: a reset starts an empty one like it
        self._reset_state()

    def _reset_state(self) -> None:
        self.seq = 0
        self.match_number = 0
        self.base_price: int | None = None
        window = self._window
        self.seen_ids: set[int] | RecentOrderIds = \
            set() if window is None else RecentOrderIds(window.limit, window.origin_of)
        self.by_id: dict[int, RestingOrder] = {}
        self.by_handle: dict[int, RestingOrder] = {}
        # Priority order per (side, price): the L3 view, kept from the records.
        self.levels: dict[tuple[Side, int], OrderedDict[int, RestingOrder]] = {}
        self.records_sent = 0

    def remember_ids(self, window: RecentOrderIds) -> None:
        """Remember order ids for the duplicate rule in ``window`` (the newest per gateway) instead of all of them,
        as :meth:`exchange.engine.OrderBook.remember_ids` does for a cluster's software book. Set on a fresh book."""
        if self.seq or self.seen_ids or self.by_id:
            raise ValueError("remember_ids needs a fresh book")
        self._window = window
        self.seen_ids = window

    # -- pumps -----------------------------------------------------------------------------------

    def process(self, command: Command, run: Callable[[CommandRecord], list[EventRecord]]) -> list[Event]:
        """Apply one command through ``run`` (send a record, return its burst); never raises on
        bad input, only on a protocol violation (:class:`MatcherDriverError`)."""
        steps = self.steps(command)
        try:
            record = next(steps)
            while True:
                record = steps.send(run(record))
        except StopIteration as stop:
            return stop.value

    def steps(self, command: Command) -> Steps:
        """The command as a generator: yields command records, is sent each record's burst."""
        out: list[Event] = []
        kind = type(command)
        if kind is NewOrder:
            yield from self._new(command, out)  # type: ignore[arg-type]
        elif kind is CancelOrder:
            yield from self._cancel(command, out)  # type: ignore[arg-type]
        elif kind is ModifyOrder:
            yield from self._modify(command, out)  # type: ignore[arg-type]
        elif kind is EndOfDay:
            yield from self._end_of_day(out)
        elif kind is SetBasePrice:
            yield from self._set_base(command, out)  # type: ignore[arg-type]
        else:
            self._reject(out, getattr(command, "order_id", None), getattr(command, "op", "?"),
                         RejectReason.INVALID_COMMAND, f"not a command: {type(command).__name__}")
        return out

    def reset_steps(self) -> Generator[CommandRecord, list[EventRecord], None]:
        """Empty the gateware book and forget the window (administrative; no events)."""
        burst = yield self._send(CommandRecord(MatcherOp.RESET))
        self._expect(len(burst) == 1 and burst[0].kind == RecordKind.RESET_DONE, "RESET", burst)
        self._reset_state()

    # -- helpers ------------------------------------------------------------------------------

    def _send(self, record: CommandRecord) -> CommandRecord:
        self.records_sent += 1
        return record

    def _expect(self, condition: bool, what: str, burst: list[EventRecord]) -> None:
        if not condition:
            raise MatcherDriverError(f"{self.symbol}: unexpected answer to {what}: {burst}")

    def _check_burst(self, burst: list[EventRecord], what: str) -> None:
        self._expect(bool(burst) and burst[-1].last and not any(r.last for r in burst[:-1]), what, burst)

    def _reject(self, out: list[Event], order_id: object, op: str, reason: str, text: str) -> None:
        self.seq += 1
        out.append(_event(Rejected, (self.seq, self.symbol, order_id, op, reason, text)))

    def _offset(self, price: int) -> int:
        """Tick offset of a valid price from the base, saturated to the record field."""
        base = self.base_price if self.base_price is not None else 0
        return clamp_offset((price - base) // self._tick)

    def _price(self, offset: int) -> int:
        return (self.base_price or 0) + offset * self._tick

    def _in_window(self, price: int) -> bool:
        if self.base_price is None:
            return False
        window = self.config.window_ticks
        return -window <= (price - self.base_price) // self._tick < window

    def _window_text(self, price: int) -> str:
        base = self.base_price
        if base is None:
            return "no price window set: send set_base first"
        window = self.config.window_ticks
        return f"price {price} outside window {base - window * self._tick}..{base + (window - 1) * self._tick}"

    def _check_qty(self, qty: object) -> tuple[str, str] | None:
        if type(qty) is not int or qty <= 0:
            return RejectReason.INVALID_QTY, f"quantity must be a positive integer, got {qty!r}"
        if qty % self._lot:
            return RejectReason.QTY_OFF_LOT, f"quantity {qty} is not a multiple of lot size {self._lot}"
        return None

    def _check_price(self, price: object) -> tuple[str, str] | str | None:
        """The engine's price checks; the window one answers :data:`_WINDOW` instead."""
        if type(price) is not int or price <= 0:
            return RejectReason.INVALID_PRICE, f"price must be a positive integer, got {price!r}"
        if price % self._tick:
            return RejectReason.PRICE_OFF_TICK, f"price {price} is not a multiple of tick size {self._tick}"
        band = self._band
        if band is not None and not band[0] <= price <= band[1]:
            return RejectReason.PRICE_OUTSIDE_BAND, f"price {price} outside band {band[0]}..{band[1]}"
        if not self._in_window(price):
            return _WINDOW
        return None

    # -- the L3 view ----------------------------------------------------------------------------

    def _add_resting(self, order: RestingOrder) -> None:
        self.by_id[order.order_id] = order
        self.by_handle[order.handle] = order
        self.levels.setdefault((order.side, order.price), OrderedDict())[order.order_id] = order

    def _drop_resting(self, order: RestingOrder) -> None:
        del self.by_id[order.order_id]
        if self.by_handle.get(order.handle) is order:
            del self.by_handle[order.handle]
        key = (order.side, order.price)
        level = self.levels[key]
        del level[order.order_id]
        if not level:
            del self.levels[key]

    # -- new orders ------------------------------------------------------------------------------

    def _validate_new(self, cmd: NewOrder) -> tuple[str, str] | str | None:
        """The engine's checks for a new order, in its order; :data:`_WINDOW` when the price
        window decides (the gateware rejects it)."""
        oid = cmd.order_id
        if type(oid) is not int or oid <= 0:
            return RejectReason.INVALID_ORDER_ID, f"order_id must be a positive integer, got {oid!r}"
        if oid in self.seen_ids or oid in self.by_id:  # a window may have let go of a resting order's id
            return RejectReason.DUPLICATE_ORDER_ID, f"order_id {oid} was used before"
        account = cmd.account
        if (not isinstance(account, str) or not 0 < len(account) <= MAX_ACCOUNT_LEN or not account.isascii()
                or not account.isprintable() or " " in account):
            return (RejectReason.INVALID_ACCOUNT,
                    f"account must be 1-{MAX_ACCOUNT_LEN} printable ASCII characters, got {account!r}")
        if cmd.side is not BUY and cmd.side is not SELL:
            return RejectReason.INVALID_SIDE, f"side must be buy or sell, got {cmd.side!r}"
        order_type, tif = cmd.order_type, cmd.tif
        if not isinstance(order_type, OrderType):
            return RejectReason.INVALID_TYPE, f"type must be limit or market, got {order_type!r}"
        if not isinstance(tif, TimeInForce):
            return RejectReason.INVALID_TIF, f"tif must be gtc, day, ioc or fok, got {tif!r}"
        if not isinstance(cmd.stp, SelfTradePrevention):
            return (RejectReason.INVALID_STP,
                    f"stp must be none, cancel_newest, cancel_oldest or cancel_both, got {cmd.stp!r}")
        bad_qty = self._check_qty(cmd.qty)
        if bad_qty:
            return bad_qty
        if order_type is OrderType.MARKET:
            if cmd.price is not None:
                return RejectReason.INVALID_PRICE, "a market order carries no price"
            if tif is TimeInForce.GTC or tif is TimeInForce.DAY:
                return RejectReason.INVALID_TIF, "a market order must be ioc or fok"
        else:
            bad_price = self._check_price(cmd.price)
            if bad_price:
                return bad_price
        display = cmd.display_qty
        if display:
            if type(display) is not int or display < 0 or display > cmd.qty or display % self._lot:
                return (RejectReason.INVALID_DISPLAY_QTY,
                        f"display_qty must be a positive multiple of lot size {self._lot} not above qty, "
                        f"got {display!r}")
            if order_type is OrderType.MARKET or tif is TimeInForce.IOC or tif is TimeInForce.FOK:
                return (RejectReason.INVALID_DISPLAY_QTY,
                        "only a resting (gtc or day) limit order can have a display quantity")
        if cmd.post_only and (order_type is OrderType.MARKET or tif is TimeInForce.IOC or tif is TimeInForce.FOK):
            return RejectReason.INVALID_POST_ONLY, "post_only needs a resting (gtc or day) limit order"
        profile = self.profile
        missing = None
        if order_type is OrderType.MARKET and not profile.market_orders:
            missing = "market orders"
        elif display and not profile.reserve_orders:
            # Any display quantity: one equal to qty would become a reserve after a qty increase.
            missing = "reserve orders"
        elif cmd.post_only and not profile.post_only:
            missing = "post-only orders"
        elif cmd.stp and not profile.self_trade_prevention:
            missing = "self-trade prevention"
        elif tif is TimeInForce.DAY and not profile.day_orders:
            missing = "day orders"
        elif tif is TimeInForce.FOK and not profile.fok_orders:
            missing = "fill-or-kill orders"
        elif cmd.qty > self.config.max_qty:
            missing = f"quantities above {self.config.max_qty}"
        if missing:
            return RejectReason.UNSUPPORTED, f"the {profile.name} book does not support {missing}"
        return None

    def _new(self, cmd: NewOrder, out: list[Event]) -> Steps:
        if (self.auto_window and self.base_price is None and cmd.order_type is OrderType.LIMIT
                and type(cmd.price) is int and cmd.price > 0 and not cmd.price % self._tick):
            burst = yield self._send(CommandRecord(MatcherOp.SET_BASE))
            self._expect(len(burst) == 1 and burst[0].kind == RecordKind.BASE_SET, "automatic set_base", burst)
            self.base_price = cmd.price
        verdict = self._validate_new(cmd)
        oid = cmd.order_id
        if isinstance(verdict, tuple):
            self._reject(out, oid, "new", *verdict)
            return out
        side = cmd.side
        if verdict == _WINDOW:
            # Outside the window: a plain limit order the gateware must reject.
            record = CommandRecord(MatcherOp.NEW, side=int(side), tif=int(TimeInForce.GTC),
                                   price=self._offset(cmd.price), qty=min(cmd.qty, self.config.max_qty))
            burst = yield self._send(record)
            self._expect(len(burst) == 1 and burst[0].kind == RecordKind.REJECTED
                         and burst[0].reason == MatcherReason.PRICE_OUTSIDE_WINDOW and burst[0].last,
                         f"new order {oid} outside the window", burst)
            self._reject(out, oid, "new", RejectReason.PRICE_OUTSIDE_WINDOW, self._window_text(cmd.price))
            return out
        market = cmd.order_type is OrderType.MARKET
        flags = (FLAG_MARKET if market else 0) | (FLAG_POST_ONLY if cmd.post_only else 0)
        record = CommandRecord(MatcherOp.NEW, side=int(side), tif=int(cmd.tif), flags=flags,
                               price=0 if market else self._offset(cmd.price), qty=cmd.qty)
        burst = yield self._send(record)
        what = f"new order {oid}"
        self._check_burst(burst, what)
        self._expect(burst[0].kind != RecordKind.REJECTED, what, burst)
        self.seen_ids.add(oid)
        account = cmd.account
        self.seq += 1
        out.append(_event(Accepted, (self.seq, self.symbol, oid, account, side, cmd.order_type, cmd.tif, cmd.price,
                                     cmd.qty, cmd.display_qty, cmd.post_only, cmd.stp)))
        self._taker_records(burst, out, what, oid, account, side, cmd.tif, cmd.qty)
        return out

    def _taker_records(self, burst: list[EventRecord], out: list[Event], what: str, oid: int, account: str,
                       side: Side, tif: TimeInForce, qty: int) -> None:
        """Fills, then the remainder's fate, of an incoming order (new, or a repriced modify)."""
        symbol = self.symbol
        remaining = qty
        for index, rec in enumerate(burst):
            final = index == len(burst) - 1
            kind = rec.kind
            if kind == RecordKind.FILL:
                maker = self.by_handle.get(rec.handle)
                price = self._price(rec.price)
                self._expect(maker is not None and maker.side is not side and maker.price == price
                             and 0 < rec.qty <= min(maker.leaves, remaining)
                             and rec.leaves == maker.leaves - rec.qty, what, burst)
                self.match_number += 1
                self.seq += 1
                out.append(_event(Fill, (self.seq, symbol, price, rec.qty, maker.order_id, oid, maker.account,
                                         account, side, self.match_number)))
                remaining -= rec.qty
                maker.leaves = rec.leaves
                if not rec.leaves:
                    self._drop_resting(maker)
                self._expect(bool(remaining) != final, what, burst)
            elif kind == RecordKind.CANCELLED and rec.reason in _CANCEL_REASONS:
                self._expect(final and rec.qty == remaining, what, burst)
                self.seq += 1
                out.append(_event(Cancelled, (self.seq, symbol, oid, account, remaining, _CANCEL_REASONS[rec.reason])))
            elif kind == RecordKind.ADDED:
                price = self._price(rec.price)
                self._expect(final and rec.qty == remaining and rec.side == side, what, burst)
                self._add_resting(RestingOrder(oid, account, side, price, remaining, tif, rec.handle))
                self.seq += 1
                out.append(_event(OrderAdded, (self.seq, symbol, oid, side, price, remaining)))
            else:
                self._expect(False, what, burst)

    # -- cancel, end of day -------------------------------------------------------------------------

    def _cancel(self, cmd: CancelOrder, out: list[Event]) -> Steps:
        oid = cmd.order_id
        order = self.by_id.get(oid) if type(oid) is int else None
        if order is None:
            self._reject(out, oid, "cancel", RejectReason.UNKNOWN_ORDER, f"no resting order {oid!r}")
            return out
        reason = cmd.reason if isinstance(cmd.reason, str) and cmd.reason else CancelReason.USER
        yield from self._cancel_resting(order, reason, out)
        return out

    def _cancel_resting(self, order: RestingOrder, reason: str, out: list[Event]) -> Steps:
        record = CommandRecord(MatcherOp.CANCEL, side=int(order.side), handle=order.handle,
                               ref=self._offset(order.price))
        burst = yield self._send(record)
        self._expect(len(burst) == 1 and burst[0].last and burst[0].kind == RecordKind.CANCELLED
                     and burst[0].reason == MatcherReason.REQUESTED and burst[0].qty == order.leaves,
                     f"cancel of order {order.order_id}", burst)
        self._drop_resting(order)
        self.seq += 1
        out.append(_event(Cancelled, (self.seq, self.symbol, order.order_id, order.account, order.leaves, reason)))
        self.seq += 1
        out.append(_event(OrderRemoved, (self.seq, self.symbol, order.order_id, order.leaves)))
        return out

    def _end_of_day(self, out: list[Event]) -> Steps:
        # DAY orders rest as GTC in the gateware; expire them in order-id order, as the engine does.
        expiring = sorted((o for o in self.by_id.values() if o.tif is TimeInForce.DAY), key=lambda o: o.order_id)
        for order in expiring:
            yield from self._cancel_resting(order, CancelReason.EXPIRED, out)
        return out

    # -- modify ------------------------------------------------------------------------------------

    def _modify(self, cmd: ModifyOrder, out: list[Event]) -> Steps:
        oid = cmd.order_id
        order = self.by_id.get(oid) if type(oid) is int else None
        if order is None:
            self._reject(out, oid, "modify", RejectReason.UNKNOWN_ORDER, f"no resting order {oid!r}")
            return out
        if cmd.reduce is True:
            # The gateware knows absolute quantities only; the open quantity is known here, so a cut becomes
            # the cancel or the quantity-down modify the engine's cut amounts to (same checks, same order).
            bad_qty = self._check_qty(cmd.qty)
            if bad_qty:
                self._reject(out, oid, "modify", *bad_qty)
            elif cmd.price is not None:
                self._reject(out, oid, "modify", RejectReason.INVALID_PRICE, "a reduce carries no price")
            elif cmd.qty >= order.leaves:  # type: ignore[operator]
                yield from self._cancel_resting(order, CancelReason.USER, out)
            else:
                yield from self._modify(ModifyOrder(cmd.symbol, oid, qty=order.leaves - cmd.qty), out)  # type: ignore[operator]
            return out
        new_qty, new_price = cmd.qty, cmd.price
        if new_qty is not None:
            bad_qty = self._check_qty(new_qty)
            if bad_qty:
                self._reject(out, oid, "modify", *bad_qty)
                return out
        outside = False
        if new_price is not None:
            bad_price = self._check_price(new_price)
            if isinstance(bad_price, tuple):
                self._reject(out, oid, "modify", *bad_price)
                return out
            outside = bad_price == _WINDOW
        qty = order.leaves if new_qty is None else new_qty
        price = order.price if new_price is None else new_price
        if not outside and qty > self.config.max_qty:
            self._reject(out, oid, "modify", RejectReason.UNSUPPORTED,
                         f"the {self.profile.name} book does not support quantities above {self.config.max_qty}")
            return out
        flags = (FLAG_HAS_QTY if new_qty is not None else 0) | (FLAG_HAS_PRICE if new_price is not None else 0)
        # price is the target price even when unchanged: the gateware reads that level at accept.
        record = CommandRecord(MatcherOp.MODIFY, side=int(order.side), handle=order.handle,
                               ref=self._offset(order.price), flags=flags, price=self._offset(price),
                               qty=min(qty, self.config.max_qty))
        burst = yield self._send(record)
        what = f"modify of order {oid}"
        self._check_burst(burst, what)
        first = burst[0]
        symbol = self.symbol
        if first.kind == RecordKind.REJECTED:
            self._expect(len(burst) == 1, what, burst)
            if first.reason == MatcherReason.PRICE_OUTSIDE_WINDOW:
                self._expect(outside, what, burst)
                self._reject(out, oid, "modify", RejectReason.PRICE_OUTSIDE_WINDOW, self._window_text(new_price))
            else:
                self._expect(not outside and first.reason == MatcherReason.NO_CHANGE
                             and qty == order.leaves and price == order.price, what, burst)
                self._reject(out, oid, "modify", RejectReason.NO_CHANGE, "modify changes neither price nor quantity")
            return out
        self._expect(not outside, what, burst)
        if first.kind == RecordKind.REDUCED:
            self._expect(len(burst) == 1 and price == order.price and first.leaves == qty < order.leaves
                         and first.qty == order.leaves - qty, what, burst)
            order.leaves = qty
            self.seq += 1
            out.append(_event(Modified, (self.seq, symbol, oid, order.account, price, qty, True)))
            self.seq += 1
            out.append(_event(OrderReduced, (self.seq, symbol, oid, first.qty, qty)))
            return out
        self._expect(first.kind == RecordKind.REMOVED and first.qty == order.leaves and first.leaves == qty
                     and len(burst) >= 2, what, burst)
        self._drop_resting(order)
        self.seq += 1
        out.append(_event(Modified, (self.seq, symbol, oid, order.account, price, qty, False)))
        self.seq += 1
        out.append(_event(OrderRemoved, (self.seq, symbol, oid, order.leaves)))
        self._taker_records(burst[1:], out, what, oid, order.account, order.side, order.tif, qty)
        return out

    # -- window -------------------------------------------------------------------------------------

    def _set_base(self, cmd: SetBasePrice, out: list[Event]) -> Steps:
        price = cmd.price
        if type(price) is not int or price <= 0 or price % self._tick:
            self._reject(out, None, "set_base", RejectReason.INVALID_PRICE,
                         f"base price must be a positive multiple of tick size {self._tick}, got {price!r}")
            return out
        burst = yield self._send(CommandRecord(MatcherOp.SET_BASE))
        what = "set_base"
        self._expect(len(burst) == 1 and burst[0].last, what, burst)
        rec = burst[0]
        if rec.kind == RecordKind.REJECTED:
            self._expect(rec.reason == MatcherReason.BOOK_NOT_EMPTY and bool(self.by_id), what, burst)
            self._reject(out, None, "set_base", RejectReason.BOOK_NOT_EMPTY,
                         "the price window can move only while the book is empty")
            return out
        self._expect(rec.kind == RecordKind.BASE_SET and not self.by_id, what, burst)
        self.base_price = price
        self.seq += 1
        out.append(_event(BasePriceSet, (self.seq, self.symbol, price)))
        return out

    # -- queries (from the host's L3 view) ------------------------------------------------------------

    def _prices(self, side: Side) -> list[int]:
        prices = [price for (s, price) in self.levels if s is side]
        return sorted(prices, reverse=side is BUY)

    def bbo(self) -> tuple[int | None, int, int | None, int]:
        """(best bid price, its visible qty, best ask price, its visible qty); None price when empty."""
        bids, asks = self._prices(BUY), self._prices(SELL)
        bid = bids[0] if bids else None
        ask = asks[0] if asks else None
        return (bid, self._level_qty(BUY, bid) if bid is not None else 0,
                ask, self._level_qty(SELL, ask) if ask is not None else 0)

    def _level_qty(self, side: Side, price: int) -> int:
        return sum(o.leaves for o in self.levels[(side, price)].values())

    def depth(self, levels: int | None = None) -> dict[str, list[tuple[int, int, int]]]:
        """Visible depth by price level, best first: {"bids"|"asks": [(price, qty, order count)]}."""
        result = {}
        for name, side in (("bids", BUY), ("asks", SELL)):
            prices = self._prices(side)
            if levels is not None:
                prices = prices[:levels]
            result[name] = [(p, self._level_qty(side, p), len(self.levels[(side, p)])) for p in prices]
        return result

    def orders_at(self, side: Side, price: int) -> list[dict]:
        """The orders resting at one price, in priority order (L3)."""
        level = self.levels.get((side, price), {})
        return [{"order_id": o.order_id, "account": o.account, "displayed": o.leaves, "leaves": o.leaves}
                for o in level.values()]

    def resting_qty(self) -> int:
        """All remaining quantity in the book."""
        return sum(o.leaves for o in self.by_id.values())
