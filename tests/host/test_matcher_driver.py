"""The host driver of the gateware matcher (host/matcher_driver.py).

Commands the host rejects never reach the gateware: their events are checked against the
reference engine directly. Everything else runs against the real gateware in Amaranth's
simulator (small sizes). Protocol checks feed the driver answers the gateware never gives.
"""

from __future__ import annotations

import random

import pytest

from exchange.engine import OrderBook
from exchange.instruments import Instrument
from exchange.matcher_format import (
    EVENT_LAST,
    INT32_MAX,
    INT32_MIN,
    CommandRecord,
    EventRecord,
    MatcherConfig,
    MatcherOp,
    MatcherReason,
    RecordKind,
    clamp_offset,
    hardware_profile,
)
from exchange.orders import (
    CancelOrder,
    EndOfDay,
    ModifyOrder,
    NewOrder,
    OrderType,
    Rejected,
    RejectReason,
    SelfTradePrevention,
    SetBasePrice,
    Side,
    TimeInForce,
)
from host.matcher_driver import MatcherDriver, MatcherDriverError
from sim.matcher_backend import first_mismatch, reference_events, run_pysim

SMALL = MatcherConfig(max_orders=16, window_ticks=16, group_width=8)
QQ = Instrument("QQ", tick_size=5, lot_size=10, band=(99_000, 101_000))


def host_only(driver: MatcherDriver, command) -> list:
    """Events of a command the driver must answer without the gateware."""
    steps = driver.steps(command)
    with pytest.raises(StopIteration) as stop:
        next(steps)
    return stop.value.value


# -- records ---------------------------------------------------------------------------------------


def test_records_round_trip_and_widths():
    config = MatcherConfig()
    command = CommandRecord(MatcherOp.MODIFY, 2, 1, 12, 4095, -1024, 1023, (1 << 32) - 1)
    assert config.decode_command(config.encode_command(command)) == command
    assert config.command_layout.from_int(config.command_word(command)) == config.encode_command(command)
    event = EventRecord(RecordKind.FILL, MatcherReason.NONE, 2, EVENT_LAST, 7, -3, 10, 0)
    assert config.decode_event(config.encode_event(event)) == event
    assert config.event_from_word(config.event_layout.to_int(config.encode_event(event))).last
    assert config.handle_bits == 12 and config.level_bits == 11 and config.groups == 64
    assert clamp_offset(10**30) == INT32_MAX and clamp_offset(-(10**30)) == INT32_MIN and clamp_offset(5) == 5


def test_profile_mirrors_the_gateware():
    profile = hardware_profile()
    assert (profile.max_orders, profile.window_ticks) == (4096, 1024)
    assert profile.market_orders and profile.post_only and profile.day_orders and profile.fok_orders
    assert not profile.reserve_orders and not profile.self_trade_prevention
    with pytest.raises(ValueError):
        MatcherDriver(QQ, SMALL, MatcherConfig().profile())  # sizes must be the gateware's
    with pytest.raises(ValueError):
        MatcherDriver(QQ, SMALL, SMALL.profile().__class__(max_orders=16, window_ticks=16))  # reserve, STP


# -- host-side rejects: identical to the engine, the gateware never sees them ---------------------------


