"""``make bench`` / ``matchwire bench``: every benchmark, one report — JSON, Markdown and PNG plots.

    python -m actors.report [--quick] [--out bench] [--only engine,pipeline,cluster,itch,gateware]

Each section runs the project's own benchmark command in a subprocess (the very command a reader
can run again, recorded with the result) and reads its machine-readable output:

* ``engine``   ``python -m exchange.bench --json``: engine ns/msg per workload beside the bare loop;
* ``pipeline`` ``python -m actors.bench_pipeline --json`` (binary API, then ``--client ouch``): CPU per order of
  each role's per-record work, the real actors in one thread (no hand-offs): what bounds the cluster's ceiling on
  a small machine;
* ``cluster``  ``python -m actors.bench_cluster --json``: open-loop throughput and HdrHistogram
  latency (from each order's scheduled send time: coordinated omission avoided) for 1 and 2 book
  nodes and each durability setting (no journal; fsync none, batch, always), ZeroMQ clients;
  the full report adds OUCH clients with the default fsync policy;
* ``itch``     ``python -m exchange.itch_tools bench SAMPLE``: ITCH decode, book and feed handler;
* ``gateware`` Fmax from the synthesis report (``make hdl-report`` / ``python -m hdl.report``)
  and cycles per message from ``make bench-matcher`` / ``make bench-decoder``, giving msgs/s.

A producer that does not exist yet (no sample file, no make target, no component) makes its
section or component ``not_available`` with the reason; a producer that fails makes it
``failed`` with the error. Nothing is ever estimated in its place. Every figure carries the
command that produced it, the machine (cores, CPU model) and the date. ``bench/schema.json``
is the JSON schema of ``report.json``.

``--quick`` (``make bench-quick``, and CI through tests/actors/test_report.py): small counts and
one short rate per benchmark, no synthesis or gateware simulation (their existing results are
still read), under 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_VERSION = 1
SECTIONS = ("engine", "pipeline", "cluster", "itch", "gateware")
DEFAULT_ITCH_SAMPLE = ROOT.parent / "shared" / "data" / "itch" / "sample-20101224.ITCH50.gz"
FSYNC_POLICIES = ("off", "none", "batch", "always")
FULL_RATES = "2000,5000,10000,20000"
QUICK_RATE = "1000"


# -- machine and commands --------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Cores, CPU model (/proc/cpuinfo), memory, OS, Python, load and the checkout's commit."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, check=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cores": os.cpu_count() or 1, "cpu_model": model, "memory_mb": memory_mb,
            "platform": platform.platform(), "python": sys.version.split()[0],
            "load_average_start": [round(x, 2) for x in os.getloadavg()], "load_average_end": None,
            "git_commit": commit, "git_dirty": dirty}


def machine_line(machine: dict[str, Any]) -> str:
    load = machine.get("load_average_start") or [0.0]
    return f"{machine['cores']} cores, {machine['cpu_model']}, load {load[0]:.1f} at start"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _display(argv: list[str]) -> str:
    """A command as a reader would type it from the repository root."""
    shown = []
    for arg in argv:
        path = Path(arg)
        if path.is_absolute():
            try:
                arg = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else arg
            except ValueError:
                pass
        shown.append(arg)
    return shlex.join(shown)


def _python() -> str:
    return sys.executable


@dataclass
class Run:
    """What one producer command did."""

    argv: list[str]
    returncode: int | None
    stdout: str
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.error


@dataclass
class Context:
    """Options and shared state of one report run."""

    out: Path
    quick: bool
    machine: dict[str, Any]
    progress: Progress
    console: Console
    itch_sample: Path
    cluster_rates: str
    cluster_seconds: float
    matcher_component: str | None
    decoder_component: str | None
    matcher_target: str
    decoder_target: str
    figures: list[dict] = field(default_factory=list)

    @property
    def raw(self) -> Path:
        return self.out / "raw"


def run_producer(ctx: Context, argv: list[str], task: Any, advance_on: str | None, timeout: float,
                 log_name: str, env: dict[str, str] | None = None) -> Run:
    """Run a benchmark command, streaming its output into the log and the progress bar.

    ``advance_on``: a regular expression; each output line matching it advances ``task`` by one.
    A command that outlives ``timeout`` is killed (with its process group: cluster nodes too).
    """
    started = time.monotonic()
    log_path = ctx.raw / log_name
    lines: list[str] = []
    pattern = re.compile(advance_on) if advance_on else None
    try:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1, env={**os.environ, **(env or {})}, start_new_session=True)
    except OSError as exc:
        return Run(argv, None, "", 0.0, f"cannot start: {exc}")
    error = ""
    with open(log_path, "w") as log:
        log.write(f"$ {_display(argv)}\n")
        assert process.stdout is not None
        deadline = started + timeout
        for line in process.stdout:
            log.write(line)
            log.flush()
            lines.append(line.rstrip("\n"))
            if pattern is not None and pattern.search(line):
                ctx.progress.advance(task)
            if time.monotonic() > deadline:
                error = f"timed out after {timeout:.0f} s"
                break
        if error:
            os.killpg(process.pid, 9)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            error = error or "did not exit"
    seconds = time.monotonic() - started
    return Run(argv, process.returncode, "\n".join(lines), seconds, error)


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _fields(line: str) -> dict[str, str]:
    """``key=value`` tokens of one output line."""
    return dict(token.split("=", 1) for token in line.split() if "=" in token)


def _section(status: str, reason: str = "", commands: list[str] | None = None, date: str = "", seconds: float = 0.0,
             results: dict | None = None, log: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": status, "commands": commands or [], "date": date or _now(),
                           "seconds": round(seconds, 1), "results": results}
    if reason:
        out["reason"] = reason
    if log:
        out["log"] = log
    return out


def _failed(run: Run, what: str) -> str:
    cause = run.error or f"exit code {run.returncode}"
    return f"{what} failed ({cause}): {_tail(run.stdout, 6)}"


# -- sections --------------------------------------------------------------------------------------


def engine_section(ctx: Context) -> dict[str, Any]:
    """The reference engine against a bare matching loop, per workload."""
    date = _now()
    out_json = ctx.raw / "engine.json"
    argv = [_python(), "-m", "exchange.bench", "--json", str(out_json), "--out", str(ctx.raw / "engine-scripts")]
    if ctx.quick:
        argv.append("--quick")
    task = ctx.progress.add_task("engine vs bare loop", total=2)
    run = run_producer(ctx, argv, task, r"^workload=", 300 if ctx.quick else 1200, "engine.log")
    ctx.progress.update(task, completed=2)
    command = _display(argv)
    if not run.ok or not out_json.exists():
        return _section("failed", _failed(run, "exchange.bench"), [command], date, run.seconds, log="raw/engine.log")
    data = json.loads(out_json.read_text())
    results = {"count": data["count"], "min_seconds": data["min_seconds"], "rounds": data["rounds"],
               "workloads": [{k: w[k] for k in ("workload", "commands", "engine_ns_per_msg", "bare_ns_per_msg",
                                                 "ratio", "engine_msgs_per_s", "events_per_msg")}
                             for w in data["workloads"]]}
    return _section("ok", "", [command], date, run.seconds, results, log="raw/engine.log")


def pipeline_section(ctx: Context) -> dict[str, Any]:
    """Each role's per-record CPU per order, the real actors in one thread (what bounds the cluster's ceiling): the
    binary API's orders, then the same orders as OUCH 5.0 messages."""
    date = _now()
    started = time.monotonic()
    commands: list[str] = []
    results: dict[str, Any] = {}
    task = ctx.progress.add_task("per-record CPU (pipeline)", total=2)
    for client in ("zmq", "ouch"):
        out_json = ctx.raw / ("pipeline.json" if client == "zmq" else "pipeline_ouch.json")
        log_name = "pipeline.log" if client == "zmq" else "pipeline_ouch.log"
        argv = [_python(), "-m", "actors.bench_pipeline", "--json", str(out_json)]
        if client == "ouch":
            argv += ["--client", "ouch"]
        if ctx.quick:
            argv += ["--orders", "5000", "--rounds", "1"]
        run = run_producer(ctx, argv, task, r"^(client=ouch )?orders=", 300 if ctx.quick else 900, log_name)
        commands.append(_display(argv))
        if not run.ok or not out_json.exists():
            ctx.progress.update(task, completed=2)
            return _section("failed", _failed(run, "actors.bench_pipeline"), commands, date,
                            time.monotonic() - started, log=f"raw/{log_name}")
        data = json.loads(out_json.read_text())
        best = data["best"]
        figures = {"orders": best["orders"], "batch": best["batch"], "rounds": data["rounds"],
                   "answered": best["answered"], "total_us_per_order": best["total_us_per_order"],
                   "us_per_order": best["us_per_order"], "one_core_orders_per_s": 1e6 / best["total_us_per_order"]}
        if client == "zmq":
            results.update(figures)
        else:
            results["ouch"] = figures
    ctx.progress.update(task, completed=2)
    return _section("ok", "", commands, date, time.monotonic() - started, results, log="raw/pipeline.log")


