"""Pure command functions over ITCH files, for the ``matchwire itch ...`` CLI, plus a throughput bench.

Every ``cmd_*`` writes its results to ``out`` and its problems to ``err`` (default: the current
``sys.stderr``) as ``PATH: offset N: reason``, reads on past bad frames where the framing allows, and
returns the exit code: 0 when the whole file was readable, 1 otherwise.

Run directly: ``python -m exchange.itch_tools {decode,book,stats,bench} PATH``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TextIO

from exchange.feed_decoder import bench as feed_bench
from exchange.itch import (
    MESSAGE_SPECS,
    ItchDecodeError,
    ItchMessage,
    iter_messages,
    read_itch_file,
    to_json_dict,
)
from exchange.l3book import L3Book

__all__ = ["bench", "cmd_book", "cmd_decode", "cmd_stats", "format_price", "main"]

PathLike = str | os.PathLike[str]


def format_price(price: int, decimals: int = 4) -> str:
    """Raw integer price -> fixed-point decimal string, without going through float."""
    scale = 10**decimals
    sign = "-" if price < 0 else ""
    whole, frac = divmod(abs(price), scale)
    return f"{sign}{whole}.{frac:0{decimals}d}" if decimals else f"{sign}{whole}"


class _Reader:
    """Iterates the good messages of a file, reporting bad records (and open failures) to ``err``."""

    def __init__(self, path: PathLike, err: TextIO) -> None:
        self.path = path
        self.err = err
        self.errors = 0
        self.bytes = 0  # stream bytes of the decoded messages, length prefixes included

    def _report(self, offset: int | None, reason: str) -> None:
        self.errors += 1
        where = "" if offset is None else f"offset {offset}: "
        print(f"{os.fspath(self.path)}: {where}{reason}", file=self.err)

    def messages(self) -> Iterator[tuple[int, ItchMessage]]:
        try:
            for offset, record in read_itch_file(self.path):
                if isinstance(record, ItchDecodeError):
                    self._report(record.offset, record.reason)
                    continue
                self.bytes += 2 + MESSAGE_SPECS[record["type"]].length
                yield offset, record
        except OSError as exc:
            self._report(None, exc.strerror or str(exc))


def cmd_decode(path: PathLike, out: TextIO, err: TextIO | None = None) -> int:
    """One compact JSON object per message (see ``exchange.itch.to_json_dict``), one per line."""
    reader = _Reader(path, sys.stderr if err is None else err)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    write = out.write
    for _, msg in reader.messages():
        write(dumps(to_json_dict(msg)))
        write("\n")
    return 1 if reader.errors else 0


def cmd_book(
    path: PathLike,
    symbol: str | None = None,
    depth: int = 5,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Build the L3 book over the whole file and print, per symbol, the top ``depth`` levels of each side.

    Asks are listed best-last above the bids (best first), as a ladder reads.
    """
    out = sys.stdout if out is None else out
    reader = _Reader(path, sys.stderr if err is None else err)
    book = L3Book()
    book.apply_all(msg for _, msg in reader.messages())
    symbols = [symbol] if symbol is not None else book.symbols()
    for name in symbols:
        stock = book.book(name)
        if stock is None:
            print(f"{name}: no such symbol in {os.fspath(path)}", file=out)
            continue
        levels = stock.depth(depth)
        print(
            f"{name} locate={stock.locate} orders={stock.order_count} "
            f"bid_levels={len(stock.bid_prices)} ask_levels={len(stock.ask_prices)}",
            file=out,
        )
        for price, shares, count in reversed(levels["asks"]):
            print(f"  ask {format_price(price):>12} {shares:>10} orders={count}", file=out)
        print("  " + "-" * 38, file=out)
        for price, shares, count in levels["bids"]:
            print(f"  bid {format_price(price):>12} {shares:>10} orders={count}", file=out)
    unknown = sum(book.unknown_order_messages.values())
    detail = " ".join(f"{t}={n}" for t, n in sorted(book.unknown_order_messages.items()))
    print(f"unknown_order_messages={unknown}" + (f" ({detail})" if detail else ""), file=out)
    if book.anomalies:
        print("anomalies " + " ".join(f"{k}={v}" for k, v in sorted(book.anomalies.items())), file=out)
    return 1 if reader.errors else 0


