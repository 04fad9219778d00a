"""The in-process pipeline bench drives the real actors end to end: every command is answered, every role costs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from actors.bench_pipeline import measure


def test_every_command_reaches_its_answer_through_the_real_actors():
    result = measure(orders=3000, batch=16)
    assert result["answered"] == 3000
    assert set(result["us_per_order"]) == {"gateway", "risk", "book", "md"}
    assert all(value > 0 for value in result["us_per_order"].values())
    # The load cancels orders its IOC takers may have filled: those cancels are refused, and nothing else is.
    assert set(result["client_rejects"]) <= {"rejected_unknown_order"}


def test_the_command_prints_figures_and_writes_json(tmp_path):
    out = tmp_path / "pipeline.json"
    done = subprocess.run([sys.executable, "-m", "actors.bench_pipeline", "--orders", "2000", "--rounds", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.splitlines()[-1]
    assert re.search(r"total_us_per_order=[\d.]+ gateway_us_per_order=[\d.]+ risk_us_per_order=[\d.]+ "
                     r"book_us_per_order=[\d.]+ md_us_per_order=[\d.]+ one_core_orders_per_s=\d+ answered=2000/2000",
                     line), line
    data = json.loads(out.read_text())
    assert data["best"]["answered"] == 2000 and "bench_pipeline" in data["command"]


def test_bad_arguments_are_refused():
    done = subprocess.run([sys.executable, "-m", "actors.bench_pipeline", "--orders", "0"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--orders" in done.stderr
