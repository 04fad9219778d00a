"""ITCH 5.0 codec, file reader/writer and the itch_tools commands."""

from __future__ import annotations

import gzip
import io
import json
import struct
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itch.messages import create_message
from itch.messages import messages as itchfeed_classes
from itch.parser import MessageParser

from exchange import itch, itch_tools
from exchange.itch import (
    ALPHA,
    MESSAGE_SPECS,
    TIMESTAMP,
    ItchDecodeError,
    ItchEncodeError,
    ItchFileWriter,
    decode_message,
    encode_message,
    iter_messages,
    read_itch_file,
    to_json_dict,
    write_itch_file,
)

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared/data/itch/sample-20101224.ITCH50.gz"
needs_sample = pytest.mark.skipif(not SAMPLE.exists(), reason=f"shared ITCH sample not found at {SAMPLE}")

SAMPLE_COUNTS = {"P": 5000, "A": 4997, "D": 1745, "E": 198, "X": 45, "U": 12, "S": 6, "R": 3, "H": 3, "F": 3}

# Message lengths as printed in the TotalView-ITCH 5.0 specification, independent of our table.
SPEC_LENGTHS = {
    "S": 12, "R": 39, "H": 25, "Y": 20, "L": 26, "V": 35, "W": 12, "K": 28, "J": 35, "h": 21, "A": 36,
    "F": 40, "E": 31, "C": 36, "X": 23, "D": 19, "U": 35, "P": 44, "Q": 40, "B": 19, "I": 50, "N": 20,
    "O": 48,
}  # fmt: skip

# Our field name -> itchfeed attribute name, where they differ.
ITCHFEED_NAMES = {
    ("R", "luld_reference_price_tier"): "luld_ref",
    ("V", "level_1"): "level1_price",
    ("V", "level_2"): "level2_price",
    ("V", "level_3"): "level3_price",
    ("K", "ipo_quotation_release_time"): "ipo_release_time",
    ("K", "ipo_quotation_release_qualifier"): "ipo_release_qualifier",
    ("J", "auction_collar_extension"): "auction_collar_extention",
    ("U", "original_order_reference_number"): "order_reference_number",
    ("I", "price_variation_indicator"): "variation_indicator",
}


@pytest.fixture(scope="module")
def sample_stream() -> bytes:
    if not SAMPLE.exists():
        pytest.skip(f"shared ITCH sample not found at {SAMPLE}")
    return gzip.decompress(SAMPLE.read_bytes())


def frames(stream: bytes) -> list[tuple[int, bytes]]:
    """Independent framing: (offset of length prefix, message bytes)."""
    out, pos = [], 0
    while pos < len(stream):
        (n,) = struct.unpack_from(">H", stream, pos)
        out.append((pos, stream[pos + 2 : pos + 2 + n]))
        pos += 2 + n
    return out


# ---------------------------------------------------------------------------------------------- table


def test_table_covers_spec_and_lengths_match():
    assert {code: spec.length for code, spec in MESSAGE_SPECS.items()} == SPEC_LENGTHS
    for code, spec in MESSAGE_SPECS.items():
        assert spec.field_names[:3] == ("stock_locate", "tracking_number", "timestamp")
        assert len(set(spec.field_names)) == len(spec.field_names), code
        assert itch.message_length(code) == itch.message_length(code.encode()) == SPEC_LENGTHS[code]
        assert spec.layout.size == spec.length


def test_unknown_type_length_raises_defined_error():
    with pytest.raises(itch.ItchError):
        itch.message_length("Z")


# --------------------------------------------------------------------------------------------- sample


@needs_sample
def test_sample_decodes_completely_with_exact_counts():
    records = list(read_itch_file(SAMPLE))
    errors = [r for _, r in records if isinstance(r, ItchDecodeError)]
    assert errors == []
    counts = Counter(r["type"] for _, r in records)
    assert counts == SAMPLE_COUNTS
    assert len(records) == 12012


