"""Durability for the actors that are not books: gateway, risk and market data (issue #10).

Each of them keeps one journal (``exchange.journal``: CRC-framed records, segments, the cluster's
fsync policy) in ``STATE_DIR/NODE/KIND-N/``. A record is one tag byte and a body; what the tags mean is
the owning actor's business. The rules shared by all three:

* **Write ahead, group commit.** An actor journals what changes its state (its inputs, and the
  decisions it took that depend on time or on the network) as it handles a batch, and commits once
  before anything the batch caused leaves the actor (:func:`commit_and_wait`, the book's rule).
* **Replay.** At start the journal is read back (a torn or corrupt tail is cut at the last good
  record, and the report names the file and offset) and applied with output switched off.
* **Whole batches only.** Each commit ends with a commit record (``C``). Records after the last one
  belong to a batch that was being written when the process died (a buffered file reaches the disk
  in pieces): nothing that batch caused has left the actor, so recovery drops them too (and cuts
  them off the file). Without this, a batch's state changes could survive without the client
  messages they produced.
* **Closing the gap.** Events a receiver took off its socket but had not journaled when it was
  killed are lost with it. After a recovery the receiver asks every book to re-send its events after
  the last sequence number the journal holds (:func:`resend_request_record`); until the book's answer
  is complete (a RECOVERED record with ``op`` = :data:`RESEND_DONE`), the book's events are held
  (:class:`ResendGate`), then applied in sequence order with the duplicates dropped. Without the hold,
  a live event overtaking the re-send would raise the receiver's high-water mark and the re-sent
  events below it would be dropped as duplicates.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from actors.config import ClusterConfig, ConfigError, Durability
from exchange.instruments import Instrument
from exchange.journal import (
    FRAME,
    JournalError,
    JournalWriter,
    RecoveryReport,
    recover,
    scan_segment,
    segment_name,
    segments,
    snapshots,
)
from exchange.wire import EV_RECOVERED, REPORT

log = logging.getLogger("matchwire.durable")

COMMIT = b"C"  # the record that closes a committed batch

RESEND_REQUEST = 2  # op of a RECOVERED-kind record sent *to* a book: re-send my events after ``extra``
RESEND_DONE = 3  # op of the book's answer: every event up to ``extra`` for you has been re-sent
RISK_RECOVERED = 4  # op of a risk shard's hello after a restart (``order_id``: its actor index)
_SEQ_SYMBOL = struct.Struct("<Q8x8s")  # a report record's seq (byte 8) and symbol (byte 24)


def journal_directory(durability: Durability, node: str, actor: str) -> Path:
    """Where ``actor`` of ``node`` keeps its journal: ``STATE_DIR/NODE/KIND-N``."""
    return Path(durability.directory(node)) / actor.replace("/", "-")


_JOURNALED_KINDS = ("book", "gateway", "risk", "md")
LAYOUT_FILE = "layout.json"  # in STATE_DIR/NODE: the cluster as configured when the node first wrote there
LOCK_FILE = ".lock"  # in an actor's journal directory: held (flock) by the process whose actor writes it


def _has_journal(directory: Path) -> bool:
    return bool(segments(directory) or snapshots(directory))


def instrument_grid(instrument: Instrument) -> dict:
    """What a book's journal was checked against (``instrument.json`` beside it): replaying its commands on
    another grid would accept and reject other orders than the clients were told."""
    return {"symbol": instrument.symbol, "tick_size": instrument.tick_size, "lot_size": instrument.lot_size,
            "band": list(instrument.band) if instrument.band else None}


def cluster_layout(config: ClusterConfig) -> dict:
    """What journals depend on: the actors in number order (messages and journaled sources name actors by
    number; accounts go to risk shards by a hash modulo their number, orders to gateways by the number in their
    id), which node hosts each, and the instruments' grids."""
    return {"actors": list(config.actor_names),
            "nodes": {node.name: list(node.actors) for node in config.nodes},
            "instruments": {symbol: instrument_grid(i) for symbol, i in config.instruments.items()}}


