"""``matchwire match``: the console script end to end (run as a subprocess, as users run it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

MATCHWIRE = Path(sys.executable).parent / "matchwire"


def run(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(MATCHWIRE), "match", *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=60)


def events(stdout: str) -> list[tuple]:
    """(event, order_id or maker/taker, reason) per output line, enough to tell outcomes apart."""
    out = []
    for line in stdout.splitlines():
        e = json.loads(line)
        out.append((e["event"], e.get("seq"), e.get("order_id", (e.get("maker_order_id"), e.get("taker_order_id"))),
                    e.get("reason")))
    return out


def new(order_id: object, side: str, price: object, qty: object, symbol: str = "ACME", **kw: object) -> str:
    obj = {"op": "new", "symbol": symbol, "order_id": order_id, "account": "A", "side": side, "price": price,
           "qty": qty, **kw}
    return json.dumps(obj)


def test_malformed_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    script = tmp_path / "s.jsonl"
    script.write_text("\n".join([
        new(1, "sell", 100, 10),
        '{"op": "new", "symbol": "ACME", ',
        '{"op": "fly"}',
        new(2, "buy", 100, 4, account="B"),
        "[]",
    ]) + "\n")
    result = run(str(script))
    assert result.returncode == 0
    errors = result.stderr.splitlines()
    assert len(errors) == 3
    assert errors[0].startswith(f"{script}:2: invalid JSON")
    assert errors[1].startswith(f"{script}:3: unknown op 'fly'")
    assert errors[2] == f"{script}:5: not a JSON object; line skipped"
    assert events(result.stdout) == [("accepted", 1, 1, None), ("order_added", 2, 1, None),
                                     ("accepted", 3, 2, None), ("fill", 4, (1, 2), None)]


def test_script_from_standard_input() -> None:
    result = run("-", stdin=new(1, "sell", 100, 10) + "\nnot json\n")
    assert result.returncode == 0
    assert result.stderr.startswith("-:2: invalid JSON")
    assert events(result.stdout) == [("accepted", 1, 1, None), ("order_added", 2, 1, None)]


INSTRUMENTS = """
[[instrument]]
symbol = "ACME"
tick_size = 5
lot_size = 10
band = [50, 500]

[[instrument]]
symbol = "BETA"
"""


def test_instruments_file_configures_symbols_and_grids(tmp_path: Path) -> None:
    (tmp_path / "inst.toml").write_text(INSTRUMENTS)
    (tmp_path / "s.jsonl").write_text("\n".join([
        new(1, "buy", 102, 10),  # off tick
        new(2, "buy", 100, 15),  # off lot
        new(3, "buy", 505, 10),  # outside band
        new(4, "buy", 100, 10, symbol="ZZZ"),  # not configured
        new(5, "buy", 100, 10),
        new(1, "buy", 101, 15, symbol="BETA"),  # BETA: default grid, own sequence
    ]) + "\n")
    result = run("s.jsonl", "--instruments", "inst.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert events(result.stdout) == [
        ("rejected", 1, 1, "price_off_tick"),
        ("rejected", 2, 2, "qty_off_lot"),
        ("rejected", 3, 3, "price_outside_band"),
        ("rejected", None, 4, "unknown_symbol"),
        ("accepted", 4, 5, None), ("order_added", 5, 5, None),
        ("accepted", 1, 1, None), ("order_added", 2, 1, None),
    ]
    # Without the file, the same script trades on unit grids and opens any symbol.
    result = run("s.jsonl", cwd=tmp_path)
    assert [e[0] for e in events(result.stdout)].count("rejected") == 0


def test_a_bad_instruments_file_exits_2_naming_it(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text(new(1, "buy", 100, 10) + "\n")
    for name, text in (("bad.toml", "[[instrument]]\nsymbol = 'ACME'\ntick_size = 0\n"), ("broken.toml", "[[x")):
        (tmp_path / name).write_text(text)
        result = run("s.jsonl", "--instruments", name, cwd=tmp_path)
        assert result.returncode == 2
        assert name in result.stderr and result.stdout == ""
    result = run("s.jsonl", "--instruments", "missing.toml", cwd=tmp_path)
    assert result.returncode == 2 and "missing.toml" in result.stderr


def test_bench_prints_timings(tmp_path: Path) -> None:
    script = tmp_path / "s.jsonl"
    script.write_text("\n".join(new(i, "buy" if i % 2 else "sell", 100 + i % 3, 10) for i in range(1, 41)) + "\n")
    result = run(str(script), "--bench", "--min-seconds", "0.05")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, "the bench prints one line and no events"
    ns = re.search(r"\bns_per_msg=(\d+(?:\.\d+)?)\b", lines[0])
    rate = re.search(r"\bmsgs_per_s=(\d+(?:\.\d+)?)\b", lines[0])
    assert ns and rate, lines[0]
    ns_per_msg, msgs_per_s = float(ns.group(1)), float(rate.group(1))
    assert ns_per_msg > 0 and msgs_per_s > 0
    assert abs(msgs_per_s * ns_per_msg / 1e9 - 1) < 0.01, "the two figures must describe the same rate"
    assert "backend=software" in lines[0]
    messages = int(re.search(r"\bmessages=(\d+)", lines[0]).group(1))  # type: ignore[union-attr]
    assert messages >= 40 and messages % 40 == 0


def test_bench_of_an_empty_script_exits_2(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("# nothing\n")
    result = run("empty.jsonl", "--bench", "--min-seconds", "0.05", cwd=tmp_path)
    assert result.returncode == 2 and "nothing to time" in result.stderr


def test_an_unreadable_script_exits_2_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-script.jsonl"
    result = run(str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr and result.stdout == ""
    result = run(str(tmp_path))  # a directory
    assert result.returncode == 2 and str(tmp_path) in result.stderr
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    result = run(str(binary))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_an_unknown_backend_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text(new(1, "buy", 100, 10) + "\n")
    result = run("s.jsonl", "--backend", "quantum", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown backend 'quantum'" in result.stderr and "software" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_bad_values_in_a_well_formed_line_never_crash_the_cli(tmp_path: Path) -> None:
    """Any JSON value in any field gives a reject, never a traceback (here: lists and objects)."""
    (tmp_path / "s.jsonl").write_text("\n".join([
        new(1, "buy", 100, 10),
        new(2, "buy", 100, 10, account=["A"]),
        new(3, "buy", 100, 10, account={"id": "A"}),
        json.dumps({"op": "new", "symbol": "ACME", "order_id": 4, "account": "A", "side": ["buy"], "price": [100],
                    "qty": {"qty": 10}, "display_qty": [1], "stp": ["x"], "tif": {"a": 1}}),
        json.dumps({"op": "modify", "symbol": "ACME", "order_id": [1], "qty": [2]}),
        json.dumps({"op": "cancel", "symbol": {"s": 1}, "order_id": 1}),
        new(5, "sell", 100, 10),
    ]) + "\n")
    result = run("s.jsonl", cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0
    outcome = [(e[0], e[3]) for e in events(result.stdout)]
    assert outcome == [("accepted", None), ("order_added", None), ("rejected", "invalid_account"),
                       ("rejected", "invalid_account"), ("rejected", "invalid_side"), ("rejected", "unknown_order"),
                       ("rejected", "invalid_symbol"), ("accepted", None), ("fill", None)]
