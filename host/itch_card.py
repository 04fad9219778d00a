"""Host side of the ITCH decoder card: the ``card`` feed decoder over the card link.

* :class:`ItchCardLink` speaks the decoder card's part of :mod:`exchange.card_protocol` over a
  :class:`host.framing.Link` (opened with :func:`host.card.open_link`: a serial device path, optionally
  ``?baud=N``, or any pyserial URL such as ``socket://127.0.0.1:PORT`` for ``matchwire card sim
  --design itch``). Opening reads the identification register and refuses anything but an ITCH
  decoder card of this major version (the matcher card included) with a :class:`CardError` saying
  what it found. :meth:`ItchCardLink.decode_packet` sends one ``DECODE`` frame and collects its
  ``RECORDS`` frames.
* :class:`CardFeedDecoder` is the :class:`~exchange.feed_decoder.FeedDecoder` on top: the feed
  handler's ``decoder = "card"`` with ``link = "..."``. It cuts a payload into packets the card takes
  (whole ITCH frames, at most ``max_packet`` bytes from the identification register) and turns the
  records back into exactly the software decoder's dicts (``exchange.itch_record.records_to_feed``).

Recovery: decoding has no side effect on the card, so the rule is simpler than for commands. A gap in
the ``RECORDS`` indices (a frame lost or damaged on the way back; asked once per missing frame) or
``timeout`` seconds without progress (the ``DECODE`` frame or the rest of the answer lost) -> send the
same ``DECODE`` frame again. Every answer to one ``seq`` is the same frames, so collection goes on
from the missing index with frames of whichever answer brings it; repeats are dropped, and so are
frames of another ``seq`` (answers the host stopped waiting for).
After ``retries`` resends the packet fails with a :class:`CardError`: the feed handler is told, never
given a partial answer. What recovery cost is in :attr:`ItchCardLink.stats`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from exchange.card_protocol import (
    SEQ_MODULUS,
    CardError,
    FrameType,
    ItchCardIdentity,
    decode_payload,
    parse_records_payload,
)
from exchange.itch_record import ITCH_RECORD, ItchStatus, records_to_feed, unpack_record
from exchange.layout import LayoutError
from host.card import DEFAULT_RETRIES, DEFAULT_TIMEOUT, CardLinkBase
from host.framing import Frame, Link, LinkTimeout

__all__ = ["CardFeedDecoder", "ItchCardLink", "split_packets"]


class ItchCardLink(CardLinkBase):
    """The ITCH decoder card's protocol over a framed link (an open :class:`Link` or a URL).

    Opening identifies the card (:attr:`identity`) and refuses anything else with a
    :class:`CardError`. ``timeout`` is the longest silence tolerated while waiting for an answer
    before the frame is sent again; ``retries`` bounds the resends of one frame. :attr:`stats`
    counts DECODE packets as ``commands``.
    """

    card_name = "ITCH decoder card"

    def __init__(self, link: Link | str, *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES) -> None:
        self.seq = 0
        super().__init__(link, timeout=timeout, retries=retries)

    def _identify(self) -> None:
        self.identity = self.identify()
        try:
            self.identity.check(ITCH_RECORD.size)
        except CardError as exc:
            raise CardError(f"card at {self.url}: {exc}") from None

    @property
    def max_packet(self) -> int:
        """Largest packet one ``DECODE`` frame carries, as the card announced it."""
        return self.identity.max_packet

    def identify(self) -> ItchCardIdentity:
        """Read the identification register (after dropping whatever was half received)."""
        return ItchCardIdentity.decode(self._identify_payload())

    # -- decoding

    def decode_packet(self, packet: bytes) -> list[dict[str, int]]:
        """One packet (at most :attr:`max_packet` bytes of message blocks) through the card: its records
        (raw integer fields, ``exchange.itch_record.unpack_record``), one per frame, in order.

        Raises :class:`CardError` when no complete answer arrived after ``retries`` resends.
        """
        seq = self.seq
        self.seq = (seq + 1) % SEQ_MODULUS
        payload = decode_payload(seq, packet)
        size = ITCH_RECORD.size
        self.stats.commands += 1
        sends = 0
        records: list[bytes] = []
        expected = 0  # next frame index wanted
        gap_asked = -1  # the index a gap resend was sent for (one resend per missing frame)

        def resend(cause: str) -> None:
            nonlocal sends
            if sends > self.retries:
                self.stats.failed += 1
                raise CardError(f"ITCH decoder card at {self.url}: no complete answer to packet seq {seq} "
                                f"({len(packet)} bytes) after {sends} sends ({cause})")
            sends += 1
            if cause == "gap":
                self.stats.resends_gap += 1
            elif sends > 1:
                self.stats.resends_timeout += 1
            self.link.send_frame(FrameType.DECODE, payload)

        # Every answer to this seq is the same records in the same frames (decoding is deterministic), so
        # frames of any answer, the first or one to a resend, continue the collection where it stands.
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
                gap_asked = -1
                deadline = time.monotonic() + self.timeout
                continue
            if frame.type == FrameType.ERROR:
                self._error(frame, seq)
                continue
            if frame.type != FrameType.RECORDS:
                self.stats.stale_frames += 1
                continue
            try:
                fseq, index, last, chunk = parse_records_payload(frame.payload, size)
            except (ValueError, LayoutError):
                self.stats.malformed_frames += 1
                continue
            if fseq != seq:
                self.stats.stale_frames += 1
                continue
            if index != expected:
                if index > expected and gap_asked != expected:  # a frame went missing: ask for the answer again
                    gap_asked = expected
                    resend("gap")
                else:  # a repeat (another answer to this seq), or a gap already asked about
                    self.stats.stale_frames += 1
                continue
            deadline = time.monotonic() + self.timeout  # progress: the card is alive
            records.extend(chunk)
            expected += 1
            if last:
                return [unpack_record(int.from_bytes(r, "little")) for r in records]

    def _error(self, frame: Frame, seq: int) -> None:
        parsed = self._error_frame(frame)
        if parsed is None:
            return
        err, name = parsed
        raise CardError(f"ITCH decoder card at {self.url} refused packet seq {seq}: {name} "
                        f"(frame type 0x{err['frame_type']:02x})")


def split_packets(payload: bytes, max_packet: int) -> Iterator[tuple[int, bytes, int]]:
    """Cut length-prefixed ITCH bytes into (offset, packet, frame length) for the card.

    A packet is a run of whole frames of at most ``max_packet`` bytes (a truncated tail is the last
    frame of the last packet, so the card sees the same truncation). A frame that alone is longer than
    ``max_packet`` (never a valid message: no ITCH message exceeds 50 bytes) comes alone, with its
    ``frame length`` (its length prefix) as the third item, and the caller must shorten it (see
    :class:`CardFeedDecoder`); for every other packet the third item is -1.
    """
    pos, end = 0, len(payload)
    start = 0
    while pos < end:
        stop = min(end, pos + 2 + int.from_bytes(payload[pos : pos + 2], "big")) if pos + 2 <= end else end
        if stop - pos > max_packet:
            if pos > start:
                yield start, payload[start:pos], -1
            yield pos, payload[pos:stop], int.from_bytes(payload[pos : pos + 2], "big")
            start = pos = stop
            continue
        if stop - start > max_packet:
            yield start, payload[start:pos], -1
            start = pos
        pos = stop
    if start < end or not payload:
        yield start, payload[start:end], -1


class CardFeedDecoder:
    """``FeedDecoder`` on the ITCH decoder card: ``decoder = "card"`` with ``link = URL`` in ``[feed]``.

    ``link`` is a device path (``/dev/ttyUSB0``, ``?baud=N``), a pyserial URL
    (``socket://127.0.0.1:PORT`` for ``matchwire card sim --design itch``), an open :class:`Link` or an
    :class:`ItchCardLink`. Opening identifies the card (refusing anything else with a
    :class:`CardError`). Every frame of a payload is decoded by the card; what the host adds is listed
    in docs/itch-hdl.md section 4 (skipped types decoded from their bytes, error wording, and frames
    longer than a ``DECODE`` frame, which are sent shortened).
    """

    name = "card"

    def __init__(self, link: ItchCardLink | Link | str, *, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES) -> None:
        self.card = link if isinstance(link, ItchCardLink) else ItchCardLink(link, timeout=timeout, retries=retries)
        self.oversize_frames = 0

    def decode(self, payload: bytes) -> list[dict]:
        """Decode every frame of ``payload`` on the card (see :class:`~exchange.feed_decoder.FeedDecoder`).

        Raises :class:`CardError` when the card does not answer (never a partial result)."""
        payload = bytes(payload)
        out: list[dict] = []
        for base, packet, length in split_packets(payload, self.card.max_packet):
            if length < 0:
                out.extend(records_to_feed(self.card.decode_packet(packet), packet, base))
                continue
            out.extend(records_to_feed([self._oversize(packet, length)], packet, base))
        return out

    def _oversize(self, frame: bytes, length: int) -> dict[str, int]:
        """A frame longer than a DECODE frame: the card classifies a shortened copy and the host puts the
        real length back. Whole, such a frame is BAD_LENGTH or UNKNOWN_TYPE by its type byte alone, so the
        card gets the type byte with a length prefix of 1; cut by the end of the payload, it is TRUNCATED,
        so the card gets a copy cut to fit and the host restores how many body bytes there were."""
        self.oversize_frames += 1
        whole = len(frame) == 2 + length
        short = b"\x00\x01" + frame[2:3] if whole else frame[: self.card.max_packet]
        records = self.card.decode_packet(short)
        if len(records) != 1:
            raise CardError(f"ITCH decoder card at {self.card.url}: {len(records)} records for one shortened frame")
        record = dict(records[0])
        expected = (ItchStatus.BAD_LENGTH, ItchStatus.UNKNOWN_TYPE) if whole else (ItchStatus.TRUNCATED,)
        if record["status"] not in expected:
            raise CardError(f"ITCH decoder card at {self.card.url}: status {record['status']} for a shortened "
                            f"frame, expected one of {[s.name for s in expected]}")
        record["length"] = length
        if not whole:
            record["detail"] = len(frame) - 2
        return record

    def close(self) -> None:
        """Close the link to the card."""
        self.card.close()
