"""cocotb side of the matcher benches (shared; no cocotb tests here): drive command records, collect events.

Runs inside the simulator (imported by ``sim.benches.test_matcher_*`` cocotb modules). The DUT
is an ``hdl.matcher.Matcher`` converted by :mod:`sim.runner`: ports ``i__payload``/``i__valid``/
``i__ready`` and ``o__payload``/``o__valid``/``o__ready``, clock ``clk``, reset ``rst``.

Two ways to drive it:

* :meth:`MatcherPort.run_record`: one command record, then wait for its burst (the record
  flagged LAST). The host driver runs between records, as a host would.
* :meth:`MatcherPort.stream`: a list of records back to back (optionally with random idle
  cycles on the input and random stalls of the event sink), recording the cycle of every
  handshake, for cycle counts and for the no-loss/no-duplicate checks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from cocotb.triggers import ReadOnly, RisingEdge

from exchange.matcher_format import CommandRecord, EventRecord, MatcherConfig
from host.matcher_driver import Steps
from sim.matcher_backend import StreamResult


class MatcherPort:
    """The DUT's two streams, driven cycle by cycle (writes just after a rising edge, samples in
    the read-only phase before the next one)."""

    def __init__(self, dut: Any, config: MatcherConfig, *, timeout_cycles: int = 100_000) -> None:
        self.dut = dut
        self.config = config
        self.timeout = timeout_cycles
        self.cycle = 0
        self._edge = RisingEdge(dut.clk)
        dut.i__valid.value = 0
        dut.o__ready.value = 0

    async def tick(self) -> None:
        await self._edge
        self.cycle += 1

    async def reset(self, cycles: int = 2) -> None:
        """Synchronous reset: the book is empty and the window unset afterwards."""
        self.dut.i__valid.value = 0
        self.dut.rst.value = 1
        for _ in range(cycles):
            await self.tick()
        self.dut.rst.value = 0
        await self.tick()

    async def run_record(self, record: CommandRecord, *, stall: float = 0.0,
                         rng: random.Random | None = None) -> tuple[list[EventRecord], int, int]:
        """Send one record and collect its burst; returns (burst, accept cycle, first-event cycle)."""
        dut = self.dut
        word = self.config.command_word(record)
        dut.i__payload.value = word
        dut.i__valid.value = 1
        burst: list[EventRecord] = []
        accepted = first = -1
        for _ in range(self.timeout):
            ready = not (stall and rng is not None and rng.random() < stall)
            dut.o__ready.value = int(ready)
            await ReadOnly()
            took = accepted < 0 and bool(dut.i__ready.value)
            out_valid = bool(dut.o__valid.value) and ready
            out_word = int(dut.o__payload.value) if out_valid else 0
            await self.tick()
            if took:
                accepted = self.cycle - 1
                dut.i__valid.value = 0
            if out_valid:
                event = self.config.event_from_word(out_word)
                if accepted < 0:
                    raise AssertionError(f"event {event} before the command was accepted")
                if first < 0:
                    first = self.cycle - 1
                burst.append(event)
                if event.last:
                    dut.o__ready.value = 0
                    return burst, accepted, first
        raise AssertionError(f"no end of burst within {self.timeout} cycles for {record}")

    async def run_steps(self, steps: Steps, log: list | None = None, **kwargs: Any) -> list:
        """Drive a host driver generator (``MatcherDriver.steps``) to completion; returns its events."""
        try:
            record = next(steps)
            while True:
                burst, accepted, first = await self.run_record(record, **kwargs)
                if log is not None:
                    log.append((record, burst, first - accepted))
                record = steps.send(burst)
        except StopIteration as stop:
            return stop.value

    async def stream(self, records: Sequence[CommandRecord], *, idle: float = 0.0, stall: float = 0.0,
                     rng: random.Random | None = None) -> StreamResult:
        """Send every record as fast as the DUT takes them (``idle``: chance of an idle cycle before
        a record) while collecting events (``stall``: chance the sink is not ready)."""
        dut = self.dut
        rng = rng or random.Random(0)
        words = [self.config.command_word(r) for r in records]
        result = StreamResult()
        index = 0
        lasts = 0
        quiet = 0
        while lasts < len(words):
            offering = index < len(words) and not (idle and rng.random() < idle)
            if offering:
                dut.i__payload.value = words[index]
            dut.i__valid.value = int(offering)
            ready = not (stall and rng.random() < stall)
            dut.o__ready.value = int(ready)
            await ReadOnly()
            took = offering and bool(dut.i__ready.value)
            out_valid = bool(dut.o__valid.value) and ready
            out_word = int(dut.o__payload.value) if out_valid else 0
            await self.tick()
            now = self.cycle - 1
            if took:
                result.accepted.append(now)
                index += 1
            if out_valid:
                event = self.config.event_from_word(out_word)
                result.events.append((now, event))
                lasts += event.last
                quiet = 0
            else:
                quiet += 1
                if quiet > self.timeout:
                    raise AssertionError(f"stream stuck: {lasts}/{len(words)} bursts after {now} cycles")
        dut.i__valid.value = 0
        dut.o__ready.value = 0
        # Nothing may follow the last burst.
        for _ in range(8):
            dut.o__ready.value = 1
            await ReadOnly()
            extra = bool(dut.o__valid.value)
            await self.tick()
            if extra:
                raise AssertionError("an event record after the last burst")
        dut.o__ready.value = 0
        return result




