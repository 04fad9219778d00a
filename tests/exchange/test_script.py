"""JSONL command scripts (exchange/script.py): parsing, malformed lines, pass-through of bad values,
and the command <-> dict round trip."""

from __future__ import annotations

import json

import pytest

from exchange.engine import Exchange
from exchange.orders import (
    CancelOrder,
    EndOfDay,
    ModifyOrder,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    SetBasePrice,
    Side,
    TimeInForce,
)
from exchange.script import (
    MalformedCommand,
    ScriptError,
    command_from_dict,
    command_to_dict,
    command_to_json,
    event_to_json,
    parse_script,
)

NEW = '{"op": "new", "symbol": "XYZ", "order_id": 1, "account": "A", "side": "buy", "price": 100, "qty": 10}'


def _attrs(command: object) -> tuple:
    return (type(command).__name__,) + tuple(getattr(command, name) for name in type(command).__slots__)


def test_malformed_lines_are_reported_with_their_line_numbers() -> None:
    lines = [
        "# a comment",  # 1
        "",  # 2
        NEW,  # 3
        '{"op": "new", "symbol": ',  # 4 bad JSON
        '{"op": "fly", "symbol": "XYZ"}',  # 5 unknown op
        '{"op": "cancel", "symbol": "XYZ", "order_id": 1, "qty": 5}',  # 6 unknown key
        "[1, 2, 3]",  # 7 not an object
        '"cancel"',  # 8 not an object
        "42",  # 9 not an object
        '{"symbol": "XYZ", "order_id": 1}',  # 10 no op
        '{"op": 5, "symbol": "XYZ"}',  # 11 op not a string
        "   ",  # 12 blank
        '{"op": "cancel", "symbol": "XYZ", "order_id": 1}',  # 13
        "   # indented comment",  # 14
        '{"op": "end_of_day", "symbol": "XYZ", "price": 1}',  # 15 unknown key for this op
    ]
    items = list(parse_script(lines))
    kinds = [(item.line if isinstance(item, ScriptError) else type(item).__name__) for item in items]
    assert kinds == ["NewOrder", 4, 5, 6, 7, 8, 9, 10, 11, "CancelOrder", 15]
    errors = {item.line: item.reason for item in items if isinstance(item, ScriptError)}
    assert errors[4].startswith("invalid JSON")
    assert "unknown op 'fly'" in errors[5]
    assert "unknown key" in errors[6] and "qty" in errors[6]
    assert errors[7] == errors[8] == errors[9] == "not a JSON object"
    assert "unknown op None" in errors[10]
    assert "unknown op 5" in errors[11]
    assert "price" in errors[15]
    assert str(items[1]) == f"line 4: {errors[4]}"


def test_pathological_json_is_malformed_not_a_crash() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    items = list(parse_script([deep, NEW]))
    assert isinstance(items[0], ScriptError) and items[0].line == 1
    assert isinstance(items[1], NewOrder)


def test_command_from_dict_rejects_what_is_not_a_command() -> None:
    for obj in ([], "new", None, 1, {"op": "delete"}, {"op": "new", "colour": "red"}):
        with pytest.raises(MalformedCommand):
            command_from_dict(obj)


def test_defaults() -> None:
    limit = command_from_dict(json.loads(NEW))
    assert isinstance(limit, NewOrder)
    assert (limit.order_type, limit.tif, limit.stp, limit.post_only, limit.display_qty) == (
        OrderType.LIMIT, TimeInForce.GTC, SelfTradePrevention.NONE, False, 0)
    market = command_from_dict({"op": "new", "symbol": "XYZ", "order_id": 2, "account": "A", "side": "sell",
                                "type": "market", "qty": 5})
    assert (market.order_type, market.tif, market.price) == (OrderType.MARKET, TimeInForce.IOC, None)
    modify = command_from_dict({"op": "modify", "symbol": "XYZ", "order_id": 1, "qty": 4})
    assert (type(modify), modify.qty, modify.price) == (ModifyOrder, 4, None)


