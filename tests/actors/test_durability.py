"""Durability: the journal format, recovery from damage, and crash trials with kill -9."""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from actors.admin import admin_request
from actors.client import ClusterClient
from actors.journal_cli import rebuild
from actors.ouch_client import ConnectionClosed, LoginRejected, OuchClient
from exchange import ouch
from exchange.engine import OrderBook
from exchange.instruments import Instrument
from exchange.journal import JournalWriter, recover
from exchange.moldudp64 import parse_packet
from exchange.orders import Accepted, Cancelled, Fill, Modified, NewOrder, Rejected, Side
from exchange.wire import command_to_record, record_to_command
from tests.actors.cluster_helpers import ouch_reports, start_cluster, users_toml, wait_for, write_config


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


def test_the_journal_tool_names_a_damaged_snapshot_and_tail_and_replay_fails_on_them(tmp_path, capsys):
    """``matchwire journal replay`` printed the book the good records make and exited 0, saying nothing of the
    damage after them; an unreadable snapshot was passed over in silence by every reader."""
    import io

    from actors.journal_cli import inspect, replay

    book = tmp_path / "book-X"
    writer = JournalWriter(book, policy="always")
    writer.append_many([command_to_record(c) for c in _commands(20)])
    writer.commit()
    writer.close()
    (book / "snapshot-00000000000000000010.json").write_text("{not json")
    segment = next(book.glob("journal-*.log"))
    with open(segment, "ab") as handle:
        handle.write(b"\xff" * 40)  # garbage after the last record
    out = io.StringIO()
    assert inspect(str(book), out) == 1
    assert "snapshot-00000000000000000010.json: unreadable snapshot passed over" in out.getvalue()
    assert f"{segment.name}: offset {segment.stat().st_size - 40}:" in out.getvalue()
    assert replay(str(book), io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "DAMAGED: snapshot-00000000000000000010.json: unreadable snapshot passed over" in err
    assert f"DAMAGED: {segment.name}: offset {segment.stat().st_size - 40}:" in err


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


# -- crash trials of every role, with OUCH clients (issue #10) -----------------------------------------------------

OUCH_USERS = {"TRADA": ("trada-pw", "A1"), "TRADB": ("tradb-pw", "A2"), "TRADC": ("tradc-pw", "A3")}
SYMBOLS = ("AAPL", "GOOG", "TSLA", "MSFT")


class OuchTrader:
    """An OUCH client with its own account that keeps what it was told, reconnects by sequence number after a
    drop and sends again the orders and replaces it got no answer to (same UserRefNum: the gateway ignores a
    copy it has). It also replaces and modifies its live orders, one request per order at a time (so each
    answer names its request), and counts every answer to a replace or modify."""

    def __init__(self, address: tuple[str, int], user: str, seed: int) -> None:
        password, self.account = OUCH_USERS[user]
        self.client = OuchClient(*address, user, password, next_seq=1)
        self.rng = random.Random(seed)
        self.sent: dict[int, bytes] = {}  # UserRefNum -> the Enter Order sent
        self.answered: set[int] = set()
        self.accepted: dict[int, int] = {}  # UserRefNum -> Order Reference Number (the book's order id)
        self.live: dict[int, list] = {}  # UserRefNum -> [symbol, price, leaves]
        self.executions: Counter = Counter()  # (match number, UserRefNum) -> how often reported
        self.duplicate_answers = 0
        self.positions: Counter = Counter()
        self.sides: dict[int, str] = {}
        self.symbols: dict[int, str] = {}
        self.rejects: Counter = Counter()
        self.seq_regressions = 0  # logins where the server's next message was not the one asked for
        self.reconnects = 0
        self.retransmitted = 0
        self.connected = True
        self._next_try = 0.0
        self.executed: Counter = Counter()  # UserRefNum -> shares executed under it (OUCH modify sizes count them)
        # live UserRefNum -> ("replace", new UserRefNum) / ("modify", the Modify Order sent) / ("cut", the Cancel sent)
        self.requests: dict[int, tuple[str, object]] = {}
        self.cancelling: set[int] = set()
        self.replaces: dict[int, bytes] = {}  # replacement UserRefNum -> the Replace Order sent
        self.replace_answers: Counter = Counter()  # replacement UserRefNum -> answers (Replaced or Rejected)
        self.replace_orphans: set[int] = set()  # replaces whose order finished while they were unanswered
        self.modifies_sent = 0
        self.modify_answers = 0
        self.modifies_cut_off = 0  # sent, then the connection dropped before their answer (OUCH cannot resend M)
        self.modify_drops: set[int] = set()  # live UserRefNums whose outstanding modify or cut met a connection drop
        self.copies: Counter = Counter()  # UserRefNum -> copies of its modify/cut sent again after a drop
        self.request_answers: Counter = Counter()  # UserRefNum -> answers to its modify/cut and their copies
        self.requests_sent_again = 0
        self.cuts_sent = 0  # partial cancels (Cancel Order with an intended size above what executed)
        self.cut_answers = 0

    def _idle_live(self) -> list[int]:
        return [ref for ref in self.live if ref not in self.requests and ref not in self.cancelling]

    def step(self) -> None:
        if not self.connected:
            self.recover()
            return
        try:
            draw = self.rng.random()
            idle = self._idle_live() if draw < 0.45 else []
            if draw < 0.2 and idle:
                ref = self.rng.choice(idle)
                self.cancelling.add(ref)
                self.client.cancel_order(ref, 0)
            elif draw < 0.35 and idle:
                self._replace(self.rng.choice(idle))
            elif draw < 0.45 and idle:
                ref = self.rng.choice(idle)
                leaves = self.live[ref][2]
                if leaves > 10 and self.rng.random() < 0.4:
                    # A partial cancel: an intended size below what the client knows to be open, a cut at the book.
                    payload = ouch.encode_inbound("X", user_ref_num=ref,
                                                  quantity=self.executed[ref] + self.rng.randrange(10, leaves, 10))
                    self.requests[ref] = ("cut", payload)
                    self.cuts_sent += 1
                    self.client.send(payload)
                else:
                    # Modify sets the intended order size (shares executed under this UserRefNum included).
                    target = self.rng.choice([q for q in (10, 20, 30, 40, 50) if q != leaves])
                    payload = ouch.encode_inbound("M", user_ref_num=ref, side=self.sides[ref],
                                                  quantity=self.executed[ref] + target)
                    self.requests[ref] = ("modify", payload)
                    self.modifies_sent += 1
                    self.client.send(payload)
            else:
                symbol = self.rng.choice(SYMBOLS)
                side = self.rng.choice("BS")
                ref = self.client.next_user_ref_num
                payload = ouch.encode_inbound(
                    "O", user_ref_num=ref, side=side, quantity=self.rng.randint(1, 5) * 10, symbol=symbol,
                    price=1_000_000 + self.rng.randint(-3, 3) * 100, time_in_force="0", display="Y", capacity="A",
                    inter_market_sweep_eligibility="N", cross_type="N", cl_ord_id=f"C{ref}", options={})
                self.client.next_user_ref_num += 1
                self.sent[ref] = payload
                self.sides[ref] = side
                self.symbols[ref] = symbol
                self.client.send(payload)
            self.read()
        except (ConnectionClosed, OSError):
            self._dropped()

    def _replace(self, ref: int) -> None:
        new = self.client.next_user_ref_num
        self.client.next_user_ref_num += 1
        payload = ouch.encode_inbound(
            "U", orig_user_ref_num=ref, user_ref_num=new, quantity=self.rng.randint(1, 5) * 10,
            price=1_000_000 + self.rng.randint(-3, 3) * 100, time_in_force="0", display="Y",
            inter_market_sweep_eligibility="N", cl_ord_id=f"R{new}", options={})
        self.replaces[new] = payload
        self.sides[new] = self.sides[ref]
        self.symbols[new] = self.symbols[ref]
        self.requests[ref] = ("replace", new)
        self.client.send(payload)

    def _dropped(self) -> None:
        self.connected = False
        # A Modify (M) or a partial cancel has no UserRefNum of its own: the client cannot tell whether one outstanding
        # when the connection dropped reached the gateway's journal. Both carry an intended order size, so a copy
        # is harmless (it finds the size already there) and is sent again after the reconnect; each is answered.
        for ref, (kind, _) in self.requests.items():
            if kind in ("modify", "cut"):
                self.modify_drops.add(ref)

    def recover(self) -> None:
        if time.monotonic() < self._next_try:
            return
        self._next_try = time.monotonic() + 0.2
        wanted = self.client.next_seq
        try:
            accepted = self.client.reconnect()
        except (ConnectionClosed, LoginRejected, OSError):
            return
        self.reconnects += 1
        if accepted != wanted:
            self.seq_regressions += 1  # the server lost (or invented) messages this client had
        self.connected = True
        try:
            self.read()
            # What the gateway journaled is ignored as a retransmission; what died with it is entered now (orders
            # and replaces in UserRefNum order: the gateway ignores a number below one it has seen).
            again = {ref: self.sent[ref] for ref in set(self.sent) - self.answered}
            again.update({ref: self.replaces[ref] for ref in self.replaces if not self.replace_answers[ref]})
            for ref in sorted(again):
                self.client.send(again[ref])
                self.retransmitted += 1
            for ref in sorted(self.modify_drops & set(self.requests)):
                self.client.send(self.requests[ref][1])  # type: ignore[arg-type]
                self.copies[ref] += 1
                self.requests_sent_again += 1
            self.modify_drops.clear()
        except (ConnectionClosed, OSError):
            self._dropped()

    def read(self, timeout: float = 0.0) -> None:
        try:
            self.client.poll(timeout)
        except ConnectionClosed:
            self._dropped()
        while self.client.pending():
            self._on(self.client.recv(0))

    def _request_answered(self, ref: int) -> None:
        """One answer to the order's modify or cut. Without copies sent again it is done. With copies, the original
        may have died with the gateway or not, so one answer each for the original and the copies is the most it may
        get; the order takes no new request meanwhile, so that no later answer is taken for another request's."""
        self.request_answers[ref] += 1
        if not self.copies[ref]:
            del self.requests[ref]
            self.modify_drops.discard(ref)
            del self.request_answers[ref]
        elif self.request_answers[ref] > 1 + self.copies[ref]:
            self.duplicate_answers += 1

    def _finished(self, ref: int) -> None:
        del self.live[ref]
        self.cancelling.discard(ref)
        request = self.requests.get(ref)
        if request is not None and request[0] == "replace":
            # The gateway ignores a Replace of an order that finished before it (OUCH): maybe never answered.
            self.replace_orphans.add(request[1])

    def _on(self, m: dict) -> None:
        kind, ref = m["type"], m.get("user_ref_num")
        if kind == "U":
            orig = m["orig_user_ref_num"]
            self.replace_answers[ref] += 1
            if self.replace_answers[ref] > 1:
                self.duplicate_answers += 1
                return
            self.requests.pop(orig, None)
            self.accepted[ref] = m["order_reference_number"]
            self.live.pop(orig, None)
            self.live[ref] = [m["symbol"].strip(), m["price"], m["quantity"]]
            if orig in self.cancelling:
                self.cancelling.discard(orig)
                self.cancelling.add(ref)
            return
        if kind == "M":
            request = self.requests.get(ref)
            if request is None or request[0] != "modify":
                self.duplicate_answers += 1
                return
            self.modify_answers += 1
            self._request_answered(ref)
            if ref in self.live:
                self.live[ref][2] = m["quantity"] - self.executed[ref]
            return
        if kind == "J" and ref in self.requests and self.requests[ref][0] == "modify":
            # Before the replace check: a modify of an order entered by a Replace is rejected under that number.
            self.modify_answers += 1
            self._request_answered(ref)
            return
        if kind == "J" and ref in self.replaces:
            self.replace_answers[ref] += 1
            if self.replace_answers[ref] > 1:
                self.duplicate_answers += 1
                return
            for orig, request in list(self.requests.items()):
                if request == ("replace", ref):
                    del self.requests[orig]
            return
        if kind == "A":
            if ref in self.answered:
                self.duplicate_answers += 1
            self.answered.add(ref)
            self.accepted[ref] = m["order_reference_number"]
            self.live[ref] = [m["symbol"].strip(), m["price"], m["quantity"]]
        elif kind == "J":
            if ref in self.answered:
                self.duplicate_answers += 1
            self.answered.add(ref)
            self.rejects[m["reason"]] += 1
        elif kind == "E":
            self.executions[(m["match_number"], ref)] += 1
            self.executed[ref] += m["quantity"]
            self.positions[self.symbols[ref]] += m["quantity"] if self.sides[ref] == "B" else -m["quantity"]
            order = self.live.get(ref)
            if order is not None:
                order[2] -= m["quantity"]
                if order[2] <= 0:
                    self._finished(ref)
        elif kind == "I" and self.requests.get(ref, ("",))[0] == "cut":
            self.cut_answers += 1  # executions had left nothing to cut
            self._request_answered(ref)
        elif kind == "C" and ref in self.live:
            request = self.requests.get(ref, ("",))[0]
            if m["reason"] == "U" and request in ("modify", "cut"):
                # The answer to a cut, or to a modify that cut more than executions on their way had left (it
                # ended the order).
                if request == "cut":
                    self.cut_answers += 1
                else:
                    self.modify_answers += 1
                self._request_answered(ref)
            self.live[ref][2] -= m["quantity"]
            if self.live[ref][2] <= 0:
                self._finished(ref)


class FeedListener(threading.Thread):
    """Every MoldUDP64 packet the market-data node sends: a sequence number must never be reused."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.messages: dict[int, bytes] = {}
        self.sessions: set[str] = set()
        self.reused = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            packet = parse_packet(data)
            self.sessions.add(packet.session)
            for i, message in enumerate(packet.messages):
                seq = packet.sequence_number + i
                old = self.messages.setdefault(seq, message)
                if old != message:
                    self.reused += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(2)
        self.sock.close()


def test_crash_trials_of_every_role_lose_nothing(tmp_path):
    # CI: one kill of each role (gateway, risk, market data, a book node); `make crash-trials` runs many
    # more, each killing a random node.
    trials = int(os.environ.get("MATCHWIRE_CRASH_TRIALS", "4"))
    feed = FeedListener()
    users = users_toml(OUCH_USERS)
    # events_in_memory = 50: the books' re-send history spills to its files within seconds, so the receivers that
    # recover are answered from disk as well as from memory.
    extra = ('[durability]\nenabled = true\nfsync = "batch"\nbatch_ms = 2.0\nsnapshot_every = 300\n'
             'events_in_memory = 50\n'
             f'[market_data]\ntargets = ["127.0.0.1:{feed.port}"]\nsession = "TRIALS"\n' + users)
    path = write_config(tmp_path, extra=extra)
    cluster = start_cluster(path, tmp_path / "logs")
    feed.start()
    traders: list[OuchTrader] = []
    try:
        _run_role_trials(cluster, traders, trials, feed)
    finally:
        for trader in traders:
            trader.client.close()
        cluster.stop()
        feed.stop()


def _run_role_trials(cluster, traders: list, trials: int, feed: FeedListener) -> None:  # noqa: ANN001, C901
    rng = random.Random(int(os.environ.get("MATCHWIRE_CRASH_SEED", "7")))
    config = cluster.config
    address = config.ouch_address()
    traders.extend(OuchTrader(address, user, seed) for seed, user in enumerate(OUCH_USERS))
    nodes = ["gateway", "risk", "md", "book1", "book2"]
    victims = rng.sample(["gateway", "risk", "md", rng.choice(["book1", "book2"])], 4) if trials == 4 else \
        [rng.choice(nodes) for _ in range(trials)]
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        while not stop.is_set():
            with lock:
                for trader in traders:
                    trader.step()
            time.sleep(0.003)

    thread = threading.Thread(target=load)
    thread.start()
    killed: Counter = Counter()
    try:
        for victim in victims:
            time.sleep(rng.uniform(0.6, 1.4))
            cluster.kill_node(victim)
            killed[victim] += 1
            assert wait_for(lambda v=victim: (cluster.pump(0.02), not cluster.alive()[v])[1], timeout=5)
            time.sleep(rng.uniform(0.0, 0.4))
            cluster.restart_node(victim, timeout=90)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(10)

    # Quiet point: every client is back, and every order it entered has its answer.
    def settled(trader: OuchTrader) -> bool:
        if not trader.connected:
            trader.recover()
        trader.read(0.05)
        return trader.connected and set(trader.sent) <= trader.answered and not _unanswered_requests(trader)

    wait_for(lambda: all([settled(t) for t in traders]), timeout=40)
    unanswered = {t.account: sorted(set(t.sent) - t.answered) for t in traders}
    requests_unanswered = {t.account: _unanswered_requests(t) for t in traders}
    # Then until a whole second passes without a message to anyone (orders sent again after the last
    # reconnects may still trade against resting ones).
    quiet_since = time.monotonic()
    deadline = quiet_since + 30
    while time.monotonic() - quiet_since < 1.0 and time.monotonic() < deadline:
        before = sum(len(t.client._received) + t.client.counters["received"] for t in traders)
        for trader in traders:
            trader.read(0.1)
        if sum(len(t.client._received) + t.client.counters["received"] for t in traders) != before:
            quiet_since = time.monotonic()
    # Receivers that recovered hold a book's events until its re-send is complete: wait for that too.
    receivers = ("gateway/0", *config.risk_shards, "md/0")

    def awaited() -> dict:
        return {a: w for a in receivers
                if (w := admin_request(config, a, {"command": "stats"})["stats"].get("resend_waiting"))}

    wait_for(lambda: not awaited(), timeout=20, interval=0.2)
    waiting = awaited()
    twice = sum(sum(n - 1 for n in t.executions.values() if n > 1) for t in traders)
    regressions = sum(t.seq_regressions for t in traders)
    duplicates = sum(t.duplicate_answers for t in traders)

    def book_vs_clients() -> list[str]:
        for trader in traders:
            trader.read(0.05)
        out = []
        for symbol in SYMBOLS:
            state = admin_request(config, f"book/{symbol}", {"command": "snapshot"})["state"]
            for trader in traders:
                # Every order the client saw accepted and not finished is in the book as the client knows it.
                in_book = sorted((o[0], o[3], o[4]) for o in state["orders"] if o[1] == trader.account)
                told = sorted((trader.accepted[ref], p, q) for ref, (s, p, q) in trader.live.items() if s == symbol)
                if in_book != told:
                    out.append(f"{symbol} {trader.account}: only in the book {sorted(set(in_book) - set(told))}, "
                               f"only in the client's view {sorted(set(told) - set(in_book))}")
        return out

    # A loaded machine may still be delivering the last reports: a real loss never converges.
    wait_for(lambda: not book_vs_clients(), timeout=15, interval=0.3)
    mismatched = book_vs_clients()
    for symbol in SYMBOLS:
        actor = f"book/{symbol}"
        state = admin_request(config, actor, {"command": "snapshot"})["state"]
        node = config.actor_node[actor].name
        replayed, report = rebuild(str(Path(cluster.state_dir) / node / f"book-{symbol}"))
        assert replayed is not None and not report.truncated
        assert replayed.snapshot() == state, f"{symbol}: live book differs from its journal's replay"
    # Risk rebuilt its state: positions as the clients' executions say, exposure as the open orders say.
    risk_wrong: list[str] = []
    wait_for(lambda: not _risk_mismatches(config, traders), timeout=10, interval=0.2)  # risk may lag a little
    for shard in config.risk_shards:
        for account, check in admin_request(config, shard, {"command": "exposure_check"}).items():
            trader = next((t for t in traders if t.account == account), None)
            if check["reserved"] != check["recomputed"]:
                risk_wrong.append(f"{account}: reserved {check['reserved']} != {check['recomputed']}")
            if trader is not None and {k: v for k, v in check["positions"].items() if v} != \
                    {k: v for k, v in trader.positions.items() if v}:
                risk_wrong.append(f"{account}: risk positions minus the client's "
                                  f"{ {k: v - trader.positions.get(k, 0) for k, v in check['positions'].items()} }")
    md = admin_request(config, "md/0", {"command": "stats"})["stats"]
    md_views = {s: md["books"].get(s, {}).get("bbo") for s in SYMBOLS}
    book_bbo = {s: admin_request(config, f"book/{s}", {"command": "stats"})["stats"] for s in SYMBOLS}
    md_wrong = [s for s in SYMBOLS if list(md_views[s] or []) != [book_bbo[s]["bid"], book_bbo[s]["bid_qty"],
                                                                   book_bbo[s]["ask"], book_bbo[s]["ask_qty"]]]
    # Nothing the gateway or risk sent on is still without an answer (orders and cancels lost in a socket
    # with a killed node were sent again).
    gateway = admin_request(config, "gateway/0", {"command": "stats"})["stats"]
    risk_stats = {r: admin_request(config, r, {"command": "stats"})["stats"] for r in config.risk_shards}
    in_flight = {"gateway orders": gateway["unanswered_orders"], "gateway cancels": gateway["unanswered_cancels"],
                 "gateway modifies": gateway["unanswered_modifies"],
                 **{f"{r} orders": st["in_flight_new"] for r, st in risk_stats.items()},
                 **{f"{r} commands": st["in_flight_commands"] for r, st in risk_stats.items()}}
    print(f"\ncrash trials: {len(victims)} run, killed {dict(killed)}; orders entered "
          f"{sum(len(t.sent) for t in traders)}, accepted {sum(r in t.sent for t in traders for r in t.accepted)}, "
          f"executions "
          f"{sum(sum(t.executions.values()) for t in traders)}, reconnects {sum(t.reconnects for t in traders)}, "
          f"orders sent again {sum(t.retransmitted for t in traders)}, feed messages {len(feed.messages)}")
    copies_dropped = sum(admin_request(config, f"book/{s}", {"command": "stats"})["stats"].get("duplicate_modifies", 0)
                         for s in SYMBOLS)
    print(f"replaces sent {sum(len(t.replaces) for t in traders)}, answered "
          f"{sum(1 for t in traders for n in t.replaces if t.replace_answers[n])}, ignored by the gateway as their "
          f"order finished first {sum(1 for t in traders for n in t.replace_orphans if not t.replace_answers[n])}; "
          f"modifies sent {sum(t.modifies_sent for t in traders)}, answered {sum(t.modify_answers for t in traders)},"
          f" partial cancels sent {sum(t.cuts_sent for t in traders)}, answered {sum(t.cut_answers for t in traders)};"
          f" either sent again after a drop {sum(t.requests_sent_again for t in traders)}; "
          f"copies dropped by books {copies_dropped}")
    print(f"lost: unanswered orders { {a: len(u) for a, u in unanswered.items()} }, executions reported twice "
          f"{twice}, answers twice {duplicates}, "
          f"sequence regressions {regressions}, book/client mismatches {len(mismatched)}, risk mismatches "
          f"{len(risk_wrong)}, replaces/modifies unanswered { {a: len(u) for a, u in requests_unanswered.items()} }, "
          f"market-data view mismatches {md_wrong}, feed sequence numbers reused {feed.reused}, "
          f"feed sessions {sorted(feed.sessions)}, md gaps {md['gaps']}, still in flight {in_flight}")
    book_stats = {s: admin_request(config, f"book/{s}", {"command": "stats"})["stats"] for s in SYMBOLS}
    print(f"re-sends still awaited: {waiting}; re-send requests answered by books "
          f"{ {s: st.get('resend_requests', 0) for s, st in book_stats.items()} }, gaps "
          f"{ {s: st.get('resend_gaps', 0) for s, st in book_stats.items()} }")
    assert not mismatched, mismatched
    assert twice == 0 and duplicates == 0, "a report was delivered twice"
    assert regressions == 0, "a client's next sequence number went back after a restart"
    assert not any(unanswered.values()), f"orders never answered: {unanswered}"
    assert not any(requests_unanswered.values()), f"replaces/modifies never answered: {requests_unanswered}"
    assert not any(in_flight.values()), in_flight
    assert not risk_wrong, risk_wrong
    assert not md_wrong and md["gaps"] == 0 and md["anomalies"] == 0, (md_views, book_bbo)
    assert feed.reused == 0 and feed.sessions == {"TRIALS"}
    assert sum(1 for line in cluster.events if "restarted" in line) == len(victims)
    # The trials did what they claim: real load, executions, reconnects after gateway kills.
    assert sum(len(t.accepted) for t in traders) > 100
    assert sum(sum(t.executions.values()) for t in traders) > 10
    assert sum(1 for t in traders for n in t.replaces if t.replace_answers[n]) > 20
    assert sum(t.modify_answers for t in traders) > 10
    assert sum(t.cut_answers for t in traders) > 5
    if killed["gateway"]:
        assert all(t.reconnects >= killed["gateway"] for t in traders)


def _unanswered_requests(trader: OuchTrader) -> list[str]:
    """Replaces, modifies and partial cancels without an answer, but for those OUCH allows to go unanswered: a replace
    of an order that finished before the gateway saw it. (A modify or partial cancel sent into a connection that
    dropped is sent again after the reconnect, and one of the two must be answered.)"""
    out = [f"replace {n}" for n in trader.replaces if not trader.replace_answers[n] and n not in trader.replace_orphans]
    return out + [f"{kind} of {ref}" for ref, (kind, _) in trader.requests.items()
                  if kind in ("modify", "cut") and not trader.request_answers[ref]]


def _risk_mismatches(config, traders: list) -> bool:  # noqa: ANN001
    positions = {}
    for shard in config.risk_shards:
        for account, check in admin_request(config, shard, {"command": "exposure_check"}).items():
            positions[account] = {k: v for k, v in check["positions"].items() if v}
    return any(positions.get(t.account, {}) != {k: v for k, v in t.positions.items() if v} for t in traders)


def test_a_restarted_gateway_knows_its_sessions_tokens_and_order_ids(tmp_path):
    users = users_toml(OUCH_USERS)
    path = write_config(tmp_path, extra='[durability]\nenabled = true\nfsync = "always"\n' + users)
    cluster = start_cluster(path, tmp_path / "logs")
    client = OuchClient(*cluster.config.ouch_address(), "TRADA", "trada-pw", next_seq=1)
    try:
        def next_message(kind: str) -> dict:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                message = client.recv(0.2)
                if message is not None and message["type"] == kind:
                    return message
            raise AssertionError(f"no {kind!r} message")

        resting = client.enter_order("AAPL", "B", 100, 990_000)
        replaced = client.enter_order("GOOG", "S", 50, 1_010_000)
        first = next_message("A")
        second = next_message("A")
        assert {first["user_ref_num"], second["user_ref_num"]} == {resting, replaced}
        seen = client.next_seq
        cluster.kill_node("gateway")
        assert wait_for(lambda: (cluster.pump(0.02), not cluster.alive()["gateway"])[1], timeout=5)
        cluster.restart_node("gateway", timeout=60)
        assert wait_for(lambda: _reconnected(client), timeout=20)
        assert client.next_seq == seen  # nothing lost, nothing invented
        # The tokens still name the orders: a cancel and a replace by UserRefNum work.
        assert client.sync_user_ref_num() == replaced + 1
        next_message("Q")
        client.cancel_order(resting, 0)
        cancelled = next_message("C")
        assert (cancelled["user_ref_num"], cancelled["quantity"]) == (resting, 100)
        new_ref = client.replace_order(replaced, 40, 1_011_000)
        done = next_message("U")
        assert (done["orig_user_ref_num"], done["user_ref_num"], done["quantity"]) == (replaced, new_ref, 40)
        # A new order gets an id never used before the restart.
        client.enter_order("AAPL", "B", 10, 980_000)
        accepted = next_message("A")
        assert accepted["order_reference_number"] not in (first["order_reference_number"],
                                                           second["order_reference_number"])
        books = {s: admin_request(cluster.config, f"book/{s}", {"command": "snapshot"})["state"]["orders"]
                 for s in ("AAPL", "GOOG")}
        assert [o[0] for o in books["AAPL"]] == [accepted["order_reference_number"]]
        assert [(o[3], o[4]) for o in books["GOOG"]] == [(1_011_000, 40)]
    finally:
        client.close()
        cluster.stop()


def test_a_gateway_keeps_old_ouch_messages_on_disk_and_a_login_from_one_gets_them_all(tmp_path):
    """The session's sequenced messages are read back from the gateway's archive, not held in memory: a login asking
    for message 1 gets the whole stream, equal to what was sent live, also from a restarted gateway."""
    users = users_toml(OUCH_USERS)
    path = write_config(tmp_path, extra='[durability]\nenabled = true\nfsync = "none"\nsnapshot_every = 300\n' + users)
    cluster = start_cluster(path, tmp_path / "logs")
    address = cluster.config.ouch_address()

    def stream_from_one() -> list[dict]:
        with OuchClient(*address, "TRADA", "trada-pw", next_seq=1) as again:
            got: list[dict] = []
            deadline = time.monotonic() + 20
            while len(got) < len(live) and time.monotonic() < deadline:
                got += again.messages(0.2)
            return got

    client = OuchClient(*address, "TRADA", "trada-pw", next_seq=1)
    try:
        orders = 900
        for k in range(orders):
            client.enter_order(SYMBOLS[k % len(SYMBOLS)], "B", 100, 900_000 - 100 * (k % 50))
        live: list[dict] = []
        deadline = time.monotonic() + 30
        while len(live) < orders and time.monotonic() < deadline:
            live += client.messages(0.2)
        assert [m["type"] for m in live] == ["A"] * orders
        client.logout()
        stats = admin_request(cluster.config, "gateway/0", {"command": "stats"})["stats"]
        assert stats["soup_messages_in_memory"] < orders // 2, stats["soup_messages_in_memory"]
        assert stream_from_one() == live
        cluster.kill_node("gateway")
        assert wait_for(lambda: (cluster.pump(0.02), not cluster.alive()["gateway"])[1], timeout=5)
        cluster.restart_node("gateway", timeout=60)
        assert wait_for(lambda: _logs_in(address), timeout=20)
        assert stream_from_one() == live
        stats = admin_request(cluster.config, "gateway/0", {"command": "stats"})["stats"]
        assert stats["soup_messages_in_memory"] < orders // 2 and stats["soup_archive_read_errors"] == 0
    finally:
        client.close()
        cluster.stop()


def test_without_journals_a_gateway_spills_old_ouch_messages_and_a_login_from_one_gets_them_all(tmp_path,
                                                                                                  monkeypatch):
    """Without journals the session's messages go to a spill file once 20,000 are held (SPILL_MESSAGES): a login
    from message 1 still gets the whole stream, and the spill directory goes with the gateway."""
    from actors.gateway import SPILL_MESSAGES

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the nodes' spill directories, to look at
    # What a gateway killed earlier left: the new one removes it as it starts.
    (tmp_path / f"matchwire-gateway-0-soup-{_dead_pid()}-earlier" / "archive").mkdir(parents=True)
    path = write_config(tmp_path, extra=users_toml(OUCH_USERS))
    cluster = start_cluster(path, tmp_path / "logs")
    address = cluster.config.ouch_address()
    orders = SPILL_MESSAGES // 2 + 1_000
    try:
        with OuchClient(*address, "TRADA", "trada-pw", next_seq=1) as client:
            for start in range(0, orders, 500):
                with client.batch():
                    for k in range(start, start + 500):
                        ref = client.enter_order(SYMBOLS[k % len(SYMBOLS)], "B", 100, 900_000 - 100 * (k % 50))
                        client.cancel_order(ref)  # before its Order Accepted: the book cancels it behind it
                time.sleep(0.02)
            live: list[dict] = []
            deadline = time.monotonic() + 60
            while len(live) < 2 * orders and time.monotonic() < deadline:
                live += client.messages(0.2)
        assert [m["type"] for m in live] == ["A", "C"] * orders
        [spill] = tmp_path.glob("matchwire-gateway-0-soup-*")
        assert list(spill.glob("archive/journal-*.log"))
        stats = admin_request(cluster.config, "gateway/0", {"command": "stats"})["stats"]
        assert stats["soup_messages_in_memory"] < 2 * orders - SPILL_MESSAGES + 1, stats["soup_messages_in_memory"]
        with OuchClient(*address, "TRADA", "trada-pw", next_seq=1) as again:
            replayed: list[dict] = []
            deadline = time.monotonic() + 30
            while len(replayed) < len(live) and time.monotonic() < deadline:
                replayed += again.messages(0.2)
        assert replayed == live
    finally:
        cluster.stop()
    assert not list(tmp_path.glob("matchwire-gateway-0-soup-*"))


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_gateway_removes_the_spill_directories_of_gateway_processes_that_died(tmp_path, monkeypatch):
    """A gateway killed without journals cannot remove its spill directory; the next one removes those whose
    process is gone, and nothing else: not a live process's, not its own, not other names."""
    from actors.gateway import remove_dead_spills

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    prefix = "matchwire-gateway-0-soup-"
    dead = _dead_pid()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        names = [f"{prefix}{dead}-gone", f"{prefix}{alive.pid}-alive", f"{prefix}{os.getpid()}-own",
                 f"{prefix}a1b2c3d4", f"{prefix}-{dead}", f"{prefix}99999999999999999999999-huge",
                 f"matchwire-gateway-1-soup-{dead}-other-gateway"]
        for name in names:
            (tmp_path / name / "archive").mkdir(parents=True)
            (tmp_path / name / "archive" / "journal-0.log").write_bytes(b"spilled")
        assert remove_dead_spills(prefix) == [f"{prefix}{dead}-gone"]
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names[1:])
        assert remove_dead_spills(prefix) == []
    finally:
        alive.kill()
        alive.wait()


