"""amaranth.sim tests of the matcher's submodules and of the whole matcher at small sizes.

The cocotb benches (tests/sim/test_matcher.py) run the default size on Icarus and Verilator;
these run in Amaranth's own simulator, so they need no HDL simulator at all.
"""

from __future__ import annotations

import gc
import random
import warnings

import pytest
from amaranth import Module, Signal
from amaranth.hdl import UnusedElaboratable
from amaranth.lib import wiring
from amaranth.sim import Simulator

from exchange.instruments import Instrument
from exchange.matcher_format import MatcherConfig
from hdl.formats import struct_layout
from hdl.matcher import Matcher, default_matcher, small_matcher
from hdl.matcher_alloc import HandleAllocator
from hdl.matcher_levels import LevelBitmap, LevelQueue, LevelWalker, first_set
from sim.matcher_backend import (
    cycle_stats,
    directed_scenarios,
    first_mismatch,
    random_commands,
    reference_events,
    run_pysim,
)


def simulate(dut, bench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


# -- parameters -------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"max_orders": 0}, {"max_orders": "4"}, {"window_ticks": 0}, {"qty_width": 1}, {"qty_width": 65},
    {"id_width": 12}, {"id_width": 8, "max_orders": 257}, {"group_width": 3}, {"group_width": 128},
])
def test_bad_parameters_raise(params):
    with pytest.raises(ValueError):
        MatcherConfig(**params)
    _refused(**params)


def test_config_and_parameters_exclusive():
    _refused(MatcherConfig(), max_orders=8)
    _refused(out_depth=3)