# A well-formed line with a bad value becomes a command anyway; the engine rejects it with a reason.
BAD_VALUES = [
    ({"order_id": "1"}, "invalid_order_id"),
    ({"order_id": 0}, "invalid_order_id"),
    ({"order_id": None}, "invalid_order_id"),
    ({"account": 7}, "invalid_account"),
    ({"account": "A B"}, "invalid_account"),
    ({"account": ["A"]}, "invalid_account"),
    ({"account": {"id": "A"}}, "invalid_account"),
    ({"side": "up"}, "invalid_side"),
    ({"side": None}, "invalid_side"),
    ({"side": 1}, "invalid_side"),
    ({"type": "stop"}, "invalid_type"),
    ({"tif": "gtd"}, "invalid_tif"),
    ({"tif": 4}, "invalid_tif"),
    ({"stp": "cancel_all"}, "invalid_stp"),
    ({"qty": -5}, "invalid_qty"),
    ({"qty": 2.5}, "invalid_qty"),
    ({"qty": "10"}, "invalid_qty"),
    ({"qty": [10]}, "invalid_qty"),
    ({"price": "100"}, "invalid_price"),
    ({"price": 100.0}, "invalid_price"),
    ({"display_qty": "5"}, "invalid_display_qty"),
    ({"display_qty": 50}, "invalid_display_qty"),
    ({"type": "market"}, "invalid_price"),
    ({"symbol": 5}, "invalid_symbol"),
    ({"symbol": ["XYZ"]}, "invalid_symbol"),
    ({"symbol": "TOOLONGSYM"}, "invalid_symbol"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_VALUES, ids=[f"{reason}-{change}" for change, reason in BAD_VALUES])
def test_bad_values_pass_through_to_an_engine_reject(change: dict, reason: str) -> None:
    exchange = Exchange()
    exchange.process(command_from_dict({**json.loads(NEW), "order_id": 99}))  # account A is known to the book
    line = json.dumps({**json.loads(NEW), **change})
    (command,) = parse_script([line])
    assert not isinstance(command, ScriptError)
    events = [e.to_dict() for e in exchange.process(command)]
    assert [(e["event"], e["reason"]) for e in events] == [("rejected", reason)]
    assert json.loads(event_to_json(exchange.process(command)[0]))["reason"] == reason


def test_missing_fields_pass_through_too() -> None:
    exchange = Exchange()
    (command,) = parse_script(['{"op": "new", "symbol": "XYZ"}'])
    assert [e.to_dict()["reason"] for e in exchange.process(command)] == ["invalid_order_id"]
    (command,) = parse_script(['{"op": "modify", "symbol": "XYZ"}'])
    assert [e.to_dict()["reason"] for e in exchange.process(command)] == ["unknown_order"]


CANONICAL = [
    {"op": "new", "symbol": "XYZ", "order_id": 1, "account": "A", "side": "buy", "type": "limit", "tif": "gtc",
     "price": 100, "qty": 10},
    {"op": "new", "symbol": "XYZ", "order_id": 2, "account": "B", "side": "sell", "type": "limit", "tif": "day",
     "price": 101, "qty": 50, "post_only": True, "display_qty": 10, "stp": "cancel_both"},
    {"op": "new", "symbol": "XYZ", "order_id": 3, "account": "C", "side": "buy", "type": "market", "tif": "fok",
     "qty": 5, "stp": "cancel_oldest"},
    {"op": "cancel", "symbol": "XYZ", "order_id": 1},
    {"op": "modify", "symbol": "XYZ", "order_id": 2, "qty": 20},
    {"op": "modify", "symbol": "XYZ", "order_id": 2, "price": 99},
    {"op": "modify", "symbol": "XYZ", "order_id": 2, "qty": 20, "price": 99},
    {"op": "end_of_day", "symbol": "XYZ"},
    {"op": "set_base", "symbol": "XYZ", "price": 100},
]


@pytest.mark.parametrize("obj", CANONICAL, ids=[f"{o['op']}-{i}" for i, o in enumerate(CANONICAL)])
def test_dict_command_dict_round_trip(obj: dict) -> None:
    assert command_to_dict(command_from_dict(obj)) == obj
    # and through a JSON line
    (command,) = parse_script([command_to_json(command_from_dict(obj))])
    assert command_to_dict(command) == obj


COMMANDS = [
    NewOrder("XYZ", 7, "A", Side.SELL, 100, 10),
    NewOrder("XYZ", 8, "ABCDEFGH", Side.BUY, None, 10, order_type=OrderType.MARKET, tif=TimeInForce.IOC),
    NewOrder("XYZ", 9, "A", Side.BUY, 100, 30, tif=TimeInForce.DAY, post_only=True, display_qty=10,
             stp=SelfTradePrevention.CANCEL_NEWEST),
    CancelOrder("XYZ", 7),
    ModifyOrder("XYZ", 9, qty=5),
    ModifyOrder("XYZ", 9, price=101),
    EndOfDay("XYZ"),
    SetBasePrice("XYZ", 100),
]


@pytest.mark.parametrize("command", COMMANDS, ids=[repr(c) for c in COMMANDS])
def test_command_dict_command_round_trip(command: object) -> None:
    assert _attrs(command_from_dict(command_to_dict(command))) == _attrs(command)


def test_defaults_are_written_out() -> None:
    """A NewOrder built in code serializes its type and tif, so the line means the same when read back."""
    obj = command_to_dict(NewOrder("XYZ", 1, "A", Side.BUY, 100, 10, tif=TimeInForce.IOC))
    assert (obj["type"], obj["tif"]) == ("limit", "ioc")
    assert "price" not in command_to_dict(COMMANDS[1])
    with pytest.raises(TypeError):
        command_to_dict("not a command")  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [{"side": "up"}, {"type": "stop"}, {"tif": "gtd"}, {"stp": "cancel_all"}],
                         ids=["side", "type", "tif", "stp"])
def test_round_trip_keeps_bad_values(change: dict) -> None:
    """command_to_dict is documented as the inverse of command_from_dict, which passes bad values through;
    a command holding one must serialize back to the same line (e.g. to record a failing stream)."""
    obj = {"op": "new", "symbol": "XYZ", "order_id": 1, "account": "A", "side": "buy", "type": "limit",
           "tif": "gtc", "price": 100, "qty": 10, **change}
    assert command_to_dict(command_from_dict(obj)) == obj


def test_event_lines_are_compact_and_ordered() -> None:
    exchange = Exchange()
    (command,) = parse_script([NEW])
    line = event_to_json(exchange.process(command)[0])
    assert line == ('{"event":"accepted","seq":1,"symbol":"XYZ","order_id":1,"account":"A","side":"buy",'
                    '"type":"limit","tif":"gtc","price":100,"qty":10}')
