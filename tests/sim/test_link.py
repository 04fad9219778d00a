"""cocotb benches of the link framing gateware on Icarus Verilog and Verilator (sim.runner)."""

import re
import shutil
import time
from pathlib import Path

import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from exchange import framing_spec as fs
from hdl.link import DecodedByte, FrameByte, FrameDecoder, FrameEncoder, FrameStats
from sim.runner import SIMULATORS, build, run_cocotb, simulator_available, write_verilog


class LinkBench(wiring.Component):
    """Bench top: a FrameDecoder (``dec_*`` ports) beside a FrameEncoder (``enc_*`` ports)."""

    dec_i: In(stream.Signature(8))
    dec_o: Out(stream.Signature(DecodedByte))
    dec_stats: Out(FrameStats)
    enc_i: In(stream.Signature(FrameByte))
    enc_o: Out(stream.Signature(8))

    def __init__(self, max_payload: int = fs.MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.dec = dec = FrameDecoder(self.max_payload)
        m.submodules.enc = enc = FrameEncoder()
        wiring.connect(m, wiring.flipped(self.dec_i), dec.i)
        wiring.connect(m, dec.o, wiring.flipped(self.dec_o))
        m.d.comb += self.dec_stats.eq(dec.stats)
        wiring.connect(m, wiring.flipped(self.enc_i), enc.i)
        wiring.connect(m, enc.o, wiring.flipped(self.enc_o))
        return m


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_link_framing(simulator):
    started = time.monotonic()
    result = run_cocotb(
        LinkBench(),
        name="link_bench",
        test_module="sim.benches.test_link_bench",
        simulator=simulator,
        params={"seed": 8, "frames": 120, "max_payload": fs.MAX_PAYLOAD, "idle_prob": 0.2, "stall_prob": 0.3},
    )
    assert {t.name for t in result.tests if t.status == "passed"} == {
        "decoder_mixed_traffic",
        "decoder_full_rate",
        "encoder_matches_reference",
    }
    passed = sum(t.status == "passed" for t in result.tests)
    print(f"{simulator}: {passed} cocotb tests passed in {time.monotonic() - started:.1f} s")


@pytest.mark.skipif(
    not simulator_available("icarus"), reason="Icarus Verilog not installed (Debian package iverilog)"
)
def test_runner_reports_failures_and_caches_builds():
    design = write_verilog(LinkBench(), "link_bench")
    stamp = build(design, "icarus") / "matchwire-build.json"
    built_at = stamp.stat().st_mtime_ns
    assert build(design, "icarus") / "matchwire-build.json" == stamp
    assert stamp.stat().st_mtime_ns == built_at  # reused, not rebuilt

    kwargs = dict(
        name="link_bench",
        test_module="sim.benches.test_link_bench",
        simulator="icarus",
        testcase="runner_self_check",
        params={"runner_self_check": True},
    )
    with pytest.raises(AssertionError, match="runner_self_check: failed: deliberate failure") as raised:
        run_cocotb(design, **kwargs)
    kept = re.search(r"run directory kept: (\S+)", str(raised.value))
    assert kept and Path(kept[1]).is_dir()
    shutil.rmtree(kept[1])
    result = run_cocotb(design, check=False, **kwargs)
    assert not result.passed and [t.name for t in result.failed] == ["runner_self_check"]
    assert result.run_dir.is_dir() and result.log_file.exists()  # kept for inspection
    shutil.rmtree(result.run_dir)
