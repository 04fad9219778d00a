"""Modifies sent again after a crash are applied at most once (docs/durability.md "Modifies sent again").

The book actor runs in-process here with its real journal; the actors its reports go to live on the same node,
played by a collector, so every report the book sends is seen.
"""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path

import pykka
import pytest
import zmq

from actors.admin import admin_request
from actors.base import ControlRequest, NodeContext
from actors.book import BookActor
from actors.config import cluster_order_id, load_config
from actors.journal_cli import inspect, rebuild
from actors.ouch_client import OuchClient
from actors.transport import Batch, LocalDirectory
from exchange.engine import OrderBook
from exchange.journal import recover
from exchange.orders import (
    Accepted,
    Cancelled,
    CancelOrder,
    CancelReason,
    Fill,
    Modified,
    ModifyOrder,
    NewOrder,
    Rejected,
    RejectReason,
    Side,
)
from exchange.wire import (
    REPORT_SIZE,
    EventKind,
    MessageKind,
    command_to_record,
    record_to_command,
    record_to_event,
    record_version,
)
from tests.actors.cluster_helpers import start_cluster, users_toml, wait_for, write_config
from tests.actors.test_durability import OUCH_USERS, _reconnected

CONFIG = """
[cluster]
name = "versions"
transport = "ipc"
ipc_dir = "{dir}/ipc"
control_port = 1
client_port = 2

[[node]]
name = "all"
actors = ["gateway/0", "risk/0", "book/AAPL", "md/0"]

[[instrument]]
symbol = "AAPL"

[[account]]
name = "A1"

[[account]]
name = "A2"

[durability]
enabled = true
state_dir = "{dir}/state"
fsync = "none"
snapshot_every = {snapshot_every}
"""