def _logs_in(address: tuple[str, int]) -> bool:
    try:
        with OuchClient(*address, "TRADB", "tradb-pw", next_seq=0):
            return True
    except (ConnectionClosed, LoginRejected, OSError):
        time.sleep(0.1)
        return False


def _reconnected(client: OuchClient) -> bool:
    try:
        client.reconnect()
    except (ConnectionClosed, LoginRejected, OSError):
        time.sleep(0.1)
        return False
    return True


def _cancel_once_the_book_is_back(client: ClusterClient, symbol: str, order_id: int,
                                  timeout: float = 20.0) -> tuple[list, list]:
    """Cancel an order, again while risk refuses it instrument_unavailable (it has not heard yet that the book
    is back); the answers for the order and every event of the last try."""
    deadline = time.monotonic() + timeout
    while True:
        client.cancel(symbol, order_id)
        events = client.collect(lambda ev: any(isinstance(e, (Cancelled, Rejected)) and e.order_id == order_id
                                               for e in ev), timeout=5)
        answers = [(type(e).__name__, e.reason) for e in events
                   if isinstance(e, (Cancelled, Rejected)) and e.order_id == order_id]
        if answers != [("Rejected", "instrument_unavailable")] or time.monotonic() > deadline:
            return answers, events
        time.sleep(0.1)


