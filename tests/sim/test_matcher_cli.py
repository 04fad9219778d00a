"""``matchwire match --backend sim``: the simulated gateware prints what the software backend prints.

Runs the real CLI (a subprocess) on Icarus and Verilator. The script sets no window: the sim
backend places it at the first limit price, silently, so the outputs are byte-identical.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile

import pytest

from exchange.instruments import Instrument
from exchange.script import command_to_json
from sim.matcher_backend import realistic_commands
from sim.runner import SIMULATORS


def matchwire(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actors.cli", "match", *args], capture_output=True, text=True,
                          timeout=1200, env=env)


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    commands = [c for c in realistic_commands(random.Random(21), 160, Instrument("ACME"))
                if c.op != "set_base"]  # the backend places the window itself
    commands += [c for c in realistic_commands(random.Random(22), 40, Instrument("ZZZ"), base=5_000)
                 if c.op != "set_base"]  # a second book: a second simulated matcher
    path = tmp_path_factory.mktemp("cli") / "script.jsonl"
    path.write_text("\n".join(command_to_json(c) for c in commands) + "\n")
    return path


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_sim_backend(simulator, script):
    """The output equals the software backend's, byte for byte; ``--bench`` prints the cycles."""
    software = matchwire(str(script))
    # A temporary directory of its own (short: it holds the simulators' Unix socket paths), to see what is left.
    temporary = tempfile.mkdtemp(prefix="mw-")
    try:
        simulated = matchwire(str(script), "--backend", "sim", "--simulator", simulator,
                              env={**os.environ, "TMPDIR": temporary})
        left = sorted(name for name in os.listdir(temporary) if name.startswith("matchwire-sim-"))
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    assert software.returncode == 0 and simulated.returncode == 0, simulated.stderr
    assert not left, f"the simulated matchers left {left} behind"
    assert simulated.stdout == software.stdout
    assert simulated.stdout.count("\n") > 250
    bench = matchwire(str(script), "--backend", "sim", "--simulator", simulator, "--bench", "--min-seconds", "0")
    assert bench.returncode == 0, bench.stderr
    lines = bench.stdout.splitlines()
    cycles = next(line for line in lines if line.startswith("cycles_per_msg="))
    assert 1.0 <= float(cycles.split("=")[1]) <= 4.0
    assert any(line.startswith("cycles_by_kind ") and "add=" in line and "cancel=" in line for line in lines)
