"""Prometheus metrics: the histogram, the [metrics] table, and real endpoints of a real 2-book-node cluster."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.client import ClusterClient
from actors.config import ConfigError, load_config
from actors.metrics import (
    Log2Histogram,
    MetricsServer,
    NodeSnapshot,
    histogram_delta,
    histogram_quantile,
    metrics_settings,
)
from exchange.orders import Accepted, Fill, Rejected
from tests.actors.cluster_helpers import free_port_block, start_cluster, wait_for, write_config


def test_log2_histogram_buckets_have_exact_power_of_two_upper_bounds():
    hist = Log2Histogram(8)
    for value in (0, 1, 2, 3, 4, 5, 8, 9, 1000):
        hist.record(value)
    # bucket i holds 2**(i-1) < v <= 2**i; bucket 0 holds 0 and 1; beyond the last -> the last
    assert hist.snapshot() == {"counts": [2, 1, 2, 2, 1, 0, 0, 1], "sum": 1032, "count": 9}
    assert histogram_quantile(hist.snapshot(), 0.5) == pytest.approx(3.5)
    assert histogram_quantile({"counts": [0, 0]}, 0.5) is None
    before = hist.snapshot()
    hist.record(6)
    assert histogram_delta(hist.snapshot(), before) == {"counts": [0, 0, 0, 1, 0, 0, 0, 0], "sum": 6, "count": 1}


def test_metrics_table_is_validated(tmp_path):
    path = write_config(tmp_path)
    assert not metrics_settings(load_config(path)).enabled  # no table: no endpoint, no extra port
    path = write_config(tmp_path, extra="[metrics]\nbase_port = 9300\n")
    config = load_config(path)
    settings = metrics_settings(config)
    assert settings.enabled and settings.host == "127.0.0.1"
    assert [settings.port_for(config, n.name) for n in config.nodes] == [9300, 9301, 9302, 9303, 9304]
    for bad in ('[metrics]\nbase_port = "x"\n', "[metrics]\nenabled = 1\n", "[metrics]\nport = 1\n"):
        with pytest.raises(ConfigError, match="metrics"):
            metrics_settings(load_config(write_config(tmp_path, extra=bad)))


def test_server_serves_a_snapshot_and_stops():
    snapshot = NodeSnapshot(node="n", up=True, uptime_s=1.5, actors={"book/X": {
        "orders": 3, "rejects": 1, "fills": 2, "symbol": "X", "seq": 9, "bid": 100, "bid_qty": 5, "ask": None,
        "batch_ns": {"counts": [0] * 12 + [3], "sum": 9000, "count": 3}}}, inbound={"messages": 4},
        backlog={"book/X": 0})
    server = MetricsServer(lambda: snapshot, "127.0.0.1", 0).start()
    try:
        samples = _samples(urllib.request.urlopen(server.url, timeout=5).read().decode())
    finally:
        server.stop()
    assert samples[("matchwire_orders_total", (("actor", "book/X"), ("kind", "book"), ("node", "n")))] == 3
    assert samples[("matchwire_rejects_total", (("actor", "book/X"), ("kind", "book"), ("node", "n"),
                                                ("reason", "engine")))] == 1
    assert samples[("matchwire_stage_batch_seconds_count", (("actor", "book/X"), ("kind", "book"),
                                                            ("node", "n")))] == 3
    # 3 batches of ~3 us each: all inside the 2**12 ns bucket, none below
    assert samples[("matchwire_stage_batch_seconds_bucket", (("actor", "book/X"), ("kind", "book"),
                                                             ("le", "4.096e-06"), ("node", "n")))] == 3
    assert samples[("matchwire_stage_batch_seconds_bucket", (("actor", "book/X"), ("kind", "book"),
                                                             ("le", "2.048e-06"), ("node", "n")))] == 0
    assert samples[("matchwire_book_best_price", (("actor", "book/X"), ("node", "n"), ("side", "bid"),
                                                  ("symbol", "X")))] == 100
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _by_name(samples: dict) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list] = defaultdict(list)
    for (name, labels), value in samples.items():
        out[name].append((dict(labels), value))
    return out


def _scrape(url: str) -> dict[str, list[tuple[dict, float]]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return _by_name(_samples(response.read().decode()))


def _total(series: dict, name: str, **match: str) -> float:
    return sum(v for labels, v in series.get(name, []) if all(labels.get(k) == m for k, m in match.items()))


def test_every_node_of_a_running_cluster_serves_its_metrics(tmp_path):
    metrics_base = free_port_block(10)
    extra = (f'[metrics]\nbase_port = {metrics_base}\n\n'
             '[durability]\nenabled = true\nfsync = "always"\n')
    config = load_config(write_config(tmp_path, extra=extra))
    settings = metrics_settings(config)
    cluster = start_cluster(tmp_path / "cluster.toml", tmp_path / "logs")
    try:
        endpoint = config.client_endpoint()
        with ClusterClient(endpoint, name="maker") as maker, ClusterClient(endpoint, name="taker") as taker:
            symbols = ("AAPL", "MSFT", "GOOG", "TSLA")
            for i, symbol in enumerate(symbols):
                for level in range(3):
                    maker.new_order(symbol, 100 + 10 * i + level, "A1", "sell", 100, price=1_000_000 + 100 * level)
            assert maker.collect(lambda ev: sum(isinstance(e, Accepted) for e in ev) == 12)
            for i, symbol in enumerate(symbols):
                taker.new_order(symbol, 200 + i, "A2", "buy", 150, price=1_000_100)
            taker.cancel("AAPL", 999)  # unknown to the gateway: rejected there
            taker.new_order("NOPE", 300, "A2", "buy", 100, price=1_000_000)  # no such book: rejected by risk
            taker.new_order("AAPL", 301, "A2", "buy", 100, price=1_000_050)  # off tick: rejected by the book
            events = taker.collect(lambda ev: sum(isinstance(e, Fill) for e in ev) >= 8
                                   and sum(isinstance(e, Rejected) for e in ev) >= 3)
            assert sum(isinstance(e, Fill) for e in events) == 8
        urls = {node.name: settings.url_for(config, node.name) for node in config.nodes}
        assert len(set(urls.values())) == 5

        def settled() -> bool:
            # Actors report to their supervisor every 0.25 s: wait until the books' counts are in.
            book_orders = sum(_total(_scrape(urls[n]), "matchwire_orders_total", kind="book")
                              for n in ("book1", "book2"))
            gateway_orders = _total(_scrape(urls["gateway"]), "matchwire_orders_total", kind="gateway")
            risk_orders = _total(_scrape(urls["risk"]), "matchwire_orders_total", kind="risk")
            return (book_orders, gateway_orders, risk_orders) == (12 + 4 + 1, 12 + 4 + 3, 12 + 4 + 2)

        assert wait_for(settled, timeout=10)
        scraped = {name: _scrape(url) for name, url in urls.items()}
        for name, series in scraped.items():
            assert _total(series, "matchwire_node_up", node=name) == 1
            assert _total(series, "matchwire_node_uptime_seconds", node=name) > 0
            assert _total(series, "process_cpu_seconds_total") > 0 and _total(series, "process_open_fds") > 0, name
            assert "matchwire_card_link_errors_total" in series
            assert _total(series, "matchwire_card_link_errors_total") == 0
            for actor in config.node(name).actors:
                assert _total(series, "matchwire_actor_up", actor=actor) == 1, (name, actor)
                assert [v for labels, v in series["matchwire_inbound_backlog"] if labels["actor"] == actor]
                assert [v for labels, v in series["matchwire_outbox_pending"] if labels["actor"] == actor]
        books = [scraped["book1"], scraped["book2"]]
        assert sum(_total(s, "matchwire_fills_total", kind="book") for s in books) == 8
        assert _total(scraped["book1"], "matchwire_orders_total", actor="book/AAPL") == 3 + 1 + 1
        assert sum(_total(s, "matchwire_rejects_total", reason="engine") for s in books) == 1
        # fsync = "always": every batch the books handled was committed with an fsync
        assert sum(_total(s, "matchwire_journal_fsyncs_total") for s in books) >= 4
        assert sum(_total(s, "matchwire_journal_records_total") for s in books) == 17
        gateway, risk, md = scraped["gateway"], scraped["risk"], scraped["md"]
        assert _total(gateway, "matchwire_orders_total", kind="gateway") == 12 + 4 + 3
        assert _total(gateway, "matchwire_rejects_total", reason="unknown_order") == 1
        assert _total(risk, "matchwire_rejects_total", reason="unknown_symbol") == 1
        assert _total(risk, "matchwire_orders_total", kind="risk") == 12 + 4 + 2
        assert _total(md, "matchwire_md_trades_total") == 8
        assert {labels["symbol"] for labels, _ in md["matchwire_md_last_price"]} == set(symbols)
        for name in ("book1", "book2", "risk", "gateway", "md"):
            series = scraped[name]
            handled = _total(series, "matchwire_stage_batch_seconds_count")
            assert handled > 0, name
            assert 0 < _total(series, "matchwire_stage_batch_seconds_sum") < handled  # each batch under 1 s
            assert _total(series, "matchwire_batch_records_count") == handled
            assert _total(series, "matchwire_inbound_records_total") > 0 or name == "gateway"
        # Ages on arrival (one host): orders reach the books, reports reach risk, the gateway and market data,
        # each batch younger than the test.
        for name, metric in (("book1", "order"), ("risk", "order"), ("risk", "report"), ("gateway", "report"),
                             ("md", "report")):
            ages = _total(scraped[name], f"matchwire_stage_{metric}_age_seconds_count")
            assert ages > 0, (name, metric)
            assert 0 < _total(scraped[name], f"matchwire_stage_{metric}_age_seconds_sum") < 60 * ages, (name, metric)
        # a book batch's records: at least one per batch, at most what the books received
        for series in books:
            assert _total(series, "matchwire_batch_records_sum") == _total(series, "matchwire_orders_total")
        assert cluster.alive() == dict.fromkeys(urls, True)
    finally:
        cluster.stop()
    for url in urls.values():
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=2)
