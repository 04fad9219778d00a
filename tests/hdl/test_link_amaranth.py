"""amaranth.sim (pure Python) tests of the link gateware: CRC, frame decoder/encoder, UART.

Every block is compared with the reference model in exchange.framing_spec (or, for the UART, a
bit-level line model written here).
"""

import binascii
import random

import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from exchange import framing_spec as fs
from hdl.crc import CRC, crc_matrix
from hdl.link import (
    CobsEncoder,
    DecodedByte,
    FrameByte,
    FrameDecoder,
    FrameDecoderCore,
    FrameEncoder,
    FrameFilter,
)
from hdl.uart import UART, UARTRx, UARTTx, uart_divisor
from sim.benches.test_link_bench import body_beats, frames_from_beats, make_traffic, random_payload

CLOCK = 1e-8

# Constructors that raise ValueError still leave a half-built elaboratable behind for Amaranth to
# warn about when it is collected (often during a later test): expected here, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

# -- Stream helpers --------------------------------------------------------------------------------


def add_source(sim, port, beats, rng, idle_prob=0.0, done=None):
    """A critical testbench sending ``beats`` on input stream ``port``."""

    async def source(ctx):
        for beat in beats:
            while rng.random() < idle_prob:
                ctx.set(port.valid, 0)
                await ctx.tick()
            ctx.set(port.valid, 1)
            ctx.set(port.payload, beat)
            await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)
        if done is not None:
            done.append(True)

    sim.add_testbench(source)


def add_sink(sim, port, received, rng, stall_prob=0.0):
    """A background testbench collecting output stream ``port`` into ``received``."""

    async def sink(ctx):
        ctx.set(port.ready, rng.random() >= stall_prob)
        async for _clk, _rst, valid, ready, payload in ctx.tick().sample(
            port.valid, port.ready, port.payload
        ):
            if valid and ready:
                received.append(payload)
            ctx.set(port.ready, rng.random() >= stall_prob)

    sim.add_testbench(sink, background=True)


def add_drain(sim, received, count, max_cycles, extra_cycles=50, on_done=None, source_done=None):
    """A critical testbench waiting for ``count`` beats (and ``source_done``, when given, to be
    non-empty), then ``extra_cycles`` more, then calling ``on_done(ctx)``."""

    async def drain(ctx):
        for _ in range(max_cycles):
            if len(received) >= count and (source_done is None or source_done):
                break
            await ctx.tick()
        else:
            raise AssertionError(f"timed out with {len(received)}/{count} beats")
        if extra_cycles:
            await ctx.tick().repeat(extra_cycles)
        if on_done is not None:
            on_done(ctx)

    sim.add_testbench(drain)


def as_dict(beat):
    return {"data": beat.data, "first": beat.first, "last": beat.last, "good": beat.good}


# -- CRC -------------------------------------------------------------------------------------------

CRC_SPECS = [
    fs.CRC,
    fs.CrcSpec("CRC-32C", 32, 0x1EDC6F41, 0xFFFFFFFF, True, True, 0xFFFFFFFF, 0xE3069283),
    fs.CrcSpec("CRC-16/IBM-3740", 16, 0x1021, 0xFFFF, False, False, 0x0000, 0x29B1),
    fs.CrcSpec("CRC-16/ARC", 16, 0x8005, 0x0000, True, True, 0x0000, 0xBB3D),
    fs.CrcSpec("CRC-8/SMBUS", 8, 0x07, 0x00, False, False, 0x00, 0xF4),
]


@pytest.mark.parametrize("spec", CRC_SPECS, ids=lambda s: s.name)
def test_crc_python_model_check_values(spec):
    assert spec.compute(b"123456789") == spec.check
    message = b"matchwire"
    assert spec.register(message + spec.to_bytes(spec.compute(message))) == spec.residue


@pytest.mark.parametrize("spec", CRC_SPECS, ids=lambda s: s.name)
def test_crc_gateware_matches_model(spec):
    dut = CRC(spec)
    rng = random.Random(spec.name)
    messages = [b"123456789"] + [rng.randbytes(rng.randrange(1, 40)) for _ in range(12)]

    async def bench(ctx):
        for message in messages:
            for n, byte in enumerate(message):
                ctx.set(dut.start, n == 0)
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, byte)
                await ctx.tick()
            ctx.set(dut.i.valid, 0)
            ctx.set(dut.start, 0)
            assert ctx.get(dut.value) == spec.compute(message), message
            assert not ctx.get(dut.match) or spec.register(message) == spec.residue
            for byte in spec.to_bytes(spec.compute(message)):
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, byte)
                await ctx.tick()
            ctx.set(dut.i.valid, 0)
            assert ctx.get(dut.match), message
            await ctx.tick()  # idle cycles change nothing
            assert ctx.get(dut.match)

    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    sim.add_testbench(bench)
    sim.run()


