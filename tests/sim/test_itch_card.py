"""The ITCH decoder card as the feed handler sees it: ``matchwire card sim --design itch`` (cocotb on
Verilator, and Icarus) serving hdl.itch_card on a TCP port, the ``card`` feed decoder on ``socket://``:
the sample file's first messages through a FeedHandler and through a configured FeedHandlerActor equal
the software decoder's, both hosts refuse the other card's design, and a relay that damages frames both
ways (and prefixes garbage) costs resends, never a wrong or missing record."""

from __future__ import annotations

import gzip
import random

import pytest

from exchange.card_protocol import ITCH_MAGIC, CardError
from exchange.feed_decoder import FeedHandler, SoftwareFeedDecoder, decoder_for
from exchange.itch import read_itch_file
from exchange.l3book import L3Book
from exchange.moldudp64 import HEADER_SIZE, packetize
from host.card import CardLink
from sim.card_sim import CardSimProcess, FrameTamper, TamperRelay, random_policy
from sim.itch_backend import SAMPLE_FILE, edge_packets, random_packets
from sim.runner import simulator_available

SIMULATOR = next((s for s in ("verilator", "icarus") if simulator_available(s)), None)
pytestmark = [
    pytest.mark.skipif(SIMULATOR is None, reason="neither Verilator nor Icarus Verilog is usable"),
    pytest.mark.skipif(not SAMPLE_FILE.exists(), reason=f"shared ITCH sample {SAMPLE_FILE} not present"),
]


def sample_messages(count: int) -> list[bytes]:
    """The first ``count`` messages of the shared sample file (without their length prefixes)."""
    with gzip.open(SAMPLE_FILE, "rb") as f:
        data = f.read(count * 60)
    out, pos = [], 0
    while len(out) < count and pos + 2 <= len(data):
        n = int.from_bytes(data[pos : pos + 2], "big")
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    assert len(out) == count
    return out


@pytest.fixture(scope="module")
def itch_card(tmp_path_factory):
    log = tmp_path_factory.mktemp("itch-card-sim") / f"{SIMULATOR}.log"
    with CardSimProcess(simulator=SIMULATOR, design="itch", log_path=log) as sim:
        yield sim


def _feed(handler: FeedHandler, packets: list[bytes]) -> list:
    return [handler.on_packet(packet, 0.0) for packet in packets]


def test_sample_through_the_feed_handler_equals_the_software_decoder(itch_card):
    check_sample(itch_card.url, 600, extra=True)


def test_icarus_serves_the_decoder_card(tmp_path):
    if not simulator_available("icarus"):
        pytest.skip("Icarus Verilog not installed")
    with CardSimProcess(simulator="icarus", design="itch", log_path=tmp_path / "icarus.log") as sim:
        check_sample(sim.url, 60, extra=False)


def check_sample(url: str, count: int, extra: bool) -> None:
    """The first ``count`` sample messages, as MoldUDP64 packets, through a FeedHandler on the card at
    ``url`` and one on the software decoder: same decoded dicts, updates, stats and books; with ``extra``
    also corrupt and cut packets."""
    packets = list(packetize("SAMPLE0001", 1, sample_messages(count), 1400))
    software = FeedHandler(SoftwareFeedDecoder(), session="SAMPLE0001")
    decoder = decoder_for("card", link=url, timeout=10.0)
    try:
        assert decoder.card.identity.magic == ITCH_MAGIC
        card = FeedHandler(decoder, session="SAMPLE0001")
        # Packet by packet: the decoder's dicts, then the handler's updates, stats and books.
        for packet in packets[:5]:
            body = packet[HEADER_SIZE:]
            assert decoder.decode(body) == SoftwareFeedDecoder().decode(body)
        assert _feed(card, packets) == _feed(software, packets)
        assert card.all_stats() == software.all_stats() and card.stats["messages"] == count
        for symbol in software.book.symbols():
            assert card.book.depth(symbol, 10_000) == software.book.depth(symbol, 10_000), symbol
        # Corrupt and cut packets are reported as the software decoder reports them.
        rng = random.Random(7)
        for body in (edge_packets(rng)[::9] + random_packets(rng, 6, corrupt=0.3, cut=0.3)) if extra else ():
            assert decoder.decode(body) == SoftwareFeedDecoder().decode(body)
        status = decoder.card.status()
        assert status.frames_crc == 0 and decoder.card.stats.resends == 0
    finally:
        decoder.close()


