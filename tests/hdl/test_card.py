"""The card top (hdl.card) in Amaranth's simulator, driven by the real host code (host.card) over a
simulated port: identification, the protocol's corner cases, the book against the reference engine,
and exactly-once execution through a line that corrupts, truncates, drops, duplicates and glues frames."""

from __future__ import annotations

import random
from contextlib import contextmanager

import pytest

from exchange.card_protocol import (
    ERROR_LAYOUT,
    IDENT_LAYOUT,
    MAGIC,
    VERSION,
    CardError,
    CardIdentity,
    CardStatus,
    ErrorCode,
    FrameType,
    command_payload,
    parse_events_payload,
    replay_depth_for,
)
from exchange.instruments import Instrument
from exchange.matcher_format import CommandRecord, MatcherConfig, MatcherOp, RecordKind
from exchange.orders import NewOrder, Side
from hdl.card import Card
from host.card import CardLink, HardwareBook
from host.framing import Link
from sim.card_sim import FrameTamper, SimulatedCardPort, random_policy
from sim.matcher_backend import first_mismatch, random_commands, reference_events

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

#: Small enough for Amaranth's simulator, big enough to fill up and to sweep several levels.
CONFIG = MatcherConfig(max_orders=16, window_ticks=16, group_width=8)
INSTRUMENT = Instrument("TEST")


@contextmanager
def simulated(card: Card | None = None, **port_options):
    port = SimulatedCardPort(card if card is not None else Card(CONFIG), **port_options)
    link = Link(port=port, timeout=5.0)
    try:
        yield link, port
    finally:
        port.close()


def test_identification_register_describes_the_card():
    card = Card(CONFIG, records_per_frame=5, clock_hz=50_000_000)
    with simulated(card) as (link, _port), CardLink(link) as cl:
        ident = cl.identity
        assert (ident.magic, ident.version_major, ident.version_minor) == (MAGIC, *VERSION)
        assert ident.fresh and ident.next_seq == 0
        assert (ident.records_per_frame, ident.clock_hz) == (5, 50_000_000)
        assert ident.replay_depth == replay_depth_for(CONFIG)
        assert cl.config == CONFIG
        status = cl.status()  # (an identify may have been repeated while the simulator started)
        assert status.frames_good >= 2 and status == CardStatus(status.frames_good, 0, 0, 0, 0, 0, 0, 0)
        assert cl.status().frames_good == status.frames_good + 1


@pytest.mark.parametrize(("card_args", "message"), [
    ({"magic": 0x12345678}, "not a matchwire card: identification magic 0x12345678"),
    ({"version": (VERSION[0] + 1, 0)}, f"card design version {VERSION[0] + 1}.0 is not supported"),
])
def test_a_card_with_the_wrong_magic_or_version_is_refused(card_args, message):
    with simulated(Card(CONFIG, **card_args)) as (link, _port):
        with pytest.raises(CardError, match=message):
            CardLink(link)
        assert not link.port.is_open or True  # the link was closed by the refusal
    with simulated(Card(CONFIG, version=(VERSION[0], VERSION[1] + 3))) as (link, _port):
        with CardLink(link) as cl:  # another minor version is fine
            assert cl.identity.version == f"{VERSION[0]}.{VERSION[1] + 3}"


def _events(frame, config=CONFIG):
    seq, index, records = parse_events_payload(frame.payload, config)
    return seq, index, [config.decode_event(r) for r in records]


def test_duplicates_are_answered_again_and_other_sequences_refused():
    reset = CONFIG.encode_command(CommandRecord(MatcherOp.RESET))
    with simulated() as (link, _port):
        link.send_frame(FrameType.COMMAND, command_payload(7, CONFIG, reset))  # a fresh card takes any seq
        first = link.recv_frame()
        seq, index, burst = _events(first)
        assert (seq, index, [r.kind for r in burst], burst[-1].last) == (7, 0, [RecordKind.RESET_DONE], True)
        link.send_frame(FrameType.COMMAND, command_payload(7, CONFIG, reset))  # a duplicate: same answer
        assert link.recv_frame() == first

        def error(frame_type, payload):
            link.send_frame(frame_type, payload)
            answer = link.recv_frame()
            assert answer.type == FrameType.ERROR
            return ERROR_LAYOUT.unpack(answer.payload)

        assert error(FrameType.COMMAND, command_payload(9, CONFIG, reset)) == {
            "code": ErrorCode.BAD_SEQUENCE, "frame_type": FrameType.COMMAND, "seq": 9, "expected": 8}
        assert error(FrameType.COMMAND, command_payload(6, CONFIG, reset)) == {  # stale: never runs twice
            "code": ErrorCode.BAD_SEQUENCE, "frame_type": FrameType.COMMAND, "seq": 6, "expected": 8}
        assert error(FrameType.COMMAND, b"\x08\x00" + reset[:-1])["code"] == ErrorCode.BAD_LENGTH
        assert error(0x55, b"")["code"] == ErrorCode.UNKNOWN_TYPE
        assert error(FrameType.EVENTS, b"\x00" * 8)["code"] == ErrorCode.UNKNOWN_TYPE
        # Garbage and broken frames are counted and skipped by the card's decoder.
        link.send_raw(b"\x00\x13\x37\x00\x05\x01\x02\x00")
        link.send_frame(FrameType.IDENTIFY)
        ident = CardIdentity.decode(link.recv_frame().payload)
        assert (ident.next_seq, ident.fresh) == (8, False)
        link.send_frame(FrameType.STATUS)
        status = CardStatus.decode(link.recv_frame().payload)
        assert (status.commands, status.duplicates, status.errors, status.events) == (1, 1, 5, 1)
        assert status.frames_good == 9 and status.frames_crc + status.frames_truncated == 2
        assert len(IDENT_LAYOUT.pack(**{n: 0 for n in IDENT_LAYOUT.names})) == IDENT_LAYOUT.size


