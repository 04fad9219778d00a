"""Risk through a real multi-process cluster and a real client: each check, exposure, kill switch."""

from __future__ import annotations

import random
import threading
import time

import pytest

from actors.admin import admin_request, kill_and_wait, risk_request
from actors.client import ClusterClient
from exchange.orders import Accepted, Cancelled, Fill, Modified, Rejected
from tests.actors.cluster_helpers import start_cluster, wait_for, write_config

RISK = """
[risk.defaults]
max_order_qty = 100000
price_collar_bps = 1000
max_open_orders = 100000

[risk.accounts.A1]
max_order_qty = 500
[risk.accounts.A2]
max_order_notional = 100000000
[risk.accounts.A3]
max_open_orders = 2
[risk.accounts.A4]
credit_limit = 300000000
[risk.accounts.A5]
max_position = 300
[risk.accounts.A6]
orders_per_second = 5
burst = 3
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("risk")
    extra_accounts = ("A5", "A6", "K", "C", "F1", "F2", "F3")
    path = write_config(tmp, extra=RISK + "".join(f'[[account]]\nname = "{a}"\n' for a in extra_accounts))
    # Instruments in the helper have no reference price; give AAPL one for the collar.
    text = path.read_text().replace('symbol = "AAPL"\ntick_size = 100', 'symbol = "AAPL"\ntick_size = 100\n'
                                    'reference_price = 1000000')
    path.write_text(text)
    running = start_cluster(path, tmp / "logs")
    yield running
    running.stop()


@pytest.fixture
def client(cluster, request):
    with ClusterClient(cluster.config.client_endpoint(), name=f"t-{request.node.name}"[:60]) as c:
        yield c


_seen: dict[str, list] = {}


def answer(client, order_id):
    """The accept or reject of ``order_id``, keeping every other event for later calls."""
    seen = _seen.setdefault(client.name, [])

    def found(events):
        return next((e for e in events if isinstance(e, (Accepted, Rejected)) and e.order_id == order_id), None)

    if found(seen) is None:
        seen.extend(client.collect(lambda ev: found(seen + ev) is not None))
    event = found(seen)
    assert event is not None, f"no answer for order {order_id}"
    return event


def reason(event):
    return event.reason if isinstance(event, Rejected) else "accepted"


def test_max_order_qty(client):
    client.new_order("AAPL", 1, "A1", "buy", 600, price=1_000_000)
    assert reason(answer(client, 1)) == "max_order_qty"
    client.new_order("AAPL", 2, "A1", "buy", 500, price=1_000_000)
    assert reason(answer(client, 2)) == "accepted"


def test_max_order_notional(client):
    client.new_order("AAPL", 1, "A2", "buy", 101, price=1_000_000)
    assert reason(answer(client, 1)) == "max_order_notional"
    client.new_order("AAPL", 2, "A2", "buy", 100, price=1_000_000)
    assert reason(answer(client, 2)) == "accepted"


def test_price_collar_against_reference_price(client):
    client.new_order("AAPL", 1, "C", "buy", 10, price=1_100_100)
    assert reason(answer(client, 1)) == "price_collar"
    client.new_order("AAPL", 2, "C", "sell", 10, price=1_100_000)
    assert reason(answer(client, 2)) == "accepted"


def risk_has_applied(cluster, account: str, open_orders: int) -> bool:
    """Wait until the account's shard holds ``open_orders``: risk gets a book's reports beside the
    gateway, not before it (docs/risk.md, "Reports reach risk and the client in parallel")."""
    return wait_for(lambda: risk_request(cluster.config, account, "status")["open_orders"] == open_orders,
                    timeout=10)


def test_max_open_orders(cluster, client):
    for order_id in (1, 2):
        client.new_order("MSFT", order_id, "A3", "buy", 10, price=500_000)
        assert reason(answer(client, order_id)) == "accepted"
    client.new_order("MSFT", 3, "A3", "buy", 10, price=500_000)
    assert reason(answer(client, 3)) == "max_open_orders"
    client.cancel("MSFT", 1)
    client.collect(lambda ev: any(isinstance(e, Cancelled) for e in ev))
    assert risk_has_applied(cluster, "A3", 1)
    client.new_order("MSFT", 4, "A3", "buy", 10, price=500_000)
    assert reason(answer(client, 4)) == "accepted"


def test_credit_limit_spans_books_on_two_nodes(cluster, client):
    # 200 shares resting on book1 and 100 on book2 reserve the whole limit between them.
    client.new_order("MSFT", 1, "A4", "buy", 200, price=1_000_000)
    client.new_order("GOOG", 2, "A4", "buy", 100, price=1_000_000)
    assert reason(answer(client, 1)) == reason(answer(client, 2)) == "accepted"
    client.new_order("TSLA", 3, "A4", "buy", 1, price=1_000_000)
    assert reason(answer(client, 3)) == "credit_limit"
    client.cancel("GOOG", 2)
    client.collect(lambda ev: any(isinstance(e, Cancelled) for e in ev))
    assert risk_has_applied(cluster, "A4", 1)
    client.new_order("TSLA", 4, "A4", "buy", 100, price=1_000_000)
    assert reason(answer(client, 4)) == "accepted"


def test_max_position(client):
    client.new_order("TSLA", 1, "A5", "buy", 200, price=700_000)
    assert reason(answer(client, 1)) == "accepted"
    client.new_order("TSLA", 2, "A5", "buy", 101, price=700_000)
    assert reason(answer(client, 2)) == "max_position"
    client.new_order("TSLA", 3, "A5", "sell", 300, price=2_000_000)
    assert reason(answer(client, 3)) == "accepted"


def test_rate_limit_per_session(client):
    for order_id in range(1, 7):
        client.new_order("GOOG", order_id, "A6", "buy", 1, price=600_000)
    reasons = [reason(answer(client, order_id)) for order_id in range(1, 7)]
    assert reasons[:3] == ["accepted"] * 3
    assert "rate_limit" in reasons[3:]


def test_admin_limits_and_positions(cluster, client):
    limits = risk_request(cluster.config, "A1", "limits")
    assert limits["limits"]["max_order_qty"] == 500
    positions = risk_request(cluster.config, "A5", "positions")
    assert positions["account"] == "A5" and positions["killed"] is False
    bad = admin_request(cluster.config, "risk/0", {"command": "nonsense"})
    assert "error" in bad


def test_kill_switch_under_load_leaves_no_fill_after_it_takes_effect(cluster):
    endpoint = cluster.config.client_endpoint()
    stop = threading.Event()
    seen: list = []

    def trade(name: str, account: str, seed: int) -> None:  # noqa: C901
        rng = random.Random(seed)
        with ClusterClient(endpoint, name=name) as c:
            order_id = 0
            while not stop.is_set():
                order_id += 1
                side = rng.choice(("buy", "sell"))
                c.new_order("MSFT", order_id, account, side, rng.randint(1, 5) * 10,
                            price=1_000_000 + rng.randint(-3, 3) * 100)
                for event, _ in c.poll(0.002):
                    seen.append((time.monotonic(), account, event))

    threads = [threading.Thread(target=trade, args=("killed", "K", 1)),
               threading.Thread(target=trade, args=("other", "C", 2))]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        result = kill_and_wait(cluster.config, "K")
        assert result["effective"], result
        fills_at_kill = result["status"]["fills"]
        time.sleep(1.0)
        after = risk_request(cluster.config, "K", "status")
        assert after["fills"] == fills_at_kill, "K traded after the kill switch took effect"
        assert after["open_orders"] == 0
        assert any(isinstance(e, Rejected) and e.reason == "kill_switch" for _, a, e in seen if a == "K")
        assert any(isinstance(e, Cancelled) and e.reason == "admin" for _, a, e in seen if a == "K")
        assert any(isinstance(e, Fill) for _, a, e in seen if a == "C")
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        risk_request(cluster.config, "K", "release")


def test_exposure_equals_open_orders_at_quiet_points(cluster):
    """Random concurrent flows across both book nodes; at quiet points risk's books balance."""
    endpoint = cluster.config.client_endpoint()
    accounts = ("F1", "F2", "F3")  # used by no other test, so every fill of theirs is seen here
    fills_by_account: dict[str, dict[str, int]] = {}
    lock = threading.Lock()

    def flow(seed: int) -> None:
        rng = random.Random(seed)
        with ClusterClient(endpoint, name=f"flow-{seed}") as c:
            live: list[tuple[str, int]] = []
            sent = []
            for order_id in range(1, 301):
                roll = rng.random()
                if roll < 0.15 and live:
                    symbol, target = live.pop(rng.randrange(len(live)))
                    c.cancel(symbol, target)
                elif roll < 0.3 and live:
                    symbol, target = rng.choice(live)
                    c.modify(symbol, target, qty=rng.randint(1, 5) * 10, price=1_000_000 + rng.randint(-3, 3) * 100)
                else:
                    symbol = rng.choice(("AAPL", "MSFT", "GOOG", "TSLA"))
                    account = rng.choice(accounts)
                    c.new_order(symbol, order_id, account, rng.choice(("buy", "sell")), rng.randint(1, 5) * 10,
                                price=1_000_000 + rng.randint(-3, 3) * 100)
                    live.append((symbol, order_id))
                    sent.append(order_id)
            def answered(ev: list) -> bool:
                done = {e.order_id for e in ev if isinstance(e, Accepted)}
                done |= {e.order_id for e in ev if isinstance(e, Rejected) and e.op == "new"}
                return done >= set(sent)

            events = c.collect(answered, timeout=20)
            assert answered(events), "some orders were never answered"
            events += c.collect(lambda ev: False, timeout=0.5)
            accounts_of = {e.order_id: e.account for e in events if isinstance(e, Accepted)}
            with lock:
                for e in events:
                    if isinstance(e, Fill):
                        own = e.maker_order_id or e.taker_order_id
                        acct = accounts_of.get(own)
                        is_buy = (e.taker_side.name == "BUY") == bool(e.taker_order_id)
                        book = fills_by_account.setdefault(acct, {})
                        book[e.symbol] = book.get(e.symbol, 0) + (e.qty if is_buy else -e.qty)
            assert not [e for e in events if isinstance(e, Modified) and e.qty <= 0]

    errors: list[BaseException] = []

    def guarded(seed: int) -> None:
        try:
            flow(seed)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(seed,)) for seed in (11, 12, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert fills_by_account, "the flows produced no fills: the position check would prove nothing"
    time.sleep(0.5)
    for shard in cluster.config.risk_shards:
        check = admin_request(cluster.config, shard, {"command": "exposure_check"})
        for account, numbers in check.items():
            assert numbers["pending_modifies"] == 0, (account, numbers)
            assert numbers["reserved"] == numbers["recomputed"], (account, numbers)
            if account in fills_by_account:
                expected = {s: q for s, q in fills_by_account[account].items() if q}
                assert {s: q for s, q in numbers["positions"].items() if q} == expected, account
