"""A book's history of recent events for re-sends: the newest in memory, older ones in files, whole files dropped."""

from __future__ import annotations

import pytest

from actors.event_history import EventHistory, in_memory_for
from exchange.orders import Accepted, NewOrder, Side
from exchange.wire import event_to_record


def _record(seq: int) -> bytes:
    return event_to_record(Accepted(seq, NewOrder("AAPL", seq, "A1", Side.BUY, 1_000_000, 100)), 0)


def _seqs(history: EventHistory, after: int) -> list[int]:
    return [int.from_bytes(record[8:16], "little") for record, _ in history.since(after)]


def test_history_spills_to_files_keeps_the_newest_and_gives_back_every_event_after_a_number(tmp_path):
    history = EventHistory(tmp_path / "history", keep=1_000, in_memory=100)
    for seq in range(1, 2_501):
        history.append(_record(seq), seq % 3 if seq % 5 else None)
    # Memory holds 100 to 199 events; files hold whole chunks of 100; the window is 1,000 to 1,100 events.
    assert 100 <= len(history.memory) < 200 and 1_000 <= len(history) < 1_100
    files = sorted((tmp_path / "history").glob("events-*.bin"))
    assert len(files) == len(history.files) and all(p.stat().st_size == 100 * 98 for p in files)
    oldest = history.oldest_seq()
    assert oldest == 2_501 - len(history)
    assert _seqs(history, 0) == list(range(oldest, 2_501))
    for after in (oldest - 50, oldest, oldest + 1, 1_999, 2_400, 2_450, 2_499, 2_500, 3_000):
        assert _seqs(history, after) == list(range(max(after + 1, oldest), 2_501)), after
    sources = {int.from_bytes(r[8:16], "little"): s for r, s in history.since(0)}
    assert all(sources[seq] == (seq % 3 if seq % 5 else None) for seq in sources)


def test_a_new_incarnation_starts_empty_and_removes_the_old_files(tmp_path):
    history = EventHistory(tmp_path, keep=1_000, in_memory=10)
    for seq in range(1, 100):
        history.append(_record(seq), 1)
    assert list(tmp_path.glob("events-*.bin"))
    again = EventHistory(tmp_path, keep=1_000, in_memory=10)
    assert len(again) == 0 and again.oldest_seq() == 0 and not list(tmp_path.glob("events-*.bin"))
    assert list(again.since(0)) == []


def test_in_memory_share_and_bad_sizes():
    assert in_memory_for(3) == 20_000 and in_memory_for(1_000) == 1_000 and in_memory_for(100) == 4_000
    history = EventHistory(None, keep=5, in_memory=5)  # no directory: memory only, the newest ``keep``
    for seq in range(1, 9):
        history.append(_record(seq), None)
    assert _seqs(history, 0) == [4, 5, 6, 7, 8]
    with pytest.raises(ValueError):
        EventHistory(None, keep=0)


@pytest.mark.parametrize("value", ["-1", "1.5", '"many"'])
def test_a_bad_events_in_memory_is_refused_naming_the_file(tmp_path, value):
    from actors.config import ConfigError, load_config
    from tests.actors.cluster_helpers import write_config

    path = write_config(tmp_path, extra=f"[durability]\nenabled = true\nevents_in_memory = {value}\n")
    with pytest.raises(ConfigError, match=f"{path}: durability.events_in_memory must be a whole number"):
        load_config(path)
    good = write_config(tmp_path, extra="[durability]\nenabled = true\nevents_in_memory = 50\n")
    assert load_config(good).durability.events_in_memory == 50