def test_the_launcher_starts_a_dead_node_again_and_its_orders_are_still_there(tmp_path):
    path = write_config(tmp_path, extra='[durability]\nenabled = true\nfsync = "batch"\nbatch_ms = 2.0\n')
    cluster = start_cluster(path, tmp_path / "logs")
    try:
        with ClusterClient(cluster.config.client_endpoint(), name="restart") as client:
            client.new_order("GOOG", 1, "A1", "buy", 100, price=1_000_000)
            assert any(isinstance(e, Accepted) for e in client.collect(
                lambda ev: any(isinstance(e, Accepted) for e in ev)))
            cluster.kill_node("book2")
            assert wait_for(lambda: (cluster.pump(0.02), cluster.nodes["book2"].reported_dead)[1], timeout=10)
            cluster.restart_dead(max_per_minute=1)
            # Not waited for: the launcher goes on pumping, and says when the node is back.
            assert cluster.nodes["book2"].restarted
            assert wait_for(lambda: (cluster.pump(0.05), cluster.nodes["book2"].ready)[1], timeout=60)
            assert any("book2 is back" in line for line in cluster.events)
            # The order outlived its process: a cancel finds it (once risk has heard the book is back: until
            # then commands for it are refused, instrument_unavailable).
            answers, events = _cancel_once_the_book_is_back(client, "GOOG", 1)
            assert answers == [("Cancelled", "user")], events
            # Within the minute, a second death is one too many for max_per_minute=1: left dead, and said so.
            cluster.kill_node("book2")
            assert wait_for(lambda: (cluster.pump(0.02), cluster.nodes["book2"].reported_dead)[1], timeout=10)
            cluster.restart_dead(max_per_minute=1)
            assert cluster.nodes["book2"].given_up and not cluster.alive()["book2"]
            assert any("book2 died 2 times within a minute" in line for line in cluster.events)
            assert cluster.restarts == {"book2": 1}
    finally:
        cluster.stop()


