"""cocotb stream bench of ``hdl.itch.ItchDecoder``: beats from a file in, every record out to a file.

Driven by ``sim.itch_backend.run_packets`` (and through it by the tests, the ``sim`` feed decoder and
``matchwire itch decode --backend sim``). Parameters (``bench_params``): ``stream`` (one beat per
line: ``data keep last``, hex), ``out`` (JSON written here: records as hex, the cycle each beat was
accepted, the cycle each record's ``valid`` rose), ``beats``, ``lanes``, ``idle_prob``,
``stall_prob``, ``seed``.

One coroutine drives the input and samples both handshakes once per cycle (inputs change right after
the rising edge, handshakes are read in ``ReadOnly``): cheaper per cycle than separate drivers, which
matters for whole-file runs. The run ends when every beat was accepted and ``o.valid`` has stayed low
for ``DRAIN`` cycles (the decoder's latency is a few cycles).
"""

import json
import random

import cocotb
from cocotb.handle import HierarchyObject
from cocotb.triggers import ReadOnly, RisingEdge

from sim.conftest_helpers import bench_params, reset, start_clock

P = bench_params({"stream": "", "out": "", "beats": 1000, "lanes": 8, "idle_prob": 0.0, "stall_prob": 0.0,
                  "seed": 1})
DRAIN = 32
# Generous: every beat may wait for idles and stalls (both well under 1/2 in practice).
TIMEOUT_US = (P["beats"] * 8 + 10_000) * 10 / 1000


@cocotb.test(timeout_time=TIMEOUT_US, timeout_unit="us")
async def itch_stream(dut: HierarchyObject) -> None:
    lanes = P["lanes"]
    with open(P["stream"]) as f:
        beats = []
        for line in f:
            data, keep, last = line.split()
            beats.append(int(data, 16) | int(keep, 16) << (8 * lanes) | int(last) << (9 * lanes))
    rng = random.Random(P["seed"])
    idle_prob, stall_prob = P["idle_prob"], P["stall_prob"]

    i_valid, i_payload, i_ready = dut.i__valid, dut.i__payload, dut.i__ready
    o_valid, o_payload, o_ready = dut.o__valid, dut.o__payload, dut.o__ready
    i_valid.value = 0
    i_payload.value = 0
    o_ready.value = 0
    start_clock(dut)
    await reset(dut)

    edge, read_only = RisingEdge(dut.clk), ReadOnly()
    accepted: list[int] = []  # cycle each beat was accepted
    shown: list[int] = []  # cycle each record's valid rose
    records: list[str] = []
    index, offered, quiet, cycle = 0, 0, 0, 0
    valid_since = None
    driven_ready = None
    driven_valid = 0
    while index < len(beats) or quiet < DRAIN:
        await edge
        cycle += 1
        if not offered:
            if index < len(beats) and not (idle_prob and rng.random() < idle_prob):
                i_payload.value = beats[index]
                if not driven_valid:
                    i_valid.value = driven_valid = 1
                offered = 1
            elif driven_valid:
                i_valid.value = driven_valid = 0
        ready = 0 if stall_prob and rng.random() < stall_prob else 1
        if ready != driven_ready:
            o_ready.value = driven_ready = ready
        await read_only
        if offered and i_ready.value == 1:
            accepted.append(cycle)
            index += 1
            offered = 0
        if o_valid.value == 1:
            quiet = 0
            if valid_since is None:
                valid_since = cycle
            if ready:
                records.append(format(int(o_payload.value), "x"))
                shown.append(valid_since)
                valid_since = None
        elif index == len(beats):  # count quiet cycles only once every beat is in
            quiet += 1
    with open(P["out"], "w") as f:
        json.dump({"records": records, "accepted": accepted, "shown": shown, "cycles": cycle}, f)
