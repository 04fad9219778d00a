"""Host side of the card without a simulator: the protocol's payloads, identification checks, link URLs,
what the host says when nothing (or something else) answers, the card backend and the CLI's errors."""

from __future__ import annotations

import socket
import threading

import pytest

from actors.backends import BackendOptions, BackendUnavailable, book_factory
from actors.cli import main as cli_main
from exchange.card_protocol import (
    CARD_BAUD,
    EVENTS_HEADER,
    MAGIC,
    MATCHER_PRESETS,
    VERSION,
    CardError,
    CardIdentity,
    FrameType,
    command_payload,
    events_payload,
    matcher_preset,
    parse_command_payload,
    parse_events_payload,
    replay_depth_for,
)
from exchange.framing_spec import StreamDecoder, encode_frame
from exchange.instruments import Instrument
from exchange.matcher_format import CommandRecord, EventRecord, MatcherConfig, MatcherOp, RecordKind
from host.card import CardLink, initial_base, split_link_url

CONFIG = MatcherConfig()


def identity(**changes) -> CardIdentity:
    values = {"magic": MAGIC, "version_major": VERSION[0], "version_minor": VERSION[1], "next_seq": 0, "fresh": True,
              "records_per_frame": 16, "max_orders": 4096, "window_ticks": 1024, "qty_width": 32, "id_width": 16,
              "group_width": 32, "replay_depth": 4098, "clock_hz": 0}
    values.update(changes)
    return CardIdentity(**values)


def test_identity_round_trip_and_checks():
    ident = identity(next_seq=513, fresh=False, clock_hz=50_000_000)
    assert CardIdentity.decode(ident.encode()) == ident
    ident.check()
    assert ident.matcher_config() == CONFIG
    with pytest.raises(CardError, match="not a matchwire card: identification magic 0xdeadbeef"):
        identity(magic=0xDEADBEEF).check()
    with pytest.raises(CardError, match=r"card design version 7\.2 is not supported by this host"):
        identity(version_major=7, version_minor=2).check()
    identity(version_minor=VERSION[1] + 1).check()  # a newer minor version is compatible
    with pytest.raises(CardError, match="not a matchwire card"):
        CardIdentity.decode(b"\x01\x02")
    with pytest.raises(ValueError, match="id_width"):
        identity(id_width=12).matcher_config()


def test_payloads():
    record = CONFIG.encode_command(CommandRecord(MatcherOp.NEW, side=1, tif=1, price=-3, qty=100))
    payload = command_payload(65535, CONFIG, record)
    assert parse_command_payload(payload, CONFIG) == (65535, record)
    with pytest.raises(ValueError, match="seq"):
        command_payload(65536, CONFIG, record)
    with pytest.raises(ValueError, match="command record"):
        command_payload(1, CONFIG, record[:-1])
    with pytest.raises(ValueError, match="command payload"):
        parse_command_payload(payload + b"\x00", CONFIG)
    events = [CONFIG.encode_event(EventRecord(RecordKind.FILL, 0, 1, 0, 3, -2, 10, 5)),
              CONFIG.encode_event(EventRecord(RecordKind.ADDED, 0, 1, 1, 4, -2, 10, 10))]
    assert parse_events_payload(events_payload(9, 2, CONFIG, events), CONFIG) == (9, 2, events)
    for bad in (b"", EVENTS_HEADER.pack(seq=1, index=0), events_payload(1, 0, CONFIG, events)[:-1]):
        with pytest.raises(ValueError, match="events payload"):
            parse_events_payload(bad, CONFIG)
    assert replay_depth_for(CONFIG) == 4098
    assert set(MATCHER_PRESETS) >= {"default", "small"} and matcher_preset("default") == CONFIG
    with pytest.raises(ValueError, match="unknown matcher preset .huge.; choose from default, medium, small"):
        matcher_preset("huge")


def test_link_urls():
    assert split_link_url("socket://127.0.0.1:5000") == ("socket://127.0.0.1:5000", CARD_BAUD)
    assert split_link_url("/dev/ttyUSB0") == ("/dev/ttyUSB0", CARD_BAUD)
    assert split_link_url("/dev/ttyUSB0?baud=3000000") == ("/dev/ttyUSB0", 3_000_000)
    for bad, message in (("/dev/ttyUSB0?speed=9", "unknown options"), ("/dev/ttyUSB0?baud=fast", "integer"),
                         ("/dev/ttyUSB0?baud=0", "positive"), ("", "non-empty"), (None, "non-empty")):
        with pytest.raises(ValueError, match=message):
            split_link_url(bad)  # type: ignore[arg-type]


def test_initial_window_base():
    assert initial_base(Instrument("A", tick_size=100, reference_price=1_895_050)) == 1_895_000
    assert initial_base(Instrument("A", tick_size=100, band=(900_000, 1_100_100))) == 1_000_000
    assert initial_base(Instrument("A", tick_size=100)) is None
    assert initial_base(Instrument("A", tick_size=100, reference_price=1)) == 100


def test_nothing_answering_is_a_clear_error():
    with pytest.raises(CardError, match=r"no identification answer from the card at loop:// after 2 attempts"):
        CardLink("loop://", timeout=0.1, retries=1)  # our own IDENTIFY comes back: not an answer
    with pytest.raises(ValueError, match="timeout"):
        CardLink("loop://", timeout=0)
    with pytest.raises(ValueError, match="retries"):
        CardLink("loop://", retries=-1)


def _stand_in(answer: bytes) -> tuple[socket.socket, threading.Thread]:
    """A TCP peer that answers the first identify with ``answer`` (after some line noise)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            decoder = StreamDecoder()
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                if any(getattr(f, "type", None) == FrameType.IDENTIFY for f in decoder.feed(data)):
                    conn.sendall(b"\x17\x00\xff\x42" + answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize(("ident", "message"), [
    (identity(magic=0x0BADCAFE), "not a matchwire card: identification magic 0x0badcafe"),
    (identity(version_major=VERSION[0] + 1), f"card design version {VERSION[0] + 1}.0 is not supported"),
    (identity(qty_width=1), "invalid matcher configuration"),
])
def test_a_peer_with_the_wrong_identity_is_refused_over_tcp(ident, message):
    server, thread = _stand_in(encode_frame(FrameType.IDENT, ident.encode()))
    try:
        port = server.getsockname()[1]
        with pytest.raises(CardError, match=message):
            CardLink(f"socket://127.0.0.1:{port}", timeout=2)
    finally:
        server.close()
        thread.join(5)


def test_card_backend_needs_a_link_and_an_answer():
    with pytest.raises(BackendUnavailable, match="backend 'card' needs a link"):
        book_factory("card", BackendOptions())
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    factory = book_factory("card", BackendOptions(link=f"socket://127.0.0.1:{port}"))
    with pytest.raises(BackendUnavailable, match=f"card at socket://127.0.0.1:{port} for AAPL"):
        factory(Instrument("AAPL"))


def test_match_verb_reports_card_problems(tmp_path, capsys):
    script = tmp_path / "s.jsonl"
    script.write_text('{"op": "set_base", "symbol": "T", "price": 100}\n')
    assert cli_main(["match", str(script), "--backend", "card"]) == 2
    assert "backend 'card' needs a link" in capsys.readouterr().err
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert cli_main(["match", str(script), "--backend", "card", "--link", f"socket://127.0.0.1:{port}"]) == 2
    assert f"card at socket://127.0.0.1:{port} for T: " in capsys.readouterr().err
