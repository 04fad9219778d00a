"""Feed-side order book rebuilt from decoded ITCH 5.0 messages (dicts as produced by ``exchange.itch``).

For every stock it keeps the order-level book (L3: order reference -> side, price, shares, in time
priority within each price level) and the price-level book (L2: aggregated shares per price per side).

Message effects: A/F add an order; E/C execute part or all of one; X cancels part of one; D deletes one;
U replaces one (the old reference leaves the book, the new one enters with the new price and shares on the
same side, losing time priority); R maps a stock locate to its symbol; P, Q, B and all other types do not
touch the book. Order reference numbers are unique for the whole day across all stocks (spec 4.3), so
orders are indexed by reference alone.

A feed joined mid-day refers to orders it never saw: such messages are counted per type in
``unknown_order_messages`` and otherwise ignored. Other oddities (a reference added twice, more shares
executed or cancelled than remain, an unknown side, an add of zero shares) are counted in ``anomalies``.
Nothing raises.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Iterable
from typing import Any

__all__ = ["BUY", "SELL", "BookOrder", "L3Book", "PriceLevel", "StockBook"]

BUY = "B"
SELL = "S"


class BookOrder:
    """One resting order."""

    __slots__ = ("book", "price", "ref", "shares", "side")

    def __init__(self, ref: int, book: StockBook, side: str, price: int, shares: int) -> None:
        self.ref = ref
        self.book = book
        self.side = side
        self.price = price
        self.shares = shares

    def __repr__(self) -> str:
        return f"BookOrder(ref={self.ref}, side={self.side!r}, price={self.price}, shares={self.shares})"


class PriceLevel:
    """All orders at one price on one side: total shares plus ref -> shares in time priority."""

    __slots__ = ("orders", "price", "shares")

    def __init__(self, price: int) -> None:
        self.price = price
        self.shares = 0
        self.orders: dict[int, int] = {}  # insertion order is time priority


class StockBook:
    """Both sides of one stock's book. Best bid is ``bid_prices[-1]``, best ask ``ask_prices[0]``."""

    __slots__ = ("ask_prices", "asks", "bid_prices", "bids", "locate", "order_count", "symbol")

    def __init__(self, locate: int, symbol: str = "") -> None:
        self.locate = locate
        self.symbol = symbol
        self.bids: dict[int, PriceLevel] = {}
        self.asks: dict[int, PriceLevel] = {}
        # Sorted ascending on both sides; kept in step with the dicts via bisect.
        self.bid_prices: list[int] = []
        self.ask_prices: list[int] = []
        self.order_count = 0

    def _side(self, side: str) -> tuple[dict[int, PriceLevel], list[int]]:
        return (self.bids, self.bid_prices) if side == BUY else (self.asks, self.ask_prices)

    def _add(self, order: BookOrder) -> None:
        levels, prices = self._side(order.side)
        level = levels.get(order.price)
        if level is None:
            level = levels[order.price] = PriceLevel(order.price)
            insort(prices, order.price)
        level.orders[order.ref] = order.shares
        level.shares += order.shares
        self.order_count += 1

    def _reduce(self, order: BookOrder, shares: int) -> None:
        """Take ``shares`` (<= order.shares) off the order; removes it from its level at zero."""
        levels, prices = self._side(order.side)
        level = levels[order.price]
        order.shares -= shares
        level.shares -= shares
        if order.shares:
            level.orders[order.ref] = order.shares
            return
        del level.orders[order.ref]
        self.order_count -= 1
        if not level.orders:
            del levels[order.price]
            del prices[bisect_left(prices, order.price)]

    def bbo(self) -> tuple[int | None, int | None, int | None, int | None]:
        """(bid_price, bid_shares, ask_price, ask_shares); None for an empty side."""
        bid_price = bid_qty = ask_price = ask_qty = None
        if self.bid_prices:
            bid_price = self.bid_prices[-1]
            bid_qty = self.bids[bid_price].shares
        if self.ask_prices:
            ask_price = self.ask_prices[0]
            ask_qty = self.asks[ask_price].shares
        return bid_price, bid_qty, ask_price, ask_qty

    def depth(self, n: int = 5) -> dict[str, list[tuple[int, int, int]]]:
        """Top ``n`` levels per side, best first, as (price, shares, order_count)."""
        n = max(n, 0)
        bids = [self.bids[p] for p in reversed(self.bid_prices[-n:])] if n else []
        asks = [self.asks[p] for p in self.ask_prices[:n]]
        return {
            "bids": [(lv.price, lv.shares, len(lv.orders)) for lv in bids],
            "asks": [(lv.price, lv.shares, len(lv.orders)) for lv in asks],
        }


