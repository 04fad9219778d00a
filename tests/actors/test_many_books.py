"""Nodes of many books (more than ``actors.node.MANY_BOOKS``, and more than a ZeroMQ context's default 1,023
sockets): each book is ticked once a second in turn, pings its
peers every ten seconds, connects only to the nodes it sends to (never another book node), and reports statistics
only when they changed, which the supervisor publishes as partial reports the launcher merges. With 1,000 books a
node they spent some 80 % of a core standing still, and 2,000 first orders took 11 s (docs/cluster.md "Many
instruments"). What must still hold: every order answered, the launcher's view complete and current, and reports
held for a dead peer delivered when it returns although their books tick once a second."""

from __future__ import annotations

import io
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from rich.console import Console

from actors.admin import admin_request
from actors.bench_instruments import config_text
from actors.client import ClusterClient
from actors.cluster import VIEW_INSTRUMENTS, merge_stats, render_view
from actors.config import load_config, name_list
from actors.node import MANY_BOOKS, node_connections, open_files_needed
from actors.ports import free_port_block
from actors.top import LADDERS, run_top
from actors.transport import (
    HEARTBEAT_MAX_MS,
    HEARTBEAT_MS,
    LocalDirectory,
    Outbox,
    heartbeat_interval_ms,
    heartbeat_timeout_ms,
)
from exchange.orders import Accepted
from tests.actors.cluster_helpers import start_cluster, wait_for

# Two book nodes, each over the threshold and over ZeroMQ's default of 1,023 sockets a context (a node of 1,024
# books could not start).
INSTRUMENTS = 2 * 1030
assert INSTRUMENTS // 2 > MANY_BOOKS


def _accept(client: ClusterClient, symbols: list[str], first: int, account: str = "A1", side: str = "buy") -> None:
    for number, symbol in enumerate(symbols, first):
        client.new_order(symbol, number, account, side, 100, price=1_000_000)
    accepted, other = 0, []
    deadline = time.monotonic() + 30
    while accepted + len(other) < len(symbols) and time.monotonic() < deadline:
        for event, _ in client.poll(0.2):
            if isinstance(event, Accepted):
                accepted += 1
            else:
                other.append(event)
    assert accepted == len(symbols), (accepted, other[:5])


def _book_stats(config, symbol: str) -> dict:  # noqa: ANN001
    return admin_request(config, f"book/{symbol}", {"command": "stats"})["stats"]


def test_partial_statistics_update_the_actors_they_name_and_a_full_report_replaces_them():
    first = {"type": "stats", "full": True, "actors": {"book/A": {"seq": 1}, "book/B": {"seq": 4}}, "gc": {"n": 1}}
    partial = {"type": "stats", "full": False, "actors": {"book/A": {"seq": 2}}, "gc": {"n": 2}}
    merged = merge_stats(first, partial)
    assert merged["actors"] == {"book/A": {"seq": 2}, "book/B": {"seq": 4}} and merged["gc"] == {"n": 2}
    assert first["actors"]["book/A"] == {"seq": 1}  # the earlier report is not changed in place
    full = {"type": "stats", "full": True, "actors": {"book/B": {"seq": 5}}}
    assert merge_stats(merged, full) == full  # an actor gone from a full report is gone
    assert merge_stats({}, partial) == partial  # a partial report first: what it has
    assert merge_stats(first, {"type": "stats", "actors": {}}) == {"type": "stats", "actors": {}}  # older nodes


def test_a_node_of_many_connections_heartbeats_less_often(tmp_path):
    """libzmq cancels a timer by walking all of its I/O thread's timers, so heartbeats cost a node the square of its
    connections: at 4,000 instruments an idle book node's I/O thread used most of a core, and first orders waited
    seconds behind it (docs/cluster.md "Many instruments")."""
    assert heartbeat_interval_ms(12) == HEARTBEAT_MS == 1000
    assert heartbeat_interval_ms(3090) == 6180 and heartbeat_interval_ms(6000) == HEARTBEAT_MAX_MS == 10_000
    assert heartbeat_timeout_ms(1000) == 5000 and heartbeat_timeout_ms(10_000) == 30_000
    path = tmp_path / "cluster.toml"
    path.write_text(config_text(4000, free_port_block(100), tmp_path / "state"))
    config = load_config(path)
    assert node_connections(config, "book1") == (6000, 4)  # each book to gateway, risk, md; those actors to it
    assert node_connections(config, "gateway") == (4, 4003)  # every book, both risk shards, md
    context = zmq.Context()
    try:
        outbox = Outbox(context, config, "risk/0", LocalDirectory(), "risk", heartbeat_ms=7000)
        assert (outbox.socket.getsockopt(zmq.HEARTBEAT_IVL), outbox.socket.getsockopt(zmq.HEARTBEAT_TIMEOUT)) == \
            (7000, 21_000)
        outbox.close()
    finally:
        context.term()


