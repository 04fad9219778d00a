"""A book rebuilt from a matcher's event stream alone (what a market-data consumer sees).

It applies ``order_added``, ``order_reduced``, ``order_removed`` and ``fill`` events, and checks
each book's sequence numbers for gaps. Comparing its depth with the engine's own is how tests
prove the event stream tells the whole story.
"""

from __future__ import annotations

from exchange.orders import Event, Fill, OrderAdded, OrderReduced, OrderRemoved, Side


class EventBook:
    """Visible orders and price levels per symbol, from engine events."""

    def __init__(self) -> None:
        self.orders: dict[str, dict[int, list]] = {}  # symbol -> order_id -> [side, price, qty]
        self.levels: dict[str, dict[Side, dict[int, int]]] = {}  # symbol -> side -> price -> qty
        self.last_seq: dict[str, int] = {}
        self.gaps: list[tuple[str, int, int]] = []  # (symbol, expected, got)
        self.trades: dict[str, int] = {}
        self.volume: dict[str, int] = {}
        self.last_price: dict[str, int] = {}
        self.anomalies = 0

    def save_state(self) -> dict:
        """Everything applied so far, as JSON-ready data (a journal snapshot of market data)."""
        return {"orders": {s: [[oid, int(side), price, qty] for oid, (side, price, qty) in orders.items()]
                           for s, orders in self.orders.items()},
                "last_seq": self.last_seq, "gaps": [list(gap) for gap in self.gaps], "trades": self.trades,
                "volume": self.volume, "last_price": self.last_price, "anomalies": self.anomalies}

    def load_state(self, state: dict) -> None:
        """Become the book :meth:`save_state` described (the levels are summed again from the orders)."""
        self.__init__()  # type: ignore[misc]
        for symbol, orders in state["orders"].items():
            own, levels = self._symbol(symbol)
            for order_id, side, price, qty in orders:
                own[order_id] = [Side(side), price, qty]
                levels[Side(side)][price] = levels[Side(side)].get(price, 0) + qty
        self.last_seq = dict(state["last_seq"])
        self.gaps = [tuple(gap) for gap in state["gaps"]]  # type: ignore[misc]
        self.trades, self.volume = dict(state["trades"]), dict(state["volume"])
        self.last_price, self.anomalies = dict(state["last_price"]), state["anomalies"]

    def _symbol(self, symbol: str) -> tuple[dict[int, list], dict[Side, dict[int, int]]]:
        orders = self.orders.get(symbol)
        if orders is None:
            orders = self.orders[symbol] = {}
            self.levels[symbol] = {Side.BUY: {}, Side.SELL: {}}
        return orders, self.levels[symbol]

    def apply(self, event: Event) -> None:
        symbol = event[1]
        seq = event[0]
        if seq is not None:
            expected = self.last_seq.get(symbol, 0) + 1
            if seq != expected:
                self.gaps.append((symbol, expected, seq))
            self.last_seq[symbol] = seq
        kind = type(event)
        if kind is Fill:
            self.trades[symbol] = self.trades.get(symbol, 0) + 1
            self.volume[symbol] = self.volume.get(symbol, 0) + event.qty  # type: ignore[attr-defined]
            self.last_price[symbol] = event.price  # type: ignore[attr-defined]
            self._reduce(symbol, event.maker_order_id, event.qty)  # type: ignore[attr-defined]
        elif kind is OrderAdded:
            orders, levels = self._symbol(symbol)
            order_id, side, price, qty = event[2], event[3], event[4], event[5]
            if order_id in orders:
                self.anomalies += 1
                return
            orders[order_id] = [side, price, qty]
            side_levels = levels[side]
            side_levels[price] = side_levels.get(price, 0) + qty
        elif kind is OrderReduced:
            self._reduce(symbol, event[2], event[3])
        elif kind is OrderRemoved:
            self._reduce(symbol, event[2], event[3])

    def _reduce(self, symbol: str, order_id: int, qty: int) -> None:
        orders, levels = self._symbol(symbol)
        entry = orders.get(order_id)
        if entry is None or entry[2] < qty:
            self.anomalies += 1
            return
        side, price, visible = entry
        entry[2] = visible - qty
        side_levels = levels[side]
        left = side_levels[price] - qty
        if left:
            side_levels[price] = left
        else:
            del side_levels[price]
        if not entry[2]:
            del orders[order_id]

    def depth(self, symbol: str, levels: int | None = None) -> dict[str, list[tuple[int, int, int]]]:
        """Same shape as :meth:`exchange.engine.OrderBook.depth`: (price, qty, order count), best first."""
        orders, side_levels = self._symbol(symbol)
        counts: dict[tuple[Side, int], int] = {}
        for side, price, _ in orders.values():
            counts[(side, price)] = counts.get((side, price), 0) + 1
        out = {}
        for name, side, reverse in (("bids", Side.BUY, True), ("asks", Side.SELL, False)):
            prices = sorted(side_levels[side], reverse=reverse)
            if levels is not None:
                prices = prices[:levels]
            out[name] = [(p, side_levels[side][p], counts[(side, p)]) for p in prices]
        return out

    def bbo(self, symbol: str) -> tuple[int | None, int, int | None, int]:
        _, side_levels = self._symbol(symbol)
        bids, asks = side_levels[Side.BUY], side_levels[Side.SELL]
        bid = max(bids) if bids else None
        ask = min(asks) if asks else None
        return bid, bids.get(bid, 0) if bid is not None else 0, ask, asks.get(ask, 0) if ask is not None else 0
