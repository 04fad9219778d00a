"""hdl.report's parameter checks: refused before any tool runs, so these need no YoWASP."""

import pytest

from hdl.report import DEVICES, ROUTER_OPTIONS, SPEED_GRADES, main, nextpnr_arguments, speed_grade, synthesise


@pytest.mark.parametrize(("device", "speed"), [("LFE5UM5G-85F", 6), ("LFE5UM5G-85F", 7), ("LFE5U-85F", 5),
                                               ("LFE5U-85F", 9), ("LFE5U-85F", True)])
def test_a_speed_grade_the_part_is_not_sold_in_is_refused(device, speed, tmp_path):
    with pytest.raises(ValueError, match=f"{device} comes in speed grade"):
        synthesise("hdl.link:FrameDecoder", device=device, speed=speed, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_every_device_has_its_speed_grades_and_the_slowest_is_the_default():
    assert {device.split("-")[0] for device in DEVICES} == set(SPEED_GRADES)
    assert SPEED_GRADES["LFE5UM5G"] == (8,)
    assert speed_grade("LFE5U-85F") == 6 and speed_grade("LFE5UM-85F") == 6
    assert speed_grade("LFE5UM5G-85F") == 8 and speed_grade("LFE5U-85F", 8) == 8


@pytest.mark.parametrize(("device", "speed", "message"), [
    ("LFE5UM5G-85F", "6", "LFE5UM5G-85F comes in speed grade 8, not 6"),
    ("LFE5U-85F", "9", "LFE5U-85F comes in speed grade 6 or 7 or 8, not 9")])
def test_the_command_line_names_the_refusal(device, speed, message, tmp_path, capsys):
    code = main(["hdl.link:FrameDecoder", "--device", device, "--speed", speed, "--out", str(tmp_path)])
    assert code == 2
    assert f"hdl.report: {message}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("kwargs", "message"), [({"device": "XC7A35T"}, "unknown device"),
                                                 ({"package": "QFN48"}, "unknown package"),
                                                 ({"clock_mhz": 0}, "clock must be positive")])
def test_other_bad_parameters_are_refused(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        synthesise("hdl.link:FrameDecoder", out_dir=tmp_path, **kwargs)


def test_timing_driven_ripup_adds_its_option_and_nothing_else():
    with_ripup = nextpnr_arguments("LFE5U-85F", "CABGA381", 8, 100.0, 3, list(ROUTER_OPTIONS))
    plain = nextpnr_arguments("LFE5U-85F", "CABGA381", 8, 100.0, 3, [])
    assert ROUTER_OPTIONS == ("--tmg-ripup",)
    assert "--tmg-ripup" in with_ripup and "--tmg-ripup" not in plain
    assert [a for a in with_ripup if a != "--tmg-ripup"] == plain
    assert plain[:6] == ["--85k", "--package", "CABGA381", "--speed", "8", "--json"]
    assert plain[plain.index("--freq") + 1] == "100" and plain[plain.index("--seed") + 1] == "3"


def test_the_nextpnr_arguments_refuse_a_device_or_grade_that_does_not_exist():
    with pytest.raises(ValueError, match="unknown device 'XC7A35T'"):
        nextpnr_arguments("XC7A35T", "CABGA381", 6, 100.0, 1, [])
    with pytest.raises(ValueError, match="LFE5UM5G-85F comes in speed grade 8, not 6"):
        nextpnr_arguments("LFE5UM5G-85F", "CABGA381", 6, 100.0, 1, [])
