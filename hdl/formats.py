"""Amaranth views of the binary record layouts of :mod:`exchange.layout`.

A :class:`~exchange.layout.Layout` is defined once in ``exchange/``; this module turns it into
an ``amaranth.lib.data.StructLayout`` with the same fields in the same bit positions (first
field in the least significant bits, which is how the little-endian bytes read as an integer),
so a stream payload of that layout is exactly the record's bytes as ``int.from_bytes(..., "little")``.
"""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from exchange.layout import Layout

__all__ = ["record_const", "struct_layout"]


def struct_layout(layout: Layout) -> data.StructLayout:
    """The StructLayout of ``layout``: ``int`` fields signed, every other kind unsigned.

    Enum fields stay plain unsigned integers: the gateware compares them with the enum's values,
    and an unknown value must reach the gateware's own checks rather than be unrepresentable.
    """
    members = {}
    for f in layout.fields:
        members[f.name] = signed(f.width) if f.kind == "int" else unsigned(f.width)
    shape = data.StructLayout(members)
    if shape.size != layout.width:  # byte-aligned fields, no padding: a mismatch would be a bug here
        raise AssertionError(f"{layout.name}: StructLayout is {shape.size} bits, layout {layout.width}")
    return shape


def record_const(layout: Layout, record: bytes) -> data.Const:
    """A record's bytes as a constant of :func:`struct_layout` (for tests and initial values)."""
    return data.Const(struct_layout(layout), layout.to_int(record))
