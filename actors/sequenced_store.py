"""Where a SoupBinTCP server keeps each user's stream of sequenced messages (numbered from 1 for the session).

A client may log in again at any time asking for any message from 1 on, so a stream is kept for the whole
session. :class:`MemorySequencedStore` keeps it in memory (a server without journals). :class:`DurableSequencedStore`
journals each message before any client sees it; given the owner's snapshot archive (the gateway's), it keeps in
memory only the messages not yet archived and reads older ones back from the archive's files through a sparse
index, so a session's memory does not grow with its messages (docs/order-entry.md, "Sequenced messages on disk").
"""

from __future__ import annotations

import bisect
import logging
import threading
from array import array
from typing import TYPE_CHECKING, Protocol

from exchange.journal import JournalError, JournalWriter, iter_frames, recover

if TYPE_CHECKING:
    from actors.durable import SnapshotArchive

__all__ = [
    "DurableSequencedStore",
    "MemorySequencedStore",
    "SequencedStore",
    "decode_sequenced_record",
    "encode_sequenced_record",
]

log = logging.getLogger("matchwire.soup")

SEQUENCED_TAG = b"S"  # journal records of sequenced messages start with this byte
MARK_EVERY = 128  # an index entry per this many archived messages of a user (and at each archive segment)


class SequencedStore(Protocol):
    """Each user's stream of outbound sequenced messages, numbered from 1.

    The server calls it under its own lock, so implementations need no locking against the server. A store may
    also have ``publish() -> set[str]``: then appended messages are sent only once published (after they are
    durable), see :meth:`actors.soup_server.SoupServer.publish_sequenced`.
    """

    def append(self, username: str, payload: bytes) -> int:
        """Add a message to ``username``'s stream; return its sequence number."""
        ...

    def get_from(self, username: str, seq: int, limit: int) -> list[bytes]:
        """Up to ``limit`` messages of ``username``'s stream starting with number ``seq``."""
        ...

    def next_seq(self, username: str) -> int:
        """The number the next appended message of ``username`` will get (1 for an empty stream)."""
        ...


class MemorySequencedStore:
    """A :class:`SequencedStore` in memory: one list of payloads per user."""

    def __init__(self) -> None:
        self._streams: dict[str, list[bytes]] = {}

    def append(self, username: str, payload: bytes) -> int:
        stream = self._streams.setdefault(username, [])
        stream.append(payload)
        return len(stream)

    def get_from(self, username: str, seq: int, limit: int) -> list[bytes]:
        stream = self._streams.get(username)
        if not stream or seq < 1:
            return []
        return stream[seq - 1:seq - 1 + limit]

    def next_seq(self, username: str) -> int:
        return len(self._streams.get(username, ())) + 1


def _name_bytes(username: str) -> bytes:
    return username.encode("ascii", "replace")[:255]


def encode_sequenced_record(username: str, payload: bytes) -> bytes:
    """A journal record holding one sequenced message: ``S``, username length (1 byte), username, payload."""
    name = _name_bytes(username)
    return SEQUENCED_TAG + bytes((len(name),)) + name + payload


def decode_sequenced_record(record: bytes) -> tuple[str, bytes] | None:
    """(username, payload) of a record made by :func:`encode_sequenced_record`; None for anything else."""
    if len(record) < 2 or record[:1] != SEQUENCED_TAG or len(record) < 2 + record[1]:
        return None
    end = 2 + record[1]
    return record[2:end].decode("ascii", "replace"), bytes(record[end:])


class _ArchiveIndex:
    """Where a user's archived messages are: for some of them (every :data:`MARK_EVERY`-th, and the first in each
    archive segment), the message number, the segment and the byte offset of its record. About 24 bytes per
    :data:`MARK_EVERY` messages, where the messages themselves took some 100 bytes each in memory."""

    __slots__ = ("offsets", "segments", "seqs")

    def __init__(self) -> None:
        self.seqs = array("q")
        self.segments = array("q")
        self.offsets = array("q")

    def add(self, seq: int, segment: int, offset: int) -> None:
        if not self.seqs or self.segments[-1] != segment or seq - self.seqs[-1] >= MARK_EVERY:
            self.seqs.append(seq)
            self.segments.append(segment)
            self.offsets.append(offset)