class Collector(pykka.ThreadingActor):
    """Stands in for the gateway, risk shard and market data of the node: keeps the book's reports."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: dict[int, tuple] = {}  # by sequence number: each event reaches three of its receivers here

    def on_receive(self, message: object) -> object:
        if type(message) is Batch and message.kind is MessageKind.REPORTS:  # type: ignore[union-attr]
            for offset in range(0, message.count * REPORT_SIZE, REPORT_SIZE):  # type: ignore[union-attr]
                if message.payload[offset] != EventKind.RECOVERED:  # type: ignore[union-attr]
                    event = record_to_event(message.payload, offset)[0]  # type: ignore[union-attr]
                    self.reports[event.seq] = event
        elif message == "reports":
            return [self.reports[seq] for seq in sorted(self.reports)]
        return None


class BookUnderTest:
    """A book actor on a journal in ``directory``, started and restarted like a node would."""

    def __init__(self, directory: Path, snapshot_every: int = 100_000) -> None:
        path = directory / "cluster.toml"
        path.write_text(CONFIG.format(dir=directory, snapshot_every=snapshot_every))
        self.config = load_config(path)
        self.context = zmq.Context()
        self.state = directory / "state" / "all" / "book-AAPL"
        self.book: pykka.ActorRef | None = None

    def start(self) -> None:
        local = LocalDirectory()
        self.collector = Collector.start()
        for name in ("gateway/0", "risk/0", "md/0"):
            local.register(self.config.actor_index[name], self.collector)
        node = NodeContext(self.config, "all", self.context, local)
        self.book = BookActor.start(node, "book/AAPL", OrderBook(self.config.instruments["AAPL"]))

    def stop(self) -> None:
        assert self.book is not None
        self.book.stop()
        self.collector.stop()

    def send(self, *records: bytes) -> None:
        assert self.book is not None
        self.book.tell(Batch(MessageKind.ORDERS, self.config.actor_index["risk/0"], b"".join(records), len(records)))

    def reports(self, wait: float = 0.3) -> list[tuple]:
        time.sleep(wait)  # the book's flush is asynchronous; nothing else will arrive
        return self.collector.ask("reports")

    def control(self, command: str) -> dict:
        assert self.book is not None
        return self.book.ask(ControlRequest({"command": command}))


def _modify(order_id: int, version: int, qty: int | None = None, price: int | None = None) -> bytes:
    return command_to_record(ModifyOrder("AAPL", order_id, qty=qty, price=price), 0, version)


@pytest.fixture
def book(tmp_path):
    under_test = BookUnderTest(tmp_path)
    under_test.start()
    yield under_test
    under_test.stop()
    under_test.context.term()


ORDER = cluster_order_id(0, 1)
OTHER = cluster_order_id(0, 2)


def test_the_version_rides_in_the_order_record_of_a_modify_only():
    record = _modify(ORDER, 7, qty=30)
    assert record_version(record) == 7
    command = record_to_command(record)[0]
    assert type(command) is ModifyOrder and (command.order_id, command.qty, command.price) == (ORDER, 30, None)
    new = command_to_record(NewOrder("AAPL", ORDER, "A1", Side.BUY, 100, 50, display_qty=10), 0, 5)
    assert record_version(new) == 0 and record_to_command(new)[0].display_qty == 10


def test_a_copy_of_an_applied_modify_is_dropped_and_a_new_version_applied(book):
    book.send(command_to_record(NewOrder("AAPL", ORDER, "A1", Side.BUY, 100, 50)),
              _modify(ORDER, 1, qty=40))
    # A fill between the modify and its copy: applied again, the copy would give the order back 40.
    book.send(command_to_record(NewOrder("AAPL", OTHER, "A2", Side.SELL, 100, 15)))
    book.send(_modify(ORDER, 1, qty=40))
    book.send(_modify(ORDER, 2, qty=20), _modify(ORDER, 2, qty=20), _modify(ORDER, 1, qty=40))
    reports = book.reports()
    modified = [r for r in reports if type(r) is Modified]
    assert [(m.order_id, m.qty) for m in modified] == [(ORDER, 40), (ORDER, 20)]
    assert sum(type(r) is Fill for r in reports) == 1
    assert not [r for r in reports if type(r) is Rejected]
    state = book.control("snapshot")["state"]
    assert [(o[0], o[4]) for o in state["orders"]] == [(ORDER, 20)]
    assert book.control("stats")["stats"]["duplicate_modifies"] == 3
    # Unversioned modifies (the binary client API, old journals) are always applied.
    book.send(_modify(ORDER, 0, qty=10), _modify(ORDER, 0, qty=15))
    assert [r.qty for r in book.reports() if type(r) is Modified][-2:] == [10, 15]
    # A copy for an order that left the book is answered like any modify of it (risk may have forgotten the
    # order and waits for an answer; the gateway drops it as a second one).
    book.send(command_to_record(CancelOrder("AAPL", ORDER)), _modify(ORDER, 2, qty=20))
    rejects = [r for r in book.reports() if type(r) is Rejected]
    assert [(r.order_id, r.op, r.reason) for r in rejects] == [(ORDER, "modify", RejectReason.UNKNOWN_ORDER)]
    # The journal holds what the engine saw (no copies): a plain replay of it equals the book.
    replayed, _ = rebuild(str(book.state))
    assert replayed is not None and replayed.snapshot() == book.control("snapshot")["state"]


def _cut(order_id: int, version: int, qty: int) -> bytes:
    return command_to_record(ModifyOrder("AAPL", order_id, qty=qty, reduce=True), 0, version)


def test_a_cut_rides_as_a_flagged_modify_with_its_version():
    record = _cut(ORDER, 3, 5)
    assert record_version(record) == 3
    command = record_to_command(record)[0]
    assert type(command) is ModifyOrder and command.reduce is True and (command.qty, command.price) == (5, None)
    assert record_to_command(_modify(ORDER, 3, qty=5))[0].reduce is False


def test_a_copy_of_an_applied_cut_is_dropped(book):
    """A cut is not idempotent as an absolute quantity is: applied again, its copy would cut twice."""
    book.send(command_to_record(NewOrder("AAPL", ORDER, "A1", Side.BUY, 100, 50)), _cut(ORDER, 1, 10))
    book.send(_cut(ORDER, 1, 10), _cut(ORDER, 2, 10), _cut(ORDER, 2, 10))
    reports = book.reports()
    assert [r.qty for r in reports if type(r) is Modified] == [40, 30]
    assert book.control("stats")["stats"]["duplicate_modifies"] == 2
    book.send(_cut(ORDER, 3, 100))  # more than is open: the order is cancelled, by the user
    cancelled = [r for r in book.reports() if type(r) is Cancelled]
    assert [(r.order_id, r.qty, r.reason) for r in cancelled] == [(ORDER, 30, CancelReason.USER)]
    replayed, _ = rebuild(str(book.state))
    assert replayed is not None and replayed.snapshot() == book.control("snapshot")["state"]
    out = io.StringIO()  # the journal holds the cuts the book applied, copies left out, counted apart from modifies
    assert inspect(str(book.state), out) == 0 and "commands after the snapshot: new 1, reduce 3" in out.getvalue()


def test_versions_of_orders_gone_from_the_book_are_forgotten_without_snapshots(book):
    for n in range(3000):
        order_id = cluster_order_id(0, 100 + n)
        book.send(command_to_record(NewOrder("AAPL", order_id, "A1", Side.BUY, 100, 50)),
                  _modify(order_id, 1, qty=40), command_to_record(CancelOrder("AAPL", order_id)))
    book.send(command_to_record(NewOrder("AAPL", ORDER, "A1", Side.BUY, 100, 50)), _modify(ORDER, 1, qty=40))
    versions = book.book.proxy().modify_versions.get(timeout=10)
    assert ORDER in versions and len(versions) <= 1024 + 2  # not one entry per order of the day
    book.send(_modify(ORDER, 1, qty=40))  # the live order's version is still known: its copy is dropped
    book.reports()
    assert book.control("stats")["stats"]["duplicate_modifies"] == 1


def test_versions_survive_a_restart_from_the_journal_and_from_a_snapshot(tmp_path):
    under_test = BookUnderTest(tmp_path, snapshot_every=5)
    try:
        under_test.start()
        under_test.send(command_to_record(NewOrder("AAPL", ORDER, "A1", Side.BUY, 100, 50)), _modify(ORDER, 1, qty=40))
        last = max(r.seq for r in under_test.reports())
        under_test.stop()
        # From the journal alone (no snapshot yet: two commands). A restarted book re-sends its events first.
        under_test.start()
        under_test.send(_modify(ORDER, 1, qty=40), _modify(ORDER, 2, qty=30))
        reports = under_test.reports()
        assert [r.qty for r in reports if type(r) is Modified and r.seq > last] == [30]
        # More commands: a snapshot is written, with the versions of the orders still in the book.
        under_test.send(command_to_record(NewOrder("AAPL", OTHER, "A2", Side.SELL, 200, 10)), _modify(OTHER, 1, qty=5),
                        command_to_record(NewOrder("AAPL", cluster_order_id(0, 3), "A2", Side.SELL, 100, 5)))
        last = max(r.seq for r in under_test.reports())
        state, _, _ = recover(under_test.state)
        assert state is not None and state["modify_versions"] == {str(ORDER): 2, str(OTHER): 1}
        under_test.stop()
        under_test.start()
        # Copies of versions applied before the crash are dropped; a third version is applied once.
        under_test.send(_modify(ORDER, 2, qty=30), _modify(OTHER, 1, qty=5), _modify(ORDER, 3, qty=20),
                        _modify(ORDER, 3, qty=20))
        reports = [r for r in under_test.reports() if r.seq and r.seq > last]
        assert [(type(r), r.order_id, r.qty) for r in reports if type(r) in (Modified, Rejected, Accepted)] == \
            [(Modified, ORDER, 20)]
        assert under_test.control("stats")["stats"]["duplicate_modifies"] == 3
        state = under_test.control("snapshot")["state"]
        assert sorted((o[0], o[4]) for o in state["orders"]) == [(ORDER, 20), (OTHER, 5)]
    finally:
        under_test.stop()
        under_test.context.term()


def _durable_ouch_cluster(tmp_path):  # noqa: ANN001, ANN202
    """A cluster journaling every role with fsync ``always``, with the OUCH users of this module."""
    users = users_toml(OUCH_USERS)
    path = write_config(tmp_path, extra='[durability]\nenabled = true\nfsync = "always"\n' + users)
    return start_cluster(path, tmp_path / "logs")


def _messages(client: OuchClient, seconds: float) -> list[dict]:
    """Every OUCH message the client receives within ``seconds``."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = client.recv(0.1)
        if message is not None:
            out.append(message)
    return out


