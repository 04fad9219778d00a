"""A deliberately simple second implementation of docs/engine.md, for differential tests.

Written from the specification, not from ``exchange/engine.py``: a book is a flat list of
resting orders, each stamped with an arrival counter; the best order is found by sorting the
whole list every time; a FOK check runs the real matching loop on a copy of the whole book.
Nothing here is fast and nothing is clever, so that it is easy to believe.

Events come out as plain dicts with the keys in the order docs/engine.md lists them, i.e. what
``event.to_dict()`` of the reference engine must give. A ``rejected`` event's ``text`` is free
wording, so the model puts ``None`` there and comparisons ignore it (see :func:`comparable`).

:class:`FeedBook` is a second helper: an order-level (L3) book rebuilt only from the events, as a
market-data consumer would, used to check that the event stream describes the book completely.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from exchange.engine import BookProfile
from exchange.instruments import Instrument
from exchange.orders import (
    CancelOrder,
    EndOfDay,
    ModifyOrder,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    SetBasePrice,
    Side,
    TimeInForce,
)


def _name(member: object) -> str:
    return member.name.lower()  # type: ignore[attr-defined]


def _positive_int(value: object) -> bool:
    # JSON true/false are not numbers, so bool does not count as int here.
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _ascii_name(value: object) -> bool:
    """1-8 printable ASCII characters without spaces: code points 0x21..0x7e."""
    return isinstance(value, str) and 1 <= len(value) <= 8 and all(0x21 <= ord(ch) <= 0x7E for ch in value)


@dataclass
class ModelOrder:
    order_id: int
    account: str
    side: str  # "buy" / "sell"
    price: int
    leaves: int  # all that remains, reserve included
    shown: int  # the visible part
    display: int  # display_qty, 0 = not an iceberg
    tif: str
    stp: str
    post_only: bool
    arrival: int  # bigger = later in the queue


class Rejection(Exception):
    """Internal: a failed validation step carrying its reason code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SimpleBook:
    """One instrument's book, per docs/engine.md, in the plainest possible way."""

    def __init__(self, instrument: Instrument, profile: BookProfile | None = None) -> None:
        self.symbol = instrument.symbol
        self.tick = instrument.tick_size
        self.lot = instrument.lot_size
        self.band = instrument.band
        self.profile = profile or BookProfile()
        self.resting: list[ModelOrder] = []
        self.used_ids: set[int] = set()
        self.seq = 0
        self.matches = 0
        self.clock = 0
        self.base: int | None = None
        self.out: list[dict] = []

    # -- plumbing -------------------------------------------------------------------------------

    def _emit(self, kind: str, **fields: object) -> None:
        self.seq += 1
        self.out.append({"event": kind, "seq": self.seq, "symbol": self.symbol, **fields})

    def _reject(self, order_id: object, op: str, reason: str) -> None:
        self._emit("rejected", order_id=order_id, op=op, reason=reason, text=None)

    def _next_arrival(self) -> int:
        self.clock += 1
        return self.clock

    def _find(self, order_id: object) -> ModelOrder | None:
        if not _positive_int(order_id):
            return None
        for order in self.resting:
            if order.order_id == order_id:
                return order
        return None

    def _queue(self, side: str) -> list[ModelOrder]:
        """The resting orders of one side in priority order: best price first, then oldest."""
        orders = [o for o in self.resting if o.side == side]
        if side == "buy":
            orders.sort(key=lambda o: (-o.price, o.arrival))
        else:
            orders.sort(key=lambda o: (o.price, o.arrival))
        return orders

    @staticmethod
    def _crosses(taker_side: str, limit: int | None, maker_price: int) -> bool:
        if limit is None:
            return True
        return maker_price <= limit if taker_side == "buy" else maker_price >= limit

    # -- validation -----------------------------------------------------------------------------

    def _check_qty(self, qty: object) -> None:
        if not _positive_int(qty):
            raise Rejection("invalid_qty")
        if qty % self.lot:  # type: ignore[operator]
            raise Rejection("qty_off_lot")

    def _check_price(self, price: object) -> None:
        if not _positive_int(price):
            raise Rejection("invalid_price")
        if price % self.tick:  # type: ignore[operator]
            raise Rejection("price_off_tick")
        if self.band is not None and not (self.band[0] <= price <= self.band[1]):  # type: ignore[operator]
            raise Rejection("price_outside_band")
        window = self.profile.window_ticks
        if window is not None:
            if self.base is None:
                raise Rejection("price_outside_window")
            low = self.base - window * self.tick
            high = self.base + (window - 1) * self.tick
            if not (low <= price <= high):  # type: ignore[operator]
                raise Rejection("price_outside_window")

    def _validate_new(self, c: NewOrder) -> None:
        if not _positive_int(c.order_id):
            raise Rejection("invalid_order_id")
        if c.order_id in self.used_ids:
            raise Rejection("duplicate_order_id")
        if not _ascii_name(c.account):
            raise Rejection("invalid_account")
        if not isinstance(c.side, Side):
            raise Rejection("invalid_side")
        if not isinstance(c.order_type, OrderType):
            raise Rejection("invalid_type")
        if not isinstance(c.tif, TimeInForce):
            raise Rejection("invalid_tif")
        if not isinstance(c.stp, SelfTradePrevention):
            raise Rejection("invalid_stp")
        self._check_qty(c.qty)
        market = c.order_type == OrderType.MARKET
        if market:
            if c.price is not None:
                raise Rejection("invalid_price")
            if c.tif in (TimeInForce.GTC, TimeInForce.DAY):
                raise Rejection("invalid_tif")
        else:
            self._check_price(c.price)
        can_rest = not market and c.tif in (TimeInForce.GTC, TimeInForce.DAY)
        if c.display_qty:
            d = c.display_qty
            if not _positive_int(d) or d > c.qty or d % self.lot:
                raise Rejection("invalid_display_qty")
            if not can_rest:
                raise Rejection("invalid_display_qty")
        if c.post_only and not can_rest:
            raise Rejection("invalid_post_only")
        p = self.profile
        if (
            (market and not p.market_orders)
            or (c.display_qty and not p.reserve_orders)
            or (c.post_only and not p.post_only)
            or (c.stp != SelfTradePrevention.NONE and not p.self_trade_prevention)
            or (c.tif == TimeInForce.DAY and not p.day_orders)
            or (c.tif == TimeInForce.FOK and not p.fok_orders)
            or (p.max_qty is not None and c.qty > p.max_qty)
        ):
            raise Rejection("unsupported")

    # -- the matching loop ----------------------------------------------------------------------

    def _take_out(self, order: ModelOrder, reason: str) -> None:
        """Remove a resting order without trading: cancelled (all leaves), then order_removed."""
        self._emit("cancelled", order_id=order.order_id, account=order.account, qty=order.leaves, reason=reason)
        self._emit("order_removed", order_id=order.order_id, qty=order.shown)
        self.resting.remove(order)

    def _sweep(self, oid: int, account: str, side: str, limit: int | None, qty: int, stp: str) -> tuple[int, bool]:
        """Trade an incoming order; returns (quantity left, stopped by STP)."""
        left = qty
        other = "sell" if side == "buy" else "buy"
        while left > 0:
            queue = self._queue(other)
            if not queue or not self._crosses(side, limit, queue[0].price):
                return left, False
            maker = queue[0]
            if stp != "none" and maker.account == account:
                if stp == "cancel_newest":
                    return left, True
                self._take_out(maker, "stp")
                if stp == "cancel_oldest":
                    continue
                return left, True  # cancel_both
            traded = min(left, maker.shown)
            self.matches += 1
            self._emit(
                "fill",
                price=maker.price,
                qty=traded,
                maker_order_id=maker.order_id,
                taker_order_id=oid,
                maker_account=maker.account,
                taker_account=account,
                taker_side=side,
                match_number=self.matches,
            )
            left -= traded
            maker.shown -= traded
            maker.leaves -= traded
            if maker.shown == 0:
                if maker.leaves > 0:
                    maker.shown = min(maker.display, maker.leaves)
                    maker.arrival = self._next_arrival()
                    self._emit(
                        "order_added", order_id=maker.order_id, side=maker.side, price=maker.price, qty=maker.shown
                    )
                else:
                    self.resting.remove(maker)
        return 0, False

    def _could_fill(self, oid: int, account: str, side: str, limit: int | None, qty: int, stp: str) -> bool:
        trial = copy.copy(self)
        trial.resting = [copy.copy(o) for o in self.resting]
        trial.out = []
        left, _ = trial._sweep(oid, account, side, limit, qty, stp)
        return left == 0

    def _rest(self, order: ModelOrder) -> None:
        cap = self.profile.max_orders
        if cap is not None and len(self.resting) >= cap:
            self._emit(
                "cancelled", order_id=order.order_id, account=order.account, qty=order.leaves, reason="book_full"
            )
            return
        order.arrival = self._next_arrival()
        self.resting.append(order)
        self._emit("order_added", order_id=order.order_id, side=order.side, price=order.price, qty=order.shown)

    def _enter(
        self,
        oid: int,
        account: str,
        side: str,
        limit: int | None,
        qty: int,
        tif: str,
        stp: str,
        post_only: bool,
        display: int,
        is_new: bool,
    ) -> None:
        """Steps 2-7 of *Matching*, shared by new orders and modified orders re-entering."""
        other_queue = self._queue("sell" if side == "buy" else "buy")
        if post_only and other_queue and self._crosses(side, limit, other_queue[0].price):
            self._emit("cancelled", order_id=oid, account=account, qty=qty, reason="post_only")
            return
        if is_new and tif == "fok" and not self._could_fill(oid, account, side, limit, qty, stp):
            self._emit("cancelled", order_id=oid, account=account, qty=qty, reason="fok")
            return
        left, stopped = self._sweep(oid, account, side, limit, qty, stp)
        if left == 0:
            return
        if stopped:
            self._emit("cancelled", order_id=oid, account=account, qty=left, reason="stp")
        elif tif in ("ioc", "fok") or limit is None:
            self._emit("cancelled", order_id=oid, account=account, qty=left, reason="ioc")
        else:
            shown = min(display, left) if display else left
            self._rest(ModelOrder(oid, account, side, limit, left, shown, display, tif, stp, post_only, 0))

    # -- commands -------------------------------------------------------------------------------

    def process(self, c: object) -> list[dict]:
        self.out = []
        kind = type(c)
        if kind is NewOrder:
            self._new(c)  # type: ignore[arg-type]
        elif kind is CancelOrder:
            self._cancel(c)  # type: ignore[arg-type]
        elif kind is ModifyOrder:
            self._modify(c)  # type: ignore[arg-type]
        elif kind is EndOfDay:
            for order in sorted((o for o in self.resting if o.tif == "day"), key=lambda o: o.order_id):
                self._take_out(order, "expired")
        elif kind is SetBasePrice:
            self._set_base(c)  # type: ignore[arg-type]
        else:
            self._reject(getattr(c, "order_id", None), getattr(c, "op", "?"), "invalid_command")
        return self.out

    def _new(self, c: NewOrder) -> None:
        try:
            self._validate_new(c)
        except Rejection as r:
            self._reject(c.order_id, "new", r.reason)
            return
        self.used_ids.add(c.order_id)
        accepted = {
            "order_id": c.order_id,
            "account": c.account,
            "side": _name(c.side),
            "type": _name(c.order_type),
            "tif": _name(c.tif),
            "price": c.price,
            "qty": c.qty,
        }
        if c.post_only:
            accepted["post_only"] = True
        if c.display_qty:
            accepted["display_qty"] = c.display_qty
        if c.stp != SelfTradePrevention.NONE:
            accepted["stp"] = _name(c.stp)
        self._emit("accepted", **accepted)
        self._enter(
            c.order_id,
            c.account,
            _name(c.side),
            c.price,
            c.qty,
            _name(c.tif),
            _name(c.stp),
            bool(c.post_only),
            c.display_qty or 0,
            is_new=True,
        )

    def _cancel(self, c: CancelOrder) -> None:
        order = self._find(c.order_id)
        if order is None:
            self._reject(c.order_id, "cancel", "unknown_order")
            return
        reason = c.reason if isinstance(c.reason, str) and c.reason else "user"
        self._take_out(order, reason)

    def _modify(self, c: ModifyOrder) -> None:
        order = self._find(c.order_id)
        if order is None:
            self._reject(c.order_id, "modify", "unknown_order")
            return
        if c.reduce is True:  # a cut: so many shares off what remains, all of them a cancel
            try:
                self._check_qty(c.qty)
            except Rejection as r:
                self._reject(c.order_id, "modify", r.reason)
                return
            if c.price is not None:
                self._reject(c.order_id, "modify", "invalid_price")
            elif c.qty >= order.leaves:  # type: ignore[operator]
                self._take_out(order, "user")
            else:
                self._modify(ModifyOrder(c.symbol, c.order_id, qty=order.leaves - c.qty))  # type: ignore[operator]
            return
        try:
            if c.qty is not None:
                self._check_qty(c.qty)
            if c.price is not None:
                self._check_price(c.price)
        except Rejection as r:
            self._reject(c.order_id, "modify", r.reason)
            return
        qty = order.leaves if c.qty is None else c.qty
        price = order.price if c.price is None else c.price
        if self.profile.max_qty is not None and qty > self.profile.max_qty:
            self._reject(c.order_id, "modify", "unsupported")
            return
        if qty == order.leaves and price == order.price:
            self._reject(c.order_id, "modify", "no_change")
            return
        if price == order.price and qty < order.leaves:
            order.leaves = qty
            self._emit(
                "modified", order_id=order.order_id, account=order.account, price=price, qty=qty, kept_priority=True
            )
            if order.shown > qty:
                cut = order.shown - qty
                order.shown = qty
                self._emit("order_reduced", order_id=order.order_id, qty=cut, remaining=qty)
            return
        self._emit(
            "modified", order_id=order.order_id, account=order.account, price=price, qty=qty, kept_priority=False
        )
        self._emit("order_removed", order_id=order.order_id, qty=order.shown)
        self.resting.remove(order)
        self._enter(
            order.order_id,
            order.account,
            order.side,
            price,
            qty,
            order.tif,
            order.stp,
            order.post_only,
            order.display,
            is_new=False,
        )

    def _set_base(self, c: SetBasePrice) -> None:
        if not _positive_int(c.price) or c.price % self.tick:
            self._reject(None, "set_base", "invalid_price")
        elif self.profile.window_ticks is not None and self.resting:
            self._reject(None, "set_base", "book_not_empty")
        else:
            self.base = c.price
            self._emit("base_price_set", price=c.price)

    # -- queries --------------------------------------------------------------------------------

    def bbo(self) -> tuple[int | None, int, int | None, int]:
        result: list = []
        for side in ("buy", "sell"):
            queue = self._queue(side)
            if queue:
                best = queue[0].price
                result += [best, sum(o.shown for o in queue if o.price == best)]
            else:
                result += [None, 0]
        return tuple(result)  # type: ignore[return-value]

    def depth(self, levels: int | None = None) -> dict[str, list[tuple[int, int, int]]]:
        result = {}
        for name, side in (("bids", "buy"), ("asks", "sell")):
            rows: list[tuple[int, int, int]] = []
            for order in self._queue(side):
                if rows and rows[-1][0] == order.price:
                    price, qty, count = rows[-1]
                    rows[-1] = (price, qty + order.shown, count + 1)
                else:
                    rows.append((order.price, order.shown, 1))
            result[name] = rows if levels is None else rows[:levels]
        return result

    def orders_at(self, side: Side, price: int) -> list[dict]:
        return [
            {"order_id": o.order_id, "account": o.account, "displayed": o.shown, "leaves": o.leaves}
            for o in self._queue(_name(side))
            if o.price == price
        ]

    def resting_qty(self) -> int:
        return sum(o.leaves for o in self.resting)


