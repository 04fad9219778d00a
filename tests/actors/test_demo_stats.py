"""The demo traders' statistics: answer latencies in a bounded HdrHistogram, merged across traders."""

from __future__ import annotations

from actors.cluster import _percentiles
from actors.demo import TraderStats


def test_latencies_merge_into_percentiles_in_microseconds():
    maker, taker = TraderStats(), TraderStats()
    for i in range(1, 901):
        maker.record_latency(i * 1_000)  # 1..900 us
    for i in range(901, 1001):
        taker.record_latency(i * 1_000)  # 901..1000 us
    taker.record_latency(0)  # a clock that did not move counts as 1 us, not as an error
    taker.record_latency(10 * 3_600 * 10**9)  # ten hours: held at the histogram's top (1 h)
    total = TraderStats()
    total.merge(maker)
    total.merge(taker)
    assert total.latency_us.get_total_count() == 1002
    pct = _percentiles(total.latency_us)
    assert abs(pct["p50"] - 501) <= 1 and abs(pct["p90"] - 901) <= 1 and abs(pct["p99"] - 991) <= 1, pct
    assert abs(pct["max"] - 3_600_000_000) / 3_600_000_000 < 1e-3, pct
    assert _percentiles(TraderStats().latency_us) == {}

