"""The card top: host link -> command dispatch -> matcher -> event framing -> host link.

:class:`Card` is board independent: a byte stream in (``rx``) and a byte stream out (``tx``),
both the link's wire bytes (``00 | COBS(type | payload | CRC) | 00``). A board top
(``hdl.boards``) puts a UART and a clock in front of it; the simulated card
(``sim.card_sim``) serves the same two streams on a TCP port. The protocol spoken inside the
frames is :mod:`exchange.card_protocol`; summary::

    rx -> FrameDecoder (good frames only) -> dispatcher --IDENTIFY/STATUS/ERROR--> transmitter
                                                  |                                   ^
                                                  +-- COMMAND: seq check --> Matcher  |
                                                                               | o    |
                                                               replay memory <-+------+
    transmitter -> FrameEncoder -> tx

* The **dispatcher** takes one good frame at a time. ``IDENTIFY`` and ``STATUS`` are answered
  from registers; a ``COMMAND`` whose ``seq`` follows the last one is handed to the matcher, a
  repeat of the last ``seq`` is answered again from the replay memory without executing it, and
  anything else gets an ``ERROR``. It takes the next frame only when the answer has been sent,
  so commands run strictly one after another, in order.
* The matcher's event records are written to the **replay memory** (``replay_depth`` records, at
  least the longest burst a command can produce, so it never overflows) as they come.
* The **transmitter** sends a burst as ``EVENTS`` frames of up to ``records_per_frame`` records,
  reading the replay memory behind the writer (the first frame leaves while the matcher is still
  working), and ends with the record flagged LAST.
"""


from amaranth import Cat, Module, Mux, Signal
from amaranth.build import Platform
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from exchange.card_protocol import (
    CARD_MAX_PAYLOAD,
    DEFAULT_RECORDS_PER_FRAME,
    ERROR_LAYOUT,
    EVENTS_HEADER,
    IDENT_LAYOUT,
    MAGIC,
    VERSION,
    ErrorCode,
    FrameType,
    replay_depth_for,
)
from exchange.framing_spec import MAX_PAYLOAD
from exchange.matcher_format import EVENT_LAST, MatcherConfig
from hdl.card_shell import check_int, fixed_answers, link_ends, status_register
from hdl.formats import struct_layout
from hdl.matcher import Matcher

__all__ = ["Card"]


class _TxKind(enum.Enum, shape=2):
    IDENT = 0
    EVENTS = 1
    STATUS = 2
    ERROR = 3


