"""Unit tests of the reference engine, one rule of docs/engine.md at a time.

Every test states the exact events a command must produce. ``Session`` numbers the expected events
itself (1, 2, 3... per book), so each test also checks that sequence numbers have no gaps, and it
compares events as ordered key/value lists, so the JSON key order of the spec is checked too. A
reject's ``text`` is free wording: it must be a non-empty string, and is otherwise not compared.
"""

from __future__ import annotations

import types

import pytest

from exchange.engine import BookProfile, Exchange, OrderBook
from exchange.instruments import Instrument
from exchange.orders import (
    CancelOrder,
    EndOfDay,
    Event,
    ModifyOrder,
    NewOrder,
    OrderType,
    Rejected,
    SelfTradePrevention,
    SetBasePrice,
    Side,
    TimeInForce,
)
from exchange.script import event_to_json

SYM = "XYZ"
BUY, SELL = Side.BUY, Side.SELL
GTC, DAY, IOC, FOK = TimeInForce.GTC, TimeInForce.DAY, TimeInForce.IOC, TimeInForce.FOK
MARKET = OrderType.MARKET
NEWEST = SelfTradePrevention.CANCEL_NEWEST
OLDEST = SelfTradePrevention.CANCEL_OLDEST
BOTH = SelfTradePrevention.CANCEL_BOTH
GRID = {SYM: Instrument(SYM, tick_size=5, lot_size=10, band=(50, 500))}  # for grid and band rejects
# The same grid without a band: the engine serves such a book through its fast paths.
PLAIN_GRID = {SYM: Instrument(SYM, tick_size=5, lot_size=10)}
SEQ = object()  # placeholder: Session fills in the expected sequence number


# -- command and event builders --------------------------------------------------------------------------


def new(oid: object, account: object, side: object, price: object, qty: object, symbol: object = SYM,
        **kw: object) -> NewOrder:
    if kw.get("order_type") is MARKET and "tif" not in kw:
        kw["tif"] = IOC  # the JSON default for market orders (NewOrder's own default is gtc)
    return NewOrder(symbol, oid, account, side, price, qty, **kw)  # type: ignore[arg-type]


def modify(oid: object, qty: object = None, price: object = None) -> ModifyOrder:
    return ModifyOrder(SYM, oid, qty=qty, price=price)  # type: ignore[arg-type]


def cancel(oid: object) -> CancelOrder:
    return CancelOrder(SYM, oid)  # type: ignore[arg-type]


def _event(kind: str, symbol: str = SYM, **fields: object) -> dict:
    return {"event": kind, "seq": SEQ, "symbol": symbol, **fields}


def accepted(oid: int, account: str, side: str, price: int | None, qty: int, type: str = "limit", tif: str = "gtc",
             post_only: bool = False, display_qty: int = 0, stp: str | None = None, symbol: str = SYM) -> dict:
    out = _event("accepted", symbol, order_id=oid, account=account, side=side, type=type, tif=tif, price=price,
                 qty=qty)
    if post_only:
        out["post_only"] = True
    if display_qty:
        out["display_qty"] = display_qty
    if stp:
        out["stp"] = stp
    return out


def rejected(oid: object, op: str, reason: str, symbol: str = SYM) -> dict:
    return _event("rejected", symbol, order_id=oid, op=op, reason=reason)


def router_rejected(symbol: object, oid: object, op: str, reason: str) -> dict:
    return {"event": "rejected", "symbol": symbol, "order_id": oid, "op": op, "reason": reason}


def fill(price: int, qty: int, maker: int, taker: int, maker_account: str, taker_account: str, taker_side: str,
         match: int, symbol: str = SYM) -> dict:
    return _event("fill", symbol, price=price, qty=qty, maker_order_id=maker, taker_order_id=taker,
                  maker_account=maker_account, taker_account=taker_account, taker_side=taker_side,
                  match_number=match)


def cancelled(oid: int, account: str, qty: int, reason: str, symbol: str = SYM) -> dict:
    return _event("cancelled", symbol, order_id=oid, account=account, qty=qty, reason=reason)


def modified(oid: int, account: str, price: int, qty: int, kept: bool) -> dict:
    return _event("modified", order_id=oid, account=account, price=price, qty=qty, kept_priority=kept)


def added(oid: int, side: str, price: int, qty: int, symbol: str = SYM) -> dict:
    return _event("order_added", symbol, order_id=oid, side=side, price=price, qty=qty)


def reduced(oid: int, qty: int, remaining: int) -> dict:
    return _event("order_reduced", order_id=oid, qty=qty, remaining=remaining)


def removed(oid: int, qty: int) -> dict:
    return _event("order_removed", order_id=oid, qty=qty)


def base_set(price: int) -> dict:
    return _event("base_price_set", price=price)


class Session:
    """Feeds commands to an exchange and compares the events exactly with the expected ones."""

    def __init__(self, instruments: dict[str, Instrument] | None = None, profile: BookProfile | None = None) -> None:
        self.exchange = Exchange(instruments, profile=profile) if profile else Exchange(instruments)
        self.seq: dict[object, int] = {}

    def __call__(self, command: object, *expected: dict) -> list[Event]:
        events = self.exchange.process(command)  # type: ignore[arg-type]
        got = [event.to_dict() for event in events]
        for event in got:
            if event["event"] == "rejected":
                text = event.pop("text")
                assert isinstance(text, str) and text, f"a reject needs a text: {event}"
        want = []
        for event in expected:
            event = dict(event)
            if event.get("seq") is SEQ:
                self.seq[event["symbol"]] = self.seq.get(event["symbol"], 0) + 1
                event["seq"] = self.seq[event["symbol"]]
            want.append(list(event.items()))
        assert [list(e.items()) for e in got] == want, f"after {command!r}"
        return events

    def book(self, symbol: str = SYM) -> OrderBook:
        return self.exchange.books[symbol]  # type: ignore[return-value]

    def l3(self, side: Side, price: int, symbol: str = SYM) -> list[tuple[int, int, int]]:
        """(order_id, displayed, leaves) at one price, in priority order."""
        return [(o["order_id"], o["displayed"], o["leaves"]) for o in self.book(symbol).orders_at(side, price)]


# -- order types and time in force -----------------------------------------------------------------------


def test_gtc_limit_order_rests() -> None:
    s = Session()
    s(new(1, "A", BUY, 100, 10), accepted(1, "A", "buy", 100, 10), added(1, "buy", 100, 10))
    assert s.book().bbo() == (100, 10, None, 0)
    assert s.l3(BUY, 100) == [(1, 10, 10)]


def test_crossing_limit_order_trades_at_the_makers_price() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 10), accepted(1, "A", "sell", 100, 10), added(1, "sell", 100, 10))
    s(new(2, "B", BUY, 105, 10), accepted(2, "B", "buy", 105, 10), fill(100, 10, 1, 2, "A", "B", "buy", 1))
    assert s.book().bbo() == (None, 0, None, 0)
    assert s.book().depth() == {"bids": [], "asks": []}


def test_sell_taker_trades_at_the_higher_bid_price() -> None:
    s = Session()
    s(new(1, "A", BUY, 105, 10), accepted(1, "A", "buy", 105, 10), added(1, "buy", 105, 10))
    s(new(2, "B", SELL, 100, 4), accepted(2, "B", "sell", 100, 4), fill(105, 4, 1, 2, "A", "B", "sell", 1))
    assert s.l3(BUY, 105) == [(1, 6, 6)]


def test_partly_filled_limit_order_rests_its_remainder() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 10), accepted(1, "A", "sell", 100, 10), added(1, "sell", 100, 10))
    s(new(2, "B", BUY, 101, 25), accepted(2, "B", "buy", 101, 25), fill(100, 10, 1, 2, "A", "B", "buy", 1),
      added(2, "buy", 101, 15))
    assert s.book().bbo() == (101, 15, None, 0)


def test_limit_order_stops_at_its_limit() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 5), accepted(1, "A", "sell", 100, 5), added(1, "sell", 100, 5))
    s(new(2, "A", SELL, 101, 5), accepted(2, "A", "sell", 101, 5), added(2, "sell", 101, 5))
    s(new(3, "B", BUY, 100, 20), accepted(3, "B", "buy", 100, 20), fill(100, 5, 1, 3, "A", "B", "buy", 1),
      added(3, "buy", 100, 15))
    assert s.book().bbo() == (100, 15, 101, 5)