@needs_sample
def test_sample_spot_values_match_hand_decoding(sample_stream):
    # Hand-written layouts (struct + int.from_bytes), independent of the module's table.
    hand = {
        "S": (">cHH6sc", ["event_code"]),
        "R": (">cHH6s8sccIcc2scccccIc", ["stock", "market_category", "financial_status_indicator",
                                          "round_lot_size", "round_lots_only", "issue_classification",
                                          "issue_sub_type", "authenticity", "short_sale_threshold_indicator",
                                          "ipo_flag", "luld_reference_price_tier", "etp_flag",
                                          "etp_leverage_factor", "inverse_indicator"]),
        "H": (">cHH6s8scc4s", ["stock", "trading_state", "reserved", "reason"]),
        "A": (">cHH6sQcI8sI", ["order_reference_number", "buy_sell_indicator", "shares", "stock", "price"]),
        "F": (">cHH6sQcI8sI4s", ["order_reference_number", "buy_sell_indicator", "shares", "stock", "price",
                                 "attribution"]),
        "E": (">cHH6sQIQ", ["order_reference_number", "executed_shares", "match_number"]),
        "X": (">cHH6sQI", ["order_reference_number", "cancelled_shares"]),
        "D": (">cHH6sQ", ["order_reference_number"]),
        "U": (">cHH6sQQII", ["original_order_reference_number", "new_order_reference_number", "shares",
                             "price"]),
        "P": (">cHH6sQcI8sIQ", ["order_reference_number", "buy_sell_indicator", "shares", "stock", "price",
                                "match_number"]),
    }  # fmt: skip
    seen: Counter[str] = Counter()
    for offset, raw in frames(sample_stream):
        code = chr(raw[0])
        if seen[code] >= 3:  # first three of each type
            continue
        seen[code] += 1
        fmt, names = hand[code]
        values = struct.unpack(fmt, raw)
        expected = {
            "type": code,
            "stock_locate": values[1],
            "tracking_number": values[2],
            "timestamp": int.from_bytes(values[3], "big"),
        }
        for name, value in zip(names, values[4:], strict=True):
            if isinstance(value, bytes):
                value = value.decode("ascii")
                value = value.rstrip(" ") if len(value) > 1 else value
            expected[name] = value
        assert decode_message(sample_stream, offset + 2) == expected
    assert set(seen) == set(SAMPLE_COUNTS)


@needs_sample
def test_sample_known_values():
    records = dict(read_itch_file(SAMPLE))
    assert records[0] == {
        "type": "S", "stock_locate": 0, "tracking_number": 0, "timestamp": 11202475298710, "event_code": "O"
    }  # fmt: skip
    assert records[308] == {
        "type": "F", "stock_locate": 2, "tracking_number": 0, "timestamp": 32813425752711,
        "order_reference_number": 84836, "buy_sell_indicator": "B", "shares": 100, "stock": "BOB",
        "price": 52917, "attribution": "VIRT",
    }  # fmt: skip
    # The space-valued single-character field stays a space; the 4-byte all-space field strips to "".
    halt = next(r for r in records.values() if r["type"] == "H")
    assert halt["reserved"] == " " and halt["reason"] == "" and halt["trading_state"] == "T"


@needs_sample
def test_sample_matches_itchfeed_message_by_message(sample_stream):
    ours = [r for _, r in iter_messages(sample_stream)]
    theirs = list(MessageParser().parse_stream(sample_stream))
    assert len(ours) == len(theirs) == 12012
    for mine, other in zip(ours, theirs, strict=True):
        assert_same_as_itchfeed(mine, other)


@needs_sample
def test_decoding_the_sample_is_fast(sample_stream):
    start = time.perf_counter()
    n = sum(1 for _ in iter_messages(sample_stream))
    elapsed = time.perf_counter() - start
    assert n == 12012
    assert elapsed < 1.0, f"decoding 12k messages took {elapsed:.3f}s"


# ------------------------------------------------------------------------------- itchfeed interop


def itchfeed_value(code: str, name: str, width: int, obj: object) -> object:
    value = getattr(obj, ITCHFEED_NAMES.get((code, name), name))
    if isinstance(value, bytes):
        text = value.decode("ascii")
        return text.rstrip(" ") if width > 1 else text
    return value


