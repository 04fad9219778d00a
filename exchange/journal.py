"""The journal: an append-only, CRC-framed record log with group commit, plus snapshots.

On disk, a journal directory holds numbered segments ``journal-<first index>.log`` and
snapshots ``snapshot-<index>.json`` (index = how many records precede it). A record is framed as
``u32 length, u32 CRC-32 of the payload, payload`` (little-endian), so a torn or corrupt tail is
found at once: recovery truncates the journal to its last good record and says so.

Durability policies (what "committed" promises):

* ``always``: :meth:`JournalWriter.commit` writes and ``fsync``\\ s before it returns. An answer
  sent after ``commit`` survives a process crash and a power cut.
* ``batch``: ``commit`` writes at once but ``fsync``\\ s only once ``batch_ms`` milliseconds have passed
  since the last sync; :meth:`JournalWriter.durable` says whether everything written is synced, and
  :meth:`JournalWriter.sync` syncs now (what an actor does when it runs out of input). Callers hold
  answers until it is (group commit): they survive process crashes and power cuts, after a delay of
  an fsync, and of at most ``batch_ms`` more while input keeps coming.
* ``none``: ``commit`` writes to the operating system and never syncs. Answers survive a crash of
  the process (the page cache outlives it) but not of the machine.

Snapshots are written atomically (temporary file, fsync, rename, fsync of the directory). Recovery
is the latest snapshot plus every record after it; segments wholly before the latest snapshot
are pruned.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FRAME = struct.Struct("<II")
MAX_RECORD = 1 << 20
POLICIES = ("always", "batch", "none")


class JournalError(ValueError):
    """A journal directory that cannot be used (the message names the file and offset)."""


@dataclass
class RecoveryReport:
    """What recovery found: the snapshot used, the records replayed, what was cut off."""

    directory: str
    snapshot_index: int = 0
    snapshot_file: str | None = None
    records: int = 0
    segments: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # "file: offset N: reason (M bytes dropped)"

    def __str__(self) -> str:
        text = (f"{self.directory}: snapshot at record {self.snapshot_index}"
                f"{' (' + self.snapshot_file + ')' if self.snapshot_file else ' (none)'}, "
                f"{self.records} records replayed from {len(self.segments)} segment(s)")
        if self.truncated:
            text += "; TRUNCATED " + "; ".join(self.truncated)
        return text


def segment_name(index: int) -> str:
    """The file name of the segment whose first record is record ``index``."""
    return f"journal-{index:020d}.log"


def _snapshot_name(index: int) -> str:
    return f"snapshot-{index:020d}.json"


def _index_of(name: str) -> int:
    return int(name.split("-", 1)[1].split(".", 1)[0])


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("journal-*.log"), key=lambda p: _index_of(p.name))


def snapshots(directory: Path) -> list[Path]:
    return sorted(directory.glob("snapshot-*.json"), key=lambda p: _index_of(p.name))


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_frames(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset just after it, payload) of each good record from ``offset`` to the end of ``data``; raises
    :class:`JournalError` naming the offset where a record is torn or damaged."""
    unpack, size, crc32 = FRAME.unpack_from, FRAME.size, zlib.crc32
    while offset < len(data):
        if len(data) - offset < size:
            raise JournalError(f"offset {offset}: torn frame header ({len(data) - offset} bytes)")
        length, crc = unpack(data, offset)
        if length > MAX_RECORD:
            raise JournalError(f"offset {offset}: record length {length} is not plausible")
        end = offset + size + length
        if end > len(data):
            raise JournalError(f"offset {offset}: torn record ({len(data) - offset - size} of {length} bytes)")
        payload = data[offset + size:end]
        if crc32(payload) != crc:
            raise JournalError(f"offset {offset}: CRC mismatch")
        offset = end
        yield offset, payload