def cmd_stats(path: PathLike, out: TextIO, err: TextIO | None = None) -> int:
    """Counts by message type (most frequent first), total, bytes of decoded messages (length prefixes
    included, uncompressed), the file's size on disk, and the number of errors."""
    reader = _Reader(path, sys.stderr if err is None else err)
    counts: Counter[str] = Counter(msg["type"] for _, msg in reader.messages())
    print(f"messages {sum(counts.values())}", file=out)
    print(f"bytes {reader.bytes}", file=out)
    try:
        print(f"file_bytes {os.path.getsize(path)}", file=out)
    except OSError:
        pass
    print(f"errors {reader.errors}", file=out)
    for code, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"type {code} {n}", file=out)
    return 1 if reader.errors else 0


def _load_stream(path: PathLike) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def bench(path: PathLike, out: TextIO | None = None, min_seconds: float = 1.0) -> dict[str, float]:
    """Measure software decode, L3-book and feed-handler throughput on a file held in memory (decompressed
    once).

    Each measurement repeats whole passes until at least ``min_seconds`` have elapsed. Prints one line
    each, ``itch_decode msgs_per_s=... mb_per_s=...``, ``itch_book msgs_per_s=...`` and
    ``feed_handler msgs_per_s=... packets_per_s=...`` (the file's messages packed into 1400-byte MoldUDP64
    packets, then parse, sequencing, decode, L3/L2 books and BBO/depth change detection:
    ``exchange.feed_decoder.FeedHandler``); returns the figures.
    """
    out = sys.stdout if out is None else out
    data = _load_stream(path)
    messages = [rec for _, rec in iter_messages(data) if not isinstance(rec, ItchDecodeError)]
    if not messages:
        raise ValueError(f"{os.fspath(path)}: no decodable messages to bench")

    passes = 0
    start = time.perf_counter()
    while True:
        for _ in iter_messages(data):
            pass
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    decode_mps = passes * len(messages) / elapsed
    decode_mbps = passes * len(data) / elapsed / 1e6

    passes = 0
    start = time.perf_counter()
    while True:
        L3Book().apply_all(messages)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    book_mps = passes * len(messages) / elapsed

    # The raw messages, each without its length prefix, as a publisher hands them to MoldUDP64.
    raw: list[bytes] = []
    pos = 0
    while pos + 2 <= len(data):
        stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
        if stop > len(data):
            break
        raw.append(data[pos + 2 : stop])
        pos = stop
    feed = feed_bench(raw, min_seconds=min_seconds)

    print(f"itch_decode msgs_per_s={decode_mps:.0f} mb_per_s={decode_mbps:.1f}", file=out)
    print(f"itch_book msgs_per_s={book_mps:.0f}", file=out)
    print(f"feed_handler msgs_per_s={feed['msgs_per_s']:.0f} packets_per_s={feed['packets_per_s']:.0f}", file=out)
    return {"decode_msgs_per_s": decode_mps, "decode_mb_per_s": decode_mbps, "book_msgs_per_s": book_mps,
            "feed_msgs_per_s": feed["msgs_per_s"], "feed_packets_per_s": feed["packets_per_s"]}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m exchange.itch_tools``."""
    parser = argparse.ArgumentParser(prog="python -m exchange.itch_tools", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("decode", "stats", "bench"):
        sub.add_parser(name).add_argument("path")
    book_parser = sub.add_parser("book")
    book_parser.add_argument("path")
    book_parser.add_argument("--symbol")
    book_parser.add_argument("--depth", type=int, default=5)
    args = parser.parse_args(argv)
    if args.command == "decode":
        return cmd_decode(args.path, sys.stdout)
    if args.command == "book":
        return cmd_book(args.path, args.symbol, args.depth, sys.stdout)
    if args.command == "stats":
        return cmd_stats(args.path, sys.stdout)
    try:
        bench(args.path)
    except (OSError, ValueError) as exc:
        print(f"{args.path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, as a filter should.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
