"""MoldUDP64 codec: packets, heartbeats, end of session, requests, packetizing, robust parsing."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.moldudp64 import (
    DEFAULT_MAX_PAYLOAD,
    END_OF_SESSION_COUNT,
    HEADER_SIZE,
    DownstreamPacket,
    MoldError,
    MoldPacketizer,
    RequestPacket,
    SequenceTracker,
    encode_end_of_session,
    encode_heartbeat,
    encode_packet,
    encode_request,
    packetize,
    parse_packet,
    parse_request,
)

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared/data/itch/sample-20101224.ITCH50.gz"


def test_packet_layout_by_hand():
    packet = encode_packet("SESS01", 42, [b"abc", b"", b"\x00\x01"])
    assert packet[:10] == b"SESS01    "
    assert struct.unpack_from(">QH", packet, 10) == (42, 3)
    assert packet[20:] == b"\x00\x03abc" + b"\x00\x00" + b"\x00\x02\x00\x01"
    parsed = parse_packet(packet)
    assert parsed == DownstreamPacket("SESS01", 42, (b"abc", b"", b"\x00\x01"))
    assert parsed.next_sequence_number == 45 and not parsed.is_heartbeat and not parsed.end_of_session


def test_heartbeat_end_of_session_and_request():
    hb = encode_heartbeat("S", 1000)
    assert len(hb) == HEADER_SIZE and hb[-2:] == b"\x00\x00"
    parsed = parse_packet(hb)
    assert parsed.is_heartbeat and parsed.sequence_number == 1000 and parsed.messages == ()

    eos = encode_end_of_session("S", 1000)
    assert eos[-2:] == b"\xff\xff"
    parsed = parse_packet(eos)
    assert parsed.end_of_session and not parsed.is_heartbeat and parsed.next_sequence_number == 1000
    assert END_OF_SESSION_COUNT == 0xFFFF

    req = encode_request("0123456789", 7, 12)
    assert req == b"0123456789" + struct.pack(">QH", 7, 12)
    assert parse_request(req) == RequestPacket("0123456789", 7, 12)


@pytest.mark.parametrize(
    ("data", "offset", "reason"),
    [
        (b"", 0, "truncated header"),
        (b"S" * 19, 0, "truncated header"),
        (b"S" * 10 + struct.pack(">QH", 1, 1), 20, "truncated length"),
        (b"S" * 10 + struct.pack(">QH", 1, 1) + b"\x00", 20, "truncated length"),
        (b"S" * 10 + struct.pack(">QH", 1, 1) + b"\x00\x05abc", 20, "truncated message block"),
        (b"S" * 10 + struct.pack(">QH", 1, 2) + b"\x00\x01a\x00\x05abc", 23, "truncated message block"),
        (b"S" * 10 + struct.pack(">QH", 1, 1) + b"\x00\x01ab", 23, "bytes after"),
        (b"S" * 10 + struct.pack(">QH", 1, 0) + b"x", 20, "bytes after"),
        (b"S" * 10 + struct.pack(">QH", 1, 0xFFFF) + b"x", 20, "end-of-session"),
        (b"S\xe9" + b"S" * 8 + struct.pack(">QH", 1, 0), 1, "non-ASCII"),
        (b"S" * 10 + struct.pack(">QH", (1 << 64) - 1, 2) + b"\x00\x00" * 2, 10, "overflow"),
    ],
)
def test_parse_errors_name_offsets(data, offset, reason):
    with pytest.raises(MoldError) as exc:
        parse_packet(data)
    assert exc.value.offset == offset and reason in exc.value.reason


def test_request_parse_errors():
    for data in (b"", b"x" * 19, b"x" * 21):
        with pytest.raises(MoldError):
            parse_request(data)


def test_encode_rejects_bad_arguments():
    with pytest.raises(MoldError):
        encode_packet("ELEVENCHARS", 1, [])
    with pytest.raises(MoldError):
        encode_packet("sé", 1, [])
    with pytest.raises(MoldError):
        encode_packet("S", -1, [])
    with pytest.raises(MoldError):
        encode_heartbeat("S", 1 << 64)
    with pytest.raises(MoldError):
        encode_request("S", 1, 70000)
    with pytest.raises(MoldError):
        encode_packet("S", 1, [b"x" * 70000])
    with pytest.raises(MoldError):
        list(packetize("S", 1, [b"x" * 2000]))
    with pytest.raises(MoldError):
        MoldPacketizer("S", 1, max_payload=21)


def itch_messages(limit: int) -> list[bytes]:
    if not SAMPLE.exists():
        pytest.skip(f"shared ITCH sample not found at {SAMPLE}")
    stream = gzip.decompress(SAMPLE.read_bytes())
    out, pos = [], 0
    while pos < len(stream) and len(out) < limit:
        n = int.from_bytes(stream[pos : pos + 2], "big")
        out.append(stream[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


def test_packetize_sample_messages_fills_packets_greedily():
    messages = itch_messages(3000)
    packets = list(packetize("ITCH01", 1, messages))
    assert all(len(p) <= DEFAULT_MAX_PAYLOAD for p in packets)
    parsed = [parse_packet(p) for p in packets]
    assert [m for p in parsed for m in p.messages] == messages
    expected_seq = 1
    for i, p in enumerate(parsed):
        assert p.session == "ITCH01" and p.sequence_number == expected_seq
        expected_seq = p.next_sequence_number
        if i + 1 < len(parsed):
            # Greedy: the next packet's first message would not have fitted.
            assert len(packets[i]) + 2 + len(parsed[i + 1].messages[0]) > DEFAULT_MAX_PAYLOAD
    assert expected_seq == 3001


@given(
    st.lists(st.binary(max_size=120), max_size=60),
    st.integers(HEADER_SIZE + 122, 2000),
    st.integers(0, 1 << 40),
)
@settings(max_examples=150, deadline=None)
def test_packetize_round_trip(messages, max_payload, first):
    packets = list(packetize(b"X", first, messages, max_payload))
    assert all(len(p) <= max_payload for p in packets)
    parsed = [parse_packet(p) for p in packets]
    assert [m for p in parsed for m in p.messages] == messages
    assert all(p.messages for p in parsed)
    seq = first
    for p in parsed:
        assert p.sequence_number == seq
        seq = p.next_sequence_number


def test_packetizer_state():
    packer = MoldPacketizer("A", 10, max_payload=HEADER_SIZE + 2 * 6 - 1)  # room for one 4-byte message
    assert packer.add(b"1234") == []
    closed = packer.add(b"5678")
    assert len(closed) == 1 and parse_packet(closed[0]).messages == (b"1234",)
    assert parse_packet(packer.heartbeat()).sequence_number == 11
    [last] = packer.flush()
    assert parse_packet(last) == DownstreamPacket("A", 11, (b"5678",))
    assert packer.flush() == []
    assert parse_packet(packer.end_of_session()) == DownstreamPacket("A", 12, (), end_of_session=True)


@st.composite
def mutated_packet(draw) -> bytes:
    data = bytearray(
        encode_packet("S1", draw(st.integers(0, 1 << 63)), draw(st.lists(st.binary(max_size=40))))
    )
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


@given(st.one_of(st.binary(max_size=200), mutated_packet()))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_parsers_raise_only_mold_error(data):
    for parse in (parse_packet, parse_request):
        try:
            result = parse(data)
        except MoldError as exc:
            assert exc.offset is None or 0 <= exc.offset <= len(data)
        else:
            assert isinstance(result, DownstreamPacket | RequestPacket)


def test_sequence_tracker_gaps_and_duplicates():
    tracker = SequenceTracker()
    assert tracker.accept(parse_packet(encode_packet("S", 1, [b"a", b"b"]))) == [(1, b"a"), (2, b"b")]
    # 3..4 lost; 5..6 arrive.
    assert tracker.accept(parse_packet(encode_packet("S", 5, [b"e", b"f"]))) == []
    assert tracker.gaps() == [(3, 2)]
    # A heartbeat announces that 7..9 exist too.
    tracker.accept(parse_packet(encode_heartbeat("S", 10)))
    assert tracker.gaps() == [(3, 2), (7, 3)]
    assert tracker.gaps(max_count=2) == [(3, 2), (7, 2), (9, 1)]
    # The retransmission fills the first gap and releases everything buffered behind it.
    got = tracker.accept(parse_packet(encode_packet("S", 2, [b"b", b"c", b"d"])))
    assert got == [(3, b"c"), (4, b"d"), (5, b"e"), (6, b"f")]
    assert tracker.duplicates == 1 and tracker.next_expected == 7
    assert tracker.gaps() == [(7, 3)]
    tracker.accept(parse_packet(encode_end_of_session("S", 10)))
    assert tracker.end_of_session
    with pytest.raises(MoldError):
        tracker.accept(parse_packet(encode_heartbeat("OTHER", 10)))
