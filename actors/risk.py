"""RiskActor: pre-trade risk, sharded by account.

For now it passes orders on to their book and keeps, per account, the orders in flight (sent,
not yet answered) and the open orders (accepted and resting) with their remaining quantity and
the account's positions from fills. Issue #7 adds the checks. It is also where a full or dead
book node is answered: "busy" when the book's queue is full, "instrument_unavailable" when its
node is down, so no order ever waits forever.
"""

from __future__ import annotations

from actors.base import ClusterActor, NodeContext
from actors.config import gateway_number_of
from actors.transport import SendResult
from exchange.layout import LayoutError
from exchange.orders import Cancelled, Rejected, RejectReason, Side
from exchange.wire import (
    ORDER,
    ORDER_SIZE,
    REPORT,
    REPORT_SIZE,
    ClusterReason,
    EventKind,
    MessageKind,
    Op,
    event_to_record,
    iter_records,
)

_unpack_order = ORDER.struct.unpack_from
_unpack_report = REPORT.struct.unpack_from
_OP_NAMES = {Op.NEW: "new", Op.CANCEL: "cancel", Op.MODIFY: "modify", Op.END_OF_DAY: "end_of_day",
             Op.SET_BASE: "set_base"}


class OpenOrder:
    """What risk knows of an order: whose, where, how much is left."""

    __slots__ = ("order_id", "account", "symbol", "side", "price", "leaves", "accepted")

    def __init__(self, order_id: int, account: str, symbol: str, side: int, price: int, leaves: int) -> None:
        self.order_id = order_id
        self.account = account
        self.symbol = symbol
        self.side = side
        self.price = price
        self.leaves = leaves
        self.accepted = False


