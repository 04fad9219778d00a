"""Card side of the host link: frame decoder and encoder for the format of
:mod:`exchange.framing_spec` (``00 | COBS(type | payload | CRC-32) | 00``).

Byte streams on the wire side are 8-bit ``lib.stream`` ports; frame side streams carry one body
byte per beat (the type byte is the first beat, the payload follows; the CRC is stripped on
decode and appended on encode):

* :data:`FrameByte` ``{data, last}``: encoder input.
* :data:`DecodedByte` ``{data, first, last, good}``: decoder output. ``good`` is meaningful on
  the ``last`` beat (always 1 on other beats).

``FrameDecoder`` = ``FrameDecoderCore`` (cut-through, no RAM; a rejected frame whose bytes were
already forwarded ends with a ``last`` beat with ``good == 0``) followed, unless
``drop_bad=False``, by ``FrameFilter`` (store-and-forward; drops frames ending with
``good == 0``, so only good frames come out). ``FrameEncoder`` = ``CrcAppender`` + ``CobsEncoder``.
"""

from amaranth import Cat, Module, Signal
from amaranth.build import Platform
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from exchange import framing_spec as spec

from .crc import CRC

__all__ = [
    "CobsEncoder",
    "CrcAppender",
    "DecodedByte",
    "FrameByte",
    "FrameDecoder",
    "FrameDecoderCore",
    "FrameEncoder",
    "FrameFilter",
    "FrameStats",
]

#: Encoder input beat: one body byte (type first, then payload), ``last`` on the final one.
FrameByte = data.StructLayout({"data": 8, "last": 1})

#: Decoder output beat.
DecodedByte = data.StructLayout({"data": 8, "first": 1, "last": 1, "good": 1})

#: Decoder statistics: wrapping 16-bit counters, the same four the reference decoder keeps
#: (:class:`exchange.framing_spec.DecoderStats`).
FrameStats = data.StructLayout({"good": 16, "crc": 16, "oversize": 16, "truncated": 16})


def _check_max_payload(max_payload: int) -> None:
    if not isinstance(max_payload, int) or isinstance(max_payload, bool) or max_payload < 0:
        raise ValueError(f"max_payload must be a non-negative integer, not {max_payload!r}")


def _check_depth(depth: int, max_frame: int) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2 or depth & (depth - 1):
        raise ValueError(f"buffer depth must be a power of two >= 2, not {depth!r}")
    if depth < max_frame:
        raise ValueError(f"buffer depth {depth} cannot hold a frame of {max_frame} beats")