def test_market_order_sweeps_levels_and_cancels_the_rest_ioc() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 5), accepted(1, "A", "sell", 100, 5), added(1, "sell", 100, 5))
    s(new(2, "A", SELL, 102, 5), accepted(2, "A", "sell", 102, 5), added(2, "sell", 102, 5))
    s(new(3, "B", SELL, 101, 5), accepted(3, "B", "sell", 101, 5), added(3, "sell", 101, 5))
    s(new(4, "C", BUY, None, 20, order_type=MARKET),
      accepted(4, "C", "buy", None, 20, type="market", tif="ioc"),
      fill(100, 5, 1, 4, "A", "C", "buy", 1), fill(101, 5, 3, 4, "B", "C", "buy", 2),
      fill(102, 5, 2, 4, "A", "C", "buy", 3), cancelled(4, "C", 5, "ioc"))
    assert s.book().depth() == {"bids": [], "asks": []}


def test_market_sell_fully_filled_has_no_cancel() -> None:
    s = Session()
    s(new(1, "A", BUY, 100, 10), accepted(1, "A", "buy", 100, 10), added(1, "buy", 100, 10))
    s(new(2, "B", SELL, None, 4, order_type=MARKET), accepted(2, "B", "sell", None, 4, type="market", tif="ioc"),
      fill(100, 4, 1, 2, "A", "B", "sell", 1))
    assert s.l3(BUY, 100) == [(1, 6, 6)]


def test_market_order_on_an_empty_side_is_cancelled_ioc() -> None:
    s = Session()
    s(new(1, "A", BUY, 100, 10), accepted(1, "A", "buy", 100, 10), added(1, "buy", 100, 10))
    s(new(2, "B", BUY, None, 7, order_type=MARKET), accepted(2, "B", "buy", None, 7, type="market", tif="ioc"),
      cancelled(2, "B", 7, "ioc"))


def test_market_fok_order() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 5), accepted(1, "A", "sell", 100, 5), added(1, "sell", 100, 5))
    s(new(2, "A", SELL, 101, 5), accepted(2, "A", "sell", 101, 5), added(2, "sell", 101, 5))
    s(new(3, "B", BUY, None, 11, order_type=MARKET, tif=FOK),
      accepted(3, "B", "buy", None, 11, type="market", tif="fok"), cancelled(3, "B", 11, "fok"))
    s(new(4, "B", BUY, None, 10, order_type=MARKET, tif=FOK),
      accepted(4, "B", "buy", None, 10, type="market", tif="fok"),
      fill(100, 5, 1, 4, "A", "B", "buy", 1), fill(101, 5, 2, 4, "A", "B", "buy", 2))


def test_ioc_trades_what_it_can_and_cancels_the_rest() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 4), accepted(1, "A", "sell", 100, 4), added(1, "sell", 100, 4))
    s(new(2, "A", SELL, 101, 4), accepted(2, "A", "sell", 101, 4), added(2, "sell", 101, 4))
    s(new(3, "B", BUY, 100, 10, tif=IOC), accepted(3, "B", "buy", 100, 10, tif="ioc"),
      fill(100, 4, 1, 3, "A", "B", "buy", 1), cancelled(3, "B", 6, "ioc"))
    s(new(4, "B", BUY, 99, 10, tif=IOC), accepted(4, "B", "buy", 99, 10, tif="ioc"), cancelled(4, "B", 10, "ioc"))
    assert s.book().depth() == {"bids": [], "asks": [(101, 4, 1)]}


def test_day_orders_rest_then_expire_at_end_of_day_in_order_id_order() -> None:
    s = Session()
    s(new(5, "A", SELL, 101, 10, tif=DAY), accepted(5, "A", "sell", 101, 10, tif="day"), added(5, "sell", 101, 10))
    s(new(2, "B", BUY, 99, 10, tif=DAY), accepted(2, "B", "buy", 99, 10, tif="day"), added(2, "buy", 99, 10))
    s(new(3, "C", BUY, 98, 10), accepted(3, "C", "buy", 98, 10), added(3, "buy", 98, 10))
    s(new(4, "C", BUY, 101, 4), accepted(4, "C", "buy", 101, 4), fill(101, 4, 5, 4, "A", "C", "buy", 1))
    s(EndOfDay(SYM), cancelled(2, "B", 10, "expired"), removed(2, 10), cancelled(5, "A", 6, "expired"),
      removed(5, 6))
    assert s.book().depth() == {"bids": [(98, 10, 1)], "asks": []}
    s(EndOfDay(SYM))  # nothing left to expire: no events at all
    s(cancel(5), rejected(5, "cancel", "unknown_order"))


def test_fok_fills_completely_across_levels() -> None:
    s = Session()
    for oid, price in ((1, 100), (2, 101), (3, 102)):
        s(new(oid, "A", SELL, price, 5), accepted(oid, "A", "sell", price, 5), added(oid, "sell", price, 5))
    s(new(4, "B", BUY, 101, 10, tif=FOK), accepted(4, "B", "buy", 101, 10, tif="fok"),
      fill(100, 5, 1, 4, "A", "B", "buy", 1), fill(101, 5, 2, 4, "A", "B", "buy", 2))
    assert s.book().depth()["asks"] == [(102, 5, 1)]


def test_fok_that_cannot_fill_completely_trades_nothing() -> None:
    s = Session()
    for oid, price in ((1, 100), (2, 101), (3, 102)):
        s(new(oid, "A", SELL, price, 5), accepted(oid, "A", "sell", price, 5), added(oid, "sell", price, 5))
    # 15 are offered in all, but only 10 within the FOK's limit.
    s(new(4, "B", BUY, 101, 11, tif=FOK), accepted(4, "B", "buy", 101, 11, tif="fok"), cancelled(4, "B", 11, "fok"))
    assert s.book().depth()["asks"] == [(100, 5, 1), (101, 5, 1), (102, 5, 1)]
    # The kill used no match number.
    s(new(5, "B", BUY, 100, 1), accepted(5, "B", "buy", 100, 1), fill(100, 1, 1, 5, "A", "B", "buy", 1))


def test_fok_fillable_only_thanks_to_iceberg_reserve_refreshes() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 30, display_qty=10), accepted(1, "A", "sell", 100, 30, display_qty=10),
      added(1, "sell", 100, 10))
    s(new(2, "B", SELL, 100, 5), accepted(2, "B", "sell", 100, 5), added(2, "sell", 100, 5))
    # Only 15 are visible, 35 are there: 36 is too many...
    s(new(3, "C", BUY, 100, 36, tif=FOK), accepted(3, "C", "buy", 100, 36, tif="fok"), cancelled(3, "C", 36, "fok"))
    assert s.l3(SELL, 100) == [(1, 10, 30), (2, 5, 5)]
    # ...35 fills, through two refreshes that each go behind order 2.
    s(new(4, "C", BUY, 100, 35, tif=FOK), accepted(4, "C", "buy", 100, 35, tif="fok"),
      fill(100, 10, 1, 4, "A", "C", "buy", 1), added(1, "sell", 100, 10),
      fill(100, 5, 2, 4, "B", "C", "buy", 2),
      fill(100, 10, 1, 4, "A", "C", "buy", 3), added(1, "sell", 100, 10),
      fill(100, 10, 1, 4, "A", "C", "buy", 4))
    assert s.book().depth() == {"bids": [], "asks": []}


def test_fok_blocked_by_stp_cancel_newest_is_killed_untouched() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 5), accepted(1, "A", "sell", 100, 5), added(1, "sell", 100, 5))
    s(new(2, "B", SELL, 100, 10), accepted(2, "B", "sell", 100, 10), added(2, "sell", 100, 10))
    # 15 are offered, but A's own order comes first and cancel_newest would stop there.
    s(new(3, "A", BUY, 100, 10, tif=FOK, stp=NEWEST),
      accepted(3, "A", "buy", 100, 10, tif="fok", stp="cancel_newest"), cancelled(3, "A", 10, "fok"))
    assert s.l3(SELL, 100) == [(1, 5, 5), (2, 10, 10)]
    # With cancel_oldest the own order goes, and the rest fills the FOK completely.
    s(new(4, "A", BUY, 100, 10, tif=FOK, stp=OLDEST),
      accepted(4, "A", "buy", 100, 10, tif="fok", stp="cancel_oldest"), cancelled(1, "A", 5, "stp"), removed(1, 5),
      fill(100, 10, 2, 4, "B", "A", "buy", 1))


def test_fok_with_cancel_oldest_that_still_cannot_fill_cancels_nothing() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 5), accepted(1, "A", "sell", 100, 5), added(1, "sell", 100, 5))
    s(new(2, "B", SELL, 100, 5), accepted(2, "B", "sell", 100, 5), added(2, "sell", 100, 5))
    s(new(3, "A", BUY, 100, 10, tif=FOK, stp=OLDEST),
      accepted(3, "A", "buy", 100, 10, tif="fok", stp="cancel_oldest"), cancelled(3, "A", 10, "fok"))
    assert s.l3(SELL, 100) == [(1, 5, 5), (2, 5, 5)]


