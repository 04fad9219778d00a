"""Durability: the journal format, recovery from damage, and crash trials with kill -9."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from actors.admin import admin_request
from actors.client import ClusterClient
from actors.journal_cli import rebuild
from exchange.engine import OrderBook
from exchange.instruments import Instrument
from exchange.journal import JournalWriter, recover
from exchange.orders import Accepted, Cancelled, Fill, Modified, NewOrder, Rejected, Side
from exchange.wire import command_to_record, record_to_command
from tests.actors.cluster_helpers import start_cluster, wait_for, write_config


def _commands(n: int, seed: int = 3):
    rng = random.Random(seed)
    for i in range(1, n + 1):
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        yield NewOrder("X", i, "A", side, 1000 + rng.randint(-5, 5), rng.randint(1, 9) * 10)


def test_torn_and_corrupt_tails_recover_to_the_last_good_record(tmp_path):
    writer = JournalWriter(tmp_path, policy="always")
    records = [command_to_record(c) for c in _commands(50)]
    writer.append_many(records)
    writer.commit()
    writer.close()
    segment = next(tmp_path.glob("journal-*.log"))
    size = segment.stat().st_size
    with open(segment, "r+b") as handle:  # tear the last record in half
        handle.truncate(size - 30)
    _, recovered, report = recover(tmp_path)
    assert recovered == records[:49]
    assert report.truncated and "torn record" in report.truncated[0] and "offset" in report.truncated[0]
    # The damaged tail was cut off: the journal is a clean prefix again, and appends go on from there.
    assert recover(tmp_path)[2].truncated == []
    data = bytearray(segment.read_bytes())
    data[100] ^= 0xFF  # flip a bit inside the second record
    segment.write_bytes(bytes(data))
    _, recovered, report = recover(tmp_path)
    assert recovered == records[:1]
    assert "CRC mismatch" in report.truncated[0]


def test_snapshot_plus_tail_equals_replay_from_scratch(tmp_path):
    commands = list(_commands(400))
    writer = JournalWriter(tmp_path, policy="none")
    live = OrderBook(Instrument("X"))
    for i, command in enumerate(commands):
        writer.append(command_to_record(command))
        live.process(command)
        if i in (150, 300):
            writer.snapshot(live.snapshot())
    writer.close()
    # Segments before the older of the two kept snapshots are pruned.
    assert sorted(p.name for p in tmp_path.glob("journal-*.log")) == [
        "journal-00000000000000000151.log", "journal-00000000000000000301.log"]
    for oldest, index in ((False, 301), (True, 151)):
        state, tail, report = recover(tmp_path, oldest=oldest)
        assert report.snapshot_index == index and len(tail) == 400 - index
        restored = OrderBook(Instrument("X"))
        restored.restore(state)
        for record in tail:
            restored.process(record_to_command(record)[0])
        assert restored.snapshot() == live.snapshot()


def test_unknown_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fsync policy"):
        JournalWriter(tmp_path, policy="sometimes")


class Trader:
    """A client with its own account, tracking what it was told about its orders."""

    def __init__(self, endpoint: str, account: str, seed: int) -> None:
        self.client = ClusterClient(endpoint, name=f"trader-{account}")
        self.account = account
        self.rng = random.Random(seed)
        self.next_id = 1
        self.live: dict[int, list] = {}  # order id -> [symbol, side, price, leaves]
        self.fill_keys: Counter = Counter()
        self.accepted: set[int] = set()
        self.answered: set[int] = set()
        self.sent: set[int] = set()
        self.rejects: Counter = Counter()

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.2 and self.live:
            order_id = self.rng.choice(list(self.live))
            self.client.cancel(self.live[order_id][0], order_id)
        else:
            symbol = self.rng.choice(("AAPL", "GOOG", "TSLA"))
            side = self.rng.choice(("buy", "sell"))
            self.client.new_order(symbol, self.next_id, self.account, side, self.rng.randint(1, 5) * 10,
                                  price=1_000_000 + self.rng.randint(-3, 3) * 100)
            self.sent.add(self.next_id)
            self.next_id += 1

    def read(self, timeout: float = 0.0) -> None:
        for event, _ in self.client.poll(timeout):
            if isinstance(event, Accepted):
                self.accepted.add(event.order_id)
                self.answered.add(event.order_id)
                self.live[event.order_id] = [event.symbol, event.side, event.price, event.qty]
            elif isinstance(event, Rejected):
                self.rejects[event.reason] += 1
                if event.op == "new":
                    self.answered.add(event.order_id)
            elif isinstance(event, Fill):
                own = event.maker_order_id or event.taker_order_id
                self.fill_keys[(event.symbol, event.match_number, "maker" if event.maker_order_id else "taker")] += 1
                if own in self.live:
                    self.live[own][3] -= event.qty
                    if self.live[own][3] <= 0:
                        del self.live[own]
            elif isinstance(event, Cancelled):
                self.live.pop(event.order_id, None)
            elif isinstance(event, Modified) and event.order_id in self.live:
                self.live[event.order_id][2:] = [event.price, event.qty]


def test_crash_trials_lose_nothing(tmp_path):
    # Two trials in CI; `make crash-trials` runs many more.
    trials = int(os.environ.get("MATCHWIRE_CRASH_TRIALS", "2"))
    path = write_config(tmp_path, extra='[durability]\nenabled = true\nfsync = "batch"\nbatch_ms = 2.0\n'
                        'snapshot_every = 300\n')
    cluster = start_cluster(path, tmp_path / "logs")
    traders: list[Trader] = []
    try:
        _run_crash_trials(cluster, traders, trials)
    finally:
        for trader in traders:
            trader.client.close()
        cluster.stop()


def _run_crash_trials(cluster, traders: list, trials: int) -> None:  # noqa: ANN001
    """The trials and their checks; the caller closes the clients and stops the cluster, whatever happens."""
    rng = random.Random(42)
    endpoint = cluster.config.client_endpoint()
    traders.extend(Trader(endpoint, account, seed) for seed, account in enumerate(("A1", "A2")))
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        while not stop.is_set():
            with lock:
                for trader in traders:
                    trader.step()
                    trader.read()
            time.sleep(0.002)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        for _ in range(trials):
            time.sleep(rng.uniform(0.8, 1.6))
            victim = rng.choice(("book1", "book2"))
            cluster.kill_node(victim)
            assert wait_for(lambda v=victim: (cluster.pump(0.02), not cluster.alive()[v])[1], timeout=5)
            time.sleep(0.3)
            cluster.restart_node(victim, timeout=60)
        time.sleep(0.8)
    finally:
        stop.set()
        thread.join(10)
    # Quiet point: every order sent has its answer, and the books are settled.
    for trader in traders:
        assert wait_for(lambda t=trader: (t.read(0.05), t.sent <= t.answered)[1], timeout=15), \
            f"{trader.account}: {len(trader.sent - trader.answered)} orders never answered"
    time.sleep(0.5)
    for trader in traders:
        trader.read(0.2)
    for trader in traders:
        assert max(trader.fill_keys.values(), default=1) == 1, "a fill was reported twice"
    config = cluster.config
    for symbol in ("AAPL", "GOOG", "TSLA"):
        actor = f"book/{symbol}"
        state = admin_request(config, actor, {"command": "snapshot"})["state"]
        # Every order a client saw accepted and not yet finished is in the book, as the client knows it.
        for trader in traders:
            in_book = sorted((o[2], o[3], o[4]) for o in state["orders"] if o[1] == trader.account)
            told = sorted((int(s), p, q) for sym, s, p, q in trader.live.values() if sym == symbol)
            assert in_book == told, f"{symbol} {trader.account}: book {in_book} vs client {told}"
        # The book equals a replay of its journal from scratch.
        node = config.actor_node[actor].name
        replayed, report = rebuild(str(Path(cluster.state_dir) / node / f"book-{symbol}"))
        assert replayed is not None and not report.truncated
        assert replayed.snapshot() == state, f"{symbol}: live book differs from its journal's replay"
    assert sum("restarted" in line for line in cluster.events) == trials
    # Market data saw every book's events exactly once and in order, across the crashes.
    assert wait_for(lambda: (cluster.pump(0.05), "md/0" in cluster.nodes["md"].stats.get("actors", {}))[1])
    md = admin_request(config, "md/0", {"command": "stats"})["stats"]
    assert md["gaps"] == 0 and md["anomalies"] == 0, md
    assert md.get("duplicate_events_dropped", 0) >= 0
    # The trials did what they claim: real load, fills, and a book that was down for a while.
    assert sum(len(t.accepted) for t in traders) > 100
    assert sum(sum(t.fill_keys.values()) for t in traders) > 10
    assert sum(t.rejects["instrument_unavailable"] for t in traders) > 0