def cluster_section(ctx: Context) -> dict[str, Any]:
    """Open-loop cluster runs: 1 and 2 book nodes x durability settings (ZeroMQ); OUCH in the full report."""
    date = _now()
    rates = ctx.cluster_rates
    invocations = [("zmq", ",".join(FSYNC_POLICIES))]
    if not ctx.quick:
        invocations.append(("ouch", "batch"))  # the default policy, through the gateway's OUCH listener
    runs: list[dict] = []
    commands: list[str] = []
    max_sustained: list[dict] = []
    seconds = 0.0
    for index, (client, policies) in enumerate(invocations):
        out_json = ctx.raw / f"cluster-{client}.json"
        argv = [_python(), "-m", "actors.bench_cluster", "--fsync", policies, "--book-nodes", "1,2", "--client", client,
                "--rates", rates, "--seconds", f"{ctx.cluster_seconds:g}", "--json", str(out_json)]
        total = len(policies.split(",")) * 2 * len(rates.split(","))
        task = ctx.progress.add_task(f"cluster ({client}, fsync {policies})", total=total)
        run = run_producer(ctx, argv, task, r"book_nodes=\d+ client=\S+ offered=", 600 if ctx.quick else 1800,
                           f"cluster-{client}.log")
        ctx.progress.update(task, completed=total)
        commands.append(_display(argv))
        seconds += run.seconds
        if not run.ok or not out_json.exists():
            if index == 0:
                return _section("failed", _failed(run, "actors.bench_cluster"), commands, date, seconds,
                                log=f"raw/cluster-{client}.log")
            continue  # the OUCH runs are extra: their failure is in the log, the rest stands
        data = json.loads(out_json.read_text())
        for entry in data["runs"]:
            entry = dict(entry)
            latency = entry.pop("latency", {}) or {}
            entry["percentiles_us"] = latency.get("percentiles", [])
            entry["hdr"] = latency.get("hdr", "")
            runs.append(entry)
        max_sustained += data.get("max_sustained", [])
    results = {"rates": [float(r) for r in rates.split(",")], "seconds_per_rate": ctx.cluster_seconds,
               "runs": runs, "max_sustained": max_sustained, "reference_rate": reference_rate(runs)}
    return _section("ok", "", commands, date, seconds, results, log="raw/cluster-zmq.log")