def test_a_book_node_stalled_past_the_heartbeat_timeout_trades_again_when_it_resumes(tmp_path):
    """Taken for dead (SIGSTOP for longer than the 5 s heartbeat timeout) but never restarted, a durable book
    never says RECOVERED: risk asks it for its events when it answers again, and that answer ends the wait.
    Before, its instruments stayed refused, instrument_unavailable, for the rest of the run."""
    import signal

    path = write_config(tmp_path, extra='[durability]\nenabled = true\nfsync = "batch"\nbatch_ms = 2.0\n')
    cluster = start_cluster(path, tmp_path / "logs")
    stopped = False
    try:
        with ClusterClient(cluster.config.client_endpoint(), name="stall") as client:
            client.new_order("GOOG", 1, "A1", "buy", 100, price=1_000_000)
            assert any(isinstance(e, Accepted) for e in client.collect(
                lambda ev: any(isinstance(e, Accepted) for e in ev)))
            cluster.kill_node("book2", signal.SIGSTOP)
            stopped = True

            order_ids = itertools.count(100)

            def refused() -> bool:
                client.new_order("GOOG", next(order_ids), "A1", "buy", 100, price=1_000_000)
                events = client.collect(lambda ev: any(isinstance(e, Rejected) for e in ev), timeout=0.5)
                return any(isinstance(e, Rejected) and e.reason == "instrument_unavailable" for e in events)

            assert wait_for(refused, timeout=20, interval=0.2), "the stalled node was never taken for down"
            cluster.kill_node("book2", signal.SIGCONT)
            stopped = False
            # Orders for its instruments are taken again, and the order resting there is still there.
            answers, events = _cancel_once_the_book_is_back(client, "GOOG", 1)
            assert answers == [("Cancelled", "user")], events
            stats = [admin_request(cluster.config, f"risk/{i}", {"command": "stats"})["stats"] for i in (0, 1)]
            assert sum(s.get("books_back_without_restart", 0) for s in stats) >= 1, stats
    finally:
        if stopped:
            cluster.kill_node("book2", signal.SIGCONT)
        cluster.stop()


