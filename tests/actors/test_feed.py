"""FeedHandlerActor and its sans-IO core: gap recovery through real UDP re-requests, multicast, ITCH files,
fuzzing, and a multi-process cluster whose feed rebuilds the books the engines hold."""

from __future__ import annotations

import gzip
import random
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.client import ClusterClient
from actors.feed import FeedHandlerActor, FeedSettings
from actors.marketdata import MarketDataActor
from exchange.engine import OrderBook
from exchange.feed_decoder import (
    ERROR_TYPE,
    BookUpdate,
    FeedDecoder,
    FeedHandler,
    SoftwareFeedDecoder,
    decoder_for,
)
from exchange.instruments import Instrument
from exchange.itch import decode_message, encode_message, read_itch_file
from exchange.itch_publisher import ItchPublisher
from exchange.l3book import L3Book
from exchange.moldudp64 import (
    encode_end_of_session,
    encode_heartbeat,
    encode_packet,
    packetize,
    parse_packet,
    parse_request,
)
from exchange.orders import (
    Accepted,
    Cancelled,
    EndOfDay,
    Modified,
    ModifyOrder,
    NewOrder,
    Rejected,
    SelfTradePrevention,
)
from tests.actors.cluster_helpers import start_cluster, wait_for, write_config
from tests.actors.test_marketdata import (
    SYMBOLS,
    InProcess,
    cluster_commands,
    engine_events,
    tell_events,
    udp_port,
)

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared/data/itch/sample-20101224.ITCH50.gz"


# -- sans-IO core ----------------------------------------------------------------------------------------


def published(commands: list) -> tuple[dict[str, OrderBook], list[bytes]]:
    """The ITCH messages our publisher makes of a command stream, and the engine books it leaves."""
    books, events = engine_events(commands)
    pub = ItchPublisher(SYMBOLS, clock=lambda: 1_000)
    return books, pub.start_of_day() + pub.on_events(events) + pub.end_of_day()


def assert_books_equal(book: L3Book, engines: dict[str, OrderBook]) -> None:
    for symbol, engine in engines.items():
        assert book.depth(symbol, 10_000) == engine.depth(), symbol
    assert book.check() == []


def test_decoder_interface_and_software_decoder():
    decoder = decoder_for("software")
    assert isinstance(decoder, FeedDecoder) and decoder.name == "software"
    add = encode_message("D", stock_locate=1, tracking_number=0, timestamp=5, order_reference_number=9)
    body = len(add).to_bytes(2, "big") + add + b"\x00\x03ZZZ" + b"\x00\x05AB"
    out = SoftwareFeedDecoder().decode(body)
    assert out[0] == decode_message(add)
    assert [r["type"] for r in out[1:]] == [ERROR_TYPE, ERROR_TYPE]  # unknown type, then a truncated tail
    assert out[1]["offset"] == 21 + 2 and "unknown" in out[1]["reason"]
    with pytest.raises(ValueError, match="software"):
        decoder_for("gateware-not-yet")


def test_handler_delivers_in_order_and_asks_for_the_gap():
    engines, messages = published(cluster_commands(11, 400))
    packets = list(packetize("S1", 1, messages, 300))
    handler = FeedHandler(session="S1", retransmit_timeout=0.5, max_retries=2)
    updates: list[BookUpdate] = []
    handler.on_updates = updates.extend
    dropped = {3, 4, 10}
    for i, packet in enumerate(packets):
        if i not in dropped:
            handler.on_packet(packet, now=0.0)
    assert handler.stats["gaps"] == 2
    first_missing = parse_packet(packets[3]).sequence_number
    request = parse_request(handler.poll(0.0)[0])
    assert (request.session, request.sequence_number) == ("S1", first_missing)
    assert request.requested_count == len(parse_packet(packets[3]).messages) + len(parse_packet(packets[4]).messages)
    assert handler.poll(0.1) == []  # outstanding, not timed out
    assert parse_request(handler.poll(0.6)[0]).sequence_number == first_missing  # timed out: asked again
    # The answer arrives (as a retransmission server sends it), and the next gap is asked for at once.
    handler.on_packet(packets[3], 0.7)
    handler.on_packet(packets[4], 0.7)
    assert parse_request(handler.poll(0.7)[0]).sequence_number == parse_packet(packets[10]).sequence_number
    handler.on_packet(packets[10], 0.8)
    assert handler.poll(0.8) == [] and handler.next_sequence == len(messages) + 1
    assert handler.stats["recovered"] == sum(len(parse_packet(packets[i]).messages) for i in dropped)
    assert handler.stats["retransmit_requests"] == 3 and handler.stats["lost"] == 0
    assert_books_equal(handler.book, engines)
    last = {u.symbol: u for u in updates}
    for symbol, engine in engines.items():
        bid, bid_qty, ask, ask_qty = engine.bbo()
        assert last[symbol].bbo == (bid, bid_qty or None, ask, ask_qty or None)
    assert handler.last_system_event == "C"