def test_the_feed_handler_actor_selects_the_card_by_configuration(itch_card, tmp_path):
    from actors.feed import FeedHandlerActor
    from tests.actors.test_feed import feed_extra, feed_stats
    from tests.actors.test_marketdata import InProcess

    itch_file = tmp_path / "first.itch"
    itch_file.write_bytes(b"".join(len(m).to_bytes(2, "big") + m for m in sample_messages(200)))
    node = InProcess(tmp_path, feed_extra("", f'[feed]\ndecoder = "card"\nlink = "{itch_card.url}"\n'
                                              f'file = "{itch_file}"'))
    try:
        ref = node.start(FeedHandlerActor, "feed/0")
        assert ref.ask(("read_file", str(itch_file)), timeout=120) == 400  # once at start, once asked
        stats = feed_stats(ref)
        assert stats["decode_errors"] == 0
        reference = L3Book()
        reference.apply_all(r for _, r in read_itch_file(itch_file))
        books = ref.ask("books", timeout=5)
        assert set(books) == set(reference.symbols())
        for symbol, info in books.items():
            assert tuple(info["bbo"]) == reference.bbo(symbol), symbol
    finally:
        node.close()


def test_each_host_refuses_the_other_design(itch_card):
    with pytest.raises(CardError, match="ITCH decoder card .*not a matcher card"):
        CardLink(itch_card.url, timeout=5.0)
    decoder = decoder_for("card", link=itch_card.url, timeout=5.0)  # the card is still fine afterwards
    decoder.close()


def test_a_damaging_line_costs_resends_not_records(itch_card):
    rng = random.Random(11)
    packets = [p[HEADER_SIZE:] for p in packetize("SAMPLE0001", 1, sample_messages(150), 700)]
    packets += random_packets(rng, 6, corrupt=0.3, cut=0.2)
    to_card = FrameTamper(lambda index, body: "pass", random.Random(2))
    to_host = FrameTamper(lambda index, body: "pass", random.Random(4))
    damage = ("corrupt", "truncate", "drop", "garbage", "duplicate", "glue")

    def every_third_damaged(index: int, body: bytes) -> str:  # each kind of damage, several times
        return damage[index // 3 % len(damage)] if index % 3 == 1 else "pass"

    with TamperRelay("127.0.0.1", itch_card.port, to_card=to_card, to_host=to_host) as relay:
        decoder = decoder_for("card", link=relay.url, timeout=10.0)  # identified over a clean line
        decoder.card.timeout, decoder.card.retries = 1.0, 20
        before = decoder.card.status()
        to_card.policy = every_third_damaged
        to_host.policy = random_policy(random.Random(3), 0.1)
        # Garbage on the line first: the card drops it and resynchronises at the next delimiter.
        decoder.card.link.send_raw(bytes(rng.randrange(1, 256) for _ in range(300)))
        for body in packets:
            assert decoder.decode(body) == SoftwareFeedDecoder().decode(body)
        to_card.policy = to_host.policy = lambda index, body: "pass"
        after = decoder.card.status()
        stats = decoder.card.stats
        decoder.close()
    actions = {action for _, action in to_card.log + to_host.log}
    assert set(damage) <= actions, actions
    assert stats.resends > 0 and stats.failed == 0
    bad = (after.frames_crc + after.frames_truncated + after.frames_oversize
           - before.frames_crc - before.frames_truncated - before.frames_oversize)
    assert bad > 0  # the card saw (and dropped) damaged frames