# -- post-only --------------------------------------------------------------------------------------------


def test_post_only_order_rests_when_it_does_not_cross() -> None:
    s = Session()
    s(new(1, "A", SELL, 101, 10), accepted(1, "A", "sell", 101, 10), added(1, "sell", 101, 10))
    s(new(2, "B", BUY, 100, 10, post_only=True), accepted(2, "B", "buy", 100, 10, post_only=True),
      added(2, "buy", 100, 10))
    s(new(3, "B", SELL, 105, 10, post_only=True, tif=DAY), accepted(3, "B", "sell", 105, 10, tif="day",
                                                                     post_only=True), added(3, "sell", 105, 10))


def test_post_only_order_that_would_cross_is_cancelled() -> None:
    s = Session()
    s(new(1, "A", SELL, 101, 10), accepted(1, "A", "sell", 101, 10), added(1, "sell", 101, 10))
    s(new(2, "B", BUY, 101, 10, post_only=True), accepted(2, "B", "buy", 101, 10, post_only=True),
      cancelled(2, "B", 10, "post_only"))
    s(new(3, "B", BUY, 150, 4, post_only=True), accepted(3, "B", "buy", 150, 4, post_only=True),
      cancelled(3, "B", 4, "post_only"))
    s(new(4, "C", BUY, 100, 10), accepted(4, "C", "buy", 100, 10), added(4, "buy", 100, 10))
    s(new(5, "B", SELL, 100, 10, post_only=True), accepted(5, "B", "sell", 100, 10, post_only=True),
      cancelled(5, "B", 10, "post_only"))
    assert s.book().depth() == {"bids": [(100, 10, 1)], "asks": [(101, 10, 1)]}


def test_post_only_order_repriced_through_the_spread_by_modify_is_cancelled() -> None:
    s = Session()
    s(new(1, "A", SELL, 101, 10), accepted(1, "A", "sell", 101, 10), added(1, "sell", 101, 10))
    s(new(2, "B", BUY, 99, 10, post_only=True), accepted(2, "B", "buy", 99, 10, post_only=True),
      added(2, "buy", 99, 10))
    s(modify(2, price=100), modified(2, "B", 100, 10, False), removed(2, 10), added(2, "buy", 100, 10))
    s(modify(2, price=101), modified(2, "B", 101, 10, False), removed(2, 10), cancelled(2, "B", 10, "post_only"))
    assert s.book().depth() == {"bids": [], "asks": [(101, 10, 1)]}
    s(cancel(2), rejected(2, "cancel", "unknown_order"))


# -- reserve (iceberg) orders -----------------------------------------------------------------------------


def test_iceberg_shows_only_its_display_quantity() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 50, display_qty=10), accepted(1, "A", "sell", 100, 50, display_qty=10),
      added(1, "sell", 100, 10))
    assert s.book().bbo() == (None, 0, 100, 10)
    assert s.book().depth() == {"bids": [], "asks": [(100, 10, 1)]}
    assert s.l3(SELL, 100) == [(1, 10, 50)]
    assert s.book().resting_qty() == 50


def test_iceberg_refresh_joins_the_back_of_the_level() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 30, display_qty=10), accepted(1, "A", "sell", 100, 30, display_qty=10),
      added(1, "sell", 100, 10))
    s(new(2, "B", SELL, 100, 10), accepted(2, "B", "sell", 100, 10), added(2, "sell", 100, 10))
    s(new(3, "C", BUY, 100, 15), accepted(3, "C", "buy", 100, 15), fill(100, 10, 1, 3, "A", "C", "buy", 1),
      added(1, "sell", 100, 10), fill(100, 5, 2, 3, "B", "C", "buy", 2))
    assert s.l3(SELL, 100) == [(2, 5, 5), (1, 10, 20)]


def test_refreshed_slice_trades_again_in_the_same_sweep_after_the_orders_ahead() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 20, display_qty=10), accepted(1, "A", "sell", 100, 20, display_qty=10),
      added(1, "sell", 100, 10))
    s(new(2, "B", SELL, 100, 5), accepted(2, "B", "sell", 100, 5), added(2, "sell", 100, 5))
    s(new(3, "C", BUY, 100, 30), accepted(3, "C", "buy", 100, 30),
      fill(100, 10, 1, 3, "A", "C", "buy", 1), added(1, "sell", 100, 10),
      fill(100, 5, 2, 3, "B", "C", "buy", 2),
      fill(100, 10, 1, 3, "A", "C", "buy", 3),  # reserve used up: no refresh after this one
      added(3, "buy", 100, 5))
    assert s.book().depth() == {"bids": [(100, 5, 1)], "asks": []}


def test_iceberg_last_slice_is_what_remains() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 25, display_qty=10), accepted(1, "A", "sell", 100, 25, display_qty=10),
      added(1, "sell", 100, 10))
    s(new(2, "B", BUY, 100, 20), accepted(2, "B", "buy", 100, 20), fill(100, 10, 1, 2, "A", "B", "buy", 1),
      added(1, "sell", 100, 10), fill(100, 10, 1, 2, "A", "B", "buy", 2), added(1, "sell", 100, 5))
    assert s.l3(SELL, 100) == [(1, 5, 5)]


def test_iceberg_entering_after_a_trade_rests_a_display_slice() -> None:
    s = Session()
    s(new(1, "A", BUY, 100, 5), accepted(1, "A", "buy", 100, 5), added(1, "buy", 100, 5))
    s(new(2, "B", SELL, 100, 30, display_qty=10), accepted(2, "B", "sell", 100, 30, display_qty=10),
      fill(100, 5, 1, 2, "A", "B", "sell", 1), added(2, "sell", 100, 10))
    assert s.l3(SELL, 100) == [(2, 10, 25)]


def test_cancelling_an_iceberg_cancels_its_hidden_reserve_too() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 50, display_qty=10), accepted(1, "A", "sell", 100, 50, display_qty=10),
      added(1, "sell", 100, 10))
    s(new(2, "B", BUY, 100, 4), accepted(2, "B", "buy", 100, 4), fill(100, 4, 1, 2, "A", "B", "buy", 1))
    s(cancel(1), cancelled(1, "A", 46, "user"), removed(1, 6))
    assert s.book().resting_qty() == 0


# -- price-time priority ----------------------------------------------------------------------------------


def test_within_a_level_the_oldest_order_trades_first() -> None:
    s = Session()
    for oid, account in ((1, "A"), (2, "B"), (3, "C")):
        s(new(oid, account, BUY, 100, 10), accepted(oid, account, "buy", 100, 10), added(oid, "buy", 100, 10))
    s(new(4, "D", SELL, 100, 25), accepted(4, "D", "sell", 100, 25), fill(100, 10, 1, 4, "A", "D", "sell", 1),
      fill(100, 10, 2, 4, "B", "D", "sell", 2), fill(100, 5, 3, 4, "C", "D", "sell", 3))
    assert s.l3(BUY, 100) == [(3, 5, 5)]


def test_a_better_price_trades_first_even_when_newer() -> None:
    s = Session()
    s(new(1, "A", BUY, 99, 10), accepted(1, "A", "buy", 99, 10), added(1, "buy", 99, 10))
    s(new(2, "B", BUY, 100, 10), accepted(2, "B", "buy", 100, 10), added(2, "buy", 100, 10))
    s(new(3, "C", BUY, 98, 10), accepted(3, "C", "buy", 98, 10), added(3, "buy", 98, 10))
    s(new(4, "D", SELL, 98, 25), accepted(4, "D", "sell", 98, 25), fill(100, 10, 2, 4, "B", "D", "sell", 1),
      fill(99, 10, 1, 4, "A", "D", "sell", 2), fill(98, 5, 3, 4, "C", "D", "sell", 3))


def test_asks_trade_lowest_price_first() -> None:
    s = Session()
    s(new(1, "A", SELL, 103, 1), accepted(1, "A", "sell", 103, 1), added(1, "sell", 103, 1))
    s(new(2, "A", SELL, 101, 1), accepted(2, "A", "sell", 101, 1), added(2, "sell", 101, 1))
    s(new(3, "A", SELL, 102, 1), accepted(3, "A", "sell", 102, 1), added(3, "sell", 102, 1))
    s(new(4, "B", BUY, 103, 3), accepted(4, "B", "buy", 103, 3), fill(101, 1, 2, 4, "A", "B", "buy", 1),
      fill(102, 1, 3, 4, "A", "B", "buy", 2), fill(103, 1, 1, 4, "A", "B", "buy", 3))


