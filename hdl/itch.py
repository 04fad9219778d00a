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

1. *Input register*: the beat, and for every lane ``p`` where a length prefix could start (and for a
   prefix split over the previous beat), the frame tracker's next state if the next prefix is there,
   as a one-hot vector, plus, for every lane, the type/length decode of a frame whose type byte is
   that lane (its length prefix is the two stream bytes before it). This keeps adders and
   comparisons out of the tracker.
2. *Frame tracker*: its state is one-hot (where the next prefix starts in this beat, or "the frame
   goes on", or "split prefix"), and its next state is the OR of the precomputed vectors its set bit
   selects, so its loop has no arithmetic. A beat counter (``rem1``) runs beside it for long frames.
   It gives each frame a *slot*, in order, and writes the frame's first ``BUFFER_BYTES`` bytes into
   it through one rotator, so that message byte ``j`` lands in slot byte ``j`` whatever the frame's
   alignment. The bytes of a frame in the beat where it starts are rotated one cycle later from a
   copy of that beat. The rotated bytes and their enables are registered (*W*) and written into the
   slot a cycle later, so slot writes depend on registers only. A beat holding a whole frame plus
   the start of another (possible only for corrupt frames shorter than a beat) is processed twice.
3. *Slots* (``slots``, default 3) hold finished frames until the output takes them; their type flags
   were written with the type byte.
4. *O1* takes the oldest finished slot (its status already decoded; bytes still in W come from W),
   *O2* (the ``o`` register) selects the fields by type and checks the alpha fields for bytes above
   0x7F.

A record is valid 4 cycles after the beat holding its message's last byte was accepted (the beat
enters the input register, the tracker's step, O1 beside the slot write, O2). Bad parameters raise
ValueError.
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
        port_bytes = [beat.data[8 * k : 8 * k + 8] for k in range(lanes)]
        port_therm = Signal(lanes)  # lane k holds a byte: keep bits 0..k all set
        for k in range(lanes):
            m.d.comb += port_therm[k].eq(beat.keep[: k + 1].all())
        port_valid = Signal()  # a beat that counts (an empty one without `last` is ignored)
        m.d.comb += port_valid.eq(self.i.valid & (port_therm[0] | beat.last))

        def nibble_zero(byte, name):
            lo_z = Signal(name=f"{name}_zl", attrs={"keep": 1})
            hi_z = Signal(name=f"{name}_zh", attrs={"keep": 1})
            m.d.comb += [lo_z.eq(byte[:4] == 0), hi_z.eq(byte[4:] == 0)]
            return lo_z, hi_z

        def type_decode(byte, t):
            # From kept one-hot decodes of the byte's two nibbles (one LUT4 each, only those the ITCH
            # codes use), each type a 2-input AND of them: abc9 otherwise shared the first LUT level of
            # this decode with the nibble zero tests of the length decode and put both two levels deep.
            expected = Signal(6, name=f"explen{t}")  # the type's length (all ITCH lengths < 64)
            book = Signal(len(BOOK_TYPES), name=f"bmatch{t}")
            known = Signal(name=f"known{t}")
            his = sorted({ord(code) >> 4 for code in MESSAGE_SPECS})
            los = sorted({ord(code) & 15 for code in MESSAGE_SPECS})
            nib_hi, nib_lo = {}, {}
            for v in his:
                nib_hi[v] = Signal(name=f"typ{t}_h{v:x}", attrs={"keep": 1})
                m.d.comb += nib_hi[v].eq(byte[4:] == v)
            for v in los:
                nib_lo[v] = Signal(name=f"typ{t}_l{v:x}", attrs={"keep": 1})
                m.d.comb += nib_lo[v].eq(byte[:4] == v)
            match = {code: nib_hi[ord(code) >> 4] & nib_lo[ord(code) & 15] for code in MESSAGE_SPECS}
            m.d.comb += [
                expected.eq(Cat(*[Cat(*[match[c] for c, spec in MESSAGE_SPECS.items() if spec.length >> b & 1]).any()
                                  for b in range(6)])),
                known.eq(Cat(*match.values()).any()),
                book.eq(Cat(*[match[c] for c in BOOK_TYPES])),
            ]
            return expected, book, known

        in_ready = Signal()  # the input register may load: it is empty or the tracker is done with it
        # The two stream bytes before the beat: those of the last real beat loaded into the input register.
        # While that register holds one (p_valid), they are its own last bytes; hist_bak keeps them for
        # the cycles it holds none. So no register here waits for i.ready and i.valid (an enable built
        # from both was four LUTs from the tracker's state); the two bytes are one 2:1 mux from registers.
        hist = [Signal(8, name="hist0"), Signal(8, name="hist1")]
        hist_bak = [Signal(8, name="hist_bak0"), Signal(8, name="hist_bak1")]
        m.d.comb += self.i.ready.eq(in_ready)
        in_bytes, therm, in_last, src_valid = port_bytes, port_therm, beat.last, port_valid
        # Zero tests of each stream byte's nibbles, kept: every test of a length's high bits below is
        # one LUT over these and a few raw bits (abc9 otherwise derived one test from another).
        zero_nib = {id(byte): nibble_zero(byte, f"pre{i + 2}") for i, byte in enumerate(in_bytes)}
        # The history's nibble tests come from registers too (see hist below), one 2:1 mux deep.
        hist_zero = [(Signal(name=f"pre{k}_zl", attrs={"keep": 1}), Signal(name=f"pre{k}_zh", attrs={"keep": 1}))
                     for k in range(2)]
        for k in range(2):
            zero_nib[id(hist[k])] = hist_zero[k]
        types = [type_decode(in_bytes[t], t) for t in range(lanes)]

        def high_byte_zero(byte):
            lo_z, hi_z = zero_nib[id(byte)]
            return lo_z & hi_z

        in_count = Signal(range(lanes + 1))
        for k in range(lanes):
            with m.If(therm[k]):
                m.d.comb += in_count.eq(k + 1)

        p_valid = Signal()
        p_bytes = [Signal(8, name=f"p_b{k}") for k in range(lanes)]
        p_therm = Signal(lanes)
        p_count = Signal(range(lanes + 1))
        p_eop = Signal()
        p_prev = Signal(8)  # the byte before this beat: the high byte of a prefix split into this beat
        # Per lane t, the type/length decode of a frame whose type byte is lane t. Its length prefix is
        # the two stream bytes before lane t (frames are contiguous), so it is known here already.
        p_book = [Signal(len(BOOK_TYPES), name=f"p_book{t}") for t in range(lanes)]  # a book type
        p_lenok = Signal(lanes)  # the length prefix is the type's length
        p_known = Signal(lanes)  # an ITCH type

        # Per position p where a length prefix can start (p = -1: split over the previous beat's last lane
        # and this beat's lane 0; p = 0 .. lanes - 2: both bytes here): what the tracker does if the
        # next prefix is there. Its frame's last byte is lane e = p + 1 + n counted from this beat.
        # x_nx[p] is the tracker's next state (one-hot, laid out as `state` below), so that the
        # tracker's loop is a one-hot select of registers with no arithmetic or comparison in it.
        positions = list(range(-1, lanes - 1))
        nstate = lanes + 3
        x_nx = {p: Signal(nstate, name=f"x_nx{p + 1}") for p in positions}
        x_hold = {p: Signal(name=f"x_hold{p + 1}") for p in positions}  # whole frame here: see beat again
        x_rem1 = {p: Signal(16, name=f"x_rem{p + 1}") for p in positions}  # e - lanes
        x_last = {p: Signal(name=f"x_last{p + 1}") for p in positions}  # e - lanes is in the next beat
        x_zero = {p: Signal(name=f"x_zero{p + 1}") for p in positions}  # a zero length prefix
        s_trunc = Signal()  # a split prefix whose packet ends before its frame does
        # Per lane p a frame could start at (its prefix's first byte): it starts and is finished in this
        # beat, cut by the packet's end (the tracker's fin_new, without the tracker's own logic).
        x_fn = Signal(lanes)

        # The precompute is combinational outside the input register's enable, so the enable (which
        # waits for the tracker) only gates the registers and stays out of these paths.
        in_eop = Signal()
        m.d.comb += in_eop.eq(in_last | ~therm[lanes - 1])

        lb = (lanes - 1).bit_length()  # log2(lanes): lane bits of a byte index
        # Kept nets the decode below is built from, each at most two LUT levels from the port, so that
        # every next-state bit is one LUT5 over them (three levels in all, where one function of the
        # ~25 input bits per bit had become five cells): the end-of-packet test and the thermometer.
        neop = Signal(name="pre_neop", attrs={"keep": 1})  # a full beat that does not end the packet
        m.d.comb += neop.eq(~in_eop)
        therm_k = Signal(lanes, name="pre_therm", attrs={"keep": 1})
        m.d.comb += therm_k.eq(therm)
        pre_nx, pre_hold, pre_rem1, pre_last, pre_zero = {}, {}, {}, {}, {}
        for p in positions:
            n = Cat(in_bytes[0], hist[1]) if p < 0 else Cat(in_bytes[p + 1], in_bytes[p])
            hb, lbyte = (hist[1], in_bytes[0]) if p < 0 else (in_bytes[p], in_bytes[p + 1])
            # n = lanes * hi + lo, with lo n's lane bits. The frame ends at lane e = p + 1 + n: in this
            # beat if hi = 0 and lo <= b1, in the next one if hi = 0 and lo > b1 or hi = 1 and lo <= b1.
            lo = n[:lb]
            b1 = lanes - 2 - p
            zl, zh = zero_nib[id(hb)]  # hi = 0, 1, 2 need hb = 0 and lbyte's high bits = 0, 1, 2
            lq = []
            for q in range(3):
                eq = Signal(name=f"pre_lq{p + 1}_{q}", attrs={"keep": 1})
                m.d.comb += eq.eq(lbyte[lb:] == q)
                lq.append(eq)
            lo_le = Signal(name=f"pre_lole{p + 1}")  # lo <= b1
            if lb:
                with m.Switch(lo):
                    with m.Case(*range(b1 + 1)):
                        m.d.comb += lo_le.eq(1)
            else:
                m.d.comb += lo_le.eq(1)
            # hzc[c]: hb = 0 and lo = c, one LUT5 over the two kept nibble tests and the lane bits.
            hzc = []
            for c in range(lanes):
                h = Signal(name=f"pre_hzc{p + 1}_{c}", attrs={"keep": 1})
                m.d.comb += h.eq(zl & zh & (lo == c if lb else 1))
                hzc.append(h)
            # The frame is whole in this beat (hold): hi = 0, lo = c and lane c + p + 1 present.
            present = Signal(name=f"pre_present{p + 1}")  # therm[e], for e < lanes
            with m.Switch(lo if lb else Const(0, 1)):
                for v in range(lanes):
                    if v + p + 1 < lanes:
                        with m.Case(v):
                            m.d.comb += present.eq(therm[v + p + 1])
            hold = Signal(name=f"pre_hold{p + 1}")
            m.d.comb += hold.eq(zl & zh & lq[0] & present)
            # n < 2 * lanes + b1 + 1 (the frame ends here or in the next beat) and n < 3 * lanes + ...
            lq1le = Signal(name=f"pre_lq1le{p + 1}", attrs={"keep": 1})
            lqlast = Signal(name=f"pre_lqlast{p + 1}", attrs={"keep": 1})
            m.d.comb += [lq1le.eq((lbyte[lb:] == 1) & lo_le),
                         lqlast.eq(Mux(lo_le, lbyte[lb:] == 2, lbyte[lb:] == 1))]
            lt2 = zl & zh & (lq[0] | lq1le)
            nx = Signal(nstate, name=f"pre_nx{p + 1}")
            # Next prefix at lane k + 1: the frame ends at lane k, so lo is the constant c, and the bit is
            # hzc[c] and: (hi = 0, byte k present) or (hi = 1, a full beat not ending the packet), or
            # for k in the next beat: hi = 0 and a full beat not ending the packet.
            for k in range(lanes):
                c = (k - p - 1) % lanes
                if c + p + 1 < lanes:
                    m.d.comb += nx[k + 1].eq(hzc[c] & (lq[0] & therm_k[c + p + 1] | lq[1] & neop))
                else:
                    m.d.comb += nx[k + 1].eq(hzc[c] & lq[0] & neop)
            m.d.comb += [nx[0].eq(in_eop & ~hold), nx[lanes + 1].eq(neop & ~lt2)]
            pre_nx[p], pre_hold[p] = nx, hold
            pre_rem1[p] = (n + (p + 1 - lanes))[:16]
            pre_last[p] = zl & zh & lqlast
            pre_zero[p] = high_byte_zero(hb) & high_byte_zero(lbyte)

        pre_book, pre_lenok, pre_known = [], [], []
        stream = [*hist, *in_bytes]
        for t in range(lanes):
            n = Cat(stream[t + 1], stream[t])
            hb = stream[t]
            expected, book, known = types[t]
            # Kept nets again: the type's length (each bit one function of the type byte), the length's
            # high-bit test and the comparison in pairs of bits, so that the check is one LUT4 over four
            # nets at most two levels deep (a comparison with the decoded length was six levels).
            expected.attrs["keep"] = 1
            n_high_zero = Signal(name=f"pre_nhz{t}", attrs={"keep": 1})
            m.d.comb += n_high_zero.eq(high_byte_zero(hb) & (n[6:8] == 0))
            pair_eq = []
            for b in range(0, 6, 2):
                eq = Signal(name=f"pre_neq{t}_{b}", attrs={"keep": 1})
                m.d.comb += eq.eq(n[b : b + 2] == expected[b : b + 2])
                pair_eq.append(eq)
            pre_book.append(book)
            pre_lenok.append(n_high_zero & Cat(*pair_eq).all())
            pre_known.append(known)
        # The input register's data is loaded whenever it may be (in_ready), whether or not a beat is
        # offered: its enable (some 570 flip-flops) then waits only for the tracker, not for i.valid or
        # keep. Its contents count only with p_valid; the byte history follows only real beats.
        with m.If(in_ready):
            m.d.sync += p_valid.eq(src_valid)
        # The offered beat's offset in its packet: the one after the last real beat loaded, taken from
        # the input register while it holds that beat and kept in woff_bak for the cycles it holds none
        # (as the history, so no enable waits for i.ready and i.valid together).
        in_woff = Signal(16)
        p_woff = Signal(16)
        woff_bak = Signal(16)
        woff_after = Signal(16)
        m.d.comb += woff_after.eq(Mux(p_eop, 0, p_woff + lanes))
        with m.If(p_valid):
            m.d.sync += woff_bak.eq(woff_after)
        m.d.comb += in_woff.eq(Mux(p_valid, woff_after, woff_bak))
        with m.If(in_ready):
            m.d.sync += [
                p_therm.eq(therm),
                p_count.eq(in_count),
                p_eop.eq(in_eop),
                p_prev.eq(hist[1]),
                p_woff.eq(in_woff),
                *[p_bytes[k].eq(in_bytes[k]) for k in range(lanes)],
            ]
            for t in range(lanes):
                m.d.sync += [p_book[t].eq(pre_book[t]), p_lenok[t].eq(pre_lenok[t]), p_known[t].eq(pre_known[t])]
            for p in positions:
                m.d.sync += [
                    x_nx[p].eq(pre_nx[p]), x_hold[p].eq(pre_hold[p]),
                    x_rem1[p].eq(pre_rem1[p]), x_last[p].eq(pre_last[p]), x_zero[p].eq(pre_zero[p]),
                ]
            m.d.sync += s_trunc.eq(~(therm[0] & (pre_hold[-1] | ~in_eop)))
            m.d.sync += x_fn.eq(Cat(*[therm[p] & (pre_nx[p][0] if p < lanes - 1 else in_eop) for p in range(lanes)]))
        # The history follows every real beat, even a short one: that ends the packet, and framing then
        # restarts at lane 0, where the history is not used.
        p_last2 = [p_bytes[-2] if lanes > 1 else p_prev, p_bytes[-1]]
        with m.If(p_valid):
            m.d.sync += [hist_bak[k].eq(p_last2[k]) for k in range(2)]
        m.d.comb += [hist[k].eq(Mux(p_valid, p_last2[k], hist_bak[k])) for k in range(2)]
        # Their nibble zero tests, registered beside them (from the port's own tests).
        last2_src = [in_bytes[-2] if lanes > 1 else hist[1], in_bytes[-1]]
        for k in range(2):
            pz = [Signal(name=f"p_last{k}_zl"), Signal(name=f"p_last{k}_zh")]
            bz = [Signal(name=f"hist_bak{k}_zl", init=1), Signal(name=f"hist_bak{k}_zh", init=1)]
            with m.If(in_ready):
                m.d.sync += [pz[h].eq(zero_nib[id(last2_src[k])][h]) for h in range(2)]
            with m.If(p_valid):
                m.d.sync += [bz[h].eq(pz[h]) for h in range(2)]
            m.d.comb += [hist_zero[k][h].eq(Mux(p_valid, pz[h], bz[h])) for h in range(2)]
        x_n = {p: Cat(p_bytes[p + 1], p_bytes[p]) for p in positions if p >= 0}
        s_n = Cat(p_bytes[0], p_prev)

        # -- 3. slot registers (declared before the tracker, which writes them) ------------------------
        slot_n = [Signal(16, name=f"slot{s}_n") for s in range(nslots)]
        slot_off = [Signal(16, name=f"slot{s}_off") for s in range(nslots)]
        slot_trunc = [Signal(2, name=f"slot{s}_trunc") for s in range(nslots)]  # 1 body, 2 prefix
        # A truncated frame's body bytes = base + count (added in O2, off the tracker's and O1's paths).
        slot_base = [Signal(signed(18), name=f"slot{s}_base") for s in range(nslots)]
        slot_count = [Signal(range(lanes + 1), name=f"slot{s}_count") for s in range(nslots)]
        slot_buf = [[Signal(8, name=f"slot{s}_b{j}") for j in range(nbuf)] for s in range(nslots)]
        free = Signal(init=1)  # slot `wr` may be allocated this cycle (registered, conservative)

        # -- 2. frame tracker --------------------------------------------------------------------------
        # One-hot state: pos[p] (p = 0 .. lanes): the next prefix would start at lane p of this beat, the
        # current frame (if any, p > 0) ends at lane p - 1; pos[0] is also idle. cont: the current frame
        # goes on past this beat. half: the previous beat ended with a prefix's high byte. Every next
        # state is a one-hot select of precomputed one-hot vectors (x_nx), i.e. a shallow AND-OR.
        state = Signal(nstate, init=1)
        pos = [state[p] for p in range(lanes + 1)]
        cont, half = state[lanes + 1], state[lanes + 2]
        sel = {p: (half if p < 0 else pos[p]) for p in positions}  # where the next prefix is
        rem1 = Signal(16)  # in cont: lane of the frame's last byte, counted from this beat
        cont_last = Signal()  # in cont: that byte is in the next beat
        cur_off = Signal(signed(18))  # message index of lane 0 of this beat, for the current frame
        # cur_off mod lanes, the current frame's rotation, as one-hot (the rotator is then an AND-OR of
        # pairs, two LUT levels, rather than a decode and a mux tree) and as a thermometer (rot_ge[t]:
        # rotation <= t, for the write enables), both registered from constants by position.
        cur_rot = Signal(lanes, init=1)
        rot_ge = Signal(lanes, init=(1 << lanes) - 1)
        cur_win = Signal(nwords + 2)  # one-hot of cur_off // lanes + 2 (the slot word lane 0 falls in)
        cur = Signal(nslots, init=1)  # one-hot: slot of the current frame
        wr = Signal(nslots, init=1)  # one-hot: slot the next frame gets
        woff = p_woff  # offset of lane 0 of this beat within the packet (a multiple of lanes)

        count, eop = p_count, p_eop
        active = Signal()  # inside a frame whose length prefix has been read
        m.d.comb += active.eq(~pos[0] & ~half)

        def one_hot_sum(terms):
            acc = 0
            for on, value in terms:
                acc = acc | Mux(on, value, 0)
            return acc

        def by_pos(name, width, fn, *, signed_=False):
            """fn(p) for the position p of the next prefix, as an OR of constants. A kept net: abc9 would
            otherwise build these from one another (the rotation is the low bits of the offset) and chain
            them into the slot metadata's selects, 5 LUT levels from the state."""
            out = Signal(signed(width) if signed_ else width, name=name, attrs={"keep": 1})
            m.d.comb += out.eq(one_hot_sum([(pos[p], Const(fn(p), out.shape())) for p in range(lanes + 1)]))
            return out

        start = Signal()  # a frame starts in this beat
        full = Signal()  # ... and both bytes of its prefix are here
        new_hold = Signal()  # ... and all of it: the beat is seen again
        hold = Signal()  # a whole frame (new or with a split prefix) is in this beat
        m.d.comb += [
            start.eq(Cat(*[pos[p] & p_therm[p] for p in range(lanes)]).any()),
            full.eq(Cat(*[pos[p] & p_therm[p + 1] for p in positions if p >= 0]).any()),
            new_hold.eq(Cat(*[pos[p] & x_hold[p] for p in positions if p >= 0]).any()),
            hold.eq(Cat(*[sel[p] & x_hold[p] for p in positions]).any()),
        ]
        new_n = Signal(16)
        new_zero = Signal()
        m.d.comb += [
            new_n.eq(one_hot_sum([(pos[p], x_n[p]) for p in positions if p >= 0])),
            new_zero.eq(Cat(*[pos[p] & x_zero[p] for p in positions if p >= 0]).any()),
        ]

        go = Signal()
        m.d.comb += go.eq(p_valid & free)
        stall = Signal()  # with a beat present: it stays (no free slot, or held)
        state_new = Signal(nstate)  # the tracker's next state when it steps (go)
        # i.ready and the input register's enable (some 570 flip-flops) wait for `hold`. Built as
        # kept groups of two (state, hold) pairs, one LUT each, then the enable over the groups.
        hold_groups = []
        pairs = [sel[p] & x_hold[p] for p in positions]
        for g in range(0, len(pairs), 2):
            grp = Signal(name=f"hold_grp{g // 2}", attrs={"keep": 1})
            m.d.comb += grp.eq(Cat(*pairs[g : g + 2]).any())
            hold_groups.append(grp)
        m.d.comb += stall.eq(~free | Cat(*hold_groups).any())
        in_ready.attrs["keep"] = 1  # one LUT6 over the groups, free and p_valid, not shared
        m.d.comb += in_ready.eq(~p_valid | ~stall)

        # Slot events of this cycle.
        fin_cur = Signal()  # the current frame is finished (normally or truncated)
        trunc_cur = Signal(2)
        alloc = Signal()
        fin_new = Signal()
        trunc_new = Signal(2)
        wr_next = Signal(nslots)
        m.d.comb += wr_next.eq(wr.rotate_left(1))

        # New frame at lane p: message index of lane 0 = -(p + 2), so its rotation is that mod lanes.
        new_rot = by_pos("new_rot", lanes, lambda p: 1 << (-(p + 2) % lanes))
        new_ge = by_pos("new_ge", lanes, lambda p: sum(1 << t for t in range(lanes) if -(p + 2) % lanes <= t))
        new_off_hold = by_pos("new_off_hold", 18, lambda p: -(p + 2), signed_=True)
        new_lane = by_pos("new_lane", lbits, lambda p: p % lanes)
        new_off = Signal(16)  # the new frame's offset in the packet (woff is a multiple of lanes)
        m.d.comb += new_off.eq(Cat(new_lane, woff[lbits:]) if lanes > 1 else woff)

        def win_onehot(cw: int) -> Const:
            return Const(1 << (cw + 2), nwords + 2)

        sel_s_hold = Signal()  # split prefix completed, whole frame in this beat
        sel_s_trunc = Signal()  # split prefix, packet ends
        sel_cont = Signal()  # frame continues through this beat
        sel_new_adv = Signal()  # new frame continues into the next beat
        sel_new_half = Signal()  # new frame's prefix split over this beat and the next
        c_trunc = Signal()  # the current frame is cut by the packet's end
        m.d.comb += [
            sel_s_hold.eq(half & x_hold[-1]),
            sel_s_trunc.eq(half & s_trunc),
            sel_cont.eq(cont & ~eop),
            # from registers here: in the input register, the hold it depends on is three levels deep
            sel_new_adv.eq(~eop & Cat(*[pos[p] & ~x_hold[p] for p in positions if p >= 0]).any()),
            sel_new_half.eq(pos[lanes - 1] & ~eop),
            c_trunc.eq(Cat(*[pos[p] & ~p_therm[p - 1] for p in range(1, lanes + 1)], cont & eop).any()),
        ]

        rem_pos = Signal(nstate)  # in cont: the state of the beat holding the frame's last byte
        for k in range(lanes):
            m.d.comb += rem_pos[k + 1].eq(rem1[:lb] == k if lb else 1)
        m.d.comb += state_new.eq(one_hot_sum([
            *[(sel[p], x_nx[p]) for p in positions],
            (pos[lanes - 1], Mux(eop, Const(1, nstate), Const(1 << (lanes + 2), nstate))),
            (pos[lanes], Const(1, nstate)),
            (cont, Mux(eop, Const(1, nstate), Mux(cont_last, rem_pos, Const(1 << (lanes + 1), nstate)))),
        ]))
        with m.If(go):
            m.d.sync += [
                state.eq(state_new),
                rem1.eq(Mux(cont, Cat(rem1[:lb], (rem1[lb:] - 1)[: 16 - lb]),
                            one_hot_sum([(sel[p], x_rem1[p]) for p in positions]))),
                cont_last.eq(Mux(cont, rem1[lb:] == 2, Cat(*[sel[p] & x_last[p] for p in positions]).any())),
            ]
            # The current frame's window, written on every step without an enable: in the states where
            # none of these applies the next beat writes no slot bytes (it is idle), so the value is
            # free. A split prefix's frame keeps its window (-1) while its beat is held.
            start_off = [Mux(x_hold[p], -(p + 2), lanes - p - 2) for p in positions if p >= 0]
            start_win = [Mux(x_hold[p], win_onehot(-1), win_onehot(0)) for p in positions if p >= 0]
            with m.If(cont | half & ~x_hold[-1]):
                m.d.sync += [cur_off.eq(cur_off + lanes), cur_win.eq(cur_win << 1)]
            with m.Elif(~half):
                m.d.sync += [
                    cur_off.eq(one_hot_sum([*[(pos[p], start_off[p]) for p in positions if p >= 0],
                                            (pos[lanes - 1], Const(-1, signed(18)))])),
                    cur_win.eq(one_hot_sum([*[(pos[p], start_win[p]) for p in positions if p >= 0],
                                            (pos[lanes - 1], win_onehot(-1))])),
                ]
            with m.If(start):
                m.d.sync += [cur.eq(wr), wr.eq(wr_next), cur_rot.eq(new_rot), rot_ge.eq(new_ge)]

        m.d.comb += [
            alloc.eq(go & start),
            fin_cur.eq(go & (Cat(*pos[1:]).any() | (cont & eop) | sel_s_trunc)),
            trunc_cur.eq(Mux(half & ~p_therm[0], 2, Mux(c_trunc | sel_s_trunc, 1, 0))),
            fin_new.eq(go & Cat(*[pos[p] & x_fn[p] for p in range(lanes)]).any()),  # = go & start & eop & ~new_hold
            trunc_new.eq(Mux(full, 1, 2)),
        ]

        # Data path: message byte j of a frame lands in its slot's byte j. Only the current frame's slot is
        # written, through one rotator (rotation cur_rot). A frame's bytes in the beat where it starts
        # (its head) are written one cycle later, from a copy of that beat with the same rotation, so no
        # slot write depends on this cycle's tracker decisions: only on registers.
        # The rotator's outputs are kept nets: left to itself, abc9 shares terms between the 8:1 muxes,
        # the head select and the write enables and builds 4 LUT levels where 2 do.
        rot_a = [Signal(8, name=f"rot_a{t}", attrs={"keep": 1}) for t in range(lanes)]
        for t in range(lanes):
            m.d.comb += rot_a[t].eq(one_hot_sum([(cur_rot[r], p_bytes[(t - r) % lanes]) for r in range(lanes)]))
        head = max(lanes - 2, 0)  # body bytes of a frame that can be in the beat where it starts
        prev_bytes = [Signal(8, name=f"prev_b{k}") for k in range(lanes)]
        head_flag = Signal()  # the current frame started in the previous beat: write its head now
        # The copy moves with the input register (the same enable): the head is written in the cycle
        # right after the step that started the frame, whether or not a beat is there then.
        with m.If(in_ready):
            m.d.sync += [prev_bytes[k].eq(p_bytes[k]) for k in range(lanes)]
        m.d.sync += head_flag.eq(go & sel_new_adv)
        rot_h = [Signal(8, name=f"rot_h{t}", attrs={"keep": 1}) for t in range(head)]
        for t in range(head):
            m.d.comb += rot_h[t].eq(one_hot_sum([(cur_rot[r], prev_bytes[(t - r) % lanes]) for r in range(lanes)]))

        # Written whenever a beat is present, even in a stalled cycle: the beat and the tracker state are
        # then unchanged, so the same bytes are written again.
        cur_writes = Signal()
        m.d.comb += cur_writes.eq(p_valid & active | p_valid & half)
        # Which slot bytes this beat covers: lane t holds message index cur_off + t.
        cur_hit = Signal(nbuf)
        for j in range(nbuf):
            b, t = j // lanes, j % lanes
            m.d.comb += cur_hit[j].eq((cur_win[b + 2] & rot_ge[t]) | (cur_win[b + 1] & ~rot_ge[t]))
        head_hit = Signal(max(head, 1))
        for j in range(head):
            m.d.comb += head_hit[j].eq(head_flag & ~rot_ge[j])
        hit = [cur_writes & cur_hit[j] | head_hit[j] if j < head else cur_writes & cur_hit[j] for j in range(nbuf)]

        # The slot data write (W) happens one cycle after the tracker's step, from registers: the rotated
        # beat, the rotated head, the byte enables and the slot. The rotator then ends in a register next
        # to it instead of fanning out to 3 x 44 slot bytes in the same cycle. A frame's last write can
        # be in the cycle O1 takes its slot: O1 then takes those bytes from W (`w_byp`), so latency stays.
        w_a = [Signal(8, name=f"w_a{t}") for t in range(lanes)]
        w_h = [Signal(8, name=f"w_h{t}") for t in range(head)]
        w_hh = Signal(max(head, 1))  # the byte comes from the head
        w_hit = Signal(nbuf)
        w_slot = Signal(nslots)
        m.d.sync += [
            *[w_a[t].eq(rot_a[t]) for t in range(lanes)],
            *[w_h[t].eq(rot_h[t]) for t in range(head)],
            w_hh.eq(head_hit),
            w_hit.eq(Cat(*hit)),
            w_slot.eq(cur),
        ]
        wdata = [Mux(w_hh[j], w_h[j], w_a[j % lanes]) if j < head else w_a[j % lanes] for j in range(nbuf)]

        # Type and length decode of the byte written to slot byte 0 (the type byte): the input register
        # decoded every lane already; select the lane the rotation puts in slot byte 0.
        prev_book = [Signal(len(BOOK_TYPES), name=f"prev_book{t}") for t in range(lanes)]
        prev_lenok = Signal(lanes)
        prev_known = Signal(lanes)
        with m.If(in_ready):
            m.d.sync += [*[prev_book[t].eq(p_book[t]) for t in range(lanes)], prev_lenok.eq(p_lenok),
                         prev_known.eq(p_known)]
        dec_book = Signal(len(BOOK_TYPES))
        dec_lenok = Signal()
        dec_known = Signal()
        # The lane rot_a[0] takes is -r mod lanes.
        m.d.comb += [
            dec_book.eq(one_hot_sum([(cur_rot[r], p_book[-r % lanes]) for r in range(lanes)])),
            dec_lenok.eq(one_hot_sum([(cur_rot[r], p_lenok[-r % lanes]) for r in range(lanes)])),
            dec_known.eq(one_hot_sum([(cur_rot[r], p_known[-r % lanes]) for r in range(lanes)])),
        ]
        if head:
            with m.If(head_hit[0]):
                m.d.comb += [
                    dec_book.eq(one_hot_sum([(cur_rot[r], prev_book[-r % lanes]) for r in range(lanes)])),
                    dec_lenok.eq(one_hot_sum([(cur_rot[r], prev_lenok[-r % lanes]) for r in range(lanes)])),
                    dec_known.eq(one_hot_sum([(cur_rot[r], prev_known[-r % lanes]) for r in range(lanes)])),
                ]
        kinds = []
        for s in range(nslots):
            is_cur = Signal(name=f"slot{s}_is_cur")
            m.d.comb += is_cur.eq(cur_writes & cur[s])
            for j in range(nbuf):
                with m.If(w_slot[s] & w_hit[j]):
                    m.d.sync += slot_buf[s][j].eq(wdata[j])
            book = Signal(len(BOOK_TYPES), name=f"slot{s}_book")
            lenok = Signal(name=f"slot{s}_lenok")
            known = Signal(name=f"slot{s}_known")
            zero = Signal(name=f"slot{s}_zero")
            kinds.append((book, lenok, known, zero))
            with m.If(cur[s] & hit[0]):
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
                m.d.sync += [slot_n[s].eq(s_n), zero.eq(x_zero[-1])]

        # -- 4. output: O1 takes the oldest finished slot, O2 (the output register) builds the record --
        rd = Signal(nslots, init=1)  # one-hot: oldest slot
        # Slots are filled, finished and taken in order, so the finished ones waiting for O1 are a run
        # from rd and only their number matters: `done` is that number as a thermometer code (done[k]:
        # at least k + 1), and O1 may take when done[0]. Its next value needs no slot index, only
        # whether one or two frames finished and whether O1 takes: an AND-OR of a few registers (per
        # slot pending bits selected through rd were 4 LUT levels in front of O1's enable).
        done = Signal(nslots)
        eligible = Signal()
        m.d.comb += eligible.eq(done[0])
        o1_valid = Signal()
        o2_take = Signal()  # O1 moves into the output register
        m.d.comb += o2_take.eq(o1_valid & (~self.o.valid | self.o.ready))
        o1_take = Signal()  # the oldest slot moves into O1
        m.d.comb += o1_take.eq(eligible & (~o1_valid | o2_take))
        # done's next value: shifted down by a take, then up by each finished frame (at most two).
        t = [Const(1, 1), Const(1, 1), *done, Const(0, 1)]  # t[k + 2] = done[k]; below 0 always true
        for k in range(nslots):
            kept = Mux(o1_take, t[k + 3], t[k + 2])
            up1 = Mux(o1_take, t[k + 2], t[k + 1])
            up2 = Mux(o1_take, t[k + 1], t[k])
            m.d.sync += done[k].eq(kept | (fin_cur | fin_new) & up1 | fin_cur & fin_new & up2)

        def one_hot_select(values):
            acc = 0
            for s in range(nslots):
                acc = acc | Mux(rd[s], values[s], 0)
            return acc

        o1_buf = [Signal(8, name=f"o1_b{j}") for j in range(nbuf)]
        o1_n = Signal(16)
        o1_off = Signal(16)
        # A truncated frame's body bytes (the record's detail) = base + count, added in O2: the adder
        # behind the slot select was a critical path of O1.
        o1_base = Signal(signed(18))
        o1_count = Signal(range(lanes + 1))
        o1_trunc_body = Signal()
        o1_status = Signal(8)  # final unless NON_ASCII applies (decided in O2)
        o1_book = Signal(len(BOOK_TYPES))  # one-hot type of a well-formed, untruncated book message
        o1_type_ok = Signal()  # an untruncated frame with a type byte
        alpha_groups: dict[tuple[int, ...], list[int]] = {}  # alpha byte positions -> book type indexes
        for i, code in enumerate(BOOK_TYPES):
            positions = tuple(sorted({src.offset + k for src in SOURCES[code] if src.kind == ALPHA
                                      for k in range(src.width)}))
            if positions:
                alpha_groups.setdefault(positions, []).append(i)
        # per group: some alpha byte has bit 7 set (in O2); kept, two levels, so the status is two more
        o1_high = Signal(len(alpha_groups), attrs={"keep": 1})

        # w_byp[j]: W writes byte j of the slot O1 takes in this cycle; registered from the next values.
        # Which slot O1 reads next cycle is only known late (o1_take), so whether the current frame's
        # slot is rd (crd0) or the one after it (crd1) are registers of their own, and o1_take only
        # picks one.
        w_byp = Signal(nbuf)
        crd0 = Signal(init=1)  # cur == rd
        crd1 = Signal()  # cur == rd + 1
        cur_next = Mux(go & start, wr, cur)
        rd_next = Mux(o1_take, rd.rotate_left(1), rd)
        m.d.sync += [crd0.eq((cur_next & rd_next).any()), crd1.eq((cur_next & rd_next.rotate_left(1)).any())]
        w_rd = Signal()
        m.d.comb += w_rd.eq(Mux(o1_take, crd1, crd0))
        m.d.sync += w_byp.eq(Cat(*[h & w_rd for h in hit]))
        sel_buf = [Mux(w_byp[j], wdata[j], one_hot_select([slot_buf[s][j] for s in range(nslots)]))
                   for j in range(nbuf)]
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
                o1_base.eq(one_hot_select(slot_base)),
                o1_count.eq(one_hot_select(slot_count)),
                o1_trunc_body.eq(sel_trunc_body),
                o1_status.eq(one_hot_select(slot_status)),
                o1_book.eq(one_hot_select(slot_book)),
                o1_type_ok.eq(one_hot_select(slot_typed)),
                rd.eq(rd.rotate_left(1)),
            ]
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
        m.d.comb += o1_high.eq(Cat(*[Cat(*[o1_buf[j][7] for j in positions]).any() for positions in alpha_groups]))
        m.d.comb += bad.eq(Cat(*[o1_high[g] & Cat(*[o1_book[i] for i in types]).any()
                                 for g, types in enumerate(alpha_groups.values())]).any())
        m.d.comb += [
            # A book type is only selected (o1_book) for an OK frame, so with `bad` o1_status is OK (0) and
            # NON_ASCII can be ORed in: one OR per bit instead of a multiplexer behind the whole check.
            record.status.eq(o1_status | Mux(bad, ItchStatus.NON_ASCII, 0)),
            record.type.eq(Mux(o1_type_ok, o1_buf[0], 0)),
            record.offset.eq(o1_off),
            record.length.eq(o1_n),
            record.detail.eq(Mux(o1_trunc_body, o1_base + o1_count, 0)),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(o2_take):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(record)]
        return m
