"""ITCH 5.0 decoder: MoldUDP64 message blocks in, one normalised record per message out.

Input (``i``): a MoldUDP64 packet body, i.e. a run of ``length (u16, big-endian) | message`` frames,
``lanes`` bytes per beat (:func:`beat_layout`: ``data`` with byte 0 of the beat in the low bits,
``keep`` byte enables, ``last``). Output (``o``): :data:`ItchRecord`, the layout
``exchange.itch_record.ITCH_RECORD`` (one definition for Python and gateware), one record per frame.

Beat rules: ``keep`` is a thermometer code (lanes ``0 .. count-1`` hold bytes; the decoder counts the
ones from lane 0). A packet is a run of full beats ended by its ``last`` beat, which may hold any
number of bytes, none included. A beat with fewer than ``lanes`` bytes also ends the packet (so a
short beat in mid-packet cuts the frame it falls in, which is flagged). An empty beat without
``last`` is ignored. The end of a packet is where framing restarts: a packet that ends inside a frame
yields a TRUNCATED (or TRUNCATED_PREFIX) record, and the next packet is decoded from its first byte.
Within a packet the length prefixes delimit the frames, so a frame with an unknown type, a length
that disagrees with its type or a zero length is flagged in its record and skipped by its length.

Pipeline (one beat per cycle when the output keeps up and every frame is at least ``lanes`` bytes,
which all ITCH messages are):

1. *Input register*: the beat, and for every lane ``k`` where a length prefix could start, what the
   frame tracker would do with it (where that frame ends, whether it ends inside this beat), plus,
   for every lane, the type/length decode of a frame whose type byte is that lane (its length prefix
   is the two stream bytes before it). This keeps adders and comparisons out of the tracker.
2. *Frame tracker*: knows where the current frame ends (``rem1``: lane of its last byte counted from
   this beat) and so where the next prefix starts, and selects that lane's precomputed values; its
   next state is a flat one-hot select. It gives each frame a *slot*, in order, and writes the
   frame's first ``BUFFER_BYTES`` bytes into it through one rotator, so that message byte ``j`` lands
   in slot byte ``j`` whatever the frame's alignment. The bytes of a frame in the beat where it
   starts are written one cycle later from a copy of that beat, so slot writes depend on registers
   only. A beat holding a whole frame plus the start of another (possible only for corrupt frames
   shorter than a beat) is processed twice.
3. *Slots* (``slots``, default 3) hold finished frames until the output takes them; their type flags
   were written with the type byte.
4. *O1* takes the oldest finished slot (its status already decoded), *O2* (the ``o`` register)
   selects the fields by type and checks the alpha fields for bytes above 0x7F.

A record is valid 4 cycles after the beat holding its message's last byte was accepted (the beat
enters the input register, the tracker writes the slot, O1, O2). Bad parameters raise ValueError.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from exchange.itch import MESSAGE_SPECS
from exchange.itch_record import ALPHA, BOOK_TYPES, BUFFER_BYTES, ITCH_RECORD, SOURCES, ItchStatus

from .formats import struct_layout

__all__ = ["ItchDecoder", "ItchRecord", "beat_layout"]

#: The decoder's output payload (``exchange.itch_record.ITCH_RECORD`` as a StructLayout).
ItchRecord = struct_layout(ITCH_RECORD)

_LANE_CHOICES = (1, 2, 4, 8)


def beat_layout(lanes: int = 8) -> data.StructLayout:
    """Input beat: ``data`` (``lanes`` bytes, stream byte 0 in bits 0-7), ``keep`` (byte enables,
    thermometer), ``last`` (end of the MoldUDP64 packet)."""
    _check_lanes(lanes)
    return data.StructLayout({"data": 8 * lanes, "keep": lanes, "last": 1})


def _check_lanes(lanes: int) -> None:
    if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes not in _LANE_CHOICES:
        raise ValueError(f"lanes must be one of {_LANE_CHOICES}, not {lanes!r}")


def _check_slots(slots: int) -> None:
    if not isinstance(slots, int) or isinstance(slots, bool) or not 3 <= slots <= 8:
        raise ValueError(f"slots must be an integer from 3 to 8, not {slots!r}")


class ItchDecoder(wiring.Component):
    """ITCH 5.0 decoder for MoldUDP64 message blocks; see the module docstring for the beat rules.

    Parameters: ``lanes`` (bytes per beat: 1, 2, 4 or 8), ``slots`` (frames in flight between the
    tracker and the output, 3 to 8; 3 keeps full rate with an output that is always ready, more
    absorb output stalls).

    Ports: ``i`` (:py:`In(stream.Signature(beat_layout(lanes)))`), ``o``
    (:py:`Out(stream.Signature(ItchRecord))`).
    """

    def __init__(self, lanes: int = 8, slots: int = 3) -> None:
        _check_lanes(lanes)
        _check_slots(slots)
        self.lanes = lanes
        self.slots = slots
        super().__init__({
            "i": In(stream.Signature(beat_layout(lanes))),
            "o": Out(stream.Signature(ItchRecord)),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, nslots = self.lanes, self.slots
        lbits = max((lanes - 1).bit_length(), 1)  # lane index width (1 bit even for lanes=1)
        nbuf = BUFFER_BYTES
        nwords = (nbuf + lanes - 1) // lanes  # slot buffer words, as seen by the write window

        # -- 1. precompute register ------------------------------------------------------------------
        # Everything the tracker needs about the beat, for every lane a prefix could start at, so that
        # the tracker only selects by lane (no adders or comparisons with the byte count in its loop).
        beat = self.i.payload
        in_bytes = [beat.data[8 * k : 8 * k + 8] for k in range(lanes)]
        therm = Signal(lanes)  # lane k holds a byte: keep bits 0..k all set
        for k in range(lanes):
            m.d.comb += therm[k].eq(beat.keep[: k + 1].all())
        in_count = Signal(range(lanes + 1))
        for k in range(lanes):
            with m.If(therm[k]):
                m.d.comb += in_count.eq(k + 1)

        p_valid = Signal()
        p_bytes = [Signal(8, name=f"p_b{k}") for k in range(lanes)]
        p_therm = Signal(lanes)
        p_count = Signal(range(lanes + 1))
        p_eop = Signal()
        hist = [Signal(8, name="hist0"), Signal(8, name="hist1")]  # the two stream bytes before this beat
        p_prev = Signal(8)  # the byte before this beat: the high byte of a prefix split into this beat
        # Per lane t, the type/length decode of a frame whose type byte is lane t. Its length prefix is
        # the two stream bytes before lane t (frames are contiguous), so it is known here already.
        p_book = [Signal(len(BOOK_TYPES), name=f"p_book{t}") for t in range(lanes)]  # a book type
        p_lenok = Signal(lanes)  # the length prefix is the type's length
        p_known = Signal(lanes)  # an ITCH type

        def lane_bit(vector, index_value, limit):
            """vector[index] for a small non-negative index value; 0 when index >= limit."""
            out = Signal()
            with m.Switch(index_value):
                for k in range(limit):
                    with m.Case(k):
                        m.d.comb += out.eq(vector[k])
            return out

        # x_*[k]: a length prefix starts at lane k (k <= lanes - 2, both bytes here). rem1 = lane of the
        # frame's last byte, counted from this beat (hold: the frame ends in it) or from the next one (adv).
        x_hold = Signal(max(lanes - 1, 1))  # the whole frame is in this beat: it must be processed again
        x_hold_rem1 = [Signal(lbits, name=f"x_hrem{k}") for k in range(lanes - 1)]
        x_adv_rem1 = [Signal(16, name=f"x_arem{k}") for k in range(lanes - 1)]
        x_adv_ends = Signal(max(lanes - 1, 1))
        x_zero = Signal(max(lanes - 1, 1))  # a zero length prefix
        # The same for a prefix split between the previous beat's last lane and this beat's lane 0.
        s_hold = Signal()
        s_hold_rem1 = Signal(lbits)
        s_adv_rem1 = Signal(16)
        s_adv_ends = Signal()
        s_zero = Signal()

        advance = Signal()  # the tracker is done with the precomputed beat
        m.d.comb += self.i.ready.eq(~p_valid | advance)
        load = Signal()
        m.d.comb += load.eq(self.i.valid & self.i.ready & (therm[0] | beat.last))
        with m.If(advance):
            m.d.sync += p_valid.eq(0)
        with m.If(load):
            m.d.sync += [
                p_valid.eq(1),
                p_therm.eq(therm),
                p_count.eq(in_count),
                p_eop.eq(beat.last | ~therm[lanes - 1]),
                p_prev.eq(hist[1]),
                *[p_bytes[k].eq(in_bytes[k]) for k in range(lanes)],
            ]
            with m.If(therm[lanes - 1]):  # a full beat: the frame may go on into the next one
                stream = [*hist, *in_bytes]
                m.d.sync += [hist[0].eq(stream[-2]), hist[1].eq(stream[-1])]
            stream = [*hist, *in_bytes]
            for t in range(lanes):
                n = Cat(stream[t + 1], stream[t])
                expected = Signal(6, name=f"explen{t}")  # the type's length (all ITCH lengths < 64)
                book = Signal(len(BOOK_TYPES), name=f"bmatch{t}")
                known = Signal(name=f"known{t}")
                with m.Switch(in_bytes[t]):
                    for code, spec in MESSAGE_SPECS.items():
                        with m.Case(ord(code)):
                            m.d.comb += [expected.eq(spec.length), known.eq(1)]
                            if code in BOOK_TYPES:
                                m.d.comb += book.eq(1 << BOOK_TYPES.index(code))
                m.d.sync += [
                    p_book[t].eq(book),
                    p_lenok[t].eq((n[6:] == 0) & (n[:6] == expected)),
                    p_known[t].eq(known),
                ]
            for k in range(lanes - 1):
                n = Cat(in_bytes[k + 1], in_bytes[k])
                # The whole body is here: n + k + 2 <= count, i.e. its last byte (lane k + 1 + n) is present.
                fits = (n <= lanes - k - 2) & lane_bit(therm, (n + k + 1)[: lbits + 1], lanes)
                m.d.sync += [
                    x_hold[k].eq(therm[k + 1] & fits),
                    x_hold_rem1[k].eq(n + (k + 1)),
                    x_adv_rem1[k].eq(n + (k + 1 - lanes)),
                    x_adv_ends[k].eq(n < 2 * lanes - k - 1),
                    x_zero[k].eq(n == 0),
                ]
            n = Cat(in_bytes[0], hist[1])
            m.d.sync += [
                s_hold.eq((n < lanes) & lane_bit(therm, n[: lbits + 1], lanes)),
                s_hold_rem1.eq(n),
                s_adv_rem1.eq(n - lanes),
                s_adv_ends.eq(n < 2 * lanes),
                s_zero.eq(n == 0),
            ]
        x_n = [Cat(p_bytes[k + 1], p_bytes[k]) for k in range(lanes - 1)]
        s_n = Cat(p_bytes[0], p_prev)

        # -- 3. slot registers (declared before the tracker, which writes them) ------------------------
        slot_pend = Signal(nslots)  # finished, waiting for the output stage
        # A taken slot's pending bit is cleared one cycle after O1 took it, which keeps the take loop
        # short: the output's pointer has moved on by then. The slot may already hold a new frame that
        # ends in that cycle (cut by a packet end as it starts), so the tracker's set, later in this
        # code, wins.
        taken = Signal(nslots)
        for s in range(nslots):
            with m.If(taken[s]):
                m.d.sync += slot_pend[s].eq(0)
        slot_n = [Signal(16, name=f"slot{s}_n") for s in range(nslots)]
        slot_off = [Signal(16, name=f"slot{s}_off") for s in range(nslots)]
        slot_trunc = [Signal(2, name=f"slot{s}_trunc") for s in range(nslots)]  # 1 body, 2 prefix
        # A truncated frame's body bytes = base + count (added in O1, off the tracker's paths).
        slot_base = [Signal(signed(18), name=f"slot{s}_base") for s in range(nslots)]
        slot_count = [Signal(range(lanes + 1), name=f"slot{s}_count") for s in range(nslots)]
        slot_buf = [[Signal(8, name=f"slot{s}_b{j}") for j in range(nbuf)] for s in range(nslots)]
        free = Signal(init=1)  # slot `wr` may be allocated this cycle (registered, conservative)

        # -- 2. frame tracker --------------------------------------------------------------------------
        active = Signal()  # inside a frame whose length prefix has been read
        half = Signal()  # the previous beat ended with a prefix's high byte
        ends = Signal()  # active and the frame's last byte is in this beat (rem1 < lanes)
        rem1 = Signal(16)
        cur_off = Signal(signed(18))  # message index of lane 0 of this beat, for the current frame
        cur_rot = Signal(lbits)  # cur_off mod lanes: the current frame's rotation
        cur_win = Signal(nwords + 2)  # one-hot of cur_off // lanes + 2 (the slot word lane 0 falls in)
        cur = Signal(nslots, init=1)  # one-hot: slot of the current frame
        wr = Signal(nslots, init=1)  # one-hot: slot the next frame gets
        woff = Signal(16)  # offset of lane 0 of this beat within the packet (a multiple of lanes)

        count, eop = p_count, p_eop
        lane = Signal(lbits)
        m.d.comb += lane.eq(rem1[:lbits] if lanes > 1 else 0)

        idle = Signal()
        c_end = Signal()
        c_trunc = Signal()
        c_cont = Signal()
        endok = Signal()  # the current frame's last byte (lane) is in this beat's bytes
        m.d.comb += [
            endok.eq(~eop | lane_bit(p_therm, lane, lanes)),
            idle.eq(~half & ~active),
            c_end.eq(active & ends & endok),
            c_trunc.eq(active & eop & ~(ends & endok)),
            c_cont.eq(active & ~ends & ~eop),
        ]

        def next_prefix(values, width, name):
            """values[pos], pos being where the next prefix would start: 0 when idle, else lane + 1
            (values[k] exists for k <= lanes - 2; 0 beyond)."""
            after = Signal(width, name=f"{name}_after")
            with m.Switch(lane):
                for k in range(lanes - 2):
                    with m.Case(k):
                        m.d.comb += after.eq(values[k + 1])
            out = Signal(width, name=name)
            m.d.comb += out.eq(Mux(idle, values[0], after) if lanes > 1 else 0)
            return out, after

        # Where the next prefix starts: lane 0 when idle, else lane + 1 (lanes: in the next beat). The
        # values derived from it are small lookups on the registered lane rather than adders, which
        # yosys would build from carry chains in series.
        def by_pos(name, width, fn, *, signed_=False):
            """fn(pos) as a lookup on (idle, lane)."""
            out = Signal(signed(width) if signed_ else width, name=name)
            with m.If(idle):
                m.d.comb += out.eq(fn(0))
            with m.Else():
                with m.Switch(lane):
                    for k in range(lanes):
                        with m.Case(k):
                            m.d.comb += out.eq(fn(k + 1))
            return out

        therm_next = Cat(p_therm[1:], Const(0, 1))
        new_start = Signal()
        new_full = Signal()
        m.d.comb += [
            new_start.eq(Mux(idle, p_therm[0], lane_bit(therm_next, lane, lanes))),
            new_full.eq(Mux(idle, p_therm[1] if lanes > 1 else 0, lane_bit(therm_next[1:], lane, lanes - 1)
                            if lanes > 1 else 0)),
        ]
        new_hold, hold_after = next_prefix(x_hold, 1, "new_hold")
        new_n, _ = next_prefix(x_n, 16, "new_n")
        new_zero, _ = next_prefix(x_zero, 1, "new_zero")
        new_hold_rem1, _ = next_prefix(x_hold_rem1, lbits, "new_hold_rem1")
        new_adv_rem1, _ = next_prefix(x_adv_rem1, 16, "new_adv_rem1")
        new_adv_ends, _ = next_prefix(x_adv_ends, 1, "new_adv_ends")

        start = Signal()  # a frame starts in this beat
        full = Signal()  # ... and both bytes of its prefix are here
        m.d.comb += [start.eq((c_end | idle) & new_start), full.eq((c_end | idle) & new_full)]

        go = Signal()
        m.d.comb += go.eq(p_valid & free)
        # hold: a whole frame starts and ends in this beat, so the beat must be seen again. (A frame of
        # x_hold also has its last byte present, so the current frame's end is too: no endok here.)
        hold = Signal()
        m.d.comb += hold.eq((active & ends & hold_after) | (idle & (x_hold[0] if lanes > 1 else 0))
                            | (half & s_hold))
        m.d.comb += advance.eq(go & ~hold)

        # Slot events of this cycle.
        fin_cur = Signal()  # the current frame is finished (normally or truncated)
        trunc_cur = Signal(2)
        alloc = Signal()
        fin_new = Signal()
        trunc_new = Signal(2)
        wr_next = Signal(nslots)
        m.d.comb += wr_next.eq(wr.rotate_left(1))

        # New frame at lane pos: message index of lane 0 = -(pos + 2), so its rotation is that mod lanes.
        new_rot = by_pos("new_rot", lbits, lambda p: -(p + 2) % lanes)
        new_off_hold = by_pos("new_off_hold", 18, lambda p: -(p + 2), signed_=True)
        new_off_adv = by_pos("new_off_adv", 18, lambda p: lanes - p - 2, signed_=True)
        new_lane = by_pos("new_lane", lbits, lambda p: p % lanes)
        new_off = Signal(16)  # the new frame's offset in the packet (woff is a multiple of lanes)
        m.d.comb += new_off.eq(Cat(new_lane, woff[lbits:]) if lanes > 1 else woff)

        def win_onehot(cw: int) -> Const:
            return Const(1 << (cw + 2), nwords + 2)

        # The tracker's next state as flat selects (one-hot, from registers and lane lookups), so each
        # state bit is a shallow AND-OR. Holds keep the beat; every other select consumes it, and at the
        # end of a packet no continuing select is set, so the state returns to idle by itself.
        new_advok, advok_after = next_prefix([~x_hold[k] for k in range(lanes - 1)], 1, "new_advok")
        is_penult = Signal()  # the current frame ends at lane lanes - 2: the next prefix is split
        m.d.comb += is_penult.eq(lane == lanes - 2 if lanes > 1 else 0)
        sel_s_hold = Signal()  # split prefix completed, whole frame in this beat
        sel_s_adv = Signal()  # split prefix completed, frame continues
        sel_s_trunc = Signal()  # split prefix, packet ends
        sel_cont = Signal()  # frame continues through this beat
        sel_new_hold = Signal()  # new frame wholly in this beat
        sel_new_adv = Signal()  # new frame continues into the next beat
        sel_new_half = Signal()  # new frame's prefix split over this beat and the next
        m.d.comb += [
            sel_s_hold.eq(half & s_hold),
            sel_s_adv.eq(half & p_therm[0] & ~s_hold & ~eop),
            sel_s_trunc.eq(half & ~(p_therm[0] & (s_hold | ~eop))),
            sel_cont.eq(active & ~ends & ~eop),
            sel_new_hold.eq(hold & ~half),
            sel_new_adv.eq(~eop & ((active & ends & advok_after)
                                   | (idle & (new_advok if lanes > 1 else 0)))),
            sel_new_half.eq(~eop & ((active & ends & is_penult) | (idle & (lanes == 1)))),
        ]

        def one_hot_sum(terms):
            acc = 0
            for sel, value in terms:
                acc = acc | Mux(sel, value, 0)
            return acc

        cont_ends = Signal()  # after this beat, the continuing frame's last byte is in the next one
        m.d.comb += cont_ends.eq(rem1[lbits:] == 1 if lanes > 1 else rem1 == 1)
        with m.If(go):
            m.d.sync += [
                active.eq(sel_s_hold | sel_s_adv | sel_cont | sel_new_hold | sel_new_adv),
                half.eq(sel_new_half),
                ends.eq(sel_s_hold | sel_new_hold | (sel_s_adv & s_adv_ends) | (sel_cont & cont_ends)
                        | (sel_new_adv & new_adv_ends)),
                rem1.eq(one_hot_sum([
                    (sel_s_hold, s_hold_rem1), (sel_s_adv, s_adv_rem1), (sel_cont, rem1 - lanes),
                    (sel_new_hold, new_hold_rem1), (sel_new_adv, new_adv_rem1),
                ])),
            ]
            with m.If(sel_s_adv | sel_cont):
                m.d.sync += [cur_off.eq(cur_off + lanes), cur_win.eq(cur_win << 1)]
            with m.If(sel_new_hold):
                m.d.sync += [cur_off.eq(new_off_hold), cur_win.eq(win_onehot(-1))]
            with m.If(sel_new_adv):
                m.d.sync += [cur_off.eq(new_off_adv), cur_win.eq(win_onehot(0))]
            with m.If(sel_new_half):  # the body starts at lane 1 of the next beat
                m.d.sync += [cur_off.eq(-1), cur_win.eq(win_onehot(-1))]
            with m.If(start):
                m.d.sync += [cur.eq(wr), wr.eq(wr_next), cur_rot.eq(new_rot)]
            with m.If(advance):
                m.d.sync += woff.eq(Mux(eop, 0, woff + lanes))

        m.d.comb += [
            alloc.eq(go & start),
            fin_cur.eq(go & (c_end | c_trunc | sel_s_trunc)),
            trunc_cur.eq(Mux(half & ~p_therm[0], 2, Mux(c_trunc | sel_s_trunc, 1, 0))),
            fin_new.eq(go & start & eop & ~(full & new_hold)),
            trunc_new.eq(Mux(full, 1, 2)),
        ]

        # Data path: message byte j of a frame lands in its slot's byte j. Only the current frame's slot is
        # written, through one rotator (rotation cur_rot). A frame's bytes in the beat where it starts
        # (its head) are written one cycle later, from a copy of that beat with the same rotation, so no
        # slot write depends on this cycle's tracker decisions: only on registers.
        rot_a = [Signal(8, name=f"rot_a{t}") for t in range(lanes)]
        for t in range(lanes):
            with m.Switch(cur_rot):
                for r in range(lanes):
                    with m.Case(r):
                        m.d.comb += rot_a[t].eq(p_bytes[(t - r) % lanes])
        head = max(lanes - 2, 0)  # body bytes of a frame that can be in the beat where it starts
        prev_bytes = [Signal(8, name=f"prev_b{k}") for k in range(lanes)]
        head_flag = Signal()  # the current frame started in the previous beat: write its head now
        with m.If(advance):
            m.d.sync += [prev_bytes[k].eq(p_bytes[k]) for k in range(lanes)]
        with m.If(go):
            m.d.sync += head_flag.eq(sel_new_adv)
        rot_h = [Signal(8, name=f"rot_h{t}") for t in range(head)]
        for t in range(head):
            with m.Switch(cur_rot):
                for r in range(lanes):
                    with m.Case(r):
                        m.d.comb += rot_h[t].eq(prev_bytes[(t - r) % lanes])

        # Written whenever a beat is present, even in a stalled cycle: the beat and the tracker state are
        # then unchanged, so the same bytes are written again.
        cur_writes = Signal()
        m.d.comb += cur_writes.eq(p_valid & (half | active))
        # Which slot bytes this beat covers: lane t holds message index cur_off + t.
        rot_ge = Signal(lanes)
        for t in range(lanes):
            m.d.comb += rot_ge[t].eq(cur_rot <= t)
        cur_hit = Signal(nbuf)
        for j in range(nbuf):
            b, t = j // lanes, j % lanes
            m.d.comb += cur_hit[j].eq((cur_win[b + 2] & rot_ge[t]) | (cur_win[b + 1] & ~rot_ge[t]))
        head_hit = Signal(max(head, 1))
        for j in range(head):
            m.d.comb += head_hit[j].eq(head_flag & ~rot_ge[j])
        wdata = [Mux(head_hit[j], rot_h[j], rot_a[j % lanes]) if j < head else rot_a[j % lanes] for j in range(nbuf)]
        hit = [cur_hit[j] | head_hit[j] if j < head else cur_hit[j] for j in range(nbuf)]

        # Type and length decode of the byte written to slot byte 0 (the type byte): the input register
        # decoded every lane already; select the lane the rotation puts in slot byte 0.
        prev_book = [Signal(len(BOOK_TYPES), name=f"prev_book{t}") for t in range(lanes)]
        prev_lenok = Signal(lanes)
        prev_known = Signal(lanes)
        with m.If(advance):
            m.d.sync += [*[prev_book[t].eq(p_book[t]) for t in range(lanes)], prev_lenok.eq(p_lenok),
                         prev_known.eq(p_known)]
        dec_book = Signal(len(BOOK_TYPES))
        dec_lenok = Signal()
        dec_known = Signal()
        with m.Switch(cur_rot):
            for r in range(lanes):
                with m.Case(r):
                    t = -r % lanes  # the lane rot_a[0] takes
                    if head:
                        m.d.comb += [
                            dec_book.eq(Mux(head_hit[0], prev_book[t], p_book[t])),
                            dec_lenok.eq(Mux(head_hit[0], prev_lenok[t], p_lenok[t])),
                            dec_known.eq(Mux(head_hit[0], prev_known[t], p_known[t])),
                        ]
                    else:
                        m.d.comb += [dec_book.eq(p_book[t]), dec_lenok.eq(p_lenok[t]), dec_known.eq(p_known[t])]
        kinds = []
        for s in range(nslots):
            is_cur = Signal(name=f"slot{s}_is_cur")
            m.d.comb += is_cur.eq(cur_writes & cur[s])
            for j in range(nbuf):
                with m.If(is_cur & hit[j]):
                    m.d.sync += slot_buf[s][j].eq(wdata[j])
            book = Signal(len(BOOK_TYPES), name=f"slot{s}_book")
            lenok = Signal(name=f"slot{s}_lenok")
            known = Signal(name=f"slot{s}_known")
            zero = Signal(name=f"slot{s}_zero")
            kinds.append((book, lenok, known, zero))
            with m.If(is_cur & hit[0]):
                m.d.sync += [book.eq(dec_book), lenok.eq(dec_lenok), known.eq(dec_known)]
            # Metadata is written every cycle into the slot a new frame would get (while it is free) and
            # into the current frame's slot (while the frame lasts), so that these clock enables come
            # from registers; the values written in the cycle a frame starts or finishes are the ones
            # that stay. A split prefix's length arrives one beat after its slot was allocated.
            with m.If(free & wr[s]):
                m.d.sync += [
                    slot_n[s].eq(Mux(full, new_n, 0)),
                    zero.eq(full & new_zero),
                    slot_off[s].eq(new_off),
                    slot_trunc[s].eq(trunc_new),
                    slot_base[s].eq(new_off_hold),
                    slot_count[s].eq(count),
                ]
            with m.If(is_cur):
                m.d.sync += [
                    slot_trunc[s].eq(trunc_cur),
                    slot_base[s].eq(cur_off),
                    slot_count[s].eq(count),
                ]
            with m.If(is_cur & half & p_therm[0]):
                m.d.sync += [slot_n[s].eq(s_n), zero.eq(s_zero)]
            with m.If((fin_new & wr[s]) | (fin_cur & cur[s])):
                m.d.sync += slot_pend[s].eq(1)

        # -- 4. output: O1 takes the oldest finished slot, O2 (the output register) builds the record --
        rd = Signal(nslots, init=1)  # one-hot: oldest slot
        eligible = Signal()
        m.d.comb += eligible.eq((slot_pend & rd).any())
        o1_valid = Signal()
        o2_take = Signal()  # O1 moves into the output register
        m.d.comb += o2_take.eq(o1_valid & (~self.o.valid | self.o.ready))
        o1_take = Signal()  # the oldest slot moves into O1
        m.d.comb += o1_take.eq(eligible & (~o1_valid | o2_take))

        def one_hot_select(values):
            acc = 0
            for s in range(nslots):
                acc = acc | Mux(rd[s], values[s], 0)
            return acc

        o1_buf = [Signal(8, name=f"o1_b{j}") for j in range(nbuf)]
        o1_n = Signal(16)
        o1_off = Signal(16)
        o1_detail = Signal(16)
        o1_status = Signal(8)  # final unless NON_ASCII applies (decided in O2)
        o1_book = Signal(len(BOOK_TYPES))  # one-hot type of a well-formed, untruncated book message
        o1_type_ok = Signal()  # an untruncated frame with a type byte
        alpha_groups: dict[tuple[int, ...], list[int]] = {}  # alpha byte positions -> book type indexes
        for i, code in enumerate(BOOK_TYPES):
            positions = tuple(sorted({src.offset + k for src in SOURCES[code] if src.kind == ALPHA
                                      for k in range(src.width)}))
            if positions:
                alpha_groups.setdefault(positions, []).append(i)
        o1_high = Signal(len(alpha_groups))  # per group: some alpha byte has bit 7 set

        sel_buf = [one_hot_select([slot_buf[s][j] for s in range(nslots)]) for j in range(nbuf)]
        # Each slot's status before the select, so the select is the last step before O1.
        slot_status, slot_book, slot_typed = [], [], []
        for s in range(nslots):
            book, lenok, known, zero = kinds[s]
            trunc = slot_trunc[s]
            status = Signal(8, name=f"slot{s}_status")
            with m.If(trunc == 1):
                m.d.comb += status.eq(ItchStatus.TRUNCATED)
            with m.Elif(trunc == 2):
                m.d.comb += status.eq(ItchStatus.TRUNCATED_PREFIX)
            with m.Elif(zero):
                m.d.comb += status.eq(ItchStatus.ZERO_LENGTH)
            with m.Elif(~known):
                m.d.comb += status.eq(ItchStatus.UNKNOWN_TYPE)
            with m.Elif(~lenok):
                m.d.comb += status.eq(ItchStatus.BAD_LENGTH)
            with m.Elif(book == 0):
                m.d.comb += status.eq(ItchStatus.SKIPPED)
            with m.Else():
                m.d.comb += status.eq(ItchStatus.OK)
            typed = Signal(name=f"slot{s}_typed")  # untruncated, with a type byte
            m.d.comb += typed.eq((trunc == 0) & ~zero)
            slot_status.append(status)
            slot_book.append(Mux(typed & lenok, book, 0))
            slot_typed.append(typed)
        sel_trunc_body = Signal()
        m.d.comb += sel_trunc_body.eq(one_hot_select([slot_trunc[s] == 1 for s in range(nslots)]))

        with m.If(o2_take):
            m.d.sync += o1_valid.eq(0)
        with m.If(o1_take):
            m.d.sync += [
                o1_valid.eq(1),
                *[o1_buf[j].eq(sel_buf[j]) for j in range(nbuf)],
                o1_n.eq(one_hot_select(slot_n)),
                o1_off.eq(one_hot_select(slot_off)),
                o1_detail.eq(Mux(sel_trunc_body, one_hot_select(slot_base) + one_hot_select(slot_count), 0)),
                o1_status.eq(one_hot_select(slot_status)),
                o1_book.eq(one_hot_select(slot_book)),
                o1_type_ok.eq(one_hot_select(slot_typed)),
                o1_high.eq(Cat(*[Cat(*[sel_buf[j][7] for j in positions]).any() for positions in alpha_groups])),
                rd.eq(rd.rotate_left(1)),
            ]
        m.d.sync += taken.eq(Mux(o1_take, rd, 0))
        # `free` (slot `wr` can be allocated next cycle) is registered and conservative: it assumes a
        # frame is allocated this cycle, so its logic does not wait for the tracker's decisions.
        allocs = Signal(range(2 * nslots))  # frames allocated, mod 2 * nslots
        takes = Signal(range(2 * nslots))  # slots taken into O1, mod 2 * nslots
        with m.If(go & alloc):
            m.d.sync += allocs.eq(Mux(allocs == 2 * nslots - 1, 0, allocs + 1))
        takes_next = Signal.like(takes)
        m.d.comb += takes_next.eq(Mux(o1_take, Mux(takes == 2 * nslots - 1, 0, takes + 1), takes))
        m.d.sync += takes.eq(takes_next)
        used = Signal(range(2 * nslots))  # slots allocated and not yet taken, before this cycle
        m.d.comb += used.eq(Mux(allocs >= takes, allocs - takes, allocs + 2 * nslots - takes))
        m.d.sync += free.eq(Mux(o1_take, used < nslots, used + 1 < nslots))

        # O2: fields selected by type, the ASCII check, the status.
        record = Signal(ItchRecord)
        groups: dict[tuple[str, int, int, str], list[int]] = {}
        for i, code in enumerate(BOOK_TYPES):
            for src in SOURCES[code]:
                groups.setdefault((src.field, src.offset, src.width, src.kind), []).append(i)
        by_field: dict[str, list] = {}
        for (field, offset, width, kind), types in groups.items():
            raw = o1_buf[offset : offset + width]
            value = Cat(*raw) if kind == ALPHA else Cat(*reversed(raw))  # ITCH integers are big-endian
            by_field.setdefault(field, []).append(Mux(Cat(*[o1_book[i] for i in types]).any(), value, 0))
        for field, terms in by_field.items():
            acc = terms[0]
            for term in terms[1:]:
                acc = acc | term
            m.d.comb += getattr(record, field).eq(acc)
        bad = Signal()
        m.d.comb += bad.eq(Cat(*[o1_high[g] & Cat(*[o1_book[i] for i in types]).any()
                                 for g, types in enumerate(alpha_groups.values())]).any())
        m.d.comb += [
            record.status.eq(Mux(bad, ItchStatus.NON_ASCII, o1_status)),
            record.type.eq(Mux(o1_type_ok, o1_buf[0], 0)),
            record.offset.eq(o1_off),
            record.length.eq(o1_n),
            record.detail.eq(o1_detail),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(o2_take):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(record)]
        return m
