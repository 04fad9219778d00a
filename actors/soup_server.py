"""A SoupBinTCP 4.0 server: one thread, a selector and non-blocking sockets.

The server owns the sessions; an application (the gateway actor, or a test) decides what they mean
through :class:`SoupApplication` hooks, and answers by calling :meth:`SoupServer.send_sequenced`
from any thread.

Session rules (see docs/order-entry.md):

* A connection must log in first. The login is checked against a per-IP token bucket, then
  ``authenticate`` runs in a small worker pool (password hashing is deliberately slow and must not
  stall the other sessions). Wrong credentials: Login Rejected 'A'. A requested session other than
  blank or ours, or a user that already has a live session: Login Rejected 'S'. Either way the
  connection is closed.
* Each user has one stream of sequenced messages, kept in a store (``actors.sequenced_store``), numbered 1, 2,
  3... for the whole session. At login the client asks for message N: the server replays N.. and
  then continues live. N = 0 means "start with the next message generated" (no replay); N past the
  end is treated the same way. Login Accepted tells the client the number of the next message it
  will receive.
* The server sends a heartbeat after ``heartbeat_interval`` (1 s) without sending anything; a client
  that sends nothing for ``heartbeat_timeout`` (15 s) is disconnected.
* Unsequenced data from a live client goes to ``on_message``, in order. Logout Request ends the
  session gracefully; :meth:`SoupServer.stop` sends End of Session to every live client.
* Bad input — a malformed packet, a wrong length, an unknown type, data before login — closes that
  connection only. Output is bounded per connection: sequenced data is pulled from the store only
  while less than ``output_watermark`` bytes are queued, and a client whose socket accepts nothing
  for ``stall_timeout`` seconds while output is pending is disconnected as a slow consumer. The loop
  never blocks on a client.

Every outcome is counted (:meth:`SoupServer.counters`).
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from actors.sequenced_store import MemorySequencedStore, SequencedStore
from exchange import soupbintcp as soup

__all__ = [
    "SoupApplication",
    "SoupServer",
    "default_session_name",
]

log = logging.getLogger("matchwire.soup")

_LOGIN, _AUTH, _LIVE, _CLOSING = "login", "auth", "live", "closing"


class SoupApplication:
    """What a SoupBinTCP server's sessions mean; override the hooks you need.

    ``authenticate`` runs on a worker thread (it may be slow: password hashing); the other hooks run
    on the server thread and must return quickly (hand work to another thread or actor). Answers go
    back through :meth:`SoupServer.send_sequenced`, callable from any thread including these hooks.
    """

    def authenticate(self, username: str, password: str) -> bool:
        """True to let ``username`` log in. The default refuses everyone."""
        return False

    def on_login(self, username: str) -> None:
        """A session of ``username`` became live (after Login Accepted was queued)."""

    def on_logout(self, username: str) -> None:
        """The live session of ``username`` ended: logout, disconnect, timeout or shutdown."""

    def on_message(self, username: str, payload: bytes) -> None:
        """Unsequenced data from ``username``'s live session, in arrival order."""

    def on_messages(self, username: str, payloads: list[bytes]) -> None:
        """Several unsequenced messages of ``username``'s live session that arrived together, in order.

        The server calls this (not :meth:`on_message`) for every run of unsequenced packets in one
        read, so an application can hand a burst on as one unit; the default calls ``on_message`` for
        each.
        """
        for payload in payloads:
            self.on_message(username, payload)


def default_session_name() -> str:
    """Today's session: ``MW`` followed by the UTC date, 10 characters (the SoupBinTCP session field)."""
    return "MW" + time.strftime("%Y%m%d", time.gmtime())


class _TokenBucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now