def scan_segment(path: Path) -> tuple[list[bytes], int, str | None]:
    """(good records, offset just after the last good one, reason the rest is bad or None)."""
    records: list[bytes] = []
    offset = 0
    try:
        for offset, payload in iter_frames(path.read_bytes()):  # noqa: B007  # the last offset is the answer
            records.append(payload)
    except JournalError as exc:
        return records, offset, str(exc)
    return records, offset, None


def load_snapshot(directory: Path, oldest: bool = False,
                  skipped: list[str] | None = None) -> tuple[int, dict | None, str | None]:
    """The newest (or the oldest kept) readable snapshot: (index, state, file name); (0, None, None) when
    there is none. Unreadable ones passed over are described in ``skipped``."""
    candidates = snapshots(directory)
    for path in (candidates if oldest else reversed(candidates)):
        try:
            return _index_of(path.name), json.loads(path.read_text()), path.name
        except (OSError, ValueError) as exc:
            # A damaged snapshot: fall back to another one (and more journal), and say so.
            if skipped is not None:
                skipped.append(f"{path.name}: unreadable snapshot passed over ({exc})")
            continue
    return 0, None, None


def recover(directory: str | Path, truncate: bool = True,
            oldest: bool = False) -> tuple[dict | None, list[bytes], RecoveryReport]:
    """(snapshot state, records after it, report). With ``truncate``, a bad tail is cut off the file.

    ``oldest`` starts from the oldest snapshot kept instead of the newest: a recovering book
    re-sends everything since then, because what it sent just before a crash may have died in
    its socket queues with it. Records after a damaged point are never used: a journal is a
    prefix, or it is nothing.
    """
    directory = Path(directory)
    report = RecoveryReport(str(directory))
    if not directory.exists():
        return None, [], report
    index, state, name = load_snapshot(directory, oldest=oldest, skipped=report.truncated)
    report.snapshot_index, report.snapshot_file = index, name
    records: list[bytes] = []
    position = 0
    damaged = False
    for path in segments(directory):
        start = _index_of(path.name)
        if damaged:
            report.truncated.append(f"{path.name}: whole segment after a damaged one ({path.stat().st_size} bytes)")
            if truncate:
                path.unlink()
            continue
        if report.segments and start > position:
            raise JournalError(f"{path}: starts at record {start}, but the journal before it ends at {position}")
        if not report.segments and start > index:
            # Its predecessors were pruned after a snapshot that can no longer be read: replaying from here
            # would rebuild a state that never existed.
            raise JournalError(f"{path}: starts at record {start}, but no readable snapshot covers the records "
                               f"before it (snapshot at {index})")
        good, end, reason = scan_segment(path)
        if reason is not None:
            size = path.stat().st_size
            report.truncated.append(f"{path.name}: {reason} ({size - end} bytes dropped)")
            if truncate:
                with open(path, "r+b") as handle:
                    handle.truncate(end)
                    handle.flush()
                    os.fsync(handle.fileno())
            damaged = True
        position = start + len(good)
        report.segments.append(path.name)
        # Keep only the records after the snapshot.
        skip = max(0, index - start)
        records.extend(good[skip:])
    if position < index and state is not None:
        raise JournalError(f"{directory}: snapshot {name} is at record {index} but the journal ends at {position}")
    report.records = len(records)
    return state, records, report