def invalid_commands() -> list:
    new = NewOrder
    return [
        new("QQ", 0, "A", Side.BUY, 100_000, 10),
        new("QQ", "7", "A", Side.BUY, 100_000, 10),
        new("QQ", 1, "", Side.BUY, 100_000, 10),
        new("QQ", 1, "TOO LONG!", Side.BUY, 100_000, 10),
        new("QQ", 1, "A", "up", 100_000, 10),  # type: ignore[arg-type]
        new("QQ", 1, "A", Side.BUY, 100_000, 10, order_type="stop"),  # type: ignore[arg-type]
        new("QQ", 1, "A", Side.BUY, 100_000, 10, tif="gtd"),  # type: ignore[arg-type]
        new("QQ", 1, "A", Side.BUY, 100_000, 10, stp="yes"),  # type: ignore[arg-type]
        new("QQ", 1, "A", Side.BUY, 100_000, 0),
        new("QQ", 1, "A", Side.BUY, 100_000, 15),
        new("QQ", 1, "A", Side.BUY, 100_000, 1.5),  # type: ignore[arg-type]
        new("QQ", 1, "A", Side.BUY, 100_000, 10, order_type=OrderType.MARKET, tif=TimeInForce.IOC),
        new("QQ", 1, "A", Side.BUY, None, 10, order_type=OrderType.MARKET, tif=TimeInForce.DAY),
        new("QQ", 1, "A", Side.BUY, None, 10),
        new("QQ", 1, "A", Side.BUY, 100_001, 10),
        new("QQ", 1, "A", Side.BUY, 200_000, 10),
        new("QQ", 1, "A", Side.BUY, -5, 10),
        new("QQ", 1, "A", Side.BUY, 100_000, 20, display_qty=15),
        new("QQ", 1, "A", Side.BUY, 100_000, 20, display_qty=10, tif=TimeInForce.IOC),
        new("QQ", 1, "A", Side.BUY, 100_000, 20, post_only=True, tif=TimeInForce.FOK),
        new("QQ", 1, "A", Side.BUY, 100_000, 20, display_qty=10),  # a reserve order: unsupported
        new("QQ", 1, "A", Side.BUY, 100_000, 20, stp=SelfTradePrevention.CANCEL_BOTH),  # STP: unsupported
        new("QQ", 1, "A", Side.BUY, 100_000, 20, display_qty=20),  # shows all, but still a reserve order
        new("QQ", 1, "A", Side.BUY, 100_000, (SMALL.max_qty // 10 + 1) * 10),  # wider than the quantity field
        CancelOrder("QQ", 99), CancelOrder("QQ", "x"), ModifyOrder("QQ", 5, qty=10), EndOfDay("QQ"),
        SetBasePrice("QQ", 0), SetBasePrice("QQ", 100_001), SetBasePrice("QQ", "100000"),  # type: ignore[arg-type]
    ]


def test_host_rejects_equal_the_engine():
    driver = MatcherDriver(QQ, SMALL)
    driver.base_price = 100_000  # as after a set_base
    book = OrderBook(QQ, SMALL.profile())
    book.base_price = 100_000
    for command in invalid_commands():
        assert host_only(driver, command) == book.process(command), command
    assert driver.records_sent == 0


def test_unknown_command_is_rejected():
    driver = MatcherDriver(QQ, SMALL)
    book = OrderBook(QQ, SMALL.profile())

    class Odd:
        symbol = "QQ"
        op = "odd"

    assert host_only(driver, Odd()) == book.process(Odd())


# -- with the gateware (amaranth.sim) ------------------------------------------------------------------


def test_outside_window_goes_to_the_gateware_and_texts_match():
    commands = [NewOrder("QQ", 1, "A", Side.BUY, 100_000, 10),  # no window yet
                SetBasePrice("QQ", 100_000),
                NewOrder("QQ", 2, "A", Side.BUY, 100_000 - 16 * 5, 10),  # lowest position
                NewOrder("QQ", 3, "A", Side.BUY, 100_000 - 17 * 5, 10),
                NewOrder("QQ", 4, "A", Side.SELL, 100_000 + 15 * 5, 10),  # highest position
                NewOrder("QQ", 5, "A", Side.SELL, 100_000 + 16 * 5, 10, display_qty=10),  # window wins
                ModifyOrder("QQ", 2, price=100_000 + 16 * 5),
                ModifyOrder("QQ", 2, qty=10),  # no change
                SetBasePrice("QQ", 100_500)]  # not empty
    events, session, _ = run_pysim(SMALL, QQ, commands)
    assert first_mismatch(commands, reference_events(commands, QQ, SMALL), events) is None
    rejected = [e for batch in events for e in batch if e.kind == "rejected"]
    assert [e.reason for e in rejected] == ["price_outside_window"] * 4 + ["no_change", "book_not_empty"]
    assert len(session.sent) == len(commands)  # every one of them reached the gateware


def test_auto_window_is_silent():
    commands = [NewOrder("QQ", 1, "A", Side.SELL, 100_050, 10), NewOrder("QQ", 2, "B", Side.BUY, 100_050, 20)]
    driver_events, session, _ = run_pysim(SMALL, QQ, [SetBasePrice("QQ", 100_050)] + commands)
    book = OrderBook(QQ)  # the unlimited software book has no window at all
    expected = [book.process(c) for c in commands]
    # The same commands through a driver placing the window itself: no base_price_set event, and
    # the sequence numbers of the software book.
    from sim.matcher_backend import MatcherSession

    auto = MatcherSession(QQ, SMALL)
    auto.driver.auto_window = True
    replies = iter(session.bursts)
    got = [auto.driver.process(c, lambda record: next(replies)) for c in commands]
    assert got == expected
    assert auto.driver.base_price == 100_050
    assert driver_events[0][0].kind == "base_price_set"


def test_queries_follow_the_book():
    rng = random.Random(4)
    from sim.matcher_backend import random_commands

    commands = random_commands(rng, 250, SMALL, QQ)
    events, session, _ = run_pysim(SMALL, QQ, commands)
    book = OrderBook(QQ, SMALL.profile())
    for command in commands:
        book.process(command)
    driver = session.driver
    assert driver.bbo() == book.bbo()
    assert driver.depth() == book.depth()
    assert driver.resting_qty() == book.resting_qty()
    for side, price in driver.levels:
        assert driver.orders_at(side, price) == book.orders_at(side, price)


def test_a_window_of_recent_ids_keeps_the_duplicate_rule_of_the_software_book():
    """A cluster's card book remembers the newest ids per gateway, as its software book does: the same events."""
    from exchange.recent_ids import RecentOrderIds

    def gateway_of(order_id: int) -> int:
        return order_id >> 8

    first, second = 1 << 8, 2 << 8  # the ids of two gateways
    commands = [SetBasePrice("QQ", 100_000)]  # the gateware's window: 16 ticks of 5 either side
    commands += [NewOrder("QQ", first + k, "A", Side.BUY, 99_940 + 5 * k, 10) for k in range(1, 7)]
    commands += [NewOrder("QQ", second + 1, "B", Side.SELL, 100_050, 10), CancelOrder("QQ", first + 2)]
    commands += [CancelOrder("QQ", first + k) for k in (3, 4, 5)]
    commands += [
        NewOrder("QQ", first + 2, "A", Side.BUY, 99_950, 10),  # out of the window of 3: not a duplicate any more
        NewOrder("QQ", first + 5, "A", Side.BUY, 99_950, 10),  # in it: a duplicate
        NewOrder("QQ", first + 1, "A", Side.BUY, 99_950, 10),  # out of it, but resting: a duplicate
        NewOrder("QQ", second + 1, "B", Side.SELL, 100_060, 10),  # the other gateway's window has it
    ]
    events, session, _ = run_pysim(SMALL, QQ, commands, window=RecentOrderIds(3, gateway_of))
    book = OrderBook(QQ, SMALL.profile())
    book.remember_ids(RecentOrderIds(3, gateway_of))
    expected = [book.process(command) for command in commands]
    assert first_mismatch(commands, expected, events) is None
    reasons = [e.reason for e in events[-3] + events[-2] + events[-1] if isinstance(e, Rejected)]
    assert reasons == [RejectReason.DUPLICATE_ORDER_ID] * 3
    assert not any(isinstance(e, Rejected) for e in events[-4])
    assert len(session.driver.seen_ids) == 4  # the newest 3 of one gateway, 1 of the other
    with pytest.raises(ValueError, match="fresh book"):
        session.driver.remember_ids(RecentOrderIds(3, gateway_of))


# -- protocol checks ----------------------------------------------------------------------------------


def answer(driver: MatcherDriver, command, bursts: list[list[EventRecord]]):
    replies = iter(bursts)
    return driver.process(command, lambda record: next(replies))


def rec(kind, reason=MatcherReason.NONE, *, handle=0, price=0, qty=0, leaves=0, side=1, last=True):
    return EventRecord(kind, reason, side, EVENT_LAST if last else 0, handle, price, qty, leaves)


def test_protocol_violations_are_errors():
    driver = MatcherDriver(QQ, SMALL)
    answer(driver, SetBasePrice("QQ", 100_000), [[rec(RecordKind.BASE_SET)]])
    with pytest.raises(MatcherDriverError):  # a burst without its LAST record
        answer(driver, NewOrder("QQ", 1, "A", Side.BUY, 100_000, 10),
               [[rec(RecordKind.ADDED, handle=3, qty=10, leaves=10, last=False)]])
    driver = MatcherDriver(QQ, SMALL)
    answer(driver, SetBasePrice("QQ", 100_000), [[rec(RecordKind.BASE_SET)]])
    with pytest.raises(MatcherDriverError):  # a window reject for a price inside the window
        answer(driver, NewOrder("QQ", 1, "A", Side.BUY, 100_000, 10),
               [[rec(RecordKind.REJECTED, MatcherReason.PRICE_OUTSIDE_WINDOW)]])
    with pytest.raises(MatcherDriverError):  # a fill against a handle that rests nowhere
        answer(driver, NewOrder("QQ", 2, "A", Side.BUY, 100_000, 10),
               [[rec(RecordKind.FILL, handle=9, qty=10, leaves=0)]])
    with pytest.raises(MatcherDriverError):  # the added quantity is not what remained
        answer(driver, NewOrder("QQ", 3, "A", Side.BUY, 100_000, 10),
               [[rec(RecordKind.ADDED, handle=0, qty=7, leaves=7)]])
