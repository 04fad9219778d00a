"""A gateway's own answers to an order's commands come after the cluster's answers to its earlier ones.

The gateway actor runs in-process with its real client port and SoupBinTCP server; the risk shard it sends to is
played by a collector, and the test answers for the cluster, so it decides exactly when each answer arrives.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pykka
import pytest
import zmq

from actors.base import NodeContext
from actors.client import ClusterClient
from actors.config import load_config
from actors.gateway import GatewayActor
from actors.ouch_client import OuchClient
from actors.ports import free_port_block
from actors.transport import Batch, LocalDirectory
from exchange.accounts import hash_password
from exchange.orders import Accepted, Cancelled, CancelOrder, Fill, Modified, ModifyOrder, NewOrder, Rejected, Side
from exchange.wire import ORDER_SIZE, REPORT_SIZE, MessageKind, event_to_record, record_to_command
from tests.actors.cluster_helpers import ouch_reports

CONFIG = """
[cluster]
name = "answers"
host = "127.0.0.1"
base_port = {base}
control_port = {control}
client_port = {client}
ouch_port = {ouch}

[[node]]
name = "all"
actors = ["gateway/0", "risk/0", "book/AAPL", "md/0"]

[[instrument]]
symbol = "AAPL"

[[account]]
name = "A1"

[risk.accounts.A1]
orders_per_second = 1
burst = 2