class FrameDecoderCore(wiring.Component):
    """Cut-through frame decoder: wire bytes in, body bytes (CRC stripped) out.

    Consumes one wire byte per cycle when ``o`` is not stalled; each wire byte yields at most one
    output beat. Holds the last five decoded bytes back so that the CRC is never forwarded and
    the final payload byte can carry ``last``/``good``. Candidates that decode to fewer than 5
    bytes produce no output at all; an oversize candidate is cut off with a ``good == 0`` beat
    after ``1 + max_payload`` beats and the rest is discarded up to the next delimiter.

    Ports: ``i`` (:py:`In(stream.Signature(8))`), ``o``
    (:py:`Out(stream.Signature(DecodedByte))`), ``stats`` (:py:`Out(FrameStats)`).
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(DecodedByte))
    stats: Out(FrameStats)

    def __init__(self, max_payload: int = spec.MAX_PAYLOAD) -> None:
        _check_max_payload(max_payload)
        self.max_payload = max_payload
        self.max_body = spec.max_body(max_payload)
        super().__init__()

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        m.submodules.crc = crc = CRC(spec.CRC)
        min_body = spec.MIN_BODY
        hold = min_body  # decoded bytes held back: the CRC and the byte that may carry `last`

        in_frame = Signal()  # any wire byte seen since the last delimiter
        discard = Signal()  # oversize: ignore everything up to the next delimiter
        remaining = Signal(8)  # bytes left in the current COBS group
        pending_zero = Signal()  # the current group ends with an implied zero
        count = Signal(range(self.max_body + 2))  # decoded bytes so far
        line = [Signal(8, name=f"line{n}") for n in range(hold)]  # line[-1] is the oldest
        stats = Signal(FrameStats)
        m.d.comb += self.stats.eq(stats)

        take = Signal()
        m.d.comb += [
            self.i.ready.eq(~self.o.valid | self.o.ready),
            take.eq(self.i.valid & self.i.ready),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        def emit(*, last, good):
            m.d.sync += [
                self.o.valid.eq(1),
                self.o.payload.data.eq(line[-1]),
                self.o.payload.first.eq(count == min_body),
                self.o.payload.last.eq(last),
                self.o.payload.good.eq(good),
            ]

        byte = self.i.payload
        push = Signal()
        push_data = Signal(8)
        with m.If(take):
            with m.If(byte == spec.DELIMITER):
                with m.If(in_frame):
                    with m.If(discard):
                        m.d.sync += stats.oversize.eq(stats.oversize + 1)
                    with m.Elif((remaining != 0) | (count < min_body)):
                        m.d.sync += stats.truncated.eq(stats.truncated + 1)
                        with m.If(count >= min_body):
                            emit(last=1, good=0)
                    with m.Else():
                        emit(last=1, good=crc.match)
                        with m.If(crc.match):
                            m.d.sync += stats.good.eq(stats.good + 1)
                        with m.Else():
                            m.d.sync += stats.crc.eq(stats.crc + 1)
                m.d.sync += [
                    in_frame.eq(0),
                    discard.eq(0),
                    remaining.eq(0),
                    pending_zero.eq(0),
                    count.eq(0),
                ]
                m.d.comb += crc.start.eq(1)
            with m.Else():
                m.d.sync += in_frame.eq(1)
                with m.If(~discard):
                    with m.If(remaining == 0):  # a COBS code byte
                        m.d.sync += [
                            remaining.eq(byte - 1),
                            pending_zero.eq(byte != 0xFF),
                        ]
                        m.d.comb += [push.eq(pending_zero), push_data.eq(0)]
                    with m.Else():
                        m.d.sync += remaining.eq(remaining - 1)
                        m.d.comb += [push.eq(1), push_data.eq(byte)]

        with m.If(push):
            m.d.comb += [crc.i.valid.eq(1), crc.i.payload.eq(push_data)]
            m.d.sync += [count.eq(count + 1), line[0].eq(push_data)]
            m.d.sync += [line[n].eq(line[n - 1]) for n in range(1, hold)]
            with m.If(count == self.max_body):
                emit(last=1, good=0)
                m.d.sync += discard.eq(1)
            with m.Elif(count >= min_body):
                emit(last=0, good=1)

        return m


class FrameFilter(wiring.Component):
    """Store-and-forward filter: passes whole frames that end with ``good == 1``, drops the rest.

    Frames are written into a ring buffer of ``depth`` beats and made visible to the reader only
    once their ``last`` beat arrived good; a bad ``last`` rolls the write pointer back. ``depth``
    must be a power of two no smaller than the longest frame (in beats), else a long frame could
    never complete; ValueError otherwise. Output ``first`` is regenerated and ``good`` is 1.

    Ports: ``i`` (:py:`In(stream.Signature(DecodedByte))`), ``o``
    (:py:`Out(stream.Signature(DecodedByte))`).
    """

    i: In(stream.Signature(DecodedByte))
    o: Out(stream.Signature(DecodedByte))

    def __init__(self, depth: int, *, max_frame: int = 1) -> None:
        _check_depth(depth, max_frame)
        self.depth = depth
        super().__init__()

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        depth = self.depth
        abits = depth.bit_length() - 1
        m.submodules.mem = mem = Memory(shape=9, depth=depth, init=[])
        wr = mem.write_port()
        rd = mem.read_port()

        wptr = Signal(abits + 1)
        commit = Signal(abits + 1)
        rptr = Signal(abits + 1)

        # `ready` and `valid` come straight from flip-flops, keeping the pointer arithmetic out of
        # the neighbours' combinational paths. `ready` uses this cycle's rptr: when the buffer is
        # full it reopens a cycle late, but it never admits a beat there is no room for.
        wptr_next = Signal(abits + 1)
        rptr_next = Signal(abits + 1)
        ready = Signal(init=1)
        m.d.comb += [self.i.ready.eq(ready), wptr_next.eq(wptr)]
        m.d.sync += [wptr.eq(wptr_next), ready.eq((wptr_next - rptr)[: abits + 1] != depth)]
        beat = self.i.payload
        with m.If(self.i.valid & self.i.ready):
            with m.If(beat.last & ~beat.good):
                m.d.comb += wptr_next.eq(commit)
            with m.Else():
                m.d.comb += [
                    wr.en.eq(1),
                    wr.addr.eq(wptr[:abits]),
                    wr.data.eq(Cat(beat.data, beat.last)),
                    wptr_next.eq(wptr + 1),
                ]
                with m.If(beat.last):
                    m.d.sync += commit.eq(wptr + 1)

        # rd.data always holds mem[rptr]: the address presented is where rptr will be next cycle.
        advance = Signal()
        first = Signal(init=1)
        valid = Signal()
        # visible the cycle after `commit` moves: the read port is not transparent
        m.d.sync += valid.eq(rptr_next != commit)
        m.d.comb += [
            self.o.valid.eq(valid),
            advance.eq(self.o.valid & self.o.ready),
            rptr_next.eq(rptr + advance),
            rd.addr.eq(rptr_next[:abits]),
            self.o.payload.data.eq(rd.data[:8]),
            self.o.payload.last.eq(rd.data[8]),
            self.o.payload.first.eq(first),
            self.o.payload.good.eq(1),
        ]
        m.d.sync += rptr.eq(rptr_next)
        with m.If(advance):
            m.d.sync += first.eq(rd.data[8])
        return m


class FrameDecoder(wiring.Component):
    """Wire bytes in, frames out: decodes, checks and (by default) drops bad frames.

    With ``drop_bad=True`` (default) only good frames come out, whole (``good`` is always 1), at
    the cost of a frame buffer of ``buffer_depth`` beats (default: the next power of two that
    holds ``1 + max_payload`` beats; a DP16KD on ECP5 for the default payload limit). With
    ``drop_bad=False`` this is just :class:`FrameDecoderCore`: no RAM, lower latency, and bad
    frames end with a ``good == 0`` beat that the consumer must honour.

    Resynchronises on every 0x00: garbage costs at most the frame it is attached to.

    Ports: ``i`` (:py:`In(stream.Signature(8))`), ``o``
    (:py:`Out(stream.Signature(DecodedByte))`), ``stats`` (:py:`Out(FrameStats)`).
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(DecodedByte))
    stats: Out(FrameStats)

    def __init__(
        self, max_payload: int = spec.MAX_PAYLOAD, *, drop_bad: bool = True, buffer_depth: int | None = None
    ) -> None:
        _check_max_payload(max_payload)
        max_frame = 1 + max_payload
        if buffer_depth is None:
            buffer_depth = 1 << (max_frame - 1).bit_length()
        self.max_payload = max_payload
        self.drop_bad = bool(drop_bad)
        self.buffer_depth = buffer_depth
        if self.drop_bad:
            _check_depth(buffer_depth, max_frame)
        super().__init__()

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        m.submodules.core = core = FrameDecoderCore(self.max_payload)
        wiring.connect(m, wiring.flipped(self.i), core.i)
        m.d.comb += self.stats.eq(core.stats)
        if self.drop_bad:
            m.submodules.filter = filt = FrameFilter(self.buffer_depth, max_frame=1 + self.max_payload)
            wiring.connect(m, core.o, filt.i)
            wiring.connect(m, filt.o, wiring.flipped(self.o))
        else:
            wiring.connect(m, core.o, wiring.flipped(self.o))
        return m


