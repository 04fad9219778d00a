"""Host side of the card: the card protocol over a link, and a book that matches on the card.

* :class:`CardLink` speaks :mod:`exchange.card_protocol` over a :class:`host.framing.Link`:
  it identifies the card when opened (anything but a matchwire card of this major version is
  refused with a :class:`CardError` saying why), then executes matcher command records one at a
  time, each exactly once.
* :class:`HardwareBook` is the BookActor's book interface (``process``, ``bbo``, ``depth``) on a
  card: a :class:`host.matcher_driver.MatcherDriver` turns engine commands into records and the
  records' events back into engine events; the card runs the records.

Recovery (what happens on a bad line): every command frame carries a sequence number and the
card re-answers a repeated one from its replay memory without executing it again. The host
collects a command's ``EVENTS`` frames in index order until the record flagged LAST. A gap in
the indices (a frame lost or corrupted on the way back) or ``timeout`` seconds without a frame
(the command or the whole answer lost) makes it **resend the same command frame**; after
``retries`` resends it **fails the command** with a :class:`CardError`. A failed command's
outcome is unknown to the host (the card may have executed it), so the :class:`HardwareBook`
then refuses every later command with the same error rather than guess: in a cluster, the book
actor fails and its node reports it. Frames of other sequence numbers (answers to duplicates
the host no longer waits for) are counted in :attr:`CardLink.stats` and dropped.

The same code drives a board (``/dev/ttyUSB0``) and the simulated card
(``socket://127.0.0.1:PORT`` served by ``matchwire card sim``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import parse_qs

import serial

from exchange.card_protocol import (
    CARD_BAUD,
    ERROR_LAYOUT,
    SEQ_MODULUS,
    CardError,
    CardIdentity,
    CardStatus,
    ErrorCode,
    FrameType,
    command_payload,
    parse_events_payload,
)
from exchange.engine import BookProfile
from exchange.instruments import Instrument
from exchange.layout import LayoutError
from exchange.matcher_format import CommandRecord, EventRecord, MatcherConfig
from exchange.orders import BasePriceSet, Command, Event, SetBasePrice, Side
from exchange.recent_ids import RecentOrderIds
from host.framing import Frame, Link, LinkTimeout
from host.matcher_driver import MatcherDriver, MatcherDriverError

__all__ = [
    "CardError", "CardLink", "CardLinkBase", "CardLinkStats", "HardwareBook", "initial_base", "open_link",
    "split_link_url",
]

DEFAULT_TIMEOUT = 2.0
DEFAULT_RETRIES = 5


def split_link_url(url: str) -> tuple[str, int]:
    """(pyserial URL or device path, baud rate) of a card link: a device path may end with
    ``?baud=N`` (default :data:`CARD_BAUD`); ValueError for anything else after the ``?``."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"card link must be a non-empty string, not {url!r}")
    baud = CARD_BAUD
    if "://" not in url and "?" in url:
        url, query = url.split("?", 1)
        params = parse_qs(query, keep_blank_values=True)
        unknown = set(params) - {"baud"}
        if unknown or not params:
            raise ValueError(f"card link {url!r}: unknown options {sorted(unknown) or [query]} (only baud=N)")
        try:
            baud = int(params["baud"][-1])
        except ValueError:
            raise ValueError(f"card link {url!r}: baud must be an integer, not {params['baud'][-1]!r}") from None
        if baud <= 0:
            raise ValueError(f"card link {url!r}: baud must be positive, not {baud}")
    return url, baud


