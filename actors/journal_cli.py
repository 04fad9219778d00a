"""``matchwire journal inspect|replay PATH``: look into a book's journal directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from exchange.engine import OrderBook
from exchange.instruments import Instrument
from exchange.journal import recover, segments, snapshots
from exchange.layout import LayoutError
from exchange.wire import record_to_command


def inspect(path: str, out: TextIO = sys.stdout) -> int:
    """Records, sequence range, snapshot, damage (without repairing anything)."""
    directory = Path(path)
    if not directory.is_dir():
        print(f"matchwire journal: {path}: not a journal directory", file=sys.stderr)
        return 2
    state, records, report = recover(directory, truncate=False)
    print(f"journal {directory}", file=out)
    print(f"  segments: {', '.join(p.name for p in segments(directory)) or '(none)'}", file=out)
    print(f"  snapshots: {', '.join(p.name for p in snapshots(directory)) or '(none)'}", file=out)
    last = report.snapshot_index + len(records)
    print(f"  records: {last} in all; snapshot at {report.snapshot_index}; {len(records)} after it "
          f"(record indices {report.snapshot_index}..{max(last - 1, report.snapshot_index)})", file=out)
    if state is not None:
        print(f"  snapshot: book {state['symbol']} at event seq {state['seq']}, {len(state['orders'])} resting "
              f"orders, match number {state['match_number']}", file=out)
    ops: dict[str, int] = {}
    for record in records:
        try:
            command, _ = record_to_command(record)
            ops[command.op] = ops.get(command.op, 0) + 1
        except LayoutError:
            ops["malformed"] = ops.get("malformed", 0) + 1
    if ops:
        print("  commands after the snapshot: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())), file=out)
    for line in report.truncated:
        print(f"  DAMAGED: {line} (recovery keeps the records before it)", file=out)
    return 1 if report.truncated else 0


def rebuild(path: str) -> tuple[OrderBook | None, object]:
    """The book a journal directory describes: its snapshot plus every record after it."""
    directory = Path(path)
    state, records, report = recover(directory, truncate=False)
    symbol = state["symbol"] if state else None
    commands = []
    for record in records:
        try:
            command, _ = record_to_command(record)
        except LayoutError:
            continue
        symbol = symbol or command.symbol
        commands.append(command)
    if symbol is None:
        return None, report
    instrument = Instrument(symbol)
    described = directory / "instrument.json"
    if described.exists():
        data = json.loads(described.read_text())
        instrument = Instrument(data["symbol"], data["tick_size"], data["lot_size"],
                                tuple(data["band"]) if data.get("band") else None)
    book = OrderBook(instrument)
    if state is not None:
        book.restore(state)
    for command in commands:
        book.process(command)
    return book, report


def replay(path: str, out: TextIO = sys.stdout, depth: int = 10) -> int:
    """Rebuild the book and print it (L2 by price level, then the orders at each level)."""
    if not Path(path).is_dir():
        print(f"matchwire journal: {path}: not a journal directory", file=sys.stderr)
        return 2
    book, report = rebuild(path)
    if book is None:
        print(f"journal {path}: empty", file=out)
        return 0
    print(f"book {book.symbol} after {report}: event seq {book.seq}, {len(book.orders)} resting orders", file=out)
    levels = book.depth(depth)
    for name, side in (("asks", 2), ("bids", 1)):
        rows = levels[name] if name == "bids" else list(reversed(levels[name]))
        for price, qty, count in rows:
            orders = book.orders_at(side, price)  # type: ignore[arg-type]
            print(f"  {name[:-1]} {price:>12} {qty:>10} ({count} orders: "
                  + ", ".join(f"#{o['order_id']} {o['account']} {o['displayed']}" for o in orders[:5])
                  + (" ..." if len(orders) > 5 else "") + ")", file=out)
    return 0