class RiskActor(ClusterActor):
    """One shard of pre-trade risk (the accounts whose hash falls on it)."""

    def __init__(self, context: NodeContext, name: str) -> None:
        super().__init__(context, name)
        config = context.config
        self.book_index = {symbol: config.actor_index[f"book/{symbol}"] for symbol in config.instruments}
        self.book_node = {symbol: config.actor_node[f"book/{symbol}"].name for symbol in config.instruments}
        self.gateway_indices = [config.actor_index[g] for g in config.gateways]
        self.orders: dict[int, OpenOrder] = {}
        self.positions: dict[tuple[str, str], int] = {}  # (account, symbol) -> net shares
        self.down_nodes: set[str] = set()
        # Which gateway sent each command still in flight, to answer it if the book cannot.
        self.pending_source: dict[int, int] = {}

    # -- orders from gateways ------------------------------------------------------------

    def handle_batch(self, batch) -> None:  # noqa: ANN001
        if batch.kind is MessageKind.ORDERS:
            self._orders(batch)
        elif batch.kind is MessageKind.REPORTS:
            self._reports(batch)
        else:
            self.count("unexpected_batches")

    def _orders(self, batch) -> None:  # noqa: ANN001
        try:
            offsets = iter_records(batch.payload, ORDER_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        payload = batch.payload
        add = self.outbox.add  # type: ignore[union-attr]
        orders_kind = MessageKind.ORDERS
        for offset in offsets:
            fields = _unpack_order(payload, offset)
            op, side, _, _, _, _, _, trace_ns, symbol_b, account_b, order_id, price, qty, _ = fields
            symbol = symbol_b.decode("ascii", "replace").rstrip(" ")
            account = account_b.decode("ascii", "replace").rstrip(" ")
            record = bytes(payload[offset:offset + ORDER_SIZE])
            self.count("orders")
            book = self.book_index.get(symbol)
            if book is None:
                self._reject(batch.source, symbol, order_id, op, RejectReason.UNKNOWN_SYMBOL, trace_ns)
                continue
            if self.book_node[symbol] in self.down_nodes:
                self._reject(batch.source, symbol, order_id, op, ClusterReason.INSTRUMENT_UNAVAILABLE, trace_ns)
                continue
            if op == Op.NEW and order_id not in self.orders:
                self.orders[order_id] = OpenOrder(order_id, account, symbol, side, price, qty)
            self.pending_source[order_id] = batch.source
            add(book, orders_kind, record)

    def _reject(self, gateway: int, symbol: str, order_id: int, op: int, reason: str, trace_ns: int) -> None:
        self.count(f"rejected_{reason}")
        event = tuple.__new__(Rejected, (None, symbol, order_id, _OP_NAMES.get(op, "new"), reason, ""))
        record = event_to_record(event, trace_ns)
        if op == Op.NEW:
            self.orders.pop(order_id, None)
        self.pending_source.pop(order_id, None)
        self.outbox.add(gateway, MessageKind.REPORTS, record)  # type: ignore[union-attr]

    def handle_send_failures(self, result: SendResult) -> None:
        """Orders that could not reach their book are answered now; reports are retried."""
        failures = [(ClusterReason.BUSY, item) for item in result.busy]
        failures += [(ClusterReason.INSTRUMENT_UNAVAILABLE, item) for item in result.unreachable]
        for reason, (destination, kind, records) in failures:
            if kind is not MessageKind.ORDERS:
                for record in records:
                    self.outbox.add(destination, kind, record)  # type: ignore[union-attr]
                continue
            for record in records:
                op, *_rest = _unpack_order(record, 0)
                trace_ns, symbol_b, order_id = _rest[6], _rest[7], _rest[9]
                source = self.pending_source.get(order_id, self.gateway_indices[0])
                self._reject(source, symbol_b.decode("ascii", "replace").rstrip(" "), order_id, op, reason,
                             trace_ns)

    # -- reports from books --------------------------------------------------------------

    def _reports(self, batch) -> None:  # noqa: ANN001
        try:
            offsets = iter_records(batch.payload, REPORT_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        payload = batch.payload
        orders = self.orders
        for offset in offsets:
            (kind, side, _, _, _, _, reason, op, _, _, symbol_b, account_b, account2_b, order_id, order_id2, price,
             qty, _, _) = _unpack_report(payload, offset)
            if kind == EventKind.ACCEPTED:
                self.pending_source.pop(order_id, None)
                order = orders.get(order_id)
                if order is not None:
                    order.accepted = True
            elif kind == EventKind.REJECTED:
                self.pending_source.pop(order_id, None)
                if op == Op.NEW:
                    orders.pop(order_id, None)
            elif kind == EventKind.CANCELLED:
                orders.pop(order_id, None)
            elif kind == EventKind.MODIFIED:
                self.pending_source.pop(order_id, None)
                order = orders.get(order_id)
                if order is not None:
                    order.leaves = qty
                    order.price = price
            elif kind == EventKind.FILL:
                symbol = symbol_b.decode("ascii", "replace").rstrip(" ")
                taker_side = side
                for oid, acct_b, is_taker in ((order_id, account_b, False), (order_id2, account2_b, True)):
                    account = acct_b.decode("ascii", "replace").rstrip(" ")
                    if self.config.risk_shard(account) != self.name:
                        continue
                    buys = (taker_side == Side.BUY) == is_taker
                    key = (account, symbol)
                    self.positions[key] = self.positions.get(key, 0) + (qty if buys else -qty)
                    order = orders.get(oid)
                    if order is not None:
                        order.leaves -= qty
                        if order.leaves <= 0:
                            del orders[oid]

    # -- nodes coming and going ----------------------------------------------------------

    def on_peer_down(self, node: str) -> None:
        super().on_peer_down(node)
        if node in self.down_nodes or node not in self.book_node.values():
            self.down_nodes.add(node)
            return
        self.down_nodes.add(node)
        lost = [order for order in self.orders.values() if self.book_node[order.symbol] == node]
        for order in lost:
            source = self.pending_source.get(order.order_id)
            if not order.accepted:
                self._reject(source if source is not None else self.gateway_indices[0], order.symbol,
                             order.order_id, Op.NEW, ClusterReason.INSTRUMENT_UNAVAILABLE, 0)
                continue
            # The book that held it is gone (and with it the order): tell the owner, once.
            del self.orders[order.order_id]
            self.count("cancelled_instrument_unavailable")
            event = tuple.__new__(Cancelled, (None, order.symbol, order.order_id, order.account, order.leaves,
                                              ClusterReason.INSTRUMENT_UNAVAILABLE))
            gateway = self._gateway_for(order.order_id)
            if gateway is not None:
                self.outbox.add(gateway, MessageKind.REPORTS, event_to_record(event, 0))  # type: ignore[union-attr]

    def _gateway_for(self, order_id: int) -> int | None:
        number = gateway_number_of(order_id)
        return self.gateway_indices[number] if 0 <= number < len(self.gateway_indices) else None

    def on_peer_up(self, node: str) -> None:
        super().on_peer_up(node)
        self.down_nodes.discard(node)

    def stats(self) -> dict:
        out = super().stats()
        out["open_orders"] = len(self.orders)
        out["in_flight"] = len(self.pending_source)
        out["down_nodes"] = sorted(self.down_nodes)
        return out

    def on_other(self, message: object) -> object:
        if message == "open_orders":
            return {oid: (o.account, o.symbol, o.leaves) for oid, o in self.orders.items()}
        if message == "positions":
            return dict(self.positions)
        return None

