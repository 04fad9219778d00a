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


def test_ouch_mode_answers_every_message_through_the_gateways_translator_and_store():
    result = measure(orders=3000, batch=16, client="ouch")
    assert result["client"] == "ouch"
    # Counted from the gateway's SoupBinTCP store: the first Accepted/Rejected per order, Canceled per cancel.
    assert result["answered"] == 3000
    assert all(value > 0 for value in result["us_per_order"].values())
    assert set(result["client_rejects"]) <= {"rejected_unknown_order"}


def test_the_ouch_plan_is_the_bench_mix_with_increasing_refs_and_cancels_of_resting_orders():
    from actors.bench_cluster import ouch_plan
    from exchange import ouch

    plan = ouch_plan(2000, seed=7, first_ref=40)
    assert plan == ouch_plan(2000, seed=7, first_ref=40)  # seeded: every run offers the same messages
    resting: set[int] = set()
    refs = []
    kinds = {"new": 0, "ioc": 0, "cancel": 0}
    for key, payload in plan:
        message = ouch.decode_inbound(payload)
        if message["type"] == "O":
            assert key == ("O", message["user_ref_num"])
            refs.append(message["user_ref_num"])
            if message["time_in_force"] == "3":
                kinds["ioc"] += 1
            else:
                kinds["new"] += 1
                resting.add(message["user_ref_num"])
        else:
            assert message["type"] == "X" and key == ("X", message["user_ref_num"])
            assert message["user_ref_num"] in resting  # only orders entered resting, each once
            resting.discard(message["user_ref_num"])
            kinds["cancel"] += 1
    assert refs == list(range(40, 40 + len(refs)))
    assert 0.4 < kinds["new"] / 2000 < 0.5 and 0.4 < kinds["cancel"] / 2000 < 0.5 and 0.07 < kinds["ioc"] / 2000 < 0.13


def test_bad_client_is_refused():
    done = subprocess.run([sys.executable, "-m", "actors.bench_pipeline", "--client", "fix"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--client" in done.stderr