class StateLock:
    """The exclusive lock of one actor's journal directory, held for the life of the node process.

    Two processes writing one journal would corrupt it (the second cuts what it takes for a torn tail while the
    first is writing it, and both re-send a book's events and say it recovered): a second copy of a node on the
    same host (an operator's ``matchwire node`` beside the launcher's, a supervisor's restart of a node that is
    stalled, not dead) is refused before it opens anything. The kernel drops the lock when the process ends,
    however it ends, so a restart after a crash never finds it stale.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"{directory}: cannot hold a journal there: {exc}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise ConfigError(f"{directory} is in use by another process (pid {holder}): a journal takes one "
                              "writer; stop that process first") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _layout_changes(old: dict, new: dict) -> list[str]:
    """What makes ``new`` read the journals of ``old`` otherwise. Actors added after all the others (a new node
    or new books at the end of the last one) number no existing actor otherwise and are allowed, except risk
    shards, whose number shards the accounts."""
    changes = []
    was, now = old.get("actors") or [], new["actors"]
    appended = now[len(was):] if now[:len(was)] == was else None
    if appended is None or any(actor.startswith("risk/") for actor in appended):
        gone, added = [a for a in was if a not in now], [a for a in now if a not in was]
        moved = [f"{a} #{was.index(a)} -> #{now.index(a)}" for a in was if a in now and was.index(a) != now.index(a)]
        changes += ([f"removed {', '.join(gone)}"] if gone else []) + ([f"added {', '.join(added)}"] if added else [])
        changes += [f"renumbered {', '.join(moved)}"] if moved else []
    for node, actors in new["nodes"].items():
        before = (old.get("nodes") or {}).get(node)
        if before is not None and actors[:len(before)] != before:
            changes.append(f"node {node} hosts {', '.join(actors) or 'nothing'} (was {', '.join(before) or 'nothing'})")
    for symbol, grid in new["instruments"].items():
        before = (old.get("instruments") or {}).get(symbol)
        if before is not None and before != grid:
            changes.append(f"{symbol}: " + ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in grid.items()
                                                    if before.get(k) != v))
    return changes


def check_state_dir(config: ClusterConfig, node: str, locks: list[StateLock] | None = None) -> None:
    """Make sure the journals in ``state_dir`` fit the configuration before ``node``'s actors replay them.

    A state directory holds one trading day of a cluster whose shape is what the journals mean: a book moved
    to another node started empty while the gateways and risk shards still held its orders, a book whose tick
    size had changed dropped its resting orders on replay (both found by drill). So within a state directory:

    * the configuration must keep the shape it had when the node first wrote there (``layout.json`` in the
      node's directory, :func:`cluster_layout`): the same actors in the same order, on the same nodes, the same
      instruments' grids. A change takes a fresh state directory (a new day);
    * journals of actors the configuration no longer has are an error (their orders would be forgotten), and
      so is an actor's journal under another node's directory.

    Each of the node's actors' directories is locked (:class:`StateLock`) before anything else: the locks go
    into ``locks`` for the caller to hold while the actors run, or are released on return when it is None.
    Raises :class:`ConfigError` naming the directory and the change.
    """
    durability = config.durability
    if not durability.enabled or not durability.state_dir:
        return
    root = Path(durability.state_dir)
    held: list[StateLock] = []
    try:
        for actor in config.node(node).actors:
            if actor.split("/", 1)[0] in _JOURNALED_KINDS:
                held.append(StateLock(root / node / actor.replace("/", "-")))
        _check(config, root, node)
    except BaseException:
        for lock in held:
            lock.release()
        raise
    if locks is None:
        for lock in held:
            lock.release()
    else:
        locks.extend(held)


def _check(config: ClusterConfig, root: Path, node: str) -> None:
    known = {actor.replace("/", "-"): actor for actor in config.actor_index}
    mine = {actor.replace("/", "-") for actor in config.node(node).actors}
    unknown, misplaced = [], []
    for directory in sorted(root.glob("*/*")):
        if not (directory.is_dir() and directory.name.split("-", 1)[0] in _JOURNALED_KINDS
                and _has_journal(directory)):
            continue
        if directory.name not in known:
            unknown.append(str(directory))
        elif directory.name in mine and directory.parent.name != node:
            misplaced.append(f"{known[directory.name]} is on node {node} but its journal is {directory}")
    if unknown:
        raise ConfigError(f"{root} holds journals of actors the configuration does not have: {', '.join(unknown)}; "
                          "their orders and state would be forgotten: put the actors back in the configuration, "
                          "or start with a fresh state directory")
    if misplaced:
        raise ConfigError(f"{'; '.join(misplaced)}: an actor stays on its node within a state directory "
                          "(a trading day); put it back, or start with a fresh state directory")
    layout_path = root / node / LAYOUT_FILE
    layout = cluster_layout(config)
    written = None
    if layout_path.exists():
        try:
            written = json.loads(layout_path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{layout_path}: unreadable: {exc}") from None
        changes = _layout_changes(written, layout)
        if changes:
            raise ConfigError(f"the configuration is not the one {root} was written with ({layout_path}): "
                              f"{'; '.join(changes)}. Journals name actors by number and replay orders on their "
                              "books' grids, so the cluster keeps its shape within a state directory (a trading "
                              "day; actors other than risk shards may be added after all the others): put it "
                              "back, or start with a fresh state directory")
    if written != layout:  # the first start, or actors added at the end: the shape from now on
        layout_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = layout_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(layout, indent=1))
        os.replace(temporary, layout_path)


def open_journal(durability: Durability, node: str,
                 actor: str) -> tuple[JournalWriter, dict | None, list[bytes], RecoveryReport]:
    """The actor's journal, recovered: (writer positioned after the last good record, the newest readable
    snapshot's state or None, the committed records after it, report)."""
    directory = journal_directory(durability, node, actor)
    directory.mkdir(parents=True, exist_ok=True)
    state, records, report = recover(directory)
    last = max((i for i, record in enumerate(records) if record == COMMIT), default=-1)
    if last + 1 < len(records):
        dropped = records[last + 1:]
        cut = sum(FRAME.size + len(record) for record in dropped)
        _cut_tail(directory, cut)
        report.truncated.append(f"{len(dropped)} records of an uncommitted batch ({cut} bytes) dropped")
        records = records[:last + 1]
    if report.truncated:
        log.error("%s: journal damaged, recovered to the last committed batch: %s", actor, report)
    elif records:
        log.warning("%s: recovered: %s", actor, report)
    writer = JournalWriter(directory, durability.fsync, durability.batch_ms,
                           next_index=report.snapshot_index + len(records))
    return writer, state, [record for record in records if record != COMMIT], report


class ActorSnapshots:
    """When an actor snapshots its journal: every ``snapshot_every`` records or ``snapshot_seconds`` (the
    books' rule), and only at a batch boundary, when everything journaled is committed, so the snapshot
    is exactly the state that replaying the journal up to it gives.

    Recovery is then the newest readable snapshot plus the records after it, and the journal's segments
    before the older of the two snapshots kept are pruned (``JournalWriter.snapshot``).
    """

    def __init__(self, durability: Durability, journal: JournalWriter) -> None:
        self.journal = journal
        self.every = durability.snapshot_every
        self.seconds = durability.snapshot_seconds
        self.base = journal.index  # records journaled when the last snapshot was taken (or at start)
        self.last = time.monotonic()
        self.taken = 0

    def due(self) -> bool:
        journal = self.journal
        grown = journal.index - self.base
        return grown > 0 and journal.index == journal.commit_mark and (
            grown >= self.every or time.monotonic() - self.last >= self.seconds)

    def take(self, state: dict) -> None:
        self.journal.snapshot(state)
        self.base = self.journal.index
        self.last = time.monotonic()
        self.taken += 1


class SnapshotArchive:
    """Records that snapshots cover but that the actor needs whole: the messages of the gateway's
    SoupBinTCP streams (a client may ask again from message 1), market data's re-request history.
    Putting them in every snapshot would rewrite them each time; leaving them in the journal would keep
    its segments. Instead each snapshot first appends what was made since the previous one to this
    append-only file (``archive/`` beside the journal, CRC-framed like it) and syncs it, and the snapshot
    records how many archive records it covers. Recovery reads those (with ``keep``, only the last
    ``keep`` of them, from the segments that hold them) and cuts off any more (appended for a snapshot
    whose rename never happened); fewer is a damaged archive, reported as such. With ``keep``, segments
    wholly older than that are deleted (:meth:`prune`): the archive stays bounded.
    """

    def __init__(self, directory: Path, covered: int, keep: int | None = None,
                 sink: Callable[[int, list[int], list[bytes]], None] | None = None) -> None:
        self.directory = directory / "archive"
        self.directory.mkdir(parents=True, exist_ok=True)
        # With a sink, the records recovered go to it a segment at a time, with where each one is (the
        # segment's first record index and each record's byte offset), instead of into ``records``: an
        # owner that reads them back from the files (:meth:`read_segment`) need not hold them all at once.
        self.records: list[bytes] = []
        self._load(covered, 0 if keep is None else max(0, covered - keep), sink or self._keep_records)
        self.writer = JournalWriter(self.directory, "none", next_index=covered)

    def _keep_records(self, segment: int, offsets: list[int], records: list[bytes]) -> None:
        self.records += records

    def _load(self, covered: int, first: int, sink: Callable[[int, list[int], list[bytes]], None]) -> None:
        """Records ``first`` .. ``covered`` - 1 to ``sink``; the file is cut after ``covered`` (and after damage)."""
        paths = segments(self.directory)
        starts = [int(p.name.split("-", 1)[1].split(".", 1)[0]) for p in paths]
        end = starts[0] if paths else 0
        if end > first:
            raise JournalError(f"{self.directory}: starts at record {end}, but record {first} is needed")
        stop = False
        for k, path in enumerate(paths):
            start = starts[k]
            if stop:
                path.unlink()  # after the cut: these records belong to no snapshot
                continue
            if k + 1 < len(paths) and starts[k + 1] <= first:
                end = starts[k + 1]
                continue  # wholly older than what is needed
            if start != end:
                raise JournalError(f"{path}: starts at record {start}, but the archive before it ends at {end}")
            good, offset, reason = scan_segment(path)
            if start + len(good) > covered:
                good = good[:covered - start]
                offset = sum(FRAME.size + len(record) for record in good)
                log.warning("%s: archive records of an unfinished snapshot cut off", self.directory)
                reason, stop = None, True
            elif reason is not None:
                log.error("%s: archive damaged: %s", path, reason)
                stop = True
            if stop:
                with open(path, "r+b") as handle:
                    handle.truncate(offset)
                    handle.flush()
                    os.fsync(handle.fileno())
            skip = max(0, first - start)
            if skip < len(good):
                offsets, at = [], 0
                for record in good:
                    offsets.append(at)
                    at += FRAME.size + len(record)
                sink(start, offsets[skip:], good[skip:])
            end = start + len(good)
        if end < covered:
            raise JournalError(f"{self.directory}: holds {end} records, but the snapshot covers {covered}")

    @property
    def count(self) -> int:
        return self.writer.index

    def extend(self, records: list[bytes]) -> tuple[int, list[int]]:
        """Append and sync (before the snapshot that counts them is written). Returns where they are: the
        segment's first record index (:meth:`read_segment` takes it) and each record's byte offset in it."""
        segment = self.writer.index
        self.writer.start_segment()  # every extend writes a segment of its own, named by its first record
        at = self.writer.file.tell()
        offsets = []
        for record in records:
            offsets.append(at)
            at += FRAME.size + len(record)
        self.writer.append_many(records)
        self.writer.file.flush()
        os.fsync(self.writer.file.fileno())
        self.writer.start_segment()
        return segment, offsets

    def read_segment(self, segment: int) -> bytes:
        """The whole segment that starts with record ``segment`` (:meth:`extend` says which), framed as the journal's:
        ``exchange.journal.iter_frames`` reads it."""
        return (self.directory / segment_name(segment)).read_bytes()

    def prune(self, before: int) -> None:
        """Delete the segments whose records all come before record ``before``."""
        paths = segments(self.directory)
        for path, following in zip(paths, paths[1:], strict=False):
            if int(following.name.split("-", 1)[1].split(".", 1)[0]) <= before and path != self.writer.path:
                path.unlink()

    def close(self) -> None:
        self.writer.close()


def _cut_tail(directory: Path, size: int) -> None:
    """Cut ``size`` bytes of whole records off the end of the journal (the newest segments)."""
    for path in reversed(segments(directory)):
        length = path.stat().st_size
        with open(path, "r+b") as handle:
            handle.truncate(max(0, length - size))
            handle.flush()
            os.fsync(handle.fileno())
        size -= min(size, length)
        if not size:
            return


def commit_and_wait(journal: JournalWriter, idle: bool = True) -> bool:
    """Close the batch with a commit record, commit, and under the batch policy sync when it is time.
    True when what was journaled is durable, so what it caused may leave.

    An ``idle`` actor (nothing more queued, or stopping) syncs at once. One with more input queued syncs only
    once ``batch_ms`` have passed since the last sync; until then: False, and the caller keeps its output for a
    later call, so the input behind joins the same fsync. An idle actor used to sleep until ``batch_ms`` had
    passed: at low rates that only added latency, since nothing arrived to share the fsync with (measured: the
    median order at 1k-2k orders/s took half as long without the sleep, an fsync taking 0.15-0.4 ms here).
    Sleeping while input was queued stalled the actor once per flush (a flush is due every 0.5 ms under load):
    that cut an OUCH gateway to half its rate under the batch policy.
    """
    if journal.index != journal.commit_mark:
        journal.append(COMMIT)
        journal.commit_mark = journal.index
    journal.commit()
    return sync_when_due(journal, idle)


def sync_when_due(journal: JournalWriter, idle: bool) -> bool:
    """The group commit's rule (see :func:`commit_and_wait`) for a journal already committed: True when what it
    holds is durable, syncing now if the actor is ``idle`` or the batch policy's interval has passed."""
    if not journal.durable():
        if not idle and journal.sync_due_ns():
            return False
        journal.sync()
    return True


def resend_request_record(symbol: str, after_seq: int) -> bytes:
    """Ask book ``symbol`` to re-send the events meant for the sender whose seq is above ``after_seq``."""
    return REPORT.pack(kind=EV_RECOVERED, side=0, order_type=0, tif=0, stp=0, flags=0, reason=0,
                       op=RESEND_REQUEST, seq=0, trace_ns=0, symbol=symbol, account="", account2="", order_id=0,
                       order_id2=0, price=0, qty=0, extra=after_seq, match_number=0)


def resend_done_record(symbol: str, seq: int) -> bytes:
    """A book's answer to a re-send request: everything up to ``seq`` meant for you has been sent."""
    return REPORT.pack(kind=EV_RECOVERED, side=0, order_type=0, tif=0, stp=0, flags=0, reason=0,
                       op=RESEND_DONE, seq=0, trace_ns=0, symbol=symbol, account="", account2="", order_id=0,
                       order_id2=0, price=0, qty=0, extra=seq, match_number=0)


def risk_recovered_record(shard_index: int) -> bytes:
    """A restarted risk shard tells the gateways: orders you sent me and I did not answer may be lost."""
    return REPORT.pack(kind=EV_RECOVERED, side=0, order_type=0, tif=0, stp=0, flags=0, reason=0,
                       op=RISK_RECOVERED, seq=0, trace_ns=0, symbol="", account="", account2="",
                       order_id=shard_index, order_id2=0, price=0, qty=0, extra=0, match_number=0)


def is_resend_done(buffer: bytes | memoryview, offset: int) -> bool:
    return buffer[offset] == EV_RECOVERED and buffer[offset + 7] == RESEND_DONE


class ResendGate:
    """Holds each book's events from a re-send request until the book says the re-send is complete.

    ``waiting`` is keyed by the symbol field as it is on the wire (8 bytes, space padded). Records
    with seq 0 (rejects made outside a book) are never held.
    """

    def __init__(self) -> None:
        self.waiting: dict[bytes, list[bytes]] = {}
        self.held_total = 0

    def wait_for(self, symbol: str) -> None:
        self.waiting.setdefault(symbol.encode().ljust(8, b" "), [])

    def hold(self, buffer: bytes | memoryview, offset: int, size: int) -> bool:
        """True (and the record kept) when it is a book event of a book being waited for."""
        if not self.waiting:
            return False
        seq, symbol = _SEQ_SYMBOL.unpack_from(buffer, offset + 8)
        held = self.waiting.get(symbol)
        if held is None or not seq:
            return False
        held.append(bytes(buffer[offset:offset + size]))
        self.held_total += 1
        return True

    def release(self, buffer: bytes | memoryview, offset: int) -> list[bytes] | None:
        """For a RESEND_DONE record: the held records of its book in sequence order (None if not waited for)."""
        symbol = bytes(buffer[offset + 24:offset + 32])
        held = self.waiting.pop(symbol, None)
        if held is None:
            return None
        held.sort(key=lambda record: _SEQ_SYMBOL.unpack_from(record, 8)[0])
        return held

    def route(self, buffer: bytes | memoryview, offset: int, size: int,
              apply: Callable[[bytes | memoryview, int], None], request_again: Callable[[str], None]) -> None:
        """One incoming record while waiting: hold it, release a book's held records in order, or apply it.

        A book that restarts before answering has forgotten the request: its RECOVERED record (op 1) makes
        the receiver ask again.
        """
        if is_resend_done(buffer, offset):
            for record in self.release(buffer, offset) or ():
                apply(record, 0)
            return
        if buffer[offset] == EV_RECOVERED and buffer[offset + 7] == 1:
            symbol = bytes(buffer[offset + 24:offset + 32])
            if symbol in self.waiting:
                request_again(symbol.decode("ascii", "replace").rstrip())
            apply(buffer, offset)
            return
        if not self.hold(buffer, offset, size):
            apply(buffer, offset)

    def symbols(self) -> list[str]:
        return sorted(s.decode().rstrip() for s in self.waiting)
