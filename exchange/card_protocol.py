"""The card protocol: what host and card say to each other inside link frames (one definition).

The link (:mod:`exchange.framing_spec`) carries frames ``type | payload`` with a CRC; this module
assigns the frame types and lays out their payloads. The gateware (``hdl.card``), the host
(``host.card``) and the benches all import it; nothing here is redefined elsewhere.

Host -> card:

=============  ======  ==================================================================
frame type     value   payload
=============  ======  ==================================================================
``IDENTIFY``   0x01    empty (anything is ignored): read the identification register
``COMMAND``    0x02    ``seq`` (u16) then exactly one matcher command record
``STATUS``     0x03    empty: read the card's counters
=============  ======  ==================================================================

Card -> host:

=============  ======  ==================================================================
``IDENT``      0x81    :data:`IDENT_LAYOUT`: magic, version, the matcher's sizes, next seq
``EVENTS``     0x82    :data:`EVENTS_HEADER` (``seq``, ``index``) then 1..``records_per_frame``
                       event records; the record flagged LAST ends the command's burst
``STATUS_R``   0x83    :data:`STATUS_LAYOUT`: frame and command counters
``ERROR``      0x8F    :data:`ERROR_LAYOUT`: a frame the card could not act on, and why
=============  ======  ==================================================================

Commands and exactly-once execution:

* Every ``COMMAND`` frame carries a 16-bit sequence number. The card executes a command whose
  ``seq`` is the one after the last executed (any ``seq`` after a reset) and answers with the
  command's whole burst of event records, split over ``EVENTS`` frames numbered from
  ``index`` 0, every frame naming the command's ``seq``.
* The card keeps the last command's burst (its replay memory holds the longest possible burst,
  ``max_orders + 2`` records). A ``COMMAND`` with the *same* ``seq`` as the last one is a
  duplicate: it is not executed again, the stored burst is sent again from index 0.
* Any other ``seq`` is answered ``ERROR`` / ``BAD_SEQUENCE`` (``expected`` names the next
  ``seq``), so a stale frame can never run twice.
* ``IDENT`` carries ``next_seq``: a host (re)opening a card continues from there.

So the host's rule is simple: send a command, collect its ``EVENTS`` frames in index order up
to the LAST record; on a gap in the indices or a silence longer than its timeout, send the very
same frame again. Lost, corrupted, truncated or duplicated frames in either direction cost time,
never a lost or doubled command.

Records inside frames are the matcher's own records (:mod:`exchange.matcher_format`), bytes as
packed by ``MatcherConfig.encode_command`` / ``decode_event``: little-endian, first field first,
which is exactly the bit vector the gateware's stream payload carries. Several event records
ride in one ``EVENTS`` frame (``records_per_frame``, from ``IDENT``); a command frame holds
one record, since the host's driver needs a record's burst before it can choose the next.

Pure standard library plus :mod:`exchange`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from exchange.framing_spec import MAX_PAYLOAD
from exchange.layout import Layout, uint
from exchange.matcher_format import MatcherConfig

__all__ = [
    "CARD_BAUD",
    "CARD_MAX_PAYLOAD",
    "DEFAULT_RECORDS_PER_FRAME",
    "ERROR_LAYOUT",
    "EVENTS_HEADER",
    "IDENT_LAYOUT",
    "MAGIC",
    "MATCHER_PRESETS",
    "SEQ_MODULUS",
    "STATUS_LAYOUT",
    "VERSION",
    "DECODE_HEADER",
    "ITCH_CARD_MAX_PACKET",
    "ITCH_IDENT_LAYOUT",
    "ITCH_MAGIC",
    "ITCH_MAX_RECORDS_PER_FRAME",
    "ITCH_RECORDS_PER_FRAME",
    "ITCH_VERSION",
    "RECORDS_HEADER",
    "CardError",
    "CardIdentity",
    "ItchCardIdentity",
    "CardStatus",
    "ErrorCode",
    "FrameType",
    "command_payload",
    "decode_payload",
    "events_payload",
    "matcher_preset",
    "parse_command_payload",
    "parse_events_payload",
    "parse_records_payload",
    "records_payload",
    "replay_depth_for",
]

#: The identification register's magic value: the bytes ``MWCD`` (little-endian u32).
MAGIC = int.from_bytes(b"MWCD", "little")
#: Design version (major, minor). A host refuses a card of another major version; the minor
#: version counts compatible gateware changes and is shown, not checked.
VERSION = (1, 0)
#: Default UART speed of the boards (host and gateware agree on it before any frame can pass).
CARD_BAUD = 1_000_000
#: Largest frame payload the card accepts (a command frame is 2 + record bytes).
CARD_MAX_PAYLOAD = 64
#: Event records per ``EVENTS`` frame unless the card says otherwise.
DEFAULT_RECORDS_PER_FRAME = 16
SEQ_MODULUS = 1 << 16


class FrameType(IntEnum):
    """Link frame types of the card protocol."""

    IDENTIFY = 0x01
    COMMAND = 0x02
    STATUS = 0x03
    DECODE = 0x04  # the ITCH decoder card (ITCH_MAGIC): decode one packet of message blocks
    IDENT = 0x81
    EVENTS = 0x82
    STATUS_R = 0x83
    RECORDS = 0x84  # the ITCH decoder card's answer to DECODE
    ERROR = 0x8F


class ErrorCode(IntEnum):
    """Why the card answered ``ERROR``."""

    UNKNOWN_TYPE = 1  # not a host -> card frame type
    BAD_LENGTH = 2  # a COMMAND frame whose payload is not seq + one record
    BAD_SEQUENCE = 3  # neither the last executed seq (a duplicate) nor the next one


#: ``IDENT`` payload: the identification register.
IDENT_LAYOUT = Layout("card_ident", [
    uint("magic", 32),
    uint("version_major", 8),
    uint("version_minor", 8),
    uint("next_seq", 16),
    uint("fresh", 8),  # 1: nothing executed since reset (any seq is accepted)
    uint("records_per_frame", 8),
    uint("max_orders", 32),
    uint("window_ticks", 32),
    uint("qty_width", 8),
    uint("id_width", 8),
    uint("group_width", 8),
    uint("reserved", 8),
    uint("replay_depth", 32),
    uint("clock_hz", 32),  # 0: a simulation
])

#: ``EVENTS`` payload header; the event records follow.
EVENTS_HEADER = Layout("card_events", [uint("seq", 16), uint("index", 16)])

#: ``STATUS_R`` payload: the frame decoder's wrapping 16-bit counters and the card's own.
STATUS_LAYOUT = Layout("card_status", [
    uint("frames_good", 16),
    uint("frames_crc", 16),
    uint("frames_oversize", 16),
    uint("frames_truncated", 16),
    uint("commands", 32),  # command records executed
    uint("duplicates", 32),  # duplicate COMMAND frames answered from the replay memory
    uint("errors", 32),  # ERROR frames sent
    uint("events", 32),  # event records produced by the matcher
])

#: ``ERROR`` payload.
ERROR_LAYOUT = Layout("card_error", [
    uint("code", 8),
    uint("frame_type", 8),
    uint("seq", 16),  # the offending COMMAND's seq (0 for other frames)
    uint("expected", 16),  # the seq the card would execute next
])

_SEQ = Layout("card_seq", [uint("seq", 16)])


class CardError(RuntimeError):
    """The card cannot be used, or did not answer a command: the message says what and why."""


@dataclass(frozen=True)
class CardIdentity:
    """A decoded identification register."""

    magic: int
    version_major: int
    version_minor: int
    next_seq: int
    fresh: bool
    records_per_frame: int
    max_orders: int
    window_ticks: int
    qty_width: int
    id_width: int
    group_width: int
    replay_depth: int
    clock_hz: int

    @classmethod
    def decode(cls, payload: bytes) -> CardIdentity:
        """Decode an ``IDENT`` payload (:class:`CardError` when it is too short)."""
        if len(payload) < IDENT_LAYOUT.size:
            raise CardError(f"identification answer of {len(payload)} bytes, expected {IDENT_LAYOUT.size}: "
                            "not a matchwire card")
        values = IDENT_LAYOUT.unpack(payload)
        values.pop("reserved")
        values["fresh"] = bool(values["fresh"])
        return cls(**values)

    def encode(self) -> bytes:
        """The ``IDENT`` payload (what the gateware sends; used by tests)."""
        return IDENT_LAYOUT.pack(magic=self.magic, version_major=self.version_major,
                                 version_minor=self.version_minor, next_seq=self.next_seq, fresh=int(self.fresh),
                                 records_per_frame=self.records_per_frame, max_orders=self.max_orders,
                                 window_ticks=self.window_ticks, qty_width=self.qty_width, id_width=self.id_width,
                                 group_width=self.group_width, reserved=0, replay_depth=self.replay_depth,
                                 clock_hz=self.clock_hz)

    def check(self) -> None:
        """Refuse anything but a matchwire card of this major version (:class:`CardError`)."""
        if self.magic == ITCH_MAGIC:
            raise CardError("this is the matchwire ITCH decoder card "
                            f"(magic {ITCH_MAGIC.to_bytes(4, 'little').decode()!r}), not a matcher card "
                            f"({MAGIC.to_bytes(4, 'little').decode()!r}): load the matcher design")
        if self.magic != MAGIC:
            raise CardError(f"not a matchwire card: identification magic 0x{self.magic:08x}, expected "
                            f"0x{MAGIC:08x} ({MAGIC.to_bytes(4, 'little').decode()!r})")
        if self.version_major != VERSION[0]:
            raise CardError(f"card design version {self.version_major}.{self.version_minor} is not supported by "
                            f"this host (needs {VERSION[0]}.x): rebuild the bitstream or update the host")

    def matcher_config(self) -> MatcherConfig:
        """The matcher's sizes as announced (ValueError if they are not a valid configuration)."""
        return MatcherConfig(max_orders=self.max_orders, window_ticks=self.window_ticks, qty_width=self.qty_width,
                             id_width=self.id_width, group_width=self.group_width)

    @property
    def version(self) -> str:
        return f"{self.version_major}.{self.version_minor}"


