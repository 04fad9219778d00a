"""The ITCH record layout (exchange.itch_record): derived from exchange.itch, and its Python helpers agree
with the software decoder (no simulator here; the gateware is held to these in test_itch_amaranth.py and
tests/sim/test_itch.py)."""

import gzip
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.feed_decoder import SoftwareFeedDecoder
from exchange.itch import ALPHA, MESSAGE_SPECS, decode_message
from exchange.itch_record import (
    ALIASES,
    BOOK_TYPES,
    BUFFER_BYTES,
    ITCH_RECORD,
    MESSAGE_FIELDS,
    SOURCES,
    ItchStatus,
    pack_record,
    record_from_message,
    record_to_message,
    records_to_feed,
    reference_records,
    unpack_record,
)
from hdl.formats import struct_layout
from hdl.itch import ItchRecord
from sim.itch_backend import SAMPLE_FILE as SAMPLE
from sim.itch_backend import edge_packets, every_type_packets, random_message, random_packets


def test_layout_is_derived_from_the_itch_table():
    fields = {f.name: f for f in ITCH_RECORD.fields}
    assert list(fields)[:5] == ["status", "type", "offset", "length", "detail"]
    assert set(MESSAGE_FIELDS) == {ALIASES.get(name, name) for code in BOOK_TYPES
                                   for name, _, _ in MESSAGE_SPECS[code].fields}
    for code in BOOK_TYPES:
        spec = MESSAGE_SPECS[code]
        rows = {s.itch_name: s for s in SOURCES[code]}
        assert list(rows) == list(spec.field_names)
        for (name, kind, width), offset in zip(spec.fields, spec.field_offsets, strict=True):
            source = rows[name]
            assert (source.offset, source.width, source.kind) == (offset, width, kind)
            target = fields[source.field]
            if kind == ALPHA:
                assert (target.kind, target.width) == ("ascii", 8 * width)
            else:
                assert target.kind == "uint" and target.width == min(w for w in (8, 16, 32, 64) if w >= 8 * width)
    assert BUFFER_BYTES == max(MESSAGE_SPECS[c].length for c in BOOK_TYPES) == 44
    assert struct_layout(ITCH_RECORD).size == ItchRecord.size == ITCH_RECORD.width == 528


@pytest.mark.parametrize("code", list(BOOK_TYPES))
def test_record_round_trip_and_packing(code):
    rng = random.Random(ord(code))
    for _ in range(50):
        wire = random_message(rng, code)
        record = record_from_message(wire, offset=rng.randrange(1 << 16))
        assert record_to_message(record) == decode_message(wire)
        value = pack_record(record)
        assert unpack_record(value) == record
        # The integer is the little-endian view of the Layout's bytes: one definition, two views.
        raw = [record[f.name].to_bytes(f.width // 8, "little") if f.kind == "ascii" else record[f.name]
               for f in ITCH_RECORD.fields]
        assert value == int.from_bytes(ITCH_RECORD.struct.pack(*raw), "little")


def test_record_to_message_refuses_errors():
    record = reference_records(b"\x00\x00")[0]
    assert record["status"] == ItchStatus.ZERO_LENGTH
    with pytest.raises(ValueError):
        record_to_message(record)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), corrupt=st.floats(0, 0.6), cut=st.floats(0, 1))
def test_reference_records_rebuild_the_software_decoder_output(seed, corrupt, cut):
    rng = random.Random(seed)
    for packet in random_packets(rng, 6, corrupt=corrupt, cut=cut):
        records = reference_records(packet)
        assert records_to_feed(records, packet) == SoftwareFeedDecoder().decode(packet)


def test_edge_and_every_type_packets_match_the_software_decoder():
    rng = random.Random(2)
    statuses = set()
    for packet in every_type_packets(rng) + edge_packets(rng):
        records = reference_records(packet)
        statuses |= {r["status"] for r in records}
        assert records_to_feed(records, packet) == SoftwareFeedDecoder().decode(packet)
    assert statuses == set(ItchStatus) - {ItchStatus.NON_ASCII}  # NON_ASCII: random_packets' job


def test_non_ascii_error_is_worded_like_the_software():
    wire = bytearray(random_message(random.Random(3), "F"))
    wire[37] = 0xC3  # inside the attribution
    packet = len(wire).to_bytes(2, "big") + bytes(wire)
    (record,) = reference_records(packet)
    assert record["status"] == ItchStatus.NON_ASCII and record["attribution"]
    assert records_to_feed([record], packet) == SoftwareFeedDecoder().decode(packet)


def test_records_out_of_step_are_refused():
    rng = random.Random(4)
    packet = b"".join(len(m).to_bytes(2, "big") + m for m in (random_message(rng, "A"), random_message(rng, "D")))
    records = reference_records(packet)
    with pytest.raises(ValueError):
        records_to_feed(records[1:], packet)


@pytest.mark.skipif(not SAMPLE.exists(), reason=f"sample data not found at {SAMPLE}")
def test_whole_sample_file():
    data = gzip.decompress(SAMPLE.read_bytes())
    records = reference_records(data)
    assert len(records) == 12_012
    assert records_to_feed(records, data) == SoftwareFeedDecoder().decode(data)