class JournalWriter:
    """Appends records to the newest segment; commits by policy; snapshots and prunes."""

    def __init__(self, directory: str | Path, policy: str = "batch", batch_ms: float = 2.0,
                 next_index: int | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"fsync policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if batch_ms < 0:
            raise ValueError("batch_ms must not be negative")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.policy = policy
        self.batch_ns = int(batch_ms * 1e6)
        if next_index is None:
            _, records, _ = recover(self.directory)
            index, _, _ = load_snapshot(self.directory)
            next_index = index + len(records)
        self.index = next_index  # records written so far (including those before any snapshot)
        self.commit_mark = next_index  # index after the last commit marker (actors/durable.py writes them)
        existing = segments(self.directory)
        if existing and _index_of(existing[-1].name) <= next_index:
            self.path = existing[-1]
        else:
            self.path = self.directory / segment_name(next_index)
        self.file = open(self.path, "ab")  # noqa: SIM115  # kept open for the writer's life
        self.synced = True
        self.last_sync_ns = time.monotonic_ns()
        self.stats = {"records": 0, "bytes": 0, "fsyncs": 0, "snapshots": 0, "pruned": 0}

    def append(self, payload: bytes) -> None:
        self.file.write(FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
        self.index += 1
        self.synced = False
        self.stats["records"] += 1
        self.stats["bytes"] += len(payload) + FRAME.size

    def append_many(self, payloads: list[bytes]) -> None:
        if not payloads:
            return
        pack, crc = FRAME.pack, zlib.crc32
        self.file.write(b"".join(pack(len(p), crc(p)) + p for p in payloads))
        self.index += len(payloads)
        self.synced = False
        self.stats["records"] += len(payloads)
        self.stats["bytes"] += sum(len(p) for p in payloads) + FRAME.size * len(payloads)

    def commit(self) -> None:
        """Hand everything to the OS, and sync as the policy says (see the module docstring)."""
        self.file.flush()
        if self.policy == "always":
            self.sync()
        elif self.policy == "batch" and not self.synced and \
                time.monotonic_ns() - self.last_sync_ns >= self.batch_ns:
            self.sync()

    def sync(self) -> None:
        if self.synced:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.synced = True
        self.last_sync_ns = time.monotonic_ns()
        self.stats["fsyncs"] += 1

    def durable(self) -> bool:
        """True when every committed record is as safe as the policy promises."""
        return self.policy == "none" or self.synced

    def sync_due_ns(self) -> int:
        """Nanoseconds until the batch policy's next sync is due (0: now)."""
        return max(0, self.batch_ns - (time.monotonic_ns() - self.last_sync_ns))

    def snapshot(self, state: dict) -> Path:
        """Write ``state`` as of the current index, atomically; start a new segment; prune old ones."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.synced = True
        name = _snapshot_name(self.index)
        temporary = self.directory / (name + ".tmp")
        with open(temporary, "w") as handle:
            json.dump(state, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.directory / name)
        _fsync_directory(self.directory)
        self.stats["snapshots"] += 1
        # New records go to a new segment, so whole old segments can go.
        self.start_segment()
        # Keep the newest two snapshots and every segment from the older of them on: recovery may
        # start there (see recover(oldest=True)).
        for old in snapshots(self.directory)[:-2]:
            old.unlink()
        keep_from = _index_of(snapshots(self.directory)[0].name)
        for old in segments(self.directory):
            if old != self.path and _index_of(old.name) < keep_from:
                old.unlink()
                self.stats["pruned"] += 1
        return self.directory / name

    def start_segment(self) -> None:
        """Write what follows to a new segment (named by the current index), so what came before can be
        deleted a whole file at a time."""
        self.file.flush()
        name = segment_name(self.index)
        if self.path.name == name:
            return  # nothing written to this segment yet: it already starts here
        empty = self.file.tell() == 0
        self.file.close()
        if empty:
            self.path.unlink()  # a file of no records under another index would read as a gap
        self.path = self.directory / name
        self.file = open(self.path, "ab")  # noqa: SIM115  # kept open for the writer's life

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            if self.policy != "none":
                os.fsync(self.file.fileno())
            self.file.close()


def iter_all(directory: str | Path) -> Iterator[tuple[str, int, bytes]]:
    """Every record of every segment, without truncating: (segment, index, payload). For tools."""
    for path in segments(Path(directory)):
        start = _index_of(path.name)
        good, _, _ = scan_segment(path)
        for i, payload in enumerate(good):
            yield path.name, start + i, payload
