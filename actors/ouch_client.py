"""A Python OUCH 5.0 client over SoupBinTCP 4.0: what demo traders, tests and benchmarks trade with.

Design: the client object owns its socket and does all I/O on the calling thread (no background
thread, no locks, no queue hand-offs on the hot path). Every call that touches the socket — sending,
:meth:`OuchClient.recv`, :meth:`OuchClient.poll` — also sends a client heartbeat when one is due, so
an active client stays alive by itself; a client that goes quiet for longer than the server's timeout
(15 s) must call :meth:`OuchClient.poll` now and then.

Sequenced messages are numbered as SoupBinTCP numbers them; the client keeps the number of the next
one it expects (:attr:`OuchClient.next_seq`) and :meth:`OuchClient.reconnect` logs in again asking
for exactly that one, so after a dropped connection it receives what it missed and nothing twice.
UserRefNums are allocated automatically, strictly increasing; :meth:`OuchClient.sync_user_ref_num`
asks the server for the next free one (after a restart of the client process).

Typical use::

    with OuchClient("127.0.0.1", 15000, "DEMO1", "secret") as client:
        ref = client.enter_order("AAPL", "B", 100, 1_500_000)     # $150.0000
        report = client.recv(timeout=1.0)                         # {"type": "A", "user_ref_num": ref, ...}
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from exchange import ouch
from exchange import soupbintcp as soup

__all__ = ["ConnectionClosed", "LoginRejected", "OuchClient"]


class ConnectionClosed(ConnectionError):
    """The connection ended (server closed it, End of Session, or no data from the server in time)."""


class LoginRejected(ConnectionError):
    """The server refused the login: ``reason`` 'A' (not authorized) or 'S' (session not available)."""

    def __init__(self, reason: str) -> None:
        meaning = {"A": "not authorized", "S": "session not available"}.get(reason, "unknown reason")
        super().__init__(f"login rejected: {reason!r} ({meaning})")
        self.reason = reason


class OuchClient:
    """An OUCH 5.0 / SoupBinTCP 4.0 client session.

    ``next_seq`` is the first sequenced message wanted at the first login (1: everything since the
    start of the session; 0: only new messages). ``heartbeat_interval`` is how often the client
    heartbeats when idle (SoupBinTCP asks for 1 s); ``server_timeout`` is how long the server may be
    silent before the connection is given up. ``on_message``, if given, receives each decoded message
    during :meth:`poll` instead of it being queued for :meth:`recv`.
    """

    def __init__(self, host: str, port: int, username: str, password: str, *, session: str = "",
                 next_seq: int = 1, heartbeat_interval: float = 1.0, server_timeout: float = 15.0,
                 connect_timeout: float = 5.0, first_user_ref_num: int = 1,
                 on_message: Callable[[dict[str, Any]], None] | None = None, connect: bool = True) -> None:
        self.address = (host, port)
        self.username = username
        self.password = password
        self.requested_session = session
        self.session = ""  # the session joined (from Login Accepted)
        self.next_seq = next_seq  # number of the next sequenced message expected
        self.heartbeat_interval = heartbeat_interval
        self.server_timeout = server_timeout
        self.connect_timeout = connect_timeout
        self.next_user_ref_num = first_user_ref_num
        self.on_message = on_message
        self.end_of_session = False
        self.sock: socket.socket | None = None
        self._decoder = soup.SoupDecoder(soup.SERVER)
        self._received: deque[tuple[int, bytes]] = deque()  # (sequence number, OUCH payload)
        self._batch: list[bytes] | None = None
        self._login_queue: list[soup.Packet] = []
        self._last_tx = 0.0
        self._last_rx = 0.0
        self.counters = {"sent": 0, "received": 0, "heartbeats_sent": 0, "heartbeats_received": 0, "logins": 0}
        if connect:
            self.connect()

    # -- session ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while logged in on an open connection."""
        return self.sock is not None

    def connect(self, next_seq: int | None = None) -> int:
        """Connect and log in, asking for sequenced message ``next_seq`` (default: :attr:`next_seq`).
        Returns the number of the next message the server will send. Raises :class:`LoginRejected`,
        :class:`ConnectionClosed` or ``OSError``."""
        if self.sock is not None:
            raise RuntimeError("already connected")
        if next_seq is not None:
            self.next_seq = next_seq
        sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock = sock
        self._decoder = soup.SoupDecoder(soup.SERVER)
        self._login_queue.clear()
        self.end_of_session = False
        now = time.monotonic()
        self._last_rx = now
        try:
            self._write(soup.login_request(self.username, self.password, self.requested_session, self.next_seq))
            deadline = now + self.connect_timeout
            while True:
                for packet in self._read_packets(deadline):
                    if packet.type == "A":
                        fields = packet.fields()
                        self.session = fields["session"]
                        self.next_seq = accepted = fields["sequence_number"]
                        self.counters["logins"] += 1
                        # Anything that came with the acceptance (a replay) is in the decoder still.
                        self._drain_decoder()
                        return accepted
                    if packet.type == "J":
                        raise LoginRejected(packet.fields()["reject_reason_code"])
                    if packet.type != "+":
                        raise ConnectionClosed(f"unexpected {packet.name} before login was accepted")
        except BaseException:
            self._drop()
            raise

    def reconnect(self) -> int:
        """Drop the connection (if any) without logging out, then log in again asking for
        :attr:`next_seq`: the server replays exactly what was missed. Returns :meth:`connect`'s value."""
        self._drop()
        return self.connect()

    def logout(self, timeout: float = 1.0) -> None:
        """Log out gracefully (Logout Request, then wait briefly for the server to close)."""
        if self.sock is None:
            return
        with contextlib.suppress(OSError, ConnectionClosed):
            self._write(soup.LOGOUT_REQUEST)
            deadline = time.monotonic() + timeout
            while self.sock is not None and time.monotonic() < deadline:
                self._service(max(0.0, deadline - time.monotonic()))
        self._drop()

    def close(self) -> None:
        """Close the connection (no logout). Received messages stay readable."""
        self._drop()

    def __enter__(self) -> OuchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.logout()

    def _drop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
        self._batch = None

    # -- sending ------------------------------------------------------------------------------------

    def allocate_user_ref_num(self) -> int:
        """The next UserRefNum (strictly increasing for this client)."""
        ref = self.next_user_ref_num
        self.next_user_ref_num += 1
        return ref

    def enter_order(self, symbol: str, side: str, quantity: int, price: int, *, time_in_force: str = "0",
                    display: str = "Y", capacity: str = "A", inter_market_sweep_eligibility: str = "N",
                    cross_type: str = "N", cl_ord_id: str = "", options: Mapping[str, Any] | None = None) -> int:
        """Send Enter Order; returns its UserRefNum. ``side`` 'B'/'S'/'T'/'E'; ``price`` in 1/10000
        (:data:`exchange.ouch.MARKET_PRICE` for a market order); ``time_in_force`` '0' day, '3' IOC,
        '5' GTX (rests until cancelled here). Options: ``min_qty`` (= quantity with IOC: fill or kill),
        ``max_floor`` (reserve order display size), ``post_only`` 'P', ``firm`` (account)."""
        ref = self.allocate_user_ref_num()
        self.send(ouch.encode_inbound(
            "O", user_ref_num=ref, side=side, quantity=quantity, symbol=symbol, price=price,
            time_in_force=time_in_force, display=display, capacity=capacity,
            inter_market_sweep_eligibility=inter_market_sweep_eligibility, cross_type=cross_type,
            cl_ord_id=cl_ord_id, options=dict(options or {})))
        return ref

    def replace_order(self, orig_user_ref_num: int, quantity: int, price: int, *, time_in_force: str = "0",
                      display: str = "Y", inter_market_sweep_eligibility: str = "N", cl_ord_id: str = "",
                      options: Mapping[str, Any] | None = None) -> int:
        """Send Replace Order (new open quantity and price); returns the replacement's UserRefNum."""
        ref = self.allocate_user_ref_num()
        self.send(ouch.encode_inbound(
            "U", orig_user_ref_num=orig_user_ref_num, user_ref_num=ref, quantity=quantity, price=price,
            time_in_force=time_in_force, display=display, inter_market_sweep_eligibility=inter_market_sweep_eligibility,
            cl_ord_id=cl_ord_id, options=dict(options or {})))
        return ref

    def cancel_order(self, user_ref_num: int, quantity: int = 0) -> None:
        """Send Cancel Order. ``quantity`` is the intended order size (executed shares included);
        0 cancels everything that is left."""
        self.send(ouch.encode_inbound("X", user_ref_num=user_ref_num, quantity=quantity))

    def modify_order(self, user_ref_num: int, side: str, quantity: int) -> None:
        """Send Modify Order (a sell may switch between 'S', 'T' and 'E'; ``quantity`` is the intended
        order size, executed shares included)."""
        self.send(ouch.encode_inbound("M", user_ref_num=user_ref_num, side=side, quantity=quantity))

    def account_query(self) -> None:
        """Send Account Query; the answer (type 'Q') carries the next free UserRefNum."""
        self.send(ouch.encode_inbound("Q"))

    def send(self, payload: bytes) -> None:
        """Send one OUCH message (already encoded) as Unsequenced Data."""
        frame = soup.unsequenced_data(payload)
        self.counters["sent"] += 1
        if self._batch is not None:
            self._batch.append(frame)
        else:
            self._write(frame)

    def send_many(self, payloads: Iterable[bytes]) -> int:
        """Send several encoded OUCH messages in one write; returns how many."""
        frames = [soup.unsequenced_data(p) for p in payloads]
        self.counters["sent"] += len(frames)
        if self._batch is not None:
            self._batch.extend(frames)
        else:
            self._write(b"".join(frames))
        return len(frames)

    @contextlib.contextmanager
    def batch(self) -> Iterator[OuchClient]:
        """Collect every send inside the ``with`` block and write them at its end in one go."""
        if self._batch is not None:  # nested: the outer batch flushes
            yield self
            return
        self._batch = []
        try:
            yield self
            frames, self._batch = self._batch, None
            if frames:
                self._write(b"".join(frames))
        finally:
            self._batch = None

    def _write(self, data: bytes) -> None:
        if self.sock is None:
            raise ConnectionClosed("not connected")
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._drop()
                raise ConnectionClosed(f"send failed: {exc}") from exc
            view = view[sent:]
            if view:
                # Keep reading while waiting to write, so two full buffers can never deadlock.
                readable, _, _ = select.select([self.sock], [self.sock], [], self.heartbeat_interval)
                if readable:
                    self._receive_once()
                    if self.sock is None:
                        raise ConnectionClosed("connection closed while sending")
        self._last_tx = time.monotonic()

    # -- receiving ----------------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next report, decoded (``{"type": "A", ..., "seq": n}``), waiting up to ``timeout``
        seconds (None: forever); None on timeout. Raises :class:`ConnectionClosed` once the
        connection is gone and everything received has been read. A payload that is not valid OUCH
        comes back as ``{"type": None, "seq": n, "payload": bytes, "error": reason}``."""
        item = self.recv_raw(timeout)
        if item is None:
            return None
        return _decode(*item)

    def recv_raw(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """Like :meth:`recv`, undecoded: ``(sequence number, OUCH payload)``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._received:
            if self.sock is None:
                raise ConnectionClosed("end of session" if self.end_of_session else "not connected")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._service(remaining)
        return self._received.popleft()

    def poll(self, timeout: float = 0.0) -> int:
        """Service the connection for up to ``timeout`` seconds: read what arrived, send a heartbeat
        if one is due, deliver messages to ``on_message`` (if set). Returns the number of messages
        received. Raises :class:`ConnectionClosed` if the connection is gone."""
        if self.sock is None:
            raise ConnectionClosed("not connected")
        before = self.counters["received"]
        self._service(timeout)
        if self.on_message is not None:
            while self._received:
                self.on_message(_decode(*self._received.popleft()))
        return self.counters["received"] - before

    def messages(self, timeout: float) -> Iterator[dict[str, Any]]:
        """Yield reports until none arrives for ``timeout`` seconds (or the connection ends)."""
        while True:
            try:
                msg = self.recv(timeout)
            except ConnectionClosed:
                return
            if msg is None:
                return
            yield msg

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.messages(float("inf"))

    def pending(self) -> int:
        """Reports received and not yet read."""
        return len(self._received)

    def sync_user_ref_num(self, timeout: float = 5.0) -> int:
        """Ask the server for the next free UserRefNum (Account Query) and continue from there.
        The response also stays in the report stream. Returns the new :attr:`next_user_ref_num`."""
        start = self.next_seq
        self.account_query()
        deadline = time.monotonic() + timeout
        while True:
            for seq, payload in self._received:
                if seq >= start and payload[:1] == b"Q":
                    response = ouch.decode_outbound(payload)
                    self.next_user_ref_num = max(self.next_user_ref_num, response["next_user_ref_num"])
                    return self.next_user_ref_num
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no Account Query response")
            self._service(remaining)

    # -- I/O core -----------------------------------------------------------------------------------

    def _service(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for data (in heartbeat-sized slices), read it, heartbeat if due."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.sock is not None:
            now = time.monotonic()
            if now - self._last_tx >= self.heartbeat_interval:
                self._write(soup.CLIENT_HEARTBEAT)
                self.counters["heartbeats_sent"] += 1
            if now - self._last_rx > self.server_timeout:
                self._drop()
                raise ConnectionClosed("server silent for longer than server_timeout")
            wait = self._last_tx + self.heartbeat_interval - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            readable, _, _ = select.select([self.sock], [], [], max(0.0, wait))
            if readable:
                self._receive_once()
                return
            if deadline is not None and time.monotonic() >= deadline:
                return

    def _receive_once(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop()
            return
        self._last_rx = time.monotonic()
        self._decoder.feed(data)
        self._drain_decoder()

    def _drain_decoder(self) -> None:
        try:
            for packet in self._decoder.packets():
                self._on_packet(packet)
        except soup.SoupError as exc:
            self._drop()
            raise ConnectionClosed(f"malformed data from the server: {exc}") from exc

    def _on_packet(self, packet: soup.Packet) -> None:
        kind = packet.type
        if kind == "S":
            self._received.append((self.next_seq, packet.payload))
            self.next_seq += 1
            self.counters["received"] += 1
        elif kind == "H":
            self.counters["heartbeats_received"] += 1
        elif kind == "Z":
            self.end_of_session = True
            self._drop()
        # Login Accepted/Rejected only come while logging in, where connect() reads them; debug is ignored.

    def _read_packets(self, deadline: float) -> list[soup.Packet]:
        """During login: read until a Login Accepted/Rejected arrives (or the deadline passes)."""
        queue = self._login_queue
        while not queue:
            if self.sock is None:
                raise ConnectionClosed("connection closed during login")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer to the login request")
            readable, _, _ = select.select([self.sock], [], [], remaining)
            if not readable:
                continue
            try:
                data = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                self._drop()
                raise ConnectionClosed("connection closed during login")
            self._last_rx = time.monotonic()
            self._decoder.feed(data)
            # Stop at the login answer: what follows it belongs to the new session's numbering.
            try:
                for packet in self._decoder.packets():
                    if packet.type in ("A", "J"):
                        queue.append(packet)
                        break
                    if packet.type not in ("+", "H"):
                        raise ConnectionClosed(f"unexpected {packet.name} before login was accepted")
            except soup.SoupError as exc:
                raise ConnectionClosed(f"malformed data from the server: {exc}") from exc
        found = list(queue)
        queue.clear()
        return found


def _decode(seq: int, payload: bytes) -> dict[str, Any]:
    try:
        msg = ouch.decode_outbound(payload)
    except ouch.OuchError as exc:
        return {"type": None, "seq": seq, "payload": payload, "error": str(exc)}
    msg["seq"] = seq
    return msg
