"""The benchmark report: the quick report runs for real (CI keeps it from rotting) and validates against its schema."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from actors.report import ROOT, reference_rate

SCHEMA = json.loads((ROOT / "bench" / "schema.json").read_text())


def _validate(report: dict) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(report), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message[:300]}" for e in errors[:10])


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "actors.report", "--quick", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text()), elapsed


def test_quick_report_validates_and_carries_its_provenance(quick_report):
    out, report, elapsed = quick_report
    _validate(report)
    assert report["quick"] is True
    assert elapsed < 120, f"the quick report took {elapsed:.0f} s (budget: under 2 minutes)"
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"]
    assert set(report["sections"]) == {"engine", "pipeline", "cluster", "itch", "gateware"}
    for name, section in report["sections"].items():
        if section["status"] != "ok":
            assert section["reason"], name  # never a silent gap
    # Every figure exists, is a PNG, and says what made it, where and when.
    assert report["figures"]
    for figure in report["figures"]:
        data = (out / figure["file"]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert figure["command"] in "\n".join(report["sections"][figure["section"]]["commands"])
        assert str(machine["cores"]) in figure["machine"] and machine["cpu_model"] in figure["machine"]
    markdown = (out / "report.md").read_text()
    for figure in report["figures"]:
        assert f"]({figure['file']})" in markdown
    for heading in ("## Engine", "## Per-record CPU", "## Cluster", "## ITCH decoding", "## Gateware"):
        assert heading in markdown


def test_quick_report_measures_engine_and_cluster(quick_report):
    out, report, _ = quick_report
    engine = report["sections"]["engine"]
    assert engine["status"] == "ok"
    assert {w["workload"] for w in engine["results"]["workloads"]} == {"mixed", "crossing"}
    assert "engine.png" in {f["file"] for f in report["figures"]}
    pipeline = report["sections"]["pipeline"]
    assert pipeline["status"] == "ok" and "actors.bench_pipeline" in pipeline["commands"][0]
    assert pipeline["results"]["answered"] == pipeline["results"]["orders"] == 5000
    roles = pipeline["results"]["us_per_order"]
    assert set(roles) == {"gateway", "risk", "book", "md"} and all(v > 0 for v in roles.values())
    assert abs(sum(roles.values()) - pipeline["results"]["total_us_per_order"]) < 0.01
    ouch = pipeline["results"]["ouch"]  # the same orders as OUCH messages: the gateway's translation costs
    assert "--client ouch" in pipeline["commands"][1] and ouch["answered"] == ouch["orders"] == 5000
    assert set(ouch["us_per_order"]) == set(roles) and all(v > 0 for v in ouch["us_per_order"].values())
    assert "| OUCH 5.0 | 5000 |" in (out / "report.md").read_text()
    cluster = report["sections"]["cluster"]
    assert cluster["status"] == "ok"
    runs = cluster["results"]["runs"]
    # 1 and 2 book nodes, for each durability setting, one short rate each
    assert sorted((r["fsync"], r["book_nodes"]) for r in runs) == sorted(
        (p, n) for p in ("off", "none", "batch", "always") for n in (1, 2))
    for run in runs:
        assert run["answered"] == run["sent"] > 0
        values = [v for _, v in run["percentiles_us"]]
        assert values == sorted(values) and values[0] > 0  # HdrHistogram percentiles rise
        assert run["hdr"].startswith("HISTF")
        # What the group commit costs, per node: counted where actors fsync, absent where they do not.
        fsyncs = run["fsyncs_per_order"]
        if run["fsync"] in ("batch", "always"):
            assert set(fsyncs) == {"gateway", "risk", "md"} | {f"book{n + 1}" for n in range(run["book_nodes"])}
            assert fsyncs["gateway"] > 0 and fsyncs["risk"] > 0, fsyncs
        else:
            assert fsyncs == {}
    assert {"cluster_throughput.png", "cluster_latency.png", "cluster_percentiles.png"} <= {
        f["file"] for f in report["figures"]}
    itch = report["sections"]["itch"]
    assert itch["status"] in ("ok", "not_available")
    if itch["status"] == "ok":
        assert itch["results"]["decode_msgs_per_s"] > 0 and (out / "itch.png").exists()
    # --quick never synthesises or simulates: whatever gateware figures exist were read, not made.
    gateware = report["sections"]["gateware"]
    assert not any("hdl.report" in c and "via make" not in c for c in gateware["commands"])


def test_a_missing_gateware_producer_is_not_available_never_faked(tmp_path):
    result = subprocess.run([sys.executable, "-m", "actors.report", "--only", "gateware", "--out", str(tmp_path),
                             "--matcher-component", "hdl.no_such_block:Matcher",
                             "--decoder-component", "hdl.no_such_decoder:Decoder",
                             "--matcher-target", "no-such-matcher", "--decoder-target", "no-such-decoder"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    _validate(report)
    gateware = report["sections"]["gateware"]
    assert gateware["status"] == "not_available"
    for block in gateware["results"]["components"]:
        assert block["status"] == "not_available"
        assert block["fmax_mhz"] is None and block["cycles"] == [] and block["msgs_per_s"] == []
        assert any("cannot be imported" in r for r in block["reasons"]), block["reasons"]
        assert any(f"no `make {block['bench_target']}` target" in r for r in block["reasons"]), block["reasons"]
    assert report["figures"] == []
    assert not list(Path(tmp_path).glob("*.png"))
    assert "**not available**" in (tmp_path / "report.md").read_text()


def test_reference_rate_is_the_highest_rate_every_series_sustained():
    def run(policy: str, nodes: int, rate: float, sustained: bool) -> dict:
        return {"client": "zmq", "fsync": policy, "book_nodes": nodes, "offered": rate, "sustained": sustained}

    runs = [run("off", 1, 1000, True), run("off", 1, 5000, True), run("always", 1, 1000, True),
            run("always", 1, 5000, False)]
    assert reference_rate(runs) == 1000
    assert reference_rate([run("off", 1, 5000, False), run("off", 1, 9000, False)]) == 5000
    assert reference_rate([]) is None


LINK_REPORT = ROOT / "build" / "report" / "hdl_link_FrameDecoder" / "report.json"


def test_an_existing_synthesis_report_gives_fmax_with_its_source(tmp_path):
    if not LINK_REPORT.exists():
        # Synthesise it (YoWASP from PyPI is installed by make setup): the test needs a real report.
        made = subprocess.run([sys.executable, "-m", "hdl.report", "hdl.link:FrameDecoder"], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert made.returncode == 0 and LINK_REPORT.exists(), made.stderr[-2000:]
    # A real synthesis result (of the link decoder, standing in for a block whose report does not exist yet):
    # Fmax is read with where and when it came from; without cycles/msg there is no msgs/s.
    result = subprocess.run([sys.executable, "-m", "actors.report", "--quick", "--only", "gateware", "--out",
                             str(tmp_path), "--matcher-component", "hdl.link:FrameDecoder",
                             "--matcher-target", "no-such-matcher"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    _validate(report)
    matcher = report["sections"]["gateware"]["results"]["components"][0]
    expected = json.loads(LINK_REPORT.read_text())["fmax_mhz"]
    assert matcher["status"] == "partial" and matcher["fmax_mhz"] == expected
    assert matcher["fmax_source"].startswith("build/report/hdl_link_FrameDecoder/report.json (")
    assert matcher["commands"][0].endswith("-m hdl.report hdl.link:FrameDecoder   # via make hdl-report")
    assert matcher["msgs_per_s"] == [] and any("no-such-matcher" in r for r in matcher["reasons"])
    assert report["sections"]["gateware"]["status"] == "partial"
