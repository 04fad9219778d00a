"""BookActor: one per instrument, the engine (or a card) behind the book interface."""

from __future__ import annotations

from actors.base import ClusterActor, NodeContext
from actors.config import gateway_number_of
from exchange.engine import Book
from exchange.layout import LayoutError
from exchange.orders import Accepted, Cancelled, Fill, Modified, Rejected
from exchange.wire import (
    ORDER_SIZE,
    MessageKind,
    event_to_record,
    iter_records,
    record_to_command,
)

_REPORTS = MessageKind.REPORTS
MATCH_SHIFT = 40  # cluster match number = (instrument number + 1) << 40 | the book's match number
_CLIENT_EVENTS = (Accepted, Rejected, Cancelled, Modified, Fill)


class BookActor(ClusterActor):
    """Owns one book. Orders arrive in batches from risk actors; every event gets one total
    order (the book's sequence numbers) and goes to market data, and execution reports also go
    to the gateway that owns the order and the risk shard of its account."""

    def __init__(self, context: NodeContext, name: str, book: Book) -> None:
        super().__init__(context, name)
        self.book = book
        self.symbol = book.symbol
        config = context.config
        self.gateway_indices = [config.actor_index[g] for g in config.gateways]
        self.md_indices = [config.actor_index[m] for m in config.market_data]
        # Every risk shard sees every fill: it marks positions and collars to the last trade.
        self.risk_indices = [config.actor_index[r] for r in config.risk_shards]
        self._risk_cache: dict[str, int] = {}
        # Match numbers on the wire are unique across the cluster for the day (OUCH and ITCH need
        # that): the instrument's number in the configuration above the engine's own counter.
        self.match_prefix = (list(config.instruments).index(self.symbol) + 1) << MATCH_SHIFT

    def _risk_of(self, account: str) -> int:
        index = self._risk_cache.get(account)
        if index is None:
            index = self._risk_cache[account] = self.config.actor_index[self.config.risk_shard(account)]
        return index

    def _gateway_of(self, order_id: int) -> int | None:
        number = gateway_number_of(order_id)
        return self.gateway_indices[number] if 0 <= number < len(self.gateway_indices) else None

    def handle_batch(self, batch) -> None:  # noqa: ANN001
        if batch.kind is not MessageKind.ORDERS:
            self.count("unexpected_batches")
            return
        try:
            offsets = iter_records(batch.payload, ORDER_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        outbox = self.outbox
        add = outbox.add  # type: ignore[union-attr]
        process = self.book.process
        payload = batch.payload
        md = self.md_indices
        self.count("orders", batch.count)
        for offset in offsets:
            try:
                command, trace_ns = record_to_command(payload, offset)
            except LayoutError:
                self.count("malformed_records")
                continue
            if command.symbol != self.symbol:
                self.count("misrouted_records")
                continue
            for event in process(command):
                if type(event) is Fill:
                    event = tuple.__new__(Fill, event[:9] + (self.match_prefix | event[9],))
                record = event_to_record(event, trace_ns)
                for index in md:
                    add(index, _REPORTS, record)
                kind = type(event)
                if kind not in _CLIENT_EVENTS:
                    continue
                if kind is Fill:
                    self.count("fills")
                    maker_gw = self._gateway_of(event[4])
                    taker_gw = self._gateway_of(event[5])
                    for index in {maker_gw, taker_gw}:
                        if index is not None:
                            add(index, _REPORTS, record)
                    for index in self.risk_indices:
                        add(index, _REPORTS, record)
                    continue
                gateway = self._gateway_of(event[2])
                if gateway is not None:
                    add(gateway, _REPORTS, record)
                if kind is Rejected:
                    # A reject names no account: it goes back to the risk shard that sent the command.
                    self.count("rejects")
                    add(batch.source, _REPORTS, record)
                else:
                    add(self._risk_of(event[3]), _REPORTS, record)

    def stats(self) -> dict:
        out = super().stats()
        bid, bid_qty, ask, ask_qty = self.book.bbo()
        out.update({"symbol": self.symbol, "seq": getattr(self.book, "seq", None), "bid": bid, "bid_qty": bid_qty,
                    "ask": ask, "ask_qty": ask_qty})
        return out

    def on_other(self, message: object) -> object:
        if message == "depth":
            return self.book.depth()
        if message == "seq":
            return getattr(self.book, "seq", None)
        return None
