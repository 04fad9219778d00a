"""The ITCH decoder card (hdl.itch_card) in Amaranth's simulator, driven by the real host code
(host.itch_card) over a simulated port: identification and refusals both ways (decoder card vs
matcher card), records equal to the reference model and the feed equal to the software decoder
(empty, truncated, corrupt and over-long frames, answers spanning frames), a damaged line recovered,
and parameter checks. The same card served over TCP by cocotb: tests/sim/test_itch_card.py."""

from __future__ import annotations

import random
from contextlib import contextmanager

import pytest

from exchange.card_protocol import (
    ERROR_LAYOUT,
    ITCH_CARD_MAX_PACKET,
    ITCH_MAGIC,
    ITCH_VERSION,
    CardError,
    ErrorCode,
    FrameType,
)
from exchange.feed_decoder import SoftwareFeedDecoder, decoder_for
from exchange.itch import encode_message
from exchange.itch_record import ITCH_RECORD, reference_records
from exchange.matcher_format import MatcherConfig
from hdl.card import Card
from hdl.itch_card import ItchCard
from host.card import CardLink
from host.framing import Link
from host.itch_card import CardFeedDecoder, ItchCardLink, split_packets
from sim.card_sim import FrameTamper, SimulatedCardPort, random_policy
from sim.itch_backend import edge_packets, random_message, random_packets

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

# Amaranth's simulator runs this card at some hundreds of cycles per second: generous timeouts.
TIMEOUT = 20.0


@contextmanager
def simulated(card, **port_options):  # noqa: ANN001
    port = SimulatedCardPort(card, **port_options)
    link = Link(port=port, timeout=TIMEOUT)
    try:
        yield link, port
    finally:
        port.close()


def _frame(body: bytes, length: int | None = None) -> bytes:
    return (len(body) if length is None else length).to_bytes(2, "big") + body


def test_identification_and_a_wrong_design_refused_both_ways():
    with simulated(ItchCard(records_per_frame=4, clock_hz=25_000_000)) as (link, _port):
        card = ItchCardLink(link, timeout=TIMEOUT)
        ident = card.identity
        assert (ident.magic, ident.version_major, ident.version_minor) == (ITCH_MAGIC, *ITCH_VERSION)
        assert (ident.lanes, ident.slots, ident.records_per_frame) == (8, 3, 4)
        assert (ident.record_bytes, ident.max_packet, ident.clock_hz) == (ITCH_RECORD.size, ITCH_CARD_MAX_PACKET,
                                                                         25_000_000)
        # A frame the card does not know, and a DECODE too short for its seq, are answered ERROR.
        for frame_type, payload, code in ((0x7E, b"", ErrorCode.UNKNOWN_TYPE),
                                          (FrameType.DECODE, b"\x01", ErrorCode.BAD_LENGTH)):
            link.send_frame(frame_type, payload)
            answer = link.recv_frame()
            while answer.type == FrameType.IDENT:  # an identify repeated while the simulator started
                answer = link.recv_frame()
            assert answer.type == FrameType.ERROR
            assert ERROR_LAYOUT.unpack(answer.payload)["code"] == code
        status = card.status()
        assert (status.errors, status.commands, status.events) == (2, 0, 0)
        # The matcher's host refuses the decoder card, naming it.
        link.resync()
        with pytest.raises(CardError, match="ITCH decoder card .*not a matcher card"):
            CardLink(link, timeout=TIMEOUT)
    with simulated(Card(MatcherConfig(max_orders=16, window_ticks=16, group_width=8))) as (link, _port):
        with pytest.raises(CardError, match="matcher card .*not the ITCH decoder card.*--design itch"):
            CardFeedDecoder(link, timeout=TIMEOUT)
    with simulated(ItchCard(version=(ITCH_VERSION[0] + 1, 0), lanes=4)) as (link, _port):
        with pytest.raises(CardError, match=f"design version {ITCH_VERSION[0] + 1}.0 is not supported"):
            CardFeedDecoder(link, timeout=TIMEOUT)