def assert_same_as_itchfeed(mine: dict, other: object) -> None:
    code = mine["type"]
    assert other.message_type == code.encode()
    for name, _kind, width in MESSAGE_SPECS[code].fields:
        assert mine[name] == itchfeed_value(code, name, width, other), (code, name)


def field_strategy(kind: str, width: int) -> st.SearchStrategy:
    if kind == ALPHA:
        chars = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
        if width == 1:
            return chars
        # Multi-character alpha fields decode with trailing spaces stripped.
        return st.text(chars, max_size=width).map(lambda s: s.rstrip(" "))
    if kind == TIMESTAMP:
        return st.integers(0, (1 << 48) - 1)
    return st.integers(0, (1 << (8 * width)) - 1)


@st.composite
def any_message(draw) -> dict:
    code = draw(st.sampled_from(sorted(MESSAGE_SPECS)))
    msg = {"type": code}
    for name, kind, width in MESSAGE_SPECS[code].fields:
        msg[name] = draw(field_strategy(kind, width))
    return msg


@given(any_message())
@settings(max_examples=400, deadline=None)
def test_encode_decode_round_trip_every_type(msg):
    raw = encode_message(**msg)
    assert len(raw) == MESSAGE_SPECS[msg["type"]].length
    assert decode_message(raw) == msg
    assert decode_message(memoryview(raw)) == msg
    assert decode_message(b"xx" + raw + b"yy", 2) == msg
    assert to_json_dict(msg) == msg and list(to_json_dict(msg)) == [
        "type",
        *MESSAGE_SPECS[msg["type"]].field_names,
    ]


@given(any_message())
@settings(max_examples=300, deadline=None)
def test_our_encoding_decodes_identically_with_itchfeed(msg):
    raw = encode_message(**msg)
    other = itchfeed_classes[raw[:1]](raw)
    assert_same_as_itchfeed(msg, other)
    assert other.to_bytes() == raw


@given(any_message())
@settings(max_examples=300, deadline=None)
def test_itchfeed_encoding_decodes_identically_with_ours(msg):
    code = msg["type"]
    kwargs = {}
    for name, kind, width in MESSAGE_SPECS[code].fields:
        value = msg[name]
        if kind == ALPHA:
            value = value.encode("ascii").ljust(width, b" ")
        kwargs[ITCHFEED_NAMES.get((code, name), name)] = value
    raw = create_message(code.encode(), **kwargs).to_bytes()
    assert decode_message(raw) == msg


@given(st.sampled_from(sorted(MESSAGE_SPECS)), st.data())
@settings(max_examples=300, deadline=None)
def test_raw_ascii_bytes_decode_then_reencode_identically(code, data):
    spec = MESSAGE_SPECS[code]
    body = bytearray(data.draw(st.binary(min_size=spec.length - 1, max_size=spec.length - 1)))
    for (_, kind, width), offset in zip(spec.fields, spec.field_offsets, strict=True):
        if kind == ALPHA:
            for i in range(offset - 1, offset - 1 + width):
                body[i] &= 0x7F
    raw = code.encode() + bytes(body)
    assert encode_message(**decode_message(raw)) == raw


def test_encode_rejects_bad_input():
    good = {
        "stock_locate": 1, "tracking_number": 0, "timestamp": 5, "order_reference_number": 9,
        "buy_sell_indicator": "B", "shares": 100, "stock": "ABC", "price": 1_000_000,
    }  # fmt: skip
    assert decode_message(encode_message("A", **good))["price"] == 1_000_000
    assert encode_message(b"A", **good) == encode_message("A", **good)
    bad_cases = [
        ("Z", good),
        ("A", {k: v for k, v in good.items() if k != "price"}),
        ("A", {**good, "colour": "red"}),
        ("A", {**good, "price": 100.5}),
        ("A", {**good, "price": True}),
        ("A", {**good, "shares": -1}),
        ("A", {**good, "shares": 1 << 32}),
        ("A", {**good, "timestamp": 1 << 48}),
        ("A", {**good, "stock": "TOOLONGSYM"}),
        ("A", {**good, "stock": "ÄBC"}),
        ("A", {**good, "stock": 7}),
        ("A", {**good, "buy_sell_indicator": "BS"}),
    ]
    for code, fields in bad_cases:
        with pytest.raises(ItchEncodeError):
            encode_message(code, **fields)