def test_handler_gives_a_gap_up_after_its_retries_and_tolerates_unknown_orders():
    _, messages = published(cluster_commands(12, 300))
    packets = list(packetize("S1", 1, messages, 300))
    handler = FeedHandler(session="S1", retransmit_timeout=0.1, max_retries=2)
    for i, packet in enumerate(packets):
        if i != 5:
            handler.on_packet(packet, 0.0)
    sent = [handler.poll(t) for t in (0.0, 0.05, 0.15, 0.3, 0.45)]
    assert [len(s) for s in sent] == [1, 0, 1, 1, 0]  # first ask, then two retries, then given up
    lost = len(parse_packet(packets[5]).messages)
    assert handler.stats["lost"] == lost and handler.next_sequence == len(messages) + 1
    assert handler.stats["messages"] == len(messages) - lost
    assert handler.book.check() == []  # messages about orders it never saw are counted, not fatal


def test_heartbeat_reveals_a_lost_last_packet_and_session_changes_are_ignored():
    _, messages = published(cluster_commands(13, 60))
    packets = list(packetize("S1", 1, messages))
    handler = FeedHandler(session="S1")
    for packet in packets[:-1]:
        handler.on_packet(packet)
    assert handler.poll(1.0) == []
    handler.on_packet(encode_heartbeat("S1", len(messages) + 1))
    assert parse_request(handler.poll(1.0)[0]).sequence_number == parse_packet(packets[-1]).sequence_number
    handler.on_packet(encode_packet("OTHER", 1, [b"x"]))
    handler.on_packet(packets[-1])
    handler.on_packet(encode_end_of_session("S1", len(messages) + 1))
    assert handler.stats["wrong_session"] == 1 and handler.end_of_session
    assert handler.next_sequence == len(messages) + 1 and handler.stats["heartbeats"] == 2


def test_live_join_and_far_future_packets():
    _, messages = published(cluster_commands(14, 100))
    packets = list(packetize("S1", 1, messages))
    handler = FeedHandler(first_sequence=None, window=1000, resync_after=3)
    for packet in packets[2:]:
        handler.on_packet(packet)
    assert handler.session == "S1" and handler.poll(0.0) == []  # joined live: nothing before is missing
    start = handler.next_sequence
    # A corrupt sequence number far ahead is dropped; the same, repeatedly, means the sender moved on.
    for i in range(3):
        handler.on_packet(encode_packet("S1", start + 10**9 + i, [messages[0]]))
    assert handler.stats["out_of_window"] == 2 and handler.stats["resyncs"] == 1
    assert handler.next_sequence == start + 10**9 + 3  # followed to the third packet, and delivered it


def test_file_reading_matches_the_l3_book(tmp_path):
    _, messages = published(cluster_commands(15, 500))
    path = tmp_path / "f.itch.gz"
    with gzip.open(path, "wb") as out:
        out.write(b"".join(len(m).to_bytes(2, "big") + m for m in messages) + b"\x00\x09tr")
    handler = FeedHandler()
    assert handler.read_file(path, chunk_size=777) == len(messages)
    reference = L3Book()
    for _, record in read_itch_file(path):
        if isinstance(record, dict):
            reference.apply(record)
    for symbol in SYMBOLS:
        assert handler.book.depth(symbol, 1000) == reference.depth(symbol, 1000)
    assert handler.stats["decode_errors"] == 1  # the truncated tail