class DurableSequencedStore:
    """A :class:`SequencedStore` on a journal (``exchange.journal``: CRC-framed records, fsync policy).

    ``append`` writes the message to the journal at once, but the server does not see it (``get_from``, hence no
    client) until it has been committed and published (:meth:`publish`): a client is never sent a message that a
    crash could take back, so a client that logs in again after a restart, asking for its next sequence number,
    gets exactly what it missed. Commits are grouped: one per batch of appends (:meth:`commit`, or the owner's
    commit of a shared journal followed by :meth:`publish`).

    Standalone: ``DurableSequencedStore.open(directory, policy)`` recovers the streams from the directory's journal
    (a torn or corrupt tail is cut off and reported in ``recovery``) and keeps them in memory. Sharing the journal
    and the snapshot archive of an actor (the gateway keeps its order state in the same journal, so state and
    messages are committed together): pass ``journal`` and ``archive``; the archive's recovered records go to
    :meth:`restore_archived` (its ``sink``), the journal's to :meth:`restore_record`, and each snapshot moves the
    messages appended since the last one into the archive (:meth:`archive_unarchived`). Archived messages are then
    read back from the archive's files when a client asks for them (a re-login asking for old messages, or a client
    that fell behind), not kept in memory.

    Without a journal (``journal=None``; a gateway without journals), messages are visible at once and the archive
    is a spill file in a directory of the owner's: the owner archives whenever enough are held in memory. Nothing
    survives the process then, as without journals anything else, but a session's memory no longer grows with it.
    """

    def __init__(self, journal: JournalWriter | None, archive: SnapshotArchive | None = None) -> None:
        self.journal = journal  # None: messages are not journaled and visible at once (a spill to disk, see below)
        self.archive = archive
        self._held = 0  # messages in memory, all users
        self._tails: dict[str, list[bytes]] = {}  # per user, the messages not archived (all of them without archive)
        self._base: dict[str, int] = {}  # per user, how many messages come before its tail (archived)
        self._index: dict[str, _ArchiveIndex] = {}
        self._visible: dict[str, int] = {}
        self._unpublished: set[str] = set()
        self._cursor: dict[str, tuple[int, int, int]] = {}  # a replay's next (seq, segment, offset) per user
        # get_from runs on the server's thread under the server's lock; archiving cuts the tails on the owner's.
        self._lock = threading.Lock()
        self._cached: tuple[int, bytes] = (-1, b"")  # the archive segment last read
        self._unreadable: dict[str, int] = {}  # per user, the message the archive could not give back
        self.archive_read_errors = 0
        self.spill_failed = False
        self.recovery = ""

    @classmethod
    def open(cls, directory: str, policy: str = "batch", batch_ms: float = 2.0) -> DurableSequencedStore:
        """A store of its own in ``directory``, with every stream recovered from its journal."""
        _, records, report = recover(directory)
        store = cls(JournalWriter(directory, policy, batch_ms, next_index=report.snapshot_index + len(records)))
        for record in records:
            store.restore_record(record)
        store.recovery = str(report)
        if report.truncated:
            log.error("sequenced store damaged, recovered to the last good record: %s", report)
        return store

    def restore_record(self, record: bytes) -> bool:
        """Apply one recovered journal record (not archived: kept in memory until the next snapshot archives it);
        False when it is not a sequenced message."""
        decoded = decode_sequenced_record(record)
        if decoded is None:
            return False
        username, payload = decoded
        tail = self._tails.setdefault(username, [])
        tail.append(payload)
        self._held += 1
        self._visible[username] = self._base.get(username, 0) + len(tail)
        return True

    def restore_archived(self, segment: int, offsets: list[int], records: list[bytes]) -> None:
        """The archive's recovered records of one segment (the :class:`actors.durable.SnapshotArchive` sink):
        indexed where they are, not kept. They come before any journal record (:meth:`restore_record`)."""
        for offset, record in zip(offsets, records, strict=True):
            if record[:1] != SEQUENCED_TAG or len(record) < 2 + record[1]:
                continue
            username = record[2:2 + record[1]].decode("ascii", "replace")
            seq = self._base.get(username, 0) + 1
            self._base[username] = seq
            self._visible[username] = seq
            self._index.setdefault(username, _ArchiveIndex()).add(seq, segment, offset)

    def archive_unarchived(self) -> int:
        """Append the messages made since the last call to the archive (synced there) and drop them from memory;
        the number archived. The owner calls it before writing the snapshot that counts them."""
        assert self.archive is not None
        users = [(username, tail) for username, tail in self._tails.items() if tail]
        records = [encode_sequenced_record(username, payload) for username, tail in users for payload in tail]
        if not records:
            return 0
        segment, offsets = self.archive.extend(records)
        with self._lock:
            at = 0
            for username, tail in users:
                base = self._base.get(username, 0)
                index = self._index.setdefault(username, _ArchiveIndex())
                for k in range(len(tail)):
                    index.add(base + k + 1, segment, offsets[at + k])
                at += len(tail)
                self._base[username] = base + len(tail)
                # Only what was archived goes: the owner's thread appends, and it is the one calling.
                self._tails[username] = []
            self._held -= len(records)
        return len(records)

    def spill_if_due(self, limit: int) -> None:
        """Without a journal: move the messages held to the archive once ``limit`` are. A spill that fails (a full
        disk) is logged, and the messages stay in memory from then on: a session goes on as before spilling
        existed, rather than losing its gateway."""
        if self._held < limit or self.spill_failed:
            return
        try:
            self.archive_unarchived()
        except OSError as exc:
            self.spill_failed = True
            assert self.archive is not None
            log.error("cannot write sequenced messages to %s (%s): keeping them in memory from now on",
                      self.archive.directory, exc)

    def append(self, username: str, payload: bytes) -> int:
        tail = self._tails.get(username)
        if tail is None:
            tail = self._tails[username] = []
        tail.append(payload)
        self._held += 1
        seq = self._base.get(username, 0) + len(tail)
        if self.journal is None:
            self._visible[username] = seq
        else:
            self.journal.append(encode_sequenced_record(username, payload))
            self._unpublished.add(username)
        return seq

    def get_from(self, username: str, seq: int, limit: int) -> list[bytes]:
        with self._lock:
            base = self._base.get(username, 0)
            end = min(seq - 1 + limit, self._visible.get(username, 0))  # the last number to return
            if seq < 1 or seq > end:
                return []
            out: list[bytes] = []
            if seq <= base:
                last = min(end, base)
                out = self._read_archived(username, seq, last)
                if len(out) < last - seq + 1:
                    return out  # a damaged archive (logged): what follows the gap cannot be sent in order
                seq = last + 1
            if seq <= end:
                out += self._tails.get(username, [])[seq - base - 1:end - base]
            return out

    def _read_archived(self, username: str, seq: int, last: int) -> list[bytes]:
        """Messages ``seq`` .. ``last`` of ``username`` from the archive's files (fewer if they are damaged)."""
        assert self.archive is not None
        cursor = self._cursor.get(username)
        if cursor is not None and cursor[0] == seq:
            at, segment, offset = cursor  # a replay going on where the previous call stopped
        else:
            index = self._index[username]
            k = bisect.bisect_right(index.seqs, seq) - 1
            at, segment, offset = index.seqs[k], index.segments[k], index.offsets[k]
        name = _name_bytes(username)
        prefix = SEQUENCED_TAG + bytes((len(name),)) + name
        cut = len(prefix)
        out: list[bytes] = []
        while at <= last:
            try:
                frames = iter_frames(self._segment(segment), offset)
                for offset, record in frames:  # noqa: B007  # where the cursor stops
                    if record[:cut] == prefix:
                        if at >= seq:
                            out.append(record[cut:])
                        at += 1
                        if at > last:
                            break
            except (JournalError, OSError) as exc:
                self._damaged(username, at, segment, offset, str(exc))
                return out
            if at <= last:
                # The end of a segment: the user's next message is its first in a later one, which the index marks.
                following = self._next_segment(username, at, segment)
                if following is None:
                    self._damaged(username, at, segment, offset, "the segment ends before the message")
                    return out
                segment, offset = following
        self._cursor[username] = (at, segment, offset)
        return out

    def _segment(self, segment: int) -> bytes:
        """A whole archive segment (one snapshot's or spill's messages), the last one read kept: a replay reads on
        in it."""
        if self._cached[0] != segment:
            assert self.archive is not None
            self._cached = (segment, self.archive.read_segment(segment))
        return self._cached[1]

    def _next_segment(self, username: str, seq: int, segment: int) -> tuple[int, int] | None:
        index = self._index[username]
        k = bisect.bisect_left(index.seqs, seq)
        if k < len(index.seqs) and index.seqs[k] == seq and index.segments[k] > segment:
            return index.segments[k], index.offsets[k]
        return None

    def _damaged(self, username: str, seq: int, segment: int, offset: int, reason: str) -> None:
        """Count and log (once per user and message) an archive that cannot give back a message it holds."""
        assert self.archive is not None
        self._cursor.pop(username, None)
        if self._unreadable.get(username) == seq:
            return  # the server asks again with every new message: said once is enough
        self._unreadable[username] = seq
        self.archive_read_errors += 1
        log.error("%s: %s (segment of record %d, read from offset %d): %s's messages from %d on cannot be sent",
                  self.archive.directory, reason, segment, offset, username, seq)

    def next_seq(self, username: str) -> int:
        return self._base.get(username, 0) + len(self._tails.get(username, ())) + 1

    def held_in_memory(self) -> int:
        """Messages kept in memory (not yet archived), all users."""
        return self._held

    def publish(self) -> set[str]:
        """Make every appended message visible (the caller made the journal durable); the users touched."""
        users, self._unpublished = self._unpublished, set()
        for username in users:
            self._visible[username] = self._base.get(username, 0) + len(self._tails[username])
        return users

    def commit(self) -> set[str]:
        """Commit the journal and make it durable (the batch policy's fsync at once), then publish."""
        assert self.journal is not None
        self.journal.commit()
        if not self.journal.durable():
            self.journal.sync()
        return self.publish()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
