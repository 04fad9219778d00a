"""The transport's fast paths agree with the generic ones they replace (wire header, frames, backlog)."""

from __future__ import annotations

import queue

import pykka
import pytest
import zmq

from actors.base import ClusterActor
from actors.transport import LocalDirectory, recv_frames, send_frames
from exchange.layout import LayoutError
from exchange.wire import (
    HEADER,
    WIRE_VERSION,
    MessageKind,
    _ascii8,
    pack_header,
    parse_header,
    text8,
    unpack_header,
)


def test_parse_header_agrees_with_the_layout():
    frame = pack_header(MessageKind.REPORTS, 512, 3, 65535, 2**64 - 1)
    assert frame == HEADER.pack_values((WIRE_VERSION, MessageKind.REPORTS, 512, 3, 65535, 2**64 - 1))
    assert parse_header(frame) == (MessageKind.REPORTS, 512, 3, 65535, 2**64 - 1)
    assert parse_header(frame)[0] is MessageKind.REPORTS
    assert unpack_header(frame) == dict(zip(HEADER.names, HEADER.unpack_values(frame), strict=True))


@pytest.mark.parametrize("frame", [
    b"",
    b"\x01" * 15,
    HEADER.struct.pack(WIRE_VERSION + 1, 1, 0, 0, 0, 0),  # another wire version
    HEADER.struct.pack(1, 1, 0, 0, 0, 0),  # the version before modifies carried theirs
    HEADER.struct.pack(WIRE_VERSION, 99, 0, 0, 0, 0),  # an unknown kind
])
def test_parse_header_refuses_what_unpack_header_refuses(frame: bytes):
    with pytest.raises(LayoutError):
        parse_header(frame)
    with pytest.raises(LayoutError):
        unpack_header(frame)


def test_pack_header_out_of_range_is_a_layout_error():
    with pytest.raises(LayoutError):
        pack_header(MessageKind.ORDERS, 1 << 16, 0, 0, 0)


def test_cached_field_conversions_match_the_plain_ones():
    for text in ("AAPL", "ACCOUNT1", "LONGER THAN 8", "", "é"):
        for _ in range(2):  # a miss, then a hit
            assert _ascii8(text) == text.encode("ascii", "replace")[:8].ljust(8, b" ")
    assert _ascii8(None) == b"        "  # type: ignore[arg-type]
    assert _ascii8(["unhashable"]) == b"        "  # type: ignore[arg-type]
    for data in (b"AAPL    ", b"        ", b"\xffBAD    "):
        for _ in range(2):
            assert text8(data) == data.decode("ascii", "replace").rstrip(" ")


def test_frames_round_trip_and_router_errors_come_on_the_first_part():
    context = zmq.Context()
    try:
        server = context.socket(zmq.ROUTER)
        server.setsockopt(zmq.ROUTING_ID, b"server")
        server.bind("inproc://frames")
        client = context.socket(zmq.ROUTER)
        client.setsockopt(zmq.ROUTER_MANDATORY, 1)
        client.connect("inproc://frames")
        header = pack_header(MessageKind.ORDERS, 1, 0, 0, 7)
        send_frames(client, b"server", header, b"x" * 64)
        assert server.poll(2000)
        sender, got_header, payload = recv_frames(server)
        assert (got_header, payload) == (header, b"x" * 64)
        send_frames(server, sender, b"", b"")  # empty frames survive too
        assert client.poll(2000)
        assert recv_frames(client) == [b"server", b"", b""]
        with pytest.raises(zmq.ZMQError) as failure:  # unroutable: refused whole, nothing half-sent
            send_frames(client, b"nobody", header, b"y")
        assert failure.value.errno == zmq.EHOSTUNREACH
        send_frames(client, b"server", header, b"z")
        assert server.poll(2000)
        assert recv_frames(server)[1:] == [header, b"z"]
        with pytest.raises(zmq.Again):
            recv_frames(server)
        for socket in (server, client):
            socket.close(linger=0)
    finally:
        context.term()


class _Sink(pykka.ThreadingActor):
    """Takes whatever is delivered to it; the test says when it has been processed (LocalDirectory.done)."""

    def on_receive(self, message: object) -> None:
        return None


def test_over_is_max_backlog_above_a_limit():
    local = LocalDirectory()
    assert not local.over(0)
    refs = {index: _Sink.start() for index in (1, 2, 3)}
    try:
        for index, ref in refs.items():
            local.register(index, ref)
        for _ in range(5):
            assert local.deliver(2, "batch")
        assert local.deliver(3, "batch")
        local.done(2)
        local.done(3)
        for limit in range(6):
            assert local.over(limit) == (local.max_backlog() > limit)  # 4 behind
        for _ in range(4):
            local.done(2)
        assert local.max_backlog() == 0 and not local.over(0)
        # Caught up, then behind again: a later delivery counts.
        for _ in range(3):
            assert local.deliver(1, "batch")
        assert local.over(2) and not local.over(3)
    finally:
        for ref in refs.values():
            ref.stop()


def test_actor_inbox_is_a_fifo_simple_queue():
    inbox = ClusterActor._create_actor_inbox()
    assert isinstance(inbox, queue.SimpleQueue)
    for n in range(3):
        inbox.put(n)
    assert [inbox.get() for _ in range(3)] == [0, 1, 2] and inbox.empty()


