"""A book's recent events, kept for re-sends to a receiver that recovered (docs/durability.md "Re-send on request").

A gateway, risk shard or market-data actor that restarts from its journal asks every book for its events after the
last sequence number it journaled. The book answers from this history: the newest ``keep`` events (200,000), of
which only the newest are in memory and the older ones in files beside the book's journal. Kept whole in memory, a
busy book's history was ~38 MB; a node of 1,000 busy books would have held 38 GB by the afternoon
(docs/cluster.md "Memory over a trading day").

On disk each event is its 96-byte report record after the actor index (u16) of the risk shard whose command caused
it, one file per spilled chunk, written without fsync: after a crash the book rebuilds its history from its journal
anyway (the files of an earlier incarnation are removed at start).
"""

from __future__ import annotations

import collections
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

from exchange.wire import REPORT_SIZE

__all__ = ["EventHistory", "RECENT_EVENTS"]

log = logging.getLogger("matchwire.book")

RECENT_EVENTS = 200_000  # events kept for re-send requests of recovering receivers
IN_MEMORY_PER_NODE = 400_000  # of those, at most about this many in memory on a node, all its books together
_SOURCE = struct.Struct("<H")
_NO_SOURCE = 0xFFFF
_ENTRY = _SOURCE.size + REPORT_SIZE
_SEQ = struct.Struct("<Q")  # a report record's sequence number is the u64 at byte 8


def _seq_of(record: bytes) -> int:
    return _SEQ.unpack_from(record, 8)[0]


def in_memory_for(books_on_node: int) -> int:
    """Events a book keeps in memory before it spills a chunk to disk: a share of the node's budget, 1,000 to
    20,000 (a node of three books keeps 20,000 each; one of 1,000 books 1,000 each)."""
    return max(1_000, min(20_000, IN_MEMORY_PER_NODE // max(1, books_on_node)))


class EventHistory:
    """The newest ``keep`` events of a book, the newest ``in_memory`` to ``2 * in_memory`` of them in memory.

    ``directory`` None: everything in memory (tests; a book without journals keeps no history at all, since no
    receiver can recover without one).
    """

    def __init__(self, directory: Path | None, keep: int = RECENT_EVENTS, in_memory: int = 20_000) -> None:
        if keep < 1 or in_memory < 1:
            raise ValueError("keep and in_memory must be positive")
        self.directory = directory
        self.keep = keep
        self.in_memory = in_memory
        self.memory: collections.deque[tuple[bytes, int | None]] = collections.deque()
        self.files: collections.deque[tuple[Path, int, int]] = collections.deque()  # (path, first seq, count)
        self.on_disk = 0
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob("events-*.bin"):
                stale.unlink()  # an earlier incarnation's: the history is rebuilt from the journal

    def __len__(self) -> int:
        return self.on_disk + len(self.memory)

    def append(self, record: bytes, source: int | None) -> None:
        self.memory.append((record, source))
        if self.directory is None:
            if len(self.memory) > self.keep:
                self.memory.popleft()
        elif len(self.memory) >= 2 * self.in_memory:
            self._spill()

    def _spill(self) -> None:
        assert self.directory is not None
        chunk = [self.memory.popleft() for _ in range(self.in_memory)]
        first = _seq_of(chunk[0][0])
        path = self.directory / f"events-{first:020d}.bin"
        pack = _SOURCE.pack
        path.write_bytes(b"".join(pack(_NO_SOURCE if source is None else source) + record
                                  for record, source in chunk))
        self.files.append((path, first, len(chunk)))
        self.on_disk += len(chunk)
        # Whole files only: the history holds between keep and keep + in_memory events.
        while self.files and len(self) - self.files[0][2] >= self.keep:
            old, _, count = self.files.popleft()
            old.unlink(missing_ok=True)
            self.on_disk -= count

    def oldest_seq(self) -> int:
        """The sequence number of the oldest event kept (0 when none is)."""
        if self.files:
            return self.files[0][1]
        return _seq_of(self.memory[0][0]) if self.memory else 0

    def since(self, after: int) -> Iterator[tuple[bytes, int | None]]:
        """Every event kept with a sequence number above ``after``, oldest first, with its source."""
        unpack = _SOURCE.unpack_from
        for index, (path, _, count) in enumerate(list(self.files)):
            following = self.files[index + 1][1] if index + 1 < len(self.files) else \
                (_seq_of(self.memory[0][0]) if self.memory else None)
            if following is not None and following <= after + 1:
                continue  # wholly at or below ``after``
            data = path.read_bytes()
            for at in range(0, count * _ENTRY, _ENTRY):
                record = data[at + _SOURCE.size:at + _ENTRY]
                if _seq_of(record) > after:
                    source = unpack(data, at)[0]
                    yield record, None if source == _NO_SOURCE else source
        for record, source in list(self.memory):
            if _seq_of(record) > after:
                yield record, source