def test_a_gateway_that_cannot_write_its_journal_goes_down_at_once_and_comes_back(tmp_path):
    """A journal write that fails (here: the gateway process may no longer grow any file, as on a full disk)
    kills the gateway actor. Its node must then exit at once and drop its clients, not keep a SoupBinTCP
    listener taking logins for an actor that is gone (it did, for tens of seconds). The order it could not
    journal was never answered, so its client sends it again after the restart."""
    import resource

    users = users_toml(OUCH_USERS)
    path = write_config(tmp_path, extra='[durability]\nenabled = true\nfsync = "batch"\nbatch_ms = 2.0\n' + users)
    cluster = start_cluster(path, tmp_path / "logs")
    client = OuchClient(*cluster.config.ouch_address(), "TRADA", "trada-pw", next_seq=1)
    try:
        first = client.enter_order("AAPL", "B", 100, 990_000)
        assert [(m["type"], m["user_ref_num"]) for m in ouch_reports(client, 1)] == [("A", first)]
        process = cluster.nodes["gateway"].process
        # Every write that would grow a file now fails (EFBIG), journal and log alike.
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (1, 1))
        second = client.enter_order("AAPL", "B", 50, 980_000)
        failed_at = time.monotonic()
        try:
            code = process.wait(timeout=15)
        except Exception:
            raise AssertionError("the gateway node did not exit after its actor failed") from None
        took = time.monotonic() - failed_at
        assert code == 70 and took < 4.5, (code, took)  # 5 s and more is the bounded stop giving up
        # Its client was dropped, not left talking to a listener of a dead actor.
        assert _dropped(client, timeout=5)
        assert wait_for(lambda: (cluster.pump(0.02), cluster.nodes["gateway"].reported_dead)[1], timeout=10)
        cluster.restart_node("gateway", timeout=60)
        assert wait_for(lambda: _reconnected(client), timeout=20)
        # The unanswered order was never journaled: the client sends it again and it is taken once.
        client.sync_user_ref_num()
        again = client.enter_order("AAPL", "B", 50, 980_000)
        answers = [m for m in ouch_reports(client, 2, timeout=10) if m["type"] in ("A", "J")]
        assert [(m["type"], m["user_ref_num"]) for m in answers] == [("A", again)], (second, answers)
        books = admin_request(cluster.config, "book/AAPL", {"command": "snapshot"})["state"]["orders"]
        assert sorted((o[3], o[4]) for o in books) == [(980_000, 50), (990_000, 100)]
    finally:
        client.close()
        cluster.stop()


def _dropped(client: OuchClient, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.recv(0.1)
        except ConnectionClosed:
            return True
    return False


def test_an_actor_that_fails_while_starting_releases_what_it_started_and_its_node_says_why(tmp_path):
    """pykka calls on_failure when a message's handling raises, not when on_start does: a gateway that failed
    after starting its client port (here its journal's archive is a file, not a directory) kept that thread and
    socket, so its node could not end, and nobody was told why it died."""
    path = write_config(tmp_path, extra=f'[durability]\nenabled = true\nfsync = "batch"\n'
                                        f'state_dir = "{tmp_path}/state"\n')
    (tmp_path / "state" / "gateway" / "gateway-0").mkdir(parents=True)
    (tmp_path / "state" / "gateway" / "gateway-0" / "archive").write_text("not a directory")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"node gateway exited with code 70 while starting(.|\n)*actor gateway/0 "
                                           r"failed: (FileExistsError|NotADirectoryError)"):
        start_cluster(path, tmp_path / "logs")
    assert time.monotonic() - started < 20
    log = (tmp_path / "logs" / "gateway.log").read_text()
    assert "sockets still open" not in log  # it ended because everything was closed, not by the 5 s limit
