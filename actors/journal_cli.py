"""``matchwire journal inspect|replay PATH``: look into a journal directory (``replay``: books only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from actors.config import recent_order_ids
from exchange.engine import OrderBook
from exchange.instruments import Instrument
from exchange.journal import JournalError, RecoveryReport, recover, segments, snapshots
from exchange.layout import LayoutError
from exchange.wire import record_to_command


def inspect(path: str, out: TextIO = sys.stdout) -> int:
    """Records, sequence range, snapshot, damage (without repairing anything)."""
    directory = Path(path)
    if not directory.is_dir():
        print(f"matchwire journal: {path}: not a journal directory", file=sys.stderr)
        return 2
    try:
        state, records, report = recover(directory, truncate=False)
    except JournalError as exc:
        print(f"matchwire journal: {exc}", file=sys.stderr)
        return 2
    print(f"journal {directory}", file=out)
    print(f"  segments: {', '.join(p.name for p in segments(directory)) or '(none)'}", file=out)
    print(f"  snapshots: {', '.join(p.name for p in snapshots(directory)) or '(none)'}", file=out)
    last = report.snapshot_index + len(records)
    print(f"  records: {last} in all; snapshot at {report.snapshot_index}; {len(records)} after it "
          f"(record indices {report.snapshot_index}..{max(last - 1, report.snapshot_index)})", file=out)
    if not directory.name.startswith("book-"):
        return _inspect_actor(directory, state, records, report, out)
    if state is not None:
        print(f"  snapshot: book {state['symbol']} at event seq {state['seq']}, {len(state['orders'])} resting "
              f"orders, match number {state['match_number']}", file=out)
    ops: dict[str, int] = {}
    for record in records:
        try:
            command, _ = record_to_command(record)
            op = "reduce" if getattr(command, "reduce", False) is True else command.op  # cuts apart from modifies
            ops[op] = ops.get(op, 0) + 1
        except LayoutError:
            ops["malformed"] = ops.get("malformed", 0) + 1
    if ops:
        print("  commands after the snapshot: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())), file=out)
    for line in report.truncated:
        print(f"  DAMAGED: {line}" + ("" if "snapshot passed over" in line else
                                      " (recovery keeps the records before it)"), file=out)
    return 1 if report.truncated else 0


# Record tags of the other roles' journals (actors/gateway.py, risk.py, marketdata.py, durable.py).
_TAGS = {"gateway": {"O": "ouch_in", "E": "reports", "F": "failures", "A": "id_leases", "S": "sequenced",
                     "C": "commits"},
         "risk": {"O": "orders_passed", "J": "answered_here", "E": "reports", "K": "kill_switch", "C": "commits"},
         "md": {"S": "session", "E": "events", "P": "messages", "C": "commits"}}


def _inspect_actor(directory: Path, state: dict | None, records: list[bytes], report: RecoveryReport,
                   out: TextIO) -> int:
    """A gateway's, risk shard's or market-data actor's journal: its snapshot and its records by tag."""
    kind = directory.name.split("-", 1)[0]
    if state is not None:
        try:
            print(f"  snapshot: {_snapshot_summary(kind, state)}", file=out)
        except (KeyError, TypeError, AttributeError) as exc:  # not a snapshot this version wrote
            print(f"  snapshot: not a {kind} snapshot this version can read ({type(exc).__name__}: {exc})",
                  file=out)
    tags: dict[str, int] = {}
    names = _TAGS.get(kind, {})
    for record in records:
        tag = chr(record[0]) if record else "?"
        name = names.get(tag, f"tag {tag!r}")
        tags[name] = tags.get(name, 0) + 1
    if tags:
        print("  records after the snapshot: " + ", ".join(f"{k} {v}" for k, v in sorted(tags.items())), file=out)
    for line in report.truncated:
        print(f"  DAMAGED: {line}" + ("" if "snapshot passed over" in line else
                                      " (recovery keeps the records before it)"), file=out)
    return 1 if report.truncated else 0


def _snapshot_summary(kind: str, state: dict) -> str:
    if kind == "gateway":
        return (f"{len(state['orders'])} OUCH orders, id lease {state['id_lease']}, "
                f"{state['archive']} sequenced messages in archive/")
    if kind == "risk":
        open_orders = len(state["orders"]) + len(state["orders_alone"])
        return (f"{len(state['accounts'])} accounts, {open_orders} open orders, "
                f"{sum(len(w) for w in state['seen_ids'].values())} recent order ids kept")
    if kind == "md":
        return f"session {state['session']}, next message {state['next_seq']}"
    return f"{len(state)} keys"


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
    book.remember_ids(recent_order_ids())  # as the cluster's book that wrote the journal
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
    if not Path(path).name.startswith("book-"):
        print(f"matchwire journal: {path}: replay rebuilds books (book-SYMBOL directories); use inspect",
              file=sys.stderr)
        return 2
    try:
        book, report = rebuild(path)
    except JournalError as exc:
        print(f"matchwire journal: {exc}", file=sys.stderr)
        return 2
    damage = getattr(report, "truncated", [])
    for line in damage:  # the book below is what the records before the damage make (exit code 1, as inspect)
        print(f"matchwire journal: {path}: DAMAGED: {line}", file=sys.stderr)
    if book is None:
        print(f"journal {path}: empty", file=out)
        return 1 if damage else 0
    print(f"book {book.symbol} after {report}: event seq {book.seq}, {len(book.orders)} resting orders", file=out)
    levels = book.depth(depth)
    for name, side in (("asks", 2), ("bids", 1)):
        rows = levels[name] if name == "bids" else list(reversed(levels[name]))
        for price, qty, count in rows:
            orders = book.orders_at(side, price)  # type: ignore[arg-type]
            print(f"  {name[:-1]} {price:>12} {qty:>10} ({count} orders: "
                  + ", ".join(f"#{o['order_id']} {o['account']} {o['displayed']}" for o in orders[:5])
                  + (" ..." if len(orders) > 5 else "") + ")", file=out)
    return 1 if damage else 0