# -- modify -----------------------------------------------------------------------------------------------


def _two_bids(s: Session) -> None:
    s(new(1, "A", BUY, 100, 10), accepted(1, "A", "buy", 100, 10), added(1, "buy", 100, 10))
    s(new(2, "B", BUY, 100, 10), accepted(2, "B", "buy", 100, 10), added(2, "buy", 100, 10))


def test_quantity_down_keeps_priority_and_reports_order_reduced() -> None:
    s = Session()
    _two_bids(s)
    s(modify(1, qty=4), modified(1, "A", 100, 4, True), reduced(1, 6, 4))
    assert s.l3(BUY, 100) == [(1, 4, 4), (2, 10, 10)]
    s(new(3, "C", SELL, 100, 6), accepted(3, "C", "sell", 100, 6), fill(100, 4, 1, 3, "A", "C", "sell", 1),
      fill(100, 2, 2, 3, "B", "C", "sell", 2))


def test_quantity_up_loses_priority() -> None:
    s = Session()
    _two_bids(s)
    s(modify(1, qty=12), modified(1, "A", 100, 12, False), removed(1, 10), added(1, "buy", 100, 12))
    assert s.l3(BUY, 100) == [(2, 10, 10), (1, 12, 12)]
    s(new(3, "C", SELL, 100, 5), accepted(3, "C", "sell", 100, 5), fill(100, 5, 2, 3, "B", "C", "sell", 1))


def test_price_change_loses_priority_even_back_at_the_old_price() -> None:
    s = Session()
    _two_bids(s)
    s(modify(1, price=99), modified(1, "A", 99, 10, False), removed(1, 10), added(1, "buy", 99, 10))
    s(modify(1, price=100), modified(1, "A", 100, 10, False), removed(1, 10), added(1, "buy", 100, 10))
    assert s.l3(BUY, 100) == [(2, 10, 10), (1, 10, 10)]
    assert s.book().depth()["bids"] == [(100, 20, 2)]


def test_price_change_with_smaller_quantity_also_loses_priority() -> None:
    s = Session()
    s(new(1, "A", BUY, 101, 10), accepted(1, "A", "buy", 101, 10), added(1, "buy", 101, 10))
    s(new(2, "B", BUY, 100, 10), accepted(2, "B", "buy", 100, 10), added(2, "buy", 100, 10))
    s(modify(1, qty=5, price=100), modified(1, "A", 100, 5, False), removed(1, 10), added(1, "buy", 100, 5))
    assert s.l3(BUY, 100) == [(2, 10, 10), (1, 5, 5)]


def test_repriced_order_that_crosses_trades_as_the_taker() -> None:
    s = Session()
    s(new(1, "A", BUY, 99, 10), accepted(1, "A", "buy", 99, 10), added(1, "buy", 99, 10))
    s(new(2, "B", SELL, 100, 4), accepted(2, "B", "sell", 100, 4), added(2, "sell", 100, 4))
    s(new(3, "C", SELL, 101, 4), accepted(3, "C", "sell", 101, 4), added(3, "sell", 101, 4))
    s(modify(1, price=100), modified(1, "A", 100, 10, False), removed(1, 10),
      fill(100, 4, 2, 1, "B", "A", "buy", 1), added(1, "buy", 100, 6))
    assert s.book().bbo() == (100, 6, 101, 4)


def test_repriced_order_that_fills_completely_leaves_no_trace() -> None:
    s = Session()
    s(new(1, "A", SELL, 102, 4), accepted(1, "A", "sell", 102, 4), added(1, "sell", 102, 4))
    s(new(2, "B", BUY, 100, 10), accepted(2, "B", "buy", 100, 10), added(2, "buy", 100, 10))
    s(modify(1, price=100), modified(1, "A", 100, 4, False), removed(1, 4), fill(100, 4, 2, 1, "B", "A", "sell", 1))
    s(cancel(1), rejected(1, "cancel", "unknown_order"))


def test_modify_that_changes_nothing_is_rejected() -> None:
    s = Session()
    s(new(1, "A", BUY, 100, 10), accepted(1, "A", "buy", 100, 10), added(1, "buy", 100, 10))
    s(modify(1, qty=10), rejected(1, "modify", "no_change"))
    s(modify(1, price=100), rejected(1, "modify", "no_change"))
    s(modify(1, qty=10, price=100), rejected(1, "modify", "no_change"))
    s(modify(1), rejected(1, "modify", "no_change"))
    # qty is the new *remaining* quantity: after a fill of 4, 6 is "no change".
    s(new(2, "B", SELL, 100, 4), accepted(2, "B", "sell", 100, 4), fill(100, 4, 1, 2, "A", "B", "sell", 1))
    s(modify(1, qty=6), rejected(1, "modify", "no_change"))
    s(modify(1, qty=5), modified(1, "A", 100, 5, True), reduced(1, 1, 5))


def test_modify_or_cancel_of_an_order_that_is_not_resting_is_rejected() -> None:
    s = Session()
    s(modify(9, qty=5), rejected(9, "modify", "unknown_order"))
    s(new(1, "A", SELL, 100, 5), accepted(1, "A", "sell", 100, 5), added(1, "sell", 100, 5))
    s(new(2, "B", BUY, 100, 5), accepted(2, "B", "buy", 100, 5), fill(100, 5, 1, 2, "A", "B", "buy", 1))
    s(modify(1, qty=3), rejected(1, "modify", "unknown_order"))  # filled
    s(modify(2, qty=3), rejected(2, "modify", "unknown_order"))  # traded completely on entry, never rested
    s(new(3, "A", BUY, 90, 5), accepted(3, "A", "buy", 90, 5), added(3, "buy", 90, 5))
    s(cancel(3), cancelled(3, "A", 5, "user"), removed(3, 5))
    s(modify(3, price=91), rejected(3, "modify", "unknown_order"))  # cancelled
    s(cancel(3), rejected(3, "cancel", "unknown_order"))
    s(new(4, "A", BUY, 90, 5, tif=IOC), accepted(4, "A", "buy", 90, 5, tif="ioc"), cancelled(4, "A", 5, "ioc"))
    s(modify(4, qty=1), rejected(4, "modify", "unknown_order"))


@pytest.mark.parametrize("oid", ["5", 5.0, None, True, -5])
def test_modify_and_cancel_need_the_exact_integer_id(oid: object) -> None:
    s = Session()
    s(new(5, "A", BUY, 100, 10), accepted(5, "A", "buy", 100, 10), added(5, "buy", 100, 10))
    s(modify(oid, qty=3), rejected(oid, "modify", "unknown_order"))
    s(cancel(oid), rejected(oid, "cancel", "unknown_order"))
    assert s.l3(BUY, 100) == [(5, 10, 10)]


def test_modify_of_an_iceberg_reduces_the_reserve_first() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 50, display_qty=10), accepted(1, "A", "sell", 100, 50, display_qty=10),
      added(1, "sell", 100, 10))
    s(new(2, "B", SELL, 100, 5), accepted(2, "B", "sell", 100, 5), added(2, "sell", 100, 5))
    s(modify(1, qty=30), modified(1, "A", 100, 30, True))  # only the hidden part shrank: no book change
    assert s.l3(SELL, 100) == [(1, 10, 30), (2, 5, 5)]
    s(modify(1, qty=6), modified(1, "A", 100, 6, True), reduced(1, 4, 6))
    assert s.l3(SELL, 100) == [(1, 6, 6), (2, 5, 5)]
    assert s.book().bbo() == (None, 0, 100, 11)


def test_modify_of_a_partly_traded_iceberg() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 50, display_qty=10), accepted(1, "A", "sell", 100, 50, display_qty=10),
      added(1, "sell", 100, 10))
    s(new(2, "B", BUY, 100, 4), accepted(2, "B", "buy", 100, 4), fill(100, 4, 1, 2, "A", "B", "buy", 1))
    assert s.l3(SELL, 100) == [(1, 6, 46)]
    s(modify(1, qty=8), modified(1, "A", 100, 8, True))  # the 6 shown stay: only reserve went
    assert s.l3(SELL, 100) == [(1, 6, 8)]
    s(modify(1, qty=5), modified(1, "A", 100, 5, True), reduced(1, 1, 5))
    # The next slice after the visible part trades is what is left, not a full display_qty.
    s(modify(1, qty=30, price=101), modified(1, "A", 101, 30, False), removed(1, 5), added(1, "sell", 101, 10))
    s(new(3, "B", BUY, 101, 12), accepted(3, "B", "buy", 101, 12), fill(101, 10, 1, 3, "A", "B", "buy", 2),
      added(1, "sell", 101, 10), fill(101, 2, 1, 3, "A", "B", "buy", 3))
    assert s.l3(SELL, 101) == [(1, 8, 18)]


