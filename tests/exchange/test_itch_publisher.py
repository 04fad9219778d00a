"""ITCH publisher: exact messages for small scenarios, and the rebuild property against the engine."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itch.messages import messages as itchfeed_classes

from exchange.engine import OrderBook
from exchange.instruments import Instrument
from exchange.itch import MESSAGE_SPECS, decode_message
from exchange.itch_publisher import REF_SHIFT, ItchPublisher, match_number_for, reference_parts
from exchange.l3book import L3Book
from exchange.orders import (
    CancelOrder,
    EndOfDay,
    ModifyOrder,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
)

BUY, SELL = Side.BUY, Side.SELL


class Clock:
    """Deterministic clock: reads ``now`` (ns since midnight), which the test sets."""

    def __init__(self, now: int = 1000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def ref(locate: int, n: int) -> int:
    return (locate << REF_SHIFT) | n


def hdr(code: str, locate: int, ts: int) -> dict:
    return {"type": code, "stock_locate": locate, "tracking_number": 0, "timestamp": ts}


def run(book: OrderBook, pub: ItchPublisher, *commands) -> list[dict]:
    out = []
    for command in commands:
        for event in book.process(command):
            out += [decode_message(m) for m in pub.on_event(event)]
    return out


def test_start_of_day_messages_are_exact():
    pub = ItchPublisher(["ZZZ", "AAA"], clock=Clock())
    msgs = [decode_message(m) for m in pub.start_of_day()]
    r_common = {"market_category": "Q", "financial_status_indicator": "N", "round_lot_size": 100,
                "round_lots_only": "N", "issue_classification": "C", "issue_sub_type": "Z", "authenticity": "P",
                "short_sale_threshold_indicator": " ", "ipo_flag": " ", "luld_reference_price_tier": " ",
                "etp_flag": "N", "etp_leverage_factor": 0, "inverse_indicator": "N"}
    h_common = {"trading_state": "T", "reserved": " ", "reason": ""}
    assert msgs == [
        {**hdr("S", 0, 1000), "event_code": "O"},
        {**hdr("R", 1, 1000), "stock": "AAA", **r_common},
        {**hdr("R", 2, 1000), "stock": "ZZZ", **r_common},
        {**hdr("S", 0, 1000), "event_code": "S"},
        {**hdr("H", 1, 1000), "stock": "AAA", **h_common},
        {**hdr("H", 2, 1000), "stock": "ZZZ", **h_common},
        {**hdr("S", 0, 1000), "event_code": "Q"},
    ]
    # Locates follow sorted symbols, whatever order the configuration lists them in.
    assert pub.locate_of("AAA") == 1 and pub.locate_of("ZZZ") == 2
    assert [decode_message(m)["event_code"] for m in pub.end_of_day()] == ["M", "E", "C"]


def test_small_scenario_gives_exact_messages():
    clock = Clock()
    pub = ItchPublisher(["AAA", "BBB"], clock=clock, attribution={"MM1": "MMKR"})
    book = OrderBook(Instrument("BBB", tick_size=100))
    pub.start_of_day()
    clock.now = 34_200_000_000_000  # 09:30
    T = clock.now
    L = 2  # BBB's locate

    # A market maker (attributed: F) and an anonymous order rest on the ask.
    msgs = run(book, pub,
               NewOrder("BBB", 1, "MM1", SELL, 1_000_000, 300),
               NewOrder("BBB", 2, "X", SELL, 1_000_100, 200))
    assert msgs == [
        {**hdr("F", L, T), "order_reference_number": ref(L, 1), "buy_sell_indicator": "S",
         "shares": 300, "stock": "BBB", "price": 1_000_000, "attribution": "MMKR"},
        {**hdr("A", L, T), "order_reference_number": ref(L, 2), "buy_sell_indicator": "S",
         "shares": 200, "stock": "BBB", "price": 1_000_100},
    ]
    # A buy takes 100 of the first (E, match number tagged with the locate), rests 0.
    msgs = run(book, pub, NewOrder("BBB", 3, "Y", BUY, 1_000_000, 100))
    assert msgs == [{**hdr("E", L, T), "order_reference_number": ref(L, 1), "executed_shares": 100,
                     "match_number": match_number_for(L, 1)}]
    assert reference_parts(msgs[0]["match_number"]) == (L, 1)
    # Quantity down keeps priority: X. Then a cancel: D.
    msgs = run(book, pub, ModifyOrder("BBB", 1, qty=150), CancelOrder("BBB", 2))
    assert msgs == [
        {**hdr("X", L, T), "order_reference_number": ref(L, 1), "cancelled_shares": 50},
        {**hdr("D", L, T), "order_reference_number": ref(L, 2)},
    ]
    # A reprice that does not cross: one U with a fresh reference.
    msgs = run(book, pub, ModifyOrder("BBB", 1, price=1_000_200))
    assert msgs == [{**hdr("U", L, T), "original_order_reference_number": ref(L, 1),
                     "new_order_reference_number": ref(L, 3), "shares": 150, "price": 1_000_200}]
    # A bid rests, then is repriced through the ask: D, E on the maker, A for the remainder.
    msgs = run(book, pub, NewOrder("BBB", 4, "Y", BUY, 999_900, 400),
               ModifyOrder("BBB", 4, price=1_000_200))
    assert msgs == [
        {**hdr("A", L, T), "order_reference_number": ref(L, 4), "buy_sell_indicator": "B",
         "shares": 400, "stock": "BBB", "price": 999_900},
        {**hdr("D", L, T), "order_reference_number": ref(L, 4)},
        {**hdr("E", L, T), "order_reference_number": ref(L, 3), "executed_shares": 150,
         "match_number": match_number_for(L, 2)},
        {**hdr("A", L, T), "order_reference_number": ref(L, 5), "buy_sell_indicator": "B",
         "shares": 250, "stock": "BBB", "price": 1_000_200},
    ]
    assert pub.reference_of("BBB", 4) == ref(L, 5) and pub.reference_of("BBB", 1) is None


def test_reserve_refresh_is_a_new_reference_and_keeps_its_attribution():
    clock = Clock()
    pub = ItchPublisher(["ICE"], clock=clock, attribution={"MM1": "MMKR"})
    book = OrderBook(Instrument("ICE"))
    msgs = run(book, pub, NewOrder("ICE", 7, "MM1", SELL, 500, 250, display_qty=100),
               NewOrder("ICE", 8, "Z", BUY, 500, 150, tif=TimeInForce.IOC))
    types = [(m["type"], m.get("order_reference_number"), m.get("shares") or m.get("executed_shares")) for m in msgs]
    assert types == [("F", ref(1, 1), 100), ("E", ref(1, 1), 100), ("F", ref(1, 2), 100), ("E", ref(1, 2), 50)]
    assert msgs[2]["attribution"] == "MMKR"
    # The last slice of 50 shows when the second is used up.
    msgs = run(book, pub, NewOrder("ICE", 9, "Z", BUY, 500, 50))
    assert [(m["type"], m["order_reference_number"]) for m in msgs] == [("E", ref(1, 2)), ("F", ref(1, 3))]
    assert msgs[1]["shares"] == 50


def test_fill_against_an_order_the_feed_never_showed_prints_a_trade():
    pub = ItchPublisher(["LATE"], clock=Clock())
    book = OrderBook(Instrument("LATE"))
    book.process(NewOrder("LATE", 1, "A", SELL, 700, 100))  # before the publisher saw anything
    msgs = run(book, pub, NewOrder("LATE", 2, "B", BUY, 700, 40))
    assert msgs == [{**hdr("P", 1, 1000), "order_reference_number": 0, "buy_sell_indicator": "S", "shares": 40,
                     "stock": "LATE", "price": 700, "match_number": match_number_for(1, 1)}]
    assert pub.stats["unknown_orders"] == 1 and pub.stats["trades"] == 1


def test_unknown_symbol_gets_a_locate_and_directory_on_the_fly():
    pub = ItchPublisher(["AAA"], clock=Clock())
    pub.start_of_day()
    book = OrderBook(Instrument("NEW"))
    msgs = run(book, pub, NewOrder("NEW", 1, "A", BUY, 100, 10))
    assert [(m["type"], m["stock_locate"]) for m in msgs] == [("R", 2), ("H", 2), ("A", 2)]


def test_prices_that_do_not_fit_itch_are_kept_off_the_feed():
    pub = ItchPublisher(["BIG"], clock=Clock())
    book = OrderBook(Instrument("BIG"))
    msgs = run(book, pub, NewOrder("BIG", 1, "A", SELL, 1 << 33, 10), NewOrder("BIG", 2, "B", BUY, 1 << 33, 4))
    assert pub.stats["unpublishable"] == 1
    assert msgs == []  # neither the add nor a trade whose price does not fit


def test_published_messages_decode_identically_with_itchfeed():
    pub = ItchPublisher(["AAA", "BBB"], clock=Clock(), attribution={"A": "AAAA"})
    raw = pub.start_of_day()
    exchanges = {s: OrderBook(Instrument(s)) for s in ("AAA", "BBB")}
    rng = random.Random(5)
    for command in random_commands(rng, 300, ("AAA", "BBB")):
        for event in exchanges[command.symbol].process(command):
            raw += pub.on_event(event)
    raw += pub.end_of_day()
    seen = set()
    for msg in raw:
        mine = decode_message(msg)
        other = itchfeed_classes[msg[:1]](msg)
        seen.add(mine["type"])
        for name, _kind, width in MESSAGE_SPECS[mine["type"]].fields:
            attr = "order_reference_number" if (mine["type"], name) == ("U", "original_order_reference_number") \
                else "luld_ref" if name == "luld_reference_price_tier" else name
            value = getattr(other, attr)
            if isinstance(value, bytes):
                value = value.decode("ascii")
                value = value.rstrip(" ") if width > 1 else value
            assert mine[name] == value, (mine, name)
    assert {"S", "R", "H", "A", "F", "E", "X", "D", "U"} <= seen


# -- the rebuild property --------------------------------------------------------------------------------

PRICES = (96, 104)


def random_commands(rng: random.Random, count: int, symbols: tuple[str, ...]) -> list:
    """Valid-ish commands over a narrow price range: crosses, icebergs, modifies both ways, STP, IOC/FOK,
    market and post-only orders, cancels, end of day. Some modifies and cancels name dead orders."""
    ids = {s: [] for s in symbols}
    next_id = {s: 1 for s in symbols}
    out = []
    for _ in range(count):
        symbol = rng.choice(symbols)
        kind = rng.choices(["new", "cancel", "modify", "eod"], [60, 12, 26, 1])[0]
        live = ids[symbol]
        if kind == "new" or not live:
            oid = next_id[symbol]
            next_id[symbol] += 1
            live.append(oid)
            del live[:-12]
            market = rng.random() < 0.08
            tif = rng.choice([TimeInForce.IOC, TimeInForce.FOK]) if market else rng.choice(
                [TimeInForce.GTC] * 5 + [TimeInForce.DAY] * 2 + [TimeInForce.IOC, TimeInForce.FOK])
            rests = not market and tif in (TimeInForce.GTC, TimeInForce.DAY)
            out.append(NewOrder(
                symbol, oid, rng.choice("ABC"), rng.choice([BUY, SELL]), None if market else rng.randint(*PRICES),
                rng.randint(1, 12) * 10, order_type=OrderType.MARKET if market else OrderType.LIMIT, tif=tif,
                post_only=rests and rng.random() < 0.1,
                display_qty=rng.randint(1, 4) * 10 if rests and rng.random() < 0.3 else 0,
                stp=rng.choice([SelfTradePrevention.NONE] * 4 + list(SelfTradePrevention))))
        elif kind == "cancel":
            out.append(CancelOrder(symbol, rng.choice(live)))
        elif kind == "modify":
            qty = rng.choice([None, rng.randint(1, 12) * 10])
            price = rng.choice([None, rng.randint(*PRICES)]) if qty is not None else rng.randint(*PRICES)
            out.append(ModifyOrder(symbol, rng.choice(live), qty=qty, price=price))
        else:
            out.append(EndOfDay(symbol))
    return out


def engine_levels(book: OrderBook) -> dict:
    """{(side, price): [displayed, ...]} in time priority."""
    out = {}
    depth = book.depth()
    for name, side in (("bids", BUY), ("asks", SELL)):
        for price, _qty, _count in depth[name]:
            out[("B" if side is BUY else "S", price)] = [o["displayed"] for o in book.orders_at(side, price)]
    return out


def feed_levels(feed: L3Book, symbol: str) -> dict:
    stock = feed.book(symbol)
    out = {}
    if stock is None:
        return out
    for side, levels in (("B", stock.bids), ("S", stock.asks)):
        for price, level in levels.items():
            out[(side, price)] = list(level.orders.values())
    return out


def check_stream(commands: list, symbols: tuple[str, ...]) -> None:
    books = {s: OrderBook(Instrument(s)) for s in symbols}
    pub = ItchPublisher(symbols, clock=Clock(), attribution={"A": "AAAA"})
    feed = L3Book()
    for msg in pub.start_of_day():
        feed.apply(decode_message(msg))
    for index, command in enumerate(commands):
        book = books[command.symbol]
        for event in book.process(command):
            for msg in pub.on_event(event):
                feed.apply(decode_message(msg))
        # After every command: depth, per-level priority order, and the reference -> order mapping.
        assert feed.depth(command.symbol, 1000) == book.depth(), (index, command)
        assert feed_levels(feed, command.symbol) == engine_levels(book), (index, command)
        for side in (BUY, SELL):
            for price, _q, _c in book.depth()["bids" if side is BUY else "asks"]:
                refs = [r for r, _ in feed.orders_at(command.symbol, "B" if side is BUY else "S", price)]
                want = [pub.reference_of(command.symbol, o["order_id"]) for o in book.orders_at(side, price)]
                assert refs == want, (index, command)
    for msg in pub.end_of_day():
        feed.apply(decode_message(msg))
    assert feed.check() == []
    assert not feed.unknown_order_messages and not feed.anomalies
    assert pub.stats["unknown_orders"] == 0 and pub.stats["trades"] == 0


@given(st.integers(0, 2**32 - 1), st.integers(1, 150))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_itch_rebuild_equals_engine_depth_after_every_command(seed, count):
    symbols = ("AAA", "BBB")
    check_stream(random_commands(random.Random(seed), count, symbols), symbols)


def test_itch_rebuild_long_stream():
    symbols = ("AAA", "BBB", "CCC")
    check_stream(random_commands(random.Random(12345), 4000, symbols), symbols)


def test_interleaving_does_not_change_numbers():
    """Two publishers fed the same books in different interleavings give each book the same messages."""
    symbols = ("AAA", "BBB")
    commands = random_commands(random.Random(99), 400, symbols)
    per_book = {s: [] for s in symbols}
    books = {s: OrderBook(Instrument(s)) for s in symbols}
    for command in commands:
        per_book[command.symbol] += books[command.symbol].process(command)
    a, b = ItchPublisher(symbols, clock=lambda: 0), ItchPublisher(symbols, clock=lambda: 0)
    out_a = a.on_events(per_book["AAA"]) + a.on_events(per_book["BBB"])
    out_b = b.on_events(per_book["BBB"]) + b.on_events(per_book["AAA"])
    assert sorted(out_a) == sorted(out_b)
