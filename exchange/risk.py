"""Pre-trade risk: limits per account and the exposure they are checked against.

Pure bookkeeping, no I/O: :class:`AccountRisk` holds one account's open orders, reserved
exposure and positions, and :meth:`AccountRisk.check_new` / :meth:`check_modify` say whether
an order may pass and, if not, why. Exposure is *reserved* when risk passes an order (price x
quantity; market orders at the reference price), *released* when the order is cancelled,
rejected or expires, and *converted* into position on fill, so the account's totals are right
at every moment while its orders rest in several books at once.

Money is in price units x shares (integers); percentages are basis points. No floats.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from exchange.orders import Side


class RiskReason:
    """Why risk refused an order (wire reason codes; OUCH maps them to its reject reasons)."""

    MAX_ORDER_QTY = "max_order_qty"
    MAX_ORDER_NOTIONAL = "max_order_notional"
    PRICE_COLLAR = "price_collar"
    MAX_OPEN_ORDERS = "max_open_orders"
    CREDIT_LIMIT = "credit_limit"
    MAX_POSITION = "max_position"
    RATE_LIMIT = "rate_limit"
    KILL_SWITCH = "kill_switch"
    NO_REFERENCE_PRICE = "no_reference_price"


RISK_REASON_TEXT = {
    RiskReason.MAX_ORDER_QTY: "order quantity above the account's maximum",
    RiskReason.MAX_ORDER_NOTIONAL: "order notional above the account's maximum",
    RiskReason.PRICE_COLLAR: "price too far from the reference price",
    RiskReason.MAX_OPEN_ORDERS: "too many open orders",
    RiskReason.CREDIT_LIMIT: "credit limit: open exposure plus position would exceed it",
    RiskReason.MAX_POSITION: "position limit for the instrument would be exceeded",
    RiskReason.RATE_LIMIT: "order rate limit for the session exceeded",
    RiskReason.KILL_SWITCH: "account is disabled by the kill switch",
    RiskReason.NO_REFERENCE_PRICE: "market order with no reference price to value it",
}


@dataclass(frozen=True)
class RiskLimits:
    """One account's limits; None disables a check."""

    max_order_qty: int | None = 100_000
    max_order_notional: int | None = None
    price_collar_bps: int | None = 1_000
    price_collar_ticks: int | None = None
    max_open_orders: int | None = 10_000
    credit_limit: int | None = None
    max_position: int | None = None
    orders_per_second: int | None = None  # per session, enforced by the gateway
    burst: int | None = None

    @classmethod
    def from_mapping(cls, data: dict, base: RiskLimits | None = None, where: str = "risk") -> RiskLimits:
        """Limits from a TOML table over ``base``; unknown keys and non-integers are errors."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{where}: unknown limit(s) {sorted(unknown)}; known: {sorted(known)}")
        values = {f.name: getattr(base or cls(), f.name) for f in fields(cls)}
        for key, value in data.items():
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"{where}.{key}: a non-negative integer (or omit it), got {value!r}")
            values[key] = value
        return cls(**values)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class RiskOrder:
    """An order as risk sees it, with the exposure reserved for it."""

    __slots__ = ("order_id", "account", "symbol", "side", "price", "leaves", "reserved", "pending", "accepted")

    def __init__(self, order_id: int, account: str, symbol: str, side: int, price: int, leaves: int) -> None:
        self.order_id = order_id
        self.account = account
        self.symbol = symbol
        self.side = side
        self.price = price  # the order's limit price (the reference price for a market order)
        self.leaves = leaves
        self.reserved = 0
        self.pending: tuple[int, int] | None = None  # (price, qty) of a modify in flight
        self.accepted = False

    def save_state(self) -> list:
        """The order as JSON-ready data (a journal snapshot of a risk shard)."""
        return [self.order_id, self.account, self.symbol, int(self.side), self.price, self.leaves, self.reserved,
                None if self.pending is None else list(self.pending), self.accepted]

    @classmethod
    def from_state(cls, values: list) -> RiskOrder:
        order_id, account, symbol, side, price, leaves, reserved, pending, accepted = values
        order = cls(order_id, account, symbol, side, price, leaves)
        order.reserved, order.accepted = reserved, accepted
        order.pending = None if pending is None else tuple(pending)  # type: ignore[assignment]
        return order


class AccountRisk:
    """One account: limits, open orders, reserved exposure, positions, kill switch."""

    def __init__(self, account: str, limits: RiskLimits) -> None:
        self.account = account
        self.limits = limits
        self.orders: dict[int, RiskOrder] = {}
        self.reserved = 0  # exposure of open orders: sum of price x leaves (pessimistic while modifies fly)
        self.positions: dict[str, int] = {}
        self.open_qty: dict[tuple[str, int], int] = {}  # (symbol, side) -> open quantity
        self.killed = False
        self.fills = 0

    # -- checks ------------------------------------------------------------------------

    def position_exposure(self, marks: dict[str, int]) -> int:
        return sum(abs(qty) * marks.get(symbol, 0) for symbol, qty in self.positions.items())

    def check_new(self, symbol: str, side: int, price: int | None, qty: int, reference: int | None,
                  tick: int, marks: dict[str, int]) -> str | None:
        """None if the order may pass, else the reason it may not."""
        limits = self.limits
        if self.killed:
            return RiskReason.KILL_SWITCH
        if limits.max_order_qty is not None and qty > limits.max_order_qty:
            return RiskReason.MAX_ORDER_QTY
        value_price = price if price else reference
        if not price and value_price is None:
            return RiskReason.NO_REFERENCE_PRICE
        notional = (value_price or 0) * qty
        if limits.max_order_notional is not None and notional > limits.max_order_notional:
            return RiskReason.MAX_ORDER_NOTIONAL
        if self._outside_collar(price, reference, tick):
            return RiskReason.PRICE_COLLAR
        if limits.max_open_orders is not None and len(self.orders) >= limits.max_open_orders:
            return RiskReason.MAX_OPEN_ORDERS
        if limits.credit_limit is not None and \
                self.reserved + notional + self.position_exposure(marks) > limits.credit_limit:
            return RiskReason.CREDIT_LIMIT
        if limits.max_position is not None and self._position_breach(symbol, side, qty):
            return RiskReason.MAX_POSITION
        return None

    def _outside_collar(self, price: int | None, reference: int | None, tick: int) -> bool:
        """A limit price too far from the reference (checked only when both exist)."""
        if not price or not reference:
            return False
        distance = abs(price - reference)
        limits = self.limits
        return ((limits.price_collar_bps is not None and distance * 10_000 > limits.price_collar_bps * reference)
                or (limits.price_collar_ticks is not None and distance > limits.price_collar_ticks * tick))

    def _position_breach(self, symbol: str, side: int, qty: int) -> bool:
        position = self.positions.get(symbol, 0)
        limit = self.limits.max_position or 0
        if side == Side.BUY:
            return position + self.open_qty.get((symbol, Side.BUY), 0) + qty > limit
        return position - self.open_qty.get((symbol, Side.SELL), 0) - qty < -limit

    def check_modify(self, order: RiskOrder, price: int | None, qty: int | None, reference: int | None,
                     tick: int, marks: dict[str, int]) -> str | None:
        """None if the modify may pass. Only what grows is checked: less risk always passes."""
        if self.killed:
            return RiskReason.KILL_SWITCH
        new_price = price or order.price
        new_qty = qty or order.leaves
        limits = self.limits
        if limits.max_order_qty is not None and new_qty > limits.max_order_qty:
            return RiskReason.MAX_ORDER_QTY
        notional = new_price * new_qty
        if limits.max_order_notional is not None and notional > limits.max_order_notional:
            return RiskReason.MAX_ORDER_NOTIONAL
        if self._outside_collar(price, reference, tick):
            return RiskReason.PRICE_COLLAR
        growth = notional - order.reserved
        if limits.credit_limit is not None and growth > 0 and \
                self.reserved + growth + self.position_exposure(marks) > limits.credit_limit:
            return RiskReason.CREDIT_LIMIT
        extra = new_qty - order.leaves
        if limits.max_position is not None and extra > 0 and self._position_breach(order.symbol, order.side, extra):
            return RiskReason.MAX_POSITION
        return None

    # -- bookkeeping --------------------------------------------------------------------

    def _set_reserved(self, order: RiskOrder, amount: int) -> None:
        self.reserved += amount - order.reserved
        order.reserved = amount

    def _set_leaves(self, order: RiskOrder, leaves: int) -> None:
        key = (order.symbol, order.side)
        self.open_qty[key] = self.open_qty.get(key, 0) + leaves - order.leaves
        order.leaves = leaves

    def reserve_new(self, order_id: int, symbol: str, side: int, price: int, qty: int) -> RiskOrder:
        """Risk passed a new order: reserve its exposure now, before any book has seen it."""
        order = RiskOrder(order_id, self.account, symbol, side, price, 0)
        self.orders[order_id] = order
        self._set_leaves(order, qty)
        self._set_reserved(order, price * qty)
        return order

    def reserve_modify(self, order: RiskOrder, price: int | None, qty: int | None) -> None:
        new_price, new_qty = price or order.price, qty or order.leaves
        order.pending = (new_price, new_qty)
        self._set_reserved(order, max(order.reserved, new_price * new_qty))

    def _settle(self, order: RiskOrder) -> None:
        if order.leaves <= 0:
            self._remove(order)
            return
        amount = order.price * order.leaves
        if order.pending is not None:
            amount = max(amount, order.pending[0] * order.pending[1])
        self._set_reserved(order, amount)

    def _remove(self, order: RiskOrder) -> None:
        self._set_reserved(order, 0)
        self._set_leaves(order, 0)
        self.orders.pop(order.order_id, None)

    def on_accepted(self, order_id: int) -> None:
        order = self.orders.get(order_id)
        if order is not None:
            order.accepted = True

    def on_rejected(self, order_id: int, op: str) -> None:
        order = self.orders.get(order_id)
        if order is None:
            return
        if op == "new":
            self._remove(order)
        elif op == "modify":
            order.pending = None
            self._settle(order)

    def on_cancelled(self, order_id: int) -> None:
        order = self.orders.get(order_id)
        if order is not None:
            self._remove(order)

    def on_modified(self, order_id: int, price: int, qty: int) -> None:
        order = self.orders.get(order_id)
        if order is None:
            return
        order.pending = None
        order.price = price
        self._set_leaves(order, qty)
        self._settle(order)

    def on_fill(self, order_id: int, symbol: str, buys: bool, qty: int) -> None:
        self.fills += 1
        self.positions[symbol] = self.positions.get(symbol, 0) + (qty if buys else -qty)
        order = self.orders.get(order_id)
        if order is not None:
            self._set_leaves(order, order.leaves - qty)
            self._settle(order)

    def save_state(self) -> dict:
        """Open orders, reservations, positions and the kill switch, as JSON-ready data (the limits come from
        configuration)."""
        return {"orders": [order.save_state() for order in self.orders.values()], "reserved": self.reserved,
                "positions": self.positions, "open_qty": [[s, int(side), q] for (s, side), q in self.open_qty.items()],
                "killed": self.killed, "fills": self.fills}

    def load_state(self, state: dict) -> None:
        self.orders = {values[0]: RiskOrder.from_state(values) for values in state["orders"]}
        self.reserved, self.positions = state["reserved"], dict(state["positions"])
        self.open_qty = {(s, side): q for s, side, q in state["open_qty"]}
        self.killed, self.fills = state["killed"], state["fills"]

    def snapshot(self, marks: dict[str, int]) -> dict:
        """Everything an operator asks for with ``matchwire admin positions``."""
        return {"account": self.account, "killed": self.killed, "open_orders": len(self.orders),
                "reserved_exposure": self.reserved, "position_exposure": self.position_exposure(marks),
                "positions": dict(sorted(self.positions.items())), "fills": self.fills}


class TokenBucket:
    """An order rate limit: ``rate`` tokens a second, at most ``burst`` saved up.

    Time is integer nanoseconds (the caller's clock), so the arithmetic stays exact.
    """

    def __init__(self, rate: int, burst: int, now_ns: int) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.capacity = burst * 1_000_000_000
        self.level = self.capacity  # in token-nanoseconds: one token = 1e9
        self.last = now_ns

    def take(self, now_ns: int) -> bool:
        elapsed = max(0, now_ns - self.last)
        self.last = now_ns
        self.level = min(self.capacity, self.level + elapsed * self.rate)
        if self.level >= 1_000_000_000:
            self.level -= 1_000_000_000
            return True
        return False