def test_a_restarted_gateway_sends_an_unanswered_replace_again_and_it_is_applied_once(tmp_path):
    cluster = _durable_ouch_cluster(tmp_path)
    config = cluster.config
    client = OuchClient(*config.ouch_address(), "TRADA", "trada-pw", next_seq=1)
    try:
        ref = client.enter_order("AAPL", "B", 100, 990_000)
        accepted = next(m for m in _messages(client, 3) if m["type"] == "A")
        order_id = accepted["order_reference_number"]
        # The replace reaches the gateway's journal and the risk node's socket, and dies there: the risk node
        # is stopped (it reads nothing) and then killed, as is the gateway.
        cluster.kill_node("risk", signal.SIGSTOP)
        before = admin_request(config, "gateway/0", {"command": "stats"})["stats"].get("ouch_messages", 0)
        new_ref = client.replace_order(ref, 40, 991_000)
        assert wait_for(lambda: admin_request(config, "gateway/0", {"command": "stats"})["stats"]
                        .get("ouch_messages", 0) > before, timeout=5)
        time.sleep(0.3)  # committed (fsync always) and sent on
        cluster.kill_node("gateway")
        cluster.kill_node("risk")
        assert wait_for(lambda: (cluster.pump(0.02), not any(cluster.alive()[n] for n in ("gateway", "risk")))[1],
                        timeout=5)
        assert [(o[0], o[3], o[4]) for o in _book_orders(config)] == [(order_id, 990_000, 100)]
        # The restarted risk shard lost the replace; the restarted gateway sends it again (and once more when
        # it hears that risk restarted: that copy is dropped by risk or by the book, by its version).
        cluster.restart_node("risk", timeout=60)
        cluster.restart_node("gateway", timeout=60)
        assert wait_for(lambda: _reconnected(client), timeout=20)
        answers = [m for m in _messages(client, 3) if m["type"] in ("U", "J")]
        assert [(m["type"], m["orig_user_ref_num"], m["user_ref_num"], m["quantity"], m["price"]) for m in answers] \
            == [("U", ref, new_ref, 40, 991_000)]
        assert [(o[0], o[3], o[4]) for o in _book_orders(config)] == [(order_id, 991_000, 40)]
        gateway = admin_request(config, "gateway/0", {"command": "stats"})["stats"]
        assert gateway["orders_resent"] >= 1 and gateway["unanswered_modifies"] == 0
        for shard in config.risk_shards:
            assert admin_request(config, shard, {"command": "stats"})["stats"]["in_flight_commands"] == 0
            for check in admin_request(config, shard, {"command": "exposure_check"}).values():
                assert check["reserved"] == check["recomputed"] and check["pending_modifies"] == 0
        # A further replace gets the next version and is applied as usual.
        newer = client.replace_order(new_ref, 30, 992_000)
        answers = [m for m in _messages(client, 2) if m["type"] in ("U", "J")]
        assert [(m["type"], m["user_ref_num"], m["quantity"]) for m in answers] == [("U", newer, 30)]
        assert [(o[0], o[3], o[4]) for o in _book_orders(config)] == [(order_id, 992_000, 30)]
    finally:
        client.close()
        cluster.stop()


