"""A configuration changed between runs meets the journals of the last one: moved actors take their journals
along, and what would replay differently (another grid, another number of risk shards) or be forgotten (an
actor no longer configured) is refused at start with the directory named, never started empty or replayed
on other rules while the gateways and risk shards still hold its orders."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.admin import admin_request
from actors.client import ClusterClient
from actors.config import ConfigError, load_config
from actors.durable import StateLock, check_state_dir
from exchange.journal import JournalWriter
from exchange.orders import Accepted
from tests.actors.cluster_helpers import start_cluster, wait_for, write_config

BOOK1 = 'actors = ["book/AAPL", "book/MSFT"]'
BOOK2 = 'actors = ["book/GOOG", "book/TSLA"]'


def _config(tmp_path: Path) -> Path:
    return write_config(tmp_path, extra=f'[durability]\nenabled = true\nfsync = "always"\n'
                                         f'state_dir = "{tmp_path}/state"\n')


def _journal(directory: Path) -> None:
    writer = JournalWriter(directory, "always")
    writer.append(b"x" * 16)
    writer.commit()
    writer.close()


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_moved_actor_takes_its_journal_along(tmp_path):
    path = _config(tmp_path)
    state = tmp_path / "state"
    _journal(state / "book2" / "book-GOOG")
    (state / "book1" / "book-GOOG").mkdir(parents=True)  # empty: left by an earlier start, no journal in it
    _edit(path, BOOK1, 'actors = ["book/AAPL", "book/MSFT", "book/GOOG"]')
    _edit(path, BOOK2, 'actors = ["book/TSLA"]')
    config = load_config(path)
    notes = check_state_dir(config, "book1")
    assert notes == [f"book/GOOG moved to node book1: its journal {state}/book2/book-GOOG is now "
                     f"{state}/book1/book-GOOG"]
    assert (state / "book1" / "book-GOOG").is_dir() and not (state / "book2" / "book-GOOG").exists()
    assert check_state_dir(config, "book1") == []  # done once
    # A journal in both places is the operator's to sort out: which one is the book's last run?
    _journal(state / "book2" / "book-GOOG")
    with pytest.raises(ConfigError, match="book/GOOG: journals in both .*book1/book-GOOG and .*book2/book-GOOG"):
        check_state_dir(config, "book1")


def test_journals_of_actors_no_longer_configured_are_refused(tmp_path):
    path = _config(tmp_path)
    _journal(tmp_path / "state" / "book2" / "book-GOOG")
    _edit(path, BOOK2, 'actors = ["book/TSLA"]')
    _edit(path, '[[instrument]]\nsymbol = "GOOG"\ntick_size = 100\n', "")
    config = load_config(path)
    for node in ("gateway", "book1", "book2"):  # whichever node starts first says so
        with pytest.raises(ConfigError, match=r"holds journals of actors the configuration does not have: "
                                              r".*/state/book2/book-GOOG; their orders"):
            check_state_dir(config, node)


def test_a_book_journaled_on_another_grid_and_a_risk_shard_of_another_sharding_are_refused(tmp_path):
    path = _config(tmp_path)
    state = tmp_path / "state"
    _journal(state / "book1" / "book-AAPL")
    (state / "book1" / "book-AAPL" / "instrument.json").write_text(
        '{"symbol": "AAPL", "tick_size": 100, "lot_size": 1, "band": null}')
    _journal(state / "risk" / "risk-1")
    (state / "risk" / "risk-1" / "layout.json").write_text('{"risk_shards": 2}')
    config = load_config(path)
    assert check_state_dir(config, "book1") == [] and check_state_dir(config, "risk") == []
    _edit(path, 'symbol = "AAPL"\ntick_size = 100', 'symbol = "AAPL"\ntick_size = 1000')
    with pytest.raises(ConfigError, match=r"book/AAPL: its journal \(.*book1/book-AAPL\) was written for another "
                                          r"grid \(tick_size 100 -> 1000\)"):
        check_state_dir(load_config(path), "book1")
    _edit(path, 'symbol = "AAPL"\ntick_size = 1000', 'symbol = "AAPL"\ntick_size = 100')
    _edit(path, 'actors = ["risk/0", "risk/1"]', 'actors = ["risk/0", "risk/1", "risk/2"]')
    with pytest.raises(ConfigError, match=r"risk/1: its journal \(.*risk/risk-1\) was written with 2 risk shards, "
                                          r"the configuration has 3"):
        check_state_dir(load_config(path), "risk")


def test_a_book_moved_to_another_node_keeps_its_orders_and_a_new_grid_is_refused_at_start(tmp_path):
    path = _config(tmp_path)
    cluster = start_cluster(path, tmp_path / "logs1")
    try:
        with ClusterClient(cluster.config.client_endpoint(), name="move") as client:
            client.new_order("GOOG", 1, "A1", "buy", 100, price=1_000_100)
            events = client.collect(lambda ev: any(isinstance(e, Accepted) for e in ev))
            assert any(isinstance(e, Accepted) for e in events), events
    finally:
        cluster.stop()
    _edit(path, BOOK1, 'actors = ["book/AAPL", "book/MSFT", "book/GOOG"]')
    _edit(path, BOOK2, 'actors = ["book/TSLA"]')
    cluster = start_cluster(path, tmp_path / "logs2")
    try:
        # Before: book1 started GOOG empty, and the order the client was told rests was gone.
        orders = admin_request(cluster.config, "book/GOOG", {"command": "snapshot"})["state"]["orders"]
        assert [(o[1], o[3], o[4]) for o in orders] == [("A1", 1_000_100, 100)]
        assert wait_for(lambda: any("book/GOOG moved to node book1" in line
                                    for line in (tmp_path / "logs2" / "book1.log").read_text().splitlines()))
    finally:
        cluster.stop()
    _edit(path, 'symbol = "GOOG"\ntick_size = 100', 'symbol = "GOOG"\ntick_size = 1000')
    with pytest.raises(RuntimeError, match=r"node book1 exited with code 78 while starting:(.|\n)*book/GOOG: its "
                                           r"journal .* was written for another grid \(tick_size 100 -> 1000\)"):
        start_cluster(path, tmp_path / "logs3")


def test_a_second_copy_of_a_running_node_is_refused_before_it_opens_a_journal(tmp_path):
    path = _config(tmp_path)
    cluster = start_cluster(path, tmp_path / "logs")
    try:
        with ClusterClient(cluster.config.client_endpoint(), name="dup") as client:
            client.new_order("AAPL", 1, "A1", "buy", 100, price=1_000_100)
            assert any(isinstance(e, Accepted) for e in client.collect(lambda ev: any(isinstance(e, Accepted)
                                                                                      for e in ev)))
            second = subprocess.run([sys.executable, "-m", "actors.cli", "node", "--config", str(path), "--name",
                                     "book1"], capture_output=True, text=True, timeout=60)
            pid = cluster.nodes["book1"].process.pid
            assert second.returncode == 78, second.stderr
            assert f"{tmp_path}/state/book1/book-AAPL is in use by another process (pid {pid})" in second.stderr
            # It replayed nothing and told nobody it was a recovered book/AAPL: the running book goes on, alone.
            time.sleep(0.5)
            stats = admin_request(cluster.config, "md/0", {"command": "stats"})["stats"]
            assert stats.get("books_recovered", 0) == 4, stats  # each of the 4 books once, at its start
            client.new_order("AAPL", 2, "A1", "buy", 100, price=1_000_200)
            assert any(isinstance(e, Accepted) and e.order_id == 2 for e in client.collect(
                lambda ev: any(isinstance(e, Accepted) and e.order_id == 2 for e in ev)))
    finally:
        cluster.stop()
    # A node's directory is free again once its process has ended.
    StateLock(tmp_path / "state" / "book1" / "book-AAPL").release()


def test_an_actor_is_not_taken_from_a_node_that_is_running(tmp_path):
    path = _config(tmp_path)
    state = tmp_path / "state"
    _journal(state / "book2" / "book-GOOG")
    _edit(path, BOOK1, 'actors = ["book/AAPL", "book/MSFT", "book/GOOG"]')
    _edit(path, BOOK2, 'actors = ["book/TSLA"]')
    running = StateLock(state / "book2" / "book-GOOG")
    try:
        with pytest.raises(ConfigError, match=r"state/book2/book-GOOG is in use by another process"):
            check_state_dir(load_config(path), "book1")
        assert (state / "book2" / "book-GOOG").is_dir()
    finally:
        running.release()