class Card(wiring.Component):
    """A matcher behind the host link: the whole card, minus UART and clocking.

    Parameters: ``config`` (the matcher's :class:`~exchange.matcher_format.MatcherConfig`;
    default size when omitted), ``records_per_frame`` event records per ``EVENTS`` frame,
    ``replay_depth`` records kept for re-answering a duplicate command (default and minimum:
    the longest burst, ``max_orders + 2``), ``clock_hz`` reported in the identification register
    (0 for a simulation). ``magic`` and ``version`` exist so tests can build a card the host must
    refuse. Bad values raise ValueError.

    Ports: ``rx`` (:py:`In(stream.Signature(8))`, wire bytes from the host), ``tx``
    (:py:`Out(stream.Signature(8))`, wire bytes to the host), ``activity`` (:py:`Out(1)`, one
    cycle per command executed), ``link_error`` (:py:`Out(1)`, one cycle per rejected frame),
    ``busy`` (:py:`Out(1)`: a received frame is being acted on or answered; low once the answer
    has left, apart from the encoder's last few bytes).
    """

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    activity: Out(1)
    link_error: Out(1)
    busy: Out(1)

    def __init__(self, config: MatcherConfig | None = None, *, records_per_frame: int = DEFAULT_RECORDS_PER_FRAME,
                 replay_depth: int | None = None, clock_hz: int = 0, magic: int = MAGIC,
                 version: tuple[int, int] = VERSION) -> None:
        try:
            self._check(config, records_per_frame, replay_depth, clock_hz, magic, version)
        except ValueError:
            self._MustUse__silence = True  # a refused card is not an unused one
            raise
        super().__init__()

    def _check(self, config, records_per_frame, replay_depth, clock_hz, magic, version) -> None:  # noqa: ANN001
        if config is None:
            config = MatcherConfig()
        if not isinstance(config, MatcherConfig):
            raise ValueError(f"config must be a MatcherConfig, not {config!r}")
        self.config = config
        header = EVENTS_HEADER.size
        most = (MAX_PAYLOAD - header) // config.event_layout.size  # an EVENTS frame fits any receiver
        self.records_per_frame = check_int("records_per_frame", records_per_frame, 1, min(255, most))
        least = replay_depth_for(config)
        self.replay_depth = least if replay_depth is None else check_int("replay_depth", replay_depth, least, 1 << 22)
        self.clock_hz = check_int("clock_hz", int(clock_hz) if isinstance(clock_hz, float) else clock_hz,
                                   0, (1 << 32) - 1)
        self.magic = check_int("magic", magic, 0, (1 << 32) - 1)
        if not isinstance(version, tuple) or len(version) != 2:
            raise ValueError(f"version must be a (major, minor) tuple, not {version!r}")
        self.version = (check_int("version major", version[0], 0, 255),
                        check_int("version minor", version[1], 0, 255))

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        cfg = self.config
        cmd_bytes = cfg.command_layout.size
        rec_bytes = cfg.event_layout.size
        per_frame = self.records_per_frame
        depth = self.replay_depth

        dec, enc, rx_fifo = link_ends(m, self, CARD_MAX_PAYLOAD)
        m.submodules.matcher = matcher = Matcher(cfg)

        # -- state shared by dispatcher and transmitter ------------------------------------------
        last_seq = Signal(16)
        fresh = Signal(init=1)  # nothing executed since reset: any seq is accepted
        next_seq = Signal(16)
        m.d.comb += next_seq.eq(Mux(fresh, 0, last_seq + 1))
        tx_kind = Signal(_TxKind)
        tx_start = Signal()
        tx_idle = Signal()
        err = Signal(struct_layout(ERROR_LAYOUT))
        commands = Signal(32)
        duplicates = Signal(32)
        errors = Signal(32)
        events = Signal(32)

        # -- replay memory: the last command's event records -----------------------------------------
        m.submodules.replay = replay = Memory(shape=matcher.event_shape.size, depth=depth, init=[])
        wr = replay.write_port()
        rd = replay.read_port()
        wr_ptr = Signal(range(depth + 1))
        rd_ptr = Signal(range(depth + 1))
        m.d.comb += [
            matcher.o.ready.eq(wr_ptr != depth),  # never full: depth >= the longest burst
            wr.en.eq(matcher.o.valid & matcher.o.ready),
            wr.addr.eq(wr_ptr),
            wr.data.eq(matcher.o.payload),
            rd.addr.eq(rd_ptr),
        ]
        with m.If(wr.en):
            m.d.sync += [wr_ptr.eq(wr_ptr + 1), events.eq(events + 1)]

        # -- dispatcher --------------------------------------------------------------------------
        payload_max = 2 + cmd_bytes
        buf = Signal(8 * payload_max)  # seq | record, filled from the top so the last byte lands on top
        count = Signal(range(CARD_MAX_PAYLOAD + 2))
        ftype = Signal(8)
        seq = buf[:16]
        record = buf[16:]
        beat = dec.o.payload

        def error(code: ErrorCode, with_seq: bool = False) -> None:
            m.d.sync += [
                err.code.eq(code),
                err.frame_type.eq(ftype),
                err.seq.eq(seq if with_seq else 0),
                err.expected.eq(next_seq),
                errors.eq(errors + 1),
                tx_kind.eq(_TxKind.ERROR),
            ]
            m.next = "START"

        with m.FSM(name="dispatch") as dispatch:
            with m.State("RECV"):
                m.d.comb += dec.o.ready.eq(1)
                with m.If(dec.o.valid):
                    with m.If(beat.first):
                        m.d.sync += [ftype.eq(beat.data), count.eq(0)]
                    with m.Else():
                        m.d.sync += buf.eq(Cat(buf[8:], beat.data))
                        with m.If(count != CARD_MAX_PAYLOAD + 1):
                            m.d.sync += count.eq(count + 1)
                    with m.If(beat.last):
                        m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.Switch(ftype):
                    with m.Case(FrameType.IDENTIFY):
                        m.d.sync += tx_kind.eq(_TxKind.IDENT)
                        m.next = "START"
                    with m.Case(FrameType.STATUS):
                        m.d.sync += tx_kind.eq(_TxKind.STATUS)
                        m.next = "START"
                    with m.Case(FrameType.COMMAND):
                        with m.If(count != payload_max):
                            error(ErrorCode.BAD_LENGTH)
                        with m.Elif(~fresh & (seq == last_seq)):
                            m.d.sync += [tx_kind.eq(_TxKind.EVENTS), duplicates.eq(duplicates + 1)]
                            m.next = "START"
                        with m.Elif(~fresh & (seq != next_seq)):
                            error(ErrorCode.BAD_SEQUENCE, with_seq=True)
                        with m.Else():
                            m.next = "PUSH"
                    with m.Default():
                        error(ErrorCode.UNKNOWN_TYPE)
            with m.State("PUSH"):
                m.d.comb += [matcher.i.valid.eq(1), matcher.i.payload.eq(record)]
                with m.If(matcher.i.ready):
                    m.d.comb += self.activity.eq(1)
                    m.d.sync += [
                        last_seq.eq(seq),
                        fresh.eq(0),
                        wr_ptr.eq(0),
                        commands.eq(commands + 1),
                        tx_kind.eq(_TxKind.EVENTS),
                    ]
                    m.next = "START"
            with m.State("START"):
                m.d.comb += tx_start.eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(tx_idle):
                    m.next = "RECV"

        # -- transmitter -------------------------------------------------------------------------
        ident = Signal(struct_layout(IDENT_LAYOUT))
        m.d.comb += [
            ident.magic.eq(self.magic),
            ident.version_major.eq(self.version[0]),
            ident.version_minor.eq(self.version[1]),
            ident.next_seq.eq(next_seq),
            ident.fresh.eq(fresh),
            ident.records_per_frame.eq(per_frame),
            ident.max_orders.eq(cfg.max_orders),
            ident.window_ticks.eq(cfg.window_ticks),
            ident.qty_width.eq(cfg.qty_width),
            ident.id_width.eq(cfg.id_width),
            ident.group_width.eq(cfg.group_width),
            ident.replay_depth.eq(depth),
            ident.clock_hz.eq(self.clock_hz),
        ]
        status = status_register(m, dec, commands=commands, duplicates=duplicates, errors=errors, events=events)
        answer = fixed_answers(m, tx_kind, ident=(_TxKind.IDENT, ident, IDENT_LAYOUT), status=(_TxKind.STATUS, status),
                               error=(_TxKind.ERROR, err), burst=(_TxKind.EVENTS, FrameType.EVENTS))

        # Every payload chunk (a fixed answer, an EVENTS header, one event record) is loaded into a
        # shift register and leaves from its low byte: the encoder sees flip-flops only, and the
        # replay memory's (slow) output goes no further than this register.
        chunk_bytes = max(answer.size, rec_bytes, EVENTS_HEADER.size)
        sreg = Signal(8 * chunk_bytes)
        left = Signal(range(chunk_bytes + 1))  # bytes of the chunk still to send
        chunk_ends_frame = Signal()
        chunk_is_record = Signal()
        ends_burst = Signal()
        index = Signal(16)
        in_frame = Signal(range(per_frame))
        current = data.View(matcher.event_shape, rd.data)
        out = enc.i

        m.d.comb += self.busy.eq(~dispatch.ongoing("RECV") | dec.o.valid | rx_fifo.r_rdy)

        with m.FSM(name="transmit"):
            with m.State("IDLE"):
                m.d.comb += tx_idle.eq(1)
                with m.If(tx_start):
                    m.d.sync += [index.eq(0), in_frame.eq(0), rd_ptr.eq(0)]
                    m.next = "TYPE"
            with m.State("TYPE"):
                m.d.comb += [out.valid.eq(1), out.payload.data.eq(answer.frame_type)]
                with m.If(out.ready):
                    with m.If(tx_kind == _TxKind.EVENTS):
                        m.d.sync += [sreg.eq(Cat(last_seq, index)), left.eq(EVENTS_HEADER.size),
                                     chunk_ends_frame.eq(0), chunk_is_record.eq(0)]
                    with m.Else():
                        m.d.sync += [sreg.eq(answer.payload), left.eq(answer.length), chunk_ends_frame.eq(1),
                                     chunk_is_record.eq(0), ends_burst.eq(1)]
                    m.next = "CHUNK"
            with m.State("CHUNK"):
                m.d.comb += [
                    out.valid.eq(1),
                    out.payload.data.eq(sreg[:8]),
                    out.payload.last.eq(chunk_ends_frame & (left == 1)),
                ]
                with m.If(out.ready):
                    m.d.sync += [sreg.eq(sreg[8:]), left.eq(left - 1)]
                    with m.If(left == 1):
                        with m.If(chunk_ends_frame & ends_burst):
                            m.next = "IDLE"
                        with m.Elif(chunk_ends_frame):  # a full EVENTS frame: the burst goes on
                            m.d.sync += [index.eq(index + 1), in_frame.eq(0)]
                            m.next = "TYPE"
                        with m.Else():
                            with m.If(chunk_is_record):
                                m.d.sync += in_frame.eq(in_frame + 1)
                            m.next = "REC_WAIT"
            with m.State("REC_WAIT"):
                # rd.addr shows rd_ptr during this cycle: its record is on rd.data next cycle.
                with m.If(rd_ptr != wr_ptr):
                    m.next = "REC_LOAD"
            with m.State("REC_LOAD"):
                last = (current.flags & EVENT_LAST) != 0
                m.d.sync += [
                    sreg.eq(rd.data),
                    left.eq(rec_bytes),
                    ends_burst.eq(last),
                    chunk_ends_frame.eq(last | (in_frame == per_frame - 1)),
                    chunk_is_record.eq(1),
                    rd_ptr.eq(rd_ptr + 1),
                ]
                m.next = "CHUNK"
        return m

    # Used by the board tops and the report.
    @property
    def description(self) -> str:
        cfg = self.config
        return (f"matchwire card v{self.version[0]}.{self.version[1]}: {cfg.max_orders} orders, "
                f"+-{cfg.window_ticks} ticks, {cfg.qty_width}-bit qty, {self.records_per_frame} records/frame, "
                f"replay {self.replay_depth}")