def test_iceberg_keeps_its_display_quantity_when_repriced() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 50, display_qty=10), accepted(1, "A", "sell", 100, 50, display_qty=10),
      added(1, "sell", 100, 10))
    s(modify(1, price=101, qty=55), modified(1, "A", 101, 55, False), removed(1, 10), added(1, "sell", 101, 10))
    assert s.l3(SELL, 101) == [(1, 10, 55)]


def test_modify_keeps_tif_and_stp_of_the_order() -> None:
    s = Session()
    s(new(1, "A", BUY, 99, 10, tif=DAY, stp=NEWEST), accepted(1, "A", "buy", 99, 10, tif="day", stp="cancel_newest"),
      added(1, "buy", 99, 10))
    s(new(2, "A", SELL, 100, 5), accepted(2, "A", "sell", 100, 5), added(2, "sell", 100, 5))
    s(modify(1, qty=20), modified(1, "A", 99, 20, False), removed(1, 10), added(1, "buy", 99, 20))
    s(EndOfDay(SYM), cancelled(1, "A", 20, "expired"), removed(1, 20))  # still a DAY order
    s(new(3, "A", BUY, 98, 10, stp=NEWEST), accepted(3, "A", "buy", 98, 10, stp="cancel_newest"),
      added(3, "buy", 98, 10))
    # Repriced into A's own ask: the order's own STP mode (cancel_newest) cancels it.
    s(modify(3, price=100), modified(3, "A", 100, 10, False), removed(3, 10), cancelled(3, "A", 10, "stp"))
    assert s.book().depth() == {"bids": [], "asks": [(100, 5, 1)]}


@pytest.mark.parametrize("grid", [GRID, PLAIN_GRID], ids=["band", "no-band"])
def test_modify_validates_the_new_values_like_a_new_order(grid: dict) -> None:
    s = Session(grid)
    s(new(1, "A", BUY, 100, 20), accepted(1, "A", "buy", 100, 20), added(1, "buy", 100, 20))
    s(modify(1, qty=0), rejected(1, "modify", "invalid_qty"))
    s(modify(1, qty=-10), rejected(1, "modify", "invalid_qty"))
    s(modify(1, qty="10"), rejected(1, "modify", "invalid_qty"))
    s(modify(1, qty=10.0), rejected(1, "modify", "invalid_qty"))
    s(modify(1, qty=15), rejected(1, "modify", "qty_off_lot"))
    s(modify(1, price=0), rejected(1, "modify", "invalid_price"))
    s(modify(1, price="100"), rejected(1, "modify", "invalid_price"))
    s(modify(1, price=102), rejected(1, "modify", "price_off_tick"))
    if grid is GRID:
        s(modify(1, price=505), rejected(1, "modify", "price_outside_band"))
    s(modify(1, qty=15, price=102), rejected(1, "modify", "qty_off_lot"))  # qty is checked first
    assert s.l3(BUY, 100) == [(1, 20, 20)]


# -- self-trade prevention --------------------------------------------------------------------------------


def _stp_book(s: Session) -> None:
    """Bids: B 5@100 (first), A 5@100, B 5@99."""
    s(new(1, "B", BUY, 100, 5), accepted(1, "B", "buy", 100, 5), added(1, "buy", 100, 5))
    s(new(2, "A", BUY, 100, 5), accepted(2, "A", "buy", 100, 5), added(2, "buy", 100, 5))
    s(new(3, "B", BUY, 99, 5), accepted(3, "B", "buy", 99, 5), added(3, "buy", 99, 5))


def test_stp_cancel_newest_cancels_the_taker_remainder() -> None:
    s = Session()
    _stp_book(s)
    s(new(4, "A", SELL, 99, 20, stp=NEWEST), accepted(4, "A", "sell", 99, 20, stp="cancel_newest"),
      fill(100, 5, 1, 4, "B", "A", "sell", 1), cancelled(4, "A", 15, "stp"))
    assert s.book().depth() == {"bids": [(100, 5, 1), (99, 5, 1)], "asks": []}


def test_stp_cancel_oldest_cancels_the_maker_and_goes_on() -> None:
    s = Session()
    _stp_book(s)
    s(new(4, "A", SELL, 99, 20, stp=OLDEST), accepted(4, "A", "sell", 99, 20, stp="cancel_oldest"),
      fill(100, 5, 1, 4, "B", "A", "sell", 1), cancelled(2, "A", 5, "stp"), removed(2, 5),
      fill(99, 5, 3, 4, "B", "A", "sell", 2), added(4, "sell", 99, 10))


def test_stp_cancel_both_cancels_maker_and_taker() -> None:
    s = Session()
    _stp_book(s)
    s(new(4, "A", SELL, 99, 20, stp=BOTH), accepted(4, "A", "sell", 99, 20, stp="cancel_both"),
      fill(100, 5, 1, 4, "B", "A", "sell", 1), cancelled(2, "A", 5, "stp"), removed(2, 5),
      cancelled(4, "A", 15, "stp"))
    assert s.book().depth() == {"bids": [(99, 5, 1)], "asks": []}


def test_without_stp_an_account_trades_with_itself() -> None:
    s = Session()
    _stp_book(s)
    s(new(4, "A", SELL, 99, 20), accepted(4, "A", "sell", 99, 20), fill(100, 5, 1, 4, "B", "A", "sell", 1),
      fill(100, 5, 2, 4, "A", "A", "sell", 2), fill(99, 5, 3, 4, "B", "A", "sell", 3), added(4, "sell", 99, 5))


def test_stp_cancel_oldest_cancels_an_iceberg_maker_with_its_reserve() -> None:
    s = Session()
    s(new(1, "A", BUY, 100, 30, display_qty=10), accepted(1, "A", "buy", 100, 30, display_qty=10),
      added(1, "buy", 100, 10))
    s(new(2, "A", SELL, 100, 5, stp=OLDEST), accepted(2, "A", "sell", 100, 5, stp="cancel_oldest"),
      cancelled(1, "A", 30, "stp"), removed(1, 10), added(2, "sell", 100, 5))


def test_stp_is_the_takers_choice_only() -> None:
    s = Session()
    s(new(1, "A", BUY, 100, 5, stp=NEWEST), accepted(1, "A", "buy", 100, 5, stp="cancel_newest"),
      added(1, "buy", 100, 5))
    s(new(2, "A", SELL, 100, 2), accepted(2, "A", "sell", 100, 2), fill(100, 2, 1, 2, "A", "A", "sell", 1))
    # And it applies to the same account only.
    s(new(3, "B", SELL, 100, 2, stp=BOTH), accepted(3, "B", "sell", 100, 2, stp="cancel_both"),
      fill(100, 2, 1, 3, "A", "B", "sell", 2))


def test_stp_on_a_market_order() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 5), accepted(1, "A", "sell", 100, 5), added(1, "sell", 100, 5))
    s(new(2, "A", BUY, None, 5, order_type=MARKET, stp=NEWEST),
      accepted(2, "A", "buy", None, 5, type="market", tif="ioc", stp="cancel_newest"), cancelled(2, "A", 5, "stp"))


# -- rejects ----------------------------------------------------------------------------------------------


def _grid_order(**kw: object) -> NewOrder:
    """A valid order on the GRID instrument (tick 5, lot 10, band 50..500) with fields replaced."""
    fields: dict = {"symbol": SYM, "order_id": 1, "account": "A", "side": BUY, "price": 100, "qty": 20}
    fields.update(kw)
    return NewOrder(**fields)


