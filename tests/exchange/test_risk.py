"""Risk bookkeeping without a cluster: checks, reservations, and the exposure invariant."""

from __future__ import annotations

import random

import pytest

from exchange.orders import Side
from exchange.risk import AccountRisk, RiskLimits, RiskReason, TokenBucket

MARKS = {"X": 1_000_000}


def account(**limits: int | None) -> AccountRisk:
    base = dict.fromkeys(("max_order_qty", "max_order_notional", "price_collar_bps", "price_collar_ticks",
                          "max_open_orders", "credit_limit", "max_position"))
    base.update(limits)
    return AccountRisk("A", RiskLimits(**base))


@pytest.mark.parametrize(("limits", "order", "reason"), [
    ({"max_order_qty": 100}, (Side.BUY, 1_000_000, 101), RiskReason.MAX_ORDER_QTY),
    ({"max_order_notional": 99_000_000}, (Side.BUY, 1_000_000, 100), RiskReason.MAX_ORDER_NOTIONAL),
    ({"price_collar_bps": 500}, (Side.BUY, 1_050_100, 1), RiskReason.PRICE_COLLAR),
    ({"price_collar_ticks": 3}, (Side.SELL, 999_600, 1), RiskReason.PRICE_COLLAR),
    ({"credit_limit": 100_000_000}, (Side.BUY, 1_000_000, 101), RiskReason.CREDIT_LIMIT),
    ({"max_position": 50}, (Side.SELL, 1_000_000, 51), RiskReason.MAX_POSITION),
])
def test_each_check_refuses_just_over_its_limit(limits, order, reason):
    side, price, qty = order
    risk = account(**limits)
    assert risk.check_new("X", side, price, qty, 1_000_000, 100, MARKS) == reason
    # One step inside the limit passes.
    inside = (qty - 1) if reason not in (RiskReason.PRICE_COLLAR,) else qty
    inside_price = price if reason is not RiskReason.PRICE_COLLAR else 1_000_000
    assert risk.check_new("X", side, inside_price, inside, 1_000_000, 100, MARKS) is None


def test_open_orders_and_kill_switch():
    risk = account(max_open_orders=2)
    risk.reserve_new(1, "X", Side.BUY, 1_000_000, 10)
    risk.reserve_new(2, "X", Side.BUY, 1_000_000, 10)
    assert risk.check_new("X", Side.BUY, 1_000_000, 1, None, 100, MARKS) == RiskReason.MAX_OPEN_ORDERS
    risk.on_cancelled(1)
    assert risk.check_new("X", Side.BUY, 1_000_000, 1, None, 100, MARKS) is None
    risk.killed = True
    assert risk.check_new("X", Side.BUY, 1_000_000, 1, None, 100, MARKS) == RiskReason.KILL_SWITCH


def test_market_order_needs_a_reference_price():
    risk = account()
    assert risk.check_new("X", Side.BUY, None, 10, None, 100, MARKS) == RiskReason.NO_REFERENCE_PRICE
    assert risk.check_new("X", Side.BUY, None, 10, 1_000_000, 100, MARKS) is None


def test_position_limit_counts_open_orders_on_the_same_side():
    risk = account(max_position=300)
    risk.reserve_new(1, "X", Side.BUY, 1_000_000, 200)
    assert risk.check_new("X", Side.BUY, 1_000_000, 101, None, 100, MARKS) == RiskReason.MAX_POSITION
    assert risk.check_new("X", Side.SELL, 1_000_000, 300, None, 100, MARKS) is None
    risk.on_fill(1, "X", True, 200)
    assert risk.positions == {"X": 200}
    assert risk.check_new("X", Side.BUY, 1_000_000, 101, None, 100, MARKS) == RiskReason.MAX_POSITION


def test_credit_limit_counts_positions_at_their_mark():
    risk = account(credit_limit=300_000_000)
    risk.reserve_new(1, "X", Side.BUY, 1_000_000, 100)
    risk.on_fill(1, "X", True, 100)  # now a position worth 100 x 1,000,000
    assert risk.reserved == 0
    assert risk.check_new("X", Side.BUY, 1_000_000, 200, None, 100, MARKS) is None
    assert risk.check_new("X", Side.BUY, 1_000_000, 201, None, 100, MARKS) == RiskReason.CREDIT_LIMIT


def test_modify_reserves_pessimistically_then_settles_exactly():
    risk = account(credit_limit=10**15)
    order = risk.reserve_new(1, "X", Side.BUY, 1_000_000, 100)
    risk.reserve_modify(order, 1_100_000, 50)  # in flight: the larger of old and new
    assert risk.reserved == 100_000_000
    risk.on_modified(1, 1_100_000, 50)
    assert risk.reserved == 55_000_000
    risk.reserve_modify(order, None, 200)
    risk.on_rejected(1, "modify")
    assert risk.reserved == 55_000_000


def test_exposure_invariant_under_random_event_sequences():
    rng = random.Random(5)
    for _ in range(200):
        risk = account()
        live: dict[int, tuple[int, int]] = {}
        next_id = 1
        for _ in range(60):
            roll = rng.random()
            if roll < 0.35 or not live:
                price, qty = rng.randint(90, 110) * 10_000, rng.randint(1, 20) * 10
                risk.reserve_new(next_id, "X", rng.choice((Side.BUY, Side.SELL)), price, qty)
                live[next_id] = (price, qty)
                next_id += 1
                continue
            order_id = rng.choice(list(live))
            order = risk.orders[order_id]
            if roll < 0.55:
                fill = rng.randint(1, order.leaves)
                risk.on_fill(order_id, "X", order.side == Side.BUY, fill)
            elif roll < 0.7:
                risk.on_cancelled(order_id)
            elif roll < 0.85:
                new_price, new_qty = rng.randint(90, 110) * 10_000, rng.randint(1, 20) * 10
                risk.reserve_modify(order, new_price, new_qty)
                if rng.random() < 0.7:
                    risk.on_modified(order_id, new_price, new_qty)
                else:
                    risk.on_rejected(order_id, "modify")
            else:
                risk.on_rejected(order_id, "new")
            live = {oid: live.get(oid, (0, 0)) for oid in risk.orders}
            assert risk.reserved == sum(o.price * o.leaves for o in risk.orders.values())
            assert all(q > 0 for q in risk.open_qty.values() if q) and min(risk.open_qty.values(), default=0) >= 0


def test_limits_from_toml_tables_are_validated():
    base = RiskLimits.from_mapping({"max_order_qty": 10})
    assert base.max_order_qty == 10
    assert RiskLimits.from_mapping({"credit_limit": 5}, base).max_order_qty == 10
    with pytest.raises(ValueError, match="unknown limit"):
        RiskLimits.from_mapping({"max_qty": 1})
    with pytest.raises(ValueError, match="non-negative integer"):
        RiskLimits.from_mapping({"max_order_qty": 1.5})


def test_token_bucket_allows_burst_then_rate():
    bucket = TokenBucket(rate=10, burst=3, now_ns=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(50_000_000) is False  # half a token
    assert bucket.take(100_000_000) is True
