"""RiskActor: pre-trade risk, one shard of the accounts (by a stable hash of the account).

Every new and modified order is checked against its account's limits (``exchange.risk``)
before it may go on to its book; exposure is reserved when the order passes, so an account's
totals are right while its orders rest in several book processes at once. Reports from the
books release and convert the reservations. The shard is also where a full or dead book node is
answered: "busy" when the book's queue is full, "instrument_unavailable" when its node is down,
so no order ever waits forever. Operators reach it with ``matchwire admin``: kill switch,
release, limits, positions.
"""

from __future__ import annotations

import logging
import struct
import time

from actors.base import ClusterActor, NodeContext
from actors.config import gateway_number_of, recent_order_ids
from actors.durable import (
    ActorSnapshots,
    ResendGate,
    commit_and_wait,
    is_resend_done,
    open_journal,
    resend_request_record,
    risk_recovered_record,
)
from actors.transport import SendResult
from exchange.engine import BUY
from exchange.layout import LayoutError
from exchange.orders import Cancelled, CancelReason, Rejected, RejectReason
from exchange.risk import AccountRisk, RiskOrder
from exchange.wire import (
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_FILL,
    EV_MODIFIED,
    EV_RECOVERED,
    EV_REJECTED,
    FLAG_ADMIN,
    FLAG_REDUCE,
    MSG_ORDERS,
    MSG_REPORTS,
    OP_CANCEL,
    OP_MODIFY,
    OP_NEW,
    ORDER,
    ORDER_SIZE,
    REASON_CODES,
    REASONS_BY_CODE,
    REPORT,
    REPORT_SIZE,
    ClusterReason,
    Op,
    ReplayFilter,
    event_to_record,
    iter_records,
    text8,
)

log = logging.getLogger("matchwire.risk")

_unpack_order = ORDER.struct.unpack_from
_pack_order = ORDER.struct.pack
_unpack_report = REPORT.struct.unpack_from
#: Refused new orders remembered per shard (a gateway sends its unanswered orders again within moments).
REFUSED_KEPT = 100_000
_ANSWERS_CANCEL, _ANSWERS_MODIFY, _ANSWERS_CUT = 1, 2, 4
_FLAGS_AT = 5  # the flags byte of an order record


def _command_kind(record: bytes) -> int:
    """The _ANSWERS_* bit of an order record in flight: a cancel, a cut or another modify."""
    if record[0] == OP_CANCEL:
        return _ANSWERS_CANCEL
    return _ANSWERS_CUT if record[_FLAGS_AT] & FLAG_REDUCE else _ANSWERS_MODIFY


def _answer_kind(kind: int, reason: int, op: int) -> int:
    """Which commands of an order a book event answers, as _ANSWERS_* bits: a modify (a cut among them) is
    answered by Modified or its reject, a cancel by the user's Cancelled or its reject, and a cut that took all
    that was open by the user's Cancelled too."""
    if kind == EV_MODIFIED or kind == EV_REJECTED and op == OP_MODIFY:
        return _ANSWERS_MODIFY | _ANSWERS_CUT
    if kind == EV_CANCELLED and REASONS_BY_CODE.get(reason) == CancelReason.USER:
        return _ANSWERS_CANCEL | _ANSWERS_CUT
    if kind == EV_REJECTED and op == OP_CANCEL:
        return _ANSWERS_CANCEL
    return 0


_OP_NAMES = {Op.NEW: "new", Op.CANCEL: "cancel", Op.MODIFY: "modify", Op.END_OF_DAY: "end_of_day",
             Op.SET_BASE: "set_base"}


# Journal records of a risk shard (docs/durability.md "Risk"): what changed its state, in order.
_TAG_ORDER = b"O"  # an order that passed the checks and went to its book: source actor (u16), 64-byte record
# J: an order or command this shard answered itself: order id (u64), op (u8), a modify's version (u64), the reason
# code (u8) (a copy of that modify sent again gets the same answer) and, for a command passed on earlier that could
# not reach its book, its 64-byte record (no longer in flight). Journals before versions hold id and op only.
_TAG_REJECT = b"J"
_TAG_EVENT = b"E"  # a report from a book, as applied (96 bytes)
_TAG_KILL = b"K"  # the kill switch: on (u8), account
_SOURCE = struct.Struct("<H")
_REJECT = struct.Struct("<QB")
_REJECT_VERSION = struct.Struct("<QBQB")


_text = text8




