"""Demo traders for ``matchwire run``: real OUCH 5.0 sessions over SoupBinTCP 4.0.

Market makers keep a bid and an ask per instrument around a drifting fair price and reprice them
with Replace Order; takers cross the spread with IOC limit and market orders. Each trader is a
thread with its own login (one live session per user), and measures the time from each
message's send to the first answer for it (Accepted, Replaced, Canceled or Rejected).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from hdrh.histogram import HdrHistogram

from actors.ouch_client import OuchClient
from exchange.instruments import Instrument
from exchange.ouch import CANCEL_REASON_NAMES, MARKET_PRICE, REJECT_REASON_NAMES

RECONNECT_SECONDS = 30.0  # how long a demo trader keeps trying to log in again after its connection dropped
ANSWER_GIVE_UP_NS = 5_000_000_000  # a market maker stops waiting for a replace's answer after this long


LATENCY_MAX_US = 3_600_000_000  # one hour: the top of every latency histogram (longer answers are counted there)


def new_latency_histogram() -> HdrHistogram:
    """An empty histogram of answer latencies in µs, 1 µs to 1 h at 3 significant digits: the demo traders' and the
    cluster bench's alike."""
    return HdrHistogram(1, LATENCY_MAX_US, 3)


class TraderStats:
    """What one trader saw: orders sent, answers by type, rejects by reason, answer latencies (µs).

    The latencies go into an HdrHistogram, a fixed few hundred kB: ``matchwire run`` left going for a day kept
    every latency in a list before, ~130 MB an hour at the demo's rate, sorted once more for the summary."""

    def __init__(self) -> None:
        self.sent = 0
        self.messages: Counter[str] = Counter()
        self.rejects: Counter[str] = Counter()
        self.cancels: Counter[str] = Counter()
        self.executions = 0
        self.latency_us = new_latency_histogram()
        self.reconnects = 0

    def record_latency(self, ns: int) -> None:
        self.latency_us.record_value(min(max(1, ns // 1000), LATENCY_MAX_US))

    def merge(self, other: TraderStats) -> None:
        self.sent += other.sent
        self.reconnects += other.reconnects
        self.messages.update(other.messages)
        self.rejects.update(other.rejects)
        self.cancels.update(other.cancels)
        self.executions += other.executions
        self.latency_us.add(other.latency_us)


class DemoTrader(threading.Thread):
    """A paced OUCH trader: :meth:`step` decides what to send; answers are read between steps."""

    def __init__(self, name: str, address: tuple[str, int], user: str, password: str, accounts: list[str],
                 instruments: list[Instrument], rate: float, seed: int, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.address = address
        self.user = user
        self.password = password
        # OUCH's Firm field is 4 characters: an account that does not fit can only be a user's default.
        self.accounts = [a for i, a in enumerate(accounts) if i == 0 or len(a) <= 4] or [""]
        self.instruments = instruments
        self.rate = max(rate, 1.0)
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.stats = TraderStats()
        self.client: OuchClient | None = None
        self.sent_at: dict[int, int] = {}
        self.fair = {i.symbol: i.reference_price or 1_000_000 for i in instruments}
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.client = OuchClient(self.address[0], self.address[1], self.user, self.password)
        except (OSError, RuntimeError) as exc:
            self.error = f"{self.user}: cannot log in: {exc}"
            return
        try:
            interval = 1.0 / self.rate
            next_send = time.perf_counter()
            while not self.stop_event.is_set():
                try:
                    now = time.perf_counter()
                    if now >= next_send:
                        self.step()
                        next_send += interval
                        if now - next_send > 1.0:  # fell far behind: do not burst to catch up
                            next_send = now
                    self._read(max(0.0, min(next_send - time.perf_counter(), 0.05)))
                except OSError:  # the connection dropped (ConnectionClosed is one): its gateway may be restarting
                    if not self._reconnect():
                        break
                    next_send = time.perf_counter()
            if self.client.connected:
                self._read(0.3)
        except Exception as exc:  # noqa: BLE001  # reported in the summary; the cluster keeps running
            self.error = f"{self.user}: {type(exc).__name__}: {exc}"
        finally:
            try:
                self.client.logout()
            except (OSError, RuntimeError):
                pass
            self.client.close()

    def _reconnect(self, give_up_after: float = RECONNECT_SECONDS) -> bool:
        """Log in again as a SoupBinTCP client does, asking for the next sequenced message: the server
        replays what was missed. False when stopped, or when the gateway stays away (then an error)."""
        assert self.client is not None
        deadline = time.monotonic() + give_up_after
        while not self.stop_event.is_set():
            try:
                self.client.reconnect()
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.error = f"{self.user}: gateway gone for {give_up_after:.0f} s: {exc}"
                    return False
                self.stop_event.wait(0.2)
                continue
            self.stats.reconnects += 1
            return True
        return False

    def _read(self, timeout: float) -> None:
        """Read what has come, waiting up to ``timeout`` for the first message only (the next send is due)."""
        assert self.client is not None
        stats = self.stats
        while True:
            message = self.client.recv(timeout)
            if message is None:
                return
            timeout = 0.0
            kind = message["type"]
            stats.messages[kind] += 1
            ref = message.get("user_ref_num")
            sent = self.sent_at.pop(ref, None) if kind in "AUCJ" else None
            if sent is not None:
                stats.record_latency(time.perf_counter_ns() - sent)
            if kind == "J":
                stats.rejects[REJECT_REASON_NAMES.get(message["reason"], str(message["reason"]))] += 1
                self.on_done(ref)
            elif kind == "E":
                stats.executions += 1
                self.on_execution(ref, message["quantity"])
            elif kind == "C":
                code = message.get("reason", "?")
                stats.cancels[CANCEL_REASON_NAMES.get(code, code)] += 1
                self.on_done(ref)
            elif kind == "U":
                self.on_replaced(message.get("orig_user_ref_num"), ref, message.get("quantity", 0))

    def _sent(self, ref: int) -> int:
        self.sent_at[ref] = time.perf_counter_ns()
        self.stats.sent += 1
        return ref

    def _firm(self, account: str) -> dict | None:
        return None if account == self.accounts[0] else {"firm": account}

    def on_execution(self, ref: int, qty: int) -> None:
        pass

    def on_done(self, ref: int | None) -> None:
        pass

    def on_replaced(self, previous: int | None, ref: int, qty: int) -> None:
        pass

    def step(self) -> None:
        raise NotImplementedError


class MarketMaker(DemoTrader):
    """One bid and one ask per instrument and account, repriced with Replace Order."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.quotes: dict[tuple[str, str, str], int] = {}  # (symbol, side, account) -> current UserRefNum
        self.leaves: dict[int, int] = {}
        self.key_of: dict[int, tuple[str, str, str]] = {}

    def step(self) -> None:
        assert self.client is not None
        inst = self.rng.choice(self.instruments)
        symbol, tick = inst.symbol, inst.tick_size
        self.fair[symbol] += self.rng.choice((-1, 0, 1)) * tick
        side = self.rng.choice(("B", "S"))
        account = self.rng.choice(self.accounts)
        offset = self.rng.randint(1, 5) * tick
        price = max(self.fair[symbol] - offset if side == "B" else self.fair[symbol] + offset, tick)
        qty = self.rng.randint(5, 20) * 100
        key = (symbol, side, account)
        ref = self.quotes.get(key)
        if ref is not None and ref in self.sent_at:
            # OUCH: a replace names the order's current token, so wait for the last answer; one that never comes
            # (a message lost with a crashed gateway before its journal had it) is given up after a while.
            if time.perf_counter_ns() - self.sent_at[ref] < ANSWER_GIVE_UP_NS:
                return
            del self.sent_at[ref]
            self.on_done(ref)
            ref = None
        # Sent first, then recorded: a send that fails (the connection dropped) changes nothing.
        if ref is None:
            new = self._sent(self.client.enter_order(symbol, side, qty, price, options=self._firm(account)))
        else:
            new = self._sent(self.client.replace_order(ref, qty, price))
            self.key_of.pop(ref, None)
            self.leaves.pop(ref, None)
        self.quotes[key] = new
        self.key_of[new] = key
        self.leaves[new] = qty

    def on_execution(self, ref: int, qty: int) -> None:
        if ref in self.leaves:
            self.leaves[ref] -= qty
            if self.leaves[ref] <= 0:
                self.on_done(ref)

    def on_done(self, ref: int | None) -> None:
        key = self.key_of.pop(ref, None)  # type: ignore[arg-type]
        self.leaves.pop(ref, None)  # type: ignore[arg-type]
        if key is not None and self.quotes.get(key) == ref:
            del self.quotes[key]


class Taker(DemoTrader):
    """Crosses the spread with IOC limit orders, and now and then a market order. It leans against its
    position (the longer it is, the likelier it sells), as a real taker managing risk would: a coin flip
    per order would let positions wander until the credit limit refused most of a retail account's orders."""

    LEAN_SHARES = 2000  # a position this large (either way) makes the next order flatten it for sure

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.orders: dict[int, tuple[str, str, int]] = {}  # UserRefNum -> (account, symbol, +1 buy / -1 sell)
        self.positions: dict[tuple[str, str], int] = {}

    def on_execution(self, ref: int, qty: int) -> None:
        order = self.orders.get(ref)
        if order is not None:
            key = order[:2]
            self.positions[key] = self.positions.get(key, 0) + order[2] * qty

    def on_done(self, ref: int | None) -> None:
        self.orders.pop(ref, None)  # type: ignore[arg-type]

    def step(self) -> None:
        assert self.client is not None
        inst = self.rng.choice(self.instruments)
        symbol, tick = inst.symbol, inst.tick_size
        self.fair[symbol] += self.rng.choice((-1, 0, 1)) * tick
        qty = self.rng.randint(1, 3) * 100
        account = self.rng.choice(self.accounts)
        lean = self.positions.get((account, symbol), 0) / self.LEAN_SHARES
        side = "S" if self.rng.random() < 0.5 + max(-0.5, min(0.5, lean / 2)) else "B"
        if self.rng.random() < 0.2:
            price = MARKET_PRICE
        else:
            reach = self.rng.randint(0, 4) * tick
            price = max(self.fair[symbol] + reach if side == "B" else self.fair[symbol] - reach, tick)
        ref = self._sent(self.client.enter_order(symbol, side, qty, price, time_in_force="3",
                                                 options=self._firm(account)))
        self.orders[ref] = (account, symbol, 1 if side == "B" else -1)
        if len(self.orders) > 10_000:  # IOC orders end with an execution or a cancel; a lost answer must not pile up
            self.orders.pop(next(iter(self.orders)))