REJECTS = [
    *[({"order_id": v}, "invalid_order_id") for v in (0, -1, "1", 1.5, None, True)],
    *[({"account": v}, "invalid_account") for v in ("", "ABCDEFGHI", "A B", "é", "A\tB", None, 5)],
    *[({"side": v}, "invalid_side") for v in ("buy", None, 1, OrderType.LIMIT)],
    *[({"order_type": v}, "invalid_type") for v in ("limit", None, 1, Side.BUY)],
    *[({"tif": v}, "invalid_tif") for v in ("gtc", 1, Side.BUY)],
    *[({"stp": v}, "invalid_stp") for v in ("cancel_both", None, 1)],
    *[({"qty": v}, "invalid_qty") for v in (0, -10, 10.0, "10", None, True)],
    ({"qty": 15}, "qty_off_lot"),
    *[({"price": v}, "invalid_price") for v in (None, 0, -5, 100.0, "100")],
    ({"price": 102}, "price_off_tick"),
    ({"price": 45}, "price_outside_band"),
    ({"price": 505}, "price_outside_band"),
    *[({"display_qty": v}, "invalid_display_qty") for v in (5, 30, -10, 2.5, "10")],
    ({"display_qty": 10, "tif": IOC}, "invalid_display_qty"),
    ({"display_qty": 10, "tif": FOK}, "invalid_display_qty"),
    ({"post_only": True, "tif": IOC}, "invalid_post_only"),
    ({"post_only": True, "tif": FOK}, "invalid_post_only"),
    ({"order_type": MARKET, "tif": IOC}, "invalid_price"),  # a market order with a price
    ({"order_type": MARKET, "price": None, "tif": GTC}, "invalid_tif"),
    ({"order_type": MARKET, "price": None, "tif": DAY}, "invalid_tif"),
    ({"order_type": MARKET, "price": None, "tif": IOC, "display_qty": 10}, "invalid_display_qty"),
    ({"order_type": MARKET, "price": None, "tif": FOK, "post_only": True}, "invalid_post_only"),
]


# Every reject on both grids, except the band reject on the grid that has no band.
REJECT_CASES = [pytest.param(fields, reason, grid, id=f"{reason}-{fields}-{name}")
                for grid, name in ((GRID, "band"), (PLAIN_GRID, "no-band"))
                for fields, reason in REJECTS if not (grid is PLAIN_GRID and reason == "price_outside_band")]


@pytest.mark.parametrize(("fields", "reason", "grid"), REJECT_CASES)
def test_new_order_reject(fields: dict, reason: str, grid: dict) -> None:
    s = Session(grid)
    # Account A has traded before (the engine takes its fast path only for accounts it has seen).
    s(_grid_order(order_id=99, side=SELL, price=500), accepted(99, "A", "sell", 500, 20), added(99, "sell", 500, 20))
    command = _grid_order(**fields)
    s(command, rejected(command.order_id, "new", reason))
    assert s.book().depth() == {"bids": [], "asks": [(500, 20, 1)]}
    # Nothing changed: the next valid order is sequenced right after the reject.
    s(_grid_order(order_id=2), accepted(2, "A", "buy", 100, 20), added(2, "buy", 100, 20))


@pytest.mark.parametrize("fields", [{}, {"account": "ABCDEFGH"}, {"account": "~!#"}, {"price": 50}, {"price": 500},
                                    {"display_qty": 20}, {"display_qty": 10, "tif": DAY},
                                    {"order_type": MARKET, "price": None, "tif": IOC},
                                    {"post_only": True, "tif": DAY}])
def test_valid_edge_values_are_accepted(fields: dict) -> None:
    s = Session(GRID)
    events = s.exchange.process(_grid_order(**fields))
    assert events[0].to_dict()["event"] == "accepted", events


def test_the_first_failing_check_wins_in_the_documented_order() -> None:
    """Start from an order wrong in every way and fix one field at a time: the reasons come out in
    the order docs/engine.md lists them."""
    profile = BookProfile(name="hw", window_ticks=10, post_only=False)
    s = Session(GRID, profile)
    s(SetBasePrice(SYM, 100), base_set(100))  # window 50..145
    s(_grid_order(order_id=7, price=100), accepted(7, "A", "buy", 100, 20), added(7, "buy", 100, 20))
    fields: dict = {"order_id": 0, "account": "", "side": "up", "order_type": "x", "tif": "x", "stp": "x", "qty": 0,
                    "price": 0, "display_qty": -1, "post_only": True}
    steps = [
        ("invalid_order_id", {"order_id": 7}),
        ("duplicate_order_id", {"order_id": 8}),
        ("invalid_account", {"account": "A"}),
        ("invalid_side", {"side": SELL}),
        ("invalid_type", {"order_type": OrderType.LIMIT}),
        ("invalid_tif", {"tif": IOC}),
        ("invalid_stp", {"stp": SelfTradePrevention.NONE}),
        ("invalid_qty", {"qty": 15}),
        ("qty_off_lot", {"qty": 20}),
        ("invalid_price", {"price": 102}),
        ("price_off_tick", {"price": 505}),
        ("price_outside_band", {"price": 200}),
        ("price_outside_window", {"price": 120}),
        ("invalid_display_qty", {"display_qty": 0}),
        ("invalid_post_only", {"tif": GTC}),
        ("unsupported", {"post_only": False}),
    ]
    for reason, fix in steps:
        command = _grid_order(**fields)
        s(command, rejected(command.order_id, "new", reason))
        fields.update(fix)
    s(_grid_order(**fields), accepted(8, "A", "sell", 120, 20), added(8, "sell", 120, 20))


def test_duplicate_order_ids_are_rejected_for_the_life_of_the_book() -> None:
    s = Session()
    s(new(1, "A", SELL, 100, 5), accepted(1, "A", "sell", 100, 5), added(1, "sell", 100, 5))
    s(new(1, "B", BUY, 90, 5), rejected(1, "new", "duplicate_order_id"))  # still resting
    s(new(2, "B", BUY, 100, 5), accepted(2, "B", "buy", 100, 5), fill(100, 5, 1, 2, "A", "B", "buy", 1))
    s(new(1, "A", SELL, 100, 5), rejected(1, "new", "duplicate_order_id"))  # filled maker
    s(new(2, "A", SELL, 100, 5), rejected(2, "new", "duplicate_order_id"))  # filled taker
    s(new(3, "A", BUY, 90, 5, tif=IOC), accepted(3, "A", "buy", 90, 5, tif="ioc"), cancelled(3, "A", 5, "ioc"))
    s(new(3, "A", BUY, 90, 5), rejected(3, "new", "duplicate_order_id"))  # cancelled on entry
    s(new(4, "A", BUY, 90, 5), accepted(4, "A", "buy", 90, 5), added(4, "buy", 90, 5))
    s(cancel(4), cancelled(4, "A", 5, "user"), removed(4, 5))
    s(new(4, "A", BUY, 90, 5), rejected(4, "new", "duplicate_order_id"))  # cancelled by the user
    # Ids are per book: another symbol may use them.
    s(new(1, "A", BUY, 90, 5, symbol="ABC"), accepted(1, "A", "buy", 90, 5, symbol="ABC"),
      added(1, "buy", 90, 5, symbol="ABC"))


@pytest.mark.parametrize(("flag", "fields"), [
    ("market_orders", {"order_type": MARKET, "price": None, "tif": IOC}),
    ("reserve_orders", {"display_qty": 10}),
    ("post_only", {"post_only": True}),
    ("self_trade_prevention", {"stp": OLDEST}),
    ("day_orders", {"tif": DAY}),
    ("fok_orders", {"tif": FOK}),
])
def test_unsupported_features_of_a_restricted_profile(flag: str, fields: dict) -> None:
    restricted = Session(GRID, BookProfile(name="lite", **{flag: False}))
    command = _grid_order(**fields)
    restricted(command, rejected(1, "new", "unsupported"))
    full = Session(GRID, BookProfile(name="full"))
    assert full.exchange.process(command)[0].to_dict()["event"] == "accepted"


def test_any_display_qty_is_a_reserve_order_where_reserves_are_unsupported() -> None:
    """Equal to the quantity it shows everything, but a quantity increase would make it a reserve, which the gateware
    cannot hold: the driver refuses it, and so does the engine's profile (they gave different events)."""
    s = Session(GRID, BookProfile(name="lite", reserve_orders=False))
    s(_grid_order(display_qty=20), rejected(1, "new", "unsupported"))
    Session(GRID)(_grid_order(display_qty=20), accepted(1, "A", "buy", 100, 20, display_qty=20),
                  added(1, "buy", 100, 20))


def test_quantities_above_a_profiles_max_qty_are_unsupported() -> None:
    s = Session(GRID, BookProfile(name="narrow", max_qty=30))
    s(_grid_order(qty=40), rejected(1, "new", "unsupported"))
    s(_grid_order(qty=30), accepted(1, "A", "buy", 100, 30), added(1, "buy", 100, 30))
    s(ModifyOrder(SYM, 1, qty=40), rejected(1, "modify", "unsupported"))
    s(ModifyOrder(SYM, 1, qty=20), modified(1, "A", 100, 20, True), reduced(1, 10, 20))
    with pytest.raises(ValueError):
        BookProfile(max_qty=0)


