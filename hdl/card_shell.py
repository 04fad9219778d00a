"""What every card design puts around its core: the link's two ends, the status register, and the
answers sent from registers.

Both cards (:class:`hdl.card.Card`, the matcher; :class:`hdl.itch_card.ItchCard`, the ITCH decoder)
speak :mod:`exchange.card_protocol` over the same wire streams, so they share these pieces; only
their dispatchers and the bursts they send (``EVENTS`` or ``RECORDS`` frames) differ.
"""

from amaranth import Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered

from exchange.card_protocol import ERROR_LAYOUT, STATUS_LAYOUT, FrameType
from exchange.layout import Layout
from hdl.formats import struct_layout
from hdl.link import FrameDecoder, FrameEncoder

__all__ = ["FixedAnswer", "check_int", "fixed_answers", "link_ends", "status_register"]


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` when it is an integer in ``low..high``; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, not {value!r}")
    return value


def link_ends(m: Module, card: wiring.Component, max_payload: int) -> tuple[FrameDecoder, FrameEncoder,
                                                                              SyncFIFOBuffered]:
    """Add the link's receive end (byte FIFO -> :class:`FrameDecoder`) and send end
    (:class:`FrameEncoder`) to ``m``, joined to ``card.rx`` / ``card.tx``, and drive
    ``card.link_error`` (one cycle per rejected frame). Returns (decoder, encoder, rx FIFO)."""
    # A small byte FIFO in front of the decoder: ``rx.ready`` comes from flip-flops (a UART
    # cannot wait, and the simulated card relies on it not depending on ``rx.valid``).
    m.submodules.rx_fifo = rx_fifo = SyncFIFOBuffered(width=8, depth=16)
    m.submodules.decoder = dec = FrameDecoder(max_payload)
    m.submodules.encoder = enc = FrameEncoder()
    m.d.comb += [
        rx_fifo.w_data.eq(card.rx.payload),
        rx_fifo.w_en.eq(card.rx.valid),
        card.rx.ready.eq(rx_fifo.w_rdy),
        dec.i.payload.eq(rx_fifo.r_data),
        dec.i.valid.eq(rx_fifo.r_rdy),
        rx_fifo.r_en.eq(dec.i.ready),
    ]
    wiring.connect(m, enc.o, wiring.flipped(card.tx))
    # A rejected frame shows as a step of one of the decoder's error counters.
    bad_total = Signal(16)
    bad_seen = Signal(16)
    m.d.comb += bad_total.eq(dec.stats.crc + dec.stats.oversize + dec.stats.truncated)
    m.d.sync += bad_seen.eq(bad_total)
    m.d.comb += card.link_error.eq(bad_total != bad_seen)
    return dec, enc, rx_fifo


def status_register(m: Module, dec: FrameDecoder, *, commands: Value, duplicates: Value | int, errors: Value,
                    events: Value) -> Signal:
    """The ``STATUS_R`` payload: the decoder's frame counters and the card's own."""
    status = Signal(struct_layout(STATUS_LAYOUT))
    m.d.comb += [
        status.frames_good.eq(dec.stats.good),
        status.frames_crc.eq(dec.stats.crc),
        status.frames_oversize.eq(dec.stats.oversize),
        status.frames_truncated.eq(dec.stats.truncated),
        status.commands.eq(commands),
        status.duplicates.eq(duplicates),
        status.errors.eq(errors),
        status.events.eq(events),
    ]
    return status


class FixedAnswer:
    """An answer sent from registers, selected by the transmitter's kind: its payload (up to
    :attr:`size` bytes, low byte first), length and frame type."""

    def __init__(self, payload: Signal, length: Signal, frame_type: Signal) -> None:
        self.payload = payload
        self.length = length
        self.frame_type = frame_type

    @property
    def size(self) -> int:
        return len(self.payload) // 8


def fixed_answers(m: Module, kind: Value, *, ident: tuple[object, Value, Layout], status: tuple[object, Value],
                  error: tuple[object, Value], burst: tuple[object, FrameType]) -> FixedAnswer:
    """Select the answer for transmitter ``kind``: each of ``ident`` (kind, value, the design's
    identification layout), ``status`` (kind, value) and ``error`` (kind, value) is sent whole;
    ``burst`` (kind, frame type) only names the frame type of the design's record bursts."""
    answers = [(ident[0], ident[1], ident[2].size, FrameType.IDENT),
               (status[0], status[1], STATUS_LAYOUT.size, FrameType.STATUS_R),
               (error[0], error[1], ERROR_LAYOUT.size, FrameType.ERROR)]
    size = max(n for _, _, n, _ in answers)
    out = FixedAnswer(Signal(8 * size), Signal(range(size + 1)), Signal(8))
    with m.Switch(kind):
        for case, value, length, frame_type in answers:
            with m.Case(case):
                m.d.comb += [out.payload.eq(value), out.length.eq(length), out.frame_type.eq(frame_type)]
        with m.Case(burst[0]):
            m.d.comb += out.frame_type.eq(burst[1])
    return out