class RiskActor(ClusterActor):
    """One shard of pre-trade risk."""

    def __init__(self, context: NodeContext, name: str) -> None:
        super().__init__(context, name)
        config = context.config
        self.book_index = {symbol: config.actor_index[f"book/{symbol}"] for symbol in config.instruments}
        self.book_node = {symbol: config.actor_node[f"book/{symbol}"].name for symbol in config.instruments}
        self.ticks = {symbol: inst.tick_size for symbol, inst in config.instruments.items()}
        # The mark of each instrument: its last trade, or its configured reference price before one.
        self.marks: dict[str, int] = {s: i.reference_price for s, i in config.instruments.items()
                                      if i.reference_price is not None}
        self.gateway_indices = [config.actor_index[g] for g in config.gateways]
        self.accounts: dict[str, AccountRisk] = {}
        self.orders: dict[int, RiskOrder] = {}  # every open order of this shard's accounts
        self.down_nodes: set[str] = set()
        # Durable books whose node went down and which have not said RECOVERED yet: orders for them are
        # refused until then, even once the node answers pings, or an order sent to the new incarnation
        # before its RECOVERED arrives would be answered "unavailable" by _book_recovered and still trade.
        self.recovering: set[str] = set()
        self.pending_source: dict[int, int] = {}  # order id -> the gateway awaiting an answer
        self.replays = ReplayFilter()
        self.durable_books = config.durability.enabled
        self._reject_log_window = 0.0
        self._rejects_logged = 0
        self.seen_ids = recent_order_ids()  # new orders that passed (a gateway may send one again;
        # exchange/recent_ids.py says why a window per gateway recognises every copy)
        # New orders this shard refused, with the reason code: a copy a gateway sends again (it does when it sees
        # this node come up, and a refusal may still be on its way) is refused again, never checked anew: it
        # might pass now and rest in a book while its client was told it was rejected.
        self.refused_new: dict[int, int] = {}
        # New orders sent to a book and not answered yet (id -> record): a book that recovers is sent these
        # again (it answers a copy of one it has with duplicate_order_id, which everyone ignores), since
        # one sent to its new incarnation before its RECOVERED arrived cannot be told from one lost.
        self.in_flight_new: dict[int, bytes] = {}
        self.copies: set[int] = set()  # ids of copies on their way: a failed copy is no answer
        # Modifies and cancels sent to a book and not answered yet (id -> records, in the order sent): a book
        # that recovers is sent these again after the new order, if that is in flight too (it drops a copy of
        # a modify it applied by version, docs/durability.md "Modifies sent again"; a second cancel is
        # answered unknown_order, which the gateway drops). While the book is down, later modifies and
        # cancels of such an order wait behind them here instead of overtaking them with an answer.
        self.in_flight_cmds: dict[int, list[bytes]] = {}
        # Per order, the highest modify version seen (passed on or answered here), and the versions this
        # shard answered itself with their reason codes: a gateway that restarted sends its unanswered
        # modifies again, and a copy must neither reserve exposure twice nor be answered differently.
        self.modify_seen: dict[int, int] = {}
        self.modify_answered: dict[int, dict[int, int]] = {}
        # Answers this shard makes itself to a modify or cancel while earlier commands of the same order are
        # still with its book (order id -> [(gateway, record, those earlier commands)]): OUCH pairs an order's
        # answers with its requests in order, so this one waits rather than overtake theirs.
        self.deferred_answers: dict[int, list[tuple[int, bytes, list[bytes]]]] = {}
        self.journal = None
        self.snapshots: ActorSnapshots | None = None
        self.gate = ResendGate()
        self.replaying = False
        self.stopping = False
        self.recovery: str | None = None

    def on_start(self) -> None:
        super().on_start()
        if not self.config.durability.enabled:
            return
        self.journal, state, records, report = open_journal(self.config.durability, self.ctx.node, self.name)
        self.snapshots = ActorSnapshots(self.config.durability, self.journal)
        self.recovery = str(report)
        # Orders that reached the old process but not its journal died with it: the gateways send their
        # unanswered orders again when they hear this (the ones journaled are recognised by id).
        for gateway in self.gateway_indices:
            self.outbox.add(gateway, MSG_REPORTS, risk_recovered_record(self.index))  # type: ignore[union-attr]
        if state is None and not records:
            self.flush()
            return
        if state is not None:
            self.load_state(state)
        self._replay(records)
        # What the old process received from the books but had not journaled died with it: ask each
        # book for its events after the last one journaled, and hold its live events until they are in.
        for symbol in self.book_index:
            self._request_resend(symbol)
        self.flush()

    def _replay(self, records: list[bytes]) -> None:
        """Rebuild exposure, open orders, positions, marks and kill switches from the journal."""
        self.replaying = True
        try:
            for record in records:
                tag = record[:1]
                if tag == _TAG_ORDER:
                    self._forward(_SOURCE.unpack_from(record, 1)[0], record, 1 + _SOURCE.size)
                elif tag == _TAG_EVENT:
                    self._report(record, 1)
                elif tag == _TAG_REJECT:
                    if len(record) >= 1 + _REJECT_VERSION.size:
                        self._forget_rejected(*_REJECT_VERSION.unpack_from(record, 1),
                                              record[1 + _REJECT_VERSION.size:] or None)
                    else:
                        self._forget_rejected(*_REJECT.unpack_from(record, 1))
                elif tag == _TAG_KILL:
                    self.account(record[2:].decode("ascii", "replace")).killed = bool(record[1])
                else:
                    self.count("journal_unknown_records")
        finally:
            self.replaying = False
        log.warning("%s: recovered %d journal records: %d accounts, %d open orders", self.name, len(records),
                    len(self.accounts), len(self.orders))

    # -- journal snapshots ---------------------------------------------------------------------------------

    def save_state(self) -> dict:
        """What replaying this shard's journal up to now rebuilds: accounts (orders, reservations, positions,
        kill switches), marks, orders and commands in flight, modify versions, the books' high-water marks.
        Not what a replay does not rebuild either: limits (configuration), nodes down, copies in flight."""
        in_accounts = {order_id for account in self.accounts.values() for order_id in account.orders}
        return {
            "marks": self.marks,
            "accounts": {name: account.save_state() for name, account in self.accounts.items()},
            # The shard's own map shares its orders with the accounts'; the few it holds alone are saved whole.
            "orders": [order_id for order_id in self.orders if order_id in in_accounts],
            "orders_alone": [order.save_state() for order_id, order in self.orders.items()
                             if order_id not in in_accounts],
            "pending_source": list(self.pending_source.items()),
            "seen_ids": self.seen_ids.save_state(),
            "refused_new": list(self.refused_new.items()),
            "in_flight_new": [[order_id, record.hex()] for order_id, record in self.in_flight_new.items()],
            "in_flight_cmds": [[order_id, [r.hex() for r in cmds]] for order_id, cmds in self.in_flight_cmds.items()],
            "modify_seen": list(self.modify_seen.items()),
            "modify_answered": [[order_id, list(answered.items())]
                                for order_id, answered in self.modify_answered.items()],
            "replays": self.replays.save_state(),
        }

    def load_state(self, state: dict) -> None:
        """Continue from a snapshot made by :meth:`save_state`."""
        self.marks = dict(state["marks"])
        for name, saved in state["accounts"].items():
            self.account(name).load_state(saved)
        by_id = {order_id: order for account in self.accounts.values() for order_id, order in account.orders.items()}
        self.orders = {order_id: by_id[order_id] for order_id in state["orders"]}
        for values in state["orders_alone"]:
            self.orders[values[0]] = RiskOrder.from_state(values)
        self.pending_source = dict(state["pending_source"])
        self.seen_ids.load_state(state["seen_ids"])
        self.refused_new = dict(state.get("refused_new", ()))  # snapshots of before 2026-12-05 have none
        self.in_flight_new = {order_id: bytes.fromhex(r) for order_id, r in state["in_flight_new"]}
        self.in_flight_cmds = {order_id: [bytes.fromhex(r) for r in cmds] for order_id, cmds in state["in_flight_cmds"]}
        self.modify_seen = dict(state["modify_seen"])
        self.modify_answered = {order_id: dict(answers) for order_id, answers in state["modify_answered"]}
        self.replays.load_state(state["replays"])

    def _request_resend(self, symbol: str) -> None:
        """Ask book ``symbol`` for its events after the last one journaled; hold its events until they come."""
        self.gate.wait_for(symbol)
        last = self.replays.last.get(symbol.encode().ljust(8, b" "), 0)
        self.outbox.add(self.config.actor_index[f"book/{symbol}"], MSG_REPORTS,  # type: ignore[union-attr]
                        resend_request_record(symbol, last))

    def on_stop(self) -> None:
        self.stopping = True
        super().on_stop()
        if self.journal is not None:
            self.journal.close()

    def flush(self) -> None:
        if self.journal is not None:
            # Group commit: no order goes on to a book and no answer goes back before the journal
            # holds what it did to this shard's state (with more input queued, it joins this batch).
            if not commit_and_wait(self.journal, self.stopping or self.actor_inbox.empty()):
                return
        super().flush()
        if self.snapshots is not None and self.snapshots.due():
            self.snapshots.take(self.save_state())

    def account(self, name: str) -> AccountRisk:
        risk = self.accounts.get(name)
        if risk is None:
            risk = self.accounts[name] = AccountRisk(name, self.config.limits_for(name))
        return risk

    def handle_batch(self, batch) -> None:  # noqa: ANN001
        if batch.kind is MSG_ORDERS:
            self._orders(batch)
        elif batch.kind is MSG_REPORTS:
            self._reports(batch)
        else:
            self.count("unexpected_batches")

    # -- orders from gateways ------------------------------------------------------------

    def _orders(self, batch) -> None:  # noqa: ANN001
        try:
            offsets = iter_records(batch.payload, ORDER_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        payload = batch.payload
        add = self.outbox.add  # type: ignore[union-attr]
        orders_kind = MSG_ORDERS
        self.count("orders", batch.count)
        for offset in offsets:
            fields = _unpack_order(payload, offset)
            op, side, _, _, _, flags, _, trace_ns, symbol_b, account_b, order_id, price, qty, version = fields
            symbol = _text(symbol_b)
            book = self.book_index.get(symbol)
            if book is None:
                self._reject(batch.source, symbol, order_id, op, "unknown_symbol", trace_ns)
                continue
            if op == OP_NEW and order_id in self.refused_new:
                self.count("refused_copies")
                self._reject(batch.source, symbol, order_id, op, REASONS_BY_CODE.get(self.refused_new[order_id], ""),
                             trace_ns)
                continue
            if op != OP_MODIFY:
                version = 0  # the field is a new order's display quantity
            elif version and version <= self.modify_seen.get(order_id, 0):
                self._modify_copy(batch.source, book, symbol, order_id, version, trace_ns,
                                  bytes(payload[offset:offset + ORDER_SIZE]))
                continue
            if op == OP_NEW and (order_id in self.seen_ids or order_id in self.in_flight_new
                                 or order_id in self.orders):
                # A gateway that restarted sends its unanswered orders again. This one passed before (its
                # exposure is reserved): it goes on unchecked, and the book answers a copy it has with
                # duplicate_order_id (ignored). If the book is down, its recovery answers the original.
                if self.book_node[symbol] not in self.down_nodes and symbol not in self.recovering:
                    self.copies.add(order_id)
                    add(book, orders_kind, bytes(payload[offset:offset + ORDER_SIZE]))
                self.count("orders_resent")
                continue
            hold = False
            if self.book_node[symbol] in self.down_nodes or symbol in self.recovering:
                if self.durable_books and op in (OP_MODIFY, OP_CANCEL) and (
                        order_id in self.in_flight_cmds or order_id in self.in_flight_new):
                    # The book's recovery re-sends the order's earlier commands: this one waits behind them
                    # (an answer now would overtake theirs, and OUCH pairs answers with requests in order).
                    # Once its RECOVERED is in (its node may not answer pings yet), they have been re-sent: on.
                    hold = symbol in self.recovering
                    self.count("commands_held_for_recovering_book" if hold else "commands_after_recovery")
                else:
                    self._reject(batch.source, symbol, order_id, op, ClusterReason.INSTRUMENT_UNAVAILABLE, trace_ns,
                                 version=version)
                    continue
            if op == OP_NEW:
                account = self.account(_text(account_b))
                reason = account.check_new(symbol, side, price, qty, self.marks.get(symbol), self.ticks[symbol],
                                           self.marks)
                if reason is not None:
                    self._reject(batch.source, symbol, order_id, op, reason, trace_ns, account.account)
                    continue
            elif op == OP_MODIFY and not flags & FLAG_REDUCE:  # a cut only lowers risk: it always passes
                order = self.orders.get(order_id)
                if order is not None:
                    account = self.account(order.account)
                    reason = account.check_modify(order, price, qty, self.marks.get(symbol), self.ticks[symbol],
                                                  self.marks)
                    if reason is not None:
                        self._reject(batch.source, symbol, order_id, op, reason, trace_ns, account.account,
                                     version=version)
                        continue
            record = bytes(payload[offset:offset + ORDER_SIZE])
            if self.journal is not None:
                self.journal.append(_TAG_ORDER + _SOURCE.pack(batch.source) + record)
            self._forward(batch.source, record, 0, fields)
            if not hold:
                add(book, orders_kind, record)

    def _modify_copy(self, source: int, book: int, symbol: str, order_id: int, version: int, trace_ns: int,
                     record: bytes) -> None:
        """A modify this shard has seen, sent again by a gateway that restarted or heard this shard did."""
        self.count("modifies_resent")
        code = self.modify_answered.get(order_id, {}).get(version)
        if code is not None:
            # Answered here the first time, and that answer died with the gateway: the same answer again (no
            # state changes: the first answer made them).
            event = tuple.__new__(Rejected, (None, symbol, order_id, "modify", REASONS_BY_CODE.get(code, ""), ""))
            self._answer(source, order_id, OP_MODIFY, event_to_record(event, trace_ns))
            return
        # Passed on before (its exposure is reserved): on unchecked. The book drops a copy of one it applied;
        # one it never got is applied now. While the book is down its recovery re-sends the original.
        if self.book_node[symbol] not in self.down_nodes and symbol not in self.recovering:
            self.copies.add(order_id)
            self.outbox.add(book, MSG_ORDERS, record)  # type: ignore[union-attr]

    def _forward(self, source: int, payload: bytes, offset: int, fields: tuple | None = None) -> None:
        """The state change of an order that passed its checks (live, or from the journal).

        ``fields``: the record unpacked already (the live path has them), else unpacked here.
        """
        if fields is None:
            fields = _unpack_order(payload, offset)
        op, side, _, _, _, flags, _, _, symbol_b, account_b, order_id, price, qty, version = fields
        record = payload if offset == 0 and len(payload) == ORDER_SIZE else bytes(payload[offset:offset + ORDER_SIZE])
        if op == OP_NEW:
            self.seen_ids.add(order_id)
            self.in_flight_new[order_id] = record
            if order_id not in self.orders:
                symbol = _text(symbol_b)
                value_price = price or self.marks.get(symbol, 0)
                self.orders[order_id] = self.account(_text(account_b)).reserve_new(order_id, symbol, side,
                                                                                   value_price, qty)
        elif op == OP_MODIFY:
            order = self.orders.get(order_id)
            if order is not None and not flags & FLAG_REDUCE:  # a cut reserves nothing more; its answer settles
                self.account(order.account).reserve_modify(order, price, qty)
            if version:
                self.modify_seen[order_id] = max(version, self.modify_seen.get(order_id, 0))
        if op == OP_MODIFY or op == OP_CANCEL:
            cmds = self.in_flight_cmds.setdefault(order_id, [])
            if op == OP_CANCEL and any(record[0] == OP_CANCEL for record in cmds):
                # A gateway sent its unanswered cancel again (this shard restarted): the one in flight may have
                # died in a socket with the old process, so this copy goes on, but the book answers the order's
                # cancels once (a second one unknown_order): one entry waits for that answer.
                self.count("cancels_resent")
            else:
                cmds.append(record)
        self.pending_source[order_id] = source

    def _reject(self, gateway: int, symbol: str, order_id: int, op: int, reason: str, trace_ns: int,
                account: str = "", version: int = 0, record: bytes | None = None) -> None:
        self.count(f"rejected_{reason}")
        now = time.monotonic()
        if now - self._reject_log_window >= 1.0:
            if self._rejects_logged > 5:
                log.info("%s: %d more rejects in the last second", self.name, self._rejects_logged - 5)
            self._reject_log_window, self._rejects_logged = now, 0
        self._rejects_logged += 1
        if self._rejects_logged <= 5:
            log.info("%s: rejected %s %s order %d of %s: %s", self.name, _OP_NAMES.get(op, op), symbol,
                     order_id, account or "?", reason)
        event = tuple.__new__(Rejected, (None, symbol, order_id, _OP_NAMES.get(op, "new"), reason, ""))
        code = REASON_CODES.get(reason, 0)
        if self.journal is not None:
            self.journal.append(_TAG_REJECT + _REJECT_VERSION.pack(order_id, op, version, code) + (record or b""))
        self._forget_rejected(order_id, op, version, code, record)
        self._answer(gateway, order_id, op, event_to_record(event, trace_ns))

    def _answer(self, gateway: int, order_id: int, op: int, record: bytes) -> None:
        """Send this shard's own answer to a command, after the book's answers to the order's earlier commands."""
        if op == OP_MODIFY or op == OP_CANCEL:
            earlier = list(self.in_flight_cmds.get(order_id, ()))
            new = self.in_flight_new.get(order_id)
            if new is not None:
                earlier.append(new)
            if earlier or order_id in self.deferred_answers:
                self.deferred_answers.setdefault(order_id, []).append((gateway, record, earlier))
                self.count("answers_deferred")
                return
        self.outbox.add(gateway, MSG_REPORTS, record)  # type: ignore[union-attr]

    def _release_answers(self, order_id: int, everything: bool = False) -> None:
        """Send the deferred answers of an order whose earlier commands have all been answered (or all of them:
        its book is gone and will not answer)."""
        queued = self.deferred_answers.get(order_id)
        if not queued:
            return
        in_flight = self.in_flight_cmds.get(order_id, ())
        new = self.in_flight_new.get(order_id)
        while queued:
            gateway, record, earlier = queued[0]
            if not everything and any(r == new or r in in_flight for r in earlier):
                break
            queued.pop(0)
            self.outbox.add(gateway, MSG_REPORTS, record)  # type: ignore[union-attr]
        if not queued:
            del self.deferred_answers[order_id]

    def _forget_rejected(self, order_id: int, op: int, version: int = 0, code: int = 0,
                         record: bytes | None = None) -> None:
        if version:
            self.modify_seen[order_id] = max(version, self.modify_seen.get(order_id, 0))
            self.modify_answered.setdefault(order_id, {})[version] = code
        if record is not None:
            # A command passed on earlier that could not reach its book: answered now, no longer in flight.
            cmds = self.in_flight_cmds.get(order_id)
            if cmds is not None and record in cmds:
                cmds.remove(record)
                if not cmds:
                    del self.in_flight_cmds[order_id]
        if op == OP_NEW:
            self.refused_new[order_id] = code
            if len(self.refused_new) > REFUSED_KEPT:
                del self.refused_new[next(iter(self.refused_new))]  # the oldest: long answered
            self.in_flight_new.pop(order_id, None)
            order = self.orders.pop(order_id, None)
            if order is not None:
                self.account(order.account).on_rejected(order_id, "new")
        elif op == OP_MODIFY:
            order = self.orders.get(order_id)
            if order is not None and order.pending is not None:
                self.account(order.account).on_rejected(order_id, "modify")
        self.pending_source.pop(order_id, None)
        if self.deferred_answers:
            self._release_answers(order_id)

    def handle_send_failures(self, result: SendResult) -> None:
        """Orders that could not reach their book are answered now; reports are retried."""
        failures = [(ClusterReason.BUSY, item) for item in result.busy]
        failures += [(ClusterReason.INSTRUMENT_UNAVAILABLE, item) for item in result.unreachable]
        for reason, (destination, kind, records) in failures:
            if kind is not MSG_ORDERS:
                self.hold_for_peer(destination, kind, records)
                continue
            for record in records:
                fields = _unpack_order(record, 0)
                op, flags, trace_ns, symbol_b, order_id = fields[0], fields[5], fields[7], fields[8], fields[10]
                if op == OP_CANCEL and flags & FLAG_ADMIN:
                    # A kill-switch cancel must get through: keep it for the next flush.
                    self.outbox.add(destination, kind, record)  # type: ignore[union-attr]
                    continue
                if order_id in self.copies and op in (OP_NEW, OP_MODIFY, OP_CANCEL):
                    # The original may be in the book, so this is no answer: keep trying until one comes.
                    if (order_id in self.in_flight_new if op == OP_NEW
                            else record in self.in_flight_cmds.get(order_id, ())):
                        self.outbox.add(destination, kind, record)  # type: ignore[union-attr]
                    continue
                source = self.pending_source.get(order_id, self.gateway_indices[0])
                self._reject(source, _text(symbol_b), order_id, op, reason, trace_ns,
                             version=fields[13] if op == OP_MODIFY else 0, record=record)

    # -- reports from books --------------------------------------------------------------

    def _reports(self, batch) -> None:  # noqa: ANN001
        try:
            offsets = iter_records(batch.payload, REPORT_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        payload = batch.payload
        gate = self.gate
        for offset in offsets:
            if gate.waiting:
                returned = bool(self.recovering) and is_resend_done(payload, offset)
                gate.route(payload, offset, REPORT_SIZE, self._report, self._request_resend)
                if returned:
                    symbol = _text(bytes(payload[offset + 24:offset + 32]))
                    if symbol in self.recovering:
                        # A book that was taken for dead and is back without having restarted (no RECOVERED
                        # will come): it answered, after whatever it did meanwhile. Recovered all the same.
                        self.count("books_back_without_restart")
                        self._book_recovered(symbol)
                continue
            self._report(payload, offset)

    def _report(self, payload: bytes | memoryview, offset: int) -> None:
        """One report (from the journal while replaying: ``offset`` 1, after the tag)."""
        self._apply_report(payload, offset)
        if self.deferred_answers:
            for order_id in _unpack_report(payload, offset)[13:15]:
                self._release_answers(order_id)

    def _apply_report(self, payload: bytes | memoryview, offset: int) -> None:
        orders = self.orders
        if not self.replays.fresh(payload, offset):
            return  # a recovered book re-sent it, and it was seen already
        (kind, side, _, _, _, _, reason, op, _, _, symbol_b, account_b, account2_b, order_id, order_id2, price,
         qty, _, _) = _unpack_report(payload, offset)
        if kind == EV_RECOVERED:
            if op == 1 and not self.replaying:
                self._book_recovered(_text(symbol_b))
            return
        if self.journal is not None and not self.replaying:
            self.journal.append(_TAG_EVENT + bytes(payload[offset:offset + REPORT_SIZE]))
        if self.in_flight_new:
            self.in_flight_new.pop(order_id, None)  # any answer from the book settles a new order
            if kind == EV_FILL:
                self.in_flight_new.pop(order_id2, None)
        self.copies.discard(order_id)
        cmds = self.in_flight_cmds.get(order_id)
        if cmds is not None:
            # The book answers each command of an order in the order it got them: the oldest one of the kind.
            answered = _answer_kind(kind, reason, op)
            if answered:
                for i, record in enumerate(cmds):
                    if answered & _command_kind(record):
                        del cmds[i]
                        break
                if not cmds:
                    del self.in_flight_cmds[order_id]
        if kind == EV_FILL:
            symbol = _text(symbol_b)
            self.marks[symbol] = price
            for oid, acct_b, is_taker in ((order_id, account_b, False), (order_id2, account2_b, True)):
                name = _text(acct_b)
                if self.config.risk_shard(name) != self.name:
                    continue
                buys = (side == BUY) == is_taker
                self.account(name).on_fill(oid, symbol, buys, qty)
                if oid in orders and oid not in self.account(name).orders:
                    del orders[oid]
                    self._forget_versions(oid)
            return
        order = orders.get(order_id)
        if kind == EV_ACCEPTED:
            self.pending_source.pop(order_id, None)
            if order is not None:
                self.account(order.account).on_accepted(order_id)
        elif kind == EV_REJECTED:
            if REASONS_BY_CODE.get(reason) == RejectReason.DUPLICATE_ORDER_ID:
                return  # the answer to an order a restarted gateway sent again: the original has its own
            self.pending_source.pop(order_id, None)
            if order is not None:
                self.account(order.account).on_rejected(order_id, _OP_NAMES.get(op, "new"))
                if op == OP_NEW:
                    del orders[order_id]
        elif kind == EV_CANCELLED:
            if REASONS_BY_CODE.get(reason) == "user":
                self.pending_source.pop(order_id, None)
            if order is not None:
                self.account(order.account).on_cancelled(order_id)
                del orders[order_id]
        elif kind == EV_MODIFIED:
            self.pending_source.pop(order_id, None)
            if order is not None:
                self.account(order.account).on_modified(order_id, price, qty)
        if order_id not in orders:
            self._forget_versions(order_id)

    def _forget_versions(self, order_id: int) -> None:
        if order_id in self.modify_seen and order_id not in self.in_flight_cmds:
            # Nothing of the order is left here: a late copy of one of its modifies goes on as new and is
            # answered unknown_order by the book (the gateway drops that answer if it had the first).
            del self.modify_seen[order_id]
            self.modify_answered.pop(order_id, None)

    # -- nodes coming and going ----------------------------------------------------------

    def _book_recovered(self, symbol: str) -> None:
        """A restarted book re-sent its events: commands still unanswered never reached its journal."""
        self.count("books_recovered")
        self.recovering.discard(symbol)
        book = self.book_index[symbol]
        lost = [oid for oid in self.pending_source if (o := self.orders.get(oid)) is not None and o.symbol == symbol]
        for order_id in lost:
            order = self.orders[order_id]
            record = self.in_flight_new.get(order_id)
            if record is not None and not order.accepted:
                # It may have reached the new incarnation already: send it again rather than guess.
                self.copies.add(order_id)
                self.outbox.add(book, MSG_ORDERS, record)  # type: ignore[union-attr]
                self.count("orders_resent_to_recovered_book")
                continue
            if order_id in self.in_flight_cmds:
                continue  # sent again below
            self._reject(self.pending_source[order_id], symbol, order_id,
                         OP_NEW if not order.accepted else OP_MODIFY, ClusterReason.INSTRUMENT_UNAVAILABLE, 0,
                         order.account)
        # Modifies and cancels likewise, after their new order and in the order they came: the book is the one
        # to answer them (a modify it has applied is dropped by version, a cancel of a gone order is refused).
        symbol_b = symbol.encode().ljust(8, b" ")
        for order_id, cmds in self.in_flight_cmds.items():
            if _unpack_order(cmds[0], 0)[8] != symbol_b:
                continue
            self.copies.add(order_id)
            for record in cmds:
                self.outbox.add(book, MSG_ORDERS, record)  # type: ignore[union-attr]
            self.count("commands_resent_to_recovered_book", len(cmds))

    def on_peer_down(self, node: str) -> None:
        super().on_peer_down(node)
        already = node in self.down_nodes
        self.down_nodes.add(node)
        if already or node not in self.book_node.values():
            return
        if self.durable_books:
            # Its books are journaled: their orders outlive the process. New orders are refused
            # while it is down; commands in flight are answered when it is back (RECOVERED).
            self.recovering.update(s for s, n in self.book_node.items() if n == node)
            return
        # The book that would answer their earlier commands is gone (a report record's symbol is at byte 24).
        for order_id in [i for i, queued in self.deferred_answers.items()
                         if self.book_node.get(_text(queued[0][1][24:32])) == node]:
            self._release_answers(order_id, everything=True)
        for order in [o for o in self.orders.values() if self.book_node[o.symbol] == node]:
            source = self.pending_source.get(order.order_id)
            if not order.accepted:
                self._reject(source if source is not None else self.gateway_indices[0], order.symbol,
                             order.order_id, OP_NEW, ClusterReason.INSTRUMENT_UNAVAILABLE, 0)
                continue
            # The book that held it is gone (and with it the order): tell the owner, once, what was left of it
            # (taken before the account's bookkeeping zeroes it).
            leaves = order.leaves
            del self.orders[order.order_id]
            self.account(order.account).on_cancelled(order.order_id)
            self.count("cancelled_instrument_unavailable")
            event = tuple.__new__(Cancelled, (None, order.symbol, order.order_id, order.account, leaves,
                                              ClusterReason.INSTRUMENT_UNAVAILABLE))
            gateway = self._gateway_for(order.order_id)
            if gateway is not None:
                self.outbox.add(gateway, MSG_REPORTS, event_to_record(event, 0))  # type: ignore[union-attr]

    def _gateway_for(self, order_id: int) -> int | None:
        number = gateway_number_of(order_id)
        return self.gateway_indices[number] if 0 <= number < len(self.gateway_indices) else None

    def on_peer_up(self, node: str) -> None:
        super().on_peer_up(node)
        self.down_nodes.discard(node)
        # A durable book's node answers again. Restarted, its RECOVERED ends the wait; but a node only stalled
        # past the heartbeat timeout (a long pause, SIGSTOP) never restarted and would never say it, leaving its
        # instruments refused for the day. Asked for its events since the last one seen, either answers, after
        # what it did meanwhile; the answer ends the wait (_reports).
        for symbol in sorted(s for s in self.recovering if self.book_node[s] == node):
            self.count("resend_requests_to_returning_books")
            self._request_resend(symbol)

    # -- operators -----------------------------------------------------------------------

    def on_control(self, request: dict) -> dict:
        command = request.get("command")
        name = request.get("account")
        if command in ("kill", "release", "limits", "positions", "status") and not isinstance(name, str):
            return {"error": "this command needs an account"}
        if name is not None and self.config.risk_shard(name) != self.name:
            return {"error": f"account {name} is on {self.config.risk_shard(name)}, not {self.name}"}
        if command == "kill":
            account = self.account(name)
            account.killed = True
            if self.journal is not None:
                self.journal.append(_TAG_KILL + b"\x01" + name.encode("ascii", "replace"))
            cancels = 0
            for order in list(account.orders.values()):
                record = _pack_order(OP_CANCEL, 0, 0, 0, 0, FLAG_ADMIN, 0, 0, order.symbol.encode().ljust(8),
                                     order.account.encode().ljust(8), order.order_id, 0, 0, 0)
                self.outbox.add(self.book_index[order.symbol], MSG_ORDERS, record)  # type: ignore[union-attr]
                cancels += 1
            self.flush()
            log.warning("%s: kill switch ON for %s: %d open orders being cancelled", self.name, name, cancels)
            return {"account": name, "killed": True, "cancels_sent": cancels}
        if command == "release":
            self.account(name).killed = False
            if self.journal is not None:
                self.journal.append(_TAG_KILL + b"\x00" + name.encode("ascii", "replace"))
                self.flush()
            log.warning("%s: kill switch released for %s", self.name, name)
            return {"account": name, "killed": False}
        if command == "limits":
            return {"account": name, "limits": self.account(name).limits.to_dict()}
        if command in ("positions", "status"):
            return self.account(name).snapshot(self.marks)
        if command == "exposure_check":
            # For tests: reserved exposure against a recomputation from the open orders.
            result = {}
            for account in self.accounts.values():
                recomputed = sum(o.price * o.leaves for o in account.orders.values())
                result[account.account] = {"reserved": account.reserved, "recomputed": recomputed,
                                           "pending_modifies": sum(o.pending is not None
                                                                   for o in account.orders.values()),
                                           "positions": dict(account.positions)}
            return result
        return super().on_control(request)

    def stats(self) -> dict:
        out = super().stats()
        out["open_orders"] = len(self.orders)
        out["in_flight"] = len(self.pending_source)
        out["in_flight_new"] = len(self.in_flight_new)
        out["in_flight_commands"] = sum(len(c) for c in self.in_flight_cmds.values())
        out["answers_waiting_for_the_book"] = sum(len(q) for q in self.deferred_answers.values())
        out["down_nodes"] = sorted(self.down_nodes)
        out["books_recovering"] = sorted(self.recovering)
        out["killed"] = sorted(a.account for a in self.accounts.values() if a.killed)
        out["duplicate_reports_dropped"] = self.replays.dropped
        if self.journal is not None:
            out.update({f"journal_{k}": v for k, v in self.journal.stats.items()})
            out["resend_waiting"] = self.gate.symbols()
        if self.recovery:
            out["recovery"] = self.recovery
        return out
