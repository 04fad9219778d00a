"""Demo traders for ``matchwire run``: market makers quoting around a drifting fair price and
takers crossing the spread, each a thread with its own client session."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from actors.client import ClusterClient
from exchange.instruments import Instrument
from exchange.orders import (
    Accepted,
    Cancelled,
    Fill,
    Modified,
    ModifyOrder,
    NewOrder,
    OrderType,
    Rejected,
    Side,
    TimeInForce,
)


class TraderStats:
    """What one trader saw: orders sent, reports by kind, rejects by reason, ack latencies."""

    def __init__(self) -> None:
        self.sent = 0
        self.busy_local = 0
        self.reports: Counter[str] = Counter()
        self.rejects: Counter[str] = Counter()
        self.cancels: Counter[str] = Counter()
        self.fills = 0
        self.latencies_ns: list[int] = []
        self.acked: set[int] = set()

    def merge(self, other: TraderStats) -> None:
        self.sent += other.sent
        self.busy_local += other.busy_local
        self.reports.update(other.reports)
        self.rejects.update(other.rejects)
        self.cancels.update(other.cancels)
        self.fills += other.fills
        self.latencies_ns.extend(other.latencies_ns)


class DemoTrader(threading.Thread):
    """A paced trader: ``step()`` decides what to send; reports are read between steps."""

    def __init__(self, name: str, endpoint: str, account: str, instruments: list[Instrument], rate: float,
                 seed: int, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.endpoint = endpoint
        self.account = account
        self.instruments = instruments
        self.rate = max(rate, 1.0)
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.stats = TraderStats()
        self.next_id = 1
        self.client: ClusterClient | None = None
        self.fair = {i.symbol: i.reference_price or 1_000_000 for i in instruments}
        self.tick = {i.symbol: i.tick_size for i in instruments}

    def run(self) -> None:
        self.client = ClusterClient(self.endpoint, name=f"demo-{self.name}")
        try:
            interval = 1.0 / self.rate
            next_send = time.perf_counter()
            while not self.stop_event.is_set():
                now = time.perf_counter()
                if now >= next_send:
                    self.step()
                    self.client.flush()
                    next_send += interval
                    if now - next_send > 1.0:  # fell far behind: do not burst to catch up
                        next_send = now
                self._read(max(0.0, min(next_send - time.perf_counter(), 0.05)))
            self._read(0.3)
        finally:
            self.stats.busy_local = self.client.busy
            self.client.close()

    def _read(self, timeout: float) -> None:
        assert self.client is not None
        now = time.perf_counter_ns()
        stats = self.stats
        for event, trace_ns in self.client.poll(timeout):
            kind = type(event)
            stats.reports[event.kind] += 1
            if kind is Accepted or kind is Rejected or kind is Modified:
                if kind is Rejected:
                    stats.rejects[event.reason] += 1  # type: ignore[attr-defined]
                    self.on_reject(event)  # type: ignore[arg-type]
                if trace_ns and kind is not Modified and event[2] not in stats.acked:
                    stats.acked.add(event[2])
                    stats.latencies_ns.append(now - trace_ns)
                elif trace_ns and kind is Modified:
                    stats.latencies_ns.append(now - trace_ns)
            elif kind is Fill:
                stats.fills += 1
                self.on_fill(event)
            elif kind is Cancelled:
                stats.cancels[event.reason] += 1  # type: ignore[attr-defined]
                self.on_done(event[2])

    def on_fill(self, event: Fill) -> None:
        pass

    def on_done(self, order_id: int) -> None:
        pass

    def on_reject(self, event: Rejected) -> None:
        pass

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def send(self, command: object) -> None:
        assert self.client is not None
        self.client.queue(command)  # type: ignore[arg-type]
        self.stats.sent += 1

    def step(self) -> None:
        raise NotImplementedError


class MarketMaker(DemoTrader):
    """Keeps one bid and one ask per instrument around a random-walk fair price, repricing them."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.quotes: dict[tuple[str, Side], int] = {}
        self.leaves: dict[int, int] = {}

    def step(self) -> None:
        inst = self.rng.choice(self.instruments)
        symbol, tick = inst.symbol, inst.tick_size
        self.fair[symbol] += self.rng.choice((-1, 0, 1)) * tick
        side = self.rng.choice((Side.BUY, Side.SELL))
        offset = self.rng.randint(1, 5) * tick
        price = max(self.fair[symbol] - offset if side is Side.BUY else self.fair[symbol] + offset, tick)
        key = (symbol, side)
        qty = self.rng.randint(1, 10) * 100
        order_id = self.quotes.get(key)
        if order_id is None:
            order_id = self.new_id()
            self.quotes[key] = order_id
            self.leaves[order_id] = qty
            self.send(NewOrder(symbol, order_id, self.account, side, price, qty))
        else:
            self.leaves[order_id] = qty
            self.send(ModifyOrder(symbol, order_id, qty=qty, price=price))

    def on_fill(self, event: Fill) -> None:
        for order_id in (event.maker_order_id, event.taker_order_id):
            if order_id in self.leaves:
                self.leaves[order_id] -= event.qty
                if self.leaves[order_id] <= 0:
                    self.on_done(order_id)

    def on_reject(self, event: Rejected) -> None:
        if event.op in ("new", "modify"):
            self.on_done(event.order_id)

    def on_done(self, order_id: int) -> None:
        self.leaves.pop(order_id, None)
        for key, value in list(self.quotes.items()):
            if value == order_id:
                del self.quotes[key]


class Taker(DemoTrader):
    """Crosses the spread with IOC limit and market orders."""

    def step(self) -> None:
        inst = self.rng.choice(self.instruments)
        symbol, tick = inst.symbol, inst.tick_size
        self.fair[symbol] += self.rng.choice((-1, 0, 1)) * tick
        side = self.rng.choice((Side.BUY, Side.SELL))
        qty = self.rng.randint(1, 5) * 100
        if self.rng.random() < 0.2:
            self.send(NewOrder(symbol, self.new_id(), self.account, side, None, qty, OrderType.MARKET,
                               TimeInForce.IOC))
        else:
            reach = self.rng.randint(0, 4) * tick
            price = self.fair[symbol] + reach if side is Side.BUY else self.fair[symbol] - reach
            self.send(NewOrder(symbol, self.new_id(), self.account, side, max(price, tick), qty,
                               tif=TimeInForce.IOC))
