"""OUCH 5.0 over SoupBinTCP 4.0 through a real multi-process cluster: nasdaq-protocols' client
unchanged, our client, auth, ownership, reconnect with replay, and the execution reports."""

from __future__ import annotations

import asyncio
import time

import pytest
from nasdaq_protocols import soup as nsoup

from actors.admin import admin_request
from actors.ouch_client import LoginRejected, OuchClient
from exchange import ouch
from exchange.accounts import hash_password
from tests.actors.cluster_helpers import start_cluster, wait_for, write_config

PASSWORDS = {"ALICE": "alice-pw", "BOB": "bob-pw", "CAROL": "carol-pw"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ouch")
    users = "".join(f'[[user]]\nname = "{name}"\npassword_hash = "{hash_password(pw, n=1 << 10)}"\n'
                    f'accounts = ["A{i + 1}"]\n' for i, (name, pw) in enumerate(PASSWORDS.items()))
    # CAROL trades for A3, whose credit limit refuses a replace that grows an order tenfold (below).
    path = write_config(tmp, extra=users + "[risk.accounts.A3]\ncredit_limit = 200000000\n")
    running = start_cluster(path, tmp / "logs")
    yield running
    running.stop()


def login(cluster, user: str, **kwargs) -> OuchClient:
    """A session starting with the next message (sequence 0: no replay of earlier tests' messages)."""
    host, port = cluster.config.ouch_address()
    kwargs.setdefault("next_seq", 0)
    client = OuchClient(host, port, user, PASSWORDS[user], **kwargs)
    client.sync_user_ref_num()  # UserRefNums rise for the whole day: ask where this user is
    return client


def wait_messages(client: OuchClient, predicate, timeout: float = 5.0) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while not predicate(got) and time.monotonic() < deadline:
        # Account Query answers (from sync_user_ref_num) are session housekeeping, not order reports.
        got.extend(m for m in client.messages(0.05) if m["type"] != "Q")
    return got


def test_nasdaq_protocols_client_trades_through_the_cluster(cluster):
    host, port = cluster.config.ouch_address()

    async def scenario() -> None:
        session = await nsoup.connect_async((host, port), "ALICE", PASSWORDS["ALICE"], "", 1,
                                            client_heartbeat_interval=1)
        session.send_unseq_data(ouch.encode_inbound(
            "O", user_ref_num=1, side="S", quantity=300, symbol="AAPL", price=1_000_000, time_in_force="0",
            display="Y", capacity="A", inter_market_sweep_eligibility="N", cross_type="N", cl_ord_id="N1",
            options={}))
        accepted = ouch.decode_outbound((await asyncio.wait_for(session.receive_msg(), 5)).data)
        assert (accepted["type"], accepted["user_ref_num"], accepted["quantity"]) == ("A", 1, 300)
        assert accepted["order_state"] == "L"
        session.logout()
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    bob = login(cluster, "BOB")
    try:
        bob.enter_order("AAPL", "B", 100, 1_000_000, time_in_force="3")
        messages = wait_messages(bob, lambda got: len(got) >= 2)
        messages += [m for m in bob.messages(0.3) if m["type"] != "Q"]
        # Fully filled on entry: accepted, executed, and nothing to cancel.
        assert [m["type"] for m in messages] == ["A", "E"]
        executed = messages[1]
        assert (executed["quantity"], executed["price"], executed["liquidity_flag"]) == (100, 1_000_000, "R")
    finally:
        bob.close()


def test_a_partial_cancel_counts_executions_its_gateway_has_not_seen_yet(cluster):
    """Alice cuts her order to an intended size while Bob's order executes against it. Her cancel is translated at
    the gateway before the execution comes back there; whichever of the two reaches the book first, she executes
    no more than she intended (the gateway had sent an absolute open quantity, which grew the order by the
    execution it had not seen). Risk and the gateway are left with nothing waiting."""
    alice, bob = login(cluster, "ALICE"), login(cluster, "BOB")
    try:
        def settle(ref: int, done) -> tuple[int, int]:  # noqa: ANN001
            got = wait_messages(alice, lambda got: done(got))
            executed = sum(m["quantity"] for m in got if m["type"] == "E" and m["user_ref_num"] == ref)
            cancelled = sum(m["quantity"] for m in got if m["type"] == "C" and m["user_ref_num"] == ref)
            return executed, cancelled

        ref = alice.enter_order("TSLA", "S", 100, 2_000_000)
        assert wait_messages(alice, lambda got: any(m["type"] == "A" for m in got))
        bob.enter_order("TSLA", "B", 60, 2_000_000, time_in_force="3")
        alice.cancel_order(ref, 80)  # at most 80 in all
        executed, cancelled = settle(ref, lambda got: {m["type"] for m in got} >= {"E", "C"})
        assert (executed, cancelled) == (60, 20)  # 20 still open: 80 in all, in either order at the book
        alice.cancel_order(ref)
        assert settle(ref, lambda got: any(m["type"] == "C" for m in got)) == (0, 20)

        ref = alice.enter_order("TSLA", "S", 100, 2_000_000)
        assert wait_messages(alice, lambda got: any(m["type"] == "A" for m in got))
        bob.enter_order("TSLA", "B", 90, 2_000_000, time_in_force="3")
        alice.cancel_order(ref, 50)
        # Cut first at the book: 50 left, Bob takes them. Execution first: 10 left, the cut takes them.
        executed, cancelled = settle(ref, lambda got: sum(m["quantity"] for m in got if m["type"] in "EC") >= 100)
        assert (executed, cancelled) in ((50, 50), (90, 10))
        alice.cancel_order(ref)  # nothing left: a Cancel Reject, not a second cancel
        assert [m["type"] for m in wait_messages(alice, lambda got: bool(got))] == ["I"]
        config = cluster.config
        assert wait_for(lambda: all(admin_request(config, shard, {"command": "stats"})["stats"]["in_flight_commands"]
                                    == 0 for shard in config.risk_shards), timeout=5)
    finally:
        alice.close()
        bob.close()


def test_wrong_password_is_refused(cluster):
    host, port = cluster.config.ouch_address()
    with pytest.raises(LoginRejected):
        OuchClient(host, port, "ALICE", "wrong-pw")


def test_nobody_cancels_another_users_order(cluster):
    alice, bob = login(cluster, "ALICE"), login(cluster, "BOB")
    try:
        ref = alice.enter_order("MSFT", "B", 100, 900_000)
        assert wait_messages(alice, lambda got: any(m["type"] == "A" for m in got))
        # Bob names Alice's token: for Bob it is no order of his, so the cancel is rejected.
        bob.cancel_order(ref)
        answer = wait_messages(bob, lambda got: bool(got))
        assert answer and answer[0]["type"] == "I"
        alice.cancel_order(ref)
        canceled = wait_messages(alice, lambda got: any(m["type"] == "C" for m in got))
        assert any(m["type"] == "C" and m["quantity"] == 100 for m in canceled)
    finally:
        alice.close()
        bob.close()


def test_reconnect_receives_exactly_what_was_missed(cluster):
    alice = login(cluster, "ALICE")
    refs = [alice.enter_order("GOOG", "B", 10 + i, 800_000 + i * 100) for i in range(5)]
    assert len(wait_messages(alice, lambda got: len(got) >= 5)) == 5
    expected_next = alice.next_seq
    alice.close()  # the TCP connection drops; more happens while Alice is away
    bob = login(cluster, "BOB")
    try:
        bob.enter_order("GOOG", "S", 1000, 800_000, time_in_force="3")  # executes against Alice's bids
        assert wait_messages(bob, lambda got: any(m["type"] == "C" for m in got))
    finally:
        bob.close()
    time.sleep(0.3)
    again = login(cluster, "ALICE", next_seq=expected_next)
    try:
        missed = wait_messages(again, lambda got: len(got) >= 5, timeout=5)
        assert [m["type"] for m in missed] == ["E"] * 5
        assert sorted(m["user_ref_num"] for m in missed) == sorted(refs)
        assert not [m for m in again.messages(0.3) if m["type"] != "Q"], "a message arrived twice"
    finally:
        again.close()


def test_replace_refused_by_risk_is_answered_after_the_books_answer_to_an_earlier_replace(cluster):
    # Two replaces of one order back to back: the first (smaller) goes to the book, the second (ten times the
    # exposure) is refused by risk at once. OUCH pairs an order's answers with its requests in order, so risk
    # holds its reject until the book has answered the first: Replaced for the first, Rejected for the second.
    carol = login(cluster, "CAROL")
    try:
        for attempt in range(5):
            # Within the collar around GOOG's last trade (800,000 when the module's other tests have run).
            ref = carol.enter_order("GOOG", "B", 100, 790_000 + attempt * 100)
            entered = wait_messages(carol, lambda got: bool(got))
            assert [m["type"] for m in entered] == ["A"], entered
            with carol.batch():
                smaller = carol.replace_order(ref, 50, 790_000 + attempt * 100)
                larger = carol.replace_order(ref, 5000, 790_000 + attempt * 100)  # the token current at the gateway
            answers = wait_messages(carol, lambda got: len(got) >= 2)
            assert [(m["type"], m["user_ref_num"]) for m in answers[:2]] == [("U", smaller), ("J", larger)], \
                f"attempt {attempt}: {answers}"
            assert answers[0]["quantity"] == 50 and answers[1]["reason"] == 0x1F  # credit limit (risk)
            carol.cancel_order(smaller)
            assert any(m["type"] == "C" for m in wait_messages(carol, lambda got: any(m["type"] == "C" for m in got)))
    finally:
        carol.close()


def test_what_a_client_sends_behind_a_protocol_error_is_not_acted_on(cluster):
    """A malformed OUCH message ends the session; the messages behind it in the same read used to be acted on
    all the same (each answered into a session being cut, and a second malformed one logged again). Now the
    session ends where the error is, and the log says why it ended."""
    from actors.admin import admin_request
    from exchange import soupbintcp as soup

    client = login(cluster, "BOB")
    first = client.next_user_ref_num
    enter = [ouch.encode_inbound("O", user_ref_num=first + k, side="B", quantity=100, symbol="MSFT", price=price,
                                 time_in_force="0", display="Y", capacity="A", inter_market_sweep_eligibility="N",
                                 cross_type="N", cl_ord_id="") for k, price in enumerate((960_000, 961_000))]
    malformed = enter[1][:-2] + b"\x00\x05\x09\x0a"  # an option element longer than its appendage
    client.sock.sendall(b"".join(soup.unsequenced_data(m) for m in (enter[0], malformed, enter[1])))
    got = wait_messages(client, lambda got: False, timeout=1.0)  # the connection is cut meanwhile
    assert not client.connected
    client.reconnect()  # what it missed is replayed: the first order's Accepted, nothing for the third
    got += wait_messages(client, lambda got: False, timeout=1.5)
    assert [(m["type"], m["user_ref_num"]) for m in got] == [("A", first)], got
    prices = [o[3] for o in admin_request(cluster.config, "book/MSFT", {"command": "snapshot"})["state"]["orders"]]
    assert 960_000 in prices and 961_000 not in prices
    log = (cluster.log_dir / "gateway.log").read_text()
    assert "OUCH session BOB disconnected: offset" in log and "disconnected by the application" in log
    client.close()


def test_answers_to_the_messages_before_a_protocol_error_in_the_same_read_are_kept(cluster):
    """The gateway hands a read's answers to the session's store together, after the whole read: a malformed
    message in the middle must not lose the answers the gateway gave at once to the messages before it (here an
    Order Rejected for a bad side and a Cancel Reject for an unknown order), nor act on what follows it."""
    from exchange import soupbintcp as soup

    client = login(cluster, "BOB")
    first = client.next_user_ref_num
    bad_side = ouch.encode_inbound("O", user_ref_num=first, side="X", quantity=100, symbol="MSFT", price=960_000,
                                   time_in_force="0", display="Y", capacity="A", inter_market_sweep_eligibility="N",
                                   cross_type="N", cl_ord_id="")
    cancel_unknown = ouch.encode_inbound("X", user_ref_num=first + 500, quantity=0)
    behind = ouch.encode_inbound("O", user_ref_num=first + 1, side="B", quantity=100, symbol="MSFT", price=961_000,
                                 time_in_force="0", display="Y", capacity="A", inter_market_sweep_eligibility="N",
                                 cross_type="N", cl_ord_id="")
    malformed = b"O" + b"\xff" * 7  # an Enter Order far too short
    client.sock.sendall(b"".join(soup.unsequenced_data(m) for m in (bad_side, cancel_unknown, malformed, behind)))
    got = wait_messages(client, lambda got: False, timeout=1.0)  # the connection is cut meanwhile
    assert not client.connected
    client.reconnect()  # what it missed is replayed from the store
    got += wait_messages(client, lambda got: False, timeout=1.5)
    assert [(m["type"], m["user_ref_num"]) for m in got] == [("J", first), ("I", first + 500)], got
    client.close()
