"""A state directory holds one trading day of a cluster of one shape: a configuration changed between runs
(an actor moved, removed or renumbered, another grid, another number of risk shards) is refused at start with
the directory and the change named, never started empty or replayed on other rules while the gateways and risk
shards still hold its orders; and one process at a time writes a journal."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.admin import admin_request
from actors.client import ClusterClient
from actors.cluster import Cluster
from actors.config import ConfigError, load_config
from actors.durable import StateLock, check_state_dir
from exchange.journal import JournalWriter
from exchange.orders import Accepted
from tests.actors.cluster_helpers import start_cluster, write_config

BOOK1 = 'actors = ["book/AAPL", "book/MSFT"]'
BOOK2 = 'actors = ["book/GOOG", "book/TSLA"]'
NODES = ("gateway", "risk", "book1", "book2", "md")


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


def _rest(client: ClusterClient, symbol: str, order_id: int, price: int) -> None:
    """A buy order of A1 that rests: its Accepted has come."""
    client.new_order(symbol, order_id, "A1", "buy", 100, price=price)

    def accepted(events: list) -> bool:
        return any(isinstance(e, Accepted) and e.order_id == order_id for e in events)

    assert accepted(client.collect(accepted))


@contextlib.contextmanager
def _running(path: Path, log_dir: Path) -> Iterator[tuple[Cluster, ClusterClient]]:
    """A cluster of ``path`` and a client of it, both stopped on leaving."""
    cluster = start_cluster(path, log_dir)
    try:
        with ClusterClient(cluster.config.client_endpoint(), name="state") as client:
            yield cluster, client
    finally:
        cluster.stop()


def _first_run(path: Path) -> None:
    """What the nodes' first start leaves: each node's layout.json (and locks released)."""
    config = load_config(path)
    for node in NODES:
        check_state_dir(config, node)


def _refused(path: Path, node: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        check_state_dir(load_config(path), node)


def test_the_same_configuration_starts_again_and_every_change_of_shape_is_refused(tmp_path):
    path = _config(tmp_path)
    _first_run(path)
    assert (tmp_path / "state" / "book1" / "layout.json").exists()
    _first_run(path)  # unchanged: accepted
    original = path.read_text()
    changes = [
        # another grid: replayed on it, resting orders would be refused or numbered otherwise
        (lambda: _edit(path, 'symbol = "AAPL"\ntick_size = 100', 'symbol = "AAPL"\ntick_size = 1000'),
         "book1", r"AAPL: tick_size 100 -> 1000"),
        # another number of risk shards: accounts are sharded by a hash modulo that number
        (lambda: _edit(path, 'actors = ["risk/0", "risk/1"]', 'actors = ["risk/0", "risk/1", "risk/2"]'),
         "risk", r"added risk/2; renumbered book/AAPL #3 -> #4"),
        # a book moved to another node: every actor after it is renumbered
        (lambda: (_edit(path, BOOK1, 'actors = ["book/AAPL"]'),
                  _edit(path, BOOK2, 'actors = ["book/GOOG", "book/TSLA", "book/MSFT"]')),
         "md", r"renumbered book/MSFT #4 -> #6.*node book1 hosts book/AAPL \(was book/AAPL, book/MSFT\)"),
    ]
    for change, node, pattern in changes:
        change()
        _refused(path, node, r"the configuration is not the one .* was written with \(.*layout.json\): .*" + pattern)
        path.write_text(original)
    _first_run(path)
    # A risk shard at the very end would still shard the accounts otherwise.
    path.write_text(original + '\n[[node]]\nname = "risk2"\nactors = ["risk/2"]\n')
    _refused(path, "gateway", r"added risk/2\.")
    # A new instrument on a node of its own after all the others numbers no existing actor otherwise: allowed,
    # and the shape from then on.
    path.write_text(original + '\n[[node]]\nname = "book3"\nactors = ["book/NFLX"]\n\n'
                               '[[instrument]]\nsymbol = "NFLX"\ntick_size = 100\n')
    check_state_dir(load_config(path), "book1")
    assert "book/NFLX" in (tmp_path / "state" / "book1" / "layout.json").read_text()
    path.write_text(original)
    _refused(path, "book1", r"removed book/NFLX")


def test_an_actor_journal_under_another_node_or_of_an_actor_no_longer_configured_is_refused(tmp_path):
    path = _config(tmp_path)
    state = tmp_path / "state"
    _journal(state / "book2" / "book-GOOG")
    _edit(path, BOOK1, 'actors = ["book/AAPL", "book/MSFT", "book/GOOG"]')
    _edit(path, BOOK2, 'actors = ["book/TSLA"]')
    _refused(path, "book1", r"book/GOOG is on node book1 but its journal is .*/state/book2/book-GOOG: an actor stays "
                            r"on its node")
    _edit(path, 'actors = ["book/AAPL", "book/MSFT", "book/GOOG"]', BOOK1)
    _edit(path, '[[instrument]]\nsymbol = "GOOG"\ntick_size = 100\n', "")
    for node in ("gateway", "book1", "book2"):  # whichever node starts first says so
        _refused(path, node, r"holds journals of actors the configuration does not have: .*/state/book2/book-GOOG; "
                             r"their orders")


def test_a_book_moved_to_another_node_is_refused_at_start_and_its_orders_are_there_when_it_is_put_back(tmp_path):
    path = _config(tmp_path)
    with _running(path, tmp_path / "logs1") as (_, client):
        _rest(client, "GOOG", 1, 1_000_100)
    original = path.read_text()
    # Before: book1 started GOOG empty, and the order its client was told rests was gone.
    _edit(path, BOOK1, 'actors = ["book/AAPL", "book/MSFT", "book/GOOG"]')
    _edit(path, BOOK2, 'actors = ["book/TSLA"]')
    with pytest.raises(RuntimeError, match=r"exited with code 78 while starting:(.|\n)*(is on node book1 but its "
                                           r"journal is|the configuration is not the one)"):
        start_cluster(path, tmp_path / "logs2")
    # Before: replayed on the new grid, the order at 1,000,100 was refused and the book started without it.
    path.write_text(original.replace('symbol = "GOOG"\ntick_size = 100', 'symbol = "GOOG"\ntick_size = 1000'))
    with pytest.raises(RuntimeError, match=r"exited with code 78 while starting:(.|\n)*GOOG: tick_size 100 -> 1000"):
        start_cluster(path, tmp_path / "logs3")
    path.write_text(original)
    cluster = start_cluster(path, tmp_path / "logs4")
    try:
        orders = admin_request(cluster.config, "book/GOOG", {"command": "snapshot"})["state"]["orders"]
        assert [(o[1], o[3], o[4]) for o in orders] == [("A1", 1_000_100, 100)]
    finally:
        cluster.stop()


def test_a_second_copy_of_a_running_node_is_refused_before_it_opens_a_journal(tmp_path):
    path = _config(tmp_path)
    with _running(path, tmp_path / "logs") as (cluster, client):
        _rest(client, "AAPL", 1, 1_000_100)
        second = subprocess.run([sys.executable, "-m", "actors.cli", "node", "--config", str(path), "--name",
                                 "book1"], capture_output=True, text=True, timeout=60)
        pid = cluster.nodes["book1"].process.pid
        assert second.returncode == 78, second.stderr
        assert f"{tmp_path}/state/book1/book-AAPL is in use by another process (pid {pid})" in second.stderr
        # It replayed nothing and told nobody it was a recovered book/AAPL: the running book goes on, alone.
        time.sleep(0.5)
        stats = admin_request(cluster.config, "md/0", {"command": "stats"})["stats"]
        assert stats.get("books_recovered", 0) == 4, stats  # each of the 4 books once, at its start
        _rest(client, "AAPL", 2, 1_000_200)
    # A node's directories are free again once its process has ended, however it ended.
    StateLock(tmp_path / "state" / "book1" / "book-AAPL").release()
    running = StateLock(tmp_path / "state" / "book2" / "book-GOOG")
    try:
        _refused(path, "book2", r"state/book2/book-GOOG is in use by another process")
    finally:
        running.release()


def test_a_node_started_alone_with_journals_on_needs_a_state_directory(tmp_path):
    """``matchwire run`` gives its nodes a fresh state directory; a node started alone (one per host) must be
    told where its journals go. It used to start, fail in its gateway's start with a traceback, and exit 70."""
    path = write_config(tmp_path, extra='[durability]\nenabled = true\n')
    alone = subprocess.run([sys.executable, "-m", "actors.cli", "node", "--config", str(path), "--name", "gateway"],
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode == 78, alone.stderr
    assert "journals are on ([durability] enabled) but no state directory is set: give [durability] state_dir, " \
           "or --state-dir DIR" in alone.stderr and "Traceback" not in alone.stderr