def test_crc_wide_words():
    dut = CRC(fs.CRC, data_width=32)
    rng = random.Random(32)

    async def bench(ctx):
        for _ in range(5):
            message = rng.randbytes(4 * rng.randrange(1, 8))
            for n in range(0, len(message), 4):
                ctx.set(dut.start, n == 0)
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, int.from_bytes(message[n : n + 4], "little"))
                await ctx.tick()
            ctx.set(dut.i.valid, 0)
            ctx.set(dut.start, 0)
            assert ctx.get(dut.value) == binascii.crc32(message)

    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    sim.add_testbench(bench)
    sim.run()


def test_crc_bad_parameters():
    with pytest.raises(ValueError):
        CRC(fs.CRC, data_width=12)
    with pytest.raises(ValueError):
        CRC(fs.CRC, data_width=0)
    with pytest.raises(ValueError):
        CRC("crc32")
    with pytest.raises(ValueError):
        crc_matrix(fs.CRC, data_width=-8)
    with pytest.raises(ValueError):
        fs.CrcSpec("odd", 12, 0x80F, 0, False, False, 0, 0)
    with pytest.raises(ValueError):
        fs.CrcSpec("even poly", 16, 0x1020, 0, False, False, 0, 0)


# -- Frame decoder ---------------------------------------------------------------------------------

MAX_PAYLOAD = 300  # keeps the pure-Python simulations short; the cocotb benches use the default


def run_decoder(dut, wire, rng, *, idle_prob=0.2, stall_prob=0.3, expect_beats):
    """Feed ``wire`` to a decoder; returns its output beats (dicts) and final statistics."""
    received = []
    stats = {}

    def read_stats(ctx):
        stats.update({k: ctx.get(getattr(dut.stats, k)) for k in ("good", "crc", "oversize", "truncated")})

    done = []
    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    add_source(sim, dut.i, wire, rng, idle_prob, done=done)
    add_sink(sim, dut.o, received, rng, stall_prob)
    add_drain(
        sim, received, expect_beats, max_cycles=20 * len(wire) + 2000, on_done=read_stats, source_done=done
    )
    sim.run()
    return [as_dict(b) for b in received], stats


@pytest.mark.parametrize("drop_bad", [True, False], ids=["drop_bad", "cut_through"])
def test_decoder_mixed_traffic(drop_bad):
    rng = random.Random(11 + drop_bad)
    traffic = make_traffic(rng, frames=50, max_payload=MAX_PAYLOAD)
    reference = fs.StreamDecoder(MAX_PAYLOAD)
    events = reference.feed(traffic.wire)
    good = [e for e in events if isinstance(e, fs.Frame)]
    assert good == traffic.intended
    dut = FrameDecoder(MAX_PAYLOAD, drop_bad=drop_bad)
    good_beats = sum(1 + len(f.payload) for f in good)
    beats, stats = run_decoder(dut, traffic.wire, rng, expect_beats=good_beats)
    frames = frames_from_beats(beats)
    if drop_bad:
        assert all(ok for _, ok in frames)
    assert [f for f, ok in frames if ok] == good
    assert sum(not ok for _, ok in frames) <= len(events) - len(good)
    assert stats == {k: getattr(reference.stats, k) for k in stats}