def _book_orders(config) -> list:  # noqa: ANN001
    return admin_request(config, "book/AAPL", {"command": "snapshot"})["state"]["orders"]


def test_risk_sends_a_replace_in_flight_to_a_recovered_book_which_answers_it(tmp_path):
    cluster = _durable_ouch_cluster(tmp_path)
    config = cluster.config
    shard = config.risk_shard(OUCH_USERS["TRADA"][1])
    client = OuchClient(*config.ouch_address(), "TRADA", "trada-pw", next_seq=1)
    try:
        ref = client.enter_order("AAPL", "B", 100, 990_000)
        order_id = next(m for m in _messages(client, 3) if m["type"] == "A")["order_reference_number"]
        # The replace passes risk and dies in the socket of the book's node (stopped, then killed).
        cluster.kill_node("book1", signal.SIGSTOP)
        new_ref = client.replace_order(ref, 40, 991_000)
        assert wait_for(lambda: admin_request(config, shard, {"command": "stats"})["stats"]["in_flight_commands"] == 1,
                        timeout=5)
        cluster.kill_node("book1")
        assert wait_for(lambda: (cluster.pump(0.02), not cluster.alive()["book1"])[1], timeout=5)
        cluster.restart_node("book1", timeout=60)
        # Risk sends it again once the book says it is back; the book's answer is the one the client gets
        # (not instrument_unavailable), once.
        answers = [m for m in _messages(client, 3) if m["type"] in ("U", "J")]
        assert [(m["type"], m["orig_user_ref_num"], m["user_ref_num"], m["quantity"], m["price"]) for m in answers] \
            == [("U", ref, new_ref, 40, 991_000)]
        assert [(o[0], o[3], o[4]) for o in _book_orders(config)] == [(order_id, 991_000, 40)]
        stats = admin_request(config, shard, {"command": "stats"})["stats"]
        assert stats["in_flight_commands"] == 0 and stats.get("commands_resent_to_recovered_book") == 1
        for check in admin_request(config, shard, {"command": "exposure_check"}).values():
            assert check["reserved"] == check["recomputed"] and check["pending_modifies"] == 0
        assert admin_request(config, "gateway/0", {"command": "stats"})["stats"]["unanswered_modifies"] == 0
    finally:
        client.close()
        cluster.stop()