@pytest.mark.skipif(not SAMPLE.exists(), reason="shared ITCH sample not present")
def test_sample_file_through_the_handler():
    handler = FeedHandler()
    assert handler.read_file(SAMPLE) == 12012
    reference = L3Book()
    reference.apply_all(r for _, r in read_itch_file(SAMPLE))
    for symbol in reference.symbols():
        assert handler.book.depth(symbol, 100) == reference.depth(symbol, 100)
    assert handler.unknown_order_messages == 117  # the simulated sample refers to orders it never added


# -- fuzzing -----------------------------------------------------------------------------------------------

_, FUZZ_MESSAGES = published(cluster_commands(16, 80))
FUZZ_PACKETS = list(packetize("FZ", 1, FUZZ_MESSAGES, 200))


@st.composite
def mutated_packets(draw) -> bytes:
    packet = bytearray(draw(st.sampled_from(FUZZ_PACKETS)))
    for _ in range(draw(st.integers(1, 6))):
        how = draw(st.sampled_from(["flip", "cut", "insert", "header"]))
        if how == "flip" and packet:
            i = draw(st.integers(0, len(packet) - 1))
            packet[i] = draw(st.integers(0, 255))
        elif how == "cut":
            del packet[draw(st.integers(0, len(packet))):]
        elif how == "insert":
            i = draw(st.integers(0, len(packet)))
            packet[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif len(packet) >= 20:
            i = draw(st.integers(10, 19))  # sequence number and count: the fields that drive state
            packet[i] = draw(st.integers(0, 255))
    return bytes(packet)


@given(st.lists(st.one_of(st.binary(max_size=120), mutated_packets(), st.sampled_from(FUZZ_PACKETS)),
                max_size=25),
       st.sampled_from([None, "FZ"]))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_and_mutated_payloads_never_raise(payloads, session):
    handler = FeedHandler(session=session, window=10_000)
    now = 0.0
    for payload in payloads:
        handler.on_packet(payload, now)
        for request in handler.poll(now):
            parse_request(request)
        now += 0.3
    stats = handler.all_stats()
    assert stats["packets"] == len(payloads)
    assert handler.book.check() == []


# -- the actor, in process ---------------------------------------------------------------------------------


class Relay(threading.Thread):
    """A UDP relay between the publisher and the feed handler that loses packets on purpose.

    ``drop(index, packet)`` decides for each datagram; heartbeats always pass unless ``drop`` says otherwise.
    """

    def __init__(self, drop) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.target: tuple[str, int] | None = None
        self.drop = drop
        self.count = 0
        self.dropped = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.count += 1
            if self.drop(self.count, data) or self.target is None:
                self.dropped += 1
                continue
            self.sock.sendto(data, self.target)

    def close(self) -> None:
        self.stopping.set()
        self.join(2)
        self.sock.close()


def feed_extra(md: str, feed: str, actors: tuple[str, ...] = ("feed/0",)) -> str:
    names = ", ".join(f'"{a}"' for a in actors)
    return f'\n[[node]]\nname = "feed"\nactors = [{names}]\n{md}\n{feed}\n'


def feed_stats(ref) -> dict:  # noqa: ANN001
    return ref.ask("feed_stats", timeout=5)


def test_dropped_packets_are_recovered_and_the_book_ends_right(tmp_path):
    phase = {"drop_all": False}

    def drop(index: int, data: bytes) -> bool:
        packet = parse_packet(data)
        if not packet.messages:
            return False  # heartbeats pass
        return phase["drop_all"] or index % 4 == 2 or 20 <= index < 26

    relay = Relay(drop)
    relay.start()
    feed_port, retransmit = udp_port(), udp_port()
    md = (f'[market_data]\ntargets = ["127.0.0.1:{relay.port}"]\nretransmit = "127.0.0.1:{retransmit}"\n'
          'session = "GAPS"\nheartbeat_interval = 0.2\nmax_payload = 400')
    feed = (f'[feed]\nlisten = "127.0.0.1:{feed_port}"\nretransmit = "127.0.0.1:{retransmit}"\n'
            'retransmit_timeout = 0.2\nmax_request = 50')
    node = InProcess(tmp_path, feed_extra(md, feed))
    try:
        updates: list[BookUpdate] = []
        handler_ref = node.start(FeedHandlerActor, "feed/0")
        assert handler_ref.ask(("subscribe", updates.append), timeout=5)
        relay.target = tuple(handler_ref.ask("address", timeout=5))
        md_ref = node.start(MarketDataActor, "md/0")
        commands = cluster_commands(21, 1200)
        engines, events = engine_events(commands[:1000])
        tell_events(md_ref, events)

        def caught_up() -> bool:
            stats = feed_stats(handler_ref)
            return stats["next_sequence"] == md_ref.ask("feed", timeout=5)["next_seq"] and not stats["gap_open"]

        assert wait_for(caught_up, timeout=20), feed_stats(handler_ref)
        # Phase 2: every data packet is lost; only heartbeats tell the handler what it missed.
        phase["drop_all"] = True
        for command in commands[1000:]:
            events = engines[command.symbol].process(command)
            tell_events(md_ref, events)
        assert wait_for(caught_up, timeout=20), feed_stats(handler_ref)
        stats = feed_stats(handler_ref)
        assert relay.dropped > 30
        assert stats["gaps"] >= 2 and stats["retransmit_requests"] >= 2
        assert stats["recovered"] > 0 and stats["lost"] == 0 and stats["unknown_order_messages"] == 0
        book_depth = {s: handler_ref.ask(("depth", s), timeout=5) for s in SYMBOLS}
        for symbol, engine in engines.items():
            assert book_depth[symbol] == engine.depth(), symbol
        last = {}
        for update in updates:
            last[update.symbol] = update
        for symbol, engine in engines.items():
            bid, bid_qty, ask, ask_qty = engine.bbo()
            assert last[symbol].bbo == (bid, bid_qty or None, ask, ask_qty or None), symbol
        md_counters = md_ref.proxy().counters.get()
        assert md_counters["retransmit_messages"] >= relay.dropped
    finally:
        node.close()
        relay.close()


def test_multicast_feed_on_loopback(tmp_path):
    group = f"239.255.{random.randint(0, 255)}.{random.randint(1, 254)}"
    port = udp_port()
    md = (f'[market_data]\nmulticast = "{group}:{port}"\nmulticast_interface = "127.0.0.1"\nmulticast_ttl = 0\n'
          'session = "MCAST"')
    feed = f'[feed]\nmulticast = "{group}:{port}"\nmulticast_interface = "127.0.0.1"\nsession = "MCAST"'
    node = InProcess(tmp_path, feed_extra(md, feed))
    try:
        handler_ref = node.start(FeedHandlerActor, "feed/0")
        feed_stats(handler_ref)  # answered after on_start: the group is joined before market data sends
        md_ref = node.start(MarketDataActor, "md/0")
        engines, events = engine_events(cluster_commands(22, 400))
        tell_events(md_ref, events)
        total = md_ref.ask("feed", timeout=5)["next_seq"]
        assert wait_for(lambda: feed_stats(handler_ref)["next_sequence"] == total, timeout=10)
        for symbol, engine in engines.items():
            assert handler_ref.ask(("depth", symbol), timeout=5) == engine.depth()
    finally:
        node.close()


def test_garbage_datagrams_are_counted_and_the_actor_lives(tmp_path):
    feed_port = udp_port()
    node = InProcess(tmp_path, feed_extra("", f'[feed]\nlisten = "127.0.0.1:{feed_port}"\nsession = "S1"'))
    try:
        handler_ref = node.start(FeedHandlerActor, "feed/0")
        # An ask is answered after on_start, which binds the socket: datagrams sent before that are lost
        # (this test failed once so on a loaded machine, with not one of the first 20 counted).
        assert feed_stats(handler_ref)["packets"] == 0
        rng = random.Random(3)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for n in range(200):
                sender.sendto(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60))),
                              ("127.0.0.1", feed_port))
                sender.sendto(FUZZ_PACKETS[n % len(FUZZ_PACKETS)][: rng.randint(0, 60)], ("127.0.0.1", feed_port))
                if n % 10 == 9:
                    # UDP may drop what a busy machine does not drain: each burst of 20 must be counted
                    # before the next is sent, so every datagram is accounted for.
                    sent = 2 * (n + 1)
                    assert wait_for(lambda sent=sent: feed_stats(handler_ref)["packets"] == sent, timeout=10), \
                        feed_stats(handler_ref)
        stats = feed_stats(handler_ref)
        assert stats["bad_packets"] + stats["wrong_session"] + stats["heartbeats"] >= 390
        assert handler_ref.is_alive() and handler_ref.proxy().counters.get().get("handler_errors") is None
    finally:
        node.close()


