"""ClusterClient: the in-cluster client API (ZeroMQ, binary records) to a gateway.

It speaks the cluster's own wire format: order records out, report records back, with the
client's own order ids (the gateway maps them to cluster ids). One client is used from one
thread. Issue #6 adds OUCH 5.0 over SoupBinTCP for software written by others; this API stays
the lowest-overhead way in, used by benchmarks.
"""

from __future__ import annotations

import itertools
import os
import select
import time

import zmq

from actors.transport import recv_frames
from exchange.layout import LayoutError
from exchange.orders import (
    CancelOrder,
    Command,
    Event,
    ModifyOrder,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from exchange.wire import MSG_ORDERS, REPORT_SIZE, command_to_record, pack_header, parse_header, record_to_event

# Plain ints: pyzmq combines Flag members in Python, which costs on every send.
NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


_session_numbers = itertools.count(1)


class ClusterClient:
    """A session with a gateway: send orders, receive reports (as engine events with your ids)."""

    def __init__(self, endpoint: str, name: str | None = None, context: zmq.Context | None = None,
                 send_hwm: int = 10_000) -> None:
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.name = name or f"client-{os.getpid()}-{next(_session_numbers)}"
        self.socket.setsockopt(zmq.ROUTING_ID, self.name.encode())
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, send_hwm)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.connect(endpoint)
        self._fd = [self.socket.getsockopt(zmq.FD)]
        self.pending: list[bytes] = []
        self.sent = 0
        self.busy = 0  # sends refused locally because the gateway's queue was full
        self.received = 0
        self.malformed = 0

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending -----------------------------------------------------------------------------

    def queue(self, command: Command, trace_ns: int | None = None) -> None:
        """Add a command to the next :meth:`flush`."""
        self.pending.append(command_to_record(command, time.perf_counter_ns() if trace_ns is None else trace_ns))

    def flush(self) -> bool:
        """Send queued commands as one message; False (and nothing sent) when the gateway is full."""
        if not self.pending:
            return True
        header = pack_header(MSG_ORDERS, len(self.pending), 0, 0, 0)
        try:
            # Two plain sends, as send_multipart does them but without its per-part checks and Flag arithmetic.
            # A full queue refuses the first part (EAGAIN) before anything of the message is queued.
            self.socket.send(header, _MORE_NOBLOCK)
            self.socket.send(b"".join(self.pending), NOBLOCK)
        except zmq.Again:
            self.busy += len(self.pending)
            return False
        self.sent += len(self.pending)
        self.pending = []
        return True

    def send(self, command: Command, trace_ns: int | None = None) -> bool:
        self.queue(command, trace_ns)
        return self.flush()

    def new_order(self, symbol: str, order_id: int, account: str, side: Side | str, qty: int,
                  price: int | None = None, tif: TimeInForce | str = TimeInForce.GTC,
                  order_type: OrderType | str | None = None, post_only: bool = False, display_qty: int = 0,
                  stp: SelfTradePrevention | str = SelfTradePrevention.NONE) -> bool:
        """Send one new order (enum members or their JSON spellings)."""
        side = Side[side.upper()] if isinstance(side, str) else side
        tif = TimeInForce[tif.upper()] if isinstance(tif, str) else tif
        stp = SelfTradePrevention[stp.upper()] if isinstance(stp, str) else stp
        if order_type is None:
            order_type = OrderType.MARKET if price is None else OrderType.LIMIT
        elif isinstance(order_type, str):
            order_type = OrderType[order_type.upper()]
        return self.send(NewOrder(symbol, order_id, account, side, price, qty, order_type, tif, post_only,
                                  display_qty, stp))

    def cancel(self, symbol: str, order_id: int) -> bool:
        return self.send(CancelOrder(symbol, order_id))

    def modify(self, symbol: str, order_id: int, qty: int | None = None, price: int | None = None) -> bool:
        return self.send(ModifyOrder(symbol, order_id, qty=qty, price=price))

    def reduce(self, symbol: str, order_id: int, qty: int) -> bool:
        """Cut ``qty`` shares off what the order has open at the book (all of it or more: cancel it)."""
        return self.send(ModifyOrder(symbol, order_id, qty=qty, reduce=True))

    # -- receiving ---------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> list[tuple[Event, int]]:
        """Reports received within ``timeout`` seconds: (event, trace_ns) pairs, in arrival order."""
        return [record_to_event(payload, offset)
                for payload in self.poll_records(timeout) for offset in range(0, len(payload), REPORT_SIZE)]

    def poll_records(self, timeout: float = 0.0) -> list[bytes]:
        """Like :meth:`poll`, undecoded: the payload of each message received, ``REPORT_SIZE`` bytes per report
        (checked against its header), for callers that read a few fields in place, such as load generators."""
        out: list[bytes] = []
        if not self._wait(timeout):
            return out
        while True:
            try:
                frames = recv_frames(self.socket)
            except zmq.Again:
                return out
            if len(frames) != 2:
                self.malformed += 1
                continue
            header_frame, payload = frames
            try:
                count = parse_header(header_frame)[1]
                if len(payload) != count * REPORT_SIZE:
                    raise LayoutError("payload length")
            except LayoutError:
                self.malformed += 1
                continue
            out.append(payload)
            self.received += count

    def _wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a report; True when one can be read.

        zmq_poll counts whole milliseconds, so a shorter wait would poll without waiting, and an open-loop
        sender that waits for its next send time in sub-millisecond steps would spin on a core. The socket's
        file descriptor (edge-triggered: reading ZMQ_EVENTS re-arms it) waits to the microsecond.
        """
        socket = self.socket
        if socket.getsockopt(_EVENTS) & _POLLIN:
            return True
        if timeout <= 0:
            return False
        deadline = time.perf_counter() + timeout
        while True:
            select.select(self._fd, (), (), timeout)
            if socket.getsockopt(_EVENTS) & _POLLIN:
                return True
            timeout = deadline - time.perf_counter()
            if timeout <= 0:
                return False

    def collect(self, until: object, timeout: float = 5.0) -> list[Event]:
        """Events until ``until(events)`` is true or ``timeout`` passes (for tests and tools)."""
        events: list[Event] = []
        deadline = time.monotonic() + timeout
        while not until(events):  # type: ignore[operator]
            left = deadline - time.monotonic()
            if left <= 0:
                break
            events.extend(event for event, _ in self.poll(min(left, 0.05)))
        return events