def test_decoder_edge_cases():
    """Empty payload, 254-byte COBS groups, a payload of exactly the maximum, idle fill,
    a frame one byte too long, runt candidates and the short COBS form of a full final group."""
    rng = random.Random(5)
    frames = [
        fs.Frame(0x00, b""),
        fs.Frame(0xFF, b"\x00"),
        fs.Frame(0x41, bytes(range(1, 254))),  # body of 254 non-zero bytes + CRC
        fs.Frame(0x42, bytes([7]) * 254),
        fs.Frame(0x43, bytes(MAX_PAYLOAD)),  # all zeros, maximal
        fs.Frame(0x44, bytes([9]) * MAX_PAYLOAD),  # no zeros, maximal
    ]
    wire = b"\x00\x00\x00"
    for f in frames:
        wire += fs.encode_frame(f.type, f.payload, max_payload=MAX_PAYLOAD) + b"\x00\x00"
    wire += fs.encode_frame(1, bytes(MAX_PAYLOAD + 1), max_payload=MAX_PAYLOAD + 1)  # oversize
    wire += b"\x00\x01\x00" + b"\x05\x01\x02\x03\x04\x00"  # runts: decode to 0 and 4 bytes
    wire += fs.encode_frame(2, b"ok", max_payload=MAX_PAYLOAD)
    frames.append(fs.Frame(2, b"ok"))
    while True:  # a zero-free 254-byte body, sent in the short COBS form (no final 01 group)
        payload = bytes(rng.randrange(1, 256) for _ in range(254 - fs.MIN_BODY))
        if 0 not in fs.encode_body(3, payload):
            break
    wire += b"\x00\xff" + fs.encode_body(3, payload) + b"\x00"
    frames.append(fs.Frame(3, payload))
    reference = fs.StreamDecoder(MAX_PAYLOAD)
    assert [e for e in reference.feed(wire) if isinstance(e, fs.Frame)] == frames
    assert (reference.stats.oversize, reference.stats.truncated) == (1, 2)
    beats, stats = run_decoder(
        FrameDecoder(MAX_PAYLOAD),
        wire,
        rng,
        idle_prob=0,
        stall_prob=0,
        expect_beats=sum(1 + len(f.payload) for f in frames),
    )
    assert [f for f, _ in frames_from_beats(beats)] == frames
    assert stats == {"good": len(frames), "crc": 0, "oversize": 1, "truncated": 2}


def test_decoder_full_rate():
    """One wire byte per clock when the output never stalls."""
    rng = random.Random(3)
    frames = [fs.Frame(rng.randrange(256), random_payload(rng, MAX_PAYLOAD)) for _ in range(10)]
    wire = b"".join(fs.encode_frame(f.type, f.payload, max_payload=MAX_PAYLOAD) for f in frames)
    dut = FrameDecoder(MAX_PAYLOAD)
    received = []
    ticks = []

    async def source(ctx):
        sent = 0
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, wire[0])
        async for _clk, _rst, ready in ctx.tick().sample(dut.i.ready):
            ticks.append(ready)
            sent += ready
            if sent == len(wire):
                break
            ctx.set(dut.i.payload, wire[sent])
        ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    sim.add_testbench(source)
    add_sink(sim, dut.o, received, rng)
    add_drain(sim, received, sum(1 + len(f.payload) for f in frames), max_cycles=3 * len(wire) + 100)
    sim.run()
    assert [f for f, _ in frames_from_beats([as_dict(b) for b in received])] == frames
    assert len(ticks) <= len(wire) + 1, f"{len(wire)} bytes took {len(ticks)} cycles"


def test_decoder_bad_parameters():
    with pytest.raises(ValueError):
        FrameDecoder(-1)
    with pytest.raises(ValueError):
        FrameDecoder(1024, buffer_depth=512)
    with pytest.raises(ValueError):
        FrameDecoder(100, buffer_depth=100)
    with pytest.raises(ValueError):
        FrameDecoderCore(max_payload=1.5)
    with pytest.raises(ValueError):
        FrameFilter(3)
    with pytest.raises(ValueError):
        CobsEncoder(groups=1)
    FrameDecoder(1024, drop_bad=False, buffer_depth=8)  # no buffer: depth irrelevant


# -- Frame encoder ---------------------------------------------------------------------------------


def encoder_frames(rng, n):
    frames = [
        fs.Frame(0, b""),
        fs.Frame(1, b"\x00"),
        fs.Frame(2, bytes([5]) * 253),  # body 254 non-zero bytes
        fs.Frame(3, bytes([5]) * 254),
        fs.Frame(4, bytes([5]) * 252 + b"\x00"),
        fs.Frame(5, bytes([6]) * 508),
    ]
    frames += [fs.Frame(rng.randrange(256), random_payload(rng, 600)) for _ in range(n)]
    # a body whose CRC ends in a zero byte exercises the final empty group
    k = 0
    while fs.encode_body(7, k.to_bytes(4, "little"))[-1] != 0:
        k += 1
    frames.append(fs.Frame(7, k.to_bytes(4, "little")))
    return frames


