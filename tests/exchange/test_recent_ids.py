"""The window of newest order ids per origin (exchange/recent_ids.py), alone and as a book's duplicate rule."""

from __future__ import annotations

import json

import pytest

from exchange.engine import OrderBook
from exchange.instruments import Instrument
from exchange.orders import Accepted, CancelOrder, NewOrder, Rejected, Side
from exchange.recent_ids import RecentOrderIds, ids_of_state


def _origin(order_id: int) -> int:
    return order_id >> 48


def _id(origin: int, n: int) -> int:
    return origin << 48 | n


def test_a_window_per_origin_keeps_its_newest_ids_and_survives_a_snapshot():
    seen = RecentOrderIds(3, _origin)
    for n in range(1, 6):
        seen.add(_id(1, n))
    seen.add(_id(2, 1))  # another origin's ids do not push origin 1's out
    seen.add(_id(1, 5))  # seen already: no change
    assert [_id(1, n) in seen for n in range(1, 6)] == [False, False, True, True, True]
    assert _id(2, 1) in seen and len(seen) == 4
    state = json.loads(json.dumps(seen.save_state()))
    restored = RecentOrderIds(3, _origin)
    restored.load_state(state)
    assert restored.ids == seen.ids and restored.save_state() == seen.save_state()
    assert sorted(ids_of_state(state)) == sorted(seen.ids)
    smaller = RecentOrderIds(2, _origin)  # a smaller window keeps the newest of a bigger one's state
    smaller.load_state(state)
    assert smaller.ids == {_id(1, 4), _id(1, 5), _id(2, 1)}
    # A snapshot that kept every id (a list): each origin keeps its largest.
    from_list = RecentOrderIds(2, _origin)
    from_list.load_state([_id(1, n) for n in (5, 1, 3, 4)] + [_id(2, 7)])
    assert from_list.ids == {_id(1, 4), _id(1, 5), _id(2, 7)}


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, None])
def test_a_window_needs_a_positive_size(limit):
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        RecentOrderIds(limit, _origin)  # type: ignore[arg-type]


def _new(book: OrderBook, order_id: int) -> type:
    events = book.process(NewOrder("AAPL", order_id, "A1", Side.BUY, 1_000_000 + order_id % 100, 10))
    return type(events[0])


def test_a_book_with_a_window_rejects_a_copy_of_a_recent_order_and_snapshots_only_the_window():
    book = OrderBook(Instrument("AAPL"))
    book.remember_ids(RecentOrderIds(3, _origin))
    for n in range(1, 6):
        assert _new(book, _id(1, n)) is Accepted
    assert _new(book, _id(1, 5)) is Rejected  # a copy of a recent order: duplicate_order_id
    assert _new(book, _id(1, 1)) is Rejected  # older than the window, but still resting: a duplicate all the same
    book.process(CancelOrder("AAPL", _id(1, 1)))
    assert _new(book, _id(1, 1)) is Accepted  # gone and older than the window: forgotten (copies never are)
    book.process(CancelOrder("AAPL", _id(1, 2)))
    state = json.loads(json.dumps(book.snapshot()))
    assert sorted(ids_of_state(state["seen_ids"])) == [_id(1, n) for n in (1, 4, 5)]

    windowed = OrderBook(Instrument("AAPL"))
    windowed.remember_ids(RecentOrderIds(3, _origin))
    windowed.restore(state)
    assert _new(windowed, _id(1, 4)) is Rejected and _new(windowed, _id(1, 2)) is Accepted
    plain = OrderBook(Instrument("AAPL"))  # without a window: every id of the snapshot, and every id after
    plain.restore(state)
    assert plain.seen_ids == {_id(1, n) for n in (1, 4, 5)}


def test_a_book_alone_remembers_every_id_and_its_snapshot_restores_into_a_window():
    book = OrderBook(Instrument("AAPL"))
    for n in range(1, 6):
        assert _new(book, _id(1, n)) is Accepted
    assert _new(book, _id(1, 1)) is Rejected
    state = book.snapshot()
    assert state["seen_ids"] == [_id(1, n) for n in range(1, 6)]  # the form earlier snapshots have
    windowed = OrderBook(Instrument("AAPL"))
    windowed.remember_ids(RecentOrderIds(2, _origin))
    windowed.restore(state)
    assert windowed.seen_ids.ids == {_id(1, 4), _id(1, 5)}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="fresh book"):
        book.remember_ids(RecentOrderIds(2, _origin))
