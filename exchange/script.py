"""Command scripts and event output as JSON lines.

A script holds one JSON object per line::

    {"op": "new", "symbol": "JPM", "order_id": 1, "account": "MAX", "side": "buy",
     "type": "limit", "tif": "gtc", "price": 101, "qty": 100}
    {"op": "cancel", "symbol": "JPM", "order_id": 1}
    {"op": "modify", "symbol": "JPM", "order_id": 1, "qty": 50, "price": 101}
    {"op": "reduce", "symbol": "JPM", "order_id": 1, "qty": 20}
    {"op": "end_of_day", "symbol": "JPM"}
    {"op": "set_base", "symbol": "JPM", "price": 100}

``reduce`` cuts ``qty`` shares off what is open (``ModifyOrder(..., reduce=True)``), cancelling the order
when that is all of it. A line that is not such an object (bad JSON, unknown op, unknown key) is *malformed*: it is
reported with its line number and skipped. A well-formed line with bad values (a negative
quantity, side "up") becomes a command anyway, and the engine rejects it with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from exchange.orders import (
    CancelOrder,
    Command,
    EndOfDay,
    Event,
    ModifyOrder,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    SetBasePrice,
    Side,
    TimeInForce,
    enum_name,
    parse_enum,
)

_KEYS = {
    "new": {"op", "symbol", "order_id", "account", "side", "type", "tif", "price", "qty", "post_only",
            "display_qty", "stp"},
    "cancel": {"op", "symbol", "order_id"},
    "modify": {"op", "symbol", "order_id", "qty", "price"},
    "reduce": {"op", "symbol", "order_id", "qty", "price"},  # a price reaches the engine, which refuses it
    "end_of_day": {"op", "symbol"},
    "set_base": {"op", "symbol", "price"},
}


class MalformedCommand(ValueError):
    """A script line that is not a command at all."""


def _enum_or_raw(enum: type, value: object, default: object) -> object:
    # Unknown spellings go through unchanged so the engine rejects them with a reason.
    if value is None:
        return default
    parsed = parse_enum(enum, value)
    return value if parsed is None else parsed


def command_from_dict(obj: object) -> Command:
    """Build a command from one decoded JSON object; raises MalformedCommand."""
    if not isinstance(obj, dict):
        raise MalformedCommand("not a JSON object")
    op = obj.get("op")
    keys = _KEYS.get(op) if isinstance(op, str) else None
    if keys is None:
        raise MalformedCommand(f"unknown op {op!r} (expected one of {', '.join(_KEYS)})")
    unknown = set(obj) - keys
    if unknown:
        raise MalformedCommand(f"unknown key(s) for op {op!r}: {', '.join(sorted(unknown))}")
    symbol = obj.get("symbol")
    if op == "new":
        order_type = _enum_or_raw(OrderType, obj.get("type"), OrderType.LIMIT)
        default_tif = TimeInForce.IOC if order_type is OrderType.MARKET else TimeInForce.GTC
        return NewOrder(
            symbol=symbol,
            order_id=obj.get("order_id"),
            account=obj.get("account"),
            side=_enum_or_raw(Side, obj.get("side"), None),
            price=obj.get("price"),
            qty=obj.get("qty"),
            order_type=order_type,
            tif=_enum_or_raw(TimeInForce, obj.get("tif"), default_tif),
            post_only=obj.get("post_only", False),  # a non-boolean reaches the engine and is rejected
            display_qty=obj.get("display_qty", 0),
            stp=_enum_or_raw(SelfTradePrevention, obj.get("stp"), SelfTradePrevention.NONE),
        )
    if op == "cancel":
        return CancelOrder(symbol, obj.get("order_id"))
    if op == "modify":
        return ModifyOrder(symbol, obj.get("order_id"), qty=obj.get("qty"), price=obj.get("price"))
    if op == "reduce":
        return ModifyOrder(symbol, obj.get("order_id"), qty=obj.get("qty"), price=obj.get("price"), reduce=True)
    if op == "end_of_day":
        return EndOfDay(symbol)
    return SetBasePrice(symbol, obj.get("price"))


def _spelling(value: object) -> object:
    # A value the parser could not map stays as it was, so the round trip keeps bad input visible.
    return enum_name(value) if isinstance(value, IntEnum) else value


def command_to_dict(command: Command) -> dict:
    """The JSON object for a command (the inverse of :func:`command_from_dict`)."""
    if isinstance(command, NewOrder):
        out = {"op": "new", "symbol": command.symbol, "order_id": command.order_id, "account": command.account,
               "side": _spelling(command.side), "type": _spelling(command.order_type),
               "tif": _spelling(command.tif)}
        if command.price is not None:
            out["price"] = command.price
        out["qty"] = command.qty
        if command.post_only:
            out["post_only"] = True
        if command.display_qty:
            out["display_qty"] = command.display_qty
        if command.stp:
            out["stp"] = _spelling(command.stp)
        return out
    if isinstance(command, CancelOrder):
        return {"op": "cancel", "symbol": command.symbol, "order_id": command.order_id}
    if isinstance(command, ModifyOrder) and command.reduce is True:
        out = {"op": "reduce", "symbol": command.symbol, "order_id": command.order_id, "qty": command.qty}
        if command.price is not None:
            out["price"] = command.price
        return out
    if isinstance(command, ModifyOrder):
        out = {"op": "modify", "symbol": command.symbol, "order_id": command.order_id}
        if command.qty is not None:
            out["qty"] = command.qty
        if command.price is not None:
            out["price"] = command.price
        return out
    if isinstance(command, EndOfDay):
        return {"op": "end_of_day", "symbol": command.symbol}
    if isinstance(command, SetBasePrice):
        return {"op": "set_base", "symbol": command.symbol, "price": command.price}
    raise TypeError(f"not a command: {command!r}")


@dataclass(frozen=True, slots=True)
class ScriptError:
    """A malformed script line: where, and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def _no_constant(name: str) -> object:
    # Python's JSON reader accepts NaN and Infinity; JSON does not, and neither do we.
    raise ValueError(f"{name} is not JSON")


def parse_script(lines: Iterable[str]) -> Iterator[Command | ScriptError]:
    """Commands from script lines, with a :class:`ScriptError` in place of each malformed line.

    Blank lines and lines starting with ``#`` are skipped silently.
    """
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            obj = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            yield ScriptError(number, f"invalid JSON: {exc}")
            continue
        try:
            yield command_from_dict(obj)
        except MalformedCommand as exc:
            yield ScriptError(number, str(exc))


def event_to_json(event: Event) -> str:
    """One event as a compact JSON line (without the newline); deterministic key order."""
    return json.dumps(event.to_dict(), separators=(",", ":"))


def command_to_json(command: Command) -> str:
    """One command as a compact JSON line (without the newline)."""
    return json.dumps(command_to_dict(command), separators=(",", ":"))
