"""MarketDataActor in-process: real actors and real UDP sockets on 127.0.0.1, events told as the book actors
send them. Covers packets, sequence numbers, re-requests, heartbeats, end of session and the capture file."""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path

import pykka
import pytest
import zmq

from actors.base import NodeContext
from actors.config import ConfigError, load_config
from actors.marketdata import MarketDataActor, MarketDataSettings
from actors.transport import Batch, LocalDirectory, Tick
from exchange.engine import OrderBook
from exchange.instruments import Instrument
from exchange.itch import decode_message, read_itch_file
from exchange.l3book import L3Book
from exchange.moldudp64 import encode_request, parse_packet
from exchange.wire import MessageKind, event_to_record
from tests.actors.cluster_helpers import wait_for, write_config
from tests.exchange.test_itch_publisher import random_commands

SYMBOLS = ("AAPL", "GOOG", "MSFT", "TSLA")  # the instruments of cluster_helpers.write_config


def udp_port() -> int:
    """A UDP port free right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class InProcess:
    """Actors of a test configuration started in this process, as a node would (ticks every 0.1 s included),
    with no ZeroMQ peers."""

    def __init__(self, tmp_path: Path, extra: str) -> None:
        self.config = load_config(write_config(tmp_path, extra=extra))
        self.zmq = zmq.Context()
        self.context = NodeContext(self.config, "md", self.zmq, LocalDirectory())
        self.refs: dict = {}
        self.stopping = threading.Event()
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        self.ticker.start()

    def _tick(self) -> None:
        while not self.stopping.wait(0.1):
            for ref in list(self.refs.values()):
                try:
                    ref.tell(Tick())
                except pykka.ActorDeadError:
                    pass

    def start(self, cls, name: str):  # noqa: ANN001, ANN201
        ref = cls.start(self.context, name)
        self.context.local.register(self.config.actor_index[name], ref)
        self.refs[name] = ref
        return ref

    def stop(self, name: str) -> None:
        ref = self.refs.pop(name)
        if ref.is_alive():
            ref.stop(timeout=5)

    def close(self) -> None:
        self.stopping.set()
        self.ticker.join(2)
        for name in list(self.refs):
            self.stop(name)
        self.zmq.term()


def counters(ref) -> dict:  # noqa: ANN001
    """An actor's counters, read in its own thread."""
    return ref.proxy().counters.get()


def engine_events(commands: list) -> tuple[dict[str, OrderBook], list]:
    """Run commands through one reference book per symbol; returns the books and all events in order."""
    books = {symbol: OrderBook(Instrument(symbol, tick_size=1)) for symbol in SYMBOLS}
    events = []
    for command in commands:
        events += books[command.symbol].process(command)
    return books, events


def tell_events(ref, events: list, per_batch: int = 40) -> None:  # noqa: ANN001
    """Tell events to a market-data actor in report batches, as book actors send them."""
    for start in range(0, len(events), per_batch):
        chunk = events[start:start + per_batch]
        ref.tell(Batch(MessageKind.REPORTS, 0, b"".join(event_to_record(e) for e in chunk), len(chunk)))


def cluster_commands(seed: int, count: int) -> list:
    return random_commands(random.Random(seed), count, SYMBOLS)


def receive_all(sock: socket.socket, until, timeout: float = 10.0) -> list[bytes]:  # noqa: ANN001
    """Datagrams from ``sock`` until ``until(datagrams)`` holds or the timeout passes."""
    out: list[bytes] = []
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    while not until(out) and time.monotonic() < deadline:
        try:
            out.append(sock.recv(65535))
        except TimeoutError:
            pass
    return out


def toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def md_config(port: int, retransmit: int, capture: Path, **extra: object) -> str:
    lines = [f'targets = ["127.0.0.1:{port}"]', f'retransmit = "127.0.0.1:{retransmit}"', 'session = "TESTSESS"',
             f'capture_file = "{capture}"', "heartbeat_interval = 0.3"]
    lines += [f"{key} = {toml_value(value)}" for key, value in extra.items()]
    return "\n[market_data]\n" + "\n".join(lines) + "\n"


@pytest.fixture
def subscriber():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    yield sock
    sock.close()


