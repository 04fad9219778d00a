"""SoupBinTCP 4.0 codec: byte layouts from the specification, nasdaq-protocols interop, streaming, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nasdaq_protocols import soup as nsoup

from exchange import soupbintcp as soup
from exchange.soupbintcp import Packet, SoupDecoder, SoupError


def decode_all(data: bytes, sender: str = soup.CLIENT, chunk: int | None = None) -> list[Packet]:
    decoder = SoupDecoder(sender)
    out: list[Packet] = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        decoder.feed(data[i:i + step])
        out += decoder.packets()
    return out


# -- layouts, written out by hand from the specification's field tables ------------------------------


def test_login_request_layout():
    # Length 47 = type + username 6 + password 10 + session 10 + sequence 20; alpha left-justified,
    # numeric right-justified, both space-padded.
    packet = soup.login_request("DEMO1", "secret", "", 42)
    assert packet == (b"\x00\x2f" b"L" b"DEMO1 " b"secret    " b"          " + b" " * 18 + b"42")
    assert len(packet) == 49
    fields = soup.decode_packet(packet).fields()
    assert fields == {"username": "DEMO1", "password": "secret", "requested_session": "",
                      "requested_sequence_number": 42}


def test_login_accepted_layout():
    packet = soup.login_accepted("SESS01", 7)
    # Session "left padded with spaces", sequence number likewise.
    assert packet == b"\x00\x1f" b"A" b"    SESS01" + b" " * 19 + b"7"
    assert soup.decode_packet(packet).fields() == {"session": "SESS01", "sequence_number": 7}


def test_fixed_and_variable_layouts():
    assert soup.login_rejected("A") == b"\x00\x02JA"
    assert soup.login_rejected("S") == b"\x00\x02JS"
    assert soup.SERVER_HEARTBEAT == b"\x00\x01H"
    assert soup.CLIENT_HEARTBEAT == b"\x00\x01R"
    assert soup.END_OF_SESSION == b"\x00\x01Z"
    assert soup.LOGOUT_REQUEST == b"\x00\x01O"
    assert soup.sequenced_data(b"abc") == b"\x00\x04Sabc"
    assert soup.sequenced_data(b"") == b"\x00\x01S"
    assert soup.unsequenced_data(b"\x00\xff") == b"\x00\x03U\x00\xff"
    assert soup.debug("hi") == b"\x00\x03+hi"
    big = bytes(65534)
    assert soup.sequenced_data(big)[:3] == b"\xff\xffS"


def test_table_lengths():
    lengths = {code: spec.length for code, spec in soup.PACKET_TYPES.items()}
    assert lengths == {"+": None, "A": 31, "J": 2, "S": None, "H": 1, "Z": 1, "L": 47, "U": None, "R": 1, "O": 1}


def test_encode_errors():
    with pytest.raises(SoupError):
        soup.login_request("TOOLONG", "pw")
    with pytest.raises(SoupError):
        soup.login_request("U", "p" * 11)
    with pytest.raises(SoupError):
        soup.login_request("U", "p", "", -1)
    with pytest.raises(SoupError):
        soup.login_request("U", "p", "", 10 ** 20)
    with pytest.raises(SoupError):
        soup.login_rejected("X")
    with pytest.raises(SoupError):
        soup.encode_packet("H", b"x")
    with pytest.raises(SoupError):
        soup.encode_packet("?")
    with pytest.raises(SoupError):
        soup.sequenced_data(bytes(65535))
    with pytest.raises(SoupError):
        soup.encode("L", username="A")
    with pytest.raises(SoupError):
        soup.login_request("USÉR", "pw")


# -- interoperability with nasdaq-protocols' message classes -----------------------------------------


def test_nasdaq_protocols_login_request_decodes():
    # nasdaq-protocols left-justifies the sequence number; we read both justifications.
    _, raw = nsoup.LoginRequest("DEMO1", "secret", "", "17").to_bytes()
    assert raw[2:3] == b"L" and len(raw) == 49
    packet = soup.decode_packet(raw, soup.CLIENT)
    assert packet.fields() == {"username": "DEMO1", "password": "secret", "requested_session": "",
                               "requested_sequence_number": 17}


def test_our_server_packets_decode_in_nasdaq_protocols():
    cases = [
        (soup.login_accepted("SESS01", 123), nsoup.LoginAccepted("SESS01", 123)),
        (soup.login_rejected("A"), nsoup.LoginRejected("A")),
        (soup.login_rejected("S"), nsoup.LoginRejected("S")),
        (soup.sequenced_data(b"\x01OUCH"), nsoup.SequencedData(b"\x01OUCH")),
        (soup.SERVER_HEARTBEAT, nsoup.ServerHeartbeat()),
        (soup.END_OF_SESSION, nsoup.EndOfSession()),
        (soup.debug("note"), nsoup.Debug("note")),
    ]
    for ours, theirs in cases:
        _, decoded = nsoup.SoupMessage.from_bytes(ours)
        assert decoded == theirs


def test_nasdaq_protocols_client_packets_decode_here():
    for msg, expected in [
        (nsoup.UnSequencedData(b"xyz"), Packet("U", b"xyz")),
        (nsoup.ClientHeartbeat(), Packet("R", b"")),
        (nsoup.LogoutRequest(), Packet("O", b"")),
        (nsoup.Debug("dbg"), Packet("+", b"dbg")),
    ]:
        _, raw = msg.to_bytes()
        assert soup.decode_packet(raw, soup.CLIENT) == expected


# -- streaming ---------------------------------------------------------------------------------------


def test_any_chunking_gives_the_same_packets():
    stream = (soup.login_request("U1", "p", "", 0) + soup.unsequenced_data(b"a" * 300) + soup.CLIENT_HEARTBEAT
              + soup.debug("x") + soup.unsequenced_data(b"") + soup.LOGOUT_REQUEST)
    whole = decode_all(stream)
    assert [p.type for p in whole] == ["L", "U", "R", "+", "U", "O"]
    for chunk in (1, 2, 3, 7, 64):
        assert decode_all(stream, chunk=chunk) == whole


def test_partial_packet_waits():
    decoder = SoupDecoder(soup.SERVER)
    data = soup.sequenced_data(b"hello")
    decoder.feed(data[:4])
    assert list(decoder.packets()) == []
    assert decoder.buffered == 4
    decoder.feed(data[4:])
    assert list(decoder.packets()) == [Packet("S", b"hello")]
    assert decoder.buffered == 0 and decoder.offset == len(data)


def test_consumer_may_stop_early():
    decoder = SoupDecoder(soup.CLIENT)
    decoder.feed(soup.login_request("U1", "p") + soup.unsequenced_data(b"x"))
    for packet in decoder.packets():
        assert packet.type == "L"
        break
    assert list(decoder.packets()) == [Packet("U", b"x")]


# -- malformed input ----------------------------------------------------------------------------------


def _error(data: bytes, sender: str = soup.CLIENT, **kw) -> SoupError:
    decoder = SoupDecoder(sender, **kw)
    decoder.feed(data)
    with pytest.raises(SoupError) as info:
        list(decoder.packets())
    return info.value


def test_wrong_length_for_type_is_reported_at_the_prefix():
    good = soup.unsequenced_data(b"ok")
    err = _error(good + b"\x00\x02Rx")
    assert err.offset == len(good)
    assert "length 2" in err.reason


def test_wrong_length_found_before_the_whole_packet_arrives():
    err = _error(b"\x00\x30L")  # a 48-byte login request: refused after 3 bytes
    assert err.offset == 0


def test_unknown_type_names_its_offset():
    err = _error(soup.CLIENT_HEARTBEAT + b"\x00\x01?")
    assert err.offset == 5 and "unknown" in err.reason


def test_type_from_the_wrong_side():
    err = _error(soup.sequenced_data(b"x"), soup.CLIENT)
    assert "may not be sent by a client" in err.reason
    err = _error(soup.unsequenced_data(b"x"), soup.SERVER)
    assert "may not be sent by a server" in err.reason


def test_oversize_refused_from_the_prefix_alone():
    err = _error(b"\x10\x00", max_packet_length=1024)
    assert err.offset == 0 and "exceeds" in err.reason


def test_zero_length():
    assert _error(b"\x00\x00").offset == 0


def test_bad_field_contents():
    raw = bytearray(soup.login_request("U1", "pw", "", 5))
    raw[-3] = ord("x")
    err = _error(bytes(raw))
    assert err.offset == 2 + 1 + 26 and "not a number" in err.reason
    raw = bytearray(soup.login_request("U1", "pw"))
    raw[4] = 0xE9
    err = _error(bytes(raw))
    assert err.offset == 3 and "ASCII" in err.reason
    assert _error(b"\x00\x02+\xff").offset == 3


def test_blank_sequence_number_reads_as_zero():
    raw = b"\x00\x2fL" + b"U1    " + b"pw        " + b" " * 30
    assert soup.decode_packet(raw).fields()["requested_sequence_number"] == 0


def test_failed_decoder_stays_failed():
    decoder = SoupDecoder(soup.CLIENT)
    decoder.feed(soup.CLIENT_HEARTBEAT + b"\x00\x00" + soup.CLIENT_HEARTBEAT)
    packets = []
    with pytest.raises(SoupError) as first:
        for p in decoder.packets():
            packets.append(p)
    assert packets == [Packet("R", b"")]
    decoder.feed(soup.CLIENT_HEARTBEAT)
    with pytest.raises(SoupError) as again:
        list(decoder.packets())
    assert again.value is first.value


def test_decode_packet_strictness():
    with pytest.raises(SoupError):
        soup.decode_packet(soup.CLIENT_HEARTBEAT * 2)
    with pytest.raises(SoupError):
        soup.decode_packet(soup.CLIENT_HEARTBEAT[:2])
    with pytest.raises(SoupError):
        soup.decode_packet(b"")


# -- fuzzing --------------------------------------------------------------------------------------------

_VALID_CLIENT = [soup.login_request("USER1", "pw", "", 3), soup.unsequenced_data(b"O" * 47), soup.CLIENT_HEARTBEAT,
                 soup.LOGOUT_REQUEST, soup.debug("x")]
_VALID_SERVER = [soup.login_accepted("S1", 1), soup.login_rejected("A"), soup.sequenced_data(b"A" * 64),
                 soup.SERVER_HEARTBEAT, soup.END_OF_SESSION, soup.debug("y")]


def _decode_fuzz(data: bytes, sender: str, chunks: list[int], limit: int) -> None:
    decoder = SoupDecoder(sender, max_packet_length=limit)
    pos = 0
    try:
        for size in [*chunks, len(data)]:
            decoder.feed(data[pos:pos + size])
            pos += size
            for packet in decoder.packets():
                assert isinstance(packet.type, str) and isinstance(packet.payload, bytes)
                packet.fields()  # must not raise for a packet the decoder produced
    except SoupError as exc:
        assert exc.offset is not None and 0 <= exc.offset <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([soup.CLIENT, soup.SERVER]),
       st.lists(st.integers(0, 40), max_size=8), st.sampled_from([1, 64, 4096, 65535]))
def test_fuzz_random_bytes_only_raise_soup_error(data, sender, chunks, limit):
    _decode_fuzz(data, sender, chunks, limit)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(range(len(_VALID_CLIENT))), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
       st.sampled_from([soup.CLIENT, soup.SERVER]), st.lists(st.integers(0, 40), max_size=8))
def test_fuzz_mutated_streams_only_raise_soup_error(picks, mutations, sender, chunks):
    pool = _VALID_CLIENT if sender == soup.CLIENT else _VALID_SERVER
    data = bytearray(b"".join(pool[i % len(pool)] for i in picks))
    for pos, value in mutations:
        if data:
            data[pos % len(data)] = value
    _decode_fuzz(bytes(data), sender, chunks, 65535)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.builds(soup.unsequenced_data, st.binary(max_size=200)),
    st.builds(soup.login_request, st.text("ABCXYZ019", min_size=1, max_size=6),
              st.text("abcdef!#123", min_size=0, max_size=10), st.text("S0123", max_size=10),
              st.integers(0, 10 ** 20 - 1)),
    st.just(soup.CLIENT_HEARTBEAT), st.just(soup.LOGOUT_REQUEST),
    st.builds(soup.debug, st.text("abc xyz", max_size=30))), max_size=10), st.integers(1, 50))
def test_roundtrip_any_chunking(frames, chunk):
    data = b"".join(frames)
    packets = decode_all(data, chunk=chunk)
    assert b"".join(soup.encode_packet(p.type, p.payload) for p in packets) == data
