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
from amaranth.build import Platform
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

    def elaborate(self, platform: Platform | None) -> Module:
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
        # The alloc and free requests come late in the cycle (the matcher's decisions): the next
        # state is worked out from registers alone for each of the three cases (neither, alloc,
        # free; never both) and the request only picks one, so no adder, comparator or priority
        # chain follows it. Full and empty are registers for the same reason.
        full = Signal()
        empty = Signal(init=1)
        m.d.comb += [
            self.fresh.eq(fresh),
            self.handle.eq(ready0),
            self.full.eq(full),
            self.empty.eq(empty),
            read.addr.eq(head),
            write.addr.eq(tail),
            write.data.eq(self.free_handle),
        ]
        fresh_left = fresh != n

        def advance(pointer):
            return Mux(pointer == n - 1, 0, pointer + 1)

        def case(alloc: bool, free: bool) -> dict:
            name = "alloc" if alloc else "free" if free else "idle"

            def sig(field, shape, value):
                signal = Signal(shape, name=f"{name}_{field}")
                m.d.comb += signal.eq(value)
                return signal

            take = sig("take", 1, (count != 0) if alloc else 0)
            after_take = sig("after_take", range(3), count - take)
            room = after_take < 2
            # At most one handle joins the ready pair a cycle, in queue order: a landing read, else
            # a fresh handle, else (queue and fresh range both empty) the handle freed this cycle.
            incoming = Signal(name=f"{name}_incoming")
            incoming_handle = Signal(hb, name=f"{name}_incoming_handle")
            free_in = Signal(name=f"{name}_free_in")
            fresh_in = Signal(name=f"{name}_fresh_in")
            with m.If(landing):
                m.d.comb += [incoming.eq(1), incoming_handle.eq(read.data)]
            with m.Elif(fresh_left & room):
                m.d.comb += [incoming.eq(1), incoming_handle.eq(fresh), fresh_in.eq(1)]
            if free:
                with m.Elif(room & (queued == 0) & ~fresh_left):
                    m.d.comb += [incoming.eq(1), incoming_handle.eq(self.free_handle), free_in.eq(1)]
            # Otherwise a free joins the queue's tail; a read of its head is issued when the fresh
            # handles are used up and the pair will have room when the read lands.
            enqueue = sig("enqueue", 1, ~free_in if free else 0)
            dequeue = sig("dequeue", 1, ~fresh_left & (queued != 0) & (after_take + incoming < 2))
            ready0_next = Signal(hb, name=f"{name}_ready0")
            ready1_next = Signal(hb, name=f"{name}_ready1")
            # Shift ready1 into ready0 on a take, then append the incoming handle.
            m.d.comb += [ready0_next.eq(Mux(take & (after_take != 0), ready1, ready0)), ready1_next.eq(ready1)]
            with m.If(incoming):
                with m.If(after_take == 0):
                    m.d.comb += ready0_next.eq(incoming_handle)
                with m.Else():
                    m.d.comb += ready1_next.eq(incoming_handle)
            return {
                "ready0": ready0_next, "ready1": ready1_next,
                "count": sig("count", range(3), after_take + incoming),
                "fresh": sig("fresh", range(n + 1), Mux(fresh_in, fresh + 1, fresh)),
                "queued": sig("queued", range(n + 1), Mux(enqueue & ~dequeue, queued + 1,
                                                          Mux(dequeue & ~enqueue, queued - 1, queued))),
                "head": sig("head", range(n), Mux(dequeue, advance(head), head)),
                "tail": sig("tail", range(n), Mux(enqueue, advance(tail), tail)),
                "landing": dequeue,
                "grew": fresh_in,
                "enqueue": enqueue,
                "in_use": sig("in_use", range(n + 1), self.in_use + 1 if alloc else self.in_use - 1 if free
                              else self.in_use),
                "full": sig("full", 1, (self.in_use == n - 1) if alloc else 0 if free else full),
                "empty": sig("empty", 1, 0 if alloc else (self.in_use == 1) if free else empty),
            }

        idle, alloc_case, free_case = case(False, False), case(True, False), case(False, True)

        def pick(field):
            return Mux(self.alloc, alloc_case[field], Mux(self.free, free_case[field], idle[field]))

        m.d.comb += write.en.eq(self.free & free_case["enqueue"] & ~self.clear)
        m.d.sync += [self.grew.eq(pick("grew") & ~self.clear), self.cleared.eq(self.clear)]
        with m.If(self.clear):
            m.d.sync += [head.eq(0), tail.eq(0), queued.eq(0), fresh.eq(prefill), count.eq(prefill),
                         landing.eq(0), self.in_use.eq(0), ready0.eq(0), ready1.eq(1 % (1 << hb)),
                         full.eq(0), empty.eq(1)]
        with m.Else():
            m.d.sync += [
                ready0.eq(pick("ready0")), ready1.eq(pick("ready1")), count.eq(pick("count")),
                fresh.eq(pick("fresh")), queued.eq(pick("queued")), head.eq(pick("head")), tail.eq(pick("tail")),
                landing.eq(pick("landing")), self.in_use.eq(pick("in_use")), full.eq(pick("full")),
                empty.eq(pick("empty")),
            ]
        return m