def test_feed_packets_rebuild_the_engine_books_and_requests_are_answered(tmp_path, subscriber):
    retransmit = udp_port()
    capture = tmp_path / "feed.itch"
    node = InProcess(tmp_path, md_config(subscriber.getsockname()[1], retransmit, capture, history=100_000,
                                         attribution={"A": "AAAA"}))
    try:
        md = node.start(MarketDataActor, "md/0")
        books, events = engine_events(cluster_commands(7, 1500))
        tell_events(md, events)
        feed_info = md.ask("feed", timeout=5)
        total = md.ask("feed", timeout=5)["next_seq"] - 1

        def complete(datagrams: list[bytes]) -> bool:
            got = [parse_packet(d) for d in datagrams]
            return bool(got) and max(p.next_sequence_number for p in got) > total

        datagrams = receive_all(subscriber, complete)
        packets = [parse_packet(d) for d in datagrams]
        assert feed_info["session"] == "TESTSESS" and feed_info["retransmit"] == ("127.0.0.1", retransmit)
        assert all(p.session == "TESTSESS" for p in packets)
        assert all(len(d) <= 1400 for d in datagrams)
        data = [p for p in packets if p.messages]
        # Sequence numbers run on from 1 without gaps or overlap (loopback loses nothing at this rate).
        expected = 1
        messages: list[bytes] = []
        for packet in data:
            assert packet.sequence_number == expected
            expected = packet.next_sequence_number
            messages += packet.messages
        assert expected == total + 1
        rebuilt = L3Book()
        for msg in messages:
            rebuilt.apply(decode_message(msg))
        for symbol, book in books.items():
            assert rebuilt.depth(symbol, 10_000) == book.depth(), symbol
        assert not rebuilt.unknown_order_messages and rebuilt.check() == []
        assert {"F", "A", "E", "U", "D"} <= {chr(m[0]) for m in messages}

        # Re-requests: answered from the history, to the requester, in as few packets as fit.
        subscriber.sendto(encode_request("TESTSESS", 5, 30), ("127.0.0.1", retransmit))
        answer = [parse_packet(d) for d in receive_all(subscriber, lambda got: any(
            parse_packet(d).sequence_number == 5 and parse_packet(d).messages for d in got))]
        answered = next(p for p in answer if p.sequence_number == 5 and p.messages)
        assert list(answered.messages) == messages[4:4 + len(answered.messages)]
        assert 20 <= len(answered.messages) <= 30

        # A heartbeat follows when the feed is idle; it carries the next sequence number.
        beats = receive_all(subscriber, lambda got: any(parse_packet(d).is_heartbeat for d in got), timeout=3)
        assert [parse_packet(d).sequence_number for d in beats if parse_packet(d).is_heartbeat][0] == total + 1

        # Bad requests are counted and ignored: wrong session, from the future, garbage.
        for bad in (encode_request("OTHER", 1, 5), encode_request("TESTSESS", total + 10, 5), b"\x00" * 7):
            subscriber.sendto(bad, ("127.0.0.1", retransmit))
        bad_kinds = ("retransmit_wrong_session", "retransmit_future", "retransmit_bad")
        assert wait_for(lambda: [counters(md).get(k) for k in bad_kinds] == [1, 1, 1], timeout=5)
        assert counters(md)["retransmit_requests"] == 4 and counters(md)["retransmit_messages"] >= 20

        node.stop("md/0")
        # End of session: S M/E/C, then an end-of-session packet.
        tail = [parse_packet(d) for d in receive_all(subscriber, lambda got: any(
            parse_packet(d).end_of_session for d in got), timeout=3)]
        assert tail[-1].end_of_session and tail[-1].sequence_number == total + 4
        closing = [decode_message(m) for p in tail for m in p.messages]
        assert [m["event_code"] for m in closing] == ["M", "E", "C"]
        # The capture is the whole feed, in the ITCH file format.
        captured = [rec for _, rec in read_itch_file(capture)]
        assert len(captured) == total + 3
        assert captured[:len(messages)] == [decode_message(m) for m in messages]
    finally:
        node.close()


def test_requests_older_than_the_history_are_counted_not_answered(tmp_path, subscriber):
    retransmit = udp_port()
    node = InProcess(tmp_path, md_config(subscriber.getsockname()[1], retransmit, tmp_path / "c.itch", history=50))
    try:
        md = node.start(MarketDataActor, "md/0")
        _, events = engine_events(cluster_commands(3, 300))
        tell_events(md, events)
        total = md.ask("feed", timeout=5)["next_seq"] - 1
        assert total > 100
        receive_all(subscriber, lambda got: any(parse_packet(d).next_sequence_number > total for d in got))
        subscriber.sendto(encode_request("TESTSESS", 1, 10), ("127.0.0.1", retransmit))
        subscriber.sendto(encode_request("TESTSESS", total - 9, 10), ("127.0.0.1", retransmit))
        got = receive_all(subscriber, lambda got: any(parse_packet(d).sequence_number == total - 9 for d in got))
        assert [parse_packet(d).sequence_number for d in got if parse_packet(d).messages] == [total - 9]
        assert wait_for(lambda: counters(md).get("retransmit_too_old") == 1, timeout=5)
    finally:
        node.close()


def test_settings_defaults_and_errors(tmp_path):
    settings = MarketDataSettings.from_raw({})
    assert settings.targets == [] and settings.retransmit is None and settings.history == 100_000
    assert len(settings.session) == 10 and settings.max_payload == 1400
    per_actor = MarketDataSettings.from_raw({"market_data": {"capture_file": "/x/{actor}.itch", "session": "S",
                                                             "md/1": {"session": "T"}}}, "md/1")
    assert per_actor.session == "T" and per_actor.capture_file == "/x/md-1.itch"
    with pytest.raises(ValueError):
        MarketDataSettings.from_raw({"market_data": {"targets": ["nohost"]}})
    with pytest.raises(ValueError):
        MarketDataSettings.from_raw({"market_data": {"session": "WAY_TOO_LONG_NAME"}})
    node = InProcess(tmp_path, '\n[market_data]\nmax_payload = 10\n')
    try:
        with pytest.raises(ConfigError):
            node.start(MarketDataActor, "md/0")
    finally:
        node.close()


def test_ticks_keep_heartbeats_going_without_udp(tmp_path):
    """No targets configured: the actor still numbers and keeps messages (for the capture and re-requests)."""
    node = InProcess(tmp_path, "")
    try:
        md = node.start(MarketDataActor, "md/0")
        _, events = engine_events(cluster_commands(1, 50))
        tell_events(md, events)
        stats = md.ask("feed", timeout=5)
        assert stats["next_seq"] > 10
    finally:
        node.close()