def test_unknown_and_invalid_symbols_are_rejected_without_seq() -> None:
    s = Session(GRID)
    s(new(1, "A", BUY, 100, 10, symbol="ABC"), router_rejected("ABC", 1, "new", "unknown_symbol"))
    s(CancelOrder("ABC", 3), router_rejected("ABC", 3, "cancel", "unknown_symbol"))
    s(EndOfDay("ABC"), router_rejected("ABC", None, "end_of_day", "unknown_symbol"))
    for symbol in ("", "TOOLONGSY", "A B", "é", None, 5):
        s(new(1, "A", BUY, 100, 10, symbol=symbol), router_rejected(symbol, 1, "new", "invalid_symbol"))
        s(ModifyOrder(symbol, 2, qty=3), router_rejected(symbol, 2, "modify", "invalid_symbol"))  # type: ignore[arg-type]
    assert set(s.exchange.books) == {SYM}
    # The rejects used no sequence number of any book.
    s(_grid_order(), accepted(1, "A", "buy", 100, 20), added(1, "buy", 100, 20))


def test_without_instruments_books_open_on_first_use_with_a_unit_grid() -> None:
    s = Session()
    s(new(1, "A", BUY, 7, 3, symbol="ABCDEFGH"), accepted(1, "A", "buy", 7, 3, symbol="ABCDEFGH"),
      added(1, "buy", 7, 3, symbol="ABCDEFGH"))
    s(new(1, "A", BUY, 7, 3, symbol="ABCDEFGHI"), router_rejected("ABCDEFGHI", 1, "new", "invalid_symbol"))


def test_book_full() -> None:
    s = Session(profile=BookProfile(name="hw", max_orders=2))
    s(new(1, "A", BUY, 100, 10), accepted(1, "A", "buy", 100, 10), added(1, "buy", 100, 10))
    s(new(2, "A", BUY, 99, 10), accepted(2, "A", "buy", 99, 10), added(2, "buy", 99, 10))
    s(new(3, "B", BUY, 98, 10), accepted(3, "B", "buy", 98, 10), cancelled(3, "B", 10, "book_full"))
    s(new(4, "B", SELL, 101, 5), accepted(4, "B", "sell", 101, 5), cancelled(4, "B", 5, "book_full"))
    # Trading still works when full, and makes room for the remainder.
    s(new(5, "B", SELL, 100, 15), accepted(5, "B", "sell", 100, 15), fill(100, 10, 1, 5, "A", "B", "sell", 1),
      added(5, "sell", 100, 5))
    # (A remainder that traded first always finds room: it only remains once every crossing maker has
    # gone, which freed at least one place.)
    s(new(6, "C", BUY, 100, 8), accepted(6, "C", "buy", 100, 8), fill(100, 5, 5, 6, "B", "C", "buy", 2),
      added(6, "buy", 100, 3))
    assert s.book().depth() == {"bids": [(100, 3, 1), (99, 10, 1)], "asks": []}
    # A modify that loses priority leaves and re-enters, so it always has its own place back.
    s(modify(2, price=98), modified(2, "A", 98, 10, False), removed(2, 10), added(2, "buy", 98, 10))
    s(new(8, "C", BUY, 97, 10), accepted(8, "C", "buy", 97, 10), cancelled(8, "C", 10, "book_full"))


# -- set_base and the price window ------------------------------------------------------------------------


WINDOW = BookProfile(name="hw", window_ticks=4)


def test_price_window_edges() -> None:
    s = Session(GRID, WINDOW)
    s(_grid_order(), rejected(1, "new", "price_outside_window"))  # no window yet
    s(SetBasePrice(SYM, 100), base_set(100))  # window 80..115: 4 ticks below, 3 above
    s(_grid_order(order_id=1, price=80), accepted(1, "A", "buy", 80, 20), added(1, "buy", 80, 20))
    s(_grid_order(order_id=2, price=75), rejected(2, "new", "price_outside_window"))
    s(_grid_order(order_id=2, price=115, side=SELL), accepted(2, "A", "sell", 115, 20), added(2, "sell", 115, 20))
    s(_grid_order(order_id=3, price=120, side=SELL), rejected(3, "new", "price_outside_window"))
    s(modify(1, price=75), rejected(1, "modify", "price_outside_window"))
    s(modify(2, price=120), rejected(2, "modify", "price_outside_window"))
    s(_grid_order(order_id=3, order_type=MARKET, price=None, tif=IOC, qty=10),
      accepted(3, "A", "buy", None, 10, type="market", tif="ioc"), fill(115, 10, 2, 3, "A", "A", "buy", 1))


def test_set_base_moves_the_window_only_on_an_empty_book() -> None:
    s = Session(GRID, WINDOW)
    s(SetBasePrice(SYM, 100), base_set(100))
    s(_grid_order(price=100), accepted(1, "A", "buy", 100, 20), added(1, "buy", 100, 20))
    s(SetBasePrice(SYM, 200), rejected(None, "set_base", "book_not_empty"))
    s(_grid_order(order_id=2, price=200), rejected(2, "new", "price_outside_window"))
    s(cancel(1), cancelled(1, "A", 20, "user"), removed(1, 20))
    s(SetBasePrice(SYM, 200), base_set(200))
    s(_grid_order(order_id=2, price=200), accepted(2, "A", "buy", 200, 20), added(2, "buy", 200, 20))
    s(_grid_order(order_id=3, price=100), rejected(3, "new", "price_outside_window"))


@pytest.mark.parametrize("price", [0, -5, 102, None, "100", 100.0])
def test_set_base_rejects_a_bad_price(price: object) -> None:
    s = Session(GRID, WINDOW)
    s(SetBasePrice(SYM, price), rejected(None, "set_base", "invalid_price"))  # type: ignore[arg-type]
    s(SetBasePrice(SYM, 100), base_set(100))


def test_set_base_on_an_unlimited_book_is_accepted_and_changes_nothing() -> None:
    s = Session()
    s(new(1, "A", BUY, 100, 10), accepted(1, "A", "buy", 100, 10), added(1, "buy", 100, 10))
    s(SetBasePrice(SYM, 5000), base_set(5000))
    s(new(2, "A", BUY, 3, 10), accepted(2, "A", "buy", 3, 10), added(2, "buy", 3, 10))


# -- sequence and match numbers ---------------------------------------------------------------------------


def test_sequence_numbers_are_gapless_per_book_over_every_event_kind() -> None:
    exchange = Exchange(profile=BookProfile(name="hw", max_orders=3, window_ticks=100))
    commands = [
        SetBasePrice("AAA", 100), SetBasePrice("BBB", 100),
        new(1, "A", SELL, 101, 30, symbol="AAA", display_qty=10), new(1, "A", SELL, 101, 5, symbol="BBB"),
        new(2, "B", BUY, 101, 15, symbol="AAA"), new(2, "B", BUY, 0, 15, symbol="BBB"),
        CancelOrder("AAA", 99), new(3, "B", BUY, 99, 10, symbol="AAA", tif=DAY), ModifyOrder("AAA", 3, qty=5),
        ModifyOrder("AAA", 3, qty=5), new(4, "C", BUY, 98, 5, symbol="AAA"), new(5, "C", BUY, 97, 5, symbol="AAA"),
        new(6, "C", BUY, 99, 5, symbol="AAA", tif=FOK), new(7, "C", BUY, 99, 5, symbol="AAA", tif=IOC),
        new(8, "D", BUY, 102, 5, symbol="AAA", post_only=True), new(9, "A", BUY, 101, 50, symbol="AAA", stp=BOTH),
        EndOfDay("AAA"), CancelOrder("ZZZ TOP", 1), CancelOrder("BBB", 1),
    ]
    per_symbol: dict[str, list[int]] = {}
    kinds = set()
    for command in commands:
        for event in exchange.process(command):
            d = event.to_dict()
            kinds.add(d["event"] + ("/" + d["reason"] if "reason" in d else ""))
            if d["symbol"] == "ZZZ TOP":
                assert "seq" not in d
                continue
            per_symbol.setdefault(d["symbol"], []).append(d["seq"])
    assert per_symbol["AAA"] == list(range(1, len(per_symbol["AAA"]) + 1))
    assert per_symbol["BBB"] == list(range(1, len(per_symbol["BBB"]) + 1))
    assert {"base_price_set", "accepted", "rejected/invalid_price", "rejected/unknown_order", "fill", "order_added",
            "modified", "order_reduced", "rejected/no_change", "cancelled/book_full", "cancelled/fok",
            "cancelled/ioc", "cancelled/post_only", "cancelled/stp", "order_removed", "cancelled/expired",
            "cancelled/user", "rejected/invalid_symbol"} <= kinds


