"""FeedHandlerActor: the exchange's own feed (or any ITCH 5.0 over MoldUDP64 feed, or an ITCH file) read back
into L3/L2 books, with gap recovery, and BBO/depth changes told to in-cluster subscribers.

The work is :class:`exchange.feed_decoder.FeedHandler` (sans-IO: packets in, books, updates and re-request
packets out; decoding through the :class:`~exchange.feed_decoder.FeedDecoder` interface that issue #9 also
implements in gateware). This actor gives it sockets and time:

* a :class:`~actors.marketdata.UdpPump` thread owns the UDP sockets: the unicast socket the feed arrives on
  (or, with ``multicast``, a socket joined to the group plus a unicast one) and the socket re-requests
  leave from, so the retransmission server's answers come back to it. Datagrams reach the actor in
  batches, as pykka messages; the actor never touches a socket;
* after every batch of datagrams, and on every tick, the handler says which gap to re-request; a request
  unanswered for ``retransmit_timeout`` seconds is repeated, ``max_retries`` times at most, and then the gap
  is given up and delivery resumes after it;
* with ``file`` set, the actor reads that ITCH file instead (gzip or plain) when it starts; it also reads
  one when asked, ``ref.ask(("read_file", path))`` (after subscribers are in place, for instance).

Subscribers: ``ref.tell(("subscribe", target))`` where ``target`` is a pykka ``ActorRef`` (told each
:class:`~exchange.feed_decoder.BookUpdate`) or a callable (called with it, in the actor's thread: keep it
short). Configuration: the ``[feed]`` table, see :class:`FeedSettings`.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from actors.base import ClusterActor, NodeContext
from actors.config import ConfigError
from actors.marketdata import Address, UdpDatagrams, UdpPump, actor_table, parse_address, udp_socket
from actors.transport import Batch
from exchange.card_protocol import CardError
from exchange.feed_decoder import BookUpdate, FeedHandler, decoder_for

log = logging.getLogger("matchwire.feed")


@dataclass
class FeedSettings:
    """The ``[feed]`` table, with defaults; a sub-table named after the actor (``[feed."feed/1"]``)
    overrides the shared values for that actor.

    ``listen``: ``"host:port"`` the feed arrives on (unicast), also where re-requests leave from (port 0:
    any free port); ``multicast``: ``"group:port"`` to join instead, on ``multicast_interface``;
    ``retransmit``: the retransmission server, ``"host:port"`` (empty: gaps cannot be recovered and are
    given up after the retries); ``session``: expected MoldUDP64 session (empty: the first packet's);
    ``start``: ``"beginning"`` (recover the whole session from message 1) or ``"live"`` (from the first
    packet seen); ``file``: read this ITCH file instead of the network; ``decoder``: decoder backend name
    (``software``; ``card``: the gateware decoder on the ITCH decoder card, reached over ``link``);
    ``link``: the card's serial device (``/dev/ttyUSB0``, ``?baud=N``) or pyserial URL
    (``socket://127.0.0.1:7301`` for ``matchwire card sim --design itch``), only with ``decoder = "card"``;
    ``depth``: levels per side in book updates and statistics; ``retransmit_timeout`` (s), ``max_retries``,
    ``max_request`` (messages per re-request).
    """

    listen: Address = ("127.0.0.1", 0)
    multicast: Address | None = None
    multicast_interface: str = "127.0.0.1"
    retransmit: Address | None = None
    session: str = ""
    start: str = "beginning"
    file: str = ""
    decoder: str = "software"
    link: str = ""
    depth: int = 5
    retransmit_timeout: float = 0.25
    max_retries: int = 20
    max_request: int = 0xFFFE
    receive_buffer: int = 1 << 21

    @classmethod
    def from_raw(cls, raw: dict, actor: str = "feed/0") -> FeedSettings:
        """Read the ``[feed]`` table of a decoded cluster file; ValueError on a bad value."""
        table = actor_table(raw, "feed", actor)
        out = cls()
        if table.get("listen"):
            out.listen = parse_address(table["listen"], "feed.listen")
        if table.get("multicast"):
            out.multicast = parse_address(table["multicast"], "feed.multicast")
        out.multicast_interface = str(table.get("multicast_interface", out.multicast_interface))
        if table.get("retransmit"):
            out.retransmit = parse_address(table["retransmit"], "feed.retransmit")
        out.session = str(table.get("session", ""))
        out.start = str(table.get("start", out.start))
        if out.start not in ("beginning", "live"):
            raise ValueError(f"feed.start must be 'beginning' or 'live', not {out.start!r}")
        out.file = str(table.get("file", "")).replace("{actor}", actor.replace("/", "-"))
        out.decoder = str(table.get("decoder", out.decoder))
        out.depth = int(table.get("depth", out.depth))
        out.retransmit_timeout = float(table.get("retransmit_timeout", out.retransmit_timeout))
        out.max_retries = int(table.get("max_retries", out.max_retries))
        out.max_request = int(table.get("max_request", out.max_request))
        out.receive_buffer = int(table.get("receive_buffer", out.receive_buffer))
        out.link = str(table.get("link", ""))
        if out.decoder == "card":
            if not out.link:
                raise ValueError('feed.decoder = "card" needs feed.link: the card\'s serial device or '
                                 'a socket://HOST:PORT URL (matchwire card sim --design itch)')
            from host.card import split_link_url

            split_link_url(out.link)  # a malformed link fails here; the card itself is opened at start
        else:
            if out.link:
                raise ValueError(f'feed.link is only used with decoder = "card", not {out.decoder!r}')
            decoder_for(out.decoder)  # fail at start on an unknown backend
        return out


@dataclass(slots=True)
class _ReadFile:
    """Told to itself at start when the feed comes from a file."""

    path: str


Subscriber = pykka.ActorRef | Callable[[BookUpdate], Any]


class FeedHandlerActor(ClusterActor):
    """Reads an ITCH feed (MoldUDP64 over UDP, or a file) into books; tells subscribers of top changes."""

    def __init__(self, context: NodeContext, name: str) -> None:
        super().__init__(context, name)
        try:
            self.settings = FeedSettings.from_raw(context.config.raw, name)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{context.config.source}: {exc}") from exc
        s = self.settings
        try:
            # The card is identified here: a card that does not answer, or another design, stops the node
            # at start with the card's own message.
            decoder = decoder_for(s.decoder, link=s.link) if s.decoder == "card" else decoder_for(s.decoder)
        except CardError as exc:
            raise CardError(f"{name}: feed decoder {exc}") from exc
        self.handler = FeedHandler(
            decoder, session=s.session or None,
            first_sequence=1 if s.start == "beginning" else None, depth=s.depth,
            retransmit_timeout=s.retransmit_timeout, max_retries=s.max_retries, max_request=s.max_request,
            on_updates=self._tell_subscribers)
        self.subscribers: list[Subscriber] = []
        self.pump: UdpPump | None = None
        self.address: Address | None = None  # where the feed (unicast) and re-request answers arrive

    # -- life cycle ---------------------------------------------------------------------------------------

    def on_start(self) -> None:
        super().on_start()
        s = self.settings
        if s.file:
            self.actor_ref.tell(_ReadFile(s.file))
            return
        main = udp_socket(bind=s.listen)
        extra: tuple[socket.socket, ...] = ()
        try:
            main.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, s.receive_buffer)
            if s.multicast is not None:
                extra = (self._multicast_socket(s),)
        except BaseException:
            main.close()
            raise
        self.address = main.getsockname()
        self.pump = UdpPump(main, self.actor_ref.tell, f"{self.name}-udp", extra_sockets=extra)
        self.pump.start()

    @staticmethod
    def _multicast_socket(s: FeedSettings) -> socket.socket:
        assert s.multicast is not None
        group, port = s.multicast
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Several feed handlers on one host may join the same group.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, s.receive_buffer)
            sock.bind((group, port))  # bound to the group: only its datagrams arrive here
            membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(s.multicast_interface))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        except BaseException:
            sock.close()
            raise
        return sock

    def _close_decoder(self) -> None:
        close = getattr(self.handler.decoder, "close", None)  # the card decoder holds its link open
        if close is not None:
            close()

    def on_stop(self) -> None:
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        self._close_decoder()
        super().on_stop()

    def on_failure(self, exception_type: type, exception_value: BaseException, traceback: object) -> None:
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        self._close_decoder()
        super().on_failure(exception_type, exception_value, traceback)

    # -- input --------------------------------------------------------------------------------------------

    def handle_batch(self, batch: Batch) -> None:
        self.count("unexpected_batches")  # the feed handler listens to the feed, not to the books

    def on_other(self, message: object) -> object:
        kind = type(message)
        if kind is UdpDatagrams:
            self._on_datagrams(message)  # type: ignore[arg-type]
            return None
        if kind is _ReadFile:
            self._read_file(message.path)  # type: ignore[attr-defined]
            return None
        if isinstance(message, tuple) and message:
            return self._query(message)
        if message == "books":
            return self._books()
        if message == "feed_stats":
            return self.handler.all_stats()
        if message == "address":
            return self.address
        return None

    def _on_datagrams(self, message: UdpDatagrams) -> None:
        on_packet = self.handler.on_packet
        now = time.monotonic()
        for data, _address in message.datagrams:
            try:
                on_packet(data, now)
            except Exception:  # noqa: BLE001 - one bad packet must not take the feed down
                self.count("handler_errors")
                log.exception("%s: packet of %d bytes could not be handled", self.name, len(data))
        self._request(now)

    def _read_file(self, path: str) -> None:
        started = time.monotonic()
        try:
            count = self.handler.read_file(path)
        except OSError as exc:
            self.count("file_errors")
            log.error("%s: cannot read %s: %s", self.name, path, exc)
            return
        self.count("files_read")
        log.info("%s: read %d messages from %s in %.2f s", self.name, count, path, time.monotonic() - started)

    def on_tick(self, now: float) -> None:
        self._request(time.monotonic())

    def _request(self, now: float) -> None:
        for request in self.handler.poll(now):
            if self.pump is None or self.settings.retransmit is None:
                self.count("requests_unsent")  # no server to ask: the gap is given up after the retries
                continue
            self.pump.send(request, self.settings.retransmit)

    # -- output -------------------------------------------------------------------------------------------

    def _tell_subscribers(self, updates: list[BookUpdate]) -> None:
        if not self.subscribers:
            return
        dead = []
        for subscriber in self.subscribers:
            for update in updates:
                try:
                    if isinstance(subscriber, pykka.ActorRef):
                        subscriber.tell(update)
                    else:
                        subscriber(update)
                except pykka.ActorDeadError:
                    dead.append(subscriber)
                    break
                except Exception:  # noqa: BLE001 - a subscriber's bug is its own, not the feed's
                    self.count("subscriber_errors")
                    log.exception("%s: subscriber %r failed", self.name, subscriber)
                    break
        for subscriber in dead:
            self.subscribers.remove(subscriber)

    def _query(self, message: tuple) -> object:
        op = message[0]
        book = self.handler.book
        if op == "subscribe" and len(message) == 2:
            self.subscribers.append(message[1])
            return True
        if op == "unsubscribe" and len(message) == 2:
            if message[1] in self.subscribers:
                self.subscribers.remove(message[1])
            return True
        if op == "read_file" and len(message) == 2:
            self._read_file(str(message[1]))
            return self.handler.stats["messages"]
        if op == "bbo" and len(message) == 2:
            return book.bbo(message[1])
        if op == "depth" and len(message) in (2, 3):
            return book.depth(message[1], message[2] if len(message) == 3 else 1_000_000)
        return None

    def _books(self) -> dict[str, dict]:
        book = self.handler.book
        out = {}
        for symbol in book.symbols():
            stock = book.book(symbol)
            assert stock is not None
            out[symbol] = {"locate": stock.locate, "bbo": list(stock.bbo()), "orders": stock.order_count,
                           "depth": {side: [list(level) for level in levels]
                                     for side, levels in stock.depth(self.settings.depth).items()}}
        return out

    def stats(self) -> dict:
        out = super().stats()
        out.update(self.handler.all_stats())
        out["subscribers"] = len(self.subscribers)
        out["books"] = self._books()
        if self.address is not None:
            out["address"] = list(self.address)
        return out