def test_single_char_alpha_empty_encodes_as_space():
    raw = encode_message("S", stock_locate=0, tracking_number=0, timestamp=0, event_code="")
    assert raw[-1:] == b" "
    assert decode_message(raw)["event_code"] == " "


# -------------------------------------------------------------------------------------- bad input


def test_decode_message_errors_name_offsets():
    a = encode_message(
        "A", stock_locate=1, tracking_number=0, timestamp=1, order_reference_number=1,
        buy_sell_indicator="B", shares=1, stock="X", price=1,
    )  # fmt: skip
    with pytest.raises(ItchDecodeError) as exc:
        decode_message(b"\x00\x00" + a[:20], 2)
    assert exc.value.offset == 2 and "truncated" in exc.value.reason
    with pytest.raises(ItchDecodeError) as exc:
        decode_message(b"abcZ" + a[1:], 3)
    assert exc.value.offset == 3 and "unknown message type" in exc.value.reason
    bad = bytearray(a)
    bad[26] = 0xC4  # inside the stock field (offset 24..31)
    with pytest.raises(ItchDecodeError) as exc:
        decode_message(b"pad" + bytes(bad), 3)
    assert exc.value.offset == 3 + 26 and "stock" in exc.value.reason
    for buf, offset in ((b"", 0), (a, len(a)), (a, -1)):
        with pytest.raises(ItchDecodeError):
            decode_message(buf, offset)


def frame(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def build_broken_stream() -> tuple[bytes, list[tuple[int, object]]]:
    """A stream mixing good frames with every kind of framing error, and the records expected from it."""
    s_msg = encode_message("S", stock_locate=0, tracking_number=1, timestamp=2, event_code="O")
    d_msg = encode_message("D", stock_locate=3, tracking_number=0, timestamp=4, order_reference_number=77)
    non_ascii = bytearray(encode_message("Y", stock_locate=1, tracking_number=0, timestamp=0, stock="AB",
                                         reg_sho_action="0"))  # fmt: skip
    non_ascii[19] = 0xFF  # reg_sho_action
    parts = [
        frame(s_msg),  # 0: good
        frame(b"Z" + bytes(11)),  # 14: unknown type
        frame(d_msg + b"\x00"),  # 28: length prefix 20 but 'D' is 19
        b"\x00\x00",  # 50: zero-length frame
        frame(bytes(non_ascii)),  # 52: non-ASCII alpha
        frame(d_msg),  # 74: good
        b"\x00\x24A\x00\x01",  # 95: truncated: prefix says 36, 3 bytes follow
    ]
    stream = b"".join(parts)
    expected = [
        (0, decode_message(s_msg)),
        (14, ("unknown message type", 16)),
        (28, ("length prefix 20 disagrees", 28)),
        (50, ("zero-length", 50)),
        (52, ("non-ASCII byte 0xff in field 'reg_sho_action'", 52 + 2 + 19)),
        (74, decode_message(d_msg)),
        (95, ("truncated message", 95)),
    ]
    return stream, expected


def check_records(records, expected):
    assert [offset for offset, _ in records] == [offset for offset, _ in expected]
    for (_, got), (_, want) in zip(records, expected, strict=True):
        if isinstance(want, dict):
            assert got == want
        else:
            reason, error_offset = want
            assert isinstance(got, ItchDecodeError), got
            assert reason in got.reason and got.offset == error_offset, got


@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 20])
@pytest.mark.parametrize("compress", [False, True])
def test_reader_reports_each_bad_frame_with_its_offset_and_carries_on(tmp_path, chunk_size, compress):
    stream, expected = build_broken_stream()
    path = tmp_path / "broken.itch"  # no .gz name: gzip is found by its magic bytes
    path.write_bytes(gzip.compress(stream) if compress else stream)
    check_records(list(read_itch_file(path, chunk_size=chunk_size)), expected)
    check_records(list(read_itch_file(io.BytesIO(path.read_bytes()), chunk_size=chunk_size)), expected)
    check_records(list(iter_messages(stream)), expected)
    check_records(list(iter_messages(memoryview(stream))), expected)
    check_records(list(iter_messages(bytearray(stream))), expected)


