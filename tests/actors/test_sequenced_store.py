"""The durable store of SoupBinTCP streams: archived messages are read back from the archive's files."""

from __future__ import annotations

import logging
import random

from actors.durable import SnapshotArchive
from actors.sequenced_store import MARK_EVERY, DurableSequencedStore
from exchange.journal import JournalWriter, segments


def _store(directory, covered: int = 0) -> DurableSequencedStore:  # noqa: ANN001
    store = DurableSequencedStore(JournalWriter(directory, "none"))
    store.archive = SnapshotArchive(directory, covered, sink=store.restore_archived)
    return store


def _fill(store: DurableSequencedStore, expected: dict[str, list[bytes]], rng: random.Random, count: int) -> None:
    # Users of very different activity, interleaved: the reads skip the others' records.
    for _ in range(count):
        user = rng.choices(["BUSY", "MID", "RARE", "A_LONGER_NAME"], weights=[60, 25, 1, 14])[0]
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 90)))
        expected.setdefault(user, []).append(payload)
        assert store.append(user, payload) == len(expected[user])
    store.publish()


def _check_every_range(store: DurableSequencedStore, expected: dict[str, list[bytes]], rng: random.Random) -> None:
    for user, stream in expected.items():
        assert store.next_seq(user) == len(stream) + 1
        # A whole replay from 1 the way the server pulls it (256 at a time), and random windows.
        got: list[bytes] = []
        while batch := store.get_from(user, len(got) + 1, 256):
            got += batch
        assert got == stream, user
        for _ in range(20):
            seq = rng.randrange(1, len(stream) + 2)
            limit = rng.randrange(1, 400)
            assert store.get_from(user, seq, limit) == stream[seq - 1:seq - 1 + limit], (user, seq, limit)


def test_archived_messages_come_back_from_disk_in_order_across_segments_and_a_restart(tmp_path):
    rng = random.Random(3)
    store = _store(tmp_path)
    expected: dict[str, list[bytes]] = {}
    for _ in range(6):  # six snapshots: six archive segments
        _fill(store, expected, rng, 2_000)
        store.archive_unarchived()
    _fill(store, expected, rng, 500)  # and some not archived yet
    assert len(segments(tmp_path / "archive")) >= 6
    assert store.held_in_memory() == 500
    assert sum(len(index.seqs) for index in store._index.values()) < 12_000 / MARK_EVERY + 4 * 6 + 4
    _check_every_range(store, expected, rng)

    # A restart: the archive's records are indexed, not held; the journal's (not archived) come back into memory.
    covered = store.archive.count
    store.archive.close()
    again = _store(tmp_path, covered)
    tails = {user: stream[len(stream) - len(store._tails.get(user, [])):] for user, stream in expected.items()}
    for user, tail in tails.items():
        for payload in tail:
            again.restore_record(b"S" + bytes((len(user),)) + user.encode() + payload)
    assert again.held_in_memory() == 500
    _check_every_range(again, expected, rng)
    # Messages go on being numbered after the recovered ones.
    assert again.append("RARE", b"next") == len(expected["RARE"]) + 1


def test_a_damaged_archive_is_reported_once_and_what_comes_before_the_damage_is_still_sent(tmp_path, caplog):
    store = _store(tmp_path)
    for k in range(300):
        store.append("U", b"message %03d" % k)
    store.publish()
    store.archive_unarchived()
    path = next(p for p in segments(tmp_path / "archive") if p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in the middle: that record's CRC fails
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="matchwire.soup"):
        got: list[bytes] = []
        while batch := store.get_from("U", len(got) + 1, 64):
            got += batch
        assert 100 < len(got) < 160 and got == [b"message %03d" % k for k in range(len(got))]
        assert store.get_from("U", len(got) + 1, 64) == []  # asked again: nothing, and no second report
    reports = [r.getMessage() for r in caplog.records]
    assert len(reports) == 1 and "CRC mismatch" in reports[0] and f"from {len(got) + 1} on" in reports[0]
    assert str(tmp_path / "archive") in reports[0] and store.archive_read_errors == 1


def test_without_a_journal_messages_are_visible_at_once_and_spill_to_the_archive(tmp_path):
    store = DurableSequencedStore(None)
    store.archive = SnapshotArchive(tmp_path, 0, sink=store.restore_archived)
    assert [store.append("U", b"m%d" % k) for k in range(1, 4)] == [1, 2, 3]
    assert store.get_from("U", 1, 10) == [b"m1", b"m2", b"m3"]  # nothing to publish: no journal to wait for
    assert store.archive_unarchived() == 3 and store.held_in_memory() == 0
    store.append("U", b"m4")
    assert store.get_from("U", 2, 10) == [b"m2", b"m3", b"m4"] and store.held_in_memory() == 1
    assert not list(tmp_path.glob("journal-*"))  # only the archive was written
    store.close()


def test_a_spill_that_fails_keeps_the_messages_in_memory_and_says_so_once(tmp_path, caplog):
    import shutil

    store = DurableSequencedStore(None)
    store.archive = SnapshotArchive(tmp_path, 0, sink=store.restore_archived)
    for k in range(5):
        store.append("U", b"m%d" % k)
    store.spill_if_due(5)
    assert store.held_in_memory() == 0
    shutil.rmtree(tmp_path / "archive")  # the spill directory gone (or its disk full): writing fails
    with caplog.at_level(logging.ERROR, logger="matchwire.soup"):
        for k in range(5, 20):
            store.append("U", b"m%d" % k)
            store.spill_if_due(5)
    assert store.spill_failed and store.held_in_memory() == 15
    assert len([r for r in caplog.records if "keeping them in memory" in r.getMessage()]) == 1
    assert store.get_from("U", 6, 100) == [b"m%d" % k for k in range(5, 20)]  # from memory, in order
