"""Journal snapshots of the gateway, risk shards and market data (docs/durability.md "Snapshots")."""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

import pytest

from actors.admin import admin_request
from actors.config import Durability
from actors.durable import ActorSnapshots, SnapshotArchive, commit_and_wait, open_journal
from actors.journal_cli import inspect, replay
from actors.ouch_client import LoginRejected, OuchClient
from actors.sequenced_store import DurableSequencedStore, encode_sequenced_record
from exchange.engine import OrderBook
from exchange.eventbook import EventBook
from exchange.instruments import Instrument
from exchange.itch_publisher import ItchPublisher
from exchange.journal import JournalError, JournalWriter, recover, segments, snapshots
from exchange.orders import CancelOrder, ModifyOrder, NewOrder, Side
from exchange.ouch import OuchTranslator, encode_inbound
from tests.actors.cluster_helpers import start_cluster, users_toml, wait_for, write_config
from tests.actors.test_durability import OUCH_USERS, FeedListener, OuchTrader


def _events(n: int, seed: int = 5) -> list:
    """Events of a random day on one book: adds, crosses, cancels, modifies."""
    rng = random.Random(seed)
    book = OrderBook(Instrument("X", tick_size=1))
    events = []
    live: list[int] = []
    for i in range(1, n + 1):
        draw = rng.random()
        if draw < 0.15 and live:
            command = CancelOrder("X", live.pop(rng.randrange(len(live))))
        elif draw < 0.25 and live:
            command = ModifyOrder("X", rng.choice(live), 1000 + rng.randint(-4, 4), rng.randint(1, 9) * 10)
        else:
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            command = NewOrder("X", i, "A" if rng.random() < 0.5 else "B", side, 1000 + rng.randint(-5, 5),
                               rng.randint(1, 9) * 10)
            live.append(i)
        events += book.process(command)
    return events


def test_market_data_state_round_trips_and_publishes_on_identically():
    events = _events(3000)
    clock = iter(range(10**9, 10**12)).__next__

    def publisher() -> ItchPublisher:
        return ItchPublisher(["X"], clock=clock, attribution={"A": "ABCD"})

    original, view = publisher(), EventBook()
    original.start_of_day()
    for event in events[:2000]:
        original.on_event(event)
        view.apply(event)
    restored, restored_view = publisher(), EventBook()
    restored.load_state(original.save_state())
    restored_view.load_state(view.save_state())
    assert restored.save_state() == original.save_state()
    assert restored_view.save_state() == view.save_state() and restored_view.depth("X") == view.depth("X")
    # The rest of the day gives the same ITCH messages from both (timestamps from one clock: made equal).
    for event in events[2000:]:
        a, b = original.on_event(event), restored.on_event(event)
        assert [m[:5] + m[11:] for m in a] == [m[:5] + m[11:] for m in b]
        view.apply(event)
        restored_view.apply(event)
    assert restored.save_state() == original.save_state() and restored_view.save_state() == view.save_state()


def test_ouch_translator_state_round_trips_with_requests_in_flight():
    ids = iter(range(1, 10**6)).__next__
    translator = OuchTranslator({"U": ["A1"]}, next_order_id=ids, clock=lambda: 1)
    book = OrderBook(Instrument("X", tick_size=1))
    for ref in range(1, 6):
        result = translator.on_message("U", encode_inbound(
            "O", user_ref_num=ref, side="B", quantity=100, symbol="X", price=1000 + ref, time_in_force="0",
            display="Y", capacity="A", inter_market_sweep_eligibility="N", cross_type="N", cl_ord_id=f"C{ref}",
            options={}))
        for command in result.commands:
            translator.on_events(book.process(command))
    # The replace and the cancel are sent and not answered yet: in flight at the snapshot.
    translator.on_message("U", encode_inbound("U", orig_user_ref_num=2, user_ref_num=6, quantity=50, price=999,
                                              time_in_force="0", display="Y", inter_market_sweep_eligibility="N",
                                              cl_ord_id="R6", options={"tag_99": b"\x01"}))
    translator.on_message("U", encode_inbound("X", user_ref_num=4, quantity=0))
    saved = translator.save_state()
    restored = OuchTranslator({"U": ["A1"]}, next_order_id=ids, clock=lambda: 1)
    restored.load_state(saved)
    assert restored.save_state() == saved
    assert {ref for _, ref in restored.orders} == {1, 2, 3, 4, 5} and len(restored.by_id) == 5
    assert [r for r, _ in restored.by_id[2].pending] == ["replace"] and restored.last_user_ref_num["U"] == 6


def test_archive_keeps_what_the_snapshot_counts_and_cuts_the_rest(tmp_path):
    archive = SnapshotArchive(tmp_path, 0)
    archive.extend([b"a", b"b", b"c"])
    archive.close()
    assert SnapshotArchive(tmp_path, 3).records == [b"a", b"b", b"c"]
    # Records appended for a snapshot whose rename never happened are cut off, then appends go on after.
    archive = SnapshotArchive(tmp_path, 2)
    assert archive.records == [b"a", b"b"] and archive.count == 2
    archive.extend([b"z"])
    archive.close()
    assert recover(tmp_path / "archive")[1] == [b"a", b"b", b"z"]
    with pytest.raises(JournalError, match="holds 3 records, but the snapshot covers 5"):
        SnapshotArchive(tmp_path, 5)