def test_a_peer_a_send_finds_gone_is_still_reported_down_by_the_next_probe(tmp_path):
    """Under load a send, not the probe, is the first to find a node gone: the actor's on_peer_down must run all
    the same (it cancels or holds the dead books' orders; missing it left their owners never told)."""
    import time

    from actors.config import load_config
    from actors.transport import Outbox
    from exchange.orders import NewOrder, Side
    from exchange.wire import command_to_record
    from tests.actors.cluster_helpers import wait_for, write_config

    config = load_config(write_config(tmp_path))
    context = zmq.Context()
    try:
        book2 = context.socket(zmq.ROUTER)  # plays node book2's inbound socket
        book2.setsockopt(zmq.ROUTING_ID, b"book2")
        book2.setsockopt(zmq.LINGER, 0)
        book2.bind(config.endpoint(config.node("book2"), bind=True))
        outbox = Outbox(context, config, "risk/0", LocalDirectory(), "risk")
        try:
            assert wait_for(lambda: "book2" in outbox.probe()[0], timeout=10)
            book2.close(linger=0)
            record = command_to_record(NewOrder("GOOG", 1, "A1", Side.BUY, 1_000_000, 100))
            destination = config.actor_index["book/GOOG"]
            assert wait_for(lambda: bool(outbox.send_now(destination, MessageKind.ORDERS, [record]).unreachable),
                            timeout=10)
            assert not outbox.up["book2"]
            came_up, went_down = outbox.probe()
            assert went_down == ["book2"] and came_up == []
            time.sleep(0.05)
            assert outbox.probe() == ([], []), "reported once"
        finally:
            outbox.close()
    finally:
        context.term()


def test_a_batch_whose_source_is_not_its_sender_is_refused_and_the_book_lives(tmp_path):
    """Actors answer to the source number of a batch (a book sends a reject to the risk shard that sent the
    command). A number out of range (forged) made a book answer actor 9999 and die of it; a peer started with
    another configuration numbers the actors otherwise and would be answered at the wrong actor. The inbound
    pump refuses both: the number must name the actor whose socket sent it."""
    import time

    from actors.client import ClusterClient
    from actors.config import load_config
    from actors.transport import Outbox
    from exchange.orders import Accepted, NewOrder, Side
    from exchange.wire import MessageKind, command_to_record, pack_header
    from tests.actors.cluster_helpers import start_cluster, wait_for, write_config

    path = write_config(tmp_path)
    cluster = start_cluster(path, tmp_path / "logs")
    context = zmq.Context()
    stranger = forger = None
    try:
        config = cluster.config
        book = config.actor_index["book/AAPL"]
        # Rejected by the book (off the tick grid), so it would answer the source.
        off_grid = command_to_record(NewOrder("AAPL", (1 << 48) | 77, "A1", Side.BUY, 1_000_050, 100), 0)
        forger = context.socket(zmq.DEALER)
        forger.setsockopt(zmq.LINGER, 0)
        forger.connect(config.endpoint(config.node("book1")))
        for source in (9999, config.actor_index["risk/0"]):  # no such actor; an actor that is not the sender
            forger.send_multipart([pack_header(MessageKind.ORDERS, 1, source, book, 1), off_grid])
        # A risk shard of a cluster whose file lists the nodes in another order: its own number differs.
        other = tmp_path / "other"
        other.mkdir()
        text = path.read_text()
        gateway = '[[node]]\nname = "gateway"\nactors = ["gateway/0"]\n'
        risk = '[[node]]\nname = "risk"\nactors = ["risk/0", "risk/1"]\n'
        (other / "cluster.toml").write_text(text.replace(gateway + "\n" + risk, risk + "\n" + gateway))
        stranger_config = load_config(other / "cluster.toml")
        assert stranger_config.actor_index["risk/1"] != config.actor_index["risk/1"]
        stranger = Outbox(context, stranger_config, "risk/1", LocalDirectory(), "risk")
        assert stranger.wait_for_peers(["book1"], timeout=5) == []
        stranger.add(stranger_config.actor_index["book/AAPL"], MessageKind.ORDERS, off_grid)
        stranger.flush()
        assert stranger.stats["messages_sent"] == 1

        def refused() -> int:
            cluster.pump(0.05)
            return cluster.nodes["book1"].stats.get("inbound", {}).get("wrong_source", 0)

        assert wait_for(lambda: refused() == 3, timeout=10), cluster.nodes["book1"].stats.get("inbound")
        time.sleep(0.3)
        assert all(cluster.alive().values()), cluster.events
        log = (tmp_path / "logs" / "book1.log").read_text()
        assert "names source actor #9999 (no such actor): refused" in log
        assert "a message from 'risk/1' names source actor" in log and "another configuration" in log
        with ClusterClient(config.client_endpoint(), name="after") as client:
            client.new_order("AAPL", 1, "A1", "buy", 100, price=1_000_000)
            assert any(isinstance(e, Accepted) for e in client.collect(
                lambda ev: any(isinstance(e, Accepted) for e in ev)))
    finally:
        for closable in (stranger, forger):
            if closable is not None:
                closable.close()
        context.term()
        cluster.stop()
