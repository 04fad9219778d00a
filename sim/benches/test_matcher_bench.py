"""cocotb benches of the gateware matcher (``hdl.matcher.Matcher``), run by tests/sim/test_matcher.py.

Each test runs command streams through the host driver and the simulated gateware, one command
at a time as a host would, and compares the events with the reference engine's (hardware
profile) event by event; the first mismatch fails the test with its command index. Then the
same command records are replayed back to back, with no idle cycles and with a stalling event
sink: the event records must come out identical (nothing lost, duplicated or reordered), and the
clean replay gives the cycle counts.

Parameters (``bench_params``): ``config`` (MatcherConfig fields), ``instrument`` (symbol,
tick_size, lot_size, band), ``seed``, ``streams``, ``commands`` (per stream), ``stall``
(probability the sink is not ready), ``idle`` (probability of an idle input cycle in the
stressed replay), ``stats`` (a JSON file to write figures to), ``scenarios`` (directed names, or
all).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import cocotb
from cocotb.clock import Clock

from exchange.instruments import Instrument
from exchange.matcher_format import MatcherConfig
from exchange.orders import Command
from sim.benches.test_matcher_pump import MatcherPort
from sim.conftest_helpers import bench_params
from sim.matcher_backend import (
    MatcherSession,
    StreamResult,
    cycle_stats,
    directed_scenarios,
    first_mismatch,
    perf_scenarios,
    random_commands,
    realistic_commands,
    reference_events,
)

DEFAULTS: dict[str, Any] = {
    "config": {"max_orders": 16, "window_ticks": 16, "group_width": 8},
    "instrument": {"symbol": "XYZ"},
    "seed": 1,
    "streams": 2,
    "commands": 300,
    "stall": 0.3,
    "idle": 0.2,
    "stats": None,
    "scenarios": None,
}


def _instrument(params: dict) -> Instrument:
    spec = dict(params["instrument"])
    if spec.get("band") is not None:
        spec["band"] = tuple(spec["band"])
    return Instrument(**spec)


def _setup(dut: Any) -> tuple[dict, MatcherConfig, Instrument, MatcherPort]:
    params = bench_params(DEFAULTS)
    config = MatcherConfig(**params["config"])
    Clock(dut.clk, 10, unit="ns").start()
    return params, config, _instrument(params), MatcherPort(dut, config)


async def run_session(port: MatcherPort, session: MatcherSession, commands: list[Command], *, stall: float,
                      rng: random.Random) -> tuple[list[list], list[int]]:
    """Host-in-the-loop run: every command through the driver; returns events per command and
    the latency (accept to first event, in cycles) of every record."""
    events = []
    latencies: list[int] = []
    for command in commands:
        log: list = []
        events.append(await port.run_steps(session.driver.steps(command), log, stall=stall, rng=rng))
        for record, burst, latency in log:
            session.log(command, record, burst)
            latencies.append(latency)
    return events, latencies


def check_replay(session: MatcherSession, result: StreamResult, what: str) -> None:
    """The replayed records must give exactly the bursts of the host-in-the-loop run."""
    got = result.bursts()
    if len(got) != len(session.bursts):
        raise AssertionError(f"{what}: {len(got)} bursts for {len(session.bursts)} commands")
    for index, (want, have) in enumerate(zip(session.bursts, got, strict=True)):
        if want != have:
            raise AssertionError(f"{what}: record #{index} {session.sent[index]} gave {have}, first run {want}")


async def differential_and_replay(dut: Any, commands_list: list[list[Command]], label: str,
                                  names: list[str] | None = None) -> dict:
    params, config, instrument, port = _setup(dut)
    rng = random.Random(params["seed"])
    stats: dict = {"streams": []}
    for number, commands in enumerate(commands_list):
        started = time.monotonic()
        await port.reset()
        session = MatcherSession(instrument, config)
        got, latencies = await run_session(port, session, commands, stall=params["stall"], rng=rng)
        expected = reference_events(commands, instrument, config)
        mismatch = first_mismatch(commands, expected, got)
        if mismatch is not None:
            raise AssertionError(f"{label} stream {number}: {mismatch}")
        # Back to back with random idle input cycles and a stalling sink: same records.
        await port.reset()
        stressed = await port.stream(session.sent, idle=params["idle"], stall=params["stall"], rng=rng)
        check_replay(session, stressed, f"{label} stream {number} stressed replay")
        # Back to back, sink always ready: the cycle figures.
        await port.reset()
        clean = await port.stream(session.sent)
        check_replay(session, clean, f"{label} stream {number} clean replay")
        figures = cycle_stats(session.kinds, session.bursts, clean)
        figures["name"] = names[number] if names else f"{label}{number}"
        figures["commands"] = len(commands)
        figures["events"] = sum(len(e) for e in expected)
        figures["max_latency_isolated"] = max(latencies) if latencies else 0
        by_kind: dict[str, list[int]] = {}
        for kind, latency in zip(session.kinds, latencies, strict=True):
            by_kind.setdefault(kind, []).append(latency)
        figures["latency_by_kind"] = {k: {"mean": sum(v) / len(v), "max": max(v)} for k, v in by_kind.items()}
        figures["wall_s"] = round(time.monotonic() - started, 2)
        stats["streams"].append(figures)
        dut._log.info(f"{label} stream {number}: {len(commands)} commands, {figures['records']} records, "
                      f"{figures['cycles_per_msg']:.3f} cycles/record, identical events and replays")
    if params["stats"]:
        with open(params["stats"], "w") as f:
            json.dump(stats, f, indent=1)
    return stats


@cocotb.test()
async def differential(dut: Any) -> None:
    """Random adversarial streams: gateware + host driver == reference engine, replays identical."""
    params = bench_params(DEFAULTS)
    config = MatcherConfig(**params["config"])
    instrument = _instrument(params)
    streams = [random_commands(random.Random(params["seed"] * 1000 + k), params["commands"], config, instrument)
               for k in range(params["streams"])]
    await differential_and_replay(dut, streams, "random")


@cocotb.test()
async def directed(dut: Any) -> None:
    """The directed scenarios, each from an empty book, with the same checks."""
    params = bench_params(DEFAULTS)
    config = MatcherConfig(**params["config"])
    scenarios = directed_scenarios(config, _instrument(params))
    wanted = params["scenarios"] or list(scenarios)
    await differential_and_replay(dut, [scenarios[name] for name in wanted], "directed", wanted)


@cocotb.test()
async def realistic(dut: Any) -> None:
    """A market-maker-like stream (for cycle figures), also checked against the engine."""
    params = bench_params(DEFAULTS)
    instrument = _instrument(params)
    streams = [realistic_commands(random.Random(params["seed"] + k), params["commands"], instrument)
               for k in range(params["streams"])]
    await differential_and_replay(dut, streams, "realistic")


@cocotb.test()
async def perf(dut: Any) -> None:
    """One kind of command at a time, for cycle figures by kind (also checked against the engine)."""
    params = bench_params(DEFAULTS)
    scenarios = perf_scenarios(_instrument(params))
    await differential_and_replay(dut, list(scenarios.values()), "perf", list(scenarios))