def test_a_bounded_archive_reads_and_keeps_only_its_last_records(tmp_path):
    archive = SnapshotArchive(tmp_path, 0, keep=3)
    previous = 0
    for batch in ([b"a", b"b"], [b"c", b"d"], [b"e", b"f"], [b"g", b"h"]):
        archive.extend(batch)  # one segment per snapshot
        archive.prune(previous - 3)  # what the older of the two snapshots kept needs stays
        previous = archive.count
    archive.close()
    assert [p.name[-8:-4] for p in segments(tmp_path / "archive")] == ["0002", "0004", "0006", "0008"]
    assert SnapshotArchive(tmp_path, 8, keep=3).records == [b"f", b"g", b"h"]  # skips what is not needed
    assert SnapshotArchive(tmp_path, 6, keep=3).records == [b"d", b"e", b"f"]  # the older snapshot's
    assert SnapshotArchive(tmp_path, 6, keep=3).count == 6  # and "g", "h" were cut: no snapshot covers them
    with pytest.raises(JournalError, match="record 0 is needed"):
        SnapshotArchive(tmp_path, 6, keep=10)


def test_store_hands_each_message_to_the_archive_once_and_reads_it_back_from_there(tmp_path):
    store = DurableSequencedStore(JournalWriter(tmp_path, "none"))
    archive = SnapshotArchive(tmp_path, 0, sink=store.restore_archived)
    store.archive = archive
    store.restore_record(encode_sequenced_record("U", b"m1"))
    store.append("V", b"v1")
    store.publish()
    assert store.archive_unarchived() == 2 and store.held_in_memory() == 0
    assert store.archive_unarchived() == 0
    store.append("U", b"m2")
    store.publish()
    assert store.archive_unarchived() == 1
    records = [encode_sequenced_record(user, message) for user, message in (("U", b"m1"), ("V", b"v1"), ("U", b"m2"))]
    assert recover(tmp_path / "archive")[1] == records
    assert store.get_from("U", 1, 10) == [b"m1", b"m2"] and store.get_from("V", 1, 10) == [b"v1"]
    assert store.next_seq("U") == 3 and store.next_seq("V") == 2


def test_snapshots_come_at_batch_boundaries_and_recovery_starts_from_the_newest(tmp_path):
    durability = Durability(enabled=True, state_dir=str(tmp_path), fsync="none", snapshot_every=4,
                            snapshot_seconds=3600)
    journal, state, records, _ = open_journal(durability, "node", "risk/0")
    schedule = ActorSnapshots(durability, journal)
    taken = []
    for batch in range(10):
        journal.append_many([b"r%d" % batch] * 2)
        assert not schedule.due()  # appended, not committed: not a batch boundary
        commit_and_wait(journal)
        if schedule.due():
            schedule.take({"batch": batch})
            taken.append(batch)
    journal.append(b"tail")
    commit_and_wait(journal)
    journal.close()
    assert taken == [1, 3, 5, 7, 9]  # 3 records a batch with its commit record: due every second batch
    _, state, records, report = open_journal(durability, "node", "risk/0")
    assert state == {"batch": 9} and records == [b"tail"] and report.snapshot_index == 30
    directory = tmp_path / "node" / "risk-0"
    assert len(snapshots(directory)) == 2 and len(segments(directory)) == 2  # older segments pruned
    # Without a readable snapshot the pruned journal cannot be replayed: an error, not a partial state.
    for path in snapshots(directory):
        path.write_text("{torn")
    with pytest.raises(JournalError, match="no readable snapshot covers"):
        recover(directory)


ROLES = {"gateway": ("gateway/0",), "risk": ("risk/0", "risk/1"), "md": ("md/0",)}


def _all_messages(address: tuple[str, int], user: str, count: int) -> list[bytes]:
    """Every sequenced message of ``user``'s stream, from a fresh login asking for message 1."""
    clients: list[OuchClient] = []

    def login() -> bool:
        try:
            clients.append(OuchClient(*address, user, OUCH_USERS[user][0], next_seq=1))
        except LoginRejected:
            return False  # the server has not seen this user's last session end yet
        return True

    assert wait_for(login, timeout=10, interval=0.2), f"{user} cannot log in"
    client, out = clients[0], []
    try:
        deadline = time.monotonic() + 20
        while len(out) < count and time.monotonic() < deadline:
            item = client.recv_raw(0.5)
            if item is not None:
                out.append(item[1])
    finally:
        client.close()
    return out


