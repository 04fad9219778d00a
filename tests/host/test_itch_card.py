"""The ITCH decoder card's host side without a card: protocol payloads, identification checks, the
feed handler's ``decoder = "card"`` configuration, and a link on which nothing answers (a real TCP
listener that never speaks). With a card: tests/hdl/test_itch_card.py, tests/sim/test_itch_card.py."""

from __future__ import annotations

import socket

import pytest

from actors.feed import FeedSettings
from exchange.card_protocol import (
    ITCH_CARD_MAX_PACKET,
    ITCH_MAGIC,
    ITCH_VERSION,
    MAGIC,
    CardError,
    CardIdentity,
    ItchCardIdentity,
    decode_payload,
    parse_records_payload,
    records_payload,
)
from exchange.feed_decoder import decoder_for, known_decoders
from exchange.itch_record import ITCH_RECORD

GOOD = ItchCardIdentity(magic=ITCH_MAGIC, version_major=ITCH_VERSION[0], version_minor=ITCH_VERSION[1], lanes=8,
                        slots=3, records_per_frame=15, record_bytes=ITCH_RECORD.size,
                        max_packet=ITCH_CARD_MAX_PACKET, clock_hz=0)


def test_payloads_round_trip_and_refuse_malformed():
    assert decode_payload(0x1234, b"ab") == b"\x34\x12ab"
    with pytest.raises(ValueError):
        decode_payload(1, bytes(ITCH_CARD_MAX_PACKET + 1))
    records = [bytes([i]) * ITCH_RECORD.size for i in range(3)]
    payload = records_payload(7, 2, records, True)
    assert parse_records_payload(payload, ITCH_RECORD.size) == (7, 2, True, records)
    assert parse_records_payload(records_payload(7, 0, [], True), ITCH_RECORD.size) == (7, 0, True, [])
    for bad in (payload[:-1], payload[:5], payload + b"x"):
        with pytest.raises(ValueError):
            parse_records_payload(bad, ITCH_RECORD.size)


def test_identification_refuses_other_designs_with_a_clear_message():
    assert ItchCardIdentity.decode(GOOD.encode()) == GOOD
    GOOD.check(ITCH_RECORD.size)
    matcher_view = CardIdentity.decode(GOOD.encode())  # the matcher's host reading this card
    with pytest.raises(CardError, match="ITCH decoder card .*not a matcher card"):
        matcher_view.check()
    cases = [
        (dict(magic=MAGIC), "matcher card .*not the ITCH decoder card"),
        (dict(magic=0xDEADBEEF), "not a matchwire ITCH decoder card: identification magic 0xdeadbeef"),
        (dict(version_major=ITCH_VERSION[0] + 1), "is not supported by this host"),
        (dict(record_bytes=ITCH_RECORD.size + 1), "disagree on the record layout"),
        (dict(records_per_frame=0), "not a usable configuration"),
    ]
    for change, message in cases:
        ident = ItchCardIdentity(**{**GOOD.__dict__, **change})
        with pytest.raises(CardError, match=message):
            ItchCardIdentity.decode(ident.encode()).check(ITCH_RECORD.size)
    with pytest.raises(CardError, match="not a matchwire card"):
        ItchCardIdentity.decode(b"\x00" * 10)


def test_feed_settings_select_the_card_by_configuration():
    assert "card" in known_decoders()
    s = FeedSettings.from_raw({"feed": {"decoder": "card", "link": "socket://127.0.0.1:7301"}})
    assert (s.decoder, s.link) == ("card", "socket://127.0.0.1:7301")
    s = FeedSettings.from_raw({"feed": {"decoder": "card", "link": "/dev/ttyUSB0?baud=3000000"}})
    assert s.link == "/dev/ttyUSB0?baud=3000000"
    with pytest.raises(ValueError, match="needs feed.link"):
        FeedSettings.from_raw({"feed": {"decoder": "card"}})
    with pytest.raises(ValueError, match="only used with decoder"):
        FeedSettings.from_raw({"feed": {"link": "socket://127.0.0.1:7301"}})
    with pytest.raises(ValueError, match="unknown options"):
        FeedSettings.from_raw({"feed": {"decoder": "card", "link": "/dev/ttyUSB0?speed=9"}})


def test_a_silent_link_fails_clearly():
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never answers
        url = f"socket://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(CardError, match="no identification answer from the card at socket://.* after 2 attempts"):
            decoder_for("card", link=url, timeout=0.3, retries=1)
    with pytest.raises(TypeError, match="link"):
        decoder_for("card")


def test_the_feed_actor_stops_at_start_when_its_card_cannot_be_reached(tmp_path):
    from actors.feed import FeedHandlerActor
    from tests.actors.test_feed import feed_extra
    from tests.actors.test_marketdata import InProcess

    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]  # nothing listens there once closed: the connection is refused
    node = InProcess(tmp_path, feed_extra("", f'[feed]\ndecoder = "card"\nlink = "socket://127.0.0.1:{port}"\n'))
    try:
        with pytest.raises(CardError, match=f"feed/0: feed decoder ITCH decoder card at socket://127.0.0.1:{port}"):
            node.start(FeedHandlerActor, "feed/0")
    finally:
        node.close()
