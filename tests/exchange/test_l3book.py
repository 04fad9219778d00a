"""Feed-side L3/L2 book built from decoded ITCH messages."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.itch import read_itch_file
from exchange.l3book import L3Book

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared/data/itch/sample-20101224.ITCH50.gz"
needs_sample = pytest.mark.skipif(not SAMPLE.exists(), reason=f"shared ITCH sample not found at {SAMPLE}")


def hdr(code: str, locate: int = 1) -> dict:
    return {"type": code, "stock_locate": locate, "tracking_number": 0, "timestamp": 0}


def directory(locate: int, symbol: str) -> dict:
    return {**hdr("R", locate), "stock": symbol}


def add(
    ref: int, side: str, shares: int, price: int, locate: int = 1, symbol: str = "AAA", mpid: str = ""
) -> dict:
    msg = {**hdr("F" if mpid else "A", locate), "order_reference_number": ref, "buy_sell_indicator": side,
           "shares": shares, "stock": symbol, "price": price}  # fmt: skip
    if mpid:
        msg["attribution"] = mpid
    return msg


def execute(ref: int, shares: int, price: int | None = None) -> dict:
    msg = {**hdr("E" if price is None else "C"), "order_reference_number": ref, "executed_shares": shares,
           "match_number": 1}  # fmt: skip
    if price is not None:
        msg.update(printable="Y", execution_price=price)
    return msg


def cancel(ref: int, shares: int) -> dict:
    return {**hdr("X"), "order_reference_number": ref, "cancelled_shares": shares}


def delete(ref: int) -> dict:
    return {**hdr("D"), "order_reference_number": ref}


def replace(old: int, new: int, shares: int, price: int) -> dict:
    return {**hdr("U"), "original_order_reference_number": old, "new_order_reference_number": new,
            "shares": shares, "price": price}  # fmt: skip


def trade(ref: int) -> dict:
    return {**hdr("P"), "order_reference_number": ref, "buy_sell_indicator": "B", "shares": 10,
            "stock": "AAA", "price": 1, "match_number": 2}  # fmt: skip


def test_hand_built_sequence_gives_exact_book():
    book = L3Book()
    book.apply_all(
        [
            directory(1, "AAA"),
            add(1, "B", 100, 100_0000),
            add(2, "B", 200, 100_0000),
            add(3, "B", 50, 99_5000),
            add(4, "S", 300, 101_0000, mpid="MMKR"),
            add(5, "S", 100, 101_5000),
            execute(1, 40),  # 1: 60 left
            cancel(2, 50),  # 2: 150 left
            execute(4, 300, price=101_0000),  # 4 fully executed (C)
            replace(3, 6, 75, 100_0000),  # 3 -> 6 at 100.00, behind 1 and 2
            trade(999),  # no book effect
            delete(5),
            add(7, "S", 10, 102_0000),
        ]
    )
    assert book.check() == []
    assert book.bbo("AAA") == (100_0000, 285, 102_0000, 10)
    assert book.depth("AAA", 5) == {"bids": [(100_0000, 285, 3)], "asks": [(102_0000, 10, 1)]}
    assert book.orders_at("AAA", "B", 100_0000) == [(1, 60), (2, 150), (6, 75)]
    assert book.orders_at("AAA", "B", 99_5000) == []
    assert book.orders_at("AAA", "S", 101_0000) == []
    assert sorted(book.orders) == [1, 2, 6, 7]
    assert book.messages == 13
    assert not book.unknown_order_messages and not book.anomalies
    assert book.book("AAA").order_count == 4


def test_depth_orders_levels_best_first_and_limits():
    book = L3Book()
    for ref, (side, price) in enumerate(
        [("B", 10), ("B", 30), ("B", 20), ("S", 50), ("S", 40), ("S", 60)], 1
    ):
        book.apply(add(ref, side, ref, price))
    assert book.depth("AAA", 2) == {"bids": [(30, 2, 1), (20, 3, 1)], "asks": [(40, 5, 1), (50, 4, 1)]}
    assert book.depth("AAA", 0) == {"bids": [], "asks": []}
    assert book.bbo("AAA") == (30, 2, 40, 5)


def test_empty_and_unknown():
    book = L3Book()
    assert book.bbo("NOPE") == (None, None, None, None)
    assert book.depth("NOPE") == {"bids": [], "asks": []}
    assert book.orders_at("NOPE", "B", 1) == []
    book.apply(add(1, "B", 10, 5))
    assert book.bbo("AAA") == (5, 10, None, None)
    book.apply(delete(1))
    assert book.bbo("AAA") == (None, None, None, None)
    assert book.book("AAA").bid_prices == [] and book.book("AAA").bids == {}


def test_messages_about_unknown_orders_are_counted_not_fatal():
    book = L3Book()
    book.apply_all([execute(1, 5), execute(2, 5, price=3), cancel(3, 1), delete(4), replace(5, 6, 10, 10)])
    assert dict(book.unknown_order_messages) == {"E": 1, "C": 1, "X": 1, "D": 1, "U": 1}
    assert book.orders == {} and book.check() == []


def test_anomalies_are_counted():
    book = L3Book()
    book.apply_all(
        [
            add(1, "B", 10, 5),
            add(1, "B", 20, 6),  # duplicate reference: the later add wins
            add(2, "?", 10, 5),  # unknown side
            add(3, "S", 0, 5),  # zero shares
            execute(1, 25),  # more than remain
        ]
    )
    assert dict(book.anomalies) == {"duplicate_add": 1, "bad_side": 1, "zero_shares": 1, "overfill": 1}
    assert book.orders == {} and book.check() == []


def test_symbol_learned_from_adds_and_directory_rename():
    book = L3Book()
    book.apply(add(1, "S", 10, 7, locate=9, symbol="LATE"))
    assert book.bbo("LATE") == (None, None, 7, 10)
    book.apply(directory(9, "NEW"))
    assert book.bbo("NEW") == (None, None, 7, 10) and book.book("LATE") is None
    assert book.symbols() == ["NEW"]


def naive_l2(messages) -> tuple[dict, dict]:
    """Independent model: a flat ref -> [symbol, side, price, shares] dict, aggregated at the end."""
    symbols, orders = {}, {}
    for m in messages:
        t = m["type"]
        if t == "R":
            symbols[m["stock_locate"]] = m["stock"]
        elif t in "AF" and m["buy_sell_indicator"] in "BS" and m["shares"] > 0:
            orders[m["order_reference_number"]] = [
                m["stock_locate"],
                m["buy_sell_indicator"],
                m["price"],
                m["shares"],
            ]
        elif t in "EC" and m["order_reference_number"] in orders:
            orders[m["order_reference_number"]][3] -= m["executed_shares"]
        elif t == "X" and m["order_reference_number"] in orders:
            orders[m["order_reference_number"]][3] -= m["cancelled_shares"]
        elif t == "D":
            orders.pop(m["order_reference_number"], None)
        elif t == "U" and m["original_order_reference_number"] in orders:
            old = orders.pop(m["original_order_reference_number"])
            if m["shares"] > 0:
                orders[m["new_order_reference_number"]] = [old[0], old[1], m["price"], m["shares"]]
        orders = {ref: o for ref, o in orders.items() if o[3] > 0} if t in "ECX" else orders
    levels: dict = defaultdict(int)
    for locate, side, price, shares in orders.values():
        levels[(locate, side, price)] += shares
    return dict(levels), orders


def book_l2(book: L3Book) -> dict:
    out = {}
    for locate, stock in book.books.items():
        for side, levels in (("B", stock.bids), ("S", stock.asks)):
            for price, level in levels.items():
                out[(locate, side, price)] = level.shares
    return out


@needs_sample
def test_whole_sample_book_is_consistent():
    messages = [m for _, m in read_itch_file(SAMPLE, errors="raise")]
    book = L3Book()
    book.apply_all(messages)
    assert book.check() == []
    assert book.messages == 12012
    # The simulated sample has 117 messages about orders before (or without) their add.
    assert dict(book.unknown_order_messages) == {"D": 94, "E": 18, "X": 3, "U": 2}
    assert not book.anomalies
    assert book.symbols() == ["ALC", "BOB", "CHAR"]
    for stock in book.books.values():
        for levels in (stock.bids, stock.asks):
            for level in levels.values():
                assert level.shares == sum(level.orders.values()) > 0
                assert all(shares > 0 for shares in level.orders.values())
    expected_levels, expected_orders = naive_l2(messages)
    assert book_l2(book) == expected_levels
    assert len(book.orders) == len(expected_orders) == 3204
    assert book.bbo("BOB") == (69667, 100, 53417, 100)


op = st.one_of(
    st.tuples(
        st.just("add"), st.integers(1, 12), st.sampled_from("BS"), st.integers(1, 500), st.integers(1, 6)
    ),
    st.tuples(st.just("exec"), st.integers(1, 12), st.integers(1, 600)),
    st.tuples(st.just("cancel"), st.integers(1, 12), st.integers(1, 600)),
    st.tuples(st.just("delete"), st.integers(1, 12)),
    st.tuples(
        st.just("replace"), st.integers(1, 12), st.integers(1, 12), st.integers(1, 500), st.integers(1, 6)
    ),
)


def to_message(o) -> dict:
    kind = o[0]
    if kind == "add":
        return add(o[1], o[2], o[3], o[4])
    if kind == "exec":
        return execute(o[1], o[2])
    if kind == "cancel":
        return cancel(o[1], o[2])
    if kind == "delete":
        return delete(o[1])
    return replace(o[1], o[2], o[3], o[4])


@given(st.lists(op, max_size=80))
@settings(max_examples=200, deadline=None)
def test_random_sequences_match_naive_model(ops):
    messages = [directory(1, "AAA")] + [to_message(o) for o in ops]
    book = L3Book()
    for m in messages:
        book.apply(m)
    assert book.check() == []
    levels, orders = naive_l2(messages)
    assert book_l2(book) == levels
    assert set(book.orders) == set(orders)
    bid, bid_qty, ask, ask_qty = book.bbo("AAA")
    stock = book.book("AAA")
    assert bid == (max(stock.bids) if stock.bids else None)
    assert ask == (min(stock.asks) if stock.asks else None)