def test_match_numbers_count_per_book_and_skip_nothing() -> None:
    s = Session()
    for oid in (1, 2, 3):
        s(new(oid, "A", SELL, 100, 1), accepted(oid, "A", "sell", 100, 1), added(oid, "sell", 100, 1))
        s(new(oid, "A", SELL, 100, 1, symbol="ABC"), accepted(oid, "A", "sell", 100, 1, symbol="ABC"),
          added(oid, "sell", 100, 1, symbol="ABC"))
    s(new(4, "B", BUY, 100, 2), accepted(4, "B", "buy", 100, 2), fill(100, 1, 1, 4, "A", "B", "buy", 1),
      fill(100, 1, 2, 4, "A", "B", "buy", 2))
    s(new(5, "B", BUY, 100, 5, tif=FOK), accepted(5, "B", "buy", 100, 5, tif="fok"), cancelled(5, "B", 5, "fok"))
    s(new(6, "B", BUY, 100, 1, symbol="ABC"), accepted(6, "B", "buy", 100, 1, symbol="ABC"),
      fill(100, 1, 1, 6, "A", "B", "buy", 1, symbol="ABC"))
    s(new(7, "B", BUY, 100, 1), accepted(7, "B", "buy", 100, 1), fill(100, 1, 3, 7, "A", "B", "buy", 3))


# -- garbage in, rejects out ------------------------------------------------------------------------------

# (label, value): labels keep the test ids stable (an object's repr holds its address).
GARBAGE = [("None", None), ("str", "x"), ("empty", ""), ("float", 1.5), ("neg", -1), ("zero", 0), ("bytes", b"XYZ"),
           ("list", []), ("list1", [1]), ("dict", {}), ("dict1", {"a": 1}), ("object", object()),
           ("nan", float("nan")), ("huge", 10**30), ("true", True)]
NEW_FIELDS = ["symbol", "order_id", "account", "side", "price", "qty", "order_type", "tif", "post_only",
              "display_qty", "stp"]


def _garbage_commands() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for field in NEW_FIELDS:
        for label, value in GARBAGE:
            command = NewOrder(SYM, 50, "A", BUY, 100, 10)
            setattr(command, field, value)
            out.append((f"new.{field}={label}", command))
    for label, value in GARBAGE:
        out.append((f"cancel.order_id={label}", CancelOrder(SYM, value)))  # type: ignore[arg-type]
        out.append((f"cancel.symbol={label}", CancelOrder(value, 1)))  # type: ignore[arg-type]
        out.append((f"cancel.reason={label}", CancelOrder(SYM, 1, reason=value)))  # type: ignore[arg-type]
        out.append((f"modify.order_id={label}", ModifyOrder(SYM, value, qty=5)))  # type: ignore[arg-type]
        out.append((f"modify.qty={label}", ModifyOrder(SYM, 1, qty=value)))  # type: ignore[arg-type]
        out.append((f"modify.price={label}", ModifyOrder(SYM, 1, price=value)))  # type: ignore[arg-type]
        out.append((f"end_of_day.symbol={label}", EndOfDay(value)))  # type: ignore[arg-type]
        out.append((f"set_base.price={label}", SetBasePrice(SYM, value)))  # type: ignore[arg-type]
        out.append((f"not-a-command={label}", value))
    out += [("class", NewOrder), ("namespace", types.SimpleNamespace(symbol=SYM, op="new", order_id=3)),
            ("dict", {"op": "new", "symbol": SYM})]
    return out


@pytest.mark.parametrize(("name", "command"), _garbage_commands(), ids=[n for n, _ in _garbage_commands()])
def test_the_engine_never_raises_on_garbage(name: str, command: object) -> None:
    exchange = Exchange()
    exchange.process(new(1, "A", BUY, 100, 10))
    exchange.process(new(2, "B", SELL, 101, 10))
    before = exchange.books[SYM].depth(), exchange.books[SYM].orders_at(BUY, 100)
    events = exchange.process(command)  # type: ignore[arg-type]
    assert isinstance(events, list) and all(isinstance(e, Event) for e in events)
    for event in events:
        event.to_dict()
    if events and isinstance(events[0], Rejected):
        assert len(events) == 1
        assert (exchange.books[SYM].depth(), exchange.books[SYM].orders_at(BUY, 100)) == before


def test_non_commands_get_a_reject() -> None:
    book = OrderBook(Instrument(SYM))
    events = [e.to_dict() for e in book.process(object())]  # type: ignore[arg-type]
    assert [(e["event"], e["seq"], e["reason"]) for e in events] == [("rejected", 1, "invalid_command")]
    s = Session()
    s(types.SimpleNamespace(symbol=SYM, op="new", order_id=3), rejected(3, "new", "invalid_command"))
    s(None, router_rejected(None, None, "?", "invalid_symbol"))
    s("new", router_rejected(None, None, "?", "invalid_symbol"))


def test_garbage_with_json_values_gives_json_events() -> None:
    """Values a JSON script can carry come back out as JSON without trouble (each with a fresh id, so
    that no earlier check hides the field under test)."""
    exchange = Exchange()
    ids = iter(range(100, 1000))
    for value in (None, "x", 1.5, -1, [1], ["A"], {"a": 1}, True):
        for command in (NewOrder(SYM, value, "A", BUY, 100, 10), NewOrder(SYM, next(ids), value, BUY, 100, 10),  # type: ignore[arg-type]
                        NewOrder(SYM, next(ids), "A", BUY, value, 10), NewOrder(SYM, next(ids), "A", value, 100, 10),  # type: ignore[arg-type]
                        ModifyOrder(SYM, value, qty=1), CancelOrder(value, 1)):  # type: ignore[arg-type]
            for event in exchange.process(command):
                assert event_to_json(event)


# -- queries ----------------------------------------------------------------------------------------------


def test_queries_bbo_depth_orders_at_and_resting_qty() -> None:
    book = OrderBook(Instrument(SYM))
    assert book.bbo() == (None, 0, None, 0)
    assert book.depth() == {"bids": [], "asks": []}
    for command in (new(1, "A", BUY, 100, 10), new(2, "B", BUY, 100, 5), new(3, "C", BUY, 99, 7),
                    new(4, "A", BUY, 98, 50, display_qty=10), new(5, "B", SELL, 101, 3), new(6, "C", SELL, 102, 4),
                    new(7, "A", SELL, 102, 8), new(8, "A", SELL, 110, 1)):
        book.process(command)
    assert book.bbo() == (100, 15, 101, 3)
    assert book.depth() == {"bids": [(100, 15, 2), (99, 7, 1), (98, 10, 1)],
                            "asks": [(101, 3, 1), (102, 12, 2), (110, 1, 1)]}
    assert book.depth(2) == {"bids": [(100, 15, 2), (99, 7, 1)], "asks": [(101, 3, 1), (102, 12, 2)]}
    assert book.depth(0) == {"bids": [], "asks": []}
    assert book.orders_at(BUY, 100) == [{"order_id": 1, "account": "A", "displayed": 10, "leaves": 10},
                                        {"order_id": 2, "account": "B", "displayed": 5, "leaves": 5}]
    assert book.orders_at(BUY, 98) == [{"order_id": 4, "account": "A", "displayed": 10, "leaves": 50}]
    assert book.orders_at(SELL, 102) == [{"order_id": 6, "account": "C", "displayed": 4, "leaves": 4},
                                         {"order_id": 7, "account": "A", "displayed": 8, "leaves": 8}]
    assert book.orders_at(SELL, 100) == []
    assert book.orders_at(BUY, 101) == []
    assert book.resting_qty() == 10 + 5 + 7 + 50 + 3 + 4 + 8 + 1
    book.process(new(9, "D", SELL, 99, 20))  # takes 100 x15 and 99 x5
    assert book.bbo() == (99, 2, 101, 3)
    assert book.depth(1) == {"bids": [(99, 2, 1)], "asks": [(101, 3, 1)]}
    assert book.resting_qty() == 2 + 50 + 3 + 4 + 8 + 1


def test_accepted_lists_optional_fields_only_when_used() -> None:
    exchange = Exchange()
    plain = exchange.process(new(1, "A", BUY, 100, 10))[0].to_dict()
    assert list(plain) == ["event", "seq", "symbol", "order_id", "account", "side", "type", "tif", "price", "qty"]
    full = exchange.process(new(2, "A", BUY, 90, 10, tif=DAY, post_only=True, display_qty=5, stp=BOTH))[0].to_dict()
    assert list(full)[-3:] == ["post_only", "display_qty", "stp"]
    assert (full["post_only"], full["display_qty"], full["stp"], full["tif"]) == (True, 5, "cancel_both", "day")