class SimpleExchange:
    """Routes by symbol like the spec's router: unknown or invalid symbols are rejected without seq."""

    def __init__(self, instruments: dict[str, Instrument] | None = None, profile: BookProfile | None = None) -> None:
        self.instruments = instruments
        self.profile = profile
        self.books: dict[str, SimpleBook] = {}
        for symbol, instrument in (instruments or {}).items():
            self.books[symbol] = SimpleBook(instrument, profile)

    def process(self, command: object) -> list[dict]:
        symbol = getattr(command, "symbol", None)
        book = self.books.get(symbol) if isinstance(symbol, str) else None
        if book is None and self.instruments is None and _ascii_name(symbol):
            book = self.books[symbol] = SimpleBook(Instrument(symbol), self.profile)  # type: ignore[arg-type]
        if book is not None:
            return book.process(command)
        reason = "unknown_symbol" if _ascii_name(symbol) else "invalid_symbol"
        return [
            {
                "event": "rejected",
                "symbol": symbol,
                "order_id": getattr(command, "order_id", None),
                "op": getattr(command, "op", "?"),
                "reason": reason,
                "text": None,
            }
        ]


def comparable(event: dict) -> list[tuple[str, object]]:
    """An event dict as an ordered list of items, with a reject's free ``text`` left out."""
    return [(k, v) for k, v in event.items() if not (event.get("event") == "rejected" and k == "text")]