def reference_rate(runs: list[dict]) -> float | None:
    """The highest offered rate every ZeroMQ series sustained (else the lowest): where curves compare."""
    zmq_runs = [r for r in runs if r.get("client") == "zmq"]
    rates = sorted({r["offered"] for r in zmq_runs})
    if not rates:
        return None
    series = {(r["fsync"], r["book_nodes"]) for r in zmq_runs}
    good = [rate for rate in rates
            if all(any(r["offered"] == rate and r.get("sustained") for r in zmq_runs
                       if (r["fsync"], r["book_nodes"]) == key) for key in series)]
    return good[-1] if good else rates[0]


def itch_section(ctx: Context) -> dict[str, Any]:
    """ITCH 5.0 decoding, book building and the feed handler, on the shared sample file."""
    date = _now()
    sample = ctx.itch_sample
    argv = [_python(), "-m", "exchange.itch_tools", "bench", str(sample)]
    if not sample.exists():
        return _section("not_available", f"ITCH sample file {sample} not found (set ITCH_SAMPLE or --itch-sample)",
                        [_display(argv)], date)
    task = ctx.progress.add_task("ITCH decode", total=3)
    run = run_producer(ctx, argv, task, r"^(itch_decode|itch_book|feed_handler) ", 300, "itch.log")
    ctx.progress.update(task, completed=3)
    figures: dict[str, dict[str, str]] = {}
    for line in run.stdout.splitlines():
        name = line.split(" ", 1)[0]
        if name in ("itch_decode", "itch_book", "feed_handler"):
            figures[name] = _fields(line)
    if not run.ok or len(figures) != 3:
        return _section("failed", _failed(run, "exchange.itch_tools bench"), [_display(argv)], date, run.seconds,
                        log="raw/itch.log")
    results = {"sample": str(sample), "sample_bytes": sample.stat().st_size,
               "decode_msgs_per_s": float(figures["itch_decode"]["msgs_per_s"]),
               "decode_mb_per_s": float(figures["itch_decode"]["mb_per_s"]),
               "book_msgs_per_s": float(figures["itch_book"]["msgs_per_s"]),
               "feed_msgs_per_s": float(figures["feed_handler"]["msgs_per_s"]),
               "feed_packets_per_s": float(figures["feed_handler"]["packets_per_s"])}
    return _section("ok", "", [_display(argv)], date, run.seconds, results, log="raw/itch.log")