def open_link(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> Link:
    """Open a framed link to a card: a pyserial URL (``socket://HOST:PORT``, ``loop://``, ...) or
    a serial device path, optionally with ``?baud=N`` (default :data:`CARD_BAUD`)."""
    url, baud = split_link_url(url)
    return Link(url, baudrate=baud, timeout=timeout)


@dataclass
class CardLinkStats:
    """What recovery cost so far: resends by cause, frames dropped as stale or malformed."""

    commands: int = 0
    resends_timeout: int = 0
    resends_gap: int = 0
    stale_frames: int = 0
    malformed_frames: int = 0
    failed: int = 0
    bad_frames: dict[str, int] = field(default_factory=dict)

    @property
    def resends(self) -> int:
        return self.resends_timeout + self.resends_gap


class CardLinkBase:
    """What every card's link does before its own protocol: opening with identification, lifecycle,
    register requests (identification, status) with resends, and counting bad and stale frames.

    A subclass names its card in :attr:`card_name` and identifies it in :meth:`_identify` (reading the
    register with :meth:`_identify_payload` and refusing anything else with a :class:`CardError`).
    ``timeout`` is the longest silence tolerated while waiting for an answer before the frame is sent
    again; ``retries`` bounds the resends of one frame.
    """

    card_name = "card"

    def __init__(self, link: Link | str, *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        self.url = link if isinstance(link, str) else str(getattr(link.port, "port", None) or "the link")
        try:
            self.link = open_link(link, timeout=timeout) if isinstance(link, str) else link
        except (serial.SerialException, OSError) as exc:
            raise CardError(f"{self.card_name} at {self.url}: {exc}") from exc
        self.timeout = float(timeout)
        self.retries = retries
        self.stats = CardLinkStats()
        self.link.on_bad_frame = self._bad_frame
        try:
            self._identify()
        except BaseException:
            self.close()
            raise

    def _identify(self) -> None:
        raise NotImplementedError

    # -- lifecycle

    def close(self) -> None:
        """Close the link (idempotent)."""
        self.link.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bad_frame(self, bad: object) -> None:
        name = getattr(getattr(bad, "error", None), "value", "bad")
        self.stats.bad_frames[name] = self.stats.bad_frames.get(name, 0) + 1

    # -- requests answered from registers

    def _request(self, ask: FrameType, answer: FrameType, what: str) -> Frame:
        for _attempt in range(self.retries + 1):
            self.link.send_frame(ask)
            deadline = time.monotonic() + self.timeout
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    frame = self.link.recv_frame(timeout=remaining)
                except LinkTimeout:
                    break
                if frame.type == answer:
                    return frame
                self.stats.stale_frames += 1
        raise CardError(f"no {what} answer from the card at {self.url} after {self.retries + 1} attempts "
                        f"of {self.timeout:g} s: is it a matchwire card, powered, at the right baud rate?")

    def _identify_payload(self) -> bytes:
        """The identification register's bytes (after dropping whatever was half received)."""
        try:
            self.link.resync()
        except (serial.SerialException, OSError) as exc:
            raise CardError(f"card at {self.url}: {exc}") from exc
        return self._request(FrameType.IDENTIFY, FrameType.IDENT, "identification").payload

    def status(self) -> CardStatus:
        """Read the card's counters (frames good and rejected, requests, duplicates, errors, answers)."""
        return CardStatus.decode(self._request(FrameType.STATUS, FrameType.STATUS_R, "status").payload)

    def _error_frame(self, frame: Frame) -> tuple[dict[str, int], str] | None:
        """An ERROR frame's fields and its code's name; None (counted as malformed) when unreadable."""
        try:
            err = ERROR_LAYOUT.unpack(frame.payload)
        except LayoutError:
            self.stats.malformed_frames += 1
            return None
        try:
            name = ErrorCode(err["code"]).name
        except ValueError:
            name = f"code {err['code']}"
        return err, name


class CardLink(CardLinkBase):
    """The matcher card's protocol over a framed link (an open :class:`Link` or a URL for :func:`open_link`).

    Opening identifies the card (:attr:`identity`, :attr:`config`) and refuses anything else with
    a :class:`CardError`. ``timeout`` is the longest silence tolerated while waiting for an
    answer before the frame is sent again; ``retries`` bounds the resends of one frame.
    ``expect_config``, when given, must equal the card's matcher configuration.
    """

    def __init__(self, link: Link | str, *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 expect_config: MatcherConfig | None = None) -> None:
        self._expect_config = expect_config
        super().__init__(link, timeout=timeout, retries=retries)
        self.next_seq = self.identity.next_seq

    def _identify(self) -> None:
        self.identity = self.identify()
        self.identity.check()
        try:
            self.config = self.identity.matcher_config()
        except ValueError as exc:
            raise CardError(f"card at {self.url} announces an invalid matcher configuration: {exc}") from None
        if self._expect_config is not None and self._expect_config != self.config:
            raise CardError(f"card at {self.url} holds a matcher of {self.config}, expected {self._expect_config}")

    def identify(self) -> CardIdentity:
        """Read the identification register (after dropping whatever was half received)."""
        return CardIdentity.decode(self._identify_payload())

    # -- commands

    def execute(self, record: CommandRecord) -> list[EventRecord]:
        """Run one command record on the card, exactly once; returns its burst of event records.

        Raises :class:`CardError` when no complete answer arrived after ``retries`` resends or
        the card rejected the frame (the command's outcome is then unknown).
        """
        cfg = self.config
        seq = self.next_seq
        payload = command_payload(seq, cfg, cfg.encode_command(record))
        self.stats.commands += 1
        sends = 0
        records: list[bytes] = []
        expected = 0  # next frame index wanted; -1: waiting for a fresh answer from index 0

        def resend(cause: str) -> None:
            nonlocal sends, records, expected
            if sends > self.retries:
                self.stats.failed += 1
                raise CardError(f"card at {self.url}: no complete answer to command seq {seq} ({record}) after "
                                f"{sends} sends ({cause}); the command may or may not have run")
            sends += 1
            if cause == "gap":
                self.stats.resends_gap += 1
            elif sends > 1:
                self.stats.resends_timeout += 1
            records = []
            expected = 0 if cause != "gap" else -1
            self.link.send_frame(FrameType.COMMAND, payload)

        resend("first")
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise LinkTimeout
                frame = self.link.recv_frame(timeout=remaining)
            except LinkTimeout:
                resend(f"silent for {self.timeout:g} s")
                deadline = time.monotonic() + self.timeout
                continue
            deadline = time.monotonic() + self.timeout  # the card is alive
            if frame.type == FrameType.ERROR:
                self._error(frame, seq)
                continue
            if frame.type != FrameType.EVENTS:
                self.stats.stale_frames += 1
                continue
            try:
                fseq, index, chunk = parse_events_payload(frame.payload, cfg)
            except ValueError:
                self.stats.malformed_frames += 1
                continue
            if fseq != seq:
                self.stats.stale_frames += 1
                continue
            if index == 0 and expected != 0:  # a fresh answer (to a resend) starts over
                records, expected = [], 0
            if index != expected:
                if index > expected >= 0:  # a frame went missing: ask again, then wait for index 0
                    resend("gap")
                else:  # a repeated frame, or the rest of an answer being superseded
                    self.stats.stale_frames += 1
                continue
            records.extend(chunk)
            expected += 1
            try:
                burst = [cfg.decode_event(r) for r in records[-len(chunk):]]
            except LayoutError as exc:
                raise CardError(f"card at {self.url}: undecodable event record for seq {seq}: {exc}") from None
            if any(r.last for r in burst[:-1]):
                raise CardError(f"card at {self.url}: LAST flag inside an EVENTS frame for seq {seq}")
            if burst[-1].last:
                self.next_seq = (seq + 1) % SEQ_MODULUS
                return [cfg.decode_event(r) for r in records]

    def _error(self, frame: Frame, seq: int) -> None:
        parsed = self._error_frame(frame)
        if parsed is None:
            return
        err, name = parsed
        if err["code"] == ErrorCode.BAD_SEQUENCE and err["seq"] != seq:
            self.stats.stale_frames += 1  # a late duplicate of an older command: rightly refused
            return
        raise CardError(f"card at {self.url} refused command seq {seq}: {name} "
                        f"(frame type 0x{err['frame_type']:02x}, card expects seq {err['expected']})")


def initial_base(instrument: Instrument) -> int | None:
    """Where a card book's price window goes when it opens: the reference price, else the middle
    of the band, on the tick grid; None when the instrument has neither."""
    tick = instrument.tick_size
    if instrument.reference_price is not None:
        price = instrument.reference_price
    elif instrument.band is not None:
        price = (instrument.band[0] + instrument.band[1]) // 2
    else:
        return None
    return max(tick, price // tick * tick)


class HardwareBook:
    """One instrument's book on a card: the BookActor's book interface over a :class:`CardLink`.

    Opening resets the card's book and, when the instrument has a ``reference_price`` (or a
    ``band``), places the price window around it without reporting an event, so the book's
    events are numbered as a software book's would be. Without either, the window stays unset
    until a ``set_base`` command (orders are rejected until then, as with the hardware profile
    of the reference engine).

    What the gateware lacks is rejected by the driver with reason ``unsupported`` (see
    :class:`~host.matcher_driver.MatcherDriver`); prices outside the window are rejected
    ``price_outside_window``. ``snapshot``/``restore`` are refused: a card book cannot be
    journaled (run it with ``[durability] enabled = false``).
    """

    def __init__(self, instrument: Instrument, link: CardLink | Link | str, *, profile: BookProfile | None = None,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES) -> None:
        self.card = link if isinstance(link, CardLink) else CardLink(link, timeout=timeout, retries=retries)
        self.instrument = instrument
        self.symbol = instrument.symbol
        self._failed: str | None = None
        try:
            self.driver = MatcherDriver(instrument, self.card.config, profile)
            self._run_steps(self.driver.reset_steps())
            base = initial_base(instrument)
            if base is not None:
                events = self.driver.process(SetBasePrice(self.symbol, base), self.card.execute)
                if not events or not isinstance(events[-1], BasePriceSet):
                    raise CardError(f"card at {self.card.url}: could not place the {self.symbol} price window "
                                    f"at {base}: {events}")
                self.driver.seq = 0  # the window is configuration, not an event of the book
        except BaseException:
            self.card.close()
            raise

    def _run_steps(self, steps) -> None:  # noqa: ANN001
        try:
            record = next(steps)
            while True:
                record = steps.send(self.card.execute(record))
        except StopIteration:
            pass

    # -- the book interface

    def remember_ids(self, window: RecentOrderIds) -> None:
        """The duplicate rule's ids in ``window`` (see :meth:`host.matcher_driver.MatcherDriver.remember_ids`)."""
        self.driver.remember_ids(window)

    @property
    def seq(self) -> int:
        """The last event sequence number the book gave out."""
        return self.driver.seq

    @property
    def config(self) -> MatcherConfig:
        return self.card.config

    def process(self, command: Command) -> list[Event]:
        """Apply one command on the card; its events, as the reference engine would give them."""
        if self._failed is not None:
            raise CardError(f"{self.symbol}: the card book is out of service: {self._failed}")
        try:
            return self.driver.process(command, self.card.execute)
        except (CardError, MatcherDriverError, serial.SerialException, OSError) as exc:
            self._failed = str(exc)
            raise CardError(f"{self.symbol}: {exc}") from exc

    def bbo(self) -> tuple[int | None, int, int | None, int]:
        """(best bid, its qty, best ask, its qty), from the host's view of the card's book."""
        return self.driver.bbo()

    def depth(self, levels: int | None = None) -> dict[str, list[tuple[int, int, int]]]:
        """Visible depth by price level, best first."""
        return self.driver.depth(levels)

    def orders_at(self, side: Side, price: int) -> list[dict]:
        """The orders at one price in priority order."""
        return self.driver.orders_at(side, price)

    def snapshot(self) -> dict:
        """Refused: the card's book cannot be saved (see the class documentation)."""
        raise CardError(f"{self.symbol}: a card book cannot be snapshotted or journaled; run nodes with "
                        "backend = \"card\" with [durability] enabled = false")

    def restore(self, state: dict) -> None:
        """Refused, as :meth:`snapshot`."""
        self.snapshot()

    def close(self) -> None:
        """Close the link to the card."""
        self.card.close()
