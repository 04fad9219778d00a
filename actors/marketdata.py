"""MarketDataActor: every book's events, in each book's order, rebuilt into a public view.

It checks each book's sequence numbers (a gap is counted and reported, never hidden), rebuilds
the visible books from the events alone, and keeps trade statistics. Issue #5 adds the ITCH 5.0
feed over MoldUDP64 on top of the same event stream.
"""

from __future__ import annotations

from actors.base import ClusterActor, NodeContext
from actors.transport import Batch
from exchange.eventbook import EventBook
from exchange.layout import LayoutError
from exchange.wire import REPORT_SIZE, MessageKind, iter_records, record_to_event


class MarketDataActor(ClusterActor):
    """The cluster's public view of its books."""

    def __init__(self, context: NodeContext, name: str) -> None:
        super().__init__(context, name)
        self.view = EventBook()
        self.listeners: list = []  # callables taking (event, trace_ns); #5 adds the ITCH publisher

    def handle_batch(self, batch: Batch) -> None:
        if batch.kind is not MessageKind.REPORTS:
            self.count("unexpected_batches")
            return
        try:
            offsets = iter_records(batch.payload, REPORT_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        apply = self.view.apply
        payload = batch.payload
        listeners = self.listeners
        self.count("events", batch.count)
        for offset in offsets:
            try:
                event, trace_ns = record_to_event(payload, offset)
            except LayoutError:
                self.count("malformed_records")
                continue
            apply(event)
            for listener in listeners:
                listener(event, trace_ns)

    def stats(self) -> dict:
        out = super().stats()
        view = self.view
        out["gaps"] = len(view.gaps)
        out["anomalies"] = view.anomalies
        out["books"] = {
            symbol: {"seq": view.last_seq.get(symbol), "bbo": view.bbo(symbol), "trades": view.trades.get(symbol, 0),
                     "volume": view.volume.get(symbol, 0), "last": view.last_price.get(symbol)}
            for symbol in sorted(set(view.last_seq) | set(view.orders))
        }
        return out

    def on_other(self, message: object) -> object:
        if message == "gaps":
            return list(self.view.gaps)
        if isinstance(message, tuple) and message[0] == "depth":
            return self.view.depth(message[1])
        if message == "last_seq":
            return dict(self.view.last_seq)
        return None