def test_reader_truncated_length_prefix_and_raise_mode():
    good = frame(encode_message("W", stock_locate=0, tracking_number=0, timestamp=0, breached_level="1"))
    records = list(read_itch_file(io.BytesIO(good + b"\x00")))
    assert records[0][0] == 0 and records[0][1]["breached_level"] == "1"
    assert records[1][0] == len(good) and "truncated length prefix" in records[1][1].reason
    with pytest.raises(ItchDecodeError) as exc:
        list(read_itch_file(io.BytesIO(good + b"\x00"), errors="raise"))
    assert exc.value.offset == len(good)


@needs_sample
def test_reader_on_truncated_gzip_reports_after_the_readable_part(tmp_path):
    raw = SAMPLE.read_bytes()
    path = tmp_path / "cut"
    path.write_bytes(raw[: len(raw) // 2])
    records = list(read_itch_file(path))
    good = [r for _, r in records if not isinstance(r, ItchDecodeError)]
    errors = [r for _, r in records if isinstance(r, ItchDecodeError)]
    assert len(good) > 3000 and len(errors) >= 1
    assert records[-1][1] is errors[-1]


itch_records = st.lists(any_message(), max_size=8).map(
    lambda ms: b"".join(frame(encode_message(**m)) for m in ms)
)


@st.composite
def mutated_stream(draw) -> bytes:
    data = bytearray(draw(itch_records))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        else:
            del data[pos:]
    return bytes(data)


def assert_only_records(records, size):
    last = -1
    for offset, record in records:
        assert isinstance(record, dict | ItchDecodeError)
        assert last < offset <= size
        last = offset


@given(st.one_of(st.binary(max_size=300), mutated_stream()))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_stream_readers_never_raise(data):
    assert_only_records(list(iter_messages(data)), len(data))
    assert_only_records(list(read_itch_file(io.BytesIO(data), chunk_size=16)), len(data))
    for i in range(min(len(data), 40)):
        try:
            decode_message(data, i)
        except ItchDecodeError:
            pass


@given(mutated_stream(), st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_corrupt_gzip_never_raises(data, draw):
    packed = bytearray(gzip.compress(data, mtime=0))
    for _ in range(draw.draw(st.integers(1, 4))):
        pos = draw.draw(st.integers(0, len(packed) - 1))
        packed[pos] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(0, len(packed)))
    for blob in (bytes(packed), bytes(packed[:cut])):
        records = list(read_itch_file(io.BytesIO(blob), chunk_size=64))
        for _, record in records:
            assert isinstance(record, dict | ItchDecodeError)


# ---------------------------------------------------------------------------------- writer & json


@given(st.lists(any_message(), max_size=20), st.booleans())
@settings(max_examples=25, deadline=None)
def test_writer_round_trip(messages, compress):
    buf = io.BytesIO()
    assert write_itch_file(buf, messages, compress=compress) == len(messages)
    blob = buf.getvalue()
    assert (blob[:2] == b"\x1f\x8b") == compress
    assert [m for _, m in read_itch_file(io.BytesIO(blob))] == messages


def test_writer_to_path_and_raw_bytes(tmp_path):
    msg = {"type": "B", "stock_locate": 1, "tracking_number": 2, "timestamp": 3, "match_number": 4}
    path = tmp_path / "out.gz"  # named .gz but written plain: detection must not trust the name
    with ItchFileWriter(path) as writer:
        writer.write(msg)
        writer.write(encode_message(**msg))
    assert writer.count == 2 and writer.bytes_written == 2 * (2 + 19)
    assert path.read_bytes()[:2] == b"\x00\x13"
    assert [m for _, m in read_itch_file(path)] == [msg, msg]
    with pytest.raises(ItchEncodeError):
        ItchFileWriter(io.BytesIO()).write(b"x" * 70000)


@needs_sample
def test_to_json_dict_shape(sample_stream):
    for _, msg in iter_messages(sample_stream):
        obj = to_json_dict(msg)
        assert list(obj)[0] == "type"
        assert list(obj)[1:] == list(MESSAGE_SPECS[msg["type"]].field_names)
        assert all(isinstance(v, int | str) for v in obj.values())
    p = next(m for _, m in iter_messages(sample_stream) if m["type"] == "P")
    assert json.loads(json.dumps(to_json_dict(p))) == p


# ------------------------------------------------------------------------------------- itch_tools


@needs_sample
def test_cmd_decode_json_lines(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    assert itch_tools.cmd_decode(SAMPLE, out, err) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 12012 and err.getvalue() == ""
    assert lines[0] == (
        '{"type":"S","stock_locate":0,"tracking_number":0,"timestamp":11202475298710,"event_code":"O"}'
    )
    assert Counter(json.loads(line)["type"] for line in lines) == SAMPLE_COUNTS


@needs_sample
def test_cmd_stats_and_book_on_sample():
    out = io.StringIO()
    assert itch_tools.cmd_stats(SAMPLE, out, io.StringIO()) == 0
    text = out.getvalue().splitlines()
    assert text[:2] == ["messages 12012", "bytes 465048"]
    assert "errors 0" in text and "type P 5000" in text and "type F 3" in text
    out = io.StringIO()
    assert itch_tools.cmd_book(SAMPLE, "BOB", 2, out, io.StringIO()) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("BOB locate=2 orders=")
    assert any(line.split()[:2] == ["bid", "6.9667"] for line in lines)


def test_cmd_errors_go_to_stderr_and_exit_1(tmp_path):
    stream, _ = build_broken_stream()
    path = tmp_path / "broken.itch"
    path.write_bytes(stream)
    out, err = io.StringIO(), io.StringIO()
    assert itch_tools.cmd_decode(path, out, err) == 1
    assert len(out.getvalue().splitlines()) == 2
    problems = err.getvalue().splitlines()
    assert len(problems) == 5
    assert problems[0].startswith(f"{path}: offset 16: unknown message type")
    out, err = io.StringIO(), io.StringIO()
    assert itch_tools.cmd_stats(path, out, err) == 1
    assert "messages 2" in out.getvalue() and "errors 5" in out.getvalue()
    err = io.StringIO()
    assert itch_tools.cmd_book(tmp_path / "missing", out=io.StringIO(), err=err) == 1
    assert err.getvalue().startswith(f"{tmp_path / 'missing'}: ")


def test_cmd_book_small_file(tmp_path):
    def add(ref, side, shares, price):
        return {"type": "A", "stock_locate": 7, "tracking_number": 0, "timestamp": ref,
                "order_reference_number": ref, "buy_sell_indicator": side, "shares": shares,
                "stock": "ZZZ", "price": price}  # fmt: skip

    path = tmp_path / "tiny.itch"
    write_itch_file(
        path, [add(1, "B", 100, 1_000_000), add(2, "B", 50, 1_000_000), add(3, "S", 10, 1_000_100)]
    )
    out = io.StringIO()
    assert itch_tools.cmd_book(path, depth=5, out=out, err=io.StringIO()) == 0
    assert out.getvalue().splitlines() == [
        "ZZZ locate=7 orders=3 bid_levels=1 ask_levels=1",
        "  ask     100.0100         10 orders=1",
        "  " + "-" * 38,
        "  bid     100.0000        150 orders=2",
        "unknown_order_messages=0",
    ]


def test_format_price():
    assert itch_tools.format_price(53167) == "5.3167"
    assert itch_tools.format_price(7) == "0.0007"
    assert itch_tools.format_price(-12345) == "-1.2345"
    assert itch_tools.format_price(123456789, 8) == "1.23456789"


@needs_sample
def test_bench_prints_both_lines():
    out = io.StringIO()
    figures = itch_tools.bench(SAMPLE, out, min_seconds=0.05)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("itch_decode msgs_per_s=") and " mb_per_s=" in lines[0]
    assert lines[1].startswith("itch_book msgs_per_s=")
    assert figures["decode_msgs_per_s"] > 0 and figures["book_msgs_per_s"] > 0
