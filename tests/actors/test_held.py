"""Reports for a peer that is gone are held, in order, and tried once a second, not on every flush: with market
data dead, each book re-buffered and re-sent everything it had made since, ten times a second, and a book node's
CPU went to that (the demo's order rate fell from ~1,000/s to ~250/s within a minute). At most ``max_held`` are
kept per peer actor, the oldest dropped beyond, counted and said; and when the peer returns it gets them."""

from __future__ import annotations

import time

from actors.admin import admin_request
from actors.client import ClusterClient
from exchange.orders import Accepted
from tests.actors.cluster_helpers import start_cluster, wait_for, write_config


def _book_stats(config, symbol: str) -> dict:  # noqa: ANN001
    return admin_request(config, f"book/{symbol}", {"command": "stats"})["stats"]


def _accept_all(client: ClusterClient, symbol: str, first: int, count: int) -> None:
    for n in range(first, first + count):
        client.new_order(symbol, n, "A1", "buy", 10, price=900_000 + (n % 50) * 100)
    accepted = 0
    deadline = time.monotonic() + 20
    while accepted < count and time.monotonic() < deadline:
        accepted += sum(isinstance(e, Accepted) for e, _ in client.poll(0.2))
    assert accepted == count


def test_reports_for_a_dead_peer_are_held_tried_once_a_second_bounded_and_delivered_when_it_returns(tmp_path):
    path = write_config(tmp_path, extra="")
    text = path.read_text().replace("socket_buffer = 262144\n", "socket_buffer = 262144\nmax_held = 1000\n")
    path.write_text(text)
    cluster = start_cluster(path, tmp_path / "logs")
    try:
        config = cluster.config
        with ClusterClient(config.client_endpoint(), name="held") as client:
            cluster.kill_node("md")
            assert wait_for(lambda: (cluster.pump(0.02), not cluster.alive()["md"])[1], timeout=10)
            _accept_all(client, "AAPL", 1, 100)  # trading goes on without market data
            time.sleep(1.5)
            tried = _book_stats(config, "AAPL")["outbox_unreachable"]
            time.sleep(3.0)
            stats = _book_stats(config, "AAPL")
            # Idle, the held reports were tried about once a second (before: every 0.1 s tick, ~30 times).
            assert stats["outbox_unreachable"] - tried <= 6, (tried, stats["outbox_unreachable"])
            held = stats["held_records"]  # every event of the book goes to market data: one or more per order
            assert held >= 100 and stats.get("held_dropped", 0) == 0, stats
            _accept_all(client, "AAPL", 101, 500)
            stats = _book_stats(config, "AAPL")
            made = held * 6  # the same orders, six times as many
            assert stats["held_records"] == 1000 and stats["held_dropped"] == made - 1000, (made, stats)
            log = (tmp_path / "logs" / "book1.log").read_text()
            assert "book/AAPL: md/0 has not taken its reports for long: more than 1000 held" in log
            # Market data returns (without a journal it starts empty): what was held goes to it, oldest first.
            cluster.restart_node("md", timeout=30)

            def delivered() -> bool:
                return _book_stats(config, "AAPL")["held_records"] == 0

            assert wait_for(delivered, timeout=15)
            md = admin_request(config, "md/0", {"command": "stats"})["stats"]
            assert md.get("events", 0) >= 1000, md
    finally:
        cluster.stop()
