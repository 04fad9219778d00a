"""The gateware matcher in simulation: traffic, differential checking, and ``--backend sim``.

Pieces, from the bottom up:

* Traffic: :func:`random_commands` (adversarial streams for the differential tests: crossing
  sweeps, cancels anywhere in a level, modifies, FOK, market, post-only, DAY and end of day,
  window edges, book full, invalid values and unsupported features) and
  :func:`realistic_commands` (a market-maker-like mix, for cycle figures).
* :func:`first_mismatch`: event-by-event comparison that names the first differing command.
* :class:`MatcherSession`: the host driver plus bookkeeping of every record sent and received,
  so a run can be replayed back to back for cycle counts (:func:`replay_records`).
* :class:`SimBook` and :func:`sim_backend`: the ``sim`` backend of ``matchwire match``. Each
  book starts a cocotb simulation (Icarus or Verilator, via :mod:`sim.runner`) whose bench
  (``sim.benches.test_matcher_server``) pumps records over a local socket; the driver runs in
  this process.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exchange.engine import OrderBook
from exchange.instruments import Instrument
from exchange.matcher_format import CommandRecord, EventRecord, MatcherConfig, RecordKind
from exchange.orders import (
    CancelOrder,
    Command,
    EndOfDay,
    Event,
    ModifyOrder,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    SetBasePrice,
    Side,
    TimeInForce,
)
from exchange.recent_ids import RecentOrderIds
from exchange.script import command_to_json, event_to_json
from host.matcher_driver import MatcherDriver

if TYPE_CHECKING:  # sim.runner imports amaranth and cocotb tools: loaded only when a design is built
    from sim.runner import VerilogDesign

__all__ = [
    "MatcherSession",
    "SimBook",
    "SimBookFactory",
    "bench_report",
    "matcher_design",
    "run_pysim",
    "sim_backend",
    "StreamResult",
    "cycle_stats",
    "directed_scenarios",
    "perf_scenarios",
    "Mismatch",
    "first_mismatch",
    "random_commands",
    "realistic_commands",
    "reference_events",
]

ACCOUNTS = ("MM1", "MM2", "FUNDA", "FUNDB")


# -- traffic --------------------------------------------------------------------------------------


def random_commands(rng: random.Random, count: int, config: MatcherConfig, instrument: Instrument, *,
                    base: int = 100_000, spread_ticks: int | None = None, odd: float = 0.03) -> list[Command]:
    """An adversarial command stream for one instrument (starting with ``set_base``).

    Prices cluster within ``spread_ticks`` of the base (default: the whole window for small
    windows, 12 ticks otherwise) so orders cross often, with a share at and just beyond the
    window edges. ``odd`` is the chance of an invalid or unsupported field.
    """
    tick, lot = instrument.tick_size, instrument.lot_size
    window = config.window_ticks
    spread = spread_ticks if spread_ticks is not None else (window if window <= 32 else 12)
    symbol = instrument.symbol
    center = base
    next_id = 1
    ids: list[int] = []
    out: list[Command] = [SetBasePrice(symbol, base)]

    def price() -> int:
        roll = rng.random()
        if roll < 0.04:  # window edges, inside and out
            return center + tick * rng.choice((-window, -window - 1, window - 1, window, -window + 1, window - 2))
        if roll < 0.06 and odd:
            return rng.choice((0, -tick, center + 1 if tick > 1 else center, center + tick * 10 * window))
        return center + tick * rng.randint(-spread, spread - 1)

    def qty() -> int:
        roll = rng.random()
        if roll < odd:  # invalid, or wider than the matcher's quantity field (unsupported)
            return rng.choice((0, -lot, lot + 1 if lot > 1 else 0, 1.5, (config.max_qty // lot + 1) * lot))
        return lot * rng.choice((1, 1, 2, 3, 5, 10, rng.randint(1, 40)))

    def known_id() -> int:
        if not ids or rng.random() < 0.04:
            return rng.choice((next_id + 5, 0, -1, 10**12))
        recent = ids[-30:]
        return rng.choice(recent)

    for _ in range(count - 1):
        roll = rng.random()
        if roll < 0.55:
            side = rng.choice((Side.BUY, Side.SELL))
            kind = rng.random()
            order_type, tif, p, post_only, display, stp = OrderType.LIMIT, TimeInForce.GTC, price(), False, 0, \
                SelfTradePrevention.NONE
            if kind < 0.10:
                tif = TimeInForce.IOC
            elif kind < 0.16:
                tif = TimeInForce.FOK
            elif kind < 0.20:
                order_type, p = OrderType.MARKET, None
                tif = rng.choice((TimeInForce.IOC, TimeInForce.IOC, TimeInForce.FOK))
            elif kind < 0.26:
                post_only = True
            elif kind < 0.32:
                tif = TimeInForce.DAY
            if rng.random() < odd:  # unsupported or invalid features
                pick = rng.randrange(6)
                if pick == 0 and rng.random() < 0.5:
                    display = lot  # a reserve when qty > lot; unsupported even when it equals qty
                elif pick == 1:
                    stp = rng.choice((SelfTradePrevention.CANCEL_NEWEST, SelfTradePrevention.CANCEL_OLDEST))
                elif pick == 2:
                    post_only = True
                    tif = TimeInForce.IOC
                elif pick == 3:
                    tif = TimeInForce.GTC if order_type is OrderType.MARKET else tif
                    p = p if order_type is OrderType.LIMIT else center
                elif pick == 4:
                    side = "up"  # type: ignore[assignment]
                else:
                    display = 10**9
            oid = next_id if rng.random() > odd else rng.choice((next_id - 1, 0, "x"))
            if oid == next_id:
                next_id += 1
                ids.append(oid)
            account = rng.choice(ACCOUNTS) if rng.random() > odd / 3 else "BAD ACCOUNT"
            q = qty()
            out.append(NewOrder(symbol, oid, account, side, p, q, order_type=order_type, tif=tif,
                                post_only=post_only, display_qty=display, stp=stp))
        elif roll < 0.77:
            out.append(CancelOrder(symbol, known_id()))
        elif roll < 0.96:
            pick = rng.random()
            if pick < 0.15:  # a cut: the host makes it a cancel or a quantity-down modify of what is open
                out.append(ModifyOrder(symbol, known_id(), qty=qty(), price=price() if rng.random() < odd else None,
                                       reduce=True))
            else:
                new_qty = qty() if pick < 0.7 else None
                new_price = price() if pick > 0.45 else None
                out.append(ModifyOrder(symbol, known_id(), qty=new_qty, price=new_price))
        elif roll < 0.985:
            out.append(EndOfDay(symbol))
        else:
            if rng.random() < 0.5:
                center = base + tick * rng.randint(-3, 3)
            out.append(SetBasePrice(symbol, center if rng.random() > odd else 0))
    return out


def realistic_commands(rng: random.Random, count: int, instrument: Instrument, *, base: int = 100_000,
                       resting_target: int = 600) -> list[Command]:
    """A market-maker-like stream: mostly adds near the touch and cancels of resting orders,
    some modifies, and aggressive orders that take one or a few levels (for cycle figures)."""
    tick, lot = instrument.tick_size, instrument.lot_size
    symbol = instrument.symbol
    out: list[Command] = [SetBasePrice(symbol, base)]
    live: list[int] = []
    next_id = 1
    mid = 0  # in ticks from base
    for _ in range(count - 1):
        mid += rng.choice((-1, 0, 0, 0, 0, 1)) if abs(mid) < 200 else (-1 if mid > 0 else 1)
        roll = rng.random()
        pressure = len(live) / resting_target
        if roll < 0.50 - 0.15 * (pressure - 1):
            side = rng.choice((Side.BUY, Side.SELL))
            aggressive = rng.random() < 0.12
            if aggressive:
                offset = rng.randint(0, 4)
                p = base + tick * (mid + offset if side is Side.BUY else mid - offset)
                tif = TimeInForce.IOC if rng.random() < 0.5 else TimeInForce.GTC
            else:
                depth = int(rng.expovariate(0.25)) + 1
                p = base + tick * (mid - depth if side is Side.BUY else mid + depth)
                tif = TimeInForce.GTC
            out.append(NewOrder(symbol, next_id, rng.choice(ACCOUNTS), side, p, lot * rng.randint(1, 10), tif=tif))
            live.append(next_id)
            next_id += 1
        elif roll < 0.90 and live:
            oid = live.pop(rng.randrange(len(live)))
            out.append(CancelOrder(symbol, oid))
        elif live:
            oid = live[rng.randrange(len(live))]
            if rng.random() < 0.7:
                out.append(ModifyOrder(symbol, oid, qty=lot * rng.randint(1, 5)))
            else:
                out.append(ModifyOrder(symbol, oid, price=base + tick * (mid + rng.randint(-6, 6))))
        else:
            out.append(CancelOrder(symbol, next_id + 1000))
    return out


# -- checking ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    """The first command whose events differ between the gateware and the reference engine."""

    index: int
    command: Command
    expected: list[Event]
    got: list[Event]

    def __str__(self) -> str:
        lines = [f"first mismatch at command #{self.index}: {command_to_json(self.command)}", "  reference engine:"]
        lines += [f"    {event_to_json(e)}" for e in self.expected] or ["    (no events)"]
        lines += ["  gateware:"]
        lines += [f"    {event_to_json(e)}" for e in self.got] or ["    (no events)"]
        return "\n".join(lines)


def reference_events(commands: Iterable[Command], instrument: Instrument, config: MatcherConfig) -> list[list[Event]]:
    """The reference engine's events per command, with the hardware profile of ``config``."""
    book = OrderBook(instrument, config.profile())
    return [book.process(c) for c in commands]