class CrcAppender(wiring.Component):
    """Passes body bytes through and appends their CRC (:data:`exchange.framing_spec.CRC`).

    The input frame's ``last`` moves to the final CRC byte. Four idle input cycles per frame.

    Ports: ``i`` (:py:`In(stream.Signature(FrameByte))`), ``o`` (:py:`Out(stream.Signature(FrameByte))`).
    """

    i: In(stream.Signature(FrameByte))
    o: Out(stream.Signature(FrameByte))

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        m.submodules.crc = crc = CRC(spec.CRC)
        fresh = Signal(init=1)  # next input byte starts a frame
        index = Signal(range(spec.CRC_LEN))
        crc_bytes = [crc.value[8 * n : 8 * n + 8] for n in range(spec.CRC_LEN)]
        if not spec.CRC.refout:
            crc_bytes.reverse()

        with m.FSM():
            with m.State("PASS"):
                m.d.comb += [
                    self.o.valid.eq(self.i.valid),
                    self.o.payload.data.eq(self.i.payload.data),
                    self.o.payload.last.eq(0),
                    self.i.ready.eq(self.o.ready),
                ]
                with m.If(self.i.valid & self.o.ready):
                    m.d.comb += [
                        crc.start.eq(fresh),
                        crc.i.valid.eq(1),
                        crc.i.payload.eq(self.i.payload.data),
                    ]
                    m.d.sync += fresh.eq(self.i.payload.last)
                    with m.If(self.i.payload.last):
                        m.d.sync += index.eq(0)
                        m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += [
                    self.o.valid.eq(1),
                    self.o.payload.last.eq(index == spec.CRC_LEN - 1),
                ]
                with m.Switch(index):
                    for n, value in enumerate(crc_bytes):
                        with m.Case(n):
                            m.d.comb += self.o.payload.data.eq(value)
                with m.If(self.o.ready):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == spec.CRC_LEN - 1):
                        m.next = "PASS"
        return m