class _Conn:
    __slots__ = ("sock", "peer", "decoder", "out", "state", "username", "cursor", "last_rx", "last_tx",
                 "opened", "stall_since", "registered", "ended", "fill_until", "trailer")

    def __init__(self, sock: socket.socket, peer: tuple, max_packet_length: int, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.decoder = soup.SoupDecoder(soup.CLIENT, max_packet_length)
        self.out = bytearray()
        self.state = _LOGIN
        self.username: str | None = None
        self.cursor = 0  # number of the next sequenced message to queue for this session
        self.last_rx = now
        self.last_tx = now
        self.opened = now
        self.stall_since: float | None = None  # output pending and no progress since then
        self.registered = 0  # selector event mask currently registered (0: not registered)
        self.ended = False
        # Once closing: sequenced messages still to send (up to this number, exclusive), then a last packet.
        self.fill_until = 0
        self.trailer = b""


@dataclass(frozen=True, slots=True)
class _AuthDone:
    conn: _Conn
    future: concurrent.futures.Future
    requested_seq: int


_COUNTER_NAMES = (
    "connections_accepted", "connections_refused", "connections_closed", "peer_disconnects",
    "logins_accepted", "logins_rejected_auth", "logins_rejected_session", "logins_throttled",
    "login_timeouts", "heartbeat_timeouts", "protocol_errors", "data_before_login", "slow_consumers",
    "socket_errors", "logouts", "sessions_ended", "auth_errors", "callback_errors",
    "packets_in", "bytes_in", "bytes_out", "unsequenced_in", "heartbeats_in", "debug_in",
    "sequenced_appended", "sequenced_sent", "replayed", "heartbeats_out", "end_of_session_sent",
)


class SoupServer:
    """A SoupBinTCP 4.0 server on ``host:port`` (port 0: any free port, see :attr:`address`).

    Construct, :meth:`start` (runs the loop on a thread of its own), :meth:`stop`. Thread-safe API:
    :meth:`send_sequenced`, :meth:`send_sequenced_many`, :meth:`disconnect`, :meth:`live_users`,
    :meth:`counters`.
    """

    def __init__(self, app: SoupApplication, host: str = "127.0.0.1", port: int = 0, *,
                 store: SequencedStore | None = None, session: str | None = None,
                 heartbeat_interval: float = 1.0, heartbeat_timeout: float = 15.0, login_timeout: float = 15.0,
                 stall_timeout: float = 10.0, output_watermark: int = 1 << 16, max_packet_length: int = 4096,
                 max_connections: int = 1024, login_rate: float = 10.0, login_burst: float = 20.0,
                 max_pending_logins: int = 32, auth_workers: int = 2, backlog: int = 128) -> None:
        self.app = app
        self.store: SequencedStore = store if store is not None else MemorySequencedStore()
        self.session = session if session is not None else default_session_name()
        soup.login_accepted(self.session, 0)  # fail early on a session name that does not fit
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.login_timeout = login_timeout
        self.stall_timeout = stall_timeout
        self.output_watermark = output_watermark
        self.max_packet_length = max_packet_length
        self.max_connections = max_connections
        self.login_rate = login_rate
        self.login_burst = login_burst
        self.max_pending_logins = max_pending_logins
        self._stats = dict.fromkeys(_COUNTER_NAMES, 0)

        self._listener = socket.create_server((host, port), backlog=backlog, reuse_port=False)
        self._listener.setblocking(False)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, "listener")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

        self._lock = threading.Lock()  # guards the store and everything below it
        self._dirty: set[str] = set()  # users with new sequenced messages
        self._inbox: deque = deque()  # auth results and requests from other threads
        self._wake_pending = False

        self._conns: set[_Conn] = set()
        self._live: dict[str, _Conn] = {}
        self._buckets: dict[str, _TokenBucket] = {}
        self._pending_logins = 0
        self._auth_pool = concurrent.futures.ThreadPoolExecutor(auth_workers, thread_name_prefix="soup-auth")
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None
        self._stopping = False
        self._send_end_of_session = True
        self._closed = False
        self._tick = min(0.1, heartbeat_interval / 4)

    # -- thread-safe API ----------------------------------------------------------------------------

    def start(self) -> SoupServer:
        """Run the server loop on its own (daemon) thread."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._run, name=f"soup-server-{self.address[1]}", daemon=True)
        self._thread.start()
        return self

    def stop(self, end_of_session: bool = True, timeout: float = 5.0) -> None:
        """Stop: send End of Session to live clients (unless told not to), flush briefly, close all."""
        with self._lock:
            self._stopping = True
            self._send_end_of_session = end_of_session
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        elif self._thread is None:
            self._shutdown()

    def send_sequenced(self, username: str, payload: bytes) -> int:
        """Append ``payload`` to ``username``'s sequenced stream and deliver it (now if the user is
        logged in, else at its next login). Returns the message's sequence number."""
        with self._lock:
            seq = self.store.append(username, bytes(payload))
            self._stats["sequenced_appended"] += 1
            self._dirty.add(username)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake and threading.get_ident() != self._loop_ident:
            self._wake_bytes()
        return seq

    def send_sequenced_many(self, username: str, payloads: Iterable[bytes]) -> int:
        """:meth:`send_sequenced` for several messages at once (one lock, one wake-up). Returns the
        number of the last one (or of the last existing message if ``payloads`` is empty)."""
        with self._lock:
            seq = self.store.next_seq(username) - 1
            for payload in payloads:
                seq = self.store.append(username, bytes(payload))
                self._stats["sequenced_appended"] += 1
            self._dirty.add(username)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake and threading.get_ident() != self._loop_ident:
            self._wake_bytes()
        return seq

    def publish_sequenced(self, commit: bool = False) -> None:
        """Deliver what a publishing store (``actors.sequenced_store.DurableSequencedStore``) made durable since
        the last call; with ``commit``, commit the store first. The owner of a shared journal commits it
        itself and then calls this."""
        publish = getattr(self.store, "commit" if commit else "publish", None)
        if publish is None:
            return
        with self._lock:
            users = publish()
            if not users:
                return
            self._dirty |= users
            wake = not self._wake_pending
            self._wake_pending = True
        if wake and threading.get_ident() != self._loop_ident:
            self._wake_bytes()

    def disconnect(self, username: str) -> None:
        """End ``username``'s live session, if any (its sequenced stream is kept)."""
        self._post(("disconnect", username))

    def live_users(self) -> set[str]:
        """Usernames with a live session right now."""
        with self._lock:
            return set(self._live)

    def next_seq(self, username: str) -> int:
        """The number the next sequenced message of ``username`` will get."""
        with self._lock:
            return self.store.next_seq(username)

    def counters(self) -> dict[str, int]:
        """A snapshot of every counter (connections, logins, errors, packets, bytes...)."""
        out = dict(self._stats)
        out["connections_open"] = len(self._conns)
        out["sessions_live"] = len(self._live)
        return out

    def __enter__(self) -> SoupServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- plumbing -----------------------------------------------------------------------------------

    def _post(self, item: object) -> None:
        with self._lock:
            self._inbox.append(item)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake and threading.get_ident() != self._loop_ident:
            self._wake_bytes()

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = True
        self._wake_bytes()

    def _wake_bytes(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # buffer full (a wake-up is pending anyway) or already closed
            pass

    def _count(self, name: str, n: int = 1) -> None:
        self._stats[name] += n

    # -- the loop -----------------------------------------------------------------------------------

    def _run(self) -> None:
        self._loop_ident = threading.get_ident()
        next_tick = time.monotonic()
        try:
            while True:
                timeout = max(0.0, next_tick - time.monotonic())
                for key, mask in self._sel.select(timeout):
                    tag = key.data
                    if tag == "listener":
                        self._accept()
                    elif tag == "wake":
                        self._drain_wake()
                    else:
                        conn: _Conn = tag
                        if mask & selectors.EVENT_READ and not conn.ended:
                            self._read(conn)
                        if mask & selectors.EVENT_WRITE and not conn.ended:
                            self._pump(conn)
                if self._process_inbox():
                    break
                now = time.monotonic()
                if now >= next_tick:
                    self._timers(now)
                    next_tick = now + self._tick
        except Exception:  # a bug: log it loudly, then close everything rather than hang clients
            log.exception("soup server loop failed")
        finally:
            self._shutdown()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _process_inbox(self) -> bool:
        """Handle posted items and new sequenced messages; True when the server must stop."""
        with self._lock:
            self._wake_pending = False
            dirty, self._dirty = self._dirty, set()
            items = list(self._inbox)
            self._inbox.clear()
            stopping = self._stopping
        for item in items:
            if isinstance(item, _AuthDone):
                self._finish_login(item)
            elif item[0] == "disconnect":
                conn = self._live.get(item[1])
                if conn is not None:
                    self._close(conn, "disconnected by the application")
        for username in dirty:
            conn = self._live.get(username)
            if conn is not None:
                self._pump(conn)
        return stopping

    def _accept(self) -> None:
        for _ in range(64):  # bounded, so a connection storm cannot starve established sessions
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._count("connections_refused")
                    log.warning("accept failed: %s", exc)
                    return
                raise
            if len(self._conns) >= self.max_connections:
                self._count("connections_refused")
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, peer, self.max_packet_length, time.monotonic())
            self._conns.add(conn)
            self._set_interest(conn, selectors.EVENT_READ)
            self._count("connections_accepted")

    def _set_interest(self, conn: _Conn, events: int) -> None:
        if events == conn.registered:
            return
        if not events:
            self._sel.unregister(conn.sock)
        elif not conn.registered:
            self._sel.register(conn.sock, events, conn)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.registered = events

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._count("socket_errors")
            self._close(conn, "receive failed")
            return
        if not data:
            self._count("peer_disconnects")
            self._close(conn, "peer closed the connection")
            return
        conn.last_rx = time.monotonic()
        self._count("bytes_in", len(data))
        conn.decoder.feed(data)
        self._handle_packets(conn)

    def _handle_packets(self, conn: _Conn) -> None:
        # Unsequenced data of a live session is gathered and handed over in runs (one on_messages
        # call, so one hand-off to the application's thread instead of one per message); every
        # other packet first delivers the run before it, so the order of everything is kept.
        unsequenced: list[bytes] = []
        try:
            for packet in conn.decoder.packets():
                self._count("packets_in")
                if packet.type == "U" and conn.state == _LIVE:
                    unsequenced.append(packet.payload)  # type: ignore[arg-type]
                    continue
                if unsequenced:
                    self._deliver(conn, unsequenced)
                    unsequenced = []
                if not self._handle(conn, packet) or conn.ended:
                    return  # stop here: the rest waits in the decoder (login) or is moot (closed)
        except soup.SoupError as exc:
            if unsequenced:
                self._deliver(conn, unsequenced)
            self._count("protocol_errors")
            self._close(conn, f"protocol error: {exc}")
            return
        if unsequenced:
            self._deliver(conn, unsequenced)

    def _deliver(self, conn: _Conn, payloads: list[bytes]) -> None:
        self._count("unsequenced_in", len(payloads))
        try:
            self.app.on_messages(conn.username, payloads)  # type: ignore[arg-type]
        except Exception:
            self._count("callback_errors")
            log.exception("on_message failed for %s", conn.username)

    def _handle(self, conn: _Conn, packet: soup.Packet) -> bool:
        """Act on one packet; False to stop reading this connection's packets for now."""
        kind = packet.type
        if conn.state == _CLOSING:
            return False  # the session is over; whatever else the client says is moot
        if kind == "+":
            self._count("debug_in")
            return True
        if conn.state == _LIVE:
            if kind == "U":
                self._count("unsequenced_in")
                try:
                    self.app.on_message(conn.username, packet.payload)  # type: ignore[arg-type]
                except Exception:
                    self._count("callback_errors")
                    log.exception("on_message failed for %s", conn.username)
            elif kind == "R":
                self._count("heartbeats_in")
            elif kind == "O":
                self._count("logouts")
                self._wind_down(conn, b"")
                self._pump(conn)
                return False
            elif kind == "L":
                self._count("protocol_errors")
                self._close(conn, "login request on a live session")
                return False
            return True
        if conn.state == _LOGIN and kind == "L":
            self._start_login(conn, packet.fields())
            return False
        self._count("data_before_login")
        self._close(conn, f"{packet.name} before login")
        return False

    # -- login --------------------------------------------------------------------------------------

    def _start_login(self, conn: _Conn, fields: dict) -> None:
        now = time.monotonic()
        ip = conn.peer[0] if conn.peer else "?"
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self._buckets[ip] = _TokenBucket(self.login_burst, now)
        bucket.tokens = min(self.login_burst, bucket.tokens + (now - bucket.stamp) * self.login_rate)
        bucket.stamp = now
        if bucket.tokens < 1 or self._pending_logins >= self.max_pending_logins:
            self._count("logins_throttled")
            self._reject_login(conn, soup.LOGIN_REJECT_NOT_AUTHORIZED)
            return
        bucket.tokens -= 1
        if fields["requested_session"] not in ("", self.session):
            self._count("logins_rejected_session")
            self._reject_login(conn, soup.LOGIN_REJECT_SESSION_NOT_AVAILABLE)
            return
        conn.state = _AUTH
        conn.username = fields["username"]
        # Nothing is read while the password is checked; pipelined packets wait in the socket.
        self._set_interest(conn, 0)
        self._pending_logins += 1
        future = self._auth_pool.submit(self.app.authenticate, fields["username"], fields["password"])
        done = _AuthDone(conn, future, fields["requested_sequence_number"])
        future.add_done_callback(lambda _f: self._post(done))

    def _finish_login(self, done: _AuthDone) -> None:
        self._pending_logins -= 1
        conn = done.conn
        if conn.ended:
            return
        try:
            ok = done.future.result() is True
        except Exception:
            self._count("auth_errors")
            log.exception("authenticate failed for %r", conn.username)
            ok = False
        username: str = conn.username  # type: ignore[assignment]
        if not ok:
            self._count("logins_rejected_auth")
            self._reject_login(conn, soup.LOGIN_REJECT_NOT_AUTHORIZED)
            return
        if username in self._live:  # one live session per user
            self._count("logins_rejected_session")
            self._reject_login(conn, soup.LOGIN_REJECT_SESSION_NOT_AVAILABLE)
            return
        with self._lock:
            next_seq = self.store.next_seq(username)
        requested = done.requested_seq
        conn.cursor = next_seq if requested == 0 or requested > next_seq else requested
        if conn.cursor < next_seq:
            self._count("replayed", next_seq - conn.cursor)
        conn.state = _LIVE
        now = time.monotonic()
        conn.last_rx = now
        with self._lock:  # _live is read by other threads (live_users); only this thread writes it
            self._live[username] = conn
        self._count("logins_accepted")
        log.info("%s logged in from %s, next sequence %d", username, conn.peer, conn.cursor)
        conn.out += soup.login_accepted(self.session, conn.cursor)
        try:
            self.app.on_login(username)
        except Exception:
            self._count("callback_errors")
            log.exception("on_login failed for %s", username)
        self._pump(conn)
        if not conn.ended:
            self._set_interest(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0))
            self._handle_packets(conn)  # anything pipelined behind the login request

    def _reject_login(self, conn: _Conn, reason: str) -> None:
        conn.out += soup.login_rejected(reason)
        conn.state = _CLOSING
        self._set_interest(conn, selectors.EVENT_READ)  # (re-)registered so the write can be retried
        self._pump(conn)

    # -- output -------------------------------------------------------------------------------------

    def _pump(self, conn: _Conn) -> None:
        """Queue what the session may send and write as much as the socket takes, without blocking."""
        out = conn.out
        while True:
            if len(out) < self.output_watermark:
                if conn.state == _LIVE:
                    self._fill(conn, None)
                elif conn.state == _CLOSING:
                    if conn.cursor < conn.fill_until:
                        self._fill(conn, conn.fill_until)
                    if conn.cursor >= conn.fill_until and conn.trailer and len(out) < self.output_watermark:
                        out += conn.trailer
                        conn.trailer = b""
            if not out:
                break
            try:
                sent = conn.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._count("socket_errors")
                self._close(conn, "send failed")
                return
            now = time.monotonic()
            if sent:
                del out[:sent]
                conn.last_tx = now
                self._count("bytes_out", sent)
            if out:
                if sent or conn.stall_since is None:
                    conn.stall_since = now  # the clock runs from the last progress
                if conn.registered:
                    self._set_interest(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
                return
            conn.stall_since = None
        if conn.state == _CLOSING:
            self._close(conn, "closed after the last output")
            return
        if conn.registered & selectors.EVENT_WRITE:
            self._set_interest(conn, selectors.EVENT_READ)

    def _fill(self, conn: _Conn, until: int | None) -> None:
        username: str = conn.username  # type: ignore[assignment]
        room = self.output_watermark - len(conn.out)
        while room > 0:
            limit = 256 if until is None else min(256, until - conn.cursor)
            if limit <= 0:
                return
            with self._lock:
                batch = self.store.get_from(username, conn.cursor, limit)
            if not batch:
                return
            frames = b"".join(soup.sequenced_data(payload) for payload in batch)
            conn.out += frames
            conn.cursor += len(batch)
            self._count("sequenced_sent", len(batch))
            room -= len(frames)

    # -- timers and closing -------------------------------------------------------------------------

    def _timers(self, now: float) -> None:
        for conn in list(self._conns):
            if conn.ended:
                continue
            if conn.out and conn.stall_since is not None and now - conn.stall_since > self.stall_timeout:
                self._count("slow_consumers")
                self._close(conn, "slow consumer: output not accepted")
            elif conn.state == _LOGIN and now - conn.opened > self.login_timeout:
                self._count("login_timeouts")
                self._close(conn, "no login request in time")
            elif conn.state == _LIVE:
                if now - conn.last_rx > self.heartbeat_timeout:
                    self._count("heartbeat_timeouts")
                    self._close(conn, "client heartbeat timeout")
                elif not conn.out and now - conn.last_tx >= self.heartbeat_interval:
                    conn.out += soup.SERVER_HEARTBEAT
                    self._count("heartbeats_out")
                    self._pump(conn)
            elif conn.state == _CLOSING and now - conn.last_tx > self.stall_timeout:
                self._close(conn, "closing connection did not drain")
        if len(self._buckets) > 4096 or int(now) % 60 == 0:
            # Forget buckets that have refilled completely: they would behave the same as new ones.
            full = [ip for ip, b in self._buckets.items()
                    if b.tokens + (now - b.stamp) * self.login_rate >= self.login_burst]
            for ip in full:
                del self._buckets[ip]

    def _wind_down(self, conn: _Conn, trailer: bytes) -> None:
        """End a live session gracefully: send what its stream holds now, then ``trailer``, then close."""
        with self._lock:
            conn.fill_until = self.store.next_seq(conn.username)  # type: ignore[arg-type]
        self._end_session(conn)
        conn.state = _CLOSING
        conn.trailer = trailer

    def _end_session(self, conn: _Conn) -> None:
        if conn.state == _LIVE and self._live.get(conn.username) is conn:  # type: ignore[arg-type]
            with self._lock:
                del self._live[conn.username]  # type: ignore[arg-type]
            self._count("sessions_ended")
            try:
                self.app.on_logout(conn.username)  # type: ignore[arg-type]
            except Exception:
                self._count("callback_errors")
                log.exception("on_logout failed for %s", conn.username)

    def _close(self, conn: _Conn, why: str) -> None:
        if conn.ended:
            return
        # Once per connection: the line an operator looks for when a client asks why it was cut off.
        log.info("closing %s (%s): %s", conn.peer, conn.username or "not logged in", why)
        self._end_session(conn)
        conn.ended = True
        if conn.registered:
            self._sel.unregister(conn.sock)
            conn.registered = 0
        try:
            conn.sock.close()
        except OSError:
            pass
        self._conns.discard(conn)
        self._count("connections_closed")

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in [c for c in self._conns if c.state == _LIVE and not c.ended]:
            self._wind_down(conn, soup.END_OF_SESSION if self._send_end_of_session else b"")
            if self._send_end_of_session:
                self._count("end_of_session_sent")
        # A short, bounded flush: whatever a client does not take within a second is lost with it (and
        # replayed at its next login).
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            closing = [c for c in self._conns if c.state == _CLOSING and not c.ended]
            if not closing:
                break
            for conn in closing:
                self._pump(conn)
            time.sleep(0.002)
        for conn in list(self._conns):
            self._close(conn, "server stopped")
        for sock in (self._listener, self._wake_r, self._wake_w):
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self._sel.close()
        self._auth_pool.shutdown(wait=False, cancel_futures=True)