def test_gateway_risk_and_market_data_recover_their_state_from_snapshots(tmp_path):
    feed = FeedListener()
    users = users_toml(OUCH_USERS)
    extra = ('[durability]\nenabled = true\nfsync = "batch"\nbatch_ms = 2.0\nsnapshot_every = 40\n'
             f'[market_data]\ntargets = ["127.0.0.1:{feed.port}"]\nsession = "SNAPS"\nhistory = 60\n' + users)
    cluster = start_cluster(write_config(tmp_path, extra=extra), tmp_path / "logs")
    feed.start()
    config = cluster.config
    address = config.ouch_address()
    traders = [OuchTrader(address, user, seed) for seed, user in enumerate(OUCH_USERS)]
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for trader in traders:
                trader.step()
            time.sleep(0.003)
        wait_for(lambda: all([(t.read(0.05), set(t.sent) <= t.answered)[1] for t in traders]), timeout=20)
        for trader in traders:
            trader.read(0.5)
        receivers = [actor for actors in ROLES.values() for actor in actors]

        def states() -> dict:
            return {a: admin_request(config, a, {"command": "journal_state"})["state"] for a in receivers}

        # A quiet point: nothing changes any more.
        wait_for(lambda: (states() == states()), timeout=10, interval=0.3)
        before = states()
        user = next(iter(OUCH_USERS))
        sequenced = traders[0].client.next_seq - 1
        for trader in traders:
            trader.client.close()  # a user has one session at a time: the reader below takes theirs
        messages_before = _all_messages(address, user, sequenced)
        assert len(messages_before) == sequenced > 50
        for node, actors in ROLES.items():
            for actor in actors:
                directory = Path(cluster.state_dir) / node / actor.replace("/", "-")
                assert len(snapshots(directory)) == 2, f"{actor}: no snapshots taken"
                assert segments(directory)[0].name != "journal-00000000000000000000.log", f"{actor}: nothing pruned"
        assert recover(Path(cluster.state_dir) / "gateway" / "gateway-0" / "archive")[1], "gateway archive empty"
        # Market data's archive keeps the segments that hold the last 60 messages (its history), no more.
        md_archive = segments(Path(cluster.state_dir) / "md" / "md-0" / "archive")
        assert md_archive[0].name != "journal-00000000000000000000.log", "md archive never pruned"
        for node, actors in ROLES.items():
            for actor in actors:
                out = io.StringIO()
                directory = str(Path(cluster.state_dir) / node / actor.replace("/", "-"))
                assert inspect(directory, out) == 0
                assert "  snapshot: " in out.getvalue(), out.getvalue()
                assert replay(directory, io.StringIO()) == 2  # replay rebuilds books only
        for node, actors in ROLES.items():
            cluster.kill_node(node)
            assert wait_for(lambda n=node: (cluster.pump(0.02), not cluster.alive()[n])[1], timeout=5)
            cluster.restart_node(node, timeout=90)
            for actor in actors:
                def recovered(a: str = actor) -> bool:
                    stats = admin_request(config, a, {"command": "stats"})["stats"]
                    return not stats.get("resend_waiting") and "snapshot at record 0 " not in stats["recovery"]
                assert wait_for(recovered, timeout=20, interval=0.2), f"{actor} did not recover from a snapshot"
                after = admin_request(config, actor, {"command": "journal_state"})["state"]
                assert after == before[actor], f"{actor}: state after recovery differs from the state before"
        # The gateway's SoupBinTCP streams came back whole from archive + journal tail.
        assert _all_messages(address, user, sequenced) == messages_before
        assert feed.reused == 0 and len(feed.sessions) == 1
    finally:
        for trader in traders:
            trader.client.close()
        cluster.stop()
        feed.stop()


def test_recent_order_ids_keep_a_window_per_gateway():
    from actors.config import cluster_order_id, gateway_number_of
    from exchange.recent_ids import RecentOrderIds

    seen = RecentOrderIds(3, gateway_number_of)
    for n in range(1, 6):
        seen.add(cluster_order_id(0, n))
    seen.add(cluster_order_id(1, 1))  # another gateway's orders do not push gateway 0's out
    assert [cluster_order_id(0, n) in seen for n in range(1, 6)] == [False, False, True, True, True]
    assert cluster_order_id(1, 1) in seen and len(seen) == 4
    restored = RecentOrderIds(3, gateway_number_of)
    restored.load_state(seen.save_state())
    assert restored.ids == seen.ids and restored.save_state() == seen.save_state()


def test_inspect_answers_garbage_journals_with_messages_not_tracebacks(tmp_path, capsys):
    # A snapshot of another shape: summarised as unreadable, the records still counted.
    gateway = tmp_path / "gateway-0"
    writer = JournalWriter(gateway, "none")
    writer.append_many([b"O-1", b"C"])
    writer.snapshot({"something": "else"})
    writer.append(b"E-2")
    writer.close()
    out = io.StringIO()
    assert inspect(str(gateway), out) == 0
    assert "not a gateway snapshot this version can read" in out.getvalue() and "reports 1" in out.getvalue()
    # Every snapshot unreadable and the journal before it pruned: an error naming the segment, exit 2.
    for path in snapshots(gateway):
        path.write_bytes(b"\x00garbage")
    assert inspect(str(gateway), io.StringIO()) == 2
    assert "no readable snapshot covers" in capsys.readouterr().err