@dataclass(frozen=True)
class CardStatus:
    """The card's counters (``STATUS_R``)."""

    frames_good: int
    frames_crc: int
    frames_oversize: int
    frames_truncated: int
    commands: int
    duplicates: int
    errors: int
    events: int

    @classmethod
    def decode(cls, payload: bytes) -> CardStatus:
        if len(payload) < STATUS_LAYOUT.size:
            raise CardError(f"status answer of {len(payload)} bytes, expected {STATUS_LAYOUT.size}")
        return cls(**STATUS_LAYOUT.unpack(payload))


def replay_depth_for(config: MatcherConfig) -> int:
    """Event records of the longest burst one command can produce: a taker (or a re-entering
    modify) trades with every other resting order, then rests or is cancelled; a modify also
    reports its removal first."""
    return config.max_orders + 2


def command_payload(seq: int, config: MatcherConfig, record: bytes) -> bytes:
    """A ``COMMAND`` payload: ``seq`` and one packed command record."""
    if not 0 <= seq < SEQ_MODULUS:
        raise ValueError(f"seq must be 0..{SEQ_MODULUS - 1}, got {seq}")
    if len(record) != config.command_layout.size:
        raise ValueError(f"command record of {len(record)} bytes, the matcher takes {config.command_layout.size}")
    return _SEQ.pack(seq=seq) + record


