"""``matchwire top``: one frame of a real running cluster at a fixed terminal size, compared by structure."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest
from rich.console import Console

from actors.admin import admin_request
from actors.client import ClusterClient
from actors.top import ClusterProbe, TopView, format_price, run_top
from exchange.orders import Accepted, Fill
from tests.actors.cluster_helpers import start_cluster, wait_for, write_config

WIDTH = 120
NODES = ("gateway", "risk", "book1", "book2", "md")
SYMBOLS = ("AAPL", "MSFT", "GOOG", "TSLA")
NODE_HEADERS = ("node", "health", "actors", "in/s", "out/s", "fills/s", "rejects/s", "p50 us", "p99 us",
                "pending", "flush p99", "busy/s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("top")
    running = start_cluster(write_config(tmp_path), tmp_path / "logs")
    yield running
    running.stop()


def _frame(view: TopView) -> list[str]:
    console = Console(width=WIDTH, record=True, file=io.StringIO(), color_system=None)
    console.print(view.render(console.width))
    return console.export_text().splitlines()


def _line(lines: list[str], pattern: str, start: int = 0) -> int:
    for index in range(start, len(lines)):
        if re.search(pattern, lines[index]):
            return index
    raise AssertionError(f"no line matching {pattern!r} after line {start}:\n" + "\n".join(lines))


def _wait_md_trades(probe: ClusterProbe, symbol: str, trades: int) -> None:
    def seen() -> bool:
        sample = probe.sample()
        books = TopView._md_books(sample)
        return books.get(symbol, {}).get("trades", 0) >= trades

    assert wait_for(seen, timeout=10, interval=0.1)


def test_price_format():
    assert [format_price(v) for v in (1_000_000, 1_000_100, 1_895_050, 5, None)] == \
        ["100.00", "100.01", "189.505", "0.0005", "-"]


def test_a_frame_shows_nodes_ladders_and_trades_in_their_places(cluster):
    config = cluster.config
    with ClusterClient(config.client_endpoint(), name="top-maker") as maker, \
            ClusterClient(config.client_endpoint(), name="top-taker") as taker:
        # AAPL: six levels a side (only five may show), two orders at the best bid.
        order_id = 1
        for level in range(6):
            maker.new_order("AAPL", order_id, "A1", "buy", 100 * (level + 1), price=1_000_000 - 100 * level)
            maker.new_order("AAPL", order_id + 1, "A1", "sell", 100 * (level + 1), price=1_000_100 + 100 * level)
            order_id += 2
        maker.new_order("AAPL", order_id, "A3", "buy", 50, price=1_000_000)
        maker.new_order("GOOG", order_id + 1, "A1", "sell", 300, price=2_000_000)
        assert maker.collect(lambda ev: sum(isinstance(e, Accepted) for e in ev) == 14)
        with ClusterProbe(config, timeout=2.0) as probe:
            view = TopView(config, interval=1.0)
            view.update(probe.sample())
            # Trade between the two samples: the tape shows it, the rates count it.
            taker.new_order("GOOG", 1, "A2", "buy", 200, price=2_000_000)
            assert taker.collect(lambda ev: any(isinstance(e, Fill) for e in ev))
            _wait_md_trades(probe, "GOOG", 1)
            view.update(probe.sample())
    assert not view.unhealthy()
    lines = _frame(view)
    assert max(len(line) for line in lines) <= WIDTH

    # Header, then the node table: its headers in order, one row per node in configuration order.
    assert re.match(r"matchwire top +cluster 'test' +5/5 nodes up +\d\d:\d\d:\d\d +every 1 s", lines[0])
    title = _line(lines, r"^Nodes")
    header = _line(lines, r"^\s*node\s+health", title)
    positions = [lines[header].index(name) for name in NODE_HEADERS]
    assert positions == sorted(positions)
    rows = [_line(lines, rf"^\s*{node}\s", header) for node in NODES]
    assert rows == sorted(rows) and rows[0] > header
    health_column = lines[header].index("health")
    for row in rows:
        assert lines[row][health_column:].startswith("ok"), lines[row]
    book2 = lines[rows[3]].split()
    assert book2[:2] == ["book2", "ok"] and book2[3] == "2/2", book2
    assert re.fullmatch(r"\d+%", book2[2]), book2  # the node process's share of a core between the samples
    assert re.fullmatch(r"[\d,.]+", book2[6])  # fills/s: a number, since two samples were taken

    # Ladders: two per row at this width, in configuration order, below the node table.
    first = _line(lines, r"^AAPL\s+last -\s+trades 0\s+vol 0\s+MSFT\s+last -", rows[-1])
    second = _line(lines, r"^GOOG\s+last 200\.00\s+trades 1\s+vol 200\s+TSLA\s+last -", first)
    ladder_header = _line(lines, r"#\s+bid qty\s+bid\s+ask\s+ask qty\s+#.*#\s+bid qty\s+bid\s+ask", first)
    assert ladder_header == first + 1
    aapl = [lines[ladder_header + 2 + level][:WIDTH // 2].split() for level in range(5)]
    assert aapl[0] == ["2", "150", "100.00", "100.01", "100", "1"]  # 2 orders, 100 + 50 at the best bid
    assert [row[2] for row in aapl] == ["100.00", "99.99", "99.98", "99.97", "99.96"]
    assert [row[3] for row in aapl] == ["100.01", "100.02", "100.03", "100.04", "100.05"]
    assert not any("99.95" in line or "100.06" in line for line in lines)  # the sixth level is not shown
    goog = lines[_line(lines, r"#\s+bid qty", second) + 2][:WIDTH // 2].split()
    assert goog == ["200.00", "100", "1"]  # what the trade left of the 300 offered

    # The tape: the trade made between the samples.
    tape = _line(lines, r"^Recent trading", second)
    tape_header = _line(lines, r"time\s+symbol\s+trades\s+shares\s+last", tape)
    assert re.match(r"^\s*\d\d:\d\d:\d\d\s+GOOG\s+1\s+200\s+200\.00\s*$", lines[tape_header + 2])


def test_cli_once_at_a_fixed_terminal_size(cluster, tmp_path):
    env = {**os.environ, "COLUMNS": "100", "LINES": "60", "TERM": "dumb"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "actors.cli", "top", "--once", "--interval", "0.3", "--config",
                             cluster.config_path], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "5/5 nodes up" in lines[0]
    # 100 columns: the two last columns are dropped rather than every header cut short.
    header = _line(lines, r"^\s*" + r"\s+".join(NODE_HEADERS[:-2]) + "$")
    for node in NODES:
        assert re.search(rf"^\s*{node}\s+ok\s", lines[_line(lines, rf"^\s*{node}\s", header)])
    # 100 columns hold one ladder per row: the symbols stack in order.
    symbols = [_line(lines, rf"^{symbol}\s+last") for symbol in SYMBOLS]
    assert symbols == sorted(symbols)


def test_a_dead_node_shows_unreachable_and_top_once_fails(cluster):
    config = cluster.config
    cluster.kill_node("book2")
    assert wait_for(lambda: not cluster.alive()["book2"], timeout=10)

    def risk_sees_it() -> bool:  # its actors probe their peers each tick (0.1 s): a busy machine may lag
        return all("book2" in admin_request(config, actor, {"command": "stats"})["stats"]["peers_down"]
                   for actor in ("risk/0", "risk/1"))

    assert wait_for(risk_sees_it, timeout=10)
    console = Console(width=WIDTH, record=True, file=io.StringIO(), color_system=None)
    assert run_top(config, interval=0.3, once=True, console=console, timeout=0.5) == 1
    lines = console.export_text().splitlines()
    assert "4/5 nodes up" in lines[0]
    header = _line(lines, r"^\s*node\s+health")
    row = lines[_line(lines, r"^\s*book2\s", header)].split()
    assert row[:3] == ["book2", "unreachable", "0/2"]
    for node in ("gateway", "risk", "book1", "md"):
        assert lines[_line(lines, rf"^\s*{node}\s", header)].split()[1] == "ok"
    assert re.search(r"book2 unreachable from .*risk", "\n".join(lines))  # what the actors themselves see
    second = _line(lines, r"^GOOG\s+last")
    assert re.search(r"book2\s+unreachable.*book2\s+unreachable", lines[_line(lines, r"#\s+bid qty", second) + 2])


@pytest.mark.parametrize(("args", "message"), [
    (["--symbols", "AAPL,NOPE"], "no such instrument in the configuration: NOPE"),
    (["--ladders", "0"], "ladders must be at least 1, not 0"),
])
def test_bad_options_are_refused_before_connecting(args, message, capsys):
    from actors.top import main

    assert main(["--once", *args]) == 2
    err = capsys.readouterr().err
    assert f"matchwire top: {message}" in err and "Traceback" not in err