def make_variable(name: str) -> str | None:
    """The value of a Makefile variable (Makefile + mk/*.mk), or None without make."""
    if shutil.which("make") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".mk", delete=False) as probe:
        probe.write(f"matchwire-print-variable:\n\t@echo $({name})\n")
    try:
        result = subprocess.run(["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", probe.name,
                                 "matchwire-print-variable"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        os.unlink(probe.name)
    return result.stdout.strip() if result.returncode == 0 else None


def make_target_exists(target: str) -> bool:
    """True when ``make TARGET`` has a rule (asked with ``make -n``, which runs nothing)."""
    if shutil.which("make") is None:
        return False
    try:
        result = subprocess.run(["make", "-n", "-s", "--no-print-directory", target], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _pick_component(components: list[str], keys: tuple[str, ...]) -> str | None:
    for spec in components:
        bare = spec.strip("'\"")
        if any(key in bare for key in keys):
            return bare
    return None


def _report_slug(spec: str) -> str:
    # hdl/report.py names its default output directory this way.
    return "".join(c if c.isalnum() else "_" for c in spec).strip("_")


def _synthesis_report(spec: str) -> tuple[dict | None, Path]:
    path = ROOT / "build" / "report" / _report_slug(spec) / "report.json"
    if not path.exists():
        return None, path
    try:
        return json.loads(path.read_text()), path
    except (OSError, ValueError):
        return None, path


def _importable(spec: str) -> str | None:
    """Why the component cannot be built (None when its module and factory exist)."""
    module, _, factory = spec.partition("(")[0].partition(":")
    probe = (f"import importlib, sys; m = importlib.import_module({module!r}); "
             f"sys.exit(0 if hasattr(m, {factory!r}) else 3)")
    result = subprocess.run([_python(), "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if result.returncode == 0:
        return None
    if result.returncode == 3:
        return f"{module} has no {factory} yet"
    return f"{module} cannot be imported yet ({_tail(result.stderr, 1)})"


def gateware_component(ctx: Context, name: str, spec: str | None, target: str, issue: str, task: Any) -> dict:
    """Fmax (synthesis report), cycles/msg (``make TARGET``) and the msgs/s they give, for one block."""
    out: dict[str, Any] = {"name": name, "component": spec, "bench_target": target, "fmax_mhz": None,
                           "clock_mhz": None, "device": None, "fmax_source": None, "cycles": [], "msgs_per_s": [],
                           "commands": [], "reasons": []}
    # Fmax.
    if spec is None:
        out["reasons"].append(f"no {name} component in HDL_REPORT_COMPONENTS (mk/*.mk) yet ({issue})")
    else:
        report, path = _synthesis_report(spec)
        synth_argv = [_python(), "-m", "hdl.report", spec]
        if report is None and not ctx.quick:
            why = _importable(spec)
            if why is not None:
                out["reasons"].append(f"Fmax: {why} ({issue})")
            else:
                run = run_producer(ctx, synth_argv, task, None, 1800, f"hdl-report-{name}.log")
                out["commands"].append(_display(synth_argv))
                report, path = _synthesis_report(spec)
                if report is None:
                    out["reasons"].append(_failed(run, "synthesis"))
        elif report is None:
            out["reasons"].append(f"Fmax: no synthesis report at {path.relative_to(ROOT)} "
                                  "(--quick never synthesises: run make hdl-report or make bench)")
        if report is not None:
            out["fmax_mhz"] = report.get("fmax_mhz")
            out["clock_mhz"] = report.get("clock_mhz")
            out["device"] = f"{report.get('device')}-{report.get('speed')} {report.get('package')}"
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
            out["fmax_source"] = f"{path.relative_to(ROOT)} ({stamp})"
            if not out["commands"]:
                out["commands"].append(_display(synth_argv) + "   # via make hdl-report")
            if out["fmax_mhz"] is None:
                out["reasons"].append("Fmax: the synthesis report has none (nextpnr found no clock path)")
    ctx.progress.advance(task)
    # Cycles per message.
    if not make_target_exists(target):
        out["reasons"].append(f"cycles/msg: no `make {target}` target yet ({issue})")
    elif ctx.quick:
        out["reasons"].append(f"cycles/msg: `make {target}` is not run by --quick (make bench runs it)")
    else:
        argv = ["make", "-s", "--no-print-directory", target]
        run = run_producer(ctx, argv, task, None, 1800, f"{target}.log")
        out["commands"].append(_display(argv))
        for line in run.stdout.splitlines():
            fields = _fields(line)
            if "cycles_per_msg" in fields:
                try:
                    out["cycles"].append({"workload": fields.get("workload", "all"),
                                          "cycles_per_msg": float(fields["cycles_per_msg"])})
                except ValueError:
                    continue
        if not run.ok:
            out["reasons"].append(_failed(run, f"make {target}"))
        elif not out["cycles"]:
            out["reasons"].append(f"cycles/msg: `make {target}` printed no cycles_per_msg=N")
    ctx.progress.advance(task)
    if out["fmax_mhz"] and out["cycles"]:
        out["msgs_per_s"] = [{"workload": c["workload"], "msgs_per_s": out["fmax_mhz"] * 1e6 / c["cycles_per_msg"]}
                             for c in out["cycles"] if c["cycles_per_msg"] > 0]
    out["status"] = "ok" if out["msgs_per_s"] and not out["reasons"] else (
        "partial" if out["fmax_mhz"] or out["cycles"] else "not_available")
    if any("failed" in r for r in out["reasons"]):
        out["status"] = "failed" if out["status"] == "not_available" else out["status"]
    return out


def gateware_section(ctx: Context) -> dict[str, Any]:
    """The matcher and the ITCH decoder in gateware: Fmax, cycles/msg, msgs/s."""
    date = _now()
    started = time.monotonic()
    task = ctx.progress.add_task("gateware figures", total=4)
    components = (make_variable("HDL_REPORT_COMPONENTS") or "").split()
    matcher = ctx.matcher_component or _pick_component(components, ("hdl.matcher",))
    decoder = ctx.decoder_component or _pick_component(components, ("hdl.itch", "itch_decoder", "hdl.decoder"))
    blocks = [gateware_component(ctx, "matcher", matcher, ctx.matcher_target, "issue #4", task),
              gateware_component(ctx, "decoder", decoder, ctx.decoder_target, "issue #9", task)]
    commands = [c for b in blocks for c in b["commands"]]
    statuses = {b["status"] for b in blocks}
    if statuses == {"ok"}:
        status, reason = "ok", ""
    elif "failed" in statuses:  # a producer that exists and breaks is news: make bench exits non-zero
        status = "failed"
        reason = "; ".join(f"{b['name']}: {', '.join(b['reasons'])}" for b in blocks if b["reasons"])
    elif statuses <= {"not_available"}:
        status = "not_available"
        reason = "; ".join(f"{b['name']}: {', '.join(b['reasons'])}" for b in blocks)
    else:
        status = "partial"
        reason = "; ".join(f"{b['name']}: {', '.join(b['reasons'])}" for b in blocks if b["reasons"])
    return _section(status, reason, commands, date, time.monotonic() - started, {"components": blocks})


# -- plots ---------------------------------------------------------------------------------------


def _footer_lines(command: str, machine: dict, date: str) -> list[str]:
    lines = []
    for number, line in enumerate(command.splitlines()):
        lines += textwrap.wrap(line, 150, initial_indent="command: " if number == 0 else "   then: ",
                               subsequent_indent="         ")
    return [*lines, f"machine: {machine_line(machine)}   date: {date}"]


def _save(ctx: Context, fig: Any, name: str, title: str, section: str, command: str, date: str) -> None:
    lines = _footer_lines(command, ctx.machine, date)
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(bottom=0.12 + 0.13 * len(lines) / height)
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=6.5, family="monospace", va="bottom", ha="left",
             color="#444444")
    fig.savefig(ctx.out / name, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    ctx.figures.append({"file": name, "title": title, "section": section, "command": command,
                        "machine": machine_line(ctx.machine), "date": date})


_POLICY_COLOURS = {"off": "#777777", "none": "#1f77b4", "batch": "#2ca02c", "always": "#d62728"}


def plot_all(ctx: Context, sections: dict[str, dict]) -> None:
    """Every figure whose section has results (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engine = sections.get("engine", {})
    if engine.get("status") == "ok":
        workloads = engine["results"]["workloads"]
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        xs = range(len(workloads))
        engine_bars = ax.bar([x - 0.2 for x in xs], [w["engine_ns_per_msg"] for w in workloads], 0.4,
                             label="reference engine")
        ax.bar([x + 0.2 for x in xs], [w["bare_ns_per_msg"] for w in workloads], 0.4, label="bare matching loop")
        for bar, w in zip(engine_bars, workloads, strict=True):
            ax.annotate(f"x{w['ratio']:.2f}", (bar.get_x() + bar.get_width(), bar.get_height()), ha="center",
                        va="bottom", fontsize=9)
        ax.set_xticks(list(xs), [w["workload"] for w in workloads])
        ax.set_ylabel("ns per message (lower is better)")
        ax.set_title("Reference engine vs bare loop, per workload")
        ax.legend()
        _save(ctx, fig, "engine.png", "Engine ns/msg beside the bare loop", "engine", engine["commands"][0],
              engine["date"])

    cluster = sections.get("cluster", {})
    if cluster.get("status") == "ok" and cluster["results"]["runs"]:
        _plot_cluster(ctx, plt, cluster)

    itch = sections.get("itch", {})
    if itch.get("status") == "ok":
        r = itch["results"]
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
        names = ["decode", "L3 book\n(decoded messages)", "feed handler\n(MoldUDP64 + decode + book)"]
        values = [r["decode_msgs_per_s"], r["book_msgs_per_s"], r["feed_msgs_per_s"]]
        bars = ax.bar(names, values, color=["#1f77b4", "#2ca02c", "#ff7f0e"])
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(f"{value:,.0f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
        ax.set_ylabel("messages per second (software)")
        ax.set_title(f"ITCH 5.0 decoding ({Path(r['sample']).name})")
        _save(ctx, fig, "itch.png", "ITCH decode throughput", "itch", itch["commands"][0], itch["date"])

    gateware = sections.get("gateware", {})
    blocks = [b for b in (gateware.get("results") or {}).get("components", []) if b["msgs_per_s"]]
    if blocks:
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
        labels, values = [], []
        for block in blocks:
            for entry in block["msgs_per_s"]:
                cycles = next(c["cycles_per_msg"] for c in block["cycles"] if c["workload"] == entry["workload"])
                labels.append(f"{block['name']} {entry['workload']}\n{block['fmax_mhz']:.0f} MHz / {cycles:g} cyc")
                values.append(entry["msgs_per_s"])
        bars = ax.bar(labels, values)
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(f"{value / 1e6:.1f} M", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
        ax.set_ylabel("messages per second (Fmax / cycles per message)")
        ax.set_title("Gateware: matcher and ITCH decoder")
        _save(ctx, fig, "gateware.png", "Gateware msgs/s from Fmax and cycles/msg", "gateware",
              "\n".join(gateware["commands"]), gateware["date"])


def _series(runs: list[dict]) -> dict[tuple[str, str, int], list[dict]]:
    out: dict[tuple[str, str, int], list[dict]] = {}
    for run in runs:
        out.setdefault((run["client"], run["fsync"], run["book_nodes"]), []).append(run)
    for values in out.values():
        values.sort(key=lambda r: r["offered"])
    return out


def _label(client: str, policy: str, nodes: int) -> str:
    durability = "no journal" if policy == "off" else f"fsync {policy}"
    return f"{nodes} book node{'s' if nodes > 1 else ''}, {durability}{', OUCH' if client == 'ouch' else ''}"


def _style(client: str, policy: str, nodes: int) -> dict:
    style = {"color": _POLICY_COLOURS.get(policy, "black"), "linestyle": "-" if nodes == 1 else "--",
             "marker": "o" if nodes == 1 else "s"}
    if client != "zmq":
        style.update(marker="^" if nodes == 1 else "v", markerfacecolor="none", linewidth=2.2)
    return style


def _rate_axis(ax: Any, runs: list[dict]) -> None:
    """Offered rates on a log axis, labelled 2k, 5k, ... (plain numbers run into each other)."""
    rates = sorted({r["offered"] for r in runs})
    ax.set_xscale("log")
    ax.set_xticks(rates, [f"{r / 1000:g}k" if r >= 1000 else f"{r:g}" for r in rates])
    ax.minorticks_off()
    if len(rates) == 1:
        ax.set_xlim(rates[0] / 1.5, rates[0] * 1.5)


def _plot_cluster(ctx: Context, plt: Any, cluster: dict) -> None:
    runs = cluster["results"]["runs"]
    series = _series(runs)
    command = "\n".join(cluster["commands"])
    date = cluster["date"]

    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    top = max(r["offered"] for r in runs)
    ax.plot([0, top], [0, top], color="#bbbbbb", linewidth=1, label="achieved = offered")
    for key, values in sorted(series.items()):
        ax.plot([r["offered"] for r in values], [r["achieved"] for r in values], label=_label(*key), **_style(*key))
    rates = sorted({r["offered"] for r in runs})
    ax.set_xticks(rates, [f"{r / 1000:g}k" if r >= 1000 else f"{r:g}" for r in rates])
    ax.set_xlabel("offered commands/s (open loop)")
    ax.set_ylabel("achieved commands/s (answered, rejects included)")
    ax.set_title("Cluster throughput")
    ax.legend(fontsize=7)
    _save(ctx, fig, "cluster_throughput.png", "Cluster throughput, 1 and 2 book nodes, each fsync policy", "cluster",
          command, date)

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2), sharey=True)
    for ax, key_name, title in ((axes[0], "p50_us", "median"), (axes[1], "p99_us", "99th percentile")):
        for key, values in sorted(series.items()):
            points = [(r["offered"], r[key_name]) for r in values if r.get(key_name)]
            if points:
                ax.plot(*zip(*points, strict=True), label=_label(*key), **_style(*key))
        ax.set_yscale("log")
        _rate_axis(ax, runs)
        ax.set_xlabel("offered commands/s")
        ax.set_title(f"latency, {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("us from scheduled send to first answer")
    axes[1].legend(fontsize=7)
    _save(ctx, fig, "cluster_latency.png", "Cluster latency p50/p99 against offered rate", "cluster", command, date)

    rate = cluster["results"].get("reference_rate")
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2), sharey=True)
    import math

    for ax, nodes in zip(axes, (1, 2), strict=True):
        for key, values in sorted(series.items()):
            if key[2] != nodes:
                continue
            run = next((r for r in values if r["offered"] == rate), None)
            if run is None or not run.get("percentiles_us"):
                continue
            points = [(p, v) for p, v in run["percentiles_us"] if p < 100 and v > 0]
            if not points:
                continue
            xs = [1 / (1 - p / 100) for p, _ in points]
            ax.plot(xs, [v for _, v in points], label=_label(*key), **_style(*key))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [p for p in (50, 90, 99, 99.9, 99.99) if 1 / (1 - p / 100) <= 10 ** math.ceil(math.log10(
            max(1.0, max((1 / (1 - p2 / 100) for r in runs for p2, _ in r.get("percentiles_us", []) if p2 < 100),
                         default=1.0))))]
        ax.set_xticks([1 / (1 - p / 100) for p in ticks], [f"{p:g}%" for p in ticks])
        ax.set_xlabel("percentile")
        ax.set_title(f"{nodes} book node{'s' if nodes > 1 else ''} at {rate or 0:,.0f} commands/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("us from scheduled send (HdrHistogram)")
    _save(ctx, fig, "cluster_percentiles.png", "Cluster latency by percentile (HdrHistogram, open loop)", "cluster",
          command, date)


# -- Markdown ----------------------------------------------------------------------------------------


def _fmt(value: object, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _loads(values: list[float] | None) -> str:
    return " / ".join(f"{x:.2f}" for x in values or []) or "—"


def write_markdown(report: dict, path: Path) -> None:
    """report.md: the machine, each section's figures with their commands, and what is not available."""
    machine = report["machine"]
    lines = [f"# matchwire benchmark report{' (quick)' if report['quick'] else ''}", "",
             f"Generated {report['generated']} in {report['seconds']:.0f} s by `{report['command']}`.", "",
             "| machine | |", "|---|---|",
             f"| cores | {machine['cores']} |", f"| CPU | {machine['cpu_model']} |",
             f"| memory | {_fmt(machine['memory_mb'])} MB |", f"| OS | {machine['platform']} |",
             f"| Python | {machine['python']} |",
             f"| load average (1/5/15 min) at start | {_loads(machine['load_average_start'])} |",
             f"| load average at end | {_loads(machine['load_average_end'])} |",
             f"| commit | {machine['git_commit'] or '—'}{' (with local changes)' if machine['git_dirty'] else ''} |",
             ""]
    peak = max(machine["load_average_start"][0], (machine["load_average_end"] or [0.0])[0])
    if peak > machine["cores"]:
        lines += [f"> The machine was loaded by other work (1-minute load average up to {peak:.1f} on "
                  f"{machine['cores']} cores, this report's own work included): figures are below what an idle "
                  "machine gives, and vary from run to run.", ""]
    figures = {}
    for figure in report["figures"]:
        figures.setdefault(figure["section"], []).append(figure)
    titles = {"engine": "Engine", "pipeline": "Per-record CPU (the actors in one thread)", "cluster": "Cluster",
              "itch": "ITCH decoding", "gateware": "Gateware"}
    for name, section in report["sections"].items():
        lines += [f"## {titles.get(name, name)}", ""]
        status = section["status"]
        if status != "ok":
            lines += [f"**{status.replace('_', ' ')}**: {section.get('reason', '')}", ""]
        for command in section["commands"]:
            lines += ["```", command, "```"]
        if section["commands"]:
            lines.append("")
        lines += [f"Date {section['date']}, {section['seconds']:.0f} s.", ""]
        results = section.get("results")
        if name == "engine" and results:
            lines += ["| workload | engine ns/msg | bare ns/msg | ratio | engine msgs/s | events/msg |",
                      "|---|---:|---:|---:|---:|---:|"]
            for w in results["workloads"]:
                lines.append(f"| {w['workload']} | {_fmt(w['engine_ns_per_msg'], 1)} | {_fmt(w['bare_ns_per_msg'], 1)}"
                             f" | {w['ratio']:.2f} | {_fmt(w['engine_msgs_per_s'])} | {w['events_per_msg']:.2f} |")
            lines.append("")
        if name == "pipeline" and results:
            roles = results["us_per_order"]
            lines += ["| " + " | ".join(["client", "orders", "batch", *(f"{role} us/order" for role in roles),
                                         "total us/order", "orders/s on one core"]) + " |",
                      "|---|" + "---:|" * (len(roles) + 4)]
            for client, run in (("binary API", results), ("OUCH 5.0", results.get("ouch"))):
                if run:
                    lines.append("| " + " | ".join([client, _fmt(run["orders"]), str(run["batch"]),
                                                    *(_fmt(run["us_per_order"].get(role, 0), 1) for role in roles),
                                                    _fmt(run["total_us_per_order"], 1),
                                                    _fmt(run["one_core_orders_per_s"])]) + " |")
            lines.append("")
        if name == "cluster" and results:
            lines += ["| client | durability | book nodes | offered/s | achieved/s | answered | rejected | p50 us |"
                      " p99 us | p99.9 us | max us |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in sorted(results["runs"], key=lambda r: (r["client"], FSYNC_POLICIES.index(r["fsync"])
                                                             if r["fsync"] in FSYNC_POLICIES else 9,
                                                             r["book_nodes"], r["offered"])):
                durability = "no journal" if r["fsync"] == "off" else f"fsync {r['fsync']}"
                rejected = r.get("rejected") or {}
                rejects = ", ".join(f"{n:,} {reason}" for reason, n in sorted(rejected.items(), key=lambda x: -x[1]))
                lines.append(f"| {r['client']} | {durability} | {r['book_nodes']} | {_fmt(r['offered'])} | "
                             f"{_fmt(r['achieved'])} | {r['answered']}/{r['sent']} | {rejects or 0} | "
                             f"{_fmt(r['p50_us'])} | {_fmt(r['p99_us'])} | {_fmt(r['p999_us'])} | "
                             f"{_fmt(r['max_us'])} |")
            lines.append("")
        if name == "itch" and results:
            lines += ["| stage | msgs/s |", "|---|---:|",
                      f"| decode ({results['decode_mb_per_s']:.1f} MB/s) | {_fmt(results['decode_msgs_per_s'])} |",
                      f"| L3 book (of decoded messages) | {_fmt(results['book_msgs_per_s'])} |",
                      f"| feed handler ({_fmt(results['feed_packets_per_s'])} packets/s) | "
                      f"{_fmt(results['feed_msgs_per_s'])} |", ""]
        if name == "gateware" and results:
            lines += ["| block | component | Fmax MHz | cycles/msg | msgs/s | status |", "|---|---|---:|---:|---:|---|"]
            for b in results["components"]:
                cycles = ", ".join(f"{c['workload']}: {c['cycles_per_msg']:g}" for c in b["cycles"]) or "—"
                rates = ", ".join(f"{m['workload']}: {m['msgs_per_s']:,.0f}" for m in b["msgs_per_s"]) or "—"
                lines.append(f"| {b['name']} | {b['component'] or '—'} | {_fmt(b['fmax_mhz'], 1)} | {cycles} | "
                             f"{rates} | {b['status'].replace('_', ' ')}"
                             f"{': ' + '; '.join(b['reasons']) if b['reasons'] else ''} |")
            lines.append("")
        for figure in figures.get(name, []):
            lines += [f"![{figure['title']}]({figure['file']})", "",
                      f"*{figure['title']}.* Command: `{figure['command'].replace(chr(10), '` ; `')}`. "
                      f"Machine: {figure['machine']}. Date: {figure['date']}.", ""]
    path.write_text("\n".join(lines))


# -- main ----------------------------------------------------------------------------------------


def build_report(ctx: Context, sections: list[str], command: str) -> dict:
    """Run the sections, draw the plots, and return the report document (also written to ctx.out)."""
    started = time.monotonic()
    runners = {"engine": engine_section, "pipeline": pipeline_section, "cluster": cluster_section, "itch": itch_section,
               "gateware": gateware_section}
    results: dict[str, dict] = {}
    for name in sections:
        try:
            results[name] = runners[name](ctx)
        except Exception as exc:  # noqa: BLE001 - one broken producer must not lose the others' figures
            results[name] = _section("failed", f"{type(exc).__name__}: {exc}")
        ctx.console.log(f"{name}: {results[name]['status']}"
                        + (f" — {results[name].get('reason', '')[:200]}" if results[name]["status"] != "ok" else ""))
    plot_all(ctx, results)
    ctx.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"schema_version": SCHEMA_VERSION, "generated": _now(), "quick": ctx.quick,
              "seconds": round(time.monotonic() - started, 1), "command": command, "machine": ctx.machine,
              "sections": results, "figures": ctx.figures}
    (ctx.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, ctx.out / "report.md")
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m actors.report`` (``make bench``, ``make bench-quick``, ``matchwire bench``)."""
    parser = argparse.ArgumentParser(prog="python -m actors.report", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one short rate each (under 2 minutes)")
    parser.add_argument("--out", default="bench", help="output directory (default: bench)")
    parser.add_argument("--only", help=f"comma list of sections ({', '.join(SECTIONS)}); default all")
    parser.add_argument("--itch-sample", default=os.environ.get("ITCH_SAMPLE") or str(DEFAULT_ITCH_SAMPLE),
                        help="ITCH 5.0 file for the itch section (default: $ITCH_SAMPLE or the shared sample)")
    parser.add_argument("--cluster-rates", help=f"offered commands/s (default {FULL_RATES}; --quick {QUICK_RATE})")
    parser.add_argument("--cluster-seconds", type=float, help="seconds per rate (default 2; --quick 1)")
    parser.add_argument("--matcher-component", help="module:factory of the matcher for Fmax (default: the "
                                                    "hdl.matcher entry of HDL_REPORT_COMPONENTS)")
    parser.add_argument("--decoder-component", help="module:factory of the ITCH decoder for Fmax (default: the "
                                                    "hdl.itch entry of HDL_REPORT_COMPONENTS)")
    parser.add_argument("--matcher-target", default="bench-matcher", help="make target printing cycles_per_msg=N")
    parser.add_argument("--decoder-target", default="bench-decoder", help="make target printing cycles_per_msg=N")
    args = parser.parse_args(argv)
    sections = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    (out / "raw").mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()  # a figure from an older run must not pass for this run's
    console = Console(stderr=True, log_path=False)
    machine = machine_info()
    command = shlex.join(["python", "-m", "actors.report", *(argv if argv is not None else sys.argv[1:])])
    console.log(f"benchmark report{' (quick)' if args.quick else ''}: {', '.join(sections)} -> {out}; "
                f"machine: {machine_line(machine)}")
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    ctx = Context(out=out, quick=args.quick, machine=machine, progress=progress, console=console,
                  itch_sample=Path(args.itch_sample),
                  cluster_rates=args.cluster_rates or (QUICK_RATE if args.quick else FULL_RATES),
                  cluster_seconds=args.cluster_seconds or (1.0 if args.quick else 2.0),
                  matcher_component=args.matcher_component, decoder_component=args.decoder_component,
                  matcher_target=args.matcher_target, decoder_target=args.decoder_target)
    with progress:
        report = build_report(ctx, sections, command)
    console.log(f"report: {out / 'report.json'}, {out / 'report.md'}, {len(report['figures'])} figures "
                f"in {report['seconds']:.0f} s")
    return 1 if any(s["status"] == "failed" for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
