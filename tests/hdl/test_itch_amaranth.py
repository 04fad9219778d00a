"""hdl.itch.ItchDecoder under amaranth.sim: records equal the reference model (exchange.itch_record, whose
fields come from the software decoder) for every lane width, with idle input cycles and output stalls;
full rate and latency; parameter checks. The same checks on Icarus and Verilator: tests/sim/test_itch.py."""

import gc
import random

import pytest
from amaranth.sim import Simulator

from exchange.feed_decoder import SoftwareFeedDecoder
from exchange.itch_record import describe, records_to_feed, reference_records, unpack_record
from hdl.itch import ItchDecoder, beat_layout
from hdl.itch_report import ItchDecoderReport
from sim.itch_backend import (
    edge_packets,
    every_type_packets,
    last_beats,
    packet_beats,
    random_message,
    random_packets,
    split_records,
)

DRAIN = 32


def simulate(packets, *, lanes=8, slots=3, idle=0.0, stall=0.0, seed=1, hold_ready=None):
    """Run packets through the decoder; return (records per packet, accepted cycle per beat, cycle each
    record's valid rose, input cycles). ``hold_ready`` = (start, length): o.ready low for that window."""
    dut = ItchDecoder(lanes=lanes, slots=slots)
    beats = [b for p in packets for b in packet_beats(p, lanes)]
    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)
    accepted, shown, values = [], [], []
    state = {"fed": False}

    limit = 20 * len(beats) + 1000  # a hung decoder fails the test instead of hanging it

    async def feed(ctx):
        cycle, index = 0, 0
        while index < len(beats):
            if cycle > limit:
                raise AssertionError(f"input stuck at beat {index} of {len(beats)} after {cycle} cycles")
            offer = not (idle and rng_in.random() < idle)
            ctx.set(dut.i.valid, offer)
            if offer:
                data, keep, last = beats[index]
                ctx.set(dut.i.payload, {"data": data, "keep": keep, "last": last})
            ready = ctx.get(dut.i.ready)
            await ctx.tick()
            if offer and ready:
                accepted.append(cycle)
                index += 1
            cycle += 1
        ctx.set(dut.i.valid, 0)
        state["fed"] = True

    async def sink(ctx):
        cycle, quiet, since = 0, 0, None
        while not state["fed"] or quiet < DRAIN:
            if cycle > limit + DRAIN:
                raise AssertionError(f"output still busy after {cycle} cycles")
            ready = not (stall and rng_out.random() < stall)
            if hold_ready and hold_ready[0] <= cycle < hold_ready[0] + hold_ready[1]:
                ready = False
            ctx.set(dut.o.ready, ready)
            valid = ctx.get(dut.o.valid)
            payload = ctx.get(dut.o.payload.as_value())
            await ctx.tick()
            if valid:
                quiet = 0
                since = cycle if since is None else since
                if ready:
                    values.append(payload)
                    shown.append(since)
                    since = None
            elif state["fed"]:
                quiet += 1
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feed)
    sim.add_testbench(sink)
    sim.run()
    records = split_records([unpack_record(v) for v in values], packets)
    return records, accepted, shown, len(beats)


def check(packets, records):
    for index, (packet, got) in enumerate(zip(packets, records, strict=True)):
        expected = reference_records(packet)
        if got != expected:
            raise AssertionError(f"packet {index} ({len(packet)} bytes):\n  gateware:\n    "
                                 + "\n    ".join(describe(got)) + "\n  reference:\n    "
                                 + "\n    ".join(describe(expected)))
        assert records_to_feed(got, packet) == SoftwareFeedDecoder().decode(packet)


@pytest.mark.parametrize(("lanes", "size"), [(8, 40), (4, 20), (2, 12), (1, 6)])
def test_mixed_traffic_with_idles_and_stalls(lanes, size):
    """Every kind of frame, corrupt and truncated ones included, at every alignment the generators give."""
    rng = random.Random(lanes)
    packets = edge_packets(rng, lanes)[:: max(1, 8 // lanes)] + random_packets(rng, size, corrupt=0.3, cut=0.2)
    records, _, _, _ = simulate(packets, lanes=lanes, idle=0.2, stall=0.35, seed=lanes)
    check(packets, records)


def test_every_type_at_every_lane():
    rng = random.Random(11)
    packets = every_type_packets(rng)[::2] + every_type_packets(rng)[1::2][:40]
    records, _, _, _ = simulate(packets, slots=4, idle=0.1, stall=0.2, seed=11)
    check(packets, records)


def test_full_rate_and_four_cycle_latency():
    """Valid messages back to back: one beat per cycle, every record 4 cycles after its last byte's beat."""
    rng = random.Random(12)
    frames = [random_message(rng, rng.choice("AFECXDUPSRH")) for _ in range(90)]
    packets = [b"".join(len(f).to_bytes(2, "big") + f for f in frames[i : i + 30]) for i in range(0, 90, 30)]
    records, accepted, shown, nbeats = simulate(packets)
    check(packets, records)
    assert len(accepted) == nbeats and accepted[-1] - accepted[0] == nbeats - 1  # no input bubble
    latencies = [shown[i] - accepted[b] for i, b in enumerate(last_beats(records, packets, 8))]
    assert set(latencies) == {4}


def test_backpressure_holds_the_input_and_loses_nothing():
    rng = random.Random(13)
    packets = random_packets(rng, 12, corrupt=0.1, cut=0.1)
    records, accepted, _, _ = simulate(packets, hold_ready=(5, 200))
    check(packets, records)
    # With the output held, the decoder fills its slots and stops taking beats until it is released.
    assert not any(40 <= cycle < 205 for cycle in accepted)


@pytest.mark.parametrize("slots", [3, 4])
def test_one_beat_packets_under_stalls(slots):
    """Packets that start and finish a frame in one beat (cut prefixes and bodies), with the output
    stalling: a slot is reused right after the output took it, the case the pending-bit priority covers."""
    rng = random.Random(slots)
    shapes = [b"\x00", b"\x00\x24", b"\x00\x05A", b"\x00\x00", b"\x00\x01Q\x00", b""]
    packets = [rng.choice(shapes) for _ in range(150)]
    records, _, _, _ = simulate(packets, slots=slots, stall=0.5, seed=slots)
    check(packets, records)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")  # the refused objects, by design
@pytest.mark.parametrize("kwargs", [{"lanes": 3}, {"lanes": 0}, {"lanes": 16}, {"lanes": True}, {"lanes": 8.0},
                                    {"slots": 2}, {"slots": 9}, {"slots": True}, {"slots": "3"}])
def test_parameters_are_validated(kwargs):
    with pytest.raises(ValueError):
        ItchDecoder(**kwargs)
    with pytest.raises(ValueError):
        ItchDecoderReport(**kwargs)
    gc.collect()  # the refused objects warn here, under the mark, not in a later test


def test_beat_layout():
    assert beat_layout(8).size == 64 + 8 + 1
    assert beat_layout(1).size == 8 + 1 + 1
    with pytest.raises(ValueError):
        beat_layout(5)
