"""Price-level bookkeeping of the matcher: which price positions hold orders, and in what order
to visit them.

* :func:`first_set`: a balanced-tree priority encoder (lowest or highest set bit).
* :class:`LevelBitmap`: one occupancy bit per price position, kept as words in distributed RAM
  plus a summary register with one bit per non-empty word. Clearing the summary empties the
  whole bitmap in one cycle (a word whose summary bit is clear reads as zero).
* :class:`LevelWalker`: visits the occupied positions beyond a start position, best first for
  the side being walked (ascending for asks, descending for bids), one per cycle.
* :class:`LevelQueue`: a small register FIFO with flush, between the walker (after the level
  memory read) and the sweep.

The book never rests crossed, so bids and asks never share a price position: one bitmap serves
both sides, and the side of an occupied position follows from the best bid and ask.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value
from amaranth.build import Platform
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["LevelBitmap", "LevelQueue", "LevelWalker", "first_set"]


def _bits_for(count: int) -> int:
    """Address bits for ``count`` items (at least 1, so signals never have zero width)."""
    return max(1, (count - 1).bit_length())


def first_set(value: Value, *, lowest: bool) -> tuple[Value, Value]:
    """(index, any) of the lowest (or highest) set bit of ``value``, as a balanced mux tree.

    ``index`` has ``ceil(log2(len(value)))`` bits (at least one) and is meaningless when ``any``
    is 0. A tree keeps the depth logarithmic; a chain of ``If``s would be as deep as the width.
    """
    width = len(value)
    size = 1
    while size < max(width, 2):
        size *= 2
    bits = [value[i] for i in range(width)] + [Const(0, 1)] * (size - width)

    def walk(lo: int, n: int):
        if n == 2:
            a, b = bits[lo], bits[lo + 1]
            return (~a if lowest else b), a | b
        index_lo, any_lo = walk(lo, n // 2)
        index_hi, any_hi = walk(lo + n // 2, n // 2)
        take_hi = ~any_lo if lowest else any_hi
        return Cat(Mux(take_hi, index_hi, index_lo), take_hi), any_lo | any_hi

    index, any_ = walk(0, size)
    return index, any_


def _onehot(index, width: int):
    """A ``width``-bit one-hot decode of ``index`` (a row of comparators, no shifter)."""
    return Cat(*(index == i for i in range(width)))


class LevelBitmap(wiring.Component):
    """Occupancy of ``levels`` price positions in words of ``group_width`` bits.

    Update port: ``upd_en`` sets (``upd_set``) or clears bit ``upd_level`` at the clock edge.
    Query port: ``q_bit`` is bit ``q_level`` now. Walker ports: ``rd_word`` is word ``rd_group``
    and ``start_word`` word ``start_group`` now (asynchronous reads, zero for an empty group).
    ``summary`` has one bit per word that may be non-empty: set for every non-empty word, and
    still set for a cycle after the update that empties a word (its OR-reduction is registered
    first; the words themselves are always exact). ``clear`` empties the bitmap (it wins over an
    update in the same cycle). ``start_word`` and ``walk_summary`` already include this cycle's
    update (and clear), so a walk that starts now sees the bitmap as it will be and the update
    can come from a register stage behind the decision that made it. ``walk_summary`` forwards
    only a set: a word an update empties still shows as non-empty (for two cycles), which costs a
    walker a cycle on an empty word but keeps the word's read and OR-reduction off the path.
    """

    def __init__(self, levels: int, group_width: int) -> None:
        if group_width & (group_width - 1) or group_width < 2:
            raise ValueError(f"group_width must be a power of two >= 2, got {group_width}")
        self.levels = levels
        self.group_width = group_width
        self.groups = -(-levels // group_width)
        self.level_bits = _bits_for(levels)
        self.group_bits = _bits_for(self.groups)
        super().__init__({
            "upd_en": In(1),
            "upd_level": In(self.level_bits),
            "upd_set": In(1),
            "q_level": In(self.level_bits),
            "q_bit": Out(1),
            "rd_group": In(self.group_bits),
            "rd_word": Out(group_width),
            "start_group": In(self.group_bits),
            "start_word": Out(group_width),
            "summary": Out(self.groups),
            "walk_summary": Out(self.groups),
            "clear": In(1),
        })

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        gw = self.group_width
        shift = gw.bit_length() - 1
        m.submodules.words = words = Memory(shape=gw, depth=self.groups, init=[])
        upd_read = words.read_port(domain="comb")
        walk_read = words.read_port(domain="comb")
        query_read = words.read_port(domain="comb")
        write = words.write_port()
        # The start word comes from a copy of its own: on a shared memory, synthesis would merge
        # its port with the walker's (the walker selects between the two words) and put the
        # walker's late ``start`` in front of the RAM address.
        m.submodules.start_words = start_words = Memory(shape=gw, depth=self.groups, init=[])
        start_read = start_words.read_port(domain="comb")
        start_write = start_words.write_port()

        group = Signal(self.group_bits)
        bit = Signal(shift)
        m.d.comb += [group.eq(self.upd_level >> shift), bit.eq(self.upd_level[:shift])]
        word = Signal(gw)
        m.d.comb += [
            upd_read.addr.eq(group),
            word.eq(Mux(self.summary.bit_select(group, 1), upd_read.data, 0)),
        ]
        q_group = self.q_level >> shift
        m.d.comb += [
            query_read.addr.eq(q_group),
            self.q_bit.eq(self.summary.bit_select(q_group, 1) & query_read.data.bit_select(self.q_level[:shift], 1)),
        ]
        onehot = _onehot(bit, gw)
        new_word = Signal(gw)
        m.d.comb += [
            new_word.eq(Mux(self.upd_set, word | onehot, word & ~onehot)),
            write.addr.eq(group),
            write.data.eq(new_word),
            write.en.eq(self.upd_en & ~self.clear),
            start_write.addr.eq(group),
            start_write.data.eq(new_word),
            start_write.en.eq(self.upd_en & ~self.clear),
        ]
        # A set makes its word non-empty, known without reading it: the summary bit is set at
        # once. Whether a clear empties its word is known only after the word's read and update
        # and a 32-bit OR: that is done a cycle later, from a register (``pend_*``), so the summary
        # may show a word that has just been emptied as non-empty for a cycle more. Nothing needs
        # it exact: a word whose summary bit is set is read from the memory (which is exact), and
        # a walker that loads an empty word just goes on to the next one.
        pend_en = Signal()
        pend_group = Signal(self.group_bits)
        pend_word = Signal(gw)
        m.d.sync += [pend_en.eq(self.upd_en & ~self.upd_set & ~self.clear), pend_group.eq(group),
                     pend_word.eq(new_word)]
        with m.If(self.clear):
            m.d.sync += self.summary.eq(0)
        with m.Else():
            with m.If(pend_en):
                for g in range(self.groups):
                    with m.If(pend_group == g):
                        m.d.sync += self.summary[g].eq(pend_word.any())
            with m.If(self.upd_en & self.upd_set):  # after the pending clear: a set wins
                for g in range(self.groups):
                    with m.If(group == g):
                        m.d.sync += self.summary[g].eq(1)
        with m.If(self.clear):
            m.d.comb += self.walk_summary.eq(0)
        with m.Elif(self.upd_en & self.upd_set):
            m.d.comb += self.walk_summary.eq(self.summary | _onehot(group, self.groups))
        with m.Else():
            m.d.comb += self.walk_summary.eq(self.summary)

        m.d.comb += [
            walk_read.addr.eq(self.rd_group),
            self.rd_word.eq(Mux(self.summary.bit_select(self.rd_group, 1), walk_read.data, 0)),
            start_read.addr.eq(self.start_group),
        ]
        with m.If(self.clear):
            m.d.comb += self.start_word.eq(0)
        with m.Elif(self.upd_en & (group == self.start_group)):
            m.d.comb += self.start_word.eq(new_word)
        with m.Else():
            m.d.comb += self.start_word.eq(Mux(self.summary.bit_select(self.start_group, 1), start_read.data, 0))
        return m


class LevelWalker(wiring.Component):
    """Visits occupied price positions strictly beyond ``start_level``, best first.

    ``start`` (one cycle) loads the walk: ascending from ``start_level`` (asks) or, with
    ``desc``, descending (bids). Two cycles later ``level`` is valid while ``valid`` (both are
    registers); it advances when ``ready``. ``done`` means no position is left. The start word
    comes through its own bitmap port (``start_group``/``start_word``) so that ``start``, which
    the matcher derives from deep decisions, only selects at the flip-flops.

    For a caller that only wants the first position (the matcher's best-price repair), the
    cycle after ``start`` shows it a cycle early and combinationally: ``first_valid`` and
    ``first_level``, or ``first_none`` when nothing is beyond the start (neither is set while a
    further word is still being loaded; ``first_none`` waits a cycle more after the start, while
    the walker works out which groups are left). While ``valid`` is low, ``take_first`` takes that
    position straight away (the caller uses ``first_level`` this cycle) instead of letting it
    into the output register: a cycle saved whenever the output register has run empty. Connect ``summary``,
    ``word_group`` and ``word`` to a :class:`LevelBitmap` (its walker port). The walk works on a
    snapshot: positions beyond the start must not change while it runs (the matcher only
    changes positions it has already passed).

    One position per cycle, also across words: the next non-empty word is found from the
    summary snapshot and read in the cycle the current word runs out.
    """

    def __init__(self, levels: int, group_width: int) -> None:
        self.levels = levels
        self.group_width = group_width
        self.groups = -(-levels // group_width)
        self.level_bits = _bits_for(levels)
        self.group_bits = _bits_for(self.groups)
        super().__init__({
            "start": In(1),
            "start_level": In(self.level_bits),
            "desc": In(1),
            "summary": In(self.groups),
            "word_group": Out(self.group_bits),
            "word": In(group_width),
            "start_group": Out(self.group_bits),
            "start_word": In(group_width),
            "valid": Out(1),
            "level": Out(self.level_bits),
            "ready": In(1),
            "done": Out(1),
            "first_valid": Out(1),
            "first_level": Out(self.level_bits),
            "first_none": Out(1),
            "take_first": In(1),
        })

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        gw = self.group_width
        shift = gw.bit_length() - 1
        groups_left = Signal(self.groups)
        cur_word = Signal(gw)
        cur_group = Signal(self.group_bits)
        desc = Signal()

        # Start: the word holding the start position, masked to the positions beyond it, and the
        # summary masked to the groups beyond its group.
        g0 = Signal(self.group_bits)
        b0 = Signal(shift)
        m.d.comb += [g0.eq(self.start_level >> shift), b0.eq(self.start_level[:shift])]
        beyond_bits = Mux(self.desc, Cat(*(b0 > i for i in range(gw))), Cat(*(b0 < i for i in range(gw))))
        beyond_groups = Mux(self.desc, Cat(*(g0 > g for g in range(self.groups))),
                            Cat(*(g0 < g for g in range(self.groups))))

        # Next group to load, in walk order: a register, the priority encoder working on the
        # groups left after this cycle, so that the word read (the bitmap's asynchronous port)
        # starts from a flip-flop.
        # Whether any group is left is a register too (an OR over every group is three LUT
        # levels, and ``first_none``/``done`` feed the matcher's decisions). Like ``next_group``
        # it is worked out in the cycle after a start (``group_pending``), when neither of them
        # is used.
        any_groups = Signal()
        next_group = Signal(self.group_bits)
        group_pending = Signal()  # next_group is not worked out yet (the cycle after a start)
        groups_next = Signal(self.groups)
        desc_next = Signal()
        m.d.comb += [self.word_group.eq(next_group), self.start_group.eq(g0)]

        # Current position: best remaining bit of the current word.
        bit_lo, any_bits = first_set(cur_word, lowest=True)
        bit_hi, _ = first_set(cur_word, lowest=False)
        bit = Signal(shift)
        m.d.comb += bit.eq(Mux(desc, bit_hi, bit_lo))
        # The word without its best bit, and whether a bit is left, without the priority encoder
        # (which only feeds the registered ``level``): ``w & (w - 1)`` clears the lowest bit, the
        # same on the bit-reversed word the highest, and "a bit left" is "two or more bits set"
        # either way. Carry chains are fast on ECP5; the encoder's mux tree feeding a one-hot
        # decoder was the walker's longest loop.
        rev = Signal(gw)
        m.d.comb += rev.eq(Cat(*reversed([cur_word[i] for i in range(gw)])))
        lo_cleared = Signal(gw)
        hi_cleared_rev = Signal(gw)
        m.d.comb += [lo_cleared.eq(cur_word & (cur_word - 1)), hi_cleared_rev.eq(rev & (rev - 1))]
        rest = Signal(gw)
        m.d.comb += rest.eq(Mux(desc, Cat(*reversed([hi_cleared_rev[i] for i in range(gw)])), lo_cleared))
        # The output is a register stage: it advances when empty or taken.
        advance = Signal()
        m.d.comb += advance.eq(~self.valid | self.ready)
        take = Signal()
        m.d.comb += take.eq(advance & any_bits)
        load = Signal()
        m.d.comb += load.eq(advance & any_groups & ~group_pending & (~any_bits | ~lo_cleared.any()))

        # The encoder works from registers only, its result chosen afterwards (``load`` comes
        # late: it waits for the current word's carry chain). After a start it first works on
        # the new groups for a cycle (``group_pending``: no load then), which keeps it off the
        # start position's own logic; that costs a cycle only when the walk leaves the start word
        # straight away.
        def first_group(groups, descending):
            lo, _ = first_set(groups, lowest=True)
            hi, _ = first_set(groups, lowest=False)
            return Mux(descending, hi, lo)

        load_groups = Signal(self.groups)
        m.d.comb += [
            load_groups.eq(groups_left & ~_onehot(next_group, self.groups)),
            groups_next.eq(groups_left),
            desc_next.eq(desc),
        ]
        with m.If(self.start):
            m.d.comb += [groups_next.eq(self.summary & beyond_groups), desc_next.eq(self.desc)]
            m.d.sync += group_pending.eq(1)
        with m.Elif(group_pending):
            m.d.sync += [next_group.eq(first_group(groups_left, desc)), group_pending.eq(0),
                         any_groups.eq(groups_left.any())]
        with m.Elif(load):
            m.d.comb += groups_next.eq(load_groups)
            m.d.sync += [next_group.eq(first_group(load_groups, desc)), any_groups.eq(load_groups.any())]
        m.d.sync += [groups_left.eq(groups_next), desc.eq(desc_next)]

        with m.If(self.start):
            m.d.sync += [
                cur_word.eq(self.start_word & beyond_bits),
                cur_group.eq(g0),
                self.valid.eq(0),
            ]
        with m.Else():
            with m.If(advance):
                m.d.sync += [self.valid.eq(any_bits & ~self.take_first), self.level.eq(Cat(bit, cur_group))]
            with m.If(load):
                m.d.sync += [
                    cur_word.eq(self.word),
                    cur_group.eq(next_group),
                ]
            with m.Elif(take):
                m.d.sync += cur_word.eq(rest)
        m.d.comb += [
            self.done.eq(~self.valid & ~any_bits & ~any_groups & ~group_pending & ~self.start),
            self.first_valid.eq(any_bits),
            self.first_level.eq(Cat(bit, cur_group)),
            self.first_none.eq(~any_bits & ~any_groups & ~group_pending),
        ]
        return m


class LevelQueue(wiring.Component):
    """A register FIFO of ``depth`` entries of ``width`` bits with a one-cycle ``flush``.

    ``head``/``nonempty`` show the oldest entry; ``pop`` removes it, ``push`` appends ``data``
    (both in one cycle is fine). ``count`` is the number of entries.
    """

    def __init__(self, width: int, depth: int = 4) -> None:
        if depth < 2 or depth & (depth - 1):
            raise ValueError(f"depth must be a power of two >= 2, got {depth}")
        self.width = width
        self.depth = depth
        super().__init__({
            "push": In(1),
            "data": In(width),
            "pop": In(1),
            "flush": In(1),
            "head": Out(width),
            "nonempty": Out(1),
            "count": Out(range(depth + 1)),
        })

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        bits = self.depth.bit_length() - 1
        entries = [Signal(self.width, name=f"entry{i}") for i in range(self.depth)]
        rptr = Signal(bits)
        wptr = Signal(bits)
        m.d.comb += [
            self.nonempty.eq(self.count != 0),
            self.head.eq(Cat(*entries).word_select(rptr, self.width)),
        ]
        do_pop = self.pop & self.nonempty
        with m.If(self.flush):
            m.d.sync += [rptr.eq(0), wptr.eq(0), self.count.eq(0)]
        with m.Else():
            with m.If(self.push):
                for i in range(self.depth):
                    with m.If(wptr == i):
                        m.d.sync += entries[i].eq(self.data)
                m.d.sync += wptr.eq(wptr + 1)
            with m.If(do_pop):
                m.d.sync += rptr.eq(rptr + 1)
            m.d.sync += self.count.eq(self.count + self.push - do_pop)
        return m