def test_encoder_matches_reference():
    rng = random.Random(21)
    frames = encoder_frames(rng, 6)
    expected = b"".join(fs.encode_frame(f.type, f.payload, max_payload=600) for f in frames)
    dut = FrameEncoder()
    received = []
    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    add_source(sim, dut.i, body_beats(frames), rng, idle_prob=0.2)
    add_sink(sim, dut.o, received, rng, stall_prob=0.3)
    add_drain(sim, received, len(expected), max_cycles=10 * len(expected))
    sim.run()
    assert bytes(received) == expected
    assert fs.decode_stream(bytes(received), max_payload=600) == frames


def encoder_span(frames):
    """Cycles from the first input beat to the last output byte, with nothing ever stalled."""
    dut = FrameEncoder()
    beats = body_beats(frames)
    expected = b"".join(fs.encode_frame(f.type, f.payload, max_payload=1024) for f in frames)
    received = []
    ticks = []

    async def count(ctx):
        async for _clk, _rst, i_fire, o_fire in ctx.tick().sample(
            dut.i.valid & dut.i.ready, dut.o.valid & dut.o.ready
        ):
            ticks.append((i_fire, o_fire))

    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    add_source(sim, dut.i, beats, random.Random(0))
    add_sink(sim, dut.o, received, random.Random(0))
    sim.add_testbench(count, background=True)
    add_drain(sim, received, len(expected), max_cycles=10 * len(expected), extra_cycles=0)
    sim.run()
    assert bytes(received) == expected
    first_in = next(n for n, (i, _) in enumerate(ticks) if i)
    last_out = max(n for n, (_, o) in enumerate(ticks) if o)
    return last_out - first_in + 1, len(expected)


def longest_group(frames):
    runs = [len(run) for f in frames for run in fs.encode_body(f.type, f.payload).split(b"\x00")]
    return min(254, max(runs))


def test_encoder_output_rate():
    """Once the output is busy it carries a byte on every cycle: a COBS group cannot start before
    its last byte arrived, so a run of the encoder may only lose the first long group's latency."""
    rng = random.Random(4)
    for frames in (
        [fs.Frame(n, bytes(rng.choice((0, 1, 2, 0x55)) for _ in range(200))) for n in range(6)],
        [fs.Frame(1, bytes([0x5A]) * 1000), fs.Frame(2, rng.randbytes(700))],
    ):
        span, n_out = encoder_span(frames)
        assert span <= n_out + longest_group(frames) + 8, f"{n_out} bytes took {span} cycles"


class Loopback(wiring.Component):
    """FrameEncoder feeding FrameDecoder."""

    i: In(stream.Signature(FrameByte))
    o: Out(stream.Signature(DecodedByte))

    def elaborate(self, platform):
        m = Module()
        m.submodules.enc = enc = FrameEncoder()
        m.submodules.dec = dec = FrameDecoder(MAX_PAYLOAD)
        wiring.connect(m, wiring.flipped(self.i), enc.i)
        wiring.connect(m, enc.o, dec.i)
        wiring.connect(m, dec.o, wiring.flipped(self.o))
        return m


def test_encoder_to_decoder_loopback():
    rng = random.Random(8)
    frames = [f for f in encoder_frames(rng, 6) if len(f.payload) <= MAX_PAYLOAD]
    top = Loopback()
    received = []
    sim = Simulator(top)
    sim.add_clock(CLOCK)
    add_source(sim, top.i, body_beats(frames), rng, idle_prob=0.1)
    add_sink(sim, top.o, received, rng, stall_prob=0.2)
    add_drain(sim, received, sum(1 + len(f.payload) for f in frames), max_cycles=20000)
    sim.run()
    assert [f for f, _ in frames_from_beats([as_dict(b) for b in received])] == frames


# -- UART ------------------------------------------------------------------------------------------


def test_uart_divisor():
    assert uart_divisor(100e6, 115200) == 868
    assert uart_divisor(12_000_000, 1_000_000) == 12
    assert uart_divisor(48e6, 3e6) == 16
    for clk, baud in [
        (1e6, 115200),
        (12e6, 4e6),
        (0, 9600),
        (12e6, 0),
        (12e6, -1),
        ("12e6", 9600),
        (True, 1),
    ]:
        with pytest.raises(ValueError):
            UART(clk, baud)
    with pytest.raises(ValueError):
        UARTTx(3)
    with pytest.raises(ValueError):
        UARTRx(4.0)
    assert UART(1e6, 115200, max_error=0.05).divisor == 9