class CobsEncoder(wiring.Component):
    """COBS-encodes bodies into wire frames: ``00 | COBS(body) | 00`` per frame.

    A COBS code byte depends on up to 254 following bytes, so the writer side stores body bytes
    in a 512-byte ring and, when a group closes, queues a descriptor (length, first/last group of
    its frame, trailing empty group); the reader side emits the code byte then the group's bytes
    from the ring. Up to ``groups`` closed groups may wait, so the writer runs ahead: once busy,
    the output carries a byte on every cycle while the input keeps up. A group's code byte needs
    the group's last byte, so a zero-free run costs up to 254 cycles of latency, not throughput.

    Ports: ``i`` (:py:`In(stream.Signature(FrameByte))`), ``o`` (:py:`Out(stream.Signature(8))`).
    """

    i: In(stream.Signature(FrameByte))
    o: Out(stream.Signature(8))

    def __init__(self, groups: int = 8) -> None:
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 2:
            raise ValueError(f"groups must be an integer >= 2, not {groups!r}")
        self.groups = groups
        super().__init__()

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        ring = 512  # > 2 * 254: the open group always fits beside the queued ones
        abits = 9
        m.submodules.mem = mem = Memory(shape=8, depth=ring, init=[])
        wr = mem.write_port()
        rd = mem.read_port()
        group = data.StructLayout({"len": 8, "first": 1, "last": 1, "extra": 1})
        m.submodules.groups = fifo = SyncFIFO(width=group.size, depth=self.groups)

        # Writer: append non-zero bytes to the ring, queue a descriptor whenever a group closes.
        wptr = Signal(abits + 1)
        rptr = Signal(abits + 1)
        wcount = Signal(8)
        frame_start = Signal(init=1)
        room = Signal()
        m.d.comb += [
            room.eq((wptr - rptr)[: abits + 1] != ring),
            self.i.ready.eq(room & fifo.w_rdy),
        ]
        byte, is_last = self.i.payload.data, self.i.payload.last
        close = Signal()
        desc = Signal(group)
        m.d.comb += [
            desc.first.eq(frame_start),
            desc.last.eq(is_last),
            fifo.w_data.eq(desc),
            fifo.w_en.eq(close),
        ]
        with m.If(self.i.valid & self.i.ready):
            with m.If(byte == 0):  # the zero is implied by the group's code
                m.d.comb += [close.eq(1), desc.len.eq(wcount), desc.extra.eq(is_last)]
            with m.Else():
                m.d.comb += [wr.en.eq(1), wr.addr.eq(wptr[:abits]), wr.data.eq(byte)]
                m.d.sync += wptr.eq(wptr + 1)
                with m.If((wcount == 253) | is_last):
                    # full group (code 0xFF, no implied zero) or end of body; a full group that
                    # ends the body is followed by an empty one (code 01), as in the reference
                    m.d.comb += [
                        close.eq(1),
                        desc.len.eq(wcount + 1),
                        desc.extra.eq(is_last & (wcount == 253)),
                    ]
                with m.Else():
                    m.d.sync += wcount.eq(wcount + 1)
            with m.If(close):
                m.d.sync += [wcount.eq(0), frame_start.eq(is_last)]

        # Reader: rd.data holds ring[rptr] one cycle after rptr settles (the address presented is
        # where rptr will be next cycle); IDLE and CODE always take a cycle before DATA.
        cur = Signal(group)
        ptr = Signal(8)
        m.d.comb += [cur.eq(fifo.r_data), rd.addr.eq(rptr[:abits])]

        with m.FSM():

            def finish():
                m.d.comb += fifo.r_en.eq(1)
                m.next = "IDLE"

            def after_data():
                with m.If(cur.extra):
                    m.next = "EXTRA"
                with m.Elif(cur.last):
                    m.next = "DELIM"
                with m.Else():
                    finish()

            def code():
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(cur.len + 1)]
                with m.If(self.o.ready):
                    m.d.sync += ptr.eq(0)
                    with m.If(cur.len != 0):
                        m.next = "DATA"
                    with m.Else():
                        after_data()

            with m.State("IDLE"):  # emits at once when a group is queued: no bubble between groups
                with m.If(fifo.r_rdy & cur.first):
                    m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(spec.DELIMITER)]
                    with m.If(self.o.ready):
                        m.next = "CODE"
                with m.Elif(fifo.r_rdy):
                    code()
            with m.State("CODE"):
                code()
            with m.State("DATA"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(rd.data)]
                with m.If(self.o.ready):
                    m.d.comb += rd.addr.eq((rptr + 1)[:abits])
                    m.d.sync += [ptr.eq(ptr + 1), rptr.eq(rptr + 1)]
                    with m.If(ptr + 1 == cur.len):
                        after_data()
            with m.State("EXTRA"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(0x01)]
                with m.If(self.o.ready):
                    m.next = "DELIM"
            with m.State("DELIM"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(spec.DELIMITER)]
                with m.If(self.o.ready):
                    finish()
        return m


class FrameEncoder(wiring.Component):
    """Frames in, wire bytes out: appends the CRC and COBS-encodes with both delimiters.

    The output for a frame is byte-for-byte :func:`exchange.framing_spec.encode_frame`. Frames
    are not length-checked: the sender must respect the payload limit the receiver enforces.

    Ports: ``i`` (:py:`In(stream.Signature(FrameByte))`), ``o`` (:py:`Out(stream.Signature(8))`).
    """

    i: In(stream.Signature(FrameByte))
    o: Out(stream.Signature(8))

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        m.submodules.crc = appender = CrcAppender()
        m.submodules.cobs = cobs = CobsEncoder()
        wiring.connect(m, wiring.flipped(self.i), appender.i)
        wiring.connect(m, appender.o, cobs.i)
        wiring.connect(m, cobs.o, wiring.flipped(self.o))
        return m
