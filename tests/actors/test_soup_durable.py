"""The durable SoupBinTCP store: messages survive a restart, are sent only once committed, and a damaged
journal recovers to its last good record with a report naming the file and offset."""

from __future__ import annotations

import time

from actors.ouch_client import OuchClient
from actors.sequenced_store import DurableSequencedStore, decode_sequenced_record
from actors.soup_server import SoupApplication, SoupServer


class Everyone(SoupApplication):
    """Lets any user with password "pw" in."""

    def authenticate(self, username: str, password: str) -> bool:
        return password == "pw"


def _messages(n: int, tag: str) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(1, n + 1)]


def test_streams_survive_a_restart_and_unpublished_messages_stay_invisible(tmp_path):
    store = DurableSequencedStore.open(str(tmp_path), policy="always")
    for payload in _messages(5, "alice"):
        store.append("ALICE", payload)
    assert store.append("BOB", b"bob-1") == 1
    # Appended, not committed: numbered, but nothing a server could send yet.
    assert store.next_seq("ALICE") == 6 and store.get_from("ALICE", 1, 10) == []
    assert store.commit() == {"ALICE", "BOB"}
    assert store.get_from("ALICE", 2, 2) == [b"alice-2", b"alice-3"]
    store.append("ALICE", b"alice-6")  # never committed: written to the OS only
    store.close()

    again = DurableSequencedStore.open(str(tmp_path), policy="always")
    assert again.get_from("ALICE", 1, 100) == [*_messages(5, "alice"), b"alice-6"]
    assert again.get_from("BOB", 1, 100) == [b"bob-1"]
    assert again.next_seq("ALICE") == 7 and again.next_seq("CAROL") == 1
    assert again.append("ALICE", b"alice-7") == 7
    again.close()


def test_a_torn_tail_is_cut_at_the_last_good_record_and_reported(tmp_path):
    store = DurableSequencedStore.open(str(tmp_path), policy="always")
    for payload in _messages(10, "m"):
        store.append("ALICE", payload)
    store.commit()
    store.close()
    segment = next(tmp_path.glob("journal-*.log"))
    size = segment.stat().st_size
    with open(segment, "r+b") as handle:
        handle.truncate(size - 3)  # the last message torn
    again = DurableSequencedStore.open(str(tmp_path))
    assert again.get_from("ALICE", 1, 100) == _messages(9, "m")
    assert "TRUNCATED" in again.recovery and segment.name in again.recovery and "offset" in again.recovery
    again.close()
    # Garbage appended by a crash mid-write: a CRC mismatch or an implausible length, also cut off.
    with open(segment, "ab") as handle:
        handle.write(b"\xff" * 40)
    third = DurableSequencedStore.open(str(tmp_path))
    assert third.get_from("ALICE", 1, 100) == _messages(9, "m") and "TRUNCATED" in third.recovery
    third.close()


def test_records_of_other_kinds_are_not_messages():
    assert decode_sequenced_record(b"") is None
    assert decode_sequenced_record(b"E" + bytes(96)) is None
    assert decode_sequenced_record(b"S\x09AB") is None  # the name runs past the end
    assert decode_sequenced_record(b"S\x02ABhello") == ("AB", b"hello")


def _wait_received(client: OuchClient, n: int, timeout: float = 10.0) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        item = client.recv_raw(0.1)
        if item is not None:
            got.append(item)
    return got


def test_a_client_logging_in_again_after_a_server_restart_gets_exactly_what_it_missed(tmp_path):
    store = DurableSequencedStore.open(str(tmp_path), policy="batch", batch_ms=1.0)
    server = SoupServer(Everyone(), store=store, session="DURABLE").start()
    client = OuchClient(*server.address, "ALICE", "pw", next_seq=1)
    server.send_sequenced_many("ALICE", _messages(3, "a"))
    assert _wait_received(client, 1, timeout=0.3) == []  # not committed: not sent
    server.publish_sequenced(commit=True)
    assert [p for _, p in _wait_received(client, 3)] == _messages(3, "a")
    client.close()
    # Sent while the client is away; then the server goes (no End of Session: as if it died).
    server.send_sequenced_many("ALICE", [b"a-4", b"a-5"])
    server.publish_sequenced(commit=True)
    server.stop(end_of_session=False)
    store.close()

    store = DurableSequencedStore.open(str(tmp_path), policy="batch", batch_ms=1.0)
    server = SoupServer(Everyone(), store=store, session="DURABLE").start()
    try:
        client.address = server.address
        assert client.reconnect() == 4  # the server's next message is the one the client asked for
        server.send_sequenced("ALICE", b"a-6")
        server.publish_sequenced(commit=True)
        got = _wait_received(client, 3)
        assert got == [(4, b"a-4"), (5, b"a-5"), (6, b"a-6")]
        assert _wait_received(client, 1, timeout=0.3) == []  # and nothing twice
    finally:
        client.close()
        server.stop()
        store.close()
