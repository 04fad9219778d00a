"""GatewayActor: client sessions in, execution reports out.

Clients reach the gateway through its :class:`ClientPort` (a ZeroMQ ROUTER socket read by one
thread; issue #6 adds OUCH over SoupBinTCP beside it). The gateway gives every order a
cluster-wide id (so clients choose their own ids freely and nobody can touch another
session's orders), routes it to the risk shard of its account, and turns reports from books
and risk back into the client's ids. Counterparty order ids and accounts are blanked: the
exchange is anonymous.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import itertools
import logging
import operator
import os
import shutil
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from actors.base import ClusterActor, NodeContext
from actors.config import cluster_order_id
from actors.durable import (
    RISK_RECOVERED,
    ActorSnapshots,
    ResendGate,
    SnapshotArchive,
    commit_and_wait,
    journal_directory,
    open_journal,
    resend_request_record,
)
from actors.sequenced_store import DurableSequencedStore
from actors.soup_server import SoupApplication, SoupServer
from actors.transport import Batch, LocalDirectory, recv_frames, send_frames
from exchange.accounts import Users, load_users
from exchange.layout import LayoutError
from exchange.orders import CancelOrder, CancelReason, ModifyOrder, NewOrder, Rejected, RejectReason
from exchange.ouch import OuchTranslator
from exchange.risk import RiskReason, TokenBucket
from exchange.wire import (
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_FILL,
    EV_MODIFIED,
    EV_RECOVERED,
    EV_REJECTED,
    MSG_ORDERS,
    MSG_REPORTS,
    OP_CANCEL,
    OP_MODIFY,
    OP_NEW,
    ORDER,
    ORDER_SIZE,
    REASONS_BY_CODE,
    REPORT,
    REPORT_SIZE,
    ClusterReason,
    Op,
    ReplayFilter,
    command_to_record,
    event_to_record,
    iter_records,
    pack_header,
    parse_header,
    record_to_event,
    text8,
)

# A plain int: pyzmq combines Flag members in Python, which costs on every send.
NOBLOCK = int(zmq.NOBLOCK)

log = logging.getLogger("matchwire.gateway")

# Journal records of the gateway (actors/durable.py; sequenced messages are the store's "S" records).
_TAG_OUCH = b"O"  # an OUCH message in: user, the order ids it minted, those refused by the rate limit, payload
_TAG_EVENT = b"E"  # a report from a book or risk, as applied (96 bytes)
_TAG_FAILURE = b"F"  # an order record risk could not take: reason code, the 64-byte record
_TAG_LEASE = b"A"  # order ids below this number may have been used: a restart mints from here on
ID_LEASE = 4096
SPILL_MESSAGES = 20_000  # without journals, OUCH messages held in memory before they go to the spill file
_OUCH_HEAD = struct.Struct("<BHH")
_FAILURE_REASONS = (ClusterReason.BUSY, ClusterReason.INSTRUMENT_UNAVAILABLE)


_unpack_order = ORDER.struct.unpack_from
_pack_order = ORDER.struct.pack
_unpack_report = REPORT.struct.unpack_from
_pack_report = REPORT.struct.pack
_BLANK = b"        "
_OP_NAMES = {Op.NEW: "new", Op.CANCEL: "cancel", Op.MODIFY: "modify"}


_first = operator.itemgetter(0)


class ClientPort(threading.Thread):
    """The gateway's client socket, owned by this thread alone.

    Inbound client messages become batches for the gateway actor; outbound reports arrive from
    the actor over an inproc PULL socket and leave through the ROUTER. A client that does not
    read has its reports queued (bounded); a client that is gone has them counted as undeliverable.
    """

    def __init__(self, context: zmq.Context, endpoint: str, outbound: str, local: LocalDirectory,
                 gateway_index: int, max_backlog: int, max_queued: int = 100_000) -> None:
        super().__init__(name=f"client-port-{gateway_index}", daemon=True)
        self.context = context
        self.endpoint = endpoint
        self.outbound = outbound
        self.local = local
        self.gateway_index = gateway_index
        self.max_backlog = max_backlog
        self.max_queued = max_queued
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.stats = {"client_messages": 0, "client_records": 0, "malformed": 0, "reports_sent": 0,
                      "undeliverable": 0, "client_queue_overflow": 0}
        self.queued: dict[bytes, collections.deque] = {}

    def run(self) -> None:
        clients = self.context.socket(zmq.ROUTER)
        pull = self.context.socket(zmq.PULL)
        try:
            clients.setsockopt(zmq.ROUTER_MANDATORY, 1)
            clients.setsockopt(zmq.LINGER, 0)
            clients.setsockopt(zmq.SNDHWM, 10_000)
            clients.setsockopt(zmq.RCVHWM, 1_000)
            clients.bind(self.endpoint)
            pull.setsockopt(zmq.LINGER, 0)
            pull.bind(self.outbound)
        except zmq.ZMQError as exc:
            self.error = exc
            self.ready.set()
            clients.close(linger=0)
            pull.close(linger=0)
            return
        self.ready.set()
        poller = zmq.Poller()
        poller.register(clients, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        # While the actor is too far behind, clients are not read: poll the reports alone then, or
        # a waiting client message would make every poll return at once (a spin stealing the CPU
        # the actor needs to catch up).
        reports_only = zmq.Poller()
        reports_only.register(pull, zmq.POLLIN)
        over = self.local.over
        stopping = self.stopping
        try:
            while not stopping.is_set():
                reading = not over(self.max_backlog)
                # One message from each ready socket per poll: with more queued the poll returns at
                # once, and it costs less than the zmq.Again exception that ends a non-blocking drain.
                ready = poller.poll(20) if reading else reports_only.poll(1)
                for socket, _ in ready:
                    if socket is pull:
                        try:
                            frames = recv_frames(pull)
                        except zmq.Again:
                            continue
                        self._to_client(clients, frames)
                    elif reading:
                        try:
                            frames = recv_frames(clients)
                        except zmq.Again:
                            continue
                        self._from_client(frames)
                if self.queued:
                    self._retry(clients)
        finally:
            clients.close(linger=0)
            pull.close(linger=0)

    def _from_client(self, frames: list) -> None:
        if len(frames) != 3:
            self.stats["malformed"] += 1
            return
        client, header_frame, payload = frames
        try:
            kind, count, _, _, _ = parse_header(header_frame)
            if kind is not MSG_ORDERS:
                raise LayoutError("clients send orders only")
            iter_records(payload, ORDER_SIZE, count)
        except LayoutError:
            self.stats["malformed"] += 1
            return
        self.stats["client_messages"] += 1
        self.stats["client_records"] += count
        self.local.deliver(self.gateway_index, Batch(MSG_ORDERS, -1, payload, count, session=client))

    def _to_client(self, clients: zmq.Socket, frames: list) -> None:
        client = frames[0]
        queue = self.queued.get(client)
        if queue:
            self._enqueue(client, frames)
            return
        if not self._send(clients, frames):
            self._enqueue(client, frames)

    def _enqueue(self, client: bytes, frames: list) -> None:
        queue = self.queued.setdefault(client, collections.deque())
        if len(queue) >= self.max_queued:
            self.stats["client_queue_overflow"] += 1
            return
        queue.append(frames)

    def _send(self, clients: zmq.Socket, frames: list) -> bool:
        try:
            send_frames(clients, *frames)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.stats["undeliverable"] += 1
            return True
        self.stats["reports_sent"] += 1
        return True

    def _retry(self, clients: zmq.Socket) -> None:
        for client in list(self.queued):
            queue = self.queued[client]
            while queue and self._send(clients, queue[0]):
                queue.popleft()
            if not queue:
                del self.queued[client]


OUCH_SESSION = b"\x00ouch"  # the session marker of orders entered over OUCH (never a ZeroMQ routing id)


@dataclass(slots=True)
class OuchInbound:
    """OUCH messages from a logged-in user that arrived together, handed from the SoupBinTCP thread to
    the gateway actor in one tell (one hand-off between threads per burst, not per message)."""

    username: str
    payloads: list[bytes]


def remove_dead_spills(prefix: str) -> list[str]:
    """Remove the spill directories (``prefix`` + pid + ``-`` + random) of gateway processes that are gone; their
    names, removed.

    A gateway without journals spills its OUCH sessions' older messages to a temporary directory and removes it
    when it stops; one killed (``kill -9``, the OOM killer, a crash) cannot, and what it spilled stayed in the
    temporary directory for good, a day's sessions at a time. Its successor removes it: a directory is another
    process's until that process is gone (a process of another user counts as alive).
    """
    removed = []
    for path in Path(tempfile.gettempdir()).glob(glob.escape(prefix) + "*"):
        pid, dash, _ = path.name[len(prefix):].partition("-")
        if not (dash and pid.isdigit()) or int(pid) == os.getpid():
            continue  # not named by this scheme, or this process's own
        try:
            os.kill(int(pid), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue  # alive under another user, or no such number: not ours to judge
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


class GatewaySoupApplication(SoupApplication):
    """The SoupBinTCP server's view of the gateway: authentication here, everything else by tell.

    The queue to the gateway actor is bounded: while the actor is ``max_backlog`` messages behind,
    the server thread waits here instead of reading more, so TCP pushes back on the clients.
    """

    def __init__(self, users: Users, local: LocalDirectory, gateway_index: int, max_backlog: int) -> None:
        self.users = users
        self.local = local
        self.gateway_index = gateway_index
        self.max_backlog = max_backlog
        self.waits = 0

    def authenticate(self, username: str, password: str) -> bool:
        return self.users.authenticate(username, password)

    def on_message(self, username: str, payload: bytes) -> None:
        self.on_messages(username, [payload])

    def on_messages(self, username: str, payloads: list[bytes]) -> None:
        local, index = self.local, self.gateway_index
        if local.delivered[index] - local.processed[index] > self.max_backlog:
            self.waits += 1
            deadline = time.monotonic() + 5.0
            while local.delivered[index] - local.processed[index] > self.max_backlog and time.monotonic() < deadline:
                time.sleep(0.0005)
        local.deliver(index, OuchInbound(username, payloads))


class GatewayOrder:
    """A live order as the gateway knows it."""

    __slots__ = ("session", "client_id", "account", "symbol", "leaves", "pending", "done", "accepted")

    def __init__(self, session: bytes, client_id: int, account: str, symbol: str, leaves: int) -> None:
        self.session = session
        self.client_id = client_id
        self.account = account
        self.symbol = symbol
        self.leaves = leaves
        self.pending = 1  # commands sent for this order and not yet answered (the new order itself)
        self.done = False  # nothing remains of it in any book
        self.accepted = False  # the client was told Accepted


class GatewayActor(ClusterActor):
    """Client sessions: id mapping, ownership, routing by account, reports back in client terms."""

    def __init__(self, context: NodeContext, name: str) -> None:
        super().__init__(context, name)
        config = context.config
        self.number = config.gateways.index(name)
        self.outbound_endpoint = f"inproc://gateway-out-{self.number}"
        self.port = ClientPort(context.zmq_context, config.client_endpoint(name, bind=True), self.outbound_endpoint,
                               context.local, self.index, config.max_backlog)
        self.next_id = itertools.count(1)
        self.orders: dict[int, GatewayOrder] = {}
        self.by_client: dict[tuple[bytes, int], int] = {}
        self.to_clients: dict[bytes, list[bytes]] = {}
        self.clients_oldest_ns = 0
        self.buckets: dict[tuple[bytes, str], TokenBucket] = {}
        self.replays = ReplayFilter()
        self.users: Users | None = load_users(config.raw) if config.raw.get("user") else None
        self.translator: OuchTranslator | None = None
        self.soup: SoupServer | None = None
        self.push: zmq.Socket | None = None
        self._risk_cache: dict[str, int] = {}
        # Durability (docs/durability.md "The gateway"): journal, durable store, re-send gate.
        self.journal = None
        self.snapshots: ActorSnapshots | None = None
        self.archive: SnapshotArchive | None = None
        self.store: DurableSequencedStore | None = None
        self.spill_dir: Path | None = None  # without journals: where the OUCH sessions' older messages go
        self.gate = ResendGate()
        self.replaying = False
        self.recovery: str | None = None
        self.id_lease = 0
        self._replay_ids: collections.deque = collections.deque()
        self._replay_limited: set[int] = set()
        self._minted: list[int] = []
        self._out: list[tuple[str, bytes]] = []  # sequenced messages of the input being handled
        self._committed_index = 0
        self.stopping = False
        # OUCH new orders sent to risk and not answered yet (order id -> the command record): after a
        # restart of this gateway or of a risk node they are sent again, since they may have died in a
        # socket queue. Books answer a copy of an order they have with duplicate_order_id, which the
        # gateway and risk ignore; ``_resent`` are never answered "busy" by this gateway (kept instead).
        # Values are (number, record): the number orders every command sent, so they go again in that order.
        self._unanswered: dict[int, tuple[int, bytes]] = {}
        self._resent: set[int] = set()
        # Likewise OUCH cancels (by order id): cancelling twice is harmless (the book answers the second
        # unknown_order, and the translator has forgotten the order by then).
        self._unanswered_cancels: dict[int, tuple[int, bytes]] = {}
        # And OUCH modifies (Replace, Modify, a Cancel that reduces): each is numbered per order (its version,
        # in the record), and the book applies a version at most once and drops a copy of one it applied
        # (docs/durability.md "Modifies sent again"). Order id -> {version: (number, record)}, oldest first.
        # The versions come from replaying the OUCH messages, so a restart numbers on where it stopped.
        self._modify_versions: dict[int, int] = {}
        self._unanswered_modifies: dict[int, dict[int, tuple[int, bytes]]] = {}
        self._sent_number = itertools.count()
        # Answers the gateway gives itself to a command for a known order (refused at once, or unable to reach
        # risk) wait until the cluster has answered the order's earlier commands: a client reads an order's
        # answers in the order it sent the commands, and OUCH pairs them with its requests that way (a refused
        # replace overtaking an earlier one's answer was told Replaced, the earlier one Rejected).
        # Order id -> [[cluster answers still to come before it, answer], ...] in command order; an answer is
        # ("ouch", symbol, order id, op name, reason, account) or ("client", session, symbol, client id, op, reason,
        # trace), the arguments of _ouch_reject and _reject_to.
        self.held_answers: dict[int, list[list]] = {}

    def on_start(self) -> None:
        super().on_start()
        self.port.start()
        self.port.ready.wait(5)
        if self.port.error is not None:
            raise RuntimeError(f"gateway client port {self.config.client_endpoint(self.name)}: {self.port.error}")
        self.push = self.ctx.zmq_context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDHWM, 100_000)
        self.push.connect(self.outbound_endpoint)
        if self.users is not None:
            self.translator = OuchTranslator(self.users.accounts, next_order_id=self._mint_order_id)
        recovered = False
        if self.config.durability.enabled:
            durability = self.config.durability
            self.journal, state, records, report = open_journal(durability, self.ctx.node, self.name)
            # The session's sequenced messages that the snapshot covers are in its archive (indexed, read back
            # from there when a client asks); the rest of the state is in the snapshot; the journal's records
            # after it are replayed on top.
            self.store = DurableSequencedStore(self.journal)
            self.archive = SnapshotArchive(journal_directory(durability, self.ctx.node, self.name),
                                           state["archive"] if state else 0, sink=self.store.restore_archived)
            self.store.archive = self.archive
            if state is not None:
                self.load_state(state)
            self._replay(records)
            self.recovery = str(report)
            self._committed_index = self.journal.index
            self.snapshots = ActorSnapshots(durability, self.journal)
            recovered = state is not None or bool(records)
        if self.users is not None and self.store is None:
            # Without journals, a session's messages still go to disk (a client may ask for any of them again),
            # so that its memory does not grow with the day: a spill directory of this process's own.
            prefix = f"matchwire-{self.name.replace('/', '-')}-soup-"
            removed = remove_dead_spills(prefix)
            if removed:
                log.info("%s: removed %d spill director%s of earlier processes that died: %s", self.name,
                         len(removed), "y" if len(removed) == 1 else "ies", ", ".join(removed))
            self.spill_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
            self.store = DurableSequencedStore(None)
            self.archive = SnapshotArchive(self.spill_dir, 0, sink=self.store.restore_archived)
            self.store.archive = self.archive
        if self.users is not None:
            host, port = self.config.ouch_address(self.name)
            # The same bound as the node's inbound pump: above it the pump stops reading, so a deeper OUCH
            # queue would starve the reports from books (they waited seconds in socket queues under load,
            # and a book killed meanwhile took them with it).
            self.soup_app = GatewaySoupApplication(self.users, self.ctx.local, self.index, self.config.max_backlog)
            self.soup = SoupServer(self.soup_app, host, port, store=self.store,
                                   session=f"{self.config.name[:6]}{self.number:04d}"[:10]).start()
        if recovered:
            # Events that reached the old process but not its journal died with it: ask every book for
            # its events after the last one journaled, holding its live events until the answer is in.
            for symbol in self.config.instruments:
                self._request_resend(symbol)
            self._resend_unanswered(None)
            self.flush()

    def _resend_unanswered(self, node: str | None, shard_name: str | None = None) -> None:
        """Send the unanswered new orders, cancels and modifies again, in the order they were first sent (those
        whose risk shard is on ``node``, or is ``shard_name``, or all)."""
        count = 0
        commands = [(n, order_id, record) for order_id, (n, record) in
                    [*self._unanswered.items(), *self._unanswered_cancels.items()]]
        commands += [(n, order_id, record) for order_id, versions in self._unanswered_modifies.items()
                     for n, record in versions.values()]
        commands.sort(key=_first)
        for _, order_id, record in commands:
            order = self.orders.get(order_id)
            if order is None:
                continue
            shard = self.config.risk_shard(order.account)
            if node is not None and self.config.actor_node[shard].name != node:
                continue
            if shard_name is not None and shard != shard_name:
                continue
            self._resent.add(order_id)
            self.outbox.add(self.config.actor_index[shard], MSG_ORDERS, record)  # type: ignore[union-attr]
            count += 1
        if count:
            self.count("orders_resent", count)
            log.warning("%s: sent %d unanswered orders again%s", self.name, count, f" (to {node})" if node else "")

    def on_peer_down(self, node: str) -> None:
        super().on_peer_down(node)
        if self.journal is None and self.held_answers:
            # Without journals, commands a dead risk node held are never answered: what waits behind them goes.
            shard_node = self.config.actor_node
            for order_id in list(self.held_answers):
                order = self.orders.get(order_id)
                if order is None or shard_node[self.config.risk_shard(order.account)].name == node:
                    self._release_held(order_id, 1 << 30)
            self._emit()

    def on_peer_up(self, node: str) -> None:
        super().on_peer_up(node)
        # A risk node that comes back may have lost what it took in but had not journaled.
        if self.journal is not None and any(self.config.actor_node[r].name == node for r in self.config.risk_shards):
            self._resend_unanswered(node)

    def _replay(self, records: list[bytes]) -> None:
        """Rebuild sessions, tokens, orders and the id allocator from the journal, sending nothing."""
        assert self.store is not None
        self.replaying = True
        try:
            failures: list[tuple[str, bytes]] = []  # a run of journaled send failures: one flush's (or more)
            for record in records:
                tag = record[:1]
                if tag == _TAG_FAILURE:
                    failures.append((_FAILURE_REASONS[record[1]], record[2:]))
                    continue
                if failures:
                    self._send_failures(failures)
                    failures = []
                if tag == b"S":
                    self.store.restore_record(record)
                elif tag == _TAG_EVENT:
                    self._report(record, 1)
                elif tag == _TAG_OUCH:
                    name_len, minted, limited = _OUCH_HEAD.unpack_from(record, 1)
                    at = 1 + _OUCH_HEAD.size
                    username = record[at:at + name_len].decode("ascii", "replace")
                    at += name_len
                    ids = struct.unpack_from(f"<{minted + limited}Q", record, at)
                    at += 8 * (minted + limited)
                    self._replay_ids = collections.deque(ids[:minted])
                    self._replay_limited = set(ids[minted:])
                    if self.translator is not None:
                        self._ouch(username, record[at:])
                        self._emit()  # sends nothing while replaying: lets go of the answers the store restores
                elif tag == _TAG_LEASE:
                    self.id_lease = max(self.id_lease, struct.unpack_from("<Q", record, 1)[0])
                else:
                    self.count("journal_unknown_records")
            if failures:
                self._send_failures(failures)
        finally:
            self.replaying = False
            self._out.clear()
            if self.translator is not None:
                self.translator.rejects.clear()  # counted by the incarnation that sent them
        self.next_id = itertools.count(max(self.id_lease, 1))
        if records:
            log.warning("%s: recovered %d journal records: %d orders, ids from %d", self.name,
                        len(records), len(self.orders), self.id_lease)

    # -- journal snapshots ---------------------------------------------------------------------------------

    def save_state(self) -> dict:
        """What replaying this gateway's journal up to now rebuilds (docs/durability.md "Gateways, risk shards and
        market data"): OUCH orders, requests unanswered, modify versions, the translator, the id lease, the
        books' high-water marks. Not the SoupBinTCP streams (the archive holds them), nor what a replay
        does not rebuild either (binary-API sessions, rate-limit buckets, copies in flight)."""
        sent = next(self._sent_number)
        self._sent_number = itertools.count(sent)
        return {
            "id_lease": self.id_lease,
            "orders": [[order_id, o.account, o.symbol, o.leaves, o.pending, o.done, o.accepted]
                       for order_id, o in self.orders.items() if o.session == OUCH_SESSION],
            "unanswered": [[order_id, n, record.hex()] for order_id, (n, record) in self._unanswered.items()],
            "unanswered_cancels": [[order_id, n, record.hex()]
                                   for order_id, (n, record) in self._unanswered_cancels.items()],
            "modify_versions": list(self._modify_versions.items()),
            "unanswered_modifies": [[order_id, [[v, n, record.hex()] for v, (n, record) in versions.items()]]
                                    for order_id, versions in self._unanswered_modifies.items()],
            "sent_number": sent,
            "replays": self.replays.save_state(),
            "translator": None if self.translator is None else self.translator.save_state(),
            "held_answers": [[order_id, [[earlier, list(answer)] for earlier, answer in held if answer[0] == "ouch"]]
                             for order_id, held in self.held_answers.items()],
        }

    def load_state(self, state: dict) -> None:
        """Continue from a snapshot made by :meth:`save_state`."""
        self.id_lease = state["id_lease"]
        self.orders = {}
        for order_id, account, symbol, leaves, pending, done, *accepted in state["orders"]:
            order = self.orders[order_id] = GatewayOrder(OUCH_SESSION, order_id, account, symbol, leaves)
            # (Snapshots before the flag: an order whose new-order answer is out and that is not done was accepted.)
            order.pending, order.done = pending, done
            order.accepted = accepted[0] if accepted else not done
        self._unanswered = {order_id: (n, bytes.fromhex(r)) for order_id, n, r in state["unanswered"]}
        self._unanswered_cancels = {order_id: (n, bytes.fromhex(r)) for order_id, n, r in state["unanswered_cancels"]}
        self._modify_versions = dict(state["modify_versions"])
        self._unanswered_modifies = {order_id: {v: (n, bytes.fromhex(r)) for v, n, r in versions}
                                     for order_id, versions in state["unanswered_modifies"]}
        self._sent_number = itertools.count(state["sent_number"])
        self.replays.load_state(state["replays"])
        if self.translator is not None and state["translator"] is not None:
            self.translator.load_state(state["translator"])
        self.held_answers = {order_id: [[earlier, tuple(answer)] for earlier, answer in held]
                             for order_id, held in state.get("held_answers", ()) if held}

    def _snapshot(self) -> None:
        assert self.archive is not None and self.store is not None and self.snapshots is not None
        self.store.archive_unarchived()
        state = self.save_state()
        state["archive"] = self.archive.count
        self.snapshots.take(state)

    def _new_order_id(self) -> int:
        n = next(self.next_id)
        if self.journal is not None and n >= self.id_lease:
            self.id_lease = n + ID_LEASE
            self.journal.append(_TAG_LEASE + struct.pack("<Q", self.id_lease))
        return cluster_order_id(self.number, n)

    def _mint_order_id(self) -> int:
        """An id for an order of the OUCH message being handled: kept in ``_minted``, which goes into the journal with
        the message (and is emptied for the next one), so that a replay mints the same ids again."""
        if self.replaying:
            # The journal says which ids this message minted: the same ones again.
            if self._replay_ids:
                return self._replay_ids.popleft()
            self.count("replay_id_mismatch")
        order_id = self._new_order_id()
        self._minted.append(order_id)
        return order_id

    def _request_resend(self, symbol: str) -> None:
        """Ask book ``symbol`` for its events after the last one journaled; hold its events until they come."""
        self.gate.wait_for(symbol)
        last = self.replays.last.get(symbol.encode().ljust(8, b" "), 0)
        self.outbox.add(self.config.actor_index[f"book/{symbol}"], MSG_REPORTS,  # type: ignore[union-attr]
                        resend_request_record(symbol, last))

    def on_stop(self) -> None:
        self.stopping = True
        super().on_stop()
        if self.soup is not None:
            self.soup.stop()
        self._flush_clients()
        if self.push is not None:
            self.push.close(linger=0)
        self.port.stopping.set()
        self.port.join(2)
        if self.journal is not None:
            self.journal.close()
        if self.archive is not None:
            self.archive.close()
        self._remove_spill()

    def _remove_spill(self) -> None:
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None

    def on_failure(self, exception_type: type, exception_value: BaseException, traceback: object) -> None:
        # pykka calls this instead of on_stop when the actor dies of an exception. Without it the SoupBinTCP
        # server went on taking logins and orders for an actor that was gone, and the node could not end: its
        # ZeroMQ context waits for the push socket. Clients see the connection drop, as when the process
        # dies, not End of Session: they log in again to the restarted gateway and get what they missed.
        self.stopping = True
        if self.soup is not None:
            self.soup.stop(end_of_session=False, timeout=2.0)
        if self.push is not None:
            self.push.close(linger=0)
            self.push = None
        self.port.stopping.set()
        if self.port.is_alive():  # not started when on_start failed before it
            self.port.join(2)
        for closable in (self.journal, self.archive):
            if closable is not None:
                with contextlib.suppress(OSError):  # what could not be written stays unwritten: the journal
                    closable.close()                 # recovers to its last whole record
        self._remove_spill()
        super().on_failure(exception_type, exception_value, traceback)

    def _risk_of(self, account: str) -> int:
        index = self._risk_cache.get(account)
        if index is None:
            index = self._risk_cache[account] = self.config.actor_index[self.config.risk_shard(account)]
        return index

    def handle_batch(self, batch: Batch) -> None:
        if batch.kind is MSG_ORDERS and batch.session:
            self._client_orders(batch)
        elif batch.kind is MSG_REPORTS:
            self._reports(batch)
        else:
            self.count("unexpected_batches")

    def on_other(self, message: object) -> object:
        if type(message) is OuchInbound:
            try:
                username = message.username  # type: ignore[attr-defined]
                payloads = message.payloads  # type: ignore[attr-defined]
                for position, payload in enumerate(payloads):
                    if not self._ouch(username, payload):
                        # The session ends at a protocol error: what the client sent behind it in the same read
                        # is not acted on (nor journaled), as if the connection had been cut there.
                        self.count("ouch_messages_after_protocol_error", len(payloads) - position - 1)
                        break
                # The answers of the whole read go to the store at once: one lock, and at most one wake-up of the
                # SoupBinTCP thread per read instead of one per message (each after its journal record, as before).
                self._emit()
            finally:
                self.ctx.local.done(self.index)
            self.count("ouch_messages", len(message.payloads))  # type: ignore[attr-defined]
        return None

    # -- OUCH over SoupBinTCP ---------------------------------------------------------------

    def _ouch(self, username: str, payload: bytes) -> bool:
        """Act on one OUCH message; False if it broke the protocol (the session is being ended)."""
        assert self.translator is not None
        replaying = self.replaying
        self._minted = []
        limited: list[int] = []
        result = self.translator.on_message(username, payload)
        if result.error is not None:
            # A malformed OUCH message inside valid SoupBinTCP framing: end that session alone.
            self.count("ouch_protocol_errors")
            self._emit()  # the answers to the messages before it in the same read are the session's still
            if self.soup is not None and not replaying:
                log.warning("%s: OUCH session %s disconnected: %s", self.name, username, result.error)
                self.soup.disconnect(username)
            return False
        for reply in result.replies:
            self._sequenced(username, reply)
        now = time.perf_counter_ns()
        for command in result.commands:
            order_id = command.order_id  # type: ignore[attr-defined]
            if type(command) is NewOrder:
                account = command.account
                # The rate limit depends on the clock: a replay repeats the journaled decision.
                if (order_id in self._replay_limited) if replaying else \
                        not self._rate_ok(OUCH_SESSION + username.encode(), account):
                    limited.append(order_id)
                    self._ouch_reject(command.symbol, order_id, "new", RiskReason.RATE_LIMIT, account)
                    continue
                self.orders[order_id] = GatewayOrder(OUCH_SESSION, order_id, account, command.symbol, command.qty)
            else:
                order = self.orders.get(order_id)
                if order is None or order.done:
                    self._answer_after(order_id, 0 if order is None else order.pending,
                                       ("ouch", command.symbol, order_id, command.op, RejectReason.UNKNOWN_ORDER, ""))
                    continue
                order.pending += 1
                account = order.account
            if type(command) is ModifyOrder:
                # Numbered per order, also while replaying: the same messages give the same versions.
                version = self._modify_versions[order_id] = self._modify_versions.get(order_id, 0) + 1
                record = command_to_record(command, now, version)
            else:
                record = command_to_record(command, now)
            if self.journal is not None:
                if type(command) is NewOrder:
                    self._unanswered[order_id] = (next(self._sent_number), record)
                elif type(command) is CancelOrder:
                    self._unanswered_cancels[order_id] = (next(self._sent_number), record)
                else:
                    self._unanswered_modifies.setdefault(order_id, {})[version] = (next(self._sent_number), record)
            if not replaying:
                self.outbox.add(self._risk_of(account), MSG_ORDERS, record)  # type: ignore[union-attr]
        if self.journal is not None and not replaying:
            # Every message that got this far changed the translator (at least the UserRefNum mark).
            name = username.encode("ascii", "replace")
            ids = self._minted + limited
            self.journal.append(_TAG_OUCH + _OUCH_HEAD.pack(len(name), len(self._minted), len(limited)) + name
                                + struct.pack(f"<{len(ids)}Q", *ids) + payload)
        return True  # its answers wait in _out for the caller's _emit

    def _sequenced(self, username: str, payload: bytes) -> None:
        self._out.append((username, payload))

    def _emit(self) -> None:
        """Hand the sequenced messages of what was just handled to the store (after its journal record)."""
        out = self._out
        if not out:
            return
        self._out = []
        if self.replaying or self.soup is None:
            return  # a replay restores the store from its own records
        # One lock and at most one wake-up of the server thread per user's run of messages.
        send_many = self.soup.send_sequenced_many
        for username, run in itertools.groupby(out, key=_first):
            send_many(username, [payload for _, payload in run])
        if self.spill_dir is not None:
            self.store.spill_if_due(SPILL_MESSAGES)  # type: ignore[union-attr]

    def _ouch_reject(self, symbol: str, order_id: int, op: str, reason: str, account: str) -> None:
        self.count(f"rejected_{reason}")
        event = tuple.__new__(Rejected, (None, symbol, order_id, op, reason, ""))
        self._ouch_event(event)

    def _ouch_event(self, event: object) -> None:
        if self.translator is None:
            return
        self._out += self.translator.on_event(event)  # type: ignore[arg-type]

    # -- client -> cluster -----------------------------------------------------------------

    def _client_orders(self, batch: Batch) -> None:
        payload = batch.payload
        session = batch.session
        try:  # the client port checked the length; the actor does not rely on that
            offsets = iter_records(payload, ORDER_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        add = self.outbox.add  # type: ignore[union-attr]
        self.count("client_orders", batch.count)
        for offset in offsets:
            (op, side, order_type, tif, stp, flags, reserved, trace_ns, symbol_b, account_b, client_id, price, qty,
             display) = _unpack_order(payload, offset)
            symbol = text8(symbol_b)
            if op == OP_NEW:
                key = (session, client_id)
                if key in self.by_client:
                    self._reject_to(session, symbol, client_id, op, RejectReason.DUPLICATE_ORDER_ID, trace_ns)
                    continue
                account = text8(account_b)
                if not account or account not in self.config.accounts and self.config.accounts:
                    self._reject_to(session, symbol, client_id, op, RejectReason.INVALID_ACCOUNT, trace_ns)
                    continue
                if not self._rate_ok(session, account):
                    self._reject_to(session, symbol, client_id, op, RiskReason.RATE_LIMIT, trace_ns)
                    continue
                # Not _mint_order_id: these sessions are not journaled, and its list of minted ids, emptied per OUCH
                # message, grew by every order of the binary API (0.4 MB a second at 20k commands a second).
                order_id = self._new_order_id()
                self.orders[order_id] = GatewayOrder(session, client_id, account, symbol, qty)
                self.by_client[key] = order_id
            elif op == OP_CANCEL or op == OP_MODIFY:
                order_id = self.by_client.get((session, client_id))
                order = self.orders.get(order_id) if order_id is not None else None
                if order is None or order.done:
                    self._answer_after(order_id, 0 if order is None else order.pending,
                                       ("client", session, symbol, client_id, op, RejectReason.UNKNOWN_ORDER, trace_ns))
                    continue
                if op == OP_MODIFY and not self._rate_ok(session, order.account):
                    self._answer_after(order_id, order.pending,
                                       ("client", session, symbol, client_id, op, RiskReason.RATE_LIMIT, trace_ns))
                    continue
                # Kept until answered: its answer must find its way back even if the order ends first.
                order.pending += 1
                account, symbol = order.account, order.symbol
                account_b = account.encode().ljust(8, b" ")
                symbol_b = symbol.encode().ljust(8, b" ")
            else:
                self._reject_to(session, symbol, client_id, op, RejectReason.INVALID_COMMAND, trace_ns)
                continue
            if op == OP_MODIFY:
                display = 0  # the modify version: these sessions are not durable, so their modifies are unnumbered
            add(self._risk_of(account), MSG_ORDERS,
                _pack_order(op, side, order_type, tif, stp, flags, reserved, trace_ns, symbol_b, account_b, order_id,
                            price, qty, display))

    def _rate_ok(self, session: bytes, account: str) -> bool:
        """The session's order rate limit (a token bucket per session and account; cancels are free)."""
        bucket = self.buckets.get((session, account))
        if bucket is None:
            limits = self.config.limits_for(account)
            if not limits.orders_per_second:
                return True
            bucket = TokenBucket(limits.orders_per_second, limits.burst or limits.orders_per_second,
                                 time.monotonic_ns())
            self.buckets[(session, account)] = bucket
        return bucket.take(time.monotonic_ns())

    def _reject_to(self, session: bytes, symbol: str, client_id: int, op: int, reason: str, trace_ns: int) -> None:
        self.count(f"rejected_{reason}")
        event = tuple.__new__(Rejected, (None, symbol, client_id, _OP_NAMES.get(op, "new"), reason, ""))
        self._to_client(session, event_to_record(event, trace_ns))

    def handle_send_failures(self, result) -> None:  # noqa: ANN001
        """Orders the risk shard could not take are answered "busy" (or "instrument_unavailable")."""
        failures = [(ClusterReason.BUSY, item) for item in result.busy]
        failures += [(ClusterReason.INSTRUMENT_UNAVAILABLE, item) for item in result.unreachable]
        failed: list[tuple[str, bytes]] = []
        for reason, (destination, kind, records) in failures:
            if kind is not MSG_ORDERS:
                self.hold_for_peer(destination, kind, records)
                continue
            for record in records:
                if record[0] in (OP_NEW, OP_CANCEL, OP_MODIFY) and _unpack_order(record, 0)[10] in self._resent:
                    self.outbox.add(destination, kind, record)  # type: ignore[union-attr]
                    continue  # the book may have it: only an answer from there settles it
                if self.journal is not None:
                    self.journal.append(_TAG_FAILURE + bytes((_FAILURE_REASONS.index(reason),)) + record)
                failed.append((reason, record))
        self._send_failures(failed)
        self._emit()
        self._flush_clients()

    def _send_failures(self, failed: list[tuple[str, bytes]]) -> None:
        """Answer the commands of one flush that could not go (a replay passes a run of journaled failures)."""
        # An order's commands in one flush fail together (they all go to its risk shard), so its other commands
        # still outstanding were sent before them and are answered first.
        remaining = collections.Counter(_unpack_order(record, 0)[10] for _, record in failed)
        for reason, record in failed:
            self._send_failure(reason, record, remaining)

    def _send_failure(self, reason: str, record: bytes, remaining: collections.Counter) -> None:
        fields = _unpack_order(record, 0)
        op, trace_ns, order_id = fields[0], fields[7], fields[10]
        remaining[order_id] -= 1
        order = self.orders.get(order_id)
        if order is None:
            return
        if op == OP_NEW:
            order.done = True
            self._unanswered.pop(order_id, None)
        elif op == OP_CANCEL:
            self._unanswered_cancels.pop(order_id, None)
        elif op == OP_MODIFY:
            versions = self._unanswered_modifies.get(order_id)
            if versions is not None:
                versions.pop(fields[13], None)
                if not versions:
                    del self._unanswered_modifies[order_id]
        order.pending -= 1
        earlier = order.pending - remaining[order_id]
        if order.session == OUCH_SESSION:
            self._answer_after(order_id, earlier,
                               ("ouch", order.symbol, order_id, _OP_NAMES.get(op, "new"), reason, order.account))
        elif not self.replaying:
            self._answer_after(order_id, earlier,
                               ("client", order.session, order.symbol, order.client_id, op, reason, trace_ns))
        self._maybe_forget(order_id, order)

    # -- cluster -> client -----------------------------------------------------------------

    def _reports(self, batch: Batch) -> None:
        try:
            offsets = iter_records(batch.payload, REPORT_SIZE, batch.count)
        except LayoutError:
            self.count("malformed_batches")
            return
        payload = batch.payload
        gate = self.gate
        for offset in offsets:
            if gate.waiting:
                gate.route(payload, offset, REPORT_SIZE, self._report, self._request_resend)
                continue
            self._report(payload, offset)
        self._emit()

    def _report(self, payload: bytes | memoryview, offset: int) -> None:
        """One report from a book or risk (from the journal while replaying, ``offset`` 1 after the tag)."""
        orders = self.orders
        if not self.replays.fresh(payload, offset):
            return  # a recovered book re-sent it, and it was seen already
        fields = list(_unpack_report(payload, offset))
        kind = fields[0]
        if kind == EV_RECOVERED:
            if fields[7] == 1:
                self.count("books_recovered")
            elif fields[7] == RISK_RECOVERED and not self.replaying and 0 <= fields[13] < len(self.config.actor_names):
                self.count("risk_recovered")
                self._resend_unanswered(None, self.config.actor_names[fields[13]])
            return
        if kind == EV_REJECTED and REASONS_BY_CODE.get(fields[6]) == RejectReason.DUPLICATE_ORDER_ID:
            # A copy of an order sent again after a restart, which the book had: its answer is elsewhere.
            self.count("resent_duplicates")
            return
        if (kind == EV_MODIFIED or (kind == EV_REJECTED and fields[7] == OP_MODIFY)) and \
                self.journal is not None:
            order = orders.get(fields[13])
            if order is not None and order.session == OUCH_SESSION:
                versions = self._unanswered_modifies.get(fields[13])
                if not versions:
                    # Every modify of the order has its answer: this one answers a copy sent again after a
                    # crash, refused because the order had left the book (the first answer came before).
                    self.count("resent_duplicates")
                    return
                # A book answers an order's commands in the order it got them (risk holds later ones behind
                # earlier ones while a book recovers): the oldest modify.
                del versions[next(iter(versions))]
                if not versions:
                    del self._unanswered_modifies[fields[13]]
        if self._unanswered:
            self._unanswered.pop(fields[13], None)
            if kind == EV_FILL:
                self._unanswered.pop(fields[14], None)
        if self._unanswered_cancels and (kind == EV_CANCELLED or
                                         (kind == EV_REJECTED and fields[7] == OP_CANCEL)):
            self._unanswered_cancels.pop(fields[13], None)  # the order is gone, or the cancel answered
        if self._resent:
            self._resent.discard(fields[13])
        if self.journal is not None and not self.replaying:
            self.journal.append(_TAG_EVENT + bytes(payload[offset:offset + REPORT_SIZE]))
        if kind == EV_FILL:
            self.count("fills")
            maker = orders.get(fields[13])
            taker = orders.get(fields[14])
            qty = fields[16]
            if (maker is not None and maker.session == OUCH_SESSION) or \
                    (taker is not None and taker.session == OUCH_SESSION):
                self._ouch_event(record_to_event(payload, offset)[0])
            for order, own, other in ((maker, 13, 14), (taker, 14, 13)):
                if order is None:
                    continue
                if order.session == OUCH_SESSION:
                    order.leaves -= qty
                    if order.leaves <= 0:
                        order.done = True
                        self._maybe_forget(fields[own], order)
                    continue
                copy = list(fields)
                copy[own] = order.client_id
                copy[other] = 0
                copy[12 if own == 13 else 11] = _BLANK  # the counterparty's account
                self._to_client(order.session, _pack_report(*copy))
                order.leaves -= qty
                if order.leaves <= 0:
                    order.done = True
                    self._maybe_forget(fields[own], order)
            return
        order_id = fields[13]
        order = orders.get(order_id)
        if order is None:
            # Rejects the gateway itself answered earlier, or reports for orders already done.
            self.count("reports_for_unknown_orders")
            return
        if kind == EV_REJECTED or kind == EV_CANCELLED:
            ending = self._consistent_ending(fields, order)
            if ending is not fields:
                fields, kind = ending, ending[0]
                payload, offset = _pack_report(*fields), 0
        if order.session == OUCH_SESSION:
            self._ouch_event(record_to_event(payload, offset)[0])
        else:
            fields[13] = order.client_id
            self._to_client(order.session, _pack_report(*fields))
        answered = True
        if kind == EV_ACCEPTED:
            order.accepted = True
            order.pending -= 1
        elif kind == EV_REJECTED:
            order.pending -= 1
            if fields[7] == OP_NEW:
                order.done = True
        elif kind == EV_CANCELLED:
            order.done = True
            answered = REASONS_BY_CODE.get(fields[6]) == CancelReason.USER
            if answered:
                order.pending -= 1  # the answer to a cancel
        elif kind == EV_MODIFIED:
            order.pending -= 1
            order.leaves = fields[16]
        else:
            answered = False
        if answered and self.held_answers:
            self._release_held(order_id, 1)
        self._maybe_forget(order_id, order)

    def _consistent_ending(self, fields: list, order: GatewayOrder) -> list:
        """The report's fields, or those of the ending the client can make sense of.

        When a book node dies, its risk shard answers for the orders it had sent there: a new order it saw
        accepted is cancelled, one it did not is rejected. But the book tells the gateway and the risk shard
        at once, on different connections, so either may be behind the other: the client may have heard
        Accepted for an order risk rejects, or not yet (or never, if the book died first) for one risk
        cancels. The order is gone either way; what the client is told follows what it was told before.
        """
        if REASONS_BY_CODE.get(fields[6]) != ClusterReason.INSTRUMENT_UNAVAILABLE:
            return fields
        kind = fields[0]
        if kind == EV_REJECTED and fields[7] == OP_NEW and order.accepted:
            self.count("rejects_of_accepted_orders_as_cancels")
            fields = list(fields)
            fields[0], fields[7], fields[11], fields[16] = (EV_CANCELLED, 0, order.account.encode().ljust(8),
                                                            order.leaves)
        elif kind == EV_CANCELLED and not order.accepted:
            self.count("cancels_of_unaccepted_orders_as_rejects")
            fields = list(fields)
            fields[0], fields[7], fields[11], fields[16] = EV_REJECTED, OP_NEW, b"        ", 0
        elif kind == EV_CANCELLED and fields[16] != order.leaves:
            # What is cancelled is what the client was told remains: fills that reached it before risk saw them
            # count (risk's figure could be stale by those).
            fields = list(fields)
            fields[16] = order.leaves
        return fields

    def _answer_after(self, order_id: int, earlier: int, answer: tuple) -> None:
        """Give the gateway's own ``answer`` to a command once the cluster has given ``earlier`` more answers
        for the order (and the answers held before it are out)."""
        held = self.held_answers.get(order_id)
        if held is None:
            if earlier <= 0:
                self._give(answer)
                return
            held = self.held_answers[order_id] = []
        held.append([earlier, answer])
        self.count("answers_held")

    def _release_held(self, order_id: int, answers: int) -> None:
        """The cluster gave ``answers`` more answers for the order: give the held answers now due."""
        held = self.held_answers.get(order_id)
        if held is None:
            return
        for entry in held:
            entry[0] -= answers
        while held and held[0][0] <= 0:
            self._give(held.pop(0)[1])
        if not held:
            del self.held_answers[order_id]

    def _give(self, answer: tuple) -> None:
        if answer[0] == "ouch":
            self._ouch_reject(answer[1], answer[2], answer[3], answer[4], answer[5])
        else:
            self._reject_to(answer[1], answer[2], answer[3], answer[4], answer[5], answer[6])

    def _maybe_forget(self, order_id: int, order: GatewayOrder) -> None:
        """Drop an order once nothing remains of it and every command for it was answered."""
        if order.done and order.pending <= 0:
            if order_id in self.held_answers:
                self._release_held(order_id, 1 << 30)  # nothing more will come for it
            del self.orders[order_id]
            self.by_client.pop((order.session, order.client_id), None)
            self._modify_versions.pop(order_id, None)
            self._unanswered_modifies.pop(order_id, None)

    def _to_client(self, session: bytes, record: bytes) -> None:
        if self.replaying:
            return  # binary-API sessions do not outlive the process (their clients reconnect anew)
        queue = self.to_clients.get(session)
        if queue is None:
            if not self.to_clients:
                self.clients_oldest_ns = time.perf_counter_ns()
            self.to_clients[session] = [record]
        else:
            queue.append(record)

    def flush_due(self) -> bool:
        return super().flush_due() or (
            bool(self.to_clients) and time.perf_counter_ns() - self.clients_oldest_ns >= self.MAX_BATCH_DELAY_NS)

    def _flush_clients(self) -> None:
        if not self.to_clients or self.push is None:
            return
        pending, self.to_clients = self.to_clients, {}
        for session, records in pending.items():
            header = pack_header(MSG_REPORTS, len(records), self.index, 0, 0)
            # The inproc queue is large and drained by the port thread; blocking here only
            # happens when the port is far behind, which is the backpressure we want.
            send_frames(self.push, session, header, b"".join(records), 0)
            self.count("reports_out", len(records))

    def flush(self) -> None:
        journal = self.journal
        if journal is not None:
            # Group commit: nothing this batch caused leaves (commands to risk, sequenced messages to
            # clients) before the journal holds it as safely as the fsync policy promises.
            if not self._commit():
                return  # more input is queued: it joins this batch, and a later flush sends both
        super().flush()
        if journal is not None and journal.index != self._committed_index:
            self._commit(idle=True)  # answers to orders risk could not take (handle_send_failures)
        self._flush_clients()
        if self.snapshots is not None and self.snapshots.due():
            self._snapshot()

    def _commit(self, idle: bool | None = None) -> bool:
        assert self.journal is not None
        if self.journal.index != self._committed_index or not self.journal.durable():
            if idle is None:
                idle = self.stopping or self.actor_inbox.empty()
            if not commit_and_wait(self.journal, idle):
                return False
            self._committed_index = self.journal.index
        if self.soup is not None:
            self.soup.publish_sequenced()
        return True

    def stats(self) -> dict:
        out = super().stats()
        out.update({f"port_{k}": v for k, v in self.port.stats.items()})
        out["live_orders"] = len(self.orders)
        out["duplicate_reports_dropped"] = self.replays.dropped
        out["unanswered_orders"] = len(self._unanswered)
        out["unanswered_cancels"] = len(self._unanswered_cancels)
        out["unanswered_modifies"] = sum(len(v) for v in self._unanswered_modifies.values())
        out["answers_waiting_for_earlier"] = sum(len(held) for held in self.held_answers.values())
        if self.translator is not None:
            out["ouch_rejects_by_reason"] = dict(self.translator.rejects)
        if self.journal is not None:
            out.update({f"journal_{k}": v for k, v in self.journal.stats.items()})
            out["journal_policy"] = self.journal.policy
            out["resend_waiting"] = self.gate.symbols()
            out["resend_held"] = self.gate.held_total
        if self.recovery:
            out["recovery"] = self.recovery
        if self.soup is not None:
            out.update({f"soup_{k}": v for k, v in self.soup.counters().items()})
            out["soup_backpressure_waits"] = self.soup_app.waits
        if self.store is not None:
            out["soup_messages_in_memory"] = self.store.held_in_memory()
            out["soup_archive_read_errors"] = self.store.archive_read_errors
            out["soup_spill_failed"] = self.store.spill_failed
        return out