def _refused(*args: object, **params: object) -> None:
    """Matcher(...) raises ValueError. Amaranth made the object before its constructor refused, and warns
    that it was never elaborated when it is collected: collected here, where that is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError):
            Matcher(*args, **params)
        gc.collect()


def test_default_size_meets_the_issue():
    config = MatcherConfig()
    assert config.max_orders >= 4096 and config.window_ticks >= 1024
    assert struct_layout(config.command_layout).size == config.command_layout.width
    assert struct_layout(config.event_layout).size == config.event_layout.width
    assert default_matcher.__doc__ and small_matcher.__doc__


# -- priority encoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 13])
def test_first_set_exhaustive(width):
    value = Signal(width)
    lo, any_lo = first_set(value, lowest=True)
    hi, any_hi = first_set(value, lowest=False)
    m = Module()
    outs = [Signal(len(lo)), Signal(), Signal(len(hi)), Signal()]
    m.d.comb += [outs[0].eq(lo), outs[1].eq(any_lo), outs[2].eq(hi), outs[3].eq(any_hi)]

    async def bench(ctx):
        for v in range(1 << width):
            ctx.set(value, v)
            assert ctx.get(outs[1]) == ctx.get(outs[3]) == (v != 0)
            if v:
                assert ctx.get(outs[0]) == (v & -v).bit_length() - 1
                assert ctx.get(outs[2]) == v.bit_length() - 1

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


# -- bitmap and walker ------------------------------------------------------------------------------


class WalkBench(wiring.Component):
    """A LevelBitmap with a LevelWalker on its walker port."""

    def __init__(self, levels: int, group_width: int) -> None:
        self.bitmap = LevelBitmap(levels, group_width)
        self.walker = LevelWalker(levels, group_width)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.bitmap = self.bitmap
        m.submodules.walker = self.walker
        m.d.comb += [
            self.walker.summary.eq(self.bitmap.summary),
            self.bitmap.rd_group.eq(self.walker.word_group),
            self.walker.word.eq(self.bitmap.rd_word),
            self.bitmap.start_group.eq(self.walker.start_group),
            self.walker.start_word.eq(self.bitmap.start_word),
        ]
        return m


@pytest.mark.parametrize("levels,group_width", [(32, 8), (50, 4), (2048, 32), (8, 8)])
def test_walker_lists_levels_beyond_a_start(levels, group_width):
    rng = random.Random(levels)
    dut = WalkBench(levels, group_width)
    bitmap, walker = dut.bitmap, dut.walker

    async def bench(ctx):
        occupied: set[int] = set()
        for round_ in range(12):
            # Random updates through the update port (set and clear).
            for _ in range(rng.randrange(1, 20)):
                level = rng.randrange(levels)
                setting = rng.random() < 0.6
                ctx.set(bitmap.q_level, level)
                assert ctx.get(bitmap.q_bit) == (level in occupied)
                ctx.set(bitmap.upd_en, 1)
                ctx.set(bitmap.upd_level, level)
                ctx.set(bitmap.upd_set, setting)
                await ctx.tick()
                (occupied.add if setting else occupied.discard)(level)
            ctx.set(bitmap.upd_en, 0)
            if round_ == 7:  # a clear empties everything
                ctx.set(bitmap.clear, 1)
                await ctx.tick()
                ctx.set(bitmap.clear, 0)
                occupied.clear()
            for _ in range(4):
                start = rng.randrange(levels)
                desc = rng.random() < 0.5
                want = sorted((x for x in occupied if (x < start if desc else x > start)), reverse=desc)
                ctx.set(walker.start, 1)
                ctx.set(walker.start_level, start)
                ctx.set(walker.desc, desc)
                await ctx.tick()
                ctx.set(walker.start, 0)
                got = []
                for _ in range(4 * levels + 10):
                    ready = rng.random() < 0.7
                    ctx.set(walker.ready, ready)
                    if ctx.get(walker.done):
                        break
                    if ready and ctx.get(walker.valid):
                        got.append(ctx.get(walker.level))
                    await ctx.tick()
                assert got == want, (start, desc)

    simulate(dut, bench)


def test_level_queue_fifo_and_flush():
    dut = LevelQueue(12, 4)

    async def bench(ctx):
        model: list[int] = []
        rng = random.Random(3)
        for _ in range(400):
            push = rng.random() < 0.5 and len(model) < 4
            pop = rng.random() < 0.5 and bool(model)
            flush = rng.random() < 0.03
            value = rng.randrange(4096)
            assert ctx.get(dut.count) == len(model)
            if model:
                assert ctx.get(dut.head) == model[0]
            ctx.set(dut.push, push)
            ctx.set(dut.pop, pop)
            ctx.set(dut.flush, flush)
            ctx.set(dut.data, value)
            await ctx.tick()
            if flush:
                model.clear()
                continue
            if pop:
                model.pop(0)
            if push:
                model.append(value)

    simulate(dut, bench)


# -- handle allocator -------------------------------------------------------------------------------


@pytest.mark.parametrize("max_orders", [1, 3, 16, 100])
def test_allocator_order_does_not_depend_on_timing(max_orders):
    """Fresh handles first, then freed ones in the order freed, whatever the idle cycles."""

    def run(idle: float, seed: int) -> list[int]:
        dut = HandleAllocator(max_orders)
        rng = random.Random(seed)
        ops = random.Random(99)  # the same operation sequence for every timing
        taken: list[int] = []

        async def bench(ctx):
            live: list[int] = []
            fifo = list(range(max_orders))
            for _ in range(600):
                while rng.random() < idle:
                    await ctx.tick()
                free = bool(live) and ops.random() < 0.45
                assert ctx.get(dut.full) == (len(live) == max_orders)
                assert ctx.get(dut.empty) == (not live)
                if free:
                    handle = live.pop(ops.randrange(len(live)))
                    ctx.set(dut.free, 1)
                    ctx.set(dut.free_handle, handle)
                    fifo.append(handle)
                elif len(live) < max_orders:
                    handle = ctx.get(dut.handle)
                    assert handle == fifo.pop(0)
                    assert ctx.get(dut.fresh) > handle
                    ctx.set(dut.alloc, 1)
                    live.append(handle)
                    taken.append(handle)
                await ctx.tick()
                ctx.set(dut.free, 0)
                ctx.set(dut.alloc, 0)

        simulate(dut, bench)
        return taken

    assert run(0.0, 1) == run(0.5, 2) == run(0.2, 3)


# -- the whole matcher, small ------------------------------------------------------------------------

TINY = MatcherConfig(max_orders=4, window_ticks=5, group_width=4)
SMALL = MatcherConfig(max_orders=16, window_ticks=16, group_width=8)
INSTRUMENTS = [Instrument("XYZ"), Instrument("QQ", tick_size=5, lot_size=10, band=(99_000, 101_000))]


@pytest.mark.parametrize("config", [TINY, SMALL], ids=["tiny", "small"])
@pytest.mark.parametrize("seed", range(3))
def test_matcher_random_streams(config, seed):
    instrument = INSTRUMENTS[seed % 2]
    commands = random_commands(random.Random(100 + seed), 300, config, instrument)
    events, session, replay = run_pysim(config, instrument, commands, stall=0.3 * (seed % 2), seed=seed,
                                        stream=True)
    mismatch = first_mismatch(commands, reference_events(commands, instrument, config), events)
    assert mismatch is None, str(mismatch)
    assert replay.bursts() == session.bursts  # back to back: the very same records
    assert cycle_stats(session.kinds, session.bursts, replay)["cycles_per_msg"] < 8


@pytest.mark.parametrize("name", sorted(directed_scenarios(SMALL, INSTRUMENTS[0])))
def test_matcher_directed(name):
    commands = directed_scenarios(SMALL, INSTRUMENTS[0])[name]
    events, session, replay = run_pysim(SMALL, INSTRUMENTS[0], commands, stall=0.25, stream=True)
    mismatch = first_mismatch(commands, reference_events(commands, INSTRUMENTS[0], SMALL), events)
    assert mismatch is None, str(mismatch)
    assert replay.bursts() == session.bursts


def test_simple_commands_take_one_cycle_back_to_back():
    """Adds that rest and cancels that do not empty the best level: one cycle each."""
    instrument = INSTRUMENTS[0]
    from exchange.orders import CancelOrder, NewOrder, SetBasePrice, Side

    commands = [SetBasePrice("XYZ", 1000)]
    commands += [NewOrder("XYZ", k, "MM1", Side.BUY, 1000 - k % 8, 1) for k in range(1, 41)]
    commands += [CancelOrder("XYZ", k) for k in range(40, 1, -1)]
    events, session, replay = run_pysim(MatcherConfig(max_orders=64, window_ticks=16, group_width=8), instrument,
                                        commands, stream=True)
    figures = cycle_stats(session.kinds, session.bursts, replay)
    assert figures["by_kind"]["add"]["mean"] <= 1.1
    assert figures["by_kind"]["cancel"]["mean"] <= 1.5
