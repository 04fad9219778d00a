"""cocotb benches of the gateware matcher on Icarus Verilog and Verilator (sim.runner).

The same benches run on both simulators (skipped only when a simulator is not installed, with
the reason). Each compares the gateware (through the host driver) with the reference engine's
hardware profile event by event, then replays the command records back to back, with random
idle input cycles and a stalling event sink, and again clean for cycle counts: the records
must be identical every time. Larger runs: ``make diff-million`` and ``make bench-matcher``.
"""

from __future__ import annotations

import json
import time

import pytest

from exchange.matcher_format import MatcherConfig
from sim.matcher_backend import config_params, matcher_design
from sim.runner import SIMULATORS, run_cocotb

BENCH = "sim.benches.test_matcher_bench"
#: Small enough to fill up and to reach both window edges in a short random stream.
SMALL = MatcherConfig(max_orders=16, window_ticks=16, group_width=8)
DEFAULT = MatcherConfig()
COARSE = {"symbol": "QQ", "tick_size": 5, "lot_size": 10, "band": [99_000, 101_000]}
PLAIN = {"symbol": "XYZ"}


def _run(simulator: str, config: MatcherConfig, testcase: str, tmp_path, **params) -> dict:
    stats = tmp_path / f"{testcase}.json"
    started = time.monotonic()
    design = matcher_design(config)
    result = run_cocotb(design, name=design.name, test_module=BENCH, testcase=testcase,
                        simulator=simulator,
                        params={"config": config_params(config), "stats": str(stats), **params})
    figures = json.loads(stats.read_text())
    commands = sum(s["commands"] for s in figures["streams"])
    rates = ", ".join(f"{s['cycles_per_msg']:.2f}" for s in figures["streams"])
    print(f"{simulator} {testcase}: {commands} commands in {time.monotonic() - started:.1f} s ({rates} cycles/record)")
    assert [t.status for t in result.tests] == ["passed"]
    return figures


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_random_small_book(simulator, tmp_path):
    """Random streams on a 16-order, +-16-tick book: book full and window edges all the time;
    a coarse instrument (tick 5, lot 10, band) and a stalling sink."""
    _run(simulator, SMALL, "differential", tmp_path, instrument=COARSE, seed=11, streams=2, commands=800,
         stall=0.3, idle=0.2)


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_random_default_book(simulator, tmp_path):
    """Random streams on the default book (4096 orders, +-1024 ticks)."""
    _run(simulator, DEFAULT, "differential", tmp_path, instrument=PLAIN, seed=12, streams=1, commands=1000,
         stall=0.2, idle=0.2)


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("size", ["small", "default"])
def test_directed(simulator, size, tmp_path):
    """Priority in a level, partial fills, sweeps across many levels, cancels at head, middle
    and tail, best level emptied, book full, window edges, modify, FOK, market, post-only, end of day."""
    config = SMALL if size == "small" else DEFAULT
    figures = _run(simulator, config, "directed", tmp_path, instrument=PLAIN, seed=3, stall=0.3, idle=0.3)
    sweep = next(s for s in figures["streams"] if s["name"] == "sweep_many_levels")
    # One fill per cycle once the walker runs ahead of the sweep (the first level change waits).
    assert sweep["sweep_cycles_per_fill"] is not None and sweep["sweep_cycles_per_fill"] < 1.2


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("size", ["small", "default"])
def test_best_level_empties_while_core_holds(simulator, size, tmp_path):
    """Regression: a cancel or modify empties the best level while the output FIFO is nearly full,
    so the core holds (``go`` low) while the level walker, which runs on regardless, moves the next
    best position into its output register. FIXUP used to take the walker's ``first_level``, by
    then the position after it (or none), and the stressed replay traded at the wrong level."""
    config = SMALL if size == "small" else DEFAULT
    _run(simulator, config, "directed", tmp_path, instrument=PLAIN, seed=1, stall=0.5, idle=0.0,
         scenarios=["best_level_empties_held"])


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_realistic_stream_cycles(simulator, tmp_path):
    """A market-maker-like stream on the default book: within the cycle budget (<= 4 per message)."""
    figures = _run(simulator, DEFAULT, "realistic", tmp_path, instrument=PLAIN, seed=5, streams=1, commands=1000,
                   stall=0.2, idle=0.1)
    stream = figures["streams"][0]
    assert stream["cycles_per_msg"] <= 4.0
    assert stream["first_event_latency"]["mean"] <= 8.0
