"""Instruments: what may be traded, and the price and quantity grid each one trades on.

Prices are integers in *price units* (for ITCH, 1/10000 of a dollar) and must be a multiple
of the instrument's tick size; quantities are integer shares and must be a multiple of the lot
size. Nothing here is ever a float.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

MAX_SYMBOL_LEN = 8  # ITCH's Stock field is 8 ASCII characters; binary formats use the same width.


def valid_symbol(symbol: object) -> bool:
    """True when ``symbol`` fits the 8-character, printable, space-free ASCII symbol field."""
    return (
        isinstance(symbol, str)
        and 0 < len(symbol) <= MAX_SYMBOL_LEN
        and symbol.isascii()
        and symbol.isprintable()
        and " " not in symbol
    )


@dataclass(frozen=True, slots=True)
class Instrument:
    """A tradable instrument and its grid.

    ``band`` is an optional inclusive ``(low, high)`` price range outside which limit orders are
    rejected; ``reference_price`` is an optional price before the first trade (used by risk).
    """

    symbol: str
    tick_size: int = 1
    lot_size: int = 1
    band: tuple[int, int] | None = None
    reference_price: int | None = None

    def __post_init__(self) -> None:
        if not valid_symbol(self.symbol):
            raise ValueError(f"instrument symbol {self.symbol!r}: 1-{MAX_SYMBOL_LEN} printable ASCII, no spaces")
        for name in ("tick_size", "lot_size"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"instrument {self.symbol}: {name} must be a positive integer, got {value!r}")
        if self.band is not None:
            low, high = self.band
            if type(low) is not int or type(high) is not int or not 0 < low <= high:
                raise ValueError(f"instrument {self.symbol}: band must be two integers 0 < low <= high")
            if low % self.tick_size or high % self.tick_size:
                raise ValueError(f"instrument {self.symbol}: band edges must lie on the tick grid")
        if self.reference_price is not None and (
            type(self.reference_price) is not int or self.reference_price <= 0
        ):
            raise ValueError(f"instrument {self.symbol}: reference_price must be a positive integer")


def instrument_from_mapping(entry: dict) -> Instrument:
    """Build an :class:`Instrument` from one TOML ``[[instrument]]`` table."""
    unknown = set(entry) - {"symbol", "tick_size", "lot_size", "band", "reference_price"}
    if unknown:
        raise ValueError(f"instrument {entry.get('symbol')!r}: unknown keys {sorted(unknown)}")
    band = entry.get("band")
    if band is not None:
        if not isinstance(band, list) or len(band) != 2:
            raise ValueError(f"instrument {entry.get('symbol')!r}: band must be [low, high]")
        band = (band[0], band[1])
    return Instrument(
        symbol=entry.get("symbol"),  # type: ignore[arg-type]  # validated in __post_init__
        tick_size=entry.get("tick_size", 1),
        lot_size=entry.get("lot_size", 1),
        band=band,
        reference_price=entry.get("reference_price"),
    )


def instruments_from_entries(entries: list[dict]) -> dict[str, Instrument]:
    """Validate a list of instrument tables; duplicate symbols are an error."""
    result: dict[str, Instrument] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("each [[instrument]] entry must be a table")
        instrument = instrument_from_mapping(entry)
        if instrument.symbol in result:
            raise ValueError(f"instrument {instrument.symbol} is defined twice")
        result[instrument.symbol] = instrument
    return result


def load_instruments(path: str | Path) -> dict[str, Instrument]:
    """Read ``[[instrument]]`` tables from a TOML file; errors name the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
        return instruments_from_entries(data.get("instrument", []))
    except (OSError, tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