@pytest.mark.skipif(not SAMPLE.exists(), reason="shared ITCH sample not present")
def test_actor_reads_an_itch_file(tmp_path):
    node = InProcess(tmp_path, feed_extra("", f'[feed]\nfile = "{SAMPLE}"\n"feed/1" = {{file = ""}}',
                                          ("feed/0", "feed/1")))
    try:
        # Configured with a file: read at start.
        auto = node.start(FeedHandlerActor, "feed/0")
        assert wait_for(lambda: feed_stats(auto)["messages"] == 12012, timeout=10)
        node.stop("feed/0")
        # Or when asked, after subscribing.
        updates: list[BookUpdate] = []
        handler_ref = node.start(FeedHandlerActor, "feed/1")
        handler_ref.tell(("subscribe", updates.append))
        assert handler_ref.ask(("read_file", str(SAMPLE)), timeout=10) == 12012
        books = handler_ref.ask("books", timeout=5)
        reference = L3Book()
        reference.apply_all(r for _, r in read_itch_file(SAMPLE))
        assert set(books) == set(reference.symbols())
        for symbol, info in books.items():
            assert tuple(info["bbo"]) == reference.bbo(symbol)
        assert updates and updates[-1].sequence is None
    finally:
        node.close()


def test_feed_settings():
    s = FeedSettings.from_raw({"feed": {"listen": "127.0.0.1:9", "start": "live", "feed/1": {"listen": "127.0.0.1:8"}}},
                              "feed/1")
    assert s.listen == ("127.0.0.1", 8) and s.start == "live" and s.retransmit is None
    with pytest.raises(ValueError):
        FeedSettings.from_raw({"feed": {"start": "sometime"}})
    with pytest.raises(ValueError):
        FeedSettings.from_raw({"feed": {"decoder": "nope"}})


