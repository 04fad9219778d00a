"""Simulator-side helpers for cocotb benches of Amaranth components (import them in a bench).

The pytest side is :mod:`sim.runner`. These run inside the simulator process:

* :func:`bench_params` reads the parameters ``run_cocotb(params=...)`` passed.
* :func:`start_clock` and :func:`reset` drive Amaranth's ``clk``/``rst`` (synchronous, active high).
* :class:`StreamSource` drives an Amaranth ``stream.Signature`` port that is an input of the DUT
  (``<port>__valid``/``__payload``, honouring ``__ready``) with optional random idle cycles;
  :class:`StreamSink` collects an output stream with optional random ``ready`` stalls.
* :class:`PayloadCodec` packs/unpacks struct payloads using the Amaranth layout itself, so a
  bench never hard-codes bit offsets.

Timing discipline (both drivers): inputs change only just after a rising edge; handshakes are
evaluated in the ``ReadOnly`` phase before the next edge, when everything has settled.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = [
    "PayloadCodec",
    "StreamSink",
    "StreamSource",
    "bench_params",
    "reset",
    "start_clock",
]

PARAMS_ENV = "MATCHWIRE_BENCH_PARAMS"  # same as sim.runner.PARAMS_ENV


def bench_params(defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parameters given to ``run_cocotb``, over ``defaults`` (for running a bench by hand)."""
    params = dict(defaults or {})
    path = os.environ.get(PARAMS_ENV)
    if path:
        with open(path) as f:
            params.update(json.load(f))
    return params


def start_clock(dut: Any, period_ns: float = 10, *, name: str = "clk", impl: str = "gpi") -> Clock:
    """Start a free-running clock on ``dut.<name>``.

    ``impl="gpi"`` (default) toggles the clock from C++ rather than a Python task, several times
    faster; benches only change inputs just after a rising edge, so it is safe on Icarus too.
    """
    clock = Clock(getattr(dut, name), period_ns, unit="ns", impl=impl)
    clock.start()
    return clock


async def reset(dut: Any, cycles: int = 2, *, clk: str = "clk", rst: str = "rst") -> None:
    """Hold Amaranth's synchronous reset for ``cycles`` rising edges, then release it."""
    getattr(dut, rst).value = 1
    for _ in range(cycles):
        await RisingEdge(getattr(dut, clk))
    getattr(dut, rst).value = 0


class PayloadCodec:
    """Packs and unpacks a stream payload.

    ``shape`` is a bit width (payloads are plain ints) or an Amaranth ``data.Layout`` such as a
    ``StructLayout`` (payloads are dicts of its top-level fields).
    """

    def __init__(self, shape: Any = 8) -> None:
        if isinstance(shape, int):
            self.width = shape
            self.fields: dict[str, tuple[int, int]] | None = None
        else:
            from amaranth.lib import data

            layout = data.Layout.cast(shape)
            self.width = layout.size
            self.fields = {name: (f.offset, f.width) for name, f in layout}

    def pack(self, value: int | Mapping[str, int]) -> int:
        if self.fields is None:
            if not isinstance(value, int):
                raise TypeError(f"expected an int payload, got {value!r}")
            return value & ((1 << self.width) - 1)
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a dict payload, got {value!r}")
        unknown = set(value) - set(self.fields)
        if unknown:
            raise KeyError(f"unknown payload fields {sorted(unknown)}")
        word = 0
        for name, v in value.items():
            offset, width = self.fields[name]
            word |= (int(v) & ((1 << width) - 1)) << offset
        return word

    def unpack(self, word: int) -> int | dict[str, int]:
        if self.fields is None:
            return word
        return {name: (word >> offset) & ((1 << width) - 1) for name, (offset, width) in self.fields.items()}


def _handle(dut: Any, prefix: str, member: str) -> Any:
    return getattr(dut, f"{prefix}__{member}")