def test_records_and_feed_equal_the_software_decoder():
    rng = random.Random(9)
    edges = edge_packets(rng)
    book = b"".join(_frame(random_message(rng, code)) for code in "AFECXDUPSRH")
    packets = [
        b"",  # an empty packet: one RECORDS frame with no record
        book,
        book + b"\x00",  # a cut length prefix
        book[:-5],  # a truncated message
        _frame(b"\x00" * 0) + _frame(b"?" + bytes(20)) + _frame(random_message(rng, "A"), 20),
        edges[3], edges[10], edges[-1], edges[-3],
        *random_packets(rng, 3, frames=(3, 8), corrupt=0.3),
    ]
    with simulated(ItchCard(records_per_frame=2)) as (link, _port):
        decoder = CardFeedDecoder(link, timeout=TIMEOUT)
        for packet in packets:
            assert decoder.card.decode_packet(packet) == reference_records(packet), packet.hex()
        # Through the feed decoder: longer than a DECODE frame (cut into packets of whole frames) and
        # frames longer than a DECODE frame can carry, whole and cut by the end of the payload.
        long_payload = b"".join(_frame(random_message(rng, rng.choice("AEXDPS"))) for _ in range(45))
        over = _frame(b"A" + bytes(rng.getrandbits(8) for _ in range(1499)))
        unknown = _frame(b"\xfe" + bytes(1200))
        for payload in (long_payload, book + over + book, unknown + book, book + over[:1300]):
            assert decoder.decode(payload) == SoftwareFeedDecoder().decode(payload)
        assert decoder.oversize_frames == 3
        status = decoder.card.status()
        assert status.commands == decoder.card.stats.commands and status.frames_crc == 0


def test_split_packets_cuts_at_frames():
    frames = [_frame(encode_message("S", stock_locate=0, tracking_number=i, timestamp=i, event_code="O"))
              for i in range(200)]
    payload = b"".join(frames)
    pieces = list(split_packets(payload, 100))
    assert b"".join(p for _, p, _ in pieces) == payload and all(len(p) <= 100 for _, p, _ in pieces)
    assert all(n == -1 and o == payload.index(p) for o, p, n in pieces)
    assert list(split_packets(b"", 100)) == [(0, b"", -1)]
    long = _frame(bytes(300))
    assert list(split_packets(frames[0] + long + b"\x00", 100)) == [
        (0, frames[0], -1), (14, long, 300), (316, b"\x00", -1)]


def test_a_damaged_line_is_recovered_by_resending():
    rng = random.Random(3)
    packets = random_packets(rng, 6, frames=(4, 10), corrupt=0.2, cut=0.2)
    to_card = FrameTamper(lambda index, body: "pass", random.Random(2))
    to_host = FrameTamper(lambda index, body: "pass", random.Random(4))
    with simulated(ItchCard(records_per_frame=2), to_card=to_card.feed, to_host=to_host.feed) as (link, _port):
        decoder = CardFeedDecoder(link, timeout=TIMEOUT)
        decoder.card.timeout = 3.0
        to_card.policy = random_policy(random.Random(1), 0.25)
        to_host.policy = random_policy(random.Random(3), 0.25)
        for packet in packets:
            assert decoder.decode(packet) == SoftwareFeedDecoder().decode(packet)
        to_card.policy = to_host.policy = lambda index, body: "pass"
        stats = decoder.card.stats
        assert stats.resends > 0 and stats.failed == 0
    assert to_card.log and to_host.log


def test_the_card_decoder_is_registered_and_needs_a_link():
    with pytest.raises(TypeError, match="link"):
        decoder_for("card")
    with pytest.raises(CardError, match="no identification answer|card at"):
        decoder_for("card", link="socket://127.0.0.1:1", timeout=0.2, retries=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"records_per_frame": 0}, "records_per_frame"),
    ({"records_per_frame": 16}, "records_per_frame"),
    ({"records_per_frame": True}, "records_per_frame"),
    ({"lanes": 3}, "lanes"),
    ({"slots": 2}, "slots"),
    ({"version": (1,)}, "version"),
    ({"magic": -1}, "magic"),
    ({"clock_hz": -5}, "clock_hz"),
])
def test_card_parameters_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ItchCard(**kwargs)