[[user]]
name = "TRADA"
password_hash = "{password_hash}"
accounts = ["A1"]
"""


class RiskStandIn(pykka.ThreadingActor):
    """Plays the risk shard: keeps the commands the gateway sends it."""

    def __init__(self, local: LocalDirectory, index: int) -> None:
        super().__init__()
        self.local, self.index = local, index
        self.commands: list = []

    def on_receive(self, message: object) -> object:
        if type(message) is Batch:
            for offset in range(0, message.count * ORDER_SIZE, ORDER_SIZE):  # type: ignore[union-attr]
                self.commands.append(record_to_command(message.payload, offset)[0])  # type: ignore[union-attr]
            self.local.done(self.index)
        elif message == "commands":
            return list(self.commands)
        return None


class GatewayUnderTest:
    """A gateway actor on its own node, its risk shard a stand-in the test can stop."""

    def __init__(self, directory: Path) -> None:
        base = free_port_block(100)
        path = directory / "cluster.toml"
        path.write_text(CONFIG.format(base=base, control=base + 90, client=base + 91, ouch=base + 95,
                                      password_hash=hash_password("trada-pw", n=1 << 10)))
        self.config = load_config(path)
        self.context = zmq.Context()
        self.local = LocalDirectory()
        self.risk_index = self.config.actor_index["risk/0"]
        self.book_index = self.config.actor_index["book/AAPL"]
        self.start_risk()
        self.gateway = GatewayActor.start(NodeContext(self.config, "all", self.context, self.local), "gateway/0")
        self.gateway.proxy().stats().get(timeout=10)  # answered after on_start: its listeners are up
        self.seq = 0

    def start_risk(self) -> None:
        self.risk = RiskStandIn.start(self.local, self.risk_index)
        self.local.register(self.risk_index, self.risk)

    def stop(self) -> None:
        if self.risk.is_alive():
            self.risk.stop()
        if not self.gateway.is_alive():
            return  # it failed (a test's failure says why); its client port's sockets would block term()
        self.gateway.stop()
        self.context.term()

    def commands(self, count: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            got = self.risk.ask("commands")
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.01)

    def answer(self, *events: object) -> None:
        """Reports from the book, as they would reach the gateway."""
        records = []
        for event in events:
            if event[0]:  # type: ignore[index]
                self.seq += 1
                event = tuple.__new__(type(event), (self.seq, *event[1:]))  # type: ignore[index]
            records.append(event_to_record(event))  # type: ignore[arg-type]
        self.local.deliver(self.config.actor_index["gateway/0"],
                           Batch(MessageKind.REPORTS, self.book_index, b"".join(records), len(records)))


def modified(order_id: int, price: int, qty: int) -> Modified:
    return tuple.__new__(Modified, (1, "AAPL", order_id, "A1", price, qty, True))


def rejected(order_id: int, op: str, reason: str) -> Rejected:
    return tuple.__new__(Rejected, (None, "AAPL", order_id, op, reason, ""))


@pytest.fixture
def gateway(tmp_path):
    under_test = GatewayUnderTest(tmp_path)
    yield under_test
    under_test.stop()


def test_an_ouch_replace_that_cannot_reach_risk_is_answered_after_the_earlier_replace(gateway):
    client = OuchClient(*gateway.config.ouch_address(), "TRADA", "trada-pw", next_seq=1)
    try:
        ref = client.enter_order("AAPL", "B", 100, 1_000_000)
        new = gateway.commands(1)[0]
        assert type(new) is NewOrder
        gateway.answer(tuple.__new__(Accepted, (1, *Accepted(1, new)[1:])))
        assert [m["type"] for m in ouch_reports(client, 1)] == ["A"]

        first = client.replace_order(ref, 50, 1_000_000)
        assert type(gateway.commands(2)[1]) is ModifyOrder
        # Risk goes away: the second replace cannot be delivered and the gateway answers it itself.
        gateway.risk.stop()
        second = client.replace_order(ref, 40, 1_000_000)  # the token current at the gateway
        assert not [m for m in client.messages(0.3) if m["type"] != "Q"], \
            "the gateway's answer to the second replace overtook the first one's"
        # A journal snapshot taken now keeps the held answer (a restart replays to the same translator state).
        state = json.loads(json.dumps(gateway.gateway.proxy().save_state().get(timeout=5)))
        assert [order_id for order_id, _ in state["held_answers"]] == [new.order_id]
        assert state["held_answers"][0][1][0][0] == 1  # one answer of the cluster still to come first
        gateway.answer(modified(new.order_id, 1_000_000, 50))
        answers = ouch_reports(client, 2)
        assert [(m["type"], m["user_ref_num"]) for m in answers] == [("U", first), ("J", second)], answers
        assert answers[0]["quantity"] == 50
        stats = gateway.gateway.proxy().stats().get(timeout=5)
        assert stats["answers_held"] == 1 and stats["answers_waiting_for_earlier"] == 0
    finally:
        client.close()


def test_a_modify_over_the_rate_limit_is_answered_after_the_earlier_commands(gateway):
    with ClusterClient(gateway.config.client_endpoint()) as client:
        # One message: the new order and the first modify pass (a burst of 2); the second is over the limit.
        client.queue(NewOrder("AAPL", 7, "A1", Side.BUY, 1_000_000, 100))
        client.queue(ModifyOrder("AAPL", 7, qty=60))
        client.queue(ModifyOrder("AAPL", 7, qty=30))
        assert client.flush()
        new, modify = gateway.commands(2)
        assert (type(new), type(modify)) == (NewOrder, ModifyOrder)
        time.sleep(0.2)
        assert client.poll(0.1) == [], "the rate-limit reject overtook the answers to the earlier commands"
        gateway.answer(tuple.__new__(Accepted, (1, *Accepted(1, new)[1:])))
        gateway.answer(modified(new.order_id, 1_000_000, 60))
        got: list = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            got += [event for event, _ in client.poll(0.1)]
        assert [type(e) for e in got] == [Accepted, Modified, Rejected], got
        assert got[2].reason == "rate_limit" and got[2].order_id == 7 and got[2].op == "modify"

        # An order the gateway knows is done while a cancel of it is unanswered: the unknown-order answer to a
        # modify sent then comes after the cancel's.
        client.queue(CancelOrder("AAPL", 7))
        assert client.flush()
        cancel = gateway.commands(3)[2]
        assert type(cancel) is CancelOrder
        gateway.answer(tuple.__new__(Fill, (1, "AAPL", 1_000_000, 60, new.order_id, 10**9, "A1", "A2", Side.SELL, 1)))
        fill = [event for event, _ in client.poll(2.0)]
        assert [type(e) for e in fill] == [Fill], fill
        client.queue(ModifyOrder("AAPL", 7, qty=20))
        assert client.flush()
        assert client.poll(0.3) == [], "the modify's reject overtook the cancel's answer"
        gateway.answer(rejected(new.order_id, "cancel", "unknown_order"))
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += [event for event, _ in client.poll(0.1)]
        assert [(type(e), e.op, e.reason) for e in got] == [(Rejected, "cancel", "unknown_order"),
                                                             (Rejected, "modify", "unknown_order")], got
        stats = gateway.gateway.proxy().stats().get(timeout=5)
        assert stats["answers_held"] == 2 and stats["answers_waiting_for_earlier"] == 0
        assert stats["live_orders"] == 0


def test_garbage_batches_leave_the_gateway_answering(gateway):
    # Short payloads, counts that disagree with them, random records of both kinds: counted or ignored, and the
    # gateway (its arrival-age histograms included) goes on answering clients.
    rng = random.Random(5)
    index = gateway.config.actor_index["gateway/0"]
    garbage = [Batch(MessageKind.REPORTS, gateway.book_index, b"\x01\x02", 1),
               Batch(MessageKind.REPORTS, gateway.book_index, b"", 3),
               Batch(MessageKind.ORDERS, -1, b"\x00" * 7, 1, session=b"c"),
               Batch(MessageKind.ORDERS, -1, bytes(rng.randrange(256) for _ in range(ORDER_SIZE * 3)), 3,
                     session=b"c")]
    garbage += [Batch(MessageKind.REPORTS, gateway.book_index, bytes(rng.randrange(256) for _ in range(REPORT_SIZE)),
                      1) for _ in range(200)]
    for batch in garbage:
        gateway.local.deliver(index, batch)
    stats = gateway.gateway.proxy().stats().get(timeout=10)
    assert stats["malformed_batches"] >= 2
    with ClusterClient(gateway.config.client_endpoint()) as client:
        client.queue(NewOrder("AAPL", 1, "A1", Side.BUY, 1_000_000, 100))
        assert client.flush()
        new = gateway.commands(1)[0]
        assert type(new) is NewOrder
        gateway.answer(tuple.__new__(Accepted, (1, *Accepted(1, new)[1:])))
        got: list = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got += [event for event, _ in client.poll(0.1)]
        assert [type(e) for e in got] == [Accepted]


def _events(client: ClusterClient, count: int, timeout: float = 5.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += [event for event, _ in client.poll(0.1)]
    return got


def cancelled(order_id: int, qty: int, reason: str) -> Cancelled:
    return tuple.__new__(Cancelled, (None, "AAPL", order_id, "A1", qty, reason))


def test_a_dead_books_orders_end_the_way_their_client_can_follow(gateway):
    # A book node dies: risk answers for what it had sent there, but the book told the gateway and risk at once,
    # so each may be behind the other. The client hears Accepted then Cancelled, or Rejected: never Accepted then
    # Rejected (what CI once saw), nor Cancelled for an order it never heard accepted.
    with ClusterClient(gateway.config.client_endpoint()) as client:
        client.new_order("AAPL", 1, "A1", "buy", 100, price=1_000_000)
        first = gateway.commands(1)[0]
        gateway.answer(tuple.__new__(Accepted, (1, *Accepted(1, first)[1:])))
        assert [type(e) for e in _events(client, 1)] == [Accepted]
        gateway.answer(rejected(first.order_id, "new", "instrument_unavailable"))  # risk had not seen it accepted
        got = _events(client, 1)
        assert [(type(e), e.order_id, e.qty, e.reason) for e in got] == [
            (Cancelled, 1, 100, "instrument_unavailable")], got

        client.new_order("AAPL", 2, "A1", "buy", 100, price=1_000_000)
        second = gateway.commands(2)[1]
        gateway.answer(cancelled(second.order_id, 100, "instrument_unavailable"))  # the book's Accepted is late
        gateway.answer(tuple.__new__(Accepted, (2, *Accepted(2, second)[1:])))
        got = _events(client, 1)
        got += _events(client, 1, timeout=0.3)  # and nothing after it (the late Accepted is dropped)
        assert [(type(e), e.order_id, e.op, e.reason) for e in got] == [
            (Rejected, 2, "new", "instrument_unavailable")], got
        stats = gateway.gateway.proxy().stats().get(timeout=5)
        assert stats["rejects_of_accepted_orders_as_cancels"] == 1
        assert stats["cancels_of_unaccepted_orders_as_rejects"] == 1
        assert stats["live_orders"] == 0


def test_an_ouch_order_of_a_dead_book_is_canceled_after_its_accept(gateway):
    client = OuchClient(*gateway.config.ouch_address(), "TRADA", "trada-pw", next_seq=1)
    try:
        client.enter_order("AAPL", "B", 100, 1_000_000)
        new = gateway.commands(1)[0]
        gateway.answer(tuple.__new__(Accepted, (1, *Accepted(1, new)[1:])))
        assert [m["type"] for m in ouch_reports(client, 1)] == ["A"]
        gateway.answer(rejected(new.order_id, "new", "instrument_unavailable"))
        got = ouch_reports(client, 1)
        assert [(m["type"], m["quantity"]) for m in got] == [("C", 100)], got
    finally:
        client.close()


def test_a_dead_books_cancel_takes_off_what_the_client_was_told_remains(gateway):
    # Risk cancels the order with its own idea of what was left; a fill the gateway passed on before risk saw it
    # makes that too much: the client's Canceled takes off what remains after the fills it heard of.
    client = OuchClient(*gateway.config.ouch_address(), "TRADA", "trada-pw", next_seq=1)
    try:
        ref = client.enter_order("AAPL", "B", 100, 1_000_000)
        new = gateway.commands(1)[0]
        gateway.answer(tuple.__new__(Accepted, (1, *Accepted(1, new)[1:])))
        gateway.answer(tuple.__new__(Fill, (1, "AAPL", 1_000_000, 40, new.order_id, 10**9, "A1", "A2", Side.SELL, 1)))
        assert [m["type"] for m in ouch_reports(client, 2)] == ["A", "E"]
        gateway.answer(cancelled(new.order_id, 100, "instrument_unavailable"))
        got = ouch_reports(client, 1)
        assert [(m["type"], m["user_ref_num"], m["quantity"]) for m in got] == [("C", ref, 60)], got
    finally:
        client.close()


def test_a_gateway_keeps_nothing_of_binary_api_orders_once_they_are_done(gateway):
    """Every order of the binary API was added to the list of ids minted by the OUCH message being handled (emptied
    per OUCH message only): 0.4 MB a second at 20k commands a second, for the life of the gateway."""
    with ClusterClient(gateway.config.client_endpoint()) as client:
        client.queue(NewOrder("AAPL", 1, "A1", Side.BUY, 1_000_000, 100))
        client.queue(NewOrder("AAPL", 2, "A1", Side.SELL, 1_010_000, 100))
        assert client.flush()
        orders = gateway.commands(2)
        for order in orders:
            gateway.answer(tuple.__new__(Accepted, (1, *Accepted(1, order)[1:])),
                           tuple.__new__(Cancelled, (1, "AAPL", order.order_id, "A1", 100, "ioc")))
        got: list = []
        deadline = time.monotonic() + 5
        while len(got) < 4 and time.monotonic() < deadline:
            got += [event for event, _ in client.poll(0.1)]
        assert [type(e) for e in got] == [Accepted, Cancelled, Accepted, Cancelled], got
    proxy = gateway.gateway.proxy()
    assert proxy.stats().get(timeout=5)["live_orders"] == 0 and proxy.by_client.get(timeout=5) == {}
    actor = gateway.gateway._actor_weakref()  # idle now (it answered the ask above): its private state read here
    assert actor._minted == [], len(actor._minted)