def parse_command_payload(payload: bytes, config: MatcherConfig) -> tuple[int, bytes]:
    """(seq, record bytes) of a ``COMMAND`` payload (ValueError on a wrong length)."""
    if len(payload) != 2 + config.command_layout.size:
        raise ValueError(f"command payload of {len(payload)} bytes, expected {2 + config.command_layout.size}")
    return _SEQ.unpack(payload)["seq"], payload[2:]


def events_payload(seq: int, index: int, config: MatcherConfig, records: list[bytes]) -> bytes:
    """An ``EVENTS`` payload (what the gateware sends; used by tests)."""
    return EVENTS_HEADER.pack(seq=seq, index=index) + b"".join(records)


def parse_events_payload(payload: bytes, config: MatcherConfig) -> tuple[int, int, list[bytes]]:
    """(seq, index, event record bytes) of an ``EVENTS`` payload; ValueError when malformed."""
    size = config.event_layout.size
    body = len(payload) - EVENTS_HEADER.size
    if body <= 0 or body % size:
        raise ValueError(f"events payload of {len(payload)} bytes is not a header and whole {size}-byte records")
    header = EVENTS_HEADER.unpack(payload)
    records = [payload[o:o + size] for o in range(EVENTS_HEADER.size, len(payload), size)]
    return header["seq"], header["index"], records


#: Matcher sizes by name: ``default`` (the ULX3S-85F card and ``matchwire card sim``),
#: ``medium`` (the iCESugar-Pro's ECP5-25F) and ``small`` (quick simulations).
MATCHER_PRESETS: dict[str, MatcherConfig] = {
    "default": MatcherConfig(),
    "medium": MatcherConfig(max_orders=1024, window_ticks=256, qty_width=32, id_width=16, group_width=32),
    "small": MatcherConfig(max_orders=64, window_ticks=32, qty_width=32, id_width=8, group_width=8),
}