# -- a real cluster ----------------------------------------------------------------------------------------


def test_cluster_feed_rebuilds_the_engine_books(tmp_path):
    """Orders through a real multi-process cluster. The market-data node publishes to a feed-handler node
    (with retransmission) and captures the feed; afterwards the capture, the feed handler's books and the
    book actors' BBOs all equal a replay of the same commands through the reference engine."""
    feed_port, retransmit = udp_port(), udp_port()
    capture = tmp_path / "capture.itch"
    extra = feed_extra(
        f'[market_data]\ntargets = ["127.0.0.1:{feed_port}"]\nretransmit = "127.0.0.1:{retransmit}"\n'
        f'session = "CLUSTER"\ncapture_file = "{capture}"\nheartbeat_interval = 0.5',
        f'[feed]\nlisten = "127.0.0.1:{feed_port}"\nretransmit = "127.0.0.1:{retransmit}"\ndepth = 50')
    path = write_config(tmp_path, extra=extra)
    cluster = start_cluster(path, tmp_path / "logs")
    try:
        # One account per symbol: a symbol's commands then share one risk shard, so the book sees them in
        # send order and a replay through the engine is exact. Client ids are unique per session.
        accounts = dict(zip(SYMBOLS, ("A1", "A2", "A3", "A4"), strict=True))
        commands = []
        for command in cluster_commands(31, 600):
            if isinstance(command, EndOfDay) or (isinstance(command, NewOrder) and command.price is None):
                continue  # end of day is an operator's command; market orders need a reference price
            command.order_id += SYMBOLS.index(command.symbol) * 100_000
            if isinstance(command, NewOrder | ModifyOrder) and command.price is not None:
                command.price = 1_000_000 + command.price * 100  # on the configured tick of 100
            if isinstance(command, NewOrder):
                command.account = accounts[command.symbol]
                command.stp = SelfTradePrevention.NONE
            commands.append(command)
        with ClusterClient(cluster.config.client_endpoint(), name="feedtest") as client:
            for start in range(0, len(commands), 50):
                for command in commands[start:start + 50]:
                    client.queue(command)
                assert client.flush()
                time.sleep(0.02)

            def answered(events) -> bool:  # noqa: ANN001
                # One answer per command: accepted/rejected (new), modified/rejected, cancelled(user)/rejected.
                return sum(1 for e in events if isinstance(e, Accepted | Rejected | Modified)
                           or (isinstance(e, Cancelled) and e.reason == "user")) >= len(commands)

            events = client.collect(answered, timeout=30)
            assert answered(events), "not every command was answered"
            # Rejects by the book are part of the replay; none may come from outside it (risk, gateway), except
            # the gateway's answer to a cancel or modify of an order that is already gone (the book's would be
            # the same, and change nothing).
            outside = [e for e in events if isinstance(e, Rejected) and e.seq is None and e.reason != "unknown_order"]
            assert not outside, f"refused before the book: {outside[:3]}"
        answered_at = time.time()  # every command has been through its book by now

        engines = {symbol: OrderBook(Instrument(symbol, tick_size=100)) for symbol in SYMBOLS}
        for command in commands:
            engines[command.symbol].process(command)

        def stats(node: str, actor: str) -> dict:
            return cluster.nodes[node].stats.get("actors", {}).get(actor, {})

        def node_of(symbol: str) -> str:
            return "book1" if symbol in ("AAPL", "MSFT") else "book2"

        def fresh(node: str) -> bool:
            # Node reports carry actor statistics at most ~0.35 s old: these are from after the last answer.
            return cluster.nodes[node].stats.get("time", 0) > answered_at + 0.5

        def feed_caught_up() -> bool:
            # Market data has seen every event of every book, and the feed handler every message it published.
            cluster.pump(0.05)
            if not all(fresh(node) for node in ("book1", "book2", "md", "feed")):
                return False
            md, feed = stats("md", "md/0"), stats("feed", "feed/0")
            books_done = all(stats(node_of(s), f"book/{s}").get("seq") == md.get("books", {}).get(s, {}).get("seq")
                             for s in SYMBOLS)
            return books_done and feed.get("next_sequence") == md.get("next_seq") and not feed.get("gap_open")

        assert wait_for(feed_caught_up, timeout=20), (
            {s: (stats(node_of(s), f"book/{s}").get("seq"), stats("md", "md/0").get("books", {}).get(s))
             for s in SYMBOLS},
            stats("md", "md/0").get("next_seq"), {k: v for k, v in stats("feed", "feed/0").items() if k != "books"})
        feed = stats("feed", "feed/0")
        for symbol, engine in engines.items():
            want = engine.depth()
            got = feed["books"].get(symbol, {"depth": {"bids": [], "asks": []}})["depth"]
            assert [tuple(level) for level in got["bids"]] == want["bids"][:50], symbol
            assert [tuple(level) for level in got["asks"]] == want["asks"][:50], symbol
            book = stats(node_of(symbol), f"book/{symbol}")
            bid, bid_qty, ask, ask_qty = engine.bbo()
            assert (book["bid"], book["bid_qty"], book["ask"], book["ask_qty"]) == (bid, bid_qty, ask, ask_qty)
        assert feed["unknown_order_messages"] == 0 and feed["anomalies"] == 0 and feed["lost"] == 0
        assert stats("md", "md/0")["gaps"] == 0
    finally:
        cluster.stop()
    # The capture, read back after the session ended, is the same feed.
    captured = L3Book()
    records = [record for _, record in read_itch_file(capture)]
    assert all(isinstance(r, dict) for r in records)
    captured.apply_all(records)
    for symbol, engine in engines.items():
        assert captured.depth(symbol, 10_000) == engine.depth(), symbol
    assert captured.check() == [] and not captured.unknown_order_messages
    assert [r["event_code"] for r in records if r["type"] == "S"] == ["O", "S", "Q", "M", "E", "C"]
