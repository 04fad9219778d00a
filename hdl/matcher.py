"""The matching engine in gateware: one instrument's limit order book (issue #4).

Commands come in on ``i`` and event records go out on ``o``, both ``lib.stream`` ports whose
payloads are the record layouts of :mod:`exchange.matcher_format` (via :mod:`hdl.formats`).
The events, once the host (``host.matcher_driver``) has expanded them, are exactly those of the
reference engine (``exchange.engine.OrderBook``) with the hardware profile.

Storage (block RAM unless noted), for ``N = max_orders`` handles and ``2W`` price positions:

* ``orders``: per handle: remaining qty, price position, side, post-only, valid.
* ``next``/``prev``: per handle, its neighbours in its price level (a doubly linked list, so a
  cancel anywhere in a level is O(1)). List ends are recognised by the level's head and tail,
  so no null pointer is ever written.
* ``levels``: per price position: head and tail handle.
* occupancy bitmap (distributed RAM + summary register) and the level walker, which lists the
  occupied positions beyond a start position, best first, one per cycle.
* free-handle stack (``HandleAllocator``).

Pipeline, one command per cycle when commands are simple:

* A (accept): the reads a command needs are issued straight from the input payload: its order
  entry, the level it names, its new level (modify), the best opposite level, and its price
  position's occupancy bit.
* F (fetch): the read data are registered.
* X (execute): decisions from registers only (block RAM outputs are slow on ECP5).
* W (write): the block RAM writes X decided, from registers, a cycle later.

Read data wait in up to two hold slots while a long command executes; every slot *snoops* the
writes in W and takes any write to an address it holds, so held data never go stale. Read
ports are also transparent, so a read issued in the cycle of a write sees it (except the
fetcher's successor port, whose one exposed read is a hazard instead). A command whose
data a write still in W changes waits one cycle in X (a hazard, known from registers), so no
forwarding mux sits in front of the decisions.

A crossing order sweeps: a fetcher chases the makers' linked list through its own read ports
(one maker per cycle, the successor's address coming straight from the read data), with the
next levels prefetched by the walker through a small queue; the maker data are registered and
consumed one per cycle, one fill record each. The output is a small FIFO; when it has no room
the whole core holds (``go``, a register), which absorbs a stalling event sink without loss.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.build import Platform
from amaranth.hdl import EnableInserter
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from exchange.matcher_format import (
    EVENT_LAST,
    FLAG_HAS_PRICE,
    FLAG_HAS_QTY,
    FLAG_MARKET,
    FLAG_POST_ONLY,
    SIDE_BUY,
    SIDE_SELL,
    TIF_DAY,
    TIF_FOK,
    TIF_GTC,
    TIF_IOC,
    MatcherConfig,
    MatcherOp,
    MatcherReason,
    RecordKind,
)
from hdl.formats import struct_layout
from hdl.matcher_alloc import HandleAllocator
from hdl.matcher_levels import LevelBitmap, LevelQueue, LevelWalker

__all__ = ["Matcher", "default_matcher", "small_matcher"]


class State(enum.Enum, shape=4):
    """Control states of the execute stage."""

    IDLE = 0  # no command to execute
    EXEC = 1  # execute the command in slot C
    FIXUP = 2  # a best level emptied: the walker finds the next best
    RE_ENTER = 3  # a modify that lost priority comes back as an incoming order
    SW_LOAD = 4  # read the best opposite level before a sweep
    SW_INIT = 5  # register the level SW_LOAD read
    SWEEP = 6  # one maker per cycle
    SW_END = 7  # the taker finished a level exactly: find the new best level
    REMAINDER = 8  # what is left of the taker rests or is cancelled
    SW_GO = 9  # start the fetcher at the best opposite level (after SW_LOAD/SW_INIT)


class Matcher(wiring.Component):
    """One instrument's order book and matching engine.

    Parameters (or pass a :class:`~exchange.matcher_format.MatcherConfig`): ``max_orders``
    resting orders, ``window_ticks`` price positions on each side of the base, ``qty_width``
    bits of quantity, ``id_width`` bits of the handle field in the records. Bad values raise
    ValueError.

    Ports: ``i`` (command records), ``o`` (event records; ``flags & LAST`` ends a command's
    burst). Every command yields at least one record.
    """

    def __init__(self, config: MatcherConfig | None = None, *, out_depth: int = 8, queue_depth: int = 4,
                 **params: int) -> None:
        if config is None:
            config = MatcherConfig(**params)
        elif params:
            raise ValueError("give either a MatcherConfig or size parameters, not both")
        if out_depth < 4 or out_depth & (out_depth - 1):
            raise ValueError(f"out_depth must be a power of two >= 4, got {out_depth}")
        self.config = config
        self.out_depth = out_depth
        self.queue_depth = queue_depth
        self.command_shape = struct_layout(config.command_layout)
        self.event_shape = struct_layout(config.event_layout)
        super().__init__({
            "i": In(stream.Signature(self.command_shape)),
            "o": Out(stream.Signature(self.event_shape)),
        })

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        cfg = self.config
        n_orders = cfg.max_orders
        window = cfg.window_ticks
        lb = cfg.level_bits
        hb = cfg.handle_bits
        qw = cfg.qty_width
        assert (FLAG_MARKET, FLAG_POST_ONLY, FLAG_HAS_QTY, FLAG_HAS_PRICE) == (1, 2, 4, 8)

        # -- storage --------------------------------------------------------------------------
        order_shape = data.StructLayout({"qty": qw, "level": lb, "sell": 1, "post_only": 1, "valid": 1})
        level_shape = data.StructLayout({"head": hb, "tail": hb})
        m.submodules.orders = orders = Memory(shape=order_shape, depth=n_orders, init=[])
        m.submodules.nexts = nexts = Memory(shape=hb, depth=n_orders, init=[])
        m.submodules.prevs = prevs = Memory(shape=hb, depth=n_orders, init=[])
        m.submodules.levels = levels = Memory(shape=level_shape, depth=cfg.levels, init=[])
        ord_w, nxt_w, prv_w, lvl_w = orders.write_port(), nexts.write_port(), prevs.write_port(), levels.write_port()
        # Accept-stage reads (transparent: they see a write of the same cycle).
        ord_r = orders.read_port(transparent_for=(ord_w,))
        nxt_r = nexts.read_port(transparent_for=(nxt_w,))
        prv_r = prevs.read_port(transparent_for=(prv_w,))
        lvl1_r = levels.read_port(transparent_for=(lvl_w,))  # the level the command names
        lvl2_r = levels.read_port(transparent_for=(lvl_w,))  # the best opposite level
        lvl3_r = levels.read_port(transparent_for=(lvl_w,))  # the command's new level (modify)
        # Sweep reads: the fetcher's maker chase, and the walker's levels. The chase port is not
        # transparent: its read data drive its own address within the cycle, and a read-through
        # bypass puts a LUT and an address comparison on that loop. No next-pointer is written
        # while it chases, and the one read before a chase that could meet a write (the start
        # level's head, read in EXEC) is a hazard instead (see ``hazard_w``).
        ordf_r = orders.read_port(transparent_for=(ord_w,))
        nxtf_r = nexts.read_port()
        lvlw_r = levels.read_port(transparent_for=(lvl_w,))

        # Writes are decided in X and performed a cycle later from registers (the W stage): the
        # decision logic then ends at flip-flops next to it instead of at block RAMs across the
        # die. ``*_d`` is this cycle's decision, ``*_q`` the write being performed.
        def write_bundle(name, addr_width, data_shape):
            return Signal(data.StructLayout({"en": 1, "addr": addr_width, "data": data_shape}), name=name)

        ord_d, ord_q = write_bundle("ord_d", hb, order_shape), write_bundle("ord_q", hb, order_shape)
        nxt_d, nxt_q = write_bundle("nxt_d", hb, hb), write_bundle("nxt_q", hb, hb)
        prv_d, prv_q = write_bundle("prv_d", hb, hb), write_bundle("prv_q", hb, hb)
        lvl_d, lvl_q = write_bundle("lvl_d", lb, level_shape), write_bundle("lvl_q", lb, level_shape)
        w_stage = ((ord_d, ord_q, ord_w), (nxt_d, nxt_q, nxt_w), (prv_d, prv_q, prv_w), (lvl_d, lvl_q, lvl_w))
        # The occupancy bitmap's update goes through W as well (its walker view forwards it).
        bm_shape = data.StructLayout({"en": 1, "level": lb, "set": 1})
        bm_d, bm_q = Signal(bm_shape, name="bm_d"), Signal(bm_shape, name="bm_q")

        m.submodules.bitmap = bitmap = LevelBitmap(cfg.levels, cfg.group_width)
        walker = LevelWalker(cfg.levels, cfg.group_width)
        m.submodules.alloc = alloc = HandleAllocator(n_orders)
        entry_shape = data.StructLayout({"level": lb, "head": hb, "tail": hb, "crosses": 1})
        m.submodules.queue = queue = LevelQueue(entry_shape.size, self.queue_depth)
        m.submodules.out = out = SyncFIFO(width=self.event_shape.size, depth=self.out_depth)
        m.d.comb += [
            walker.summary.eq(bitmap.walk_summary),
            bitmap.rd_group.eq(walker.word_group),
            walker.word.eq(bitmap.rd_word),
            bitmap.start_group.eq(walker.start_group),
            walker.start_word.eq(bitmap.start_word),
            self.o.payload.eq(out.r_data),
            self.o.valid.eq(out.r_rdy),
            out.r_en.eq(self.o.ready),
        ]

        # The core advances only while the output FIFO surely has room: ``go`` is a register
        # (the FIFO had three free entries last cycle; at most one record is emitted a cycle and
        # written a cycle later), so it never depends on the sink's ready and fans out from a
        # flip-flop.
        # Four copies share its fan-out (one register would cost nanoseconds of routing). They
        # differ only in reset value and reset (which only matters while the core is in reset
        # anyway), so that synthesis cannot merge them back into one.
        go_next = Signal()
        m.d.comb += go_next.eq(out.level < self.out_depth - 3)
        go_copies = [Signal(name=f"go_{k}", init=k & 1, reset_less=bool(k & 2)) for k in range(4)]
        m.d.sync += [copy.eq(go_next) for copy in go_copies]
        go_slot_c, go_slot_h, go, go_mem = go_copies
        go_in = go_ev = go
        go_walk = go_fetch = go_mem
        # The walker stops while the core holds, like everything else: its first position then
        # cannot slip into its output register behind FIXUP's back, so FIXUP reads one source.
        m.submodules.walker = EnableInserter(go_walk)(walker)
        # W advances with the core: a write decided while ``go`` is performed in the next cycle
        # that has ``go`` again, when every slot that snoops it is updated too.
        for decided, performed, port in w_stage:
            with m.If(go_mem):
                m.d.sync += performed.eq(decided)
            m.d.comb += [port.en.eq(performed.en & go_mem), port.addr.eq(performed.addr),
                         port.data.eq(performed.data)]
        with m.If(go_mem):
            m.d.sync += bm_q.eq(bm_d)
        m.d.comb += [bitmap.upd_en.eq(bm_q.en & go_mem), bitmap.upd_level.eq(bm_q.level),
                     bitmap.upd_set.eq(bm_q.set)]

        # -- command slots ----------------------------------------------------------------------
        slot_shape = data.StructLayout({
            "valid": 1,
            "cmd": self.command_shape,
            "level": lb,  # position of cmd.price
            "in_window": 1,
            "ref_level": lb,  # position of cmd.ref (the order's current price)
            "ref_in_window": 1,
            "handle_ok": 1,
            "bad": 1,  # a record the host never sends (checked at accept, off the execute path)
            # The command's 8-bit op, side and tif fields decoded at accept: every comparison of a
            # wide field in X or in the hazard logic costs a LUT level there.
            "opc": 3,  # cmd.op when it is a known op (1..5), else 0
            "new": 1,
            "sell": 1,
            "ioc": 1,
            "fok": 1,
            "l1_level": lb,  # the position lvl1 was read at (cmd.price for a new order, else cmd.ref)
            "same_level": 1,  # price and ref name the same position (a modify keeping its price)
            "rd2_level": lb,  # the opposite best position lvl2 was read at
            "ord": order_shape,
            "nxt": hb,
            "prv": hb,
            "lvl1": level_shape,
            "lvl2": level_shape,
            "lvl3": level_shape,
            "occ": 1,  # occupancy of cmd.price's position
        })

        def level_of(price):
            return (price + window)[:lb]

        def in_window(price):
            return (price >= -window) & (price < window)

        # Writes of this cycle, as the slots see them: the block RAM writes in W, the bitmap's
        # update as decided (it is not delayed).
        def snoop(name, src):
            """``src`` slot with every data field replaced by this cycle's write to its address."""
            new = Signal(slot_shape, name=name)
            m.d.comb += new.eq(src)
            h = src.cmd.handle[:hb]
            l1 = src.l1_level
            with m.If(ord_q.en & (ord_q.addr == h)):
                m.d.comb += new.ord.eq(ord_q.data)
            with m.If(nxt_q.en & (nxt_q.addr == h)):
                m.d.comb += new.nxt.eq(nxt_q.data)
            with m.If(prv_q.en & (prv_q.addr == h)):
                m.d.comb += new.prv.eq(prv_q.data)
            for field_, addr in (("lvl1", l1), ("lvl2", src.rd2_level), ("lvl3", src.level)):
                with m.If(lvl_q.en & (lvl_q.addr == addr)):
                    m.d.comb += getattr(new, field_).eq(lvl_q.data)
            with m.If(bm_q.en & (bm_q.level == src.level)):
                m.d.comb += new.occ.eq(bm_q.set)
            return new

        slot_c = Signal(slot_shape)  # executing
        slot_h0 = Signal(slot_shape)  # waiting, oldest first
        slot_h1 = Signal(slot_shape)
        slot_f = Signal(slot_shape)  # accepted last cycle: fields here, data on the read ports
        fetched = Signal(slot_shape)
        m.d.comb += [
            fetched.eq(slot_f),
            fetched.ord.eq(ord_r.data), fetched.nxt.eq(nxt_r.data), fetched.prv.eq(prv_r.data),
            fetched.lvl1.eq(lvl1_r.data), fetched.lvl2.eq(lvl2_r.data), fetched.lvl3.eq(lvl3_r.data),
            bitmap.q_level.eq(slot_f.level), fetched.occ.eq(bitmap.q_bit),
        ]
        c_next = snoop("c_now", slot_c)
        h0 = snoop("h0_now", slot_h0)
        h1 = snoop("h1_now", slot_h1)
        f = snoop("f_now", fetched)

        # -- book registers -------------------------------------------------------------------
        bid, ask = Signal(lb), Signal(lb)
        bid_ok, ask_ok = Signal(), Signal()
        base_ok = Signal()

        def opp_best(sell):
            return Mux(sell, bid, ask)

        def opp_ok(sell):
            return Mux(sell, bid_ok, ask_ok)

        def crosses(sell, limit, market):
            """The order would trade now: the opposite side is not empty and prices cross."""
            return opp_ok(sell) & (market | Mux(sell, limit <= bid, limit >= ask))

        def record_bad(rec):
            """A command record the host never sends: bad side, tif, quantity or flag mix."""
            qty_bad = (rec.qty == 0) | (rec.qty[qw:].any() if len(rec.qty) > qw else 0)
            rests = (rec.tif == TIF_GTC) | (rec.tif == TIF_DAY)
            market, post = rec.flags[0], rec.flags[1]
            new_bad = (((rec.side != SIDE_BUY) & (rec.side != SIDE_SELL)) | qty_bad
                       | ~(rests | (rec.tif == TIF_IOC) | (rec.tif == TIF_FOK))
                       | (market & rests) | (post & ~rests) | (post & market))
            return Mux(rec.op == MatcherOp.NEW, new_bad, (rec.op == MatcherOp.MODIFY) & rec.flags[2] & qty_bad)

        # -- accept ---------------------------------------------------------------------------------
        p = self.i.payload
        p_sell = p.side == SIDE_SELL
        waiting = Signal(range(4))
        m.d.comb += waiting.eq(slot_f.valid + slot_h0.valid + slot_h1.valid)
        accept = Signal()
        m.d.comb += [self.i.ready.eq(go_in & (waiting <= 1)), accept.eq(self.i.valid & self.i.ready)]
        m.d.comb += [
            ord_r.addr.eq(p.handle), nxt_r.addr.eq(p.handle), prv_r.addr.eq(p.handle),
            lvl1_r.addr.eq(Mux(p.op == MatcherOp.NEW, level_of(p.price), level_of(p.ref))),
            lvl2_r.addr.eq(opp_best(p_sell)),
            lvl3_r.addr.eq(level_of(p.price)),
        ]
        m.d.comb += [port.en.eq(accept) for port in (ord_r, nxt_r, prv_r, lvl1_r, lvl2_r, lvl3_r)]
        with m.If(go_in):
            m.d.sync += slot_f.valid.eq(accept)
            with m.If(accept):
                m.d.sync += [
                    slot_f.cmd.eq(p),
                    slot_f.level.eq(level_of(p.price)),
                    slot_f.in_window.eq(in_window(p.price)),
                    slot_f.ref_level.eq(level_of(p.ref)),
                    slot_f.ref_in_window.eq(in_window(p.ref)),
                    slot_f.handle_ok.eq(p.handle < n_orders),
                    slot_f.bad.eq(record_bad(p)),
                    slot_f.same_level.eq(level_of(p.price) == level_of(p.ref)),
                    slot_f.rd2_level.eq(opp_best(p_sell)),
                    slot_f.opc.eq(Mux((p.op >= MatcherOp.NEW) & (p.op <= MatcherOp.RESET), p.op[:3], 0)),
                    slot_f.new.eq(p.op == MatcherOp.NEW),
                    slot_f.sell.eq(p_sell),
                    slot_f.ioc.eq(p.tif == TIF_IOC),
                    slot_f.fok.eq(p.tif == TIF_FOK),
                    slot_f.l1_level.eq(Mux(p.op == MatcherOp.NEW, level_of(p.price), level_of(p.ref))),
                ]

        # -- execute-stage registers ------------------------------------------------------------
        state = Signal(State)
        finishing = Signal()  # a continuation (not EXEC) is done this cycle
        continuing = Signal()  # EXEC: the command goes on in a continuation state

        # The incoming (taker) order: a new order, or a modify that lost priority.
        tk_sell = Signal()
        tk_limit = Signal(lb)
        tk_price = Signal(signed(32))
        tk_market = Signal()
        tk_qty = Signal(qw)  # its quantity when it comes in
        sweep_rem = Signal(qw)  # what the taker still needs in this sweep (a dry run counts down too)
        tk_ioc = Signal()
        tk_post = Signal()
        tk_modify = Signal()
        tk_handle = Signal(hb)
        dry = Signal()  # the sweep only counts what it could fill (FOK)

        # What a continuing command still needs of its slot (the slot moves on after EXEC).
        tk_rd2_level = Signal(lb)
        tk_lvl2 = Signal(level_shape)  # best opposite level, read at accept
        tk_lvl3 = Signal(level_shape)  # the modify's new level
        tk_occ = Signal()  # its occupancy

        # A write still in W that slot C depends on: EXEC waits a cycle (slot C takes the write
        # meanwhile), so decisions never need a forwarding mux in front of them.
        hazard = Signal()
        below_fresh = Signal()  # cmd.handle < alloc.fresh for slot C
        # A modify's quantity checks, made a cycle before X needs them, off the head of the
        # decisions. They need the order's entry, which for a command coming straight from F is a
        # block RAM output, too late for a 32-bit comparison in the same cycle: they are made from
        # slot C itself (with W's writes), so a modify spends its first cycle in X waiting for
        # them (``c_settled``: slot C held the same command last cycle).
        c_settled = Signal()
        qty_eq, qty_lt = Signal(), Signal()
        qty_cut = Signal(qw)  # the order's qty minus cmd.qty (a modify's reduction)

        fix_sell = Signal()  # which side's best FIXUP repairs
        fix_return = Signal()  # FIXUP goes on to RE_ENTER (else the command is done)

        # Best-price updates of this cycle (applied at its end).
        bid_n, ask_n = Signal(lb), Signal(lb)
        bid_ok_n, ask_ok_n = Signal(), Signal()
        m.d.comb += [bid_n.eq(bid), bid_ok_n.eq(bid_ok), ask_n.eq(ask), ask_ok_n.eq(ask_ok)]
        with m.If(go):
            m.d.sync += [bid.eq(bid_n), bid_ok.eq(bid_ok_n), ask.eq(ask_n), ask_ok.eq(ask_ok_n)]

        def set_best(sell, level, ok=1):
            with m.If(sell):
                m.d.comb += [ask_n.eq(level), ask_ok_n.eq(ok)]
            with m.Else():
                m.d.comb += [bid_n.eq(level), bid_ok_n.eq(ok)]

        # -- records ------------------------------------------------------------------------------
        ev = Signal(self.event_shape)
        emit = Signal()
        # Records are registered before the FIFO: the record mux is deep, the FIFO's RAM is not.
        ev_q = Signal(self.event_shape)
        emit_q = Signal()
        m.d.sync += [ev_q.eq(ev), emit_q.eq(emit & go_ev)]
        m.d.comb += [out.w_data.eq(ev_q), out.w_en.eq(emit_q)]

        def record(kind, *, reason=MatcherReason.NONE, sell=0, handle=0, level=None, price=None, qty=0, leaves=0,
                   last=True):
            m.d.comb += [
                emit.eq(1),
                ev.kind.eq(kind),
                ev.reason.eq(reason),
                ev.side.eq(Mux(sell, SIDE_SELL, SIDE_BUY)),
                ev.flags.eq(EVENT_LAST if last is True else 0 if last is False else Mux(last, EVENT_LAST, 0)),
                ev.handle.eq(handle),
                ev.qty.eq(qty),
                ev.leaves.eq(leaves),
            ]
            if level is not None:
                m.d.comb += ev.price.eq(level - window)
            elif price is not None:
                m.d.comb += ev.price.eq(price)

        # -- write ports (enables gated by go) ---------------------------------------------------
        rest_lvl = Signal(level_shape)  # head/tail of the level a rest appends to
        ord_we, nxt_we, prv_we, lvl_we = Signal(), Signal(), Signal(), Signal()
        upd_en, alloc_take, free_en, clear = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [
            ord_d.en.eq(ord_we), nxt_d.en.eq(nxt_we), prv_d.en.eq(prv_we), lvl_d.en.eq(lvl_we),
            bm_d.en.eq(upd_en),
            alloc.alloc.eq(alloc_take & go_mem), alloc.free.eq(free_en & go_mem),
            # The walker starts in every state that may need it, whatever the decision: its start
            # is then a function of the state register, not of the deep decision logic.
            walker.start.eq(go_walk & ((state == State.EXEC) | (state == State.RE_ENTER) | (state == State.SW_GO))),
            bitmap.clear.eq(clear & go_mem), alloc.clear.eq(clear & go_mem),
        ]

        # Write addresses, free handles and the bitmap position are chosen by the state and the
        # command kind alone (see "port addressing" below), so the deep decisions only drive
        # enables and data.
        def write_order(entry, **fields):
            m.d.comb += [ord_d.data.eq(entry), ord_we.eq(1)]
            m.d.comb += [getattr(ord_d.data, name).eq(value) for name, value in fields.items()]

        def free_order(entry):
            m.d.comb += free_en.eq(1)
            write_order(entry, valid=0)

        def write_level(head, tail):
            m.d.comb += [lvl_d.data.head.eq(head), lvl_d.data.tail.eq(tail), lvl_we.eq(1)]

        def rest(handle, level, qty, sell, post_only, occupied):
            """Rest a new order (``handle``) at the back of ``level``; the level's head/tail come
            from the addressing block's ``rest_lvl`` (used when ``occupied``)."""
            with m.If(occupied):
                m.d.comb += [nxt_we.eq(1), prv_we.eq(1)]
                write_level(rest_lvl.head, handle)
            with m.Else():
                write_level(handle, handle)
                m.d.comb += upd_en.eq(1)
            write_order(0, qty=qty, level=level, sell=sell, post_only=post_only, valid=1)
            m.d.comb += alloc_take.eq(1)
            # The level becomes its side's best when it beats the current best.
            with m.If(sell):
                with m.If(~ask_ok | (level < ask)):
                    set_best(1, level)
            with m.Else():
                with m.If(~bid_ok | (level > bid)):
                    set_best(0, level)
            record(RecordKind.ADDED, sell=sell, handle=handle, level=level, qty=qty, leaves=qty)

        def unlink(handle, level, sell, slot, fixup):
            """Take ``handle`` out of its level's list (``slot`` holds its entries and the
            level's head/tail); drives ``fixup`` when its side's best level emptied (the walker
            started in EXEC then finds the next best)."""
            lvl = slot.lvl1
            is_head = lvl.head == handle
            is_tail = lvl.tail == handle
            with m.If(~is_head):
                m.d.comb += nxt_we.eq(1)
            with m.If(~is_tail):
                m.d.comb += prv_we.eq(1)
            with m.If(is_head & is_tail):
                m.d.comb += upd_en.eq(1)
                with m.If(level == Mux(sell, ask, bid)):
                    # The best level emptied: walk away from it for the next best (``fix_sell``
                    # and ``fix_return`` are loaded in every EXEC cycle).
                    m.d.comb += fixup.eq(1)
            with m.Elif(is_head):
                write_level(slot.nxt, lvl.tail)
            with m.Elif(is_tail):
                write_level(lvl.head, slot.prv)

        # -- sweep: walker -> level reads -> queue; fetcher; maker register ----------------------
        walk_feed = Signal()  # the walker's levels flow into the queue
        inflight = Signal()  # a walker level is being read on lvlw_r: queue it next cycle
        inflight_level = Signal(lb)
        walk_read = Signal()
        # The next level to read: the walker's output register, or, when that has run empty, its
        # current position taken directly (saves a cycle at the start of a sweep).
        feed_level = Signal(lb)
        m.d.comb += [
            walker.ready.eq(walk_feed & go_walk & (queue.count + inflight < self.queue_depth)),
            walk_read.eq(walker.ready & (walker.valid | walker.first_valid)),
            walker.take_first.eq(walk_read & ~walker.valid),
            feed_level.eq(Mux(walker.valid, walker.level, walker.first_level)),
        ]
        sw_load = Signal()  # SW_LOAD uses lvlw_r
        with m.If(sw_load):
            m.d.comb += [lvlw_r.addr.eq(opp_best(tk_sell)), lvlw_r.en.eq(go_walk)]
        with m.Else():
            m.d.comb += [lvlw_r.addr.eq(feed_level), lvlw_r.en.eq(walk_read)]
        queue_flush, queue_pop = Signal(), Signal()
        with m.If(go_walk):
            m.d.sync += [inflight.eq(walk_read & ~queue_flush), inflight_level.eq(feed_level)]
            with m.If(queue_flush):
                m.d.sync += inflight.eq(0)
        inflight_entry = Signal(entry_shape)
        queue_head = Signal(entry_shape)
        m.d.comb += [
            inflight_entry.level.eq(inflight_level),
            inflight_entry.head.eq(lvlw_r.data.head),
            inflight_entry.tail.eq(lvlw_r.data.tail),
            queue.data.eq(inflight_entry),
            queue.push.eq(inflight & go_walk & ~queue_flush),
            queue.pop.eq(queue_pop & go_walk),
            queue.flush.eq(queue_flush & go_walk),
            queue_head.eq(queue.head),
        ]
        # The fetcher takes the next level only from the queue: a level still in flight on lvlw_r
        # waits a cycle there, so no block RAM output drives a block RAM address.

        def level_crosses(level):
            """The taker still trades at this opposite level."""
            return tk_market | Mux(tk_sell, level >= tk_limit, level <= tk_limit)

        # Whether a queued level crosses is worked out as it joins the queue (the taker does not
        # change while the queue is in use: it is flushed outside the sweep states), so the
        # fetcher's next address does not wait for a comparison's carry chain.
        m.d.comb += inflight_entry.crosses.eq(level_crosses(inflight_level))

        # Fetcher: ``fe_valid`` = the maker ``fe_handle``'s successor is on nxtf_r this cycle;
        # ordf_r reads its order entry now, for ``f2``.
        fe_valid = Signal()
        fe_handle = Signal(hb)
        fe_level = Signal(lb)
        fe_tail = Signal(hb)
        fe_first = Signal()
        fe_wait = Signal()  # at a level boundary, waiting for the next level
        fe_end = Signal()  # no more crossing level: fe_end_level (if fe_end_ok) is the first beyond
        fe_end_level = Signal(lb)
        fe_end_ok = Signal()
        fe_start_level = Signal(lb)
        fe_start_entry = Signal(level_shape)

        # The maker being consumed (registered fetch data).
        mk_shape = data.StructLayout({"valid": 1, "handle": hb, "entry": order_shape, "nxt": hb, "level": lb,
                                      "tail": hb, "is_tail": 1, "first": 1})
        mk = Signal(mk_shape)
        # A chased maker waits here a cycle for its order entry.
        f2_shape = data.StructLayout({"valid": 1, "handle": hb, "nxt": hb, "level": lb, "tail": hb, "first": 1})
        f2 = Signal(f2_shape)

        # Outside the sweep states the fetch ports read the start level's head every cycle (see
        # below), so the decision to sweep never reaches a block RAM address; a sweep from SWEEP
        # itself (a fill-or-kill dry run that succeeded) goes through SW_LOAD. While sweeping,
        # only the successor chase runs block RAM to block RAM (the three next-pointer RAMs); a
        # maker's order entry is read a cycle after its successor, from a register
        # (``fe_handle``): one more cycle per sweep, none per fill.
        fe_addr = Signal(hb)
        chasing = Signal()
        m.d.comb += chasing.eq((state == State.SWEEP) | (state == State.SW_END))
        # Within a level the successor goes from the read data to the address through one 2:1
        # mux whose select comes from registers only; every other address is worked out apart
        # (``fe_other``, kept as a net so that synthesis cannot fold the read data deeper into
        # it: it takes every input as equally early, a block RAM output included).
        # The fetch ports read every cycle: a read enable costs a hold LUT after the RAM (the
        # ports' enables are emulated). While the core holds they read again the address of the
        # data they show (no write happens during a hold): ``fe_handle`` for the successor,
        # ``f2.handle`` (a cycle behind) for the order entry.
        chase_next = Signal()
        fe_other = Signal(hb, attrs={"keep": 1})
        m.d.comb += [
            chase_next.eq(chasing & fe_valid & (fe_handle != fe_tail) & go_fetch),
            fe_other.eq(Mux(~go_fetch, fe_handle, Mux(chasing, fe_addr, fe_start_entry.head))),
            ordf_r.addr.eq(Mux(go_fetch, fe_handle, f2.handle)),
            nxtf_r.addr.eq(Mux(chase_next, nxtf_r.data, fe_other)),
            ordf_r.en.eq(1),
            nxtf_r.en.eq(1),
        ]

        def fetch(handle, level, tail, first, *, start=False, chase=False):
            if not (start or chase):  # those reads are the ports' defaults (above)
                m.d.comb += fe_addr.eq(handle)
            m.d.sync += [fe_valid.eq(1), fe_handle.eq(handle), fe_level.eq(level), fe_tail.eq(tail),
                         fe_first.eq(first), fe_wait.eq(0)]

        def fetch_next_level():
            """At a level boundary: fetch the next crossing level's head, stop, or wait."""
            with m.If(queue.nonempty & queue_head.crosses):
                m.d.comb += queue_pop.eq(1)
                fetch(queue_head.head, queue_head.level, queue_head.tail, 1)
            with m.Elif(queue.nonempty | (inflight & ~level_crosses(inflight_level))):
                m.d.sync += [fe_valid.eq(0), fe_wait.eq(0), fe_end.eq(1),
                             fe_end_level.eq(Mux(queue.nonempty, queue_head.level, inflight_level)),
                             fe_end_ok.eq(1)]
            with m.Elif(~inflight & (walker.done | (walker.valid & ~level_crosses(walker.level)))):
                m.d.sync += [fe_valid.eq(0), fe_wait.eq(0), fe_end.eq(1),
                             fe_end_level.eq(walker.level), fe_end_ok.eq(walker.valid)]
            with m.Else():
                m.d.sync += [fe_valid.eq(0), fe_wait.eq(1)]

        # The chase depends on the state register and its own registers only (a sweep never starts
        # from a sweep state), so its read enables and addresses stay off the decisions.
        # Outside the sweep states the fetcher is always set up to start at the start level (its
        # head is read every cycle, the queue kept empty): whether a sweep follows is the state
        # register's business, so the deep decision to sweep reaches no fetcher register.
        m.d.comb += queue_flush.eq(~chasing)
        with m.If(go_fetch & ~chasing):
            m.d.sync += [fe_end.eq(0), mk.valid.eq(0), f2.valid.eq(0)]
            fetch(fe_start_entry.head, fe_start_level, fe_start_entry.tail, 1, start=True)
        with m.If(go_fetch & chasing):
            m.d.sync += [
                f2.valid.eq(fe_valid), f2.handle.eq(fe_handle), f2.nxt.eq(nxtf_r.data), f2.level.eq(fe_level),
                f2.tail.eq(fe_tail), f2.first.eq(fe_first),
                mk.valid.eq(f2.valid), mk.handle.eq(f2.handle), mk.entry.eq(ordf_r.data), mk.nxt.eq(f2.nxt),
                mk.level.eq(f2.level), mk.tail.eq(f2.tail), mk.is_tail.eq(f2.handle == f2.tail),
                mk.first.eq(f2.first),
            ]
            with m.If(fe_valid):
                with m.If(fe_handle != fe_tail):
                    fetch(nxtf_r.data, fe_level, fe_tail, 0, chase=True)
                with m.Else():
                    fetch_next_level()
            with m.Elif(fe_wait):
                fetch_next_level()

        # -- execute ------------------------------------------------------------------------------
        # From the slot's registers (the snooped values only feed the registers: using them here
        # would loop from the write ports back to the decisions that drive them).
        c = slot_c
        cmd = c.cmd
        o = c.ord
        c_sell = c.sell
        c_market = cmd.flags[0]
        c_post = cmd.flags[1]
        c_has_qty = cmd.flags[2]
        c_ioc = c.ioc
        c_fok = c.fok
        c_handle = cmd.handle[:hb]
        live = (c.handle_ok & c.ref_in_window & o.valid & (o.level == c.ref_level) & below_fresh
                & (o.sell == c_sell))
        new_crosses = crosses(c_sell, c.level, c_market)

        def reject(reason):
            record(RecordKind.REJECTED, reason=reason, sell=c_sell, handle=cmd.handle, price=cmd.price, qty=cmd.qty)
            m.d.comb += finishing.eq(1)

        def cancelled(reason, qty):
            record(RecordKind.CANCELLED, reason=reason, sell=c_sell, price=cmd.price, qty=qty)

        def begin_sweep(*, direct):
            """Sweep the opposite side from its best level: straight away (``direct``) when slot
            C's read of that level is still the right one, else after reading it again."""
            m.d.sync += sweep_rem.eq(tk_qty)  # the whole quantity (again, after a dry run)
            if direct:
                with m.If(tk_rd2_level == opp_best(tk_sell)):
                    m.d.sync += state.eq(State.SWEEP)
                with m.Else():
                    m.d.sync += state.eq(State.SW_LOAD)
            else:
                m.d.sync += state.eq(State.SW_LOAD)

        # The levels a continuing command keeps take the writes in W, like the slots; RE_ENTER
        # straight after EXEC sees the unlink EXEC decided (a quantity-up modify re-enters the
        # level it left) through ``tk_lvl3_now``.
        with m.If(go):
            with m.If(lvl_q.en & (lvl_q.addr == tk_rd2_level)):
                m.d.sync += tk_lvl2.eq(lvl_q.data)
            with m.If(lvl_q.en & (lvl_q.addr == tk_limit)):
                m.d.sync += tk_lvl3.eq(lvl_q.data)
            with m.If(bm_q.en & (bm_q.level == tk_limit)):
                m.d.sync += tk_occ.eq(bm_q.set)
        tk_lvl3_now = Signal(level_shape)
        tk_occ_now = Signal()
        m.d.comb += [
            tk_lvl3_now.eq(Mux(lvl_q.en & (lvl_q.addr == tk_limit), lvl_q.data, tk_lvl3)),
            tk_occ_now.eq(Mux(bm_q.en & (bm_q.level == tk_limit), bm_q.set, tk_occ)),
        ]

        # The registers a continuing command works from (the taker, the FIXUP side) are loaded in
        # every EXEC cycle from slot C alone, chosen by the decoded op (a register), whatever the
        # command turns out to do: only the continuation states read them, so loading them for a
        # command that finishes (or waits on a hazard) is harmless, and the deep decisions stay
        # off the enables of some hundred flip-flops.
        with m.If(go & (state == State.EXEC)):
            c_modify = c.opc == MatcherOp.MODIFY
            m.d.sync += [
                tk_sell.eq(Mux(c.new, c_sell, o.sell)),
                tk_limit.eq(c.level),
                tk_price.eq(Mux(c.new, cmd.price, c.level - window)),
                tk_market.eq(c.new & c_market),
                # A modify without a quantity keeps the order's.
                tk_qty.eq(Mux(c.new | c_has_qty, cmd.qty, o.qty)),
                sweep_rem.eq(cmd.qty),
                tk_ioc.eq(c.new & c_ioc),
                tk_post.eq(~c.new & o.post_only),
                tk_modify.eq(c_modify),
                tk_handle.eq(c_handle),
                dry.eq(c.new & c_fok),
                fix_sell.eq(o.sell),
                fix_return.eq(c_modify),
            ]

        # Everything below is gated by ``go``: when the output FIFO is full the core holds.
        with m.If(go):
            with m.Switch(state):
                with m.Case(State.IDLE):
                    m.d.comb += finishing.eq(1)

                with m.Case(State.EXEC):
                    with m.If(~hazard):
                        # A continuing command keeps what it needs of its slot (with this cycle's writes).
                        m.d.sync += [tk_rd2_level.eq(c.rd2_level), tk_lvl2.eq(c_next.lvl2), tk_lvl3.eq(c_next.lvl3),
                                     tk_occ.eq(c_next.occ)]
                        with m.Switch(c.opc):
                            with m.Case(MatcherOp.NEW):
                                with m.If(c.bad):
                                    reject(MatcherReason.INVALID_COMMAND)
                                with m.Elif(~c_market & ~(c.in_window & base_ok)):
                                    reject(MatcherReason.PRICE_OUTSIDE_WINDOW)
                                with m.Elif(~new_crosses):
                                    with m.If(c_fok):
                                        cancelled(MatcherReason.FOK, cmd.qty)
                                    with m.Elif(c_ioc | c_market):
                                        cancelled(MatcherReason.IOC, cmd.qty)
                                    with m.Elif(alloc.full):
                                        cancelled(MatcherReason.BOOK_FULL, cmd.qty)
                                    with m.Else():
                                        rest(alloc.handle, c.level, cmd.qty, c_sell, c_post, c.occ)
                                    m.d.comb += finishing.eq(1)
                                with m.Elif(c_post):
                                    cancelled(MatcherReason.POST_ONLY, cmd.qty)
                                    m.d.comb += finishing.eq(1)
                                with m.Else():
                                    # The taker registers were loaded above (from slot C alone).
                                    with m.If(c.rd2_level == opp_best(c_sell)):
                                        m.d.sync += state.eq(State.SWEEP)
                                        m.d.comb += continuing.eq(1)
                                    with m.Else():
                                        m.d.sync += state.eq(State.SW_LOAD)
                                        m.d.comb += continuing.eq(1)

                            with m.Case(MatcherOp.CANCEL):
                                with m.If(~live):
                                    reject(MatcherReason.UNKNOWN_ORDER)
                                with m.Else():
                                    fixup = Signal()
                                    unlink(c_handle, c.ref_level, o.sell, c, fixup)
                                    free_order(o)
                                    record(RecordKind.CANCELLED, reason=MatcherReason.REQUESTED, sell=o.sell,
                                           handle=c_handle, level=o.level, qty=o.qty)
                                    with m.If(fixup):
                                        m.d.sync += state.eq(State.FIXUP)
                                        m.d.comb += continuing.eq(1)
                                    with m.Else():
                                        m.d.comb += finishing.eq(1)

                            with m.Case(MatcherOp.MODIFY):
                                new_qty = Signal(qw)
                                # cmd.price is the target price even when unchanged (then it equals
                                # ref): the re-entry's level is c.level (``tk_limit``).
                                m.d.comb += new_qty.eq(Mux(c_has_qty, cmd.qty, o.qty))
                                # new_qty == o.qty and new_qty < o.qty
                                qty_same = ~c_has_qty | qty_eq
                                qty_down = c_has_qty & qty_lt
                                with m.If(~live):
                                    reject(MatcherReason.UNKNOWN_ORDER)
                                with m.Elif(c.bad):
                                    reject(MatcherReason.INVALID_COMMAND)
                                with m.Elif(~c.in_window):
                                    reject(MatcherReason.PRICE_OUTSIDE_WINDOW)
                                with m.Elif(c.same_level & qty_same):
                                    reject(MatcherReason.NO_CHANGE)
                                with m.Elif(c.same_level & qty_down):
                                    # Quantity down in place keeps time priority.
                                    write_order(o, qty=new_qty)
                                    record(RecordKind.REDUCED, sell=o.sell, handle=c_handle, level=o.level,
                                           qty=qty_cut, leaves=new_qty)
                                    m.d.comb += finishing.eq(1)
                                with m.Else():
                                    # Price change or quantity up: leave the level and come back as an
                                    # incoming order. The handle is freed now and allocated again if the
                                    # order rests, so a fully filled re-entry leaves nothing behind and the
                                    # rest never finds the book full (as in the engine).
                                    fixup = Signal(name="fixup_modify")
                                    unlink(c_handle, c.ref_level, o.sell, c, fixup)
                                    free_order(o)
                                    record(RecordKind.REMOVED, sell=o.sell, handle=c_handle, level=o.level, qty=o.qty,
                                           leaves=new_qty, last=False)
                                    with m.If(fixup):
                                        m.d.sync += state.eq(State.FIXUP)
                                        m.d.comb += continuing.eq(1)
                                    with m.Else():
                                        m.d.sync += state.eq(State.RE_ENTER)
                                        m.d.comb += continuing.eq(1)

                            with m.Case(MatcherOp.SET_BASE):
                                with m.If(alloc.empty):
                                    with m.If(go):
                                        m.d.sync += base_ok.eq(1)
                                    record(RecordKind.BASE_SET, price=cmd.price)
                                    m.d.comb += finishing.eq(1)
                                with m.Else():
                                    reject(MatcherReason.BOOK_NOT_EMPTY)

                            with m.Case(MatcherOp.RESET):
                                m.d.comb += [clear.eq(1), bid_ok_n.eq(0), ask_ok_n.eq(0), finishing.eq(1)]
                                with m.If(go):
                                    m.d.sync += base_ok.eq(0)
                                record(RecordKind.RESET_DONE)

                            with m.Default():
                                reject(MatcherReason.INVALID_COMMAND)

                with m.Case(State.FIXUP):
                    # The walker's first position straight from its current word (a cycle before
                    # its registered output): one cycle when the next best shares its word. FIXUP
                    # takes it the first cycle it shows, and the walker holds with the core, so
                    # it never moves on into the output register first.
                    with m.If(walker.first_valid | walker.first_none):
                        set_best(fix_sell, walker.first_level, walker.first_valid)
                        with m.If(fix_return):
                            m.d.sync += state.eq(State.RE_ENTER)
                        with m.Else():
                            m.d.comb += finishing.eq(1)

                with m.Case(State.RE_ENTER):
                    # The new level's head/tail and occupancy are in slot C (lvl3, occ), kept fresh
                    # by snooping the writes of the unlink.
                    with m.If(crosses(tk_sell, tk_limit, 0)):
                        with m.If(tk_post):
                            # A post-only order repriced through the spread is cancelled.
                            record(RecordKind.CANCELLED, reason=MatcherReason.POST_ONLY, sell=tk_sell,
                                   handle=tk_handle, level=tk_limit, qty=tk_qty)
                            m.d.comb += finishing.eq(1)
                        with m.Else():
                            begin_sweep(direct=True)
                    with m.Else():
                        rest(alloc.handle, tk_limit, tk_qty, tk_sell, tk_post, tk_occ_now)
                        m.d.comb += finishing.eq(1)

                with m.Case(State.SW_LOAD):
                    m.d.comb += sw_load.eq(1)
                    m.d.sync += state.eq(State.SW_INIT)

                with m.Case(State.SW_INIT):
                    # Registered first: the level read must not drive the fetch address directly.
                    m.d.sync += [tk_lvl2.eq(lvlw_r.data), tk_rd2_level.eq(opp_best(tk_sell)),
                                 state.eq(State.SW_GO)]

                with m.Case(State.SW_GO):
                    m.d.sync += state.eq(State.SWEEP)

                with m.Case(State.SWEEP):
                    m.d.comb += walk_feed.eq(1)
                    # Both differences at once, in parallel: their signs say who is done, and no
                    # adder waits for a comparison.
                    maker_qty = mk.entry.qty
                    maker_minus = Signal(qw + 1)  # maker qty - taker remaining
                    taker_minus = Signal(qw + 1)  # taker remaining - maker qty
                    maker_done = Signal()
                    taker_done = Signal()
                    fill = Signal(qw)
                    left = Signal(qw)
                    maker_left = Signal(qw)
                    m.d.comb += [
                        maker_minus.eq(maker_qty - sweep_rem),
                        taker_minus.eq(sweep_rem - maker_qty),
                        maker_done.eq(~taker_minus[qw]),
                        taker_done.eq(~maker_minus[qw]),
                        fill.eq(Mux(maker_done, maker_qty, sweep_rem)),
                        left.eq(Mux(taker_done, 0, taker_minus[:qw])),
                        maker_left.eq(Mux(maker_done, 0, maker_minus[:qw])),
                    ]
                    with m.If(mk.valid):
                        m.d.sync += sweep_rem.eq(left)
                        with m.If(~dry):
                            record(RecordKind.FILL, sell=~tk_sell, handle=mk.handle, level=mk.level, qty=fill,
                                   leaves=maker_left, last=taker_done)
                            with m.If(maker_done):
                                free_order(mk.entry)
                            with m.Else():
                                write_order(mk.entry, qty=maker_left)
                            with m.If(maker_done & mk.is_tail):
                                m.d.comb += upd_en.eq(1)
                        with m.If(taker_done):
                            with m.If(dry):
                                # The dry run found enough: sweep for real from the best level.
                                with m.If(go):
                                    m.d.sync += dry.eq(0)
                                begin_sweep(direct=False)
                            with m.Elif(~maker_done | ~mk.is_tail):
                                # The level survives; its head moves to the first maker left.
                                with m.If(maker_done | ~mk.first):
                                    write_level(Mux(maker_done, mk.nxt, mk.handle), mk.tail)
                                set_best(~tk_sell, mk.level)
                                m.d.comb += finishing.eq(1)
                            with m.Elif(f2.valid | fe_valid):
                                # The fetcher already has the next level's head: that level is the best.
                                set_best(~tk_sell, Mux(f2.valid, f2.level, fe_level))
                                m.d.comb += finishing.eq(1)
                            with m.Elif(fe_end):
                                set_best(~tk_sell, fe_end_level, fe_end_ok)
                                m.d.comb += finishing.eq(1)
                            with m.Else():
                                m.d.sync += state.eq(State.SW_END)
                    with m.Elif(fe_end & ~fe_valid & ~f2.valid):
                        # No more crossing liquidity: the first level not reached (if any) is the new best.
                        with m.If(dry):
                            record(RecordKind.CANCELLED, reason=MatcherReason.FOK, sell=tk_sell, price=tk_price,
                                   qty=tk_qty)
                            with m.If(go):
                                m.d.sync += dry.eq(0)
                            m.d.comb += finishing.eq(1)
                        with m.Else():
                            set_best(~tk_sell, fe_end_level, fe_end_ok)
                            m.d.sync += state.eq(State.REMAINDER)

                with m.Case(State.SW_END):
                    # The taker used up a level exactly: the level after it (if any) is the new best,
                    # as soon as the fetcher (waiting at the level boundary) has found it.
                    m.d.comb += walk_feed.eq(1)
                    with m.If(f2.valid | fe_valid):
                        set_best(~tk_sell, Mux(f2.valid, f2.level, fe_level))
                        m.d.comb += finishing.eq(1)
                    with m.Elif(fe_end):
                        set_best(~tk_sell, fe_end_level, fe_end_ok)
                        m.d.comb += finishing.eq(1)

                with m.Case(State.REMAINDER):
                    with m.If(tk_modify):
                        rest(alloc.handle, tk_limit, sweep_rem, tk_sell, tk_post, 0)
                    with m.Elif(tk_market | tk_ioc):
                        record(RecordKind.CANCELLED, reason=MatcherReason.IOC, sell=tk_sell, price=tk_price,
                               qty=sweep_rem)
                    with m.Elif(alloc.full):
                        record(RecordKind.CANCELLED, reason=MatcherReason.BOOK_FULL, sell=tk_sell, price=tk_price,
                               qty=sweep_rem)
                    with m.Else():
                        rest(alloc.handle, tk_limit, sweep_rem, tk_sell, 0, 0)
                    m.d.comb += finishing.eq(1)

        # -- port addressing: by state and command kind (registers) only ------------------------
        is_new = c.new
        with m.Switch(state):
            with m.Case(State.EXEC):
                m.d.comb += [
                    rest_lvl.eq(c.lvl1),
                    ord_d.addr.eq(Mux(is_new, alloc.handle, c_handle)),
                    nxt_d.addr.eq(Mux(is_new, c.lvl1.tail, c.prv)),
                    nxt_d.data.eq(Mux(is_new, alloc.handle, c.nxt)),
                    prv_d.addr.eq(Mux(is_new, alloc.handle, c.nxt)),
                    prv_d.data.eq(Mux(is_new, c.lvl1.tail, c.prv)),
                    lvl_d.addr.eq(c.l1_level),
                    bm_d.level.eq(c.l1_level),
                    bm_d.set.eq(is_new),
                    alloc.free_handle.eq(c_handle),
                    # A new order sweeps from the best opposite level; a cancel or modify that
                    # empties its side's best level walks away from it.
                    fe_start_level.eq(opp_best(c_sell)),
                    fe_start_entry.eq(c.lvl2),
                    walker.start_level.eq(Mux(is_new, opp_best(c_sell), c.ref_level)),
                    walker.desc.eq(Mux(is_new, c_sell, ~c_sell)),
                ]
            with m.Case(State.SWEEP):
                m.d.comb += [
                    ord_d.addr.eq(mk.handle),
                    lvl_d.addr.eq(mk.level),
                    bm_d.level.eq(mk.level),
                    bm_d.set.eq(0),
                    alloc.free_handle.eq(mk.handle),
                    fe_start_level.eq(opp_best(tk_sell)),  # a fill-or-kill dry run restarts
                    fe_start_entry.eq(tk_lvl2),
                    walker.start_level.eq(opp_best(tk_sell)),
                    walker.desc.eq(tk_sell),
                ]
            with m.Default():  # RE_ENTER, REMAINDER rest at tk_limit; SW_INIT/RE_ENTER start sweeps
                m.d.comb += [
                    rest_lvl.eq(tk_lvl3_now),
                    ord_d.addr.eq(alloc.handle),
                    nxt_d.addr.eq(tk_lvl3_now.tail),
                    nxt_d.data.eq(alloc.handle),
                    prv_d.addr.eq(alloc.handle),
                    prv_d.data.eq(tk_lvl3_now.tail),
                    lvl_d.addr.eq(tk_limit),
                    bm_d.level.eq(tk_limit),
                    bm_d.set.eq(1),
                    fe_start_level.eq(opp_best(tk_sell)),
                    fe_start_entry.eq(tk_lvl2),
                    walker.start_level.eq(opp_best(tk_sell)),
                    walker.desc.eq(tk_sell),
                ]

        # -- slot movement -------------------------------------------------------------------
        # Slot C is consumed by EXEC whatever the outcome (a continuing command keeps its state in
        # the tk_* registers), so the slots advance on the state register alone: this keeps the
        # enables of several hundred flip-flops off the deep decision logic.
        advance = Signal()
        m.d.comb += advance.eq((state == State.IDLE) | ((state == State.EXEC) & ~hazard))

        # Hazards: whether a write decided this cycle hits the slot C of next cycle. The write
        # addresses are chosen by state and command kind (never by the deep decisions); each
        # comparison is made for all three slots C may hold next, and only the 1-bit results are
        # chosen by ``advance`` (which the hazard itself feeds).
        def next_c(compare):
            return Mux(advance, Mux(slot_h0.valid, compare(slot_h0), compare(slot_f)), compare(slot_c))

        def hits_lvl(src):
            new = src.new
            # lvl3 and a modify's lvl2 only reach the tk_* registers, which snoop W themselves.
            return ((lvl_d.addr == src.l1_level)
                    | (new & (lvl_d.addr == src.rd2_level)))

        # The write enables are deep decisions, so the whole hazard is registered: it only meets
        # them at a flip-flop.
        # A new order's fetcher reads the successor of its opposite best level's head as it
        # executes, without read-through: a next-pointer written in that level (an unlink in its
        # middle; its other writes there also write the level) makes it wait too.
        hazard_w = Signal()  # a write now in W hits slot C
        with m.If(go):
            m.d.sync += hazard_w.eq(
                (ord_d.en & next_c(lambda src: ord_d.addr == src.cmd.handle[:hb]))
                | (nxt_d.en & next_c(lambda src: nxt_d.addr == src.cmd.handle[:hb]))
                | (nxt_d.en & next_c(lambda src: src.new & (lvl_d.addr == src.rd2_level)))

                | (prv_d.en & next_c(lambda src: prv_d.addr == src.cmd.handle[:hb]))
                | (lvl_d.en & next_c(hits_lvl))
                | (bm_d.en & next_c(lambda src: src.new & (bm_d.level == src.level))))
        m.d.comb += hazard.eq((state == State.EXEC)
                              & (hazard_w | ((slot_c.opc == MatcherOp.MODIFY) & ~c_settled)))

        # ``cmd.handle < alloc.fresh`` (a wide comparison) a cycle ahead, against this cycle's
        # ``fresh``; the allocator says how ``fresh`` changed at the edge. Every cycle, since the
        # allocator refills its ready pair from ``fresh`` whether or not the core goes.
        def next_c_now(compare):
            return Mux(go_slot_c, next_c(compare), compare(slot_c))

        fresh_lt, fresh_eq, prefill_lt = Signal(), Signal(), Signal()
        m.d.sync += [
            fresh_lt.eq(next_c_now(lambda src: src.cmd.handle < alloc.fresh)),
            fresh_eq.eq(next_c_now(lambda src: src.cmd.handle == alloc.fresh)),
            prefill_lt.eq(next_c_now(lambda src: src.cmd.handle < alloc.prefill)),
        ]
        m.d.comb += below_fresh.eq(Mux(alloc.cleared, prefill_lt, fresh_lt | (fresh_eq & alloc.grew)))
        next_valid = Signal()
        m.d.comb += next_valid.eq(slot_h0.valid | slot_f.valid)
        c_in = Signal(slot_shape)
        m.d.comb += c_in.eq(Mux(advance, Mux(slot_h0.valid, h0, f), c_next))
        with m.If(go_slot_c):
            m.d.sync += [
                slot_c.eq(c_in),
                c_settled.eq(~advance),
                qty_eq.eq(c_next.cmd.qty[:qw] == c_next.ord.qty),
                qty_lt.eq(c_next.cmd.qty[:qw] < c_next.ord.qty),
                qty_cut.eq(c_next.ord.qty - c_next.cmd.qty[:qw]),
            ]
            with m.If(advance & ~slot_h0.valid):
                m.d.sync += slot_c.valid.eq(slot_f.valid)
        with m.If(go_slot_h):
            with m.If(advance):
                # H1 moves up to H0 and F's command joins behind whatever waits.
                m.d.sync += [slot_h0.eq(Mux(slot_h1.valid, h1, f)), slot_h1.eq(f)]
                m.d.sync += slot_h0.valid.eq(slot_h0.valid & (slot_h1.valid | slot_f.valid))
                m.d.sync += slot_h1.valid.eq(slot_h1.valid & slot_f.valid)
            with m.Else():
                m.d.sync += [slot_h0.eq(h0), slot_h1.eq(h1)]
                with m.If(slot_f.valid):
                    with m.If(~slot_h0.valid):
                        m.d.sync += slot_h0.eq(f)
                    with m.Else():
                        m.d.sync += slot_h1.eq(f)
        with m.If(go):
            # EXEC/IDLE go on to the next command unless continuing; a continuation that finishes
            # goes to EXEC if a command waits in slot C.
            with m.If(advance & ~continuing):
                m.d.sync += state.eq(Mux(next_valid, State.EXEC, State.IDLE))
            with m.Elif(~advance & finishing):
                m.d.sync += state.eq(Mux(slot_c.valid, State.EXEC, State.IDLE))
        return m


def default_matcher() -> Matcher:
    """The matcher at its default size: 4096 orders, +-1024 ticks, 32-bit quantities."""
    return Matcher(MatcherConfig())


def small_matcher() -> Matcher:
    """A small instance (16 orders, +-16 ticks) that fills up and hits window edges quickly."""
    return Matcher(MatcherConfig(max_orders=16, window_ticks=16, group_width=8))