def matcher_preset(name: str) -> MatcherConfig:
    """A named matcher configuration (ValueError naming the choices for an unknown one)."""
    try:
        return MATCHER_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown matcher preset {name!r}; choose from {', '.join(MATCHER_PRESETS)}") from None


assert 2 + max(c.command_layout.size for c in MATCHER_PRESETS.values()) <= CARD_MAX_PAYLOAD <= MAX_PAYLOAD


# -- the ITCH decoder card (issue #9): the same link, frame types and identification scheme ---------------
#
# A second card design runs ``hdl.itch.ItchDecoder`` behind the link (``hdl.itch_card.ItchCard``). It
# answers ``IDENTIFY`` and ``STATUS`` as the matcher card does, with its own magic so that neither host
# can mistake one card for the other, and adds:
#
# =============  ======  ==================================================================================
# ``DECODE``     0x04    :data:`DECODE_HEADER` (``seq``) then one packet of message blocks (a MoldUDP64
#                        body: ``length (u16 BE) | message`` ...), 0..:data:`ITCH_CARD_MAX_PACKET` bytes
# ``RECORDS``    0x84    :data:`RECORDS_HEADER` (``seq``, ``index``, ``count``, ``last``) then ``count``
#                        records of ``exchange.itch_record.ITCH_RECORD`` (66 bytes each, little-endian,
#                        first field first: the gateware's record payload as bytes)
# =============  ======  ==================================================================================
#
# The card decodes each ``DECODE`` frame as one packet (framing restarts at its first byte, as in the
# decoder) and answers with ``RECORDS`` frames numbered from ``index`` 0, each holding up to
# ``records_per_frame`` records; ``last`` is 1 on the final frame (an empty packet: one frame, count 0).
# Decoding has no side effects, so there is no replay memory and no sequence check: a repeated
# ``DECODE`` is simply decoded again. ``seq`` only lets the host tell a current answer from a late one.
# ``STATUS_R`` keeps :data:`STATUS_LAYOUT` with these meanings: ``commands`` = packets decoded,
# ``events`` = records sent, ``errors`` = ``ERROR`` frames, ``duplicates`` = 0.

#: The ITCH decoder card's magic: the bytes ``MWID``.
ITCH_MAGIC = int.from_bytes(b"MWID", "little")
#: Design version of the ITCH decoder card (major refused when different, as for the matcher card).
ITCH_VERSION = (1, 0)
#: ``DECODE`` payload header; the packet bytes follow.
DECODE_HEADER = Layout("card_decode", [uint("seq", 16)])
#: Largest packet one ``DECODE`` frame carries (the link's payload limit minus the header).
ITCH_CARD_MAX_PACKET = MAX_PAYLOAD - DECODE_HEADER.size
#: ``RECORDS`` payload header; ``count`` records follow.
RECORDS_HEADER = Layout("card_records", [uint("seq", 16), uint("index", 16), uint("count", 8), uint("last", 8)])
#: Records per ``RECORDS`` frame that fit in a link frame, and the default.
ITCH_MAX_RECORDS_PER_FRAME = (MAX_PAYLOAD - RECORDS_HEADER.size) // 66
ITCH_RECORDS_PER_FRAME = ITCH_MAX_RECORDS_PER_FRAME

#: ``IDENT`` payload of the ITCH decoder card. Same size as :data:`IDENT_LAYOUT`, magic and version in
#: the same places, so a host of either card reads the other's register and refuses it by its magic.
ITCH_IDENT_LAYOUT = Layout("itch_card_ident", [
    uint("magic", 32),
    uint("version_major", 8),
    uint("version_minor", 8),
    uint("lanes", 8),  # decoder width, bytes per cycle
    uint("slots", 8),
    uint("records_per_frame", 8),
    uint("record_bytes", 8),  # ITCH_RECORD's size: the host refuses a card whose record differs
    uint("max_packet", 16),
    uint("clock_hz", 32),  # 0: a simulation
    uint("reserved0", 32),
    uint("reserved1", 32),
    uint("reserved2", 32),
    uint("reserved3", 16),
])
assert ITCH_IDENT_LAYOUT.size == IDENT_LAYOUT.size


