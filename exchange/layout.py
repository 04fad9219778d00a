"""Fixed binary record layouts, defined once and used by Python, gateware and host alike.

A :class:`Layout` is an ordered list of byte-aligned fields. Python packs and unpacks it with
``struct`` (little-endian, no padding); gateware builds an ``amaranth.lib.data.StructLayout``
from the same list (see ``hdl.formats``), which places the first field at the least significant
bits. Since the bytes are little-endian, ``int.from_bytes(record, "little")`` is exactly the
bit vector the gateware sees: one definition, two views, no second copy.

Field kinds:

* ``uint``: unsigned integer of 8, 16, 32 or 64 bits;
* ``int``: two's-complement signed integer of the same widths;
* ``ascii``: fixed-width text, space-padded on the right (like ITCH alpha fields);
* ``enum``: an ``IntEnum`` carried as an unsigned integer; unpacking an unknown value raises
  :class:`LayoutError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

_STRUCT_CODES = {("uint", 8): "B", ("uint", 16): "H", ("uint", 32): "I", ("uint", 64): "Q",
                 ("int", 8): "b", ("int", 16): "h", ("int", 32): "i", ("int", 64): "q"}


class LayoutError(ValueError):
    """A record that does not fit its layout (wrong length, out-of-range value, unknown enum)."""


@dataclass(frozen=True, slots=True)
class Field:
    """One field: its name, kind (``uint``, ``int``, ``ascii``, ``enum``) and width in bits."""

    name: str
    kind: str
    width: int
    enum: type[IntEnum] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("uint", "int", "ascii", "enum"):
            raise ValueError(f"field {self.name}: unknown kind {self.kind!r}")
        if self.width <= 0 or self.width % 8:
            raise ValueError(f"field {self.name}: width must be a positive multiple of 8 bits")
        if self.kind in ("uint", "int", "enum") and self.width not in (8, 16, 32, 64):
            raise ValueError(f"field {self.name}: integer width must be 8, 16, 32 or 64")
        if (self.kind == "enum") != (self.enum is not None):
            raise ValueError(f"field {self.name}: an enum field needs its enum type, and only it")

    @property
    def struct_code(self) -> str:
        if self.kind == "ascii":
            return f"{self.width // 8}s"
        return _STRUCT_CODES[("uint" if self.kind == "enum" else self.kind, self.width)]


def uint(name: str, width: int) -> Field:
    """An unsigned integer field."""
    return Field(name, "uint", width)


def sint(name: str, width: int) -> Field:
    """A signed integer field."""
    return Field(name, "int", width)


def ascii_field(name: str, length: int) -> Field:
    """A fixed-width, space-padded ASCII field of ``length`` bytes."""
    return Field(name, "ascii", length * 8)


def enum_field(name: str, enum: type[IntEnum], width: int = 8) -> Field:
    """An IntEnum carried as an unsigned integer."""
    return Field(name, "enum", width, enum)


class Layout:
    """An ordered, byte-aligned record layout with Python pack/unpack.

    ``pack(**values)`` returns ``size`` bytes; ``unpack(buffer, offset)`` returns a dict with
    ascii fields stripped of padding and enum fields as members.
    """

    def __init__(self, name: str, fields: list[Field]) -> None:
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise ValueError(f"layout {name}: duplicate field names")
        self.name = name
        self.fields = tuple(fields)
        self.names = tuple(names)
        self._struct = struct.Struct("<" + "".join(f.struct_code for f in fields))
        self.size = self._struct.size
        self.width = self.size * 8
        self._ascii = [i for i, f in enumerate(fields) if f.kind == "ascii"]
        self._enums = [(i, f.enum) for i, f in enumerate(fields) if f.kind == "enum"]

    def __repr__(self) -> str:
        return f"Layout({self.name}, {self.size} bytes)"

    @property
    def struct(self) -> struct.Struct:
        """The compiled ``struct.Struct`` (for hot paths that pack raw values themselves)."""
        return self._struct

    def offset_of(self, name: str) -> int:
        """Bit offset of a field from the least significant bit."""
        offset = 0
        for f in self.fields:
            if f.name == name:
                return offset
            offset += f.width
        raise KeyError(name)

    def pack_values(self, values: list | tuple) -> bytes:
        """Pack positional values in field order."""
        items = list(values)
        for i in self._ascii:
            text = items[i]
            width = self.fields[i].width // 8
            if isinstance(text, str):
                text = text.encode("ascii", "strict")
            if len(text) > width:
                raise LayoutError(f"{self.name}.{self.fields[i].name}: {text!r} longer than {width} bytes")
            items[i] = text.ljust(width, b" ")
        try:
            return self._struct.pack(*items)
        except (struct.error, UnicodeEncodeError) as exc:
            raise LayoutError(f"{self.name}: {exc}") from exc

    def pack(self, **values: object) -> bytes:
        """Pack named values; a missing field is an error."""
        try:
            return self.pack_values([values[n] for n in self.names])
        except KeyError as exc:
            raise LayoutError(f"{self.name}: missing field {exc.args[0]}") from exc

    def unpack_values(self, buffer: bytes | memoryview, offset: int = 0) -> list:
        """Positional values; raises LayoutError on a short buffer or an unknown enum value."""
        try:
            items = list(self._struct.unpack_from(buffer, offset))
        except struct.error as exc:
            raise LayoutError(f"{self.name}: need {self.size} bytes at offset {offset}: {exc}") from exc
        for i in self._ascii:
            try:
                items[i] = items[i].decode("ascii").rstrip(" ")
            except UnicodeDecodeError as exc:
                raise LayoutError(f"{self.name}.{self.fields[i].name}: not ASCII") from exc
        for i, enum in self._enums:
            try:
                items[i] = enum(items[i])  # type: ignore[misc]
            except ValueError as exc:
                raise LayoutError(f"{self.name}.{self.fields[i].name}: unknown value {items[i]}") from exc
        return items

    def unpack(self, buffer: bytes | memoryview, offset: int = 0) -> dict:
        """Named values, as :meth:`unpack_values`."""
        return dict(zip(self.names, self.unpack_values(buffer, offset), strict=True))

    def to_int(self, record: bytes) -> int:
        """The record as the bit vector gateware sees (first field in the low bits)."""
        return int.from_bytes(record, "little")

    def from_int(self, value: int) -> bytes:
        """The inverse of :meth:`to_int`."""
        return value.to_bytes(self.size, "little")
