"""Order-handle allocation for the matcher: a free queue in block RAM, a fresh counter, and two
ready handles in registers.

Allocation takes handles in a fixed order that depends only on the sequence of allocations and
frees, never on timing: first the fresh handles ``0..max_orders-1`` in order, then freed
handles in the order they were freed (a FIFO). This matters: a back-to-back replay of a run's
command records must allocate the same handles as the run did, whatever idle cycles the first
run had.

The handle an allocation takes always comes from a register (``handle``), never straight from
a block RAM output (too slow on ECP5 to feed the matcher's writes in the same cycle): two
*ready* registers hold the next two handles of the queue and are refilled from the fresh
counter or, once the fresh handles are used up, from the queue's head (one read per cycle, data
registered when it lands). Clearing is a few register writes, so a reset never walks the
memory. Every handle below ``fresh`` was allocated in the current epoch, so an order memory's
valid bit is trustworthy exactly for the handles below ``fresh`` (the matcher checks both).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["HandleAllocator"]


class HandleAllocator(wiring.Component):
    """Hands out handles ``0..max_orders-1``; at most one ``alloc`` and one ``free`` per cycle,
    not both in the same cycle.

    ``handle`` is what an ``alloc`` takes this cycle (valid unless ``full``). ``full``: every
    handle is in use; ``empty``: none is. ``fresh``: handles below it have been used since the
    last ``clear``. ``grew``/``cleared``: at the last clock edge ``fresh`` went up by one / was
    reset by ``clear`` (so a user can compare against ``fresh`` a cycle ahead).
    """

    def __init__(self, max_orders: int) -> None:
        self.max_orders = max_orders
        self.handle_bits = max(1, (max_orders - 1).bit_length())
        self.prefill = min(2, max_orders)  # after a clear the ready pair holds handles 0 and 1
        super().__init__({
            "alloc": In(1),
            "free": In(1),
            "free_handle": In(self.handle_bits),
            "clear": In(1),
            "handle": Out(self.handle_bits),
            "full": Out(1),
            "empty": Out(1),
            "fresh": Out(range(max_orders + 1)),
            "in_use": Out(range(max_orders + 1)),
            "grew": Out(1),
            "cleared": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        n = self.max_orders
        hb = self.handle_bits
        prefill = self.prefill
        m.submodules.queue = queue = Memory(shape=hb, depth=n, init=[])
        read = queue.read_port()
        write = queue.write_port()
        head = Signal(range(n))  # the queue of freed handles: read at head, written at tail
        tail = Signal(range(n))
        queued = Signal(range(n + 1))
        ready0 = Signal(hb, init=0)
        ready1 = Signal(hb, init=1 % (1 << hb))
        count = Signal(range(3), init=prefill)  # ready registers holding a handle
        fresh = Signal(range(n + 1), init=prefill)
        landing = Signal()  # a queue read issued last cycle: its handle arrives now
        # Full and empty are registers, and every counter's next value is a choice between
        # values computed from registers alone: the alloc and free requests come late in the
        # cycle (the matcher's decisions), so no adder or comparator may follow them.
        full = Signal()
        empty = Signal(init=1)
        in_use_up = Signal(range(n + 2))
        in_use_down = Signal(range(n + 1))
        m.d.comb += [
            self.fresh.eq(fresh),
            self.handle.eq(ready0),
            self.full.eq(full),
            self.empty.eq(empty),
            in_use_up.eq(self.in_use + 1),
            in_use_down.eq(self.in_use - 1),
        ]

        take = Signal()
        after_take = Signal(range(3))
        m.d.comb += [take.eq(self.alloc & (count != 0)), after_take.eq(count - take)]
        room = after_take < 2
        fresh_left = fresh != n
        # At most one handle joins the ready pair a cycle, in queue order: a landing read, else a
        # fresh handle, else (queue and fresh range both empty) the handle freed this cycle.
        incoming = Signal()
        incoming_handle = Signal(hb)
        free_in, fresh_in = Signal(), Signal()
        with m.If(landing):
            m.d.comb += [incoming.eq(1), incoming_handle.eq(read.data)]
        with m.Elif(fresh_left & room):
            m.d.comb += [incoming.eq(1), incoming_handle.eq(fresh), fresh_in.eq(1)]
        with m.Elif(self.free & room & (queued == 0) & ~fresh_left):
            m.d.comb += [incoming.eq(1), incoming_handle.eq(self.free_handle), free_in.eq(1)]
        # Otherwise a free joins the queue's tail; a read of its head is issued when the fresh
        # handles are used up and the pair will have room when the read lands.
        enqueue, dequeue = Signal(), Signal()
        queued_up = Signal(range(n + 2))
        queued_down = Signal(range(n + 1))
        m.d.comb += [
            queued_up.eq(queued + 1),
            queued_down.eq(queued - 1),
            enqueue.eq(self.free & ~free_in),
            dequeue.eq(~fresh_left & (queued != 0) & (after_take + incoming < 2)),
            read.addr.eq(head),
            write.addr.eq(tail),
            write.data.eq(self.free_handle),
            write.en.eq(enqueue & ~self.clear),
        ]

        def advance(pointer):
            return Mux(pointer == n - 1, 0, pointer + 1)

        m.d.sync += [self.grew.eq(fresh_in & ~self.clear), self.cleared.eq(self.clear)]
        with m.If(self.clear):
            m.d.sync += [head.eq(0), tail.eq(0), queued.eq(0), fresh.eq(prefill), count.eq(prefill),
                         landing.eq(0), self.in_use.eq(0), ready0.eq(0), ready1.eq(1 % (1 << hb)),
                         full.eq(0), empty.eq(1)]
        with m.Else():
            m.d.sync += [landing.eq(dequeue), count.eq(after_take + incoming)]
            with m.If(enqueue):
                m.d.sync += tail.eq(advance(tail))
            with m.If(dequeue):
                m.d.sync += head.eq(advance(head))
            with m.If(enqueue & ~dequeue):
                m.d.sync += queued.eq(queued_up)
            with m.Elif(dequeue & ~enqueue):
                m.d.sync += queued.eq(queued_down)
            with m.If(fresh_in):
                m.d.sync += fresh.eq(fresh + 1)
            # Shift ready1 into ready0 on a take, then append the incoming handle.
            with m.If(take & (after_take != 0)):
                m.d.sync += ready0.eq(ready1)
            with m.If(incoming):
                with m.If(after_take == 0):
                    m.d.sync += ready0.eq(incoming_handle)
                with m.Else():
                    m.d.sync += ready1.eq(incoming_handle)
            with m.If(self.alloc & ~self.free):
                m.d.sync += [self.in_use.eq(in_use_up), full.eq(self.in_use == n - 1), empty.eq(0)]
            with m.Elif(self.free & ~self.alloc):
                m.d.sync += [self.in_use.eq(in_use_down), full.eq(0), empty.eq(self.in_use == 1)]
        return m