@dataclass(frozen=True)
class ItchCardIdentity:
    """A decoded identification register of the ITCH decoder card."""

    magic: int
    version_major: int
    version_minor: int
    lanes: int
    slots: int
    records_per_frame: int
    record_bytes: int
    max_packet: int
    clock_hz: int

    @classmethod
    def decode(cls, payload: bytes) -> ItchCardIdentity:
        """Decode an ``IDENT`` payload (:class:`CardError` when it is too short)."""
        if len(payload) < ITCH_IDENT_LAYOUT.size:
            raise CardError(f"identification answer of {len(payload)} bytes, expected {ITCH_IDENT_LAYOUT.size}: "
                            "not a matchwire card")
        values = ITCH_IDENT_LAYOUT.unpack(payload)
        for name in ("reserved0", "reserved1", "reserved2", "reserved3"):
            values.pop(name)
        return cls(**values)

    def encode(self) -> bytes:
        """The ``IDENT`` payload (what the gateware sends; used by tests)."""
        return ITCH_IDENT_LAYOUT.pack(magic=self.magic, version_major=self.version_major,
                                      version_minor=self.version_minor, lanes=self.lanes, slots=self.slots,
                                      records_per_frame=self.records_per_frame, record_bytes=self.record_bytes,
                                      max_packet=self.max_packet, clock_hz=self.clock_hz, reserved0=0,
                                      reserved1=0, reserved2=0, reserved3=0)

    def check(self, record_bytes: int) -> None:
        """Refuse anything but an ITCH decoder card of this major version with this record size."""
        if self.magic == MAGIC:
            raise CardError(f"this is the matchwire matcher card (magic {MAGIC.to_bytes(4, 'little').decode()!r}), "
                            f"not the ITCH decoder card ({ITCH_MAGIC.to_bytes(4, 'little').decode()!r}): "
                            "load the ITCH decoder design (matchwire card sim --design itch)")
        if self.magic != ITCH_MAGIC:
            raise CardError(f"not a matchwire ITCH decoder card: identification magic 0x{self.magic:08x}, expected "
                            f"0x{ITCH_MAGIC:08x} ({ITCH_MAGIC.to_bytes(4, 'little').decode()!r})")
        if self.version_major != ITCH_VERSION[0]:
            raise CardError(f"ITCH decoder card design version {self.version} is not supported by this host "
                            f"(needs {ITCH_VERSION[0]}.x): rebuild the bitstream or update the host")
        if self.record_bytes != record_bytes:
            raise CardError(f"ITCH decoder card sends {self.record_bytes}-byte records, this host reads "
                            f"{record_bytes}-byte ones: the card and host disagree on the record layout")
        if not 1 <= self.records_per_frame <= ITCH_MAX_RECORDS_PER_FRAME or self.max_packet < 1:
            raise CardError(f"ITCH decoder card announces {self.records_per_frame} records per frame and "
                            f"{self.max_packet}-byte packets: not a usable configuration")

    @property
    def version(self) -> str:
        return f"{self.version_major}.{self.version_minor}"


def decode_payload(seq: int, packet: bytes) -> bytes:
    """A ``DECODE`` payload: ``seq`` and one packet of message blocks."""
    if not 0 <= seq < SEQ_MODULUS:
        raise ValueError(f"seq must be 0..{SEQ_MODULUS - 1}, got {seq}")
    if len(packet) > ITCH_CARD_MAX_PACKET:
        raise ValueError(f"packet of {len(packet)} bytes, a DECODE frame carries at most {ITCH_CARD_MAX_PACKET}")
    return DECODE_HEADER.pack(seq=seq) + bytes(packet)


def records_payload(seq: int, index: int, records: list[bytes], last: bool) -> bytes:
    """A ``RECORDS`` payload (what the gateware sends; used by tests)."""
    return RECORDS_HEADER.pack(seq=seq, index=index, count=len(records), last=int(last)) + b"".join(records)


def parse_records_payload(payload: bytes, record_bytes: int) -> tuple[int, int, bool, list[bytes]]:
    """(seq, index, last, record bytes) of a ``RECORDS`` payload; ValueError when malformed."""
    if len(payload) < RECORDS_HEADER.size:
        raise ValueError(f"records payload of {len(payload)} bytes is shorter than its header")
    header = RECORDS_HEADER.unpack(payload)
    count = header["count"]
    if len(payload) != RECORDS_HEADER.size + count * record_bytes or header["last"] > 1:
        raise ValueError(f"records payload of {len(payload)} bytes does not hold {count} records of {record_bytes}")
    body = payload[RECORDS_HEADER.size:]
    records = [body[o:o + record_bytes] for o in range(0, len(body), record_bytes)]
    return header["seq"], header["index"], bool(header["last"]), records
