"""The ITCH decoder card: host link -> packet bytes -> ``ItchDecoder`` -> records -> host link.

:class:`ItchCard` is the second design behind the card link of issue #8 (``hdl.card.Card`` is the
first): the same wire streams (``rx``/``tx``: ``00 | COBS(type | payload | CRC-32) | 00``), the same
frame decoder and encoder (``hdl.link``), the same ``IDENTIFY``/``STATUS``/``ERROR`` frames and
identification register scheme, with its own magic (:data:`exchange.card_protocol.ITCH_MAGIC`) so a
host cannot take it for the matcher card, or the other way round. Its protocol additions (``DECODE``,
``RECORDS``) are in :mod:`exchange.card_protocol`. Summary::

    rx -> FIFO -> FrameDecoder (good frames only) -> dispatcher --IDENTIFY/STATUS/ERROR--> transmitter
                                                         | DECODE: packet bytes              ^
                                                         v                                   |
                                            beat assembler -> ItchDecoder -o-> record FIFO --+
    transmitter -> FrameEncoder -> tx

* The **dispatcher** takes one good frame at a time. A ``DECODE`` frame's bytes after its ``seq``
  go, as they arrive, to the **beat assembler**, which packs them into ``lanes``-byte beats; the
  frame's last byte ends the decoder packet (``last`` on its beat), so framing restarts with every
  ``DECODE`` frame. The next frame is taken once the answer has left: one packet at a time.
* Decoder records go into a FIFO of ``records_per_frame + 1`` records. The card knows the packet is
  fully decoded when the records cover every byte it fed (the sum of ``2 + length`` over the records
  reaches the packet's length) or a TRUNCATED / TRUNCATED_PREFIX record arrives (it ends the packet).
* The **transmitter** sends ``RECORDS`` frames while the decoder works: a frame leaves when
  ``records_per_frame`` records are waiting, or when the packet is done (then flagged ``last``; an
  empty packet gets one frame with no records). Records are sent as the 66-byte ``ITCH_RECORD``,
  low byte first, i.e. exactly the decoder's payload bits.

Why no replay memory or sequence check (the matcher card has both): decoding has no side effect,
so a ``DECODE`` frame the host repeats after a lost answer is simply decoded again.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.build import Platform
from amaranth.lib import enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from exchange.card_protocol import (
    ERROR_LAYOUT,
    ITCH_CARD_MAX_PACKET,
    ITCH_IDENT_LAYOUT,
    ITCH_MAGIC,
    ITCH_MAX_RECORDS_PER_FRAME,
    ITCH_RECORDS_PER_FRAME,
    ITCH_VERSION,
    RECORDS_HEADER,
    ErrorCode,
    FrameType,
)
from exchange.framing_spec import MAX_PAYLOAD
from exchange.itch_record import ITCH_RECORD, ItchStatus
from hdl.card_shell import check_int, fixed_answers, link_ends, status_register
from hdl.formats import struct_layout
from hdl.itch import ItchDecoder

__all__ = ["ItchCard"]


class _TxKind(enum.Enum, shape=2):
    IDENT = 0
    RECORDS = 1
    STATUS = 2
    ERROR = 3


class ItchCard(wiring.Component):
    """The ITCH 5.0 decoder behind the host link: the whole decoder card, minus UART and clocking.

    Parameters: ``lanes`` and ``slots`` of the :class:`~hdl.itch.ItchDecoder` (its own checks),
    ``records_per_frame`` records per ``RECORDS`` frame (1..15, what fits in a link frame),
    ``clock_hz`` reported in the identification register (0 for a simulation). ``magic`` and
    ``version`` exist so tests can build a card the host must refuse. Bad values raise ValueError.

    Ports: ``rx`` (:py:`In(stream.Signature(8))`, wire bytes from the host), ``tx``
    (:py:`Out(stream.Signature(8))`, wire bytes to the host), ``activity`` (:py:`Out(1)`, one cycle
    per packet started), ``link_error`` (:py:`Out(1)`, one cycle per rejected frame), ``busy``
    (:py:`Out(1)`: a received frame is being acted on or answered).
    """

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    activity: Out(1)
    link_error: Out(1)
    busy: Out(1)

    def __init__(self, *, lanes: int = 8, slots: int = 3, records_per_frame: int = ITCH_RECORDS_PER_FRAME,
                 clock_hz: int = 0, magic: int = ITCH_MAGIC, version: tuple[int, int] = ITCH_VERSION) -> None:
        try:
            self._decoder = ItchDecoder(lanes=lanes, slots=slots)
        except ValueError:
            self._MustUse__silence = True  # a refused card is not an unused one
            raise
        try:
            self.lanes, self.slots = lanes, slots
            self.records_per_frame = check_int("records_per_frame", records_per_frame, 1,
                                                ITCH_MAX_RECORDS_PER_FRAME)
            self.clock_hz = check_int("clock_hz", int(clock_hz) if isinstance(clock_hz, float) else clock_hz,
                                       0, (1 << 32) - 1)
            self.magic = check_int("magic", magic, 0, (1 << 32) - 1)
            if not isinstance(version, tuple) or len(version) != 2:
                raise ValueError(f"version must be a (major, minor) tuple, not {version!r}")
            self.version = (check_int("version major", version[0], 0, 255),
                            check_int("version minor", version[1], 0, 255))
        except ValueError:
            self._MustUse__silence = True
            self._decoder._MustUse__silence = True
            raise
        super().__init__()

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        lanes = self.lanes
        per_frame = self.records_per_frame
        rec_bytes = ITCH_RECORD.size

        dec, enc, rx_fifo = link_ends(m, self, MAX_PAYLOAD)
        m.submodules.itch = itch = self._decoder
        # The record FIFO must hold a whole frame's worth, or the transmitter (which waits for
        # ``per_frame`` records) and the stalled decoder would wait on each other.
        m.submodules.records = records = SyncFIFOBuffered(width=ITCH_RECORD.width, depth=per_frame + 1)

        # -- shared state ------------------------------------------------------------------------
        tx_kind = Signal(_TxKind)
        tx_start = Signal()
        tx_idle = Signal()
        err = Signal(struct_layout(ERROR_LAYOUT))
        seq = Signal(16)
        packets = Signal(32)
        sent_records = Signal(32)
        errors = Signal(32)

        # -- packet bookkeeping: when has the decoder said everything about the packet? ----------
        plen = Signal(range(ITCH_CARD_MAX_PACKET + 1))  # bytes fed to the beat assembler
        ended = Signal()  # the packet's last byte has been fed
        covered = Signal(18)  # sum of 2 + length over the packet's records (wide: garbage lengths)
        cut = Signal()  # a TRUNCATED / TRUNCATED_PREFIX record arrived: it is the packet's last
        done = Signal()
        m.d.comb += done.eq(ended & ((covered == plen) | cut))
        new_packet = Signal()  # pulse: reset the bookkeeping
        rec = itch.o.payload
        m.d.comb += [
            records.w_data.eq(rec.as_value()),
            records.w_en.eq(itch.o.valid),
            itch.o.ready.eq(records.w_rdy),
        ]
        with m.If(new_packet):
            m.d.sync += [covered.eq(0), cut.eq(0)]
        with m.Elif(itch.o.valid & itch.o.ready):
            m.d.sync += covered.eq(covered + 2 + rec.length)
            with m.If(rec.status >= ItchStatus.TRUNCATED):
                m.d.sync += cut.eq(1)

        # -- beat assembler ----------------------------------------------------------------------
        bdata = Signal(8 * lanes)
        bkeep = Signal(lanes)
        blast = Signal()
        bvalid = Signal()
        fill = Signal(range(lanes))
        kacc = Signal(lanes)  # thermometer of the lanes filled so far in the beat being assembled
        m.d.comb += [
            itch.i.valid.eq(bvalid),
            itch.i.payload.data.eq(bdata),
            itch.i.payload.keep.eq(bkeep),
            itch.i.payload.last.eq(blast),
        ]
        with m.If(itch.i.valid & itch.i.ready):
            m.d.sync += bvalid.eq(0)

        # -- dispatcher --------------------------------------------------------------------------
        ftype = Signal(8)
        nseq = Signal()
        beat = dec.o.payload

        def error(code: ErrorCode) -> None:
            m.d.sync += [
                err.code.eq(code),
                err.frame_type.eq(ftype),
                err.seq.eq(0),
                err.expected.eq(0),
                errors.eq(errors + 1),
                tx_kind.eq(_TxKind.ERROR),
            ]
            m.next = "START"

        def start_packet(empty: bool) -> None:
            m.d.comb += [new_packet.eq(1), self.activity.eq(1), tx_start.eq(1)]
            m.d.sync += [plen.eq(0), ended.eq(int(empty)), fill.eq(0), kacc.eq(0), packets.eq(packets + 1),
                         tx_kind.eq(_TxKind.RECORDS)]
            m.next = "WAIT" if empty else "BODY"

        with m.FSM(name="dispatch") as dispatch:
            with m.State("RECV"):
                m.d.comb += dec.o.ready.eq(1)
                with m.If(dec.o.valid):
                    m.d.sync += [ftype.eq(beat.data), nseq.eq(0)]
                    with m.If(beat.last):
                        m.next = "DISPATCH"
                    with m.Elif(beat.data == FrameType.DECODE):
                        m.next = "SEQ"
                    with m.Else():
                        m.next = "SKIP"
            with m.State("SKIP"):  # payload of a frame answered from registers: ignored
                m.d.comb += dec.o.ready.eq(1)
                with m.If(dec.o.valid & beat.last):
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.Switch(ftype):
                    with m.Case(FrameType.IDENTIFY):
                        m.d.sync += tx_kind.eq(_TxKind.IDENT)
                        m.next = "START"
                    with m.Case(FrameType.STATUS):
                        m.d.sync += tx_kind.eq(_TxKind.STATUS)
                        m.next = "START"
                    with m.Case(FrameType.DECODE):  # here only when shorter than its seq
                        error(ErrorCode.BAD_LENGTH)
                    with m.Default():
                        error(ErrorCode.UNKNOWN_TYPE)
            with m.State("SEQ"):
                m.d.comb += dec.o.ready.eq(1)
                with m.If(dec.o.valid):
                    m.d.sync += [seq.eq(Cat(seq[8:], beat.data)), nseq.eq(1)]  # little-endian
                    with m.If(beat.last & ~nseq):
                        error(ErrorCode.BAD_LENGTH)
                    with m.Elif(nseq):
                        start_packet(empty=False)
                        with m.If(beat.last):
                            start_packet(empty=True)
            with m.State("BODY"):
                m.d.comb += dec.o.ready.eq(~bvalid)
                with m.If(dec.o.valid & ~bvalid):
                    m.d.sync += [bdata.word_select(fill, 8).eq(beat.data), plen.eq(plen + 1)]
                    with m.If((fill == lanes - 1) | beat.last):
                        m.d.sync += [bvalid.eq(1), bkeep.eq(Cat(Const(1, 1), kacc[:-1])),
                                     blast.eq(beat.last), fill.eq(0), kacc.eq(0)]
                    with m.Else():
                        m.d.sync += [fill.eq(fill + 1), kacc.eq(Cat(Const(1, 1), kacc[:-1]))]
                    with m.If(beat.last):
                        m.d.sync += ended.eq(1)
                        m.next = "WAIT"
            with m.State("START"):
                m.d.comb += tx_start.eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(tx_idle & ~tx_start):
                    m.next = "RECV"

        # -- transmitter -------------------------------------------------------------------------
        ident = Signal(struct_layout(ITCH_IDENT_LAYOUT))
        m.d.comb += [
            ident.magic.eq(self.magic),
            ident.version_major.eq(self.version[0]),
            ident.version_minor.eq(self.version[1]),
            ident.lanes.eq(lanes),
            ident.slots.eq(self.slots),
            ident.records_per_frame.eq(per_frame),
            ident.record_bytes.eq(rec_bytes),
            ident.max_packet.eq(ITCH_CARD_MAX_PACKET),
            ident.clock_hz.eq(self.clock_hz),
        ]
        status = status_register(m, dec, commands=packets, duplicates=0, errors=errors, events=sent_records)
        answer = fixed_answers(m, tx_kind, ident=(_TxKind.IDENT, ident, ITCH_IDENT_LAYOUT),
                               status=(_TxKind.STATUS, status), error=(_TxKind.ERROR, err),
                               burst=(_TxKind.RECORDS, FrameType.RECORDS))

        # Every chunk (a fixed answer, a RECORDS header, one record) goes through a shift register
        # and leaves from its low byte: the encoder sees flip-flops only.
        chunk_bytes = max(answer.size, rec_bytes, RECORDS_HEADER.size)
        sreg = Signal(8 * chunk_bytes)
        left = Signal(range(chunk_bytes + 1))
        chunk_ends_frame = Signal()
        index = Signal(16)
        nrec = Signal(range(per_frame + 1))  # records still to send in this frame
        flast = Signal()  # this frame is the answer's last
        nrec8 = Signal(8)
        m.d.comb += nrec8.eq(nrec)
        out = enc.i

        m.d.comb += self.busy.eq(~dispatch.ongoing("RECV") | dec.o.valid | rx_fifo.r_rdy)

        with m.FSM(name="transmit"):
            with m.State("IDLE"):
                m.d.comb += tx_idle.eq(1)
                with m.If(tx_start):
                    m.d.sync += index.eq(0)
                    m.next = "PICK"
            with m.State("PICK"):
                with m.If(tx_kind == _TxKind.RECORDS):
                    m.next = "GATHER"
                with m.Else():
                    m.next = "TYPE"
            with m.State("GATHER"):
                full = records.level >= per_frame
                with m.If(full | done):
                    m.d.sync += [nrec.eq(Mux(full, per_frame, records.level)),
                                 flast.eq(done & (records.level <= per_frame))]
                    m.next = "TYPE"
            with m.State("TYPE"):
                m.d.comb += [out.valid.eq(1), out.payload.data.eq(answer.frame_type)]
                with m.If(out.ready):
                    with m.If(tx_kind == _TxKind.RECORDS):
                        m.d.sync += [sreg.eq(Cat(seq, index, nrec8, flast, Const(0, 7))),
                                     left.eq(RECORDS_HEADER.size), chunk_ends_frame.eq(nrec == 0)]
                    with m.Else():
                        m.d.sync += [sreg.eq(answer.payload), left.eq(answer.length), chunk_ends_frame.eq(1),
                                     flast.eq(1)]
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
                        with m.If(chunk_ends_frame & flast):
                            m.next = "IDLE"
                        with m.Elif(chunk_ends_frame):  # a full RECORDS frame: the answer goes on
                            m.d.sync += index.eq(index + 1)
                            m.next = "GATHER"
                        with m.Else():
                            m.next = "LOAD"
            with m.State("LOAD"):
                # nrec records were counted in the FIFO: the head is there.
                m.d.comb += records.r_en.eq(1)
                m.d.sync += [sreg.eq(records.r_data), left.eq(rec_bytes), chunk_ends_frame.eq(nrec == 1),
                             nrec.eq(nrec - 1), sent_records.eq(sent_records + 1)]
                m.next = "CHUNK"
        return m

    @property
    def description(self) -> str:
        """One line naming the design and its parameters."""
        return (f"matchwire ITCH decoder card v{self.version[0]}.{self.version[1]}: {self.lanes} lanes, "
                f"{self.slots} slots, {self.records_per_frame} records/frame")
