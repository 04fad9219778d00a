"""cocotb bench for the card's link framing (``hdl.link``), run by tests/sim/test_link.py.

The DUT is ``tests.sim.test_link.LinkBench``: a ``FrameDecoder`` on ports ``dec_i``/``dec_o``/
``dec_stats`` and a ``FrameEncoder`` on ``enc_i``/``enc_o``. Everything is checked against the
reference model in :mod:`exchange.framing_spec`. Parameters (``bench_params``): ``seed``,
``frames``, ``max_payload``, ``idle_prob``, ``stall_prob``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import cocotb
from cocotb.handle import HierarchyObject
from cocotb.triggers import RisingEdge

from exchange import framing_spec as fs
from hdl.link import DecodedByte, FrameByte, FrameStats
from sim.conftest_helpers import PayloadCodec, StreamSink, StreamSource, bench_params, reset, start_clock

DEFAULTS = {"seed": 1, "frames": 200, "max_payload": fs.MAX_PAYLOAD, "idle_prob": 0.2, "stall_prob": 0.3}


# -- Traffic (pure Python; also used by the amaranth.sim tests) -----------------------------------


def random_payload(rng: random.Random, max_payload: int) -> bytes:
    """A payload whose length and content stress COBS: short, around 254-byte groups, or maximal."""
    length = rng.choices(
        [
            rng.randrange(0, 17),
            rng.randrange(0, 64),
            rng.randrange(245, 265),
            rng.randrange(500, 515),
            max_payload,
        ],
        [50, 25, 12, 7, 6],
    )[0]
    length = min(length, max_payload)
    style = rng.randrange(3)
    if style == 0:  # uniform bytes
        return rng.randbytes(length)
    if style == 1:  # no zeros: longest COBS groups
        return bytes(rng.randrange(1, 256) for _ in range(length))
    return bytes(rng.choice((0, 0, 1, rng.randrange(256))) for _ in range(length))  # zero-heavy


@dataclass
class Traffic:
    """A wire byte stream and the good frames deliberately placed in it."""

    wire: bytes = b""
    intended: list[fs.Frame] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)


def make_traffic(rng: random.Random, frames: int, max_payload: int) -> Traffic:
    """Good frames interleaved with garbage, corrupted, truncated, concatenated, oversize frames
    and idle delimiters."""
    kinds = ["good", "concat", "garbage", "corrupt", "truncate", "oversize", "idle"]
    weights = [40, 15, 12, 10, 10, 5, 10]
    traffic = Traffic(kinds={k: 0 for k in kinds})
    wire = bytearray()
    for _ in range(frames):
        kind = rng.choices(kinds, weights)[0]
        traffic.kinds[kind] += 1
        frame_type = rng.randrange(256)
        if kind in ("good", "concat"):
            payload = random_payload(rng, max_payload)
            clean = not wire or wire[-1] == 0
            wire += fs.encode_frame(
                frame_type, payload, lead=not (kind == "concat" and clean), max_payload=max_payload
            )
            traffic.intended.append(fs.Frame(frame_type, payload))
        elif kind == "garbage":
            wire += bytes(
                rng.choice((0, rng.randrange(256), rng.randrange(256))) for _ in range(rng.randrange(1, 40))
            )
        elif kind == "corrupt":
            encoded = bytearray(
                fs.encode_frame(frame_type, random_payload(rng, max_payload), max_payload=max_payload)
            )
            pos = rng.randrange(1, len(encoded) - 1)
            encoded[pos] ^= rng.randrange(1, 256)
            wire += encoded
        elif kind == "truncate":
            encoded = fs.encode_frame(frame_type, random_payload(rng, max_payload), max_payload=max_payload)
            wire += encoded[: rng.randrange(1, len(encoded) - 1)]
        elif kind == "oversize":
            payload = rng.randbytes(max_payload + rng.randrange(1, 40))
            wire += fs.encode_frame(frame_type, payload, max_payload=len(payload))
        else:
            wire += bytes(rng.randrange(1, 4))
    traffic.wire = bytes(wire)
    return traffic


def frames_from_beats(beats: list[dict[str, int]]) -> list[tuple[fs.Frame, bool]]:
    """Group decoder output beats into (frame, good); checks the first/last markers."""
    frames: list[tuple[fs.Frame, bool]] = []
    body = bytearray()
    for beat in beats:
        assert beat["first"] == (not body), f"first marker wrong at beat {beat} after {len(body)} bytes"
        body.append(beat["data"])
        if beat["last"]:
            frames.append((fs.Frame(body[0], bytes(body[1:])), bool(beat["good"])))
            body = bytearray()
        else:
            assert beat["good"], "good must be 1 on non-last beats"
    assert not body, f"output ends inside a frame ({len(body)} bytes)"
    return frames


def body_beats(frames: list[fs.Frame]) -> list[dict[str, int]]:
    """Encoder input beats for ``frames``."""
    beats = []
    for frame in frames:
        body = bytes([frame.type]) + frame.payload
        beats += [{"data": b, "last": int(n == len(body) - 1)} for n, b in enumerate(body)]
    return beats


# -- Benches ---------------------------------------------------------------------------------------


async def _start(dut: HierarchyObject) -> dict:
    params = bench_params(DEFAULTS)
    start_clock(dut)
    for port in ("dec_i", "enc_i"):
        getattr(dut, f"{port}__valid").value = 0
        getattr(dut, f"{port}__payload").value = 0
    for port in ("dec_o", "enc_o"):
        getattr(dut, f"{port}__ready").value = 0
    await reset(dut)
    return params


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def decoder_mixed_traffic(dut: HierarchyObject) -> None:
    """Reference-encoded frames among garbage, with random idles and stalls: exactly the good
    frames come out, in order, and the error counters agree with the reference."""
    params = await _start(dut)
    rng = random.Random(params["seed"])
    traffic = make_traffic(rng, params["frames"], params["max_payload"])
    reference = fs.StreamDecoder(params["max_payload"])
    expected = [e for e in reference.feed(traffic.wire) if isinstance(e, fs.Frame)]
    assert expected == traffic.intended, "reference decoder disagrees with the traffic generator"
    dut._log.info(
        "traffic %d bytes: %s; reference stats %s", len(traffic.wire), traffic.kinds, reference.stats
    )

    sink = StreamSink(dut, "dec_o", shape=DecodedByte, stall_prob=params["stall_prob"], rng=rng).start()
    source = StreamSource(dut, "dec_i", idle_prob=params["idle_prob"], rng=rng)
    await source.send(traffic.wire)
    n_beats = sum(1 + len(f.payload) for f in expected)
    await sink.wait_for(n_beats, timeout_cycles=20 * len(traffic.wire) + 1000)
    await sink.idle(200)
    got = frames_from_beats(sink.received)
    assert all(good for _, good in got), "a bad frame came out of the dropping decoder"
    got_frames = [f for f, _ in got]
    assert len(got_frames) == len(expected), f"{len(got_frames)} frames out, {len(expected)} expected"
    for n, (a, b) in enumerate(zip(got_frames, expected, strict=True)):
        assert a == b, f"frame {n} differs: got {a}, expected {b}"

    stats = PayloadCodec(FrameStats).unpack(int(dut.dec_stats.value))
    want = {k: getattr(reference.stats, k) & 0xFFFF for k in ("good", "crc", "oversize", "truncated")}
    assert stats == want, f"gateware stats {stats} != reference {want}"


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def decoder_full_rate(dut: HierarchyObject) -> None:
    """Back-to-back good frames with no stalls are consumed at one byte per clock."""
    params = await _start(dut)
    rng = random.Random(params["seed"] + 1)
    frames = [fs.Frame(rng.randrange(256), random_payload(rng, params["max_payload"])) for _ in range(20)]
    wire = b"".join(fs.encode_frame(f.type, f.payload, max_payload=params["max_payload"]) for f in frames)
    sink = StreamSink(dut, "dec_o", shape=DecodedByte).start()
    source = StreamSource(dut, "dec_i")
    cycles = 0

    async def count():
        nonlocal cycles
        while True:
            await RisingEdge(dut.clk)
            cycles += 1

    counter = cocotb.start_soon(count())
    await source.send(wire)
    counter.cancel()
    assert cycles <= len(wire) + 2, f"{len(wire)} bytes took {cycles} cycles"
    await sink.wait_for(sum(1 + len(f.payload) for f in frames), timeout_cycles=5000)
    assert [f for f, _ in frames_from_beats(sink.received)] == frames


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def encoder_matches_reference(dut: HierarchyObject) -> None:
    """FrameEncoder output is byte-for-byte the reference encoding and decodes with the reference."""
    params = await _start(dut)
    rng = random.Random(params["seed"] + 2)
    frames = [
        fs.Frame(rng.randrange(256), random_payload(rng, params["max_payload"]))
        for _ in range(params["frames"] // 2)
    ]
    expected = b"".join(fs.encode_frame(f.type, f.payload, max_payload=params["max_payload"]) for f in frames)
    sink = StreamSink(dut, "enc_o", stall_prob=params["stall_prob"], rng=rng).start()
    source = StreamSource(dut, "enc_i", shape=FrameByte, idle_prob=params["idle_prob"], rng=rng)
    await source.send(body_beats(frames))
    await sink.wait_for(len(expected), timeout_cycles=20 * len(expected) + 1000)
    await sink.idle(100)
    got = bytes(sink.received)
    assert len(got) == len(expected), f"{len(got)} bytes out, {len(expected)} expected"
    if got != expected:
        at = next(n for n, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        raise AssertionError(
            f"first difference at byte {at}: {got[at : at + 8].hex()} != {expected[at : at + 8].hex()}"
        )
    decoded = fs.decode_stream(got, max_payload=params["max_payload"])
    assert decoded == frames


@cocotb.test(skip=not bench_params().get("runner_self_check"))
async def runner_self_check(dut: HierarchyObject) -> None:
    """Fails on purpose (only when asked): proves sim.runner reports failing cocotb tests."""
    start_clock(dut)
    await RisingEdge(dut.clk)
    raise AssertionError("deliberate failure for the runner self-check")
