"""``make bench-engine``: the reference engine's cost per message beside a bare matching loop.

Generates two workloads as JSONL scripts under ``build/bench/``:

* ``mixed``: exchange-core's published mix (9% GTC, 3% IOC, 6% cancel, 82% modify that moves
  the price) over about 1,000 resting orders spread across about 750 price levels;
* ``crossing``: mostly aggressive orders sweeping one to several levels, with makers refilling.

Each is timed with ``matchwire match --bench`` (the real CLI, in a subprocess), and in this same
run a bare price-time matching loop (no events, no checks; kept below) is timed over the very
same commands. The ratio engine/bare is the figure to watch (target: <= 2).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from bisect import insort
from collections import deque
from pathlib import Path

from exchange.engine import Exchange
from exchange.orders import CancelOrder, Command, Fill, ModifyOrder, NewOrder, OrderType, Side, TimeInForce
from exchange.script import command_to_json


def generate_mixed(count: int, seed: int = 1, resting: int = 1000, levels: int = 750) -> list[Command]:
    """The exchange-core mix, generated against a live engine so cancels and modifies hit live orders."""
    rng = random.Random(seed)
    exchange = Exchange()
    mid = 1_000_000
    half = levels // 2
    commands: list[Command] = []
    live: list[int] = []
    live_set: set[int] = set()
    next_id = 1
    accounts = [f"A{i}" for i in range(16)]

    def apply(command: Command) -> None:
        commands.append(command)
        for event in exchange.process(command):
            kind = event.kind
            if kind == "order_added":
                if event.order_id not in live_set:
                    live_set.add(event.order_id)
                    live.append(event.order_id)
            elif kind in ("cancelled", "order_removed") or (kind == "fill" and _maker_gone(exchange, event)):
                oid = event.order_id if kind != "fill" else event.maker_order_id
                if oid in live_set and oid not in exchange.books["BENCH"].orders:  # type: ignore[attr-defined]
                    live_set.discard(oid)

    def new_gtc() -> NewOrder:
        nonlocal next_id
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        offset = rng.randint(1, half)
        price = mid - offset if side is Side.BUY else mid + offset
        order = NewOrder("BENCH", next_id, rng.choice(accounts), side, price, rng.randint(1, 20) * 10)
        next_id += 1
        return order

    while len(live_set) < resting:
        apply(new_gtc())
    while len(commands) < count:
        roll = rng.random()
        if roll < 0.09 or not live:
            apply(new_gtc())
        elif roll < 0.12:
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            price = mid + rng.randint(0, 5) if side is Side.BUY else mid - rng.randint(0, 5)
            apply(NewOrder("BENCH", next_id, rng.choice(accounts), side, price, rng.randint(1, 10) * 10,
                           tif=TimeInForce.IOC))
            next_id += 1
        else:
            # Pick a live order; drop ids that died meanwhile.
            while live:
                index = rng.randrange(len(live))
                oid = live[index]
                if oid in live_set:
                    break
                live[index] = live[-1]
                live.pop()
            if not live:
                continue
            if roll < 0.18:
                apply(CancelOrder("BENCH", oid))
            else:
                order = exchange.books["BENCH"].orders[oid]  # type: ignore[attr-defined]
                step = rng.choice((-2, -1, 1, 2))
                new_price = order.price + step
                # Keep orders on their own side of the mid so the book neither drains nor crosses much.
                if order.side is Side.BUY:
                    new_price = min(new_price, mid - 1)
                else:
                    new_price = max(new_price, mid + 1)
                if new_price == order.price:
                    new_price = order.price - step
                apply(ModifyOrder("BENCH", oid, price=new_price))
    return commands


def _maker_gone(exchange: Exchange, fill: Fill) -> bool:
    return fill.maker_order_id not in exchange.books[fill.symbol].orders  # type: ignore[attr-defined]


def generate_crossing(count: int, seed: int = 2, resting: int = 400) -> list[Command]:
    """Aggressive orders sweeping 1-5 levels, with makers refilling the book behind the touch.

    Generated against a live engine so makers quote around the current touch and the book stays
    about ``resting`` orders deep.
    """
    rng = random.Random(seed)
    exchange = Exchange()
    commands: list[Command] = []
    next_id = 1
    accounts = [f"A{i}" for i in range(16)]
    mid = 1_000_000

    def touch(book: object, side: Side) -> int:
        best = (book.asks if side is Side.SELL else book.bids).best_price()  # type: ignore[attr-defined]
        if best is not None:
            return best
        other = (book.bids if side is Side.SELL else book.asks).best_price()  # type: ignore[attr-defined]
        if other is not None:
            return other + 1 if side is Side.SELL else other - 1
        return mid + 1 if side is Side.SELL else mid - 1

    while len(commands) < count:
        book = exchange.book("BENCH")
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        if len(book.orders) < resting or rng.random() < 0.6:  # type: ignore[union-attr]
            base = touch(book, side)
            offset = rng.randint(0, 5)
            price = base - offset if side is Side.BUY else base + offset
            command = NewOrder("BENCH", next_id, rng.choice(accounts), side, price, rng.randint(1, 10) * 10)
        else:
            depth = rng.randint(0, 4)
            opposite = touch(book, Side.SELL if side is Side.BUY else Side.BUY)
            price = opposite + depth if side is Side.BUY else opposite - depth
            order_type = OrderType.MARKET if rng.random() < 0.1 else OrderType.LIMIT
            tif = TimeInForce.IOC if order_type is OrderType.MARKET or rng.random() < 0.7 else TimeInForce.GTC
            command = NewOrder("BENCH", next_id, rng.choice(accounts), side,
                               None if order_type is OrderType.MARKET else price, rng.randint(10, 80) * 10,
                               order_type=order_type, tif=tif)
        next_id += 1
        commands.append(command)
        exchange.process(command)
    return commands


class BareBook:
    """A bare price-time matching loop: no validation, no events, no reserve, no STP.

    It keeps the same shape of state as the engine (levels by price, a sorted price list per
    side, FIFO queues) so the comparison measures what checks and events cost.
    """

    def __init__(self) -> None:
        self.levels = ({}, {})  # per side: price -> deque of [order_id, qty]
        self.keys: tuple[list[int], list[int]] = ([], [])  # sorted so the best is last
        self.orders: dict[int, list] = {}  # order_id -> [side index, price, entry]

    def new(self, order_id: int, side: int, price: int | None, qty: int, rests: bool) -> None:
        other = 1 - side
        levels, keys = self.levels[other], self.keys[other]
        sign = 1 if other == 0 else -1
        while qty and keys:
            best = keys[-1] * sign
            if price is not None and (best > price if side == 0 else best < price):
                break
            queue = levels[best]
            while qty and queue:
                entry = queue[0]
                traded = entry[1] if entry[1] < qty else qty
                qty -= traded
                entry[1] -= traded
                if not entry[1]:
                    queue.popleft()
                    del self.orders[entry[0]]
            if not queue:
                del levels[best]
                keys.pop()
        if qty and rests and price is not None:
            self._rest(order_id, side, price, qty)

    def _rest(self, order_id: int, side: int, price: int, qty: int) -> None:
        levels = self.levels[side]
        queue = levels.get(price)
        if queue is None:
            queue = levels[price] = deque()
            insort(self.keys[side], price if side == 0 else -price)
        entry = [order_id, qty]
        queue.append(entry)
        self.orders[order_id] = [side, price, entry]

    def cancel(self, order_id: int) -> None:
        record = self.orders.pop(order_id, None)
        if record is None:
            return
        side, price, entry = record
        queue = self.levels[side][price]
        queue.remove(entry)
        if not queue:
            del self.levels[side][price]
            self.keys[side].remove(price if side == 0 else -price)

    def move(self, order_id: int, price: int) -> None:
        record = self.orders.get(order_id)
        if record is None:
            return
        side, _, entry = record
        qty = entry[1]
        self.cancel(order_id)
        self.new(order_id, side, price, qty, True)


def time_bare(commands: list[Command], min_seconds: float) -> float:
    """ns per message of :class:`BareBook` over the same commands (fresh book each round)."""
    plan = []
    for c in commands:
        if type(c) is NewOrder:
            plan.append((0, c.order_id, 0 if c.side is Side.BUY else 1, c.price, c.qty,
                         c.tif is TimeInForce.GTC or c.tif is TimeInForce.DAY))
        elif type(c) is CancelOrder:
            plan.append((1, c.order_id, 0, None, 0, False))
        else:
            plan.append((2, c.order_id, 0, c.price, 0, False))
    elapsed = 0
    messages = 0
    clock = time.perf_counter_ns
    while elapsed < min_seconds * 1e9 or not messages:
        book = BareBook()
        new, cancel, move = book.new, book.cancel, book.move
        start = clock()
        for op, oid, side, price, qty, rests in plan:
            if op == 0:
                new(oid, side, price, qty, rests)
            elif op == 1:
                cancel(oid)
            else:
                move(oid, price)
        elapsed += clock() - start
        messages += len(plan)
    return elapsed / messages


def _engine_bench(script: Path, min_seconds: float) -> dict:
    cli = Path(sys.executable).parent / "matchwire"
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "actors.cli"]
    result = subprocess.run([*argv, "match", str(script), "--bench", "--min-seconds", str(min_seconds)],
                            capture_output=True, text=True, check=True)
    fields = dict(item.split("=", 1) for item in result.stdout.split())
    return {"ns_per_msg": float(fields["ns_per_msg"]), "msgs_per_s": float(fields["msgs_per_s"]),
            "events_per_msg": float(fields["events_per_msg"]), "line": result.stdout.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, help="commands per workload (default 200,000; --quick 20,000)")
    parser.add_argument("--min-seconds", type=float, help="seconds per timing (default 2; --quick 0.2)")
    parser.add_argument("--rounds", type=int, help="alternating engine/bare rounds, best kept (default 3; --quick 1)")
    parser.add_argument("--out", default="build/bench", help="where the generated scripts go")
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (see the defaults above)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON (for the report)")
    args = parser.parse_args(argv)
    # Explicit values win over --quick's.
    args.count = args.count or (20_000 if args.quick else 200_000)
    args.min_seconds = args.min_seconds or (0.2 if args.quick else 2.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# bench-engine: {os.cpu_count()} cores, python {sys.version.split()[0]}, {args.count} commands/workload")
    results = {}
    for name, generate in (("mixed", generate_mixed), ("crossing", generate_crossing)):
        commands = generate(args.count)
        script = out / f"{name}.jsonl"
        script.write_text("".join(command_to_json(c) + "\n" for c in commands))
        # Alternate the two and keep each one's best round: this machine is shared and noisy,
        # and the minimum is the figure least disturbed by other work.
        engine_runs, bare_runs = [], []
        for _ in range(args.rounds):
            engine_runs.append(_engine_bench(script, args.min_seconds))
            bare_runs.append(time_bare(commands, args.min_seconds))
        engine = min(engine_runs, key=lambda run: run["ns_per_msg"])
        bare = min(bare_runs)
        ratio = engine["ns_per_msg"] / bare
        print(f"workload={name} engine_ns_per_msg={engine['ns_per_msg']:.1f} bare_ns_per_msg={bare:.1f} "
              f"ratio={ratio:.2f} engine_msgs_per_s={engine['msgs_per_s']:.0f} "
              f"events_per_msg={engine['events_per_msg']:.2f}", flush=True)
        results[name] = {"workload": name, "commands": len(commands), "engine_ns_per_msg": engine["ns_per_msg"],
                         "bare_ns_per_msg": bare, "ratio": ratio, "engine_msgs_per_s": engine["msgs_per_s"],
                         "events_per_msg": engine["events_per_msg"],
                         "engine_runs_ns_per_msg": [run["ns_per_msg"] for run in engine_runs],
                         "bare_runs_ns_per_msg": bare_runs}
    if args.json:
        import json

        document = {"benchmark": "engine", "count": args.count, "min_seconds": args.min_seconds,
                    "rounds": args.rounds, "cores": os.cpu_count(), "python": sys.version.split()[0],
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workloads": list(results.values())}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
