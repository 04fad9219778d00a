"""The journals of gateways, risk shards and market data: whole committed batches only, re-send gating."""

from __future__ import annotations

import time

from actors.config import Durability
from actors.durable import ResendGate, commit_and_wait, open_journal, resend_done_record
from exchange.orders import Accepted, NewOrder, Side
from exchange.wire import REPORT_SIZE, event_to_record


def test_only_committed_batches_are_recovered_and_the_rest_is_cut_off(tmp_path):
    durability = Durability(enabled=True, state_dir=str(tmp_path), fsync="always")
    journal, _, records, report = open_journal(durability, "node", "gateway/0")
    assert records == [] and not report.truncated
    journal.append_many([b"O-1", b"S-1"])
    commit_and_wait(journal)
    commit_and_wait(journal)  # nothing new: no empty batch is written
    journal.append_many([b"O-2", b"S-2"])
    commit_and_wait(journal)
    journal.append_many([b"E-3", b"S-3"])  # a batch the process died in the middle of
    journal.commit()  # on disk, but never closed by a commit record
    journal.close()

    journal, _, records, report = open_journal(durability, "node", "gateway/0")
    assert records == [b"O-1", b"S-1", b"O-2", b"S-2"]
    assert report.truncated and "2 records of an uncommitted batch" in report.truncated[0]
    journal.append(b"O-4")
    commit_and_wait(journal)
    journal.close()
    # The uncommitted batch was cut off the file: what follows it is read back in place.
    _, _, records, report = open_journal(durability, "node", "gateway/0")
    assert records == [b"O-1", b"S-1", b"O-2", b"S-2", b"O-4"] and not report.truncated


def test_batch_policy_an_idle_actor_syncs_at_once_a_busy_one_when_the_interval_has_passed(tmp_path):
    # A long interval, so that "not due yet" holds for the whole test: the old rule slept it out.
    durability = Durability(enabled=True, state_dir=str(tmp_path), fsync="batch", batch_ms=600_000)
    journal, _, _, _ = open_journal(durability, "node", "risk/0")
    journal.append(b"O-1")
    assert commit_and_wait(journal, idle=True)  # idle: synced now, however recent the last sync
    assert journal.durable() and journal.stats["fsyncs"] == 1
    journal.append(b"O-2")
    # More input queued and the interval not over: not durable yet, the caller keeps what the batch caused.
    assert not commit_and_wait(journal, idle=False)
    assert not journal.durable() and journal.stats["fsyncs"] == 1
    journal.append(b"O-3")
    assert commit_and_wait(journal, idle=True)  # the queue ran dry: both batches share one fsync
    assert journal.durable() and journal.stats["fsyncs"] == 2
    journal.last_sync_ns -= 600_000 * 10**6  # the interval has passed: a busy actor syncs too
    journal.append(b"O-4")
    assert commit_and_wait(journal, idle=False) and journal.stats["fsyncs"] == 3
    journal.close()
    _, _, records, _ = open_journal(durability, "node", "risk/0")
    assert records == [b"O-1", b"O-2", b"O-3", b"O-4"]


def test_policy_none_never_syncs_and_never_holds_output(tmp_path):
    durability = Durability(enabled=True, state_dir=str(tmp_path), fsync="none")
    journal, _, _, _ = open_journal(durability, "node", "md/0")
    for n in range(3):
        journal.append(b"M-%d" % n)
        assert commit_and_wait(journal, idle=n % 2 == 0)
    assert journal.stats["fsyncs"] == 0
    journal.close()


def _accepted(seq: int, symbol: str = "AAPL") -> bytes:
    return event_to_record(Accepted(seq, NewOrder(symbol, seq, "A1", Side.BUY, 100, 10)), 0)


def test_a_held_book_is_released_in_sequence_order_when_its_re_send_is_complete():
    gate = ResendGate()
    gate.wait_for("AAPL")
    applied: list[int] = []
    asked: list[str] = []

    def apply(buffer, offset):  # noqa: ANN001
        applied.append(int.from_bytes(bytes(buffer[offset + 8:offset + 16]), "little"))

    # Live events overtake the re-send; another book's events are not held.
    for record in (_accepted(12), _accepted(13), _accepted(5, "MSFT"), _accepted(10), _accepted(11)):
        gate.route(record, 0, REPORT_SIZE, apply, asked.append)
    assert applied == [5]
    gate.route(resend_done_record("AAPL", 13), 0, REPORT_SIZE, apply, asked.append)
    assert applied == [5, 10, 11, 12, 13] and not gate.waiting and asked == []


def test_an_idle_book_syncs_at_once_under_the_batch_policy(tmp_path):
    """A book that runs out of input syncs and sends its reports now; it used to sleep until ``batch_ms`` had passed
    since its last fsync (here a minute, so the old rule could not pass)."""
    from actors.config import cluster_order_id, load_config
    from exchange.orders import NewOrder, Side
    from exchange.wire import command_to_record
    from tests.actors.cluster_helpers import wait_for
    from tests.actors.test_modify_versions import BookUnderTest

    book = BookUnderTest(tmp_path)
    path = tmp_path / "cluster.toml"
    path.write_text(path.read_text().replace('fsync = "none"', 'fsync = "batch"\nbatch_ms = 60000'))
    book.config = load_config(path)
    book.start()
    try:
        started = time.monotonic()
        book.send(command_to_record(NewOrder("AAPL", cluster_order_id(0, 1), "A1", Side.BUY, 100, 50)))
        book.send(command_to_record(NewOrder("AAPL", cluster_order_id(0, 2), "A2", Side.SELL, 100, 20)))
        assert wait_for(lambda: len(book.collector.ask("reports")) >= 4, timeout=20)  # 2 accepted, added, fill
        assert time.monotonic() - started < 20
        stats = book.control("stats")["stats"]
        assert stats["journal_policy"] == "batch" and 1 <= stats["journal_fsyncs"] <= 2, stats
    finally:
        book.stop()