def first_mismatch(commands: Sequence[Command], expected: Sequence[list[Event]],
                   got: Sequence[list[Event]]) -> Mismatch | None:
    """The first command whose event lists differ (events compared one by one), or None."""
    for index, command in enumerate(commands):
        want = expected[index] if index < len(expected) else []
        have = got[index] if index < len(got) else []
        if len(want) != len(have) or any(a != b for a, b in zip(want, have, strict=False)):
            return Mismatch(index, command, list(want), list(have))
    return None


# -- sessions ------------------------------------------------------------------------------------------


@dataclass
class MatcherSession:
    """A driver plus the log of every record exchanged with the gateware.

    ``sent[i]`` is the i-th command record and ``bursts[i]`` its event records, so the whole
    run can be replayed back to back and must give the same records again.
    """

    instrument: Instrument
    config: MatcherConfig = field(default_factory=MatcherConfig)
    driver: MatcherDriver = field(init=False)
    sent: list[CommandRecord] = field(default_factory=list)
    bursts: list[list[EventRecord]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # per record: which engine command made it

    def __post_init__(self) -> None:
        self.driver = MatcherDriver(self.instrument, self.config)

    def log(self, command: Command, record: CommandRecord, burst: list[EventRecord]) -> None:
        self.sent.append(record)
        self.bursts.append(burst)
        self.kinds.append(command_kind(command, burst))


def command_kind(command: Command, burst: list[EventRecord]) -> str:
    """A label for cycle statistics: add, cross_<k>lvl (k = levels traded), cancel, modify_*..."""
    if isinstance(command, NewOrder):
        fills = [r for r in burst if r.kind == RecordKind.FILL]
        if not fills:
            if burst and burst[0].kind == RecordKind.REJECTED:
                return "reject"
            return "add" if burst[-1].kind == RecordKind.ADDED else "add_no_rest"
        levels = len({r.price for r in fills})
        return f"cross_{min(levels, 4)}{'+' if levels > 4 else ''}lvl"
    if isinstance(command, (CancelOrder, EndOfDay)):
        return "cancel" if burst[0].kind == RecordKind.CANCELLED else "reject"
    if isinstance(command, ModifyOrder):
        kind = burst[0].kind
        if kind == RecordKind.REDUCED:
            return "modify_down"
        if kind == RecordKind.CANCELLED:
            return "cancel"  # a cut of all that was open
        if kind == RecordKind.REMOVED:
            return "modify_cross" if any(r.kind == RecordKind.FILL for r in burst) else "modify_requeue"
        return "reject"
    return "set_base"


# -- directed scenarios -------------------------------------------------------------------------------


def directed_scenarios(config: MatcherConfig, instrument: Instrument, base: int = 100_000) -> dict[str, list[Command]]:
    """Named command lists for the directed tests; each starts from an empty book.

    Every scenario is checked against the reference engine like the random streams; the
    benches add scenario-specific checks (cycle counts, record counts).
    """
    sym, tick, lot = instrument.symbol, instrument.tick_size, instrument.lot_size
    window = config.window_ticks
    buy, sell = Side.BUY, Side.SELL
    ids = iter(range(1, 1_000_000))

    def new(side: Side, ticks: int, qty: int, account: str = "MM1", **kw: object) -> NewOrder:
        return NewOrder(sym, next(ids), account, side, base + ticks * tick, qty * lot, **kw)  # type: ignore[arg-type]

    def start() -> list[Command]:
        return [SetBasePrice(sym, base)]

    out: dict[str, list[Command]] = {}

    s = start()
    s += [new(sell, 5, 10, "A"), new(sell, 5, 20, "B"), new(sell, 5, 30, "C"), new(sell, 6, 5, "D")]
    s += [new(buy, 5, 15, "T"), new(buy, 5, 40, "T"), new(buy, 6, 100, "T", tif=TimeInForce.IOC)]
    out["priority_within_level"] = s

    s = start()
    s += [new(sell, 3, 100, "A"), new(buy, 3, 10, "T"), new(buy, 3, 25, "T"), new(buy, 4, 64, "T"),
          new(buy, 3, 2, "T", tif=TimeInForce.IOC), new(buy, 3, 10, "T")]
    out["partial_fills"] = s

    s = start()
    levels = min(window - 2, 40)
    for k in range(levels):
        s += [new(sell, 1 + k, 1 + k % 3, "M")] + ([new(sell, 1 + k, 2, "N")] if k % 4 == 0 else [])
    s += [new(buy, levels, 10_000, "T", tif=TimeInForce.IOC)]
    for k in range(levels):
        s += [new(buy, -1 - k, 1, "M")]
    s += [new(sell, -levels, 10_000, "T")]
    out["sweep_many_levels"] = s

    s = start()
    orders = [new(buy, -2, 10 + k, "M") for k in range(6)]
    s += orders
    s += [CancelOrder(sym, orders[0].order_id), CancelOrder(sym, orders[3].order_id),
          CancelOrder(sym, orders[5].order_id), new(sell, -2, 1000, "T", tif=TimeInForce.IOC)]
    out["cancel_head_middle_tail"] = s

    # A cancel straight followed by an order crossing its level: the sweep chases the next-pointers the
    # cancel's unlink is still writing (the fetcher must read through a write of the same cycle). The
    # cancelled order's predecessor is the level's head, whose successor the fetcher reads as the
    # crossing order executes. That head must not be handle 0: a new order's record carries handle 0,
    # and the matcher's handle hazard would then stall it by coincidence, hiding a missing read-through.
    s = start()
    for victim in (0, 1, 3):  # head, middle, tail of the level as it stands
        level = [new(sell, 2, 4, "M") for _ in range(4)]
        s += level + [new(sell, 3, 4, "N")]
        s += [CancelOrder(sym, level[victim].order_id), new(buy, 3, 40, "T", tif=TimeInForce.IOC)]
    level = [new(buy, -2, 3, "M") for _ in range(5)]
    s += level + [CancelOrder(sym, level[2].order_id), CancelOrder(sym, level[1].order_id),
                  new(sell, -2, 9, "T", tif=TimeInForce.IOC), new(sell, -2, 9, "T", tif=TimeInForce.IOC)]
    out["cancel_then_cross"] = s

    s = start()
    for side in (buy, sell):
        group = [new(side, 2 if side is sell else -2, 5, "M") for _ in range(3)]
        s += group
        s += [CancelOrder(sym, o.order_id) for o in group[::-1]]
    inner_bid, outer_bid, inner_ask, outer_ask = new(buy, -1, 1), new(buy, -3, 1), new(sell, 1, 1), new(sell, 4, 1)
    s += [inner_bid, outer_bid, inner_ask, outer_ask]
    s += [CancelOrder(sym, inner_bid.order_id), CancelOrder(sym, inner_ask.order_id)]
    s += [new(sell, -3, 1, "T", tif=TimeInForce.IOC), new(buy, 4, 1, "T", tif=TimeInForce.IOC)]
    out["best_level_empties"] = s

    # The best level emptied (cancel, or a modify that moves the order away) while the output FIFO
    # is nearly full: with a stalling sink the core holds (``go`` low) in the cycle after EXEC
    # started the walker, which runs on meanwhile; the next best must still be the level right
    # behind the emptied one, not the one after it. Many repeats, so a random stall hits it.
    s = start()
    for k in range(40):
        side, sign = (buy, -1) if k % 2 == 0 else (sell, 1)
        other = sell if side is buy else buy
        near = [new(side, sign * (1 + j), 1, "M") for j in range(4)]
        s += near
        # Records one a cycle (orders that cannot trade and do not rest) fill the output FIFO
        # first; their number varies so the cancel meets the core's hold at every phase.
        s += [new(side, sign * 8, 1, "X", tif=TimeInForce.IOC) for _ in range(4 + k % 7)]
        if k % 4 < 2:
            s += [CancelOrder(sym, near[0].order_id)]
        else:
            s += [ModifyOrder(sym, near[0].order_id, price=base + sign * 6 * tick)]
        s += [new(other, sign * 4, 1, "T", tif=TimeInForce.IOC)]
        s += [new(other, sign * 6, 10, "T", tif=TimeInForce.IOC)]
    out["best_level_empties_held"] = s

    s = start()
    capacity = config.max_orders
    for k in range(min(capacity, 64) + 2):
        s += [new(buy if k % 2 else sell, (-1 - k % 8) if k % 2 else (1 + k % 8), 1, "M")]
    if capacity <= 64:
        s += [new(buy, 3, 3, "T"), new(sell, -1, 2, "T"), new(buy, -5, 1, "T")]
    out["book_full"] = s

    s = start()
    low, high = new(buy, -window, 1), new(sell, window - 1, 1)
    s += [low, high, new(buy, -window - 1, 1), new(sell, window, 1),
          new(buy, window - 1, 1, tif=TimeInForce.IOC), new(sell, -window, 1, tif=TimeInForce.IOC),
          SetBasePrice(sym, base + tick), new(buy, 0, 1),
          ModifyOrder(sym, high.order_id, price=base + window * tick),
          ModifyOrder(sym, high.order_id, price=base - window * tick),
          ModifyOrder(sym, low.order_id, price=base + (window - 1) * tick)]
    out["window_edges"] = s

    s = start()
    a, b, c = new(sell, 2, 10, "A"), new(sell, 2, 10, "B"), new(sell, 2, 10, "C")
    s += [a, b, c, ModifyOrder(sym, a.order_id, qty=4 * lot), ModifyOrder(sym, b.order_id, qty=20 * lot),
          ModifyOrder(sym, c.order_id, qty=10 * lot), ModifyOrder(sym, c.order_id, price=base + tick),
          new(buy, -1, 7, "M"), ModifyOrder(sym, a.order_id, price=base - tick),
          new(buy, 2, 50, "T", tif=TimeInForce.IOC)]
    out["modify_priority"] = s

    s = start()
    s += [new(sell, 1, 5, "A"), new(sell, 2, 5, "B"), new(sell, 3, 5, "C"),
          new(buy, 2, 11, "T", tif=TimeInForce.FOK), new(buy, 3, 11, "T", tif=TimeInForce.FOK),
          new(buy, 1, 1, "T", tif=TimeInForce.FOK), new(sell, -1, 1, "T", tif=TimeInForce.FOK),
          NewOrder(sym, next(ids), "T", buy, None, 3 * lot, order_type=OrderType.MARKET, tif=TimeInForce.FOK),
          NewOrder(sym, next(ids), "T", buy, None, 30 * lot, order_type=OrderType.MARKET, tif=TimeInForce.IOC),
          NewOrder(sym, next(ids), "T", sell, None, 3 * lot, order_type=OrderType.MARKET, tif=TimeInForce.IOC)]
    out["fok_and_market"] = s

    s = start()
    p1 = new(buy, -1, 5, "P", post_only=True)
    s += [new(sell, 1, 5, "A"), p1, new(buy, 1, 5, "P", post_only=True),
          ModifyOrder(sym, p1.order_id, price=base + tick), new(buy, -2, 5, "Q"), SetBasePrice(sym, base + 5 * tick),
          EndOfDay(sym)]
    out["post_only_and_set_base"] = s

    s = start()
    day = [new(buy, -1 - k % 3, 2, "D", tif=TimeInForce.DAY) for k in range(5)]
    s += day[::-1] + [new(sell, 1, 2, "G"), EndOfDay(sym), new(sell, -1, 1, "T", tif=TimeInForce.IOC)]
    out["end_of_day"] = s

    # Cuts (ModifyOrder.reduce): the host turns each into a quantity-down modify or a cancel of what is open.
    s = start()
    a, b, c = new(sell, 2, 10, "A"), new(sell, 2, 10, "B"), new(sell, 3, 4, "C")
    s += [a, b, c, ModifyOrder(sym, a.order_id, qty=3 * lot, reduce=True),  # 7 left, still first in its level
          new(buy, 2, 5, "T", tif=TimeInForce.IOC),  # takes 5 of a's 7
          ModifyOrder(sym, a.order_id, qty=2 * lot, reduce=True),  # the 2 left: a is cancelled
          ModifyOrder(sym, b.order_id, qty=20 * lot, reduce=True),  # more than open: cancelled
          ModifyOrder(sym, c.order_id, qty=lot, price=base, reduce=True),  # a cut carries no price: refused
          ModifyOrder(sym, c.order_id, qty=0, reduce=True), ModifyOrder(sym, a.order_id, qty=lot, reduce=True),
          ModifyOrder(sym, c.order_id, qty=lot, reduce=True), new(buy, 3, 10, "T", tif=TimeInForce.IOC)]
    out["cuts"] = s
    return out


def perf_scenarios(instrument: Instrument, base: int = 100_000, repeat: int = 60) -> dict[str, list[Command]]:
    """Streams of one command kind each, for cycle figures by kind (``make bench-matcher``)."""
    sym, tick, lot = instrument.symbol, instrument.tick_size, instrument.lot_size
    buy, sell = Side.BUY, Side.SELL
    ids = iter(range(1, 10_000_000))
    out: dict[str, list[Command]] = {}

    def new(side: Side, ticks: int, qty: int = 1, **kw: object) -> NewOrder:
        return NewOrder(sym, next(ids), "MM", side, base + ticks * tick, qty * lot, **kw)  # type: ignore[arg-type]

    adds = [new(buy, -1 - k % 50) for k in range(repeat * 4)]
    # Cancels oldest first: each level keeps orders until its last one goes.
    out["add_then_cancel"] = [SetBasePrice(sym, base)] + adds + [CancelOrder(sym, o.order_id) for o in adds]
    ladder = [new(buy, -1 - k) for k in range(repeat)]
    # One order per level, cancelled best first: every cancel empties the best level.
    out["cancel_best_level"] = [SetBasePrice(sym, base)] + ladder + [CancelOrder(sym, o.order_id) for o in ladder]
    for levels in (1, 2, 4, 8, 16):
        s: list[Command] = [SetBasePrice(sym, base)]
        for _ in range(repeat):
            s += [new(sell, 1 + k) for k in range(levels)] + [new(buy, levels, levels, tif=TimeInForce.IOC)]
        out[f"cross_{levels}_levels"] = s
    s = [SetBasePrice(sym, base)]
    for _ in range(repeat):
        s += [new(sell, 1, 1) for _ in range(8)] + [new(buy, 1, 8, tif=TimeInForce.IOC)]
    out["cross_8_orders_one_level"] = s
    resting = [new(buy, -1 - k % 20, 10) for k in range(repeat)]
    s = [SetBasePrice(sym, base)] + resting
    s += [ModifyOrder(sym, o.order_id, qty=5 * lot) for o in resting]
    s += [ModifyOrder(sym, o.order_id, qty=8 * lot) for o in resting]
    s += [ModifyOrder(sym, o.order_id, price=base - 30 * tick) for o in resting]
    out["modify"] = s
    return out


# -- cycle figures ------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """Handshake cycles of a back-to-back run: ``accepted[i]`` for command record i, and every
    event record with the cycle it left the gateware."""

    accepted: list[int] = field(default_factory=list)
    events: list[tuple[int, EventRecord]] = field(default_factory=list)

    def bursts(self) -> list[list[EventRecord]]:
        out: list[list[EventRecord]] = []
        current: list[EventRecord] = []
        for _, record in self.events:
            current.append(record)
            if record.last:
                out.append(current)
                current = []
        if current:
            out.append(current)
        return out

    def last_cycles(self) -> list[int]:
        """The cycle each burst ended."""
        return [cycle for cycle, record in self.events if record.last]

    def first_cycles(self) -> list[int]:
        """The cycle each burst started."""
        out = []
        start = True
        for cycle, record in self.events:
            if start:
                out.append(cycle)
            start = record.last
        return out


def cycle_stats(kinds: Sequence[str], bursts: Sequence[list[EventRecord]], result: StreamResult) -> dict:
    """Cycle figures of a back-to-back run with an always-ready sink.

    ``cycles_per_msg``: cycles from the first command record accepted to the last event record
    out, divided by the number of command records. ``by_kind``: the cycles each command adds to
    the run (its last record's cycle minus the previous command's), by command kind.
    ``first_event_latency``: accept to first event record, as queued in the stream.
    ``sweep_cycles_per_fill``: for commands with more than one fill, cycles from their first to
    their last fill record per fill after the first.
    """
    lasts = result.last_cycles()
    firsts = result.first_cycles()
    total = lasts[-1] + 1 - result.accepted[0]
    per_kind: dict[str, list[int]] = defaultdict(list)
    previous = result.accepted[0] - 1
    for index, kind in enumerate(kinds):
        per_kind[kind].append(lasts[index] - previous)
        previous = lasts[index]
    sweep_cycles = sweep_fills = 0
    cursor = 0
    for burst in bursts:
        cycles = [result.events[cursor + i][0] for i, r in enumerate(burst) if r.kind == RecordKind.FILL]
        cursor += len(burst)
        if len(cycles) > 1:
            sweep_cycles += cycles[-1] - cycles[0]
            sweep_fills += len(cycles) - 1
    latencies = [f - a for f, a in zip(firsts, result.accepted, strict=True)]
    return {
        "records": len(kinds),
        "cycles": total,
        "cycles_per_msg": total / len(kinds),
        "fills": sum(1 for burst in bursts for r in burst if r.kind == RecordKind.FILL),
        "by_kind": {k: {"n": len(v), "mean": sum(v) / len(v), "max": max(v)} for k, v in sorted(per_kind.items())},
        "first_event_latency": {"mean": sum(latencies) / len(latencies), "max": max(latencies)},
        "sweep_cycles_per_fill": sweep_cycles / sweep_fills if sweep_fills else None,
    }


# -- Amaranth's own simulator ----------------------------------------------------------------------------


def run_pysim(config: MatcherConfig, instrument: Instrument, commands: Sequence[Command], *, stall: float = 0.0,
              seed: int = 0, stream: bool = False, vcd: str | None = None, window: RecentOrderIds | None = None,
              ) -> tuple[list[list[Event]], MatcherSession, StreamResult | None]:
    """Run ``commands`` through the host driver and the matcher in ``amaranth.sim`` (no HDL
    simulator needed; slow, so for small configurations and unit tests).

    Returns the events per command, the session (every record exchanged) and, with ``stream``,
    the result of replaying the session's records back to back from reset (sink always ready).
    ``window``: the driver's duplicate rule remembers ids in it (``MatcherDriver.remember_ids``).
    """
    from amaranth.hdl import ResetInserter, Signal
    from amaranth.sim import Simulator

    from hdl.matcher import Matcher

    dut = Matcher(config)
    reset = Signal()
    top = ResetInserter(reset)(dut)
    session = MatcherSession(instrument, config)
    if window is not None:
        session.driver.remember_ids(window)
    rng = random.Random(seed)
    events: list[list[Event]] = []
    replay = StreamResult()

    async def one_record(ctx, record: CommandRecord) -> list[EventRecord]:
        ctx.set(dut.i.payload.as_value(), config.command_word(record))
        ctx.set(dut.i.valid, 1)
        burst: list[EventRecord] = []
        sent = False
        for _ in range(100_000):
            ready = rng.random() >= stall
            ctx.set(dut.o.ready, ready)
            took = not sent and ctx.get(dut.i.ready)
            out_valid = ready and ctx.get(dut.o.valid)
            word = ctx.get(dut.o.payload.as_value())
            await ctx.tick()
            if took:
                sent = True
                ctx.set(dut.i.valid, 0)
            if out_valid:
                burst.append(config.event_from_word(word))
                if burst[-1].last:
                    return burst
        raise AssertionError(f"no end of burst for {record}")

    async def back_to_back(ctx) -> None:
        ctx.set(dut.o.ready, 1)
        words = [config.command_word(r) for r in session.sent]
        index = lasts = cycle = 0
        while lasts < len(words):
            ctx.set(dut.i.valid, index < len(words))
            if index < len(words):
                ctx.set(dut.i.payload.as_value(), words[index])
            took = index < len(words) and ctx.get(dut.i.ready)
            out_valid = ctx.get(dut.o.valid)
            word = ctx.get(dut.o.payload.as_value())
            await ctx.tick()
            if took:
                replay.accepted.append(cycle)
                index += 1
            if out_valid:
                record = config.event_from_word(word)
                replay.events.append((cycle, record))
                lasts += record.last
            cycle += 1
            if cycle > 100 * (len(words) + 100):
                raise AssertionError("back-to-back replay stuck")

    async def bench(ctx) -> None:
        for command in commands:
            steps = session.driver.steps(command)
            try:
                record = next(steps)
                while True:
                    burst = await one_record(ctx, record)
                    session.log(command, record, burst)
                    record = steps.send(burst)
            except StopIteration as stop:
                events.append(stop.value)
        if stream and session.sent:
            ctx.set(dut.i.valid, 0)
            ctx.set(reset, 1)  # the replay starts from an empty book, like the first run
            await ctx.tick()
            ctx.set(reset, 0)
            await back_to_back(ctx)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return events, session, (replay if stream else None)


# -- the ``sim`` backend of ``matchwire match`` --------------------------------------------------------


_DESIGN_SOURCES = ("hdl/matcher.py", "hdl/matcher_levels.py", "hdl/matcher_alloc.py", "hdl/formats.py",
                   "exchange/matcher_format.py", "exchange/layout.py")


def matcher_design(config: MatcherConfig, name: str | None = None) -> VerilogDesign:
    """The matcher of ``config`` as Verilog (a ``sim.runner.VerilogDesign``), converted once.

    Converting the default matcher takes seconds, so the result is remembered under a key made
    of the matcher's sources, the Amaranth version and the configuration.
    """
    import hashlib
    import json
    from pathlib import Path

    import amaranth

    from sim.runner import DEFAULT_BUILD_ROOT, REPO_ROOT, VerilogDesign, write_verilog

    name = name or f"matcher_n{config.max_orders}_w{config.window_ticks}_q{config.qty_width}"
    key = hashlib.sha256(json.dumps([amaranth.__version__, config_params(config), name]).encode())
    for source in _DESIGN_SOURCES:
        key.update((REPO_ROOT / source).read_bytes())
    index = Path(DEFAULT_BUILD_ROOT) / "matcher-designs" / f"{key.hexdigest()[:24]}.json"
    if index.exists():
        entry = json.loads(index.read_text())
        design = VerilogDesign(name=entry["name"], path=Path(entry["path"]), digest=entry["digest"])
        if design.path.exists():
            return design
    from hdl.matcher import Matcher

    design = write_verilog(Matcher(config), name)
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps({"name": design.name, "path": str(design.path), "digest": design.digest}))
    return design


def config_params(config: MatcherConfig) -> dict:
    """The size parameters of ``config`` as a JSON-able dict (bench parameters)."""
    return {"max_orders": config.max_orders, "window_ticks": config.window_ticks, "qty_width": config.qty_width,
            "id_width": config.id_width, "group_width": config.group_width}


class SimBook:
    """A book whose matching runs in the simulated gateware (Icarus or Verilator).

    The driver runs here; the simulator runs the bench ``sim.benches.test_matcher_server`` in a
    separate process (started on first use, through :func:`sim.runner.run_cocotb`), which pumps
    each command record through the gateware and answers with its event records over a Unix
    socket. ``auto_window`` places the price window at the first limit price (silently) when
    the script does not set it.
    """

    def __init__(self, instrument: Instrument, config: MatcherConfig | None = None, simulator: str = "icarus", *,
                 auto_window: bool = True, startup_timeout: float = 1800.0) -> None:
        self.instrument = instrument
        self.symbol = instrument.symbol
        self.config = config or MatcherConfig()
        self.simulator = simulator
        self.session = MatcherSession(instrument, self.config)
        self.session.driver.auto_window = auto_window
        self.startup_timeout = startup_timeout
        self.latencies: list[int] = []
        self._stream = None
        self._sock = None
        self._thread = None
        self._result = None
        self._error: BaseException | None = None
        self._closed = False

    # -- simulator process ----------------------------------------------------------------------

    def _start(self) -> None:
        import os
        import shutil
        import socket
        import tempfile
        import threading
        import time

        from sim.runner import run_cocotb

        directory = tempfile.mkdtemp(prefix="matchwire-sim-")
        path = os.path.join(directory, "matcher.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(0.5)
        done = threading.Event()
        cfg = self.config
        design = matcher_design(cfg)

        def simulate() -> None:
            try:
                self._result = run_cocotb(design, name=design.name, test_module="sim.benches.test_matcher_server",
                                          simulator=self.simulator,
                                          params={"config": config_params(cfg), "socket": path}, check=False)
            except BaseException as exc:  # reported to the caller by _start/_call
                self._error = exc
            finally:
                done.set()

        self._thread = threading.Thread(target=simulate, name=f"sim-{self.symbol}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                try:
                    conn, _ = listener.accept()
                    break
                except TimeoutError:
                    if done.is_set() or time.monotonic() > deadline:
                        raise RuntimeError(self._failure("the simulation did not start")) from self._error
        finally:
            listener.close()
            # The path only served to connect: a simulated card per book per run left a directory in /tmp.
            shutil.rmtree(directory, ignore_errors=True)
        conn.settimeout(None)
        self._sock = conn
        self._stream = conn.makefile("rwb")

    def _failure(self, what: str) -> str:
        if self._error is not None:
            return f"{what}: {self._error}"
        if self._result is not None:
            from sim.runner import _tail

            return f"{what}; simulator log {self._result.log_file}:\n{_tail(self._result.log_file)}"
        return what

    def _call(self, request: dict) -> dict:
        import json

        if self._stream is None:
            self._start()
        self._stream.write(json.dumps(request).encode() + b"\n")
        self._stream.flush()
        line = self._stream.readline()
        if not line:
            self._thread.join(timeout=30)
            raise RuntimeError(self._failure("the simulation ended unexpectedly"))
        return json.loads(line)

    def _run(self, record: CommandRecord) -> list[EventRecord]:
        reply = self._call({"op": "run", "word": self.config.command_word(record)})
        self.latencies.append(reply["latency"])
        return [self.config.event_from_word(word) for word in reply["burst"]]

    # -- the Book protocol ----------------------------------------------------------------------

    def process(self, command: Command) -> list[Event]:
        """Apply one command through the simulated gateware; events exactly as the engine's."""
        steps = self.session.driver.steps(command)
        try:
            record = next(steps)
            while True:
                burst = self._run(record)
                self.session.log(command, record, burst)
                record = steps.send(burst)
        except StopIteration as stop:
            return stop.value

    def bbo(self) -> tuple[int | None, int, int | None, int]:
        return self.session.driver.bbo()

    def depth(self, levels: int | None = None) -> dict[str, list[tuple[int, int, int]]]:
        return self.session.driver.depth(levels)

    def remember_ids(self, window: RecentOrderIds) -> None:
        """The duplicate rule's ids in ``window`` (see :meth:`host.matcher_driver.MatcherDriver.remember_ids`)."""
        self.session.driver.remember_ids(window)

    # -- figures and shutdown -----------------------------------------------------------------

    def bench(self) -> dict | None:
        """Replay every record so far back to back in the gateware; cycle figures (or None if
        nothing reached the gateware)."""
        if not self.session.sent:
            return None
        reply = self._call({"op": "bench"})
        result = StreamResult(reply["accepted"], [(c, self.config.event_from_word(w)) for c, w in reply["events"]])
        figures = cycle_stats(self.session.kinds, self.session.bursts, result)
        figures["latency_isolated"] = {"mean": sum(self.latencies) / len(self.latencies), "max": max(self.latencies)}
        return figures

    def close(self) -> None:
        """End the simulation (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._stream is not None:
            try:
                self._call({"op": "quit"})
            except (OSError, RuntimeError, ValueError):
                pass
            self._stream.close()
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=60)


class SimBookFactory:
    """Book factory of the ``sim`` backend: one simulated matcher per instrument."""

    def __init__(self, simulator: str, config: MatcherConfig | None = None) -> None:
        self.simulator = simulator
        self.config = config or MatcherConfig()
        self.books: list[SimBook] = []

    def __call__(self, instrument: Instrument) -> SimBook:
        book = SimBook(instrument, self.config, self.simulator)
        self.books.append(book)
        return book

    def close(self) -> None:
        for book in self.books:
            book.close()


_FACTORIES: list[SimBookFactory] = []


def _close_all() -> None:
    for factory in _FACTORIES:
        factory.close()


def sim_backend(options: object) -> SimBookFactory:
    """The ``sim`` backend (``actors.backends``): books matched by the simulated gateware.

    ``options.simulator`` picks Icarus or Verilator; ``options.extra["matcher_config"]`` may
    give a :class:`MatcherConfig` (default: 4096 orders, +-1024 ticks).
    """
    import atexit

    from actors.backends import BackendUnavailable
    from sim.runner import SUPPORTED_SIMULATORS, simulator_available

    simulator = getattr(options, "simulator", "icarus")
    if simulator not in SUPPORTED_SIMULATORS:
        raise BackendUnavailable(f"unknown simulator {simulator!r}; choose from {', '.join(SUPPORTED_SIMULATORS)}")
    if not simulator_available(simulator):
        raise BackendUnavailable(f"simulator {simulator} is not installed here (`make setup` installs both)")
    extra = getattr(options, "extra", {}) or {}
    factory = SimBookFactory(simulator, extra.get("matcher_config"))
    if not _FACTORIES:
        atexit.register(_close_all)
    _FACTORIES.append(factory)
    return factory


def bench_report(factory: SimBookFactory) -> str:
    """The ``--bench`` lines of the sim backend: simulated cycles per command record, overall and
    by kind, for the books of the latest replay round (one per symbol)."""
    latest: dict[str, SimBook] = {}
    for book in factory.books:
        latest[book.symbol] = book
    totals = {"cycles": 0, "records": 0}
    kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    lines = []
    for symbol, book in sorted(latest.items()):
        figures = book.bench()
        if figures is None:
            continue
        totals["cycles"] += figures["cycles"]
        totals["records"] += figures["records"]
        for kind, row in figures["by_kind"].items():
            kinds[kind][0] += row["n"]
            kinds[kind][1] += row["n"] * row["mean"]
        sweep = figures["sweep_cycles_per_fill"]
        lines.append(f"  {symbol}: records={figures['records']} cycles={figures['cycles']} "
                     f"cycles_per_msg={figures['cycles_per_msg']:.3f} "
                     f"first_event_latency={figures['latency_isolated']['mean']:.2f} "
                     f"(max {figures['latency_isolated']['max']}) "
                     f"sweep_cycles_per_fill={'n/a' if sweep is None else f'{sweep:.3f}'}")
    factory.close()
    if not totals["records"]:
        return "cycles_per_msg=nan (no command reached the gateware)"
    head = [f"cycles_per_msg={totals['cycles'] / totals['records']:.3f}",
            "cycles_by_kind " + " ".join(f"{k}={total / n:.2f}(n={n})" for k, (n, total) in sorted(kinds.items()))]
    return "\n".join(head + lines)


# -- command line: the large runs behind ``make diff-million`` and ``make bench-matcher`` -----------------


def _run_bench(config: MatcherConfig, testcase: str, simulator: str, params: dict) -> dict:
    import json
    import tempfile
    from pathlib import Path

    from sim.runner import run_cocotb

    design = matcher_design(config)
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        run_cocotb(design, name=design.name, test_module="sim.benches.test_matcher_bench", testcase=testcase,
                   simulator=simulator, params={"config": config_params(config), "stats": str(stats), **params})
        return json.loads(stats.read_text())


def diff_main(total: int, simulator: str, chunk: int, seed: int) -> int:
    """Differential run of ``total`` random commands: half on a small book (book full, window
    edges), half on the default one, in chunks of ``chunk`` commands per stream."""
    import time

    small = MatcherConfig(max_orders=16, window_ticks=16, group_width=8)
    plans = [(small, {"symbol": "QQ", "tick_size": 5, "lot_size": 10, "band": [99_000, 101_000]}),
             (MatcherConfig(), {"symbol": "XYZ"})]
    done = 0
    started = time.monotonic()
    round_ = 0
    while done < total:
        config, instrument = plans[round_ % 2]
        streams = max(1, min(10, (total - done) // chunk))
        count = min(chunk, total - done)
        figures = _run_bench(config, "differential", simulator,
                             {"instrument": instrument, "seed": seed + round_, "streams": streams, "commands": count,
                              "stall": 0.3, "idle": 0.2})
        done += sum(s["commands"] for s in figures["streams"])
        round_ += 1
        print(f"{done}/{total} commands identical ({simulator}, {time.monotonic() - started:.0f} s)", flush=True)
    print(f"diff: {done} random commands through gateware and reference engine, no mismatch")
    return 0


def bench_main(simulator: str, commands: int, seed: int) -> int:
    """Cycle figures: a realistic stream and the directed scenarios on the default book."""
    config = MatcherConfig()
    realistic = _run_bench(config, "realistic", simulator,
                           {"instrument": {"symbol": "XYZ"}, "seed": seed, "streams": 1, "commands": commands,
                            "stall": 0.2, "idle": 0.1})["streams"][0]
    directed = _run_bench(config, "directed", simulator, {"instrument": {"symbol": "XYZ"}, "seed": seed,
                                                          "stall": 0.2, "idle": 0.1})["streams"]
    print(f"realistic stream ({simulator}): {realistic['commands']} commands, {realistic['records']} matcher "
          f"records, {realistic['cycles']} cycles")
    print(f"cycles_per_msg={realistic['cycles_per_msg']:.3f} workload=realistic-mix")
    print(f"first_event_latency mean={realistic['first_event_latency']['mean']:.2f} "
          f"max={realistic['first_event_latency']['max']} (back to back, queueing included); "
          f"isolated max={realistic['max_latency_isolated']}")
    print("cycles added to the stream, by command kind:")
    for kind, row in realistic["by_kind"].items():
        print(f"  {kind:16s} n={row['n']:6d} mean={row['mean']:6.2f} max={row['max']}")
    perf = _run_bench(config, "perf", simulator, {"instrument": {"symbol": "XYZ"}, "seed": seed, "stall": 0.0,
                                                  "idle": 0.0})["streams"]
    print("one kind of command at a time (cycles added to a back-to-back stream; isolated first-event latency):")
    for stream in perf:
        for kind, row in stream["by_kind"].items():
            if kind in ("set_base", "reject"):
                continue
            latency = stream["latency_by_kind"].get(kind, {})
            print(f"  {stream['name']:26s} {kind:16s} n={row['n']:4d} cycles={row['mean']:6.2f} "
                  f"latency_first_event={latency.get('mean', float('nan')):.2f}")
        if stream["sweep_cycles_per_fill"] is not None:
            print(f"  {stream['name']:26s} sweep cycles per fill after the first: "
                  f"{stream['sweep_cycles_per_fill']:.2f}")
    print("directed scenarios (back to back, sink always ready):")
    for stream in directed:
        sweep = stream["sweep_cycles_per_fill"]
        print(f"  {stream['name']:26s} records={stream['records']:4d} cycles/record={stream['cycles_per_msg']:.2f} "
              f"fills={stream['fills']:4d} sweep cycles/fill={'-' if sweep is None else f'{sweep:.2f}'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.matcher_backend diff|bench``: the large differential run and the figures."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sim.matcher_backend")
    verbs = parser.add_subparsers(dest="verb", required=True)
    diff = verbs.add_parser("diff", help="random commands through gateware and reference engine")
    diff.add_argument("--commands", type=int, default=1_000_000)
    diff.add_argument("--chunk", type=int, default=20_000, help="commands per stream")
    diff.add_argument("--simulator", default="verilator", choices=["icarus", "verilator"])
    diff.add_argument("--seed", type=int, default=1000)
    bench = verbs.add_parser("bench", help="cycle figures on the default book")
    bench.add_argument("--commands", type=int, default=20_000)
    bench.add_argument("--simulator", default="verilator", choices=["icarus", "verilator"])
    bench.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.verb == "diff":
        return diff_main(args.commands, args.simulator, args.chunk, args.seed)
    return bench_main(args.simulator, args.commands, args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
