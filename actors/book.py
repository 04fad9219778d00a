"""BookActor: one per instrument, the engine (or a card) behind the book interface.

With durability on, every command is journaled (``exchange.journal``) before any of its reports
leave, snapshots bound recovery time, and a restarted book rebuilds itself from its snapshot
and journal, re-sends the events since the snapshot (receivers drop what they saw already, by
sequence number) and then tells everyone it is back (a RECOVERED report).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from actors.base import ClusterActor, NodeContext
from actors.config import GATEWAY_SHIFT, ClusterConfig, gateway_number_of, recent_order_ids
from actors.durable import RESEND_REQUEST, instrument_grid, resend_done_record, sync_when_due
from actors.event_history import EventHistory, in_memory_for
from exchange.engine import Book
from exchange.journal import JournalWriter, recover
from exchange.layout import LayoutError
from exchange.orders import Accepted, Cancelled, Event, Fill, Modified, ModifyOrder, Rejected
from exchange.wire import (
    EV_RECOVERED,
    MSG_ORDERS,
    MSG_REPORTS,
    ORDER_SIZE,
    REPORT,
    REPORT_SIZE,
    MessageKind,
    event_to_record,
    iter_records,
    record_to_command,
    record_to_event,
    record_version,
)

log = logging.getLogger("matchwire.book")

_REPORTS = MessageKind.REPORTS
MATCH_SHIFT = 40  # cluster match number = (instrument number + 1) << 40 | the book's match number
_CLIENT_EVENTS = (Accepted, Rejected, Cancelled, Modified, Fill)


def recovered_record(symbol: str, seq: int) -> bytes:
    """The report that says: this book is back, and its events up to ``seq`` have been (re)sent."""
    # Its own seq stays 0 (the last event's number rides in ``extra``): receivers drop records whose
    # seq they have seen, and this one must always get through.
    return REPORT.pack(kind=EV_RECOVERED, side=0, order_type=0, tif=0, stp=0, flags=0, reason=0,
                       op=1, seq=0, trace_ns=0, symbol=symbol, account="", account2="", order_id=0,
                       order_id2=0, price=0, qty=0, extra=seq, match_number=0)


def book_peer_nodes(config: ClusterConfig, name: str) -> list[str]:
    """The nodes a book sends to: those of risk shards, gateways and market data, never another book's (on nodes of
    many books, every book kept a connection to every other book node, heartbeats and pings, for nothing)."""
    own = config.actor_node[name].name
    return sorted({config.actor_node[other].name for other in config.actor_names
                   if not other.startswith("book/")} - {own})


class BookActor(ClusterActor):
    """Owns one book. Orders arrive in batches from risk actors; every event gets one total
    order (the book's sequence numbers) and goes to market data, and execution reports also go
    to the gateway that owns the order and the risk shard of its account."""

    # A book does nothing when a peer node dies (what it could not send is kept and sent again), so it pings its
    # peers once a second, for the health view, not every tick: with one actor per instrument a node of 200
    # books sent 8,000 pings a second to stand still (docs/cluster.md "Many instruments").
    PROBE_INTERVAL = 1.0
    #: On a node of many books (NodeContext.many_books), each pings every ten seconds: together they still
    #: ping each peer node a hundred times a second or so.
    MANY_BOOKS_PROBE_INTERVAL = 10.0
    QUIET_STATS = True

    def __init__(self, context: NodeContext, name: str, book: Book) -> None:
        super().__init__(context, name)
        if context.many_books:
            self.PROBE_INTERVAL = self.MANY_BOOKS_PROBE_INTERVAL
        # For its duplicate rule, the newest ids per gateway, not every id of the day (docs/cluster.md "Memory over
        # a trading day"): the software engine and a card's driver alike.
        book.remember_ids(recent_order_ids())
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
        self.durability = config.durability
        self.journal: JournalWriter | None = None
        self.stopping = False
        self.since_snapshot = 0
        self.last_snapshot = time.monotonic()
        self.recovery: str | None = None
        # Recent events, for receivers that recover and ask for what they missed (actors/durable.py); with journals
        # only: without, no receiver can recover and ask.
        self.recent: EventHistory | None = None
        # The last modify version applied per order (docs/durability.md "Modifies sent again"): a gateway
        # sends an unanswered modify again after a crash, and a copy of one applied here must not be
        # applied twice (around a fill it would change the order). Kept here, not in the engine, so every
        # matcher behind the book interface gets it. Entries of orders no longer in the book are dropped at
        # snapshots and when the map outgrows the book (a copy for such an order is answered unknown_order,
        # which the gateway drops).
        self.modify_versions: dict[int, int] = {}
        self.resending = False  # routing events again after a restart (not counted as new fills or rejects)

    def on_peer_down(self, node: str) -> None:
        # Said once by the launcher, the risk shards and the gateways; a node of 200 books said it 200 times.
        log.debug("%s: node %s is down", self.name, node)

    def on_peer_up(self, node: str) -> None:
        log.debug("%s: node %s is up", self.name, node)

    # -- life cycle ----------------------------------------------------------------------

    def on_start(self) -> None:
        super().on_start()
        if not self.durability.enabled:
            return
        directory = Path(self.durability.directory(self.ctx.node)) / self.name.replace("/", "-")
        directory.mkdir(parents=True, exist_ok=True)
        instrument = self.config.instruments[self.symbol]
        # Replaying a journal needs the grid its commands were checked against.
        # (A journal written for another grid is refused before the node starts: check_state_dir.)
        (directory / "instrument.json").write_text(json.dumps(instrument_grid(instrument)))
        books_here = sum(name.startswith("book/") for name in self.config.node(self.ctx.node).actors)
        self.recent = EventHistory(directory / "history",
                                   in_memory=self.durability.events_in_memory or in_memory_for(books_here))
        state, records, report = recover(directory, oldest=True)
        if state is not None:
            state = dict(state)
            self.modify_versions = {int(k): v for k, v in state.pop("modify_versions", {}).items()}
            self.book.restore(state)  # type: ignore[attr-defined]
        replayed: list[Event] = []
        for record in records:
            try:
                command, _ = record_to_command(record)
            except LayoutError:
                continue  # cannot happen for a journal this actor wrote; CRC passed
            version = record_version(record)
            if version:  # journaled, so it was applied (copies are dropped before the journal)
                self.modify_versions[command.order_id] = version  # type: ignore[union-attr]
            replayed.extend(self.book.process(command))
        self.recovery = str(report)
        if report.truncated:
            log.error("%s: journal damaged, recovered to the last good record: %s", self.name, report)
        elif state is not None or records:
            log.warning("%s: recovered: %s", self.name, report)
        self.journal = JournalWriter(directory, self.durability.fsync, self.durability.batch_ms,
                                     next_index=report.snapshot_index + len(records))
        self.since_snapshot = len(records)
        # Re-send what the book did since its older snapshot (receivers drop events they saw: what it sent
        # just before the crash may have died in its socket queues), then say so. Said even by a book with
        # an empty journal: risk refuses orders for a restarted book until it hears RECOVERED.
        self.resending = True  # what it did before the crash, sent again: counted as resent, not as new
        try:
            for event in replayed:
                self._route(event, 0, None)
        finally:
            self.resending = False
        self.count("resent_events", len(replayed))
        marker = recovered_record(self.symbol, getattr(self.book, "seq", 0))
        for index in {*self.risk_indices, *self.gateway_indices, *self.md_indices}:
            self.outbox.add(index, _REPORTS, marker)  # type: ignore[union-attr]
        self.flush()

    def on_stop(self) -> None:
        self.stopping = True  # the last flush sends everything, whatever is still queued
        super().on_stop()
        if self.journal is not None:
            self.journal.close()

    # -- orders --------------------------------------------------------------------------

    def _risk_of(self, account: str) -> int:
        index = self._risk_cache.get(account)
        if index is None:
            index = self._risk_cache[account] = self.config.actor_index[self.config.risk_shard(account)]
        return index

    def _gateway_of(self, order_id: int) -> int | None:
        number = gateway_number_of(order_id)
        return self.gateway_indices[number] if 0 <= number < len(self.gateway_indices) else None

    def handle_batch(self, batch) -> None:  # noqa: ANN001
        if batch.kind is MSG_REPORTS:
            self._resend_requests(batch)
            return
        if batch.kind is not MSG_ORDERS:
            self.count("unexpected_batches")
            return
        try:
            offsets = iter_records(batch.payload, ORDER_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        process = self.book.process
        route = self._route
        source = batch.source
        payload = batch.payload
        journal = self.journal
        live = getattr(self.book, "orders", None)  # the engine's resting orders by id
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
            if type(command) is ModifyOrder:
                version = record_version(payload, offset)
                if version:
                    if version <= self.modify_versions.get(command.order_id, 0) and \
                            (live is None or command.order_id in live):
                        # A copy sent again after a crash of one applied here: its answer was produced
                        # then (and reaches a recovered receiver by the re-send on request). Not journaled,
                        # so the journal stays what the engine saw and replays without this rule. A copy
                        # for an order no longer in the book is answered unknown_order like any modify of
                        # it: risk may have forgotten the order and wait for that answer (the gateway drops
                        # it as a second answer).
                        self.count("duplicate_modifies")
                        continue
                    self.modify_versions[command.order_id] = version
            if journal is not None:
                journal.append(bytes(payload[offset:offset + ORDER_SIZE]))
            for event in process(command):
                route(event, trace_ns, source)
        if live is not None and len(self.modify_versions) > 2 * len(live) + 1024:
            # Without journal snapshots nothing else would forget orders that left the book; pruning only
            # when the map outgrows the book twice over keeps the cost per command constant.
            self.modify_versions = {k: v for k, v in self.modify_versions.items() if k in live}
        if journal is not None:
            journal.commit()
            self.since_snapshot += batch.count

    def _resend_requests(self, batch) -> None:  # noqa: ANN001
        """A recovered gateway, risk shard or market-data actor asks for its events after a sequence number."""
        try:
            offsets = iter_records(batch.payload, REPORT_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        for offset in offsets:
            fields = REPORT.struct.unpack_from(batch.payload, offset)
            if fields[0] != EV_RECOVERED or fields[7] != RESEND_REQUEST:
                self.count("unexpected_reports")
                continue
            after = fields[17]
            self.count("resend_requests")
            oldest = self.recent.oldest_seq() if self.recent is not None else 0
            if oldest > after + 1:
                # Older events are gone from the history: the receiver gets what is kept (and it is counted).
                self.count("resend_gaps")
                log.error("%s: %s asked for events after %d, the oldest kept is %d", self.name,
                          self.config.actor_names[batch.source], after, oldest)
            resent = 0
            for record, source in self.recent.since(after) if self.recent is not None else ():
                event, trace_ns = record_to_event(record)
                resent += self._route(event, trace_ns, source, only=batch.source, record=record)
            self.count("resent_events", resent)
            self.outbox.add(batch.source, _REPORTS, resend_done_record(self.symbol, getattr(self.book, "seq", 0)))  # type: ignore[union-attr]

    def _route(self, event: Event, trace_ns: int, source: int | None, only: int | None = None,
               record: bytes | None = None) -> int:
        """Send an event to whoever it concerns (``only``: just to that receiver, as the kept ``record``)."""
        kind = type(event)
        if only is None:
            if kind is Fill:
                event = tuple.__new__(Fill, event[:9] + (self.match_prefix | event[9],))
            record = event_to_record(event, trace_ns)
            # Kept as bytes (with the risk shard that sent the command): a tuple of bytes and an int leaves the
            # garbage collector's view, while 200,000 kept event tuples made every full collection of a
            # book node take ~100 ms (measured: docs/cluster.md "Garbage collection").
            if self.recent is not None:
                self.recent.append(record, source)
            add = self.outbox.add  # type: ignore[union-attr]
        else:
            outbox_add = self.outbox.add  # type: ignore[union-attr]
            sent = [0]

            def add(index: int, kind: MessageKind, record: bytes) -> None:
                if index == only:
                    outbox_add(index, kind, record)
                    sent[0] += 1
        assert record is not None
        for index in self.md_indices:
            add(index, _REPORTS, record)
        if kind not in _CLIENT_EVENTS:
            return 0 if only is None else sent[0]
        gateways = self.gateway_indices
        if kind is Fill:
            if only is None and not self.resending:
                self.count("fills")
            # Both sides' gateways (gateway_number_of, inline: twice an event), once if they are the same.
            maker, taker = (event[4] >> GATEWAY_SHIFT) - 1, (event[5] >> GATEWAY_SHIFT) - 1
            if 0 <= maker < len(gateways):
                add(gateways[maker], _REPORTS, record)
            if taker != maker and 0 <= taker < len(gateways):
                add(gateways[taker], _REPORTS, record)
            for index in self.risk_indices:
                add(index, _REPORTS, record)
            return 0 if only is None else sent[0]
        number = (event[2] >> GATEWAY_SHIFT) - 1
        if 0 <= number < len(gateways):
            add(gateways[number], _REPORTS, record)
        if kind is Rejected:
            # A reject names no account: it goes back to the risk shard that sent the command
            # (after a recovery, to every shard; they drop what they saw by sequence number).
            if only is None and not self.resending:
                self.count("rejects")
            for index in (self.risk_indices if source is None else (source,)):
                add(index, _REPORTS, record)
        else:
            add(self._risk_of(event[3]), _REPORTS, record)
        return 0 if only is None else sent[0]

    def flush(self) -> None:
        journal = self.journal
        # Group commit: no report leaves before the commands it answers are durable. With more commands queued and
        # the batch policy's sync not due, the reports wait for the next flush and those commands share its fsync.
        if journal is not None and not sync_when_due(journal, self.stopping or self.actor_inbox.empty()):
            return
        super().flush()
        if journal is not None and self.outbox is not None and not self.outbox.buffered and (
                self.since_snapshot >= self.durability.snapshot_every
                or (self.since_snapshot and time.monotonic() - self.last_snapshot >= self.durability.snapshot_seconds)):
            journal.snapshot(self._snapshot())
            self.since_snapshot = 0
            self.last_snapshot = time.monotonic()

    def _snapshot(self) -> dict:
        """The book's state for the journal: the engine's, plus the modify versions of the orders in it."""
        state = self.book.snapshot()  # type: ignore[attr-defined]
        live = {order[0] for order in state.get("orders", ())}
        # Versions of orders that left the book are no use any more: a copy for one is answered unknown_order.
        self.modify_versions = {k: v for k, v in self.modify_versions.items() if k in live}
        state["modify_versions"] = {str(k): v for k, v in self.modify_versions.items()}
        return state

    def peer_nodes(self) -> list[str]:
        return book_peer_nodes(self.config, self.name)

    def stats_key(self) -> tuple:
        # A snapshot taken on a tick changes the journal's figures without a message.
        journal = self.journal
        return (*super().stats_key(), None if journal is None else tuple(journal.stats.values()))

    def stats(self) -> dict:
        out = super().stats()
        bid, bid_qty, ask, ask_qty = self.book.bbo()
        out.update({"symbol": self.symbol, "seq": getattr(self.book, "seq", None), "bid": bid, "bid_qty": bid_qty,
                    "ask": ask, "ask_qty": ask_qty})
        if self.journal is not None:
            out.update({f"journal_{k}": v for k, v in self.journal.stats.items()})
            out["journal_policy"] = self.journal.policy
        if self.recovery:
            out["recovery"] = self.recovery
        return out

    def on_control(self, request: dict) -> dict:
        command = request.get("command")
        if command == "depth":
            return {"symbol": self.symbol, "depth": self.book.depth()}
        if command == "snapshot":
            return {"symbol": self.symbol, "state": self.book.snapshot()}  # type: ignore[attr-defined]
        return super().on_control(request)
