"""A stream-fed CRC engine, parametrised by a :class:`exchange.framing_spec.CrcSpec`.

The update is derived from the spec's own bitwise model: the register after absorbing one data
word is a linear (GF(2)) function of the previous register and the word, so each next-state bit
is the XOR of a fixed set of register and data bits, found by feeding the model unit vectors.
Each bit is emitted as one XOR reduction, which keeps the netlist small and event-driven
simulators (Icarus) fast.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.build import Platform
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from exchange.framing_spec import CrcSpec

__all__ = ["CRC", "crc_matrix"]


def crc_matrix(spec: CrcSpec, data_width: int = 8) -> tuple[list[int], list[int]]:
    """Columns of the CRC update: ``(reg_cols, data_cols)``.

    ``reg_cols[i]`` is the register (in :meth:`CrcSpec.register`'s unreflected view) produced by
    register bit ``i`` alone, ``data_cols[j]`` the one produced by data bit ``j`` alone (data
    bytes enter least significant byte first). The next register is the XOR of the columns of
    the set bits.
    """
    if not isinstance(data_width, int) or data_width <= 0 or data_width % 8:
        raise ValueError(f"data_width must be a positive multiple of 8, not {data_width!r}")
    nbytes = data_width // 8

    def step(reg: int, word: int) -> int:
        return spec.register(word.to_bytes(nbytes, "little"), reg=reg)

    return [step(1 << i, 0) for i in range(spec.width)], [step(0, 1 << j) for j in range(data_width)]


class CRC(wiring.Component):
    """CRC over a stream of data words, one word per cycle.

    Ports:

    * ``i``: :py:`In(stream.Signature(data_width, always_ready=True))`; every beat is absorbed
      (multi-byte words least significant byte first).
    * ``start``: :py:`In(1)`; restarts the computation. With a beat in the same cycle, that beat is
      the first of the new computation.
    * ``value``: :py:`Out(spec.width)`; the finalised CRC of the words absorbed so far, valid the
      cycle after the last beat.
    * ``match``: :py:`Out(1)`; the words absorbed since ``start`` end with their own CRC (appended
      as :meth:`CrcSpec.to_bytes` does), i.e. they form a valid codeword.

    Raises ValueError for a ``data_width`` that is not a positive multiple of 8.
    """

    def __init__(self, spec: CrcSpec, data_width: int = 8) -> None:
        if not isinstance(spec, CrcSpec):
            raise ValueError(f"spec must be a CrcSpec, not {spec!r}")
        self._spec = spec
        self._reg_cols, self._data_cols = crc_matrix(spec, data_width)
        super().__init__(
            {
                "i": In(stream.Signature(data_width, always_ready=True)),
                "start": In(1),
                "value": Out(spec.width),
                "match": Out(1),
            }
        )

    @property
    def spec(self) -> CrcSpec:
        return self._spec

    def elaborate(self, platform: Platform | None) -> Module:
        m = Module()
        spec = self._spec
        reg = Signal(spec.width, init=spec.init)
        source = Signal(spec.width)
        m.d.comb += source.eq(Mux(self.start, spec.init, reg))

        next_bits = []
        for k in range(spec.width):
            terms = [source[i] for i, col in enumerate(self._reg_cols) if col >> k & 1]
            terms += [self.i.payload[j] for j, col in enumerate(self._data_cols) if col >> k & 1]
            next_bits.append(Cat(*terms).xor() if terms else Const(0, 1))
        with m.If(self.i.valid):
            m.d.sync += reg.eq(Cat(*next_bits))
        with m.Elif(self.start):
            m.d.sync += reg.eq(spec.init)

        final = reg[::-1] if spec.refout else reg
        m.d.comb += [
            self.value.eq(final ^ spec.xorout),
            self.match.eq(reg == spec.residue),
        ]
        return m
