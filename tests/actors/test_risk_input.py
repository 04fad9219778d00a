"""A risk shard fed garbage reports (and a book's re-send answers among them) goes on, counting what it dropped.

The risk actor runs in-process with its real outbox; the book node it talks to is not running, so the test plays
the transport's peer-down and peer-up notices and the book's answers itself.
"""

from __future__ import annotations

import random

import pytest
import zmq

from actors.base import NodeContext
from actors.config import cluster_order_id, load_config
from actors.durable import resend_done_record
from actors.ports import free_port_block
from actors.risk import RiskActor
from actors.transport import Batch, LocalDirectory, PeerDown, PeerUp
from exchange.orders import NewOrder, Side
from exchange.wire import REPORT_SIZE, EventKind, MessageKind, command_to_record
from tests.actors.cluster_helpers import wait_for

CONFIG = """
[cluster]
name = "risk-input"
host = "127.0.0.1"
base_port = {base}
control_port = {control}
client_port = {client}

[[node]]
name = "front"
actors = ["gateway/0", "risk/0"]

[[node]]
name = "books"
actors = ["book/AAPL"]

[[instrument]]
symbol = "AAPL"

[[account]]
name = "A1"

[durability]
enabled = true
fsync = "none"
state_dir = "{state}"
"""


@pytest.fixture
def risk(tmp_path):
    base = free_port_block(100)
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG.format(base=base, control=base + 90, client=base + 91, state=tmp_path / "state"))
    config = load_config(path)
    context = zmq.Context()
    actor = RiskActor.start(NodeContext(config, "front", context, LocalDirectory()), "risk/0")
    yield actor, config
    actor.stop()
    context.term()


def _stats(actor) -> dict:  # noqa: ANN001
    return actor.proxy().stats().get(timeout=10)


def test_garbage_reports_and_a_returning_books_answer(risk):
    actor, config = risk
    book = config.actor_index["book/AAPL"]
    # The book's node is taken for down, then answers pings again without having restarted: risk asks it for
    # its events and holds AAPL until the answer.
    actor.tell(PeerDown("books"))
    actor.tell(PeerUp("books"))
    assert wait_for(lambda: _stats(actor).get("resend_requests_to_returning_books") == 1)
    assert _stats(actor)["books_recovering"] == ["AAPL"]
    rng = random.Random(9)
    garbage = [Batch(MessageKind.REPORTS, book, b"\x01\x02", 1), Batch(MessageKind.REPORTS, book, b"", 4)]
    garbage += [Batch(MessageKind.REPORTS, book, bytes(rng.randrange(256) for _ in range(REPORT_SIZE)), 1)
                for _ in range(200)]
    # Records shaped like a re-send answer whose other bytes are noise (a symbol nobody waits for, mostly).
    for _ in range(50):
        record = bytearray(rng.randrange(256) for _ in range(REPORT_SIZE))
        record[0], record[7] = EventKind.RECOVERED, 3
        garbage.append(Batch(MessageKind.REPORTS, book, bytes(record), 1))
    for batch in garbage:
        actor.tell(batch)
    stats = _stats(actor)
    assert stats["malformed_batches"] >= 2
    assert stats["books_recovering"] == ["AAPL"], "noise ended the wait"
    # The book's real answer ends it: AAPL is taken again.
    actor.tell(Batch(MessageKind.REPORTS, book, resend_done_record("AAPL", 0), 1))
    assert wait_for(lambda: _stats(actor)["books_recovering"] == [])
    assert _stats(actor)["books_back_without_restart"] == 1


def test_a_copy_of_a_refused_order_is_refused_again_once_its_book_is_back(risk):
    """A gateway sends its unanswered orders again when it sees a risk node come up, and the refusal of one may still
    be on its way (a cluster whose nodes start one by one). Checked anew, the copy passed once the book was up and
    rested there, while its client had been told Order Rejected (and a later execution of it reached nobody)."""
    actor, config = risk
    gateway, book = config.actor_index["gateway/0"], config.actor_index["book/AAPL"]
    record = command_to_record(NewOrder("AAPL", cluster_order_id(0, 1), "A1", Side.SELL, 1_000_000, 100))
    actor.tell(PeerDown("books"))
    actor.tell(Batch(MessageKind.ORDERS, gateway, record, 1))
    assert wait_for(lambda: _stats(actor).get("rejected_instrument_unavailable") == 1)
    actor.tell(PeerUp("books"))
    actor.tell(Batch(MessageKind.REPORTS, book, resend_done_record("AAPL", 0), 1))
    assert wait_for(lambda: _stats(actor)["books_recovering"] == [])
    actor.tell(Batch(MessageKind.ORDERS, gateway, record, 1))  # the gateway's copy
    assert wait_for(lambda: _stats(actor).get("refused_copies") == 1)
    stats = _stats(actor)
    assert stats["rejected_instrument_unavailable"] == 2 and stats["in_flight_new"] == 0  # not sent to the book
    # The refusal is remembered across a snapshot.
    state = actor.proxy().save_state().get(timeout=10)
    assert [order_id for order_id, _ in state["refused_new"]] == [cluster_order_id(0, 1)]

