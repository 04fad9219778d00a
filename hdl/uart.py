"""A plain 8N1 UART for boards whose host link is a serial port.

``UART(clk_freq, baud)`` combines :class:`UARTTx` and :class:`UARTRx` with byte streams on the
fabric side; the receiver oversamples with the same divisor counter (it samples mid-bit, timed
from the start bit's falling edge), so any divisor of 4 or more works.
"""

from amaranth import Cat, Module, Signal
from amaranth.build import Platform
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UART", "UARTRx", "UARTTx", "uart_divisor"]

#: Largest baud rate error accepted by default: an 8N1 receiver tolerates about 5 % in total,
#: shared between both ends.
MAX_BAUD_ERROR = 0.02


def uart_divisor(clk_freq: float, baud: float, *, max_error: float = MAX_BAUD_ERROR) -> int:
    """Clock cycles per bit for ``baud`` at ``clk_freq``; ValueError when impossible or too far off."""
    for name, value in (("clk_freq", clk_freq), ("baud", baud)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{name} must be a positive number, not {value!r}")
    divisor = round(clk_freq / baud)
    if divisor < 4:
        raise ValueError(
            f"baud {baud} is too fast for a {clk_freq} Hz clock (divisor {clk_freq / baud:.2f} < 4)"
        )
    error = abs(clk_freq / divisor - baud) / baud
    if error > max_error:
        raise ValueError(
            f"baud {baud} at {clk_freq} Hz: nearest divisor {divisor} is off by {error:.2%} "
            f"(more than {max_error:.2%})"
        )
    return divisor


def _check_divisor(divisor: int) -> None:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"divisor must be an integer >= 4, not {divisor!r}")


class UARTTx(wiring.Component):
    """8N1 transmitter: one byte per ``i`` beat, LSB first, ``divisor`` clocks per bit.

    Ports: ``i`` (:py:`In(stream.Signature(8))`), ``tx`` (:py:`Out(1, init=1)`, idle high).
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: int) -> None:
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        shreg = Signal(10, init=0x3FF)  # stop | data | start, shifted out from bit 0
        bits = Signal(range(11))
        count = Signal(range(self.divisor))
        # Ready from the last cycle of the stop bit, so back-to-back bytes leave no idle gap.
        m.d.comb += [self.tx.eq(shreg[0]), self.i.ready.eq((bits == 0) | ((bits == 1) & (count == 0)))]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                shreg.eq(Cat(0, self.i.payload, 1)),
                bits.eq(10),
                count.eq(self.divisor - 1),
            ]
        with m.Elif(bits != 0):
            with m.If(count == 0):
                m.d.sync += [
                    shreg.eq(Cat(shreg[1:], 1)),
                    bits.eq(bits - 1),
                    count.eq(self.divisor - 1),
                ]
            with m.Else():
                m.d.sync += count.eq(count - 1)
        return m


class UARTRx(wiring.Component):
    """8N1 receiver.

    ``o`` holds a received byte until taken; a byte completing while the previous one is still
    held is dropped and pulses ``overrun``. A low stop bit pulses ``error`` (framing error or
    break), drops the byte and waits for the line to return high.

    Ports: ``rx`` (:py:`In(1, init=1)`, asynchronous, synchronised here), ``o``
    (:py:`Out(stream.Signature(8))`), ``error`` and ``overrun`` (:py:`Out(1)`, one-cycle pulses).
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    error: Out(1)
    overrun: Out(1)

    def __init__(self, divisor: int) -> None:
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)
        count = Signal(range(self.divisor))
        bits = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += count.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(count != 0):
                    m.d.sync += count.eq(count - 1)
                with m.Elif(~rx):  # still low mid-bit: a real start bit
                    m.d.sync += [count.eq(self.divisor - 1), bits.eq(0)]
                    m.next = "DATA"
                with m.Else():
                    m.next = "IDLE"
            with m.State("DATA"):
                with m.If(count != 0):
                    m.d.sync += count.eq(count - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), bits.eq(bits + 1), count.eq(self.divisor - 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(count != 0):
                    m.d.sync += count.eq(count - 1)
                with m.Elif(rx):
                    with m.If(self.o.valid & ~self.o.ready):
                        m.d.comb += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += self.error.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UART(wiring.Component):
    """8N1 UART at ``baud`` for a ``clk_freq`` Hz ``sync`` domain.

    Raises ValueError when no integer divisor gets within ``max_error`` of ``baud`` or the
    divisor would be below 4 (see :func:`uart_divisor`).

    Ports: ``i`` (:py:`In(stream.Signature(8))`, bytes to send), ``o``
    (:py:`Out(stream.Signature(8))`, bytes received), ``tx`` (:py:`Out(1, init=1)`), ``rx``
    (:py:`In(1, init=1)`), ``rx_error``/``rx_overrun`` (:py:`Out(1)` pulses).
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))
    tx: Out(1, init=1)
    rx: In(1, init=1)
    rx_error: Out(1)
    rx_overrun: Out(1)

    def __init__(self, clk_freq: float, baud: float, *, max_error: float = MAX_BAUD_ERROR) -> None:
        self.divisor = uart_divisor(clk_freq, baud, max_error=max_error)
        self.clk_freq = clk_freq
        self.baud = baud
        super().__init__()

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        m.submodules.tx = tx = UARTTx(self.divisor)
        m.submodules.rx = rx = UARTRx(self.divisor)
        wiring.connect(m, wiring.flipped(self.i), tx.i)
        wiring.connect(m, rx.o, wiring.flipped(self.o))
        m.d.comb += [
            self.tx.eq(tx.tx),
            rx.rx.eq(self.rx),
            self.rx_error.eq(rx.error),
            self.rx_overrun.eq(rx.overrun),
        ]
        return m