class L3Book:
    """Order books for every stock of an ITCH stream; feed it messages with ``apply``."""

    def __init__(self) -> None:
        self.orders: dict[int, BookOrder] = {}
        self.books: dict[int, StockBook] = {}  # by stock locate
        self.locates: dict[str, int] = {}  # symbol -> stock locate
        self.messages = 0
        self.unknown_order_messages: Counter[str] = Counter()
        self.anomalies: Counter[str] = Counter()
        self._handlers = {
            "A": self._on_add,
            "F": self._on_add,
            "E": self._on_execute,
            "C": self._on_execute,
            "X": self._on_cancel,
            "D": self._on_delete,
            "U": self._on_replace,
            "R": self._on_directory,
        }

    # -- feeding ---------------------------------------------------------------------------------------

    def apply(self, msg: dict[str, Any]) -> None:
        """Apply one decoded ITCH message."""
        self.messages += 1
        handler = self._handlers.get(msg["type"])
        if handler is not None:
            handler(msg)

    def apply_all(self, messages: Iterable[dict[str, Any]]) -> None:
        """Apply a sequence of decoded messages."""
        handlers = self._handlers
        count = 0
        for msg in messages:
            count += 1
            handler = handlers.get(msg["type"])
            if handler is not None:
                handler(msg)
        self.messages += count

    def _book(self, locate: int, symbol: str = "") -> StockBook:
        book = self.books.get(locate)
        if book is None:
            book = self.books[locate] = StockBook(locate, symbol)
            if symbol:
                self.locates.setdefault(symbol, locate)
        elif symbol and not book.symbol:
            # A feed joined after the directory learns symbols from add orders.
            book.symbol = symbol
            self.locates.setdefault(symbol, locate)
        return book

    def _on_directory(self, msg: dict[str, Any]) -> None:
        locate, symbol = msg["stock_locate"], msg["stock"]
        book = self._book(locate)
        if book.symbol and book.symbol != symbol:
            self.locates.pop(book.symbol, None)
        book.symbol = symbol
        self.locates[symbol] = locate

    def _on_add(self, msg: dict[str, Any]) -> None:
        side = msg["buy_sell_indicator"]
        if side != BUY and side != SELL:
            self.anomalies["bad_side"] += 1
            return
        if msg["shares"] <= 0:
            self.anomalies["zero_shares"] += 1
            return
        ref = msg["order_reference_number"]
        old = self.orders.pop(ref, None)
        if old is not None:
            self.anomalies["duplicate_add"] += 1
            old.book._reduce(old, old.shares)
        book = self._book(msg["stock_locate"], msg["stock"])
        order = BookOrder(ref, book, side, msg["price"], msg["shares"])
        self.orders[ref] = order
        book._add(order)

    def _take(self, msg: dict[str, Any], ref: int, shares: int) -> None:
        order = self.orders.get(ref)
        if order is None:
            self.unknown_order_messages[msg["type"]] += 1
            return
        if shares >= order.shares:
            if shares > order.shares:
                self.anomalies["overfill"] += 1
            del self.orders[ref]
            shares = order.shares
        order.book._reduce(order, shares)

    def _on_execute(self, msg: dict[str, Any]) -> None:
        self._take(msg, msg["order_reference_number"], msg["executed_shares"])

    def _on_cancel(self, msg: dict[str, Any]) -> None:
        self._take(msg, msg["order_reference_number"], msg["cancelled_shares"])

    def _on_delete(self, msg: dict[str, Any]) -> None:
        order = self.orders.pop(msg["order_reference_number"], None)
        if order is None:
            self.unknown_order_messages["D"] += 1
            return
        order.book._reduce(order, order.shares)

    def _on_replace(self, msg: dict[str, Any]) -> None:
        old = self.orders.pop(msg["original_order_reference_number"], None)
        if old is None:
            # The side is unknown, so the new order cannot be placed either.
            self.unknown_order_messages["U"] += 1
            return
        book = old.book
        book._reduce(old, old.shares)
        if msg["shares"] <= 0:
            self.anomalies["zero_shares"] += 1
            return
        ref = msg["new_order_reference_number"]
        clash = self.orders.pop(ref, None)
        if clash is not None:
            self.anomalies["duplicate_add"] += 1
            clash.book._reduce(clash, clash.shares)
        order = BookOrder(ref, book, old.side, msg["price"], msg["shares"])
        self.orders[ref] = order
        book._add(order)

    # -- queries ---------------------------------------------------------------------------------------

    def book(self, symbol: str) -> StockBook | None:
        """The book of ``symbol``, or None if the symbol has not been seen."""
        locate = self.locates.get(symbol)
        return None if locate is None else self.books.get(locate)

    def symbols(self) -> list[str]:
        """Known symbols, sorted."""
        return sorted(self.locates)

    def bbo(self, symbol: str) -> tuple[int | None, int | None, int | None, int | None]:
        """(bid_price, bid_shares, ask_price, ask_shares) of ``symbol``; None for an empty/unknown side."""
        book = self.book(symbol)
        return (None, None, None, None) if book is None else book.bbo()

    def depth(self, symbol: str, n: int = 5) -> dict[str, list[tuple[int, int, int]]]:
        """Top ``n`` levels per side of ``symbol``, best first, as (price, shares, order_count)."""
        book = self.book(symbol)
        return {"bids": [], "asks": []} if book is None else book.depth(n)

    def orders_at(self, symbol: str, side: str, price: int) -> list[tuple[int, int]]:
        """Orders resting at ``price`` on ``side`` ("B"/"S") of ``symbol``, as (ref, shares) in time order."""
        book = self.book(symbol)
        if book is None:
            return []
        level = (book.bids if side == BUY else book.asks).get(price)
        return [] if level is None else list(level.orders.items())

    def check(self) -> list[str]:
        """Internal consistency problems (empty when all is well): level totals vs orders, sortedness,
        positive shares, the order index agreeing with the levels."""
        problems = []
        seen = 0
        for book in self.books.values():
            count = 0
            for side, levels, prices in (
                (BUY, book.bids, book.bid_prices),
                (SELL, book.asks, book.ask_prices),
            ):
                if prices != sorted(levels) or len(prices) != len(set(prices)):
                    problems.append(f"locate {book.locate} {side}: price list out of step with levels")
                for price, level in levels.items():
                    if not level.orders:
                        problems.append(f"locate {book.locate} {side} {price}: empty level kept")
                    if level.shares != sum(level.orders.values()):
                        problems.append(f"locate {book.locate} {side} {price}: level total != sum of orders")
                    for ref, shares in level.orders.items():
                        order = self.orders.get(ref)
                        if shares <= 0:
                            problems.append(f"order {ref}: {shares} shares")
                        if order is None or order.book is not book or order.side != side:
                            problems.append(f"order {ref}: not indexed where it rests")
                        elif order.price != price or order.shares != shares:
                            problems.append(f"order {ref}: index disagrees with level")
                    count += len(level.orders)
            if count != book.order_count:
                problems.append(f"locate {book.locate}: order_count {book.order_count} != {count}")
            seen += count
        if seen != len(self.orders):
            problems.append(f"{len(self.orders)} indexed orders, {seen} resting in levels")
        return problems