def test_nodes_of_many_books_answer_every_order_keep_the_view_current_and_deliver_held_reports(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(config_text(INSTRUMENTS, free_port_block(100), tmp_path / "state") + '[[account]]\nname = "A2"\n')
    cluster = start_cluster(path, tmp_path / "logs")
    try:
        config = cluster.config
        symbols = list(config.instruments)
        book1 = [s for s in symbols if config.actor_node[f"book/{s}"].name == "book1"]
        with ClusterClient(config.client_endpoint(), name="many") as client:
            _accept(client, symbols, 1)

            # The launcher's view of book1 (merged from partial reports) gets every book's order.
            def view_current() -> bool:
                cluster.pump(0.05)
                actors = cluster.nodes["book1"].stats.get("actors", {})
                return all((actors.get(f"book/{s}", {}).get("seq") or 0) >= 1 for s in book1)

            assert wait_for(view_current, timeout=15)
            log = (tmp_path / "logs" / "book1.log").read_text()
            assert "node book1 up: actors book/S0000, book/S0001, " in log and " and 1,018 more on tcp://" in log
            assert "node book1: 3094 connections: heartbeats every 6.2 s" in log

            # The views show a few instruments, the most traded first: one trade, in an instrument far down the list.
            traded_symbol = symbols[-3]
            _accept(client, [traded_symbol], len(symbols) + 1, "A2", "sell")  # and it trades with A1's buy

            def view_shows_the_trade() -> bool:
                cluster.pump(0.05)
                return any(line.split()[0] == traded_symbol for line in render_view(cluster, {})[2:-2])

            assert wait_for(view_shows_the_trade, timeout=15)
            lines = render_view(cluster, {})
            assert len(lines) == 2 + VIEW_INSTRUMENTS + 2, lines
            assert lines[-2] == f"  ... and {INSTRUMENTS - VIEW_INSTRUMENTS:,} more instruments (0 of them traded)"
            assert [line.split()[0] for line in lines[2:-2]] == sorted([*symbols[:VIEW_INSTRUMENTS - 1], traded_symbol])
            console = Console(width=120, record=True, file=io.StringIO(), color_system=None)
            assert run_top(config, interval=2.0, once=True, console=console, timeout=10) == 0
            frame = console.export_text()
            ladders = re.findall(r"\b(S\d{4})\s+last ", frame)
            assert ladders == sorted([*symbols[:LADDERS - 1], traded_symbol]), ladders
            assert f"{INSTRUMENTS - LADDERS:,} more instruments (0 of them traded)" in frame
            console = Console(width=120, record=True, file=io.StringIO(), color_system=None)
            assert run_top(config, interval=2.0, once=True, console=console, timeout=10, symbols=["S0007"]) == 0
            assert re.findall(r"\b(S\d{4})\s+last ", console.export_text()) == ["S0007"]

            # A book does not connect to the other book node: its death is no peer of theirs going down.
            cluster.kill_node("book2")
            assert wait_for(lambda: (cluster.pump(0.02), not cluster.alive()["book2"])[1], timeout=10)
            assert wait_for(lambda: "book2" in admin_request(config, "risk/0", {"command": "stats"})
                            ["stats"]["peers_down"], timeout=10)
            assert "book2" not in _book_stats(config, book1[0])["peers_down"]

            # Market data dies: book1's books hold its reports, and deliver them when it is back.
            cluster.kill_node("md")
            assert wait_for(lambda: (cluster.pump(0.02), not cluster.alive()["md"])[1], timeout=10)
            traded = book1[:5]
            # What a book sends before its node's I/O thread has taken in md's death goes into the dying connection
            # (md's journal asks for it again when it is back); what it sends after is held. Orders until all hold.
            first = len(symbols) + 2
            for _ in range(10):
                _accept(client, traded, first)
                first += len(traded)
                if wait_for(lambda: all(_book_stats(config, s)["held_records"] > 0 for s in traded), timeout=3):
                    break
            assert all(_book_stats(config, s)["held_records"] > 0 for s in traded)
            cluster.restart_node("md", timeout=60)
            assert wait_for(lambda: all(_book_stats(config, s)["held_records"] == 0 for s in traded), timeout=20)
            books = admin_request(config, "md/0", {"command": "stats"})["stats"]["books"]
            assert all(books[s]["seq"] == _book_stats(config, s)["seq"] for s in traded), books
    finally:
        cluster.stop()


def test_long_lists_of_names_are_cut_in_messages():
    assert name_list(["a", "b"]) == "a, b"
    names = [f"book/S{n:04d}" for n in range(1030)]
    assert name_list(names, 3) == "book/S0000, book/S0001, book/S0002 and 1,027 more"
    assert name_list(names[:12]) == ", ".join(names[:12])


def _node(path, name: str, limits: tuple[int, int]) -> subprocess.Popen:  # noqa: ANN001
    return subprocess.Popen([sys.executable, "-m", "actors.cli", "node", "--config", str(path), "--name", name],
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits))


def test_a_node_raises_its_open_files_limit_as_far_as_it_needs_or_refuses_to_start_saying_so(tmp_path):
    """Under a usual soft limit of 1,024 open files a node of some 170 books died half-way through its start with
    "Too many open files" (exit 70); its peers need a connection per book too."""
    path = tmp_path / "cluster.toml"
    path.write_text(config_text(400, free_port_block(100), tmp_path / "state"))
    need = open_files_needed(load_config(path), "book1")
    assert need > 1221  # measured: a node of 200 books had 1,221 files open
    refused = _node(path, "book1", (256, need - 1))
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 78, err
    assert f"node book1 needs about {need} open files (its 200 actors and their connections) and may open " \
           f"{need - 1} (`ulimit -n`; hard limit {need - 1}): raise the limit" in err and "Traceback" not in err
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this machine's hard limit on open files ({hard}) is below what the node needs ({need})")
    node = _node(path, "book1", (256, hard))
    try:
        lines = []
        for line in node.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if "node book1 up:" in line or len(lines) > 400:
                break
        text = "".join(lines)
        assert "node book1 up:" in text and f"open files limit raised from 256 to {min(hard, 2 * need)}" in text, text
        limits = Path(f"/proc/{node.pid}/limits").read_text()
        assert re.search(rf"Max open files\s+{min(hard, 2 * need)}\s", limits), limits
    finally:
        node.terminate()
        node.communicate(timeout=30)