def test_book_on_the_card_matches_the_reference_engine():
    rng = random.Random(11)
    commands = random_commands(rng, 140, CONFIG, INSTRUMENT)
    expected = reference_events(commands, INSTRUMENT, CONFIG)
    # Two records per frame: sweeps span several EVENTS frames.
    with simulated(Card(CONFIG, records_per_frame=2)) as (link, _port):
        book = HardwareBook(INSTRUMENT, CardLink(link))
        got = [book.process(command) for command in commands]
        assert first_mismatch(commands, expected, got) is None, first_mismatch(commands, expected, got)
        status = book.card.status()
        assert status.commands == book.card.stats.commands and status.duplicates == 0
        assert book.card.stats.resends == 0
        assert sum(len(e) for e in got) > len(commands)
        assert book.bbo() == _reference_book(commands).bbo()
        assert book.depth() == _reference_book(commands).depth()


def _reference_book(commands):
    from exchange.engine import OrderBook

    book = OrderBook(INSTRUMENT, CONFIG.profile())
    for command in commands:
        book.process(command)
    return book


def test_a_damaged_line_loses_and_repeats_no_command():
    rng = random.Random(5)
    commands = random_commands(rng, 90, CONFIG, INSTRUMENT)
    expected = reference_events(commands, INSTRUMENT, CONFIG)
    to_card = FrameTamper(random_policy(random.Random(1), 0.2), random.Random(2))
    to_host = FrameTamper(random_policy(random.Random(3), 0.2), random.Random(4))
    with simulated(Card(CONFIG, records_per_frame=2), to_card=to_card.feed, to_host=to_host.feed) as (link, _port):
        cl = CardLink(link, timeout=0.4, retries=10)
        book = HardwareBook(INSTRUMENT, cl)
        got = [book.process(command) for command in commands]
        assert first_mismatch(commands, expected, got) is None, first_mismatch(commands, expected, got)
        to_card.policy = to_host.policy = lambda index, body: "pass"
        status = cl.status()
    actions = {action for _, action in to_card.log + to_host.log}
    assert {"corrupt", "truncate", "drop", "duplicate", "glue", "garbage"} <= actions
    # Exactly once: the card executed each record the host sent once, whatever was resent.
    assert status.commands == cl.stats.commands
    assert cl.stats.resends > 0 and status.duplicates > 0
    assert status.frames_crc + status.frames_truncated > 0


def test_a_dead_line_fails_the_command_clearly_and_the_book_stops():
    to_host = FrameTamper(lambda index, body: "pass")
    with simulated(to_host=to_host.feed) as (link, _port):
        book = HardwareBook(INSTRUMENT, CardLink(link))
        book.card.timeout, book.card.retries = 0.3, 1
        to_host.policy = lambda index, body: "drop"
        order = NewOrder("TEST", 1, "A", Side.BUY, 100, 10)
        with pytest.raises(CardError, match=r"no complete answer to command seq \d+ .* after 2 sends"):
            book.process(order)
        to_host.policy = lambda index, body: "pass"
        with pytest.raises(CardError, match="out of service"):
            book.process(order)
        with pytest.raises(CardError, match="cannot be snapshotted"):
            book.snapshot()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"records_per_frame": 0}, "records_per_frame"),
    ({"records_per_frame": 1000}, "records_per_frame"),
    ({"replay_depth": 3}, "replay_depth"),
    ({"version": (1,)}, "version"),
    ({"magic": -1}, "magic"),
    ({"clock_hz": -5}, "clock_hz"),
])
def test_card_parameters_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Card(CONFIG, **kwargs)
    with pytest.raises(ValueError, match="MatcherConfig"):
        Card("default")  # type: ignore[arg-type]