class StreamSource:
    """Drives the DUT input stream ``<prefix>``; ``idle_prob`` inserts random idle cycles.

    The payload is driven to 0 at construction: an undriven (X) payload can poison state on
    four-state simulators even while ``valid`` is low.
    """

    def __init__(
        self,
        dut: Any,
        prefix: str,
        *,
        shape: Any = 8,
        clk: str = "clk",
        idle_prob: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.codec = PayloadCodec(shape)
        self.clk = getattr(dut, clk)
        self.valid = _handle(dut, prefix, "valid")
        self.payload = _handle(dut, prefix, "payload")
        self.ready = _handle(dut, prefix, "ready")
        self.idle_prob = idle_prob
        self.rng = rng or random.Random()
        self.sent = 0
        self.valid.value = 0
        self.payload.value = 0

    async def send(self, beats: Iterable[int | Mapping[str, int]]) -> None:
        """Send every beat, in order; returns after the last one was accepted."""
        edge = RisingEdge(self.clk)
        read_only = ReadOnly()
        valid = 0
        for beat in beats:
            word = self.codec.pack(beat)
            while self.idle_prob and self.rng.random() < self.idle_prob:
                if valid:
                    self.valid.value = valid = 0
                await edge
            if not valid:
                self.valid.value = valid = 1
            self.payload.value = word
            while True:
                await read_only
                ready = self.ready.value
                if not ready.is_resolvable:
                    raise AssertionError(f"DUT drives {ready} on {self.ready._name}")
                accepted = ready == 1
                await edge
                if accepted:
                    break
            self.sent += 1
        self.valid.value = 0


class StreamSink:
    """Collects the DUT output stream ``<prefix>`` into :attr:`received` once :meth:`start`-ed.

    ``stall_prob`` drops ``ready`` on random cycles. ``max_beats`` bounds the collection so a
    runaway DUT fails the bench instead of filling memory.
    """

    def __init__(
        self,
        dut: Any,
        prefix: str,
        *,
        shape: Any = 8,
        clk: str = "clk",
        stall_prob: float = 0.0,
        rng: random.Random | None = None,
        max_beats: int = 10_000_000,
    ) -> None:
        self.codec = PayloadCodec(shape)
        self.clk = getattr(dut, clk)
        self.valid = _handle(dut, prefix, "valid")
        self.payload = _handle(dut, prefix, "payload")
        self.ready = _handle(dut, prefix, "ready")
        self.stall_prob = stall_prob
        self.rng = rng or random.Random()
        self.max_beats = max_beats
        self.received: list[Any] = []
        self.cycles = 0
        self._task: Any = None
        self.ready.value = 0

    def start(self) -> StreamSink:
        self._task = cocotb.start_soon(self._run())
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.ready.value = 0

    async def _run(self) -> None:
        edge = RisingEdge(self.clk)
        read_only = ReadOnly()
        driven = None
        while True:
            ready = 0 if self.stall_prob and self.rng.random() < self.stall_prob else 1
            if ready != driven:
                self.ready.value = driven = ready
            await read_only
            valid = self.valid.value
            if not valid.is_resolvable:
                raise AssertionError(f"DUT drives {valid} on {self.valid._name}")
            if ready and valid == 1:
                if len(self.received) >= self.max_beats:
                    raise AssertionError(f"more than {self.max_beats} beats received")
                self.received.append(self.codec.unpack(int(self.payload.value)))
            await edge
            self.cycles += 1

    async def wait_for(self, count: int, timeout_cycles: int) -> list[Any]:
        """Wait until ``count`` beats arrived; AssertionError after ``timeout_cycles`` without."""
        edge = RisingEdge(self.clk)
        waited = 0
        while len(self.received) < count:
            if waited >= timeout_cycles:
                raise AssertionError(
                    f"timed out after {timeout_cycles} cycles with {len(self.received)}/{count} beats"
                )
            await edge
            waited += 1
        return self.received[:count]

    async def idle(self, cycles: int) -> None:
        """Wait ``cycles`` clock cycles (e.g. to check nothing more arrives)."""
        edge = RisingEdge(self.clk)
        for _ in range(cycles):
            await edge