def line_bits(byte):
    return [0] + [(byte >> n) & 1 for n in range(8)] + [1]


def test_uart_tx_waveform():
    """TX holds each bit for exactly `divisor` clocks: start, 8 data LSB first, stop."""
    divisor = 12
    dut = UARTTx(divisor)
    data = [0x55, 0x00, 0xFF, 0xA3, 0x01]
    samples = []

    async def source(ctx):
        for byte in data:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, byte)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        await ctx.tick().repeat(12 * divisor)

    async def line(ctx):
        async for _clk, _rst, tx in ctx.tick().sample(dut.tx):
            samples.append(tx)

    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    sim.add_testbench(source)
    sim.add_testbench(line, background=True)
    sim.run()
    start = samples.index(0)
    expected = [b for byte in data for b in line_bits(byte) for _ in range(divisor)]
    assert samples[start : start + len(expected)] == expected
    assert all(samples[start + len(expected) :])


@pytest.mark.parametrize("skew", [-0.025, 0.0, 0.025])
def test_uart_rx_tolerates_baud_skew(skew):
    divisor = 16
    period = divisor * (1 + skew)  # the far end's bit time, in our clocks
    dut = UARTRx(divisor)
    rng = random.Random(int(skew * 1000))
    data = [rng.randrange(256) for _ in range(12)] + [0x00, 0xFF]
    received, errors = [], []

    async def far_end(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(7)
        t = 0.0
        bits = [b for byte in data for b in line_bits(byte) + [1] * rng.randrange(0, 3)]
        edges = [round(t + n * period) for n in range(len(bits) + 1)]
        for n, bit in enumerate(bits):
            ctx.set(dut.rx, bit)
            await ctx.tick().repeat(edges[n + 1] - edges[n])
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * divisor)

    async def watch(ctx):
        async for _clk, _rst, error in ctx.tick().sample(dut.error):
            if error:
                errors.append(1)

    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    sim.add_testbench(far_end)
    add_sink(sim, dut.o, received, rng)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert received == data
    assert not errors


def test_uart_rx_framing_error_and_overrun():
    divisor = 8
    dut = UARTRx(divisor)
    events = {"error": 0, "overrun": 0}

    async def far_end(ctx):
        ctx.set(dut.o.ready, 0)

        async def send(bits):
            for bit in bits:
                ctx.set(dut.rx, bit)
                await ctx.tick().repeat(divisor)

        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(5)
        await send(line_bits(0x3C)[:-1] + [0] * 4 + [1, 1])  # stop bit low (a break): error, dropped
        await send(line_bits(0x11) + [1])  # held in o
        await send(line_bits(0x22) + [1])  # o still full: overrun, dropped
        await ctx.tick().repeat(2 * divisor)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 0x11
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        ctx.set(dut.o.ready, 0)
        await send(line_bits(0x33) + [1, 1])
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 0x33

    async def watch(ctx):
        async for _clk, _rst, error, overrun in ctx.tick().sample(dut.error, dut.overrun):
            events["error"] += error
            events["overrun"] += overrun

    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    sim.add_testbench(far_end)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert events == {"error": 1, "overrun": 1}


def test_uart_loopback_carries_frames():
    """Frames encoded by the reference cross a UART looped back on itself intact."""
    dut = UART(12_000_000, 1_000_000)
    rng = random.Random(2)
    wire = fs.encode_frame(0x10, b"hello\x00card") + fs.encode_frame(0x11, b"")
    received = []

    async def loop(ctx):
        async for _clk, _rst, tx in ctx.tick().sample(dut.tx):
            ctx.set(dut.rx, tx)

    sim = Simulator(dut)
    sim.add_clock(1 / 12e6)
    add_source(sim, dut.i, wire, rng, idle_prob=0.3)
    add_sink(sim, dut.o, received, rng, stall_prob=0.5)
    sim.add_testbench(loop, background=True)
    add_drain(sim, received, len(wire), max_cycles=len(wire) * 12 * 12 + 500)
    sim.run()
    assert bytes(received) == wire
    assert fs.decode_stream(bytes(received)) == [fs.Frame(0x10, b"hello\x00card"), fs.Frame(0x11, b"")]