class FeedBook:
    """An L3 book rebuilt from events only, as a feed consumer would build it.

    ``order_added`` puts a visible slice at the back of its level (a reserve refresh re-adds the
    same id), a fill reduces the maker's visible qty (at zero it leaves), ``order_reduced`` and
    ``order_removed`` apply their quantities. :meth:`check_fill` asserts a fill took the order at
    the head of the best level of the maker's side, at that order's price.
    """

    def __init__(self) -> None:
        # order_id -> [side, price, visible]; dict order within a (side, price) is queue order.
        self.levels: dict[tuple[str, int], dict[int, int]] = {}
        self.where: dict[int, tuple[str, int]] = {}

    def apply(self, event: dict) -> None:
        kind = event["event"]
        if kind == "order_added":
            key = (event["side"], event["price"])
            oid = event["order_id"]
            assert oid not in self.where, f"order_added for an order already visible: {event}"
            self.levels.setdefault(key, {})[oid] = event["qty"]
            self.where[oid] = key
        elif kind == "fill":
            oid = event["maker_order_id"]
            self.check_fill(event)
            key = self.where[oid]
            queue = self.levels[key]
            queue[oid] -= event["qty"]
            assert queue[oid] >= 0, f"fill larger than the maker's visible qty: {event}"
            if queue[oid] == 0:
                self._drop(oid)
        elif kind == "order_reduced":
            oid = event["order_id"]
            queue = self.levels[self.where[oid]]
            queue[oid] -= event["qty"]
            assert queue[oid] == event["remaining"] > 0, f"order_reduced inconsistent with the feed book: {event}"
        elif kind == "order_removed":
            oid = event["order_id"]
            assert oid in self.where, f"order_removed for an order not in the feed book: {event}"
            assert self.levels[self.where[oid]][oid] == event["qty"], f"order_removed qty mismatch: {event}"
            self._drop(oid)

    def _drop(self, oid: int) -> None:
        key = self.where.pop(oid)
        del self.levels[key][oid]
        if not self.levels[key]:
            del self.levels[key]

    def best(self, side: str) -> int | None:
        prices = [p for (s, p) in self.levels if s == side]
        if not prices:
            return None
        return max(prices) if side == "buy" else min(prices)

    def check_fill(self, fill: dict) -> None:
        maker_side = "sell" if fill["taker_side"] == "buy" else "buy"
        oid = fill["maker_order_id"]
        assert oid in self.where, f"fill against an order that is not visible in the feed: {fill}"
        side, price = self.where[oid]
        assert side == maker_side, f"maker on the wrong side: {fill}"
        assert price == fill["price"], f"fill not at the maker's price {price}: {fill}"
        assert price == self.best(maker_side), f"fill at {price}, not at the best {maker_side} price: {fill}"
        head = next(iter(self.levels[(side, price)]))
        assert head == oid, f"fill against #{oid}, but #{head} is ahead of it at {price}: {fill}"

    def snapshot(self) -> dict[tuple[str, int], list[tuple[int, int]]]:
        return {key: list(queue.items()) for key, queue in self.levels.items()}
