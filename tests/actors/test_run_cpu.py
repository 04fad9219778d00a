"""What a `matchwire run` cost the machine: the nodes report their process CPU, the launcher turns readings into
cores used (live view) and a summary line that says when the latency it printed was mostly waiting for a core."""

from __future__ import annotations

import os
import time

import pytest

from actors.cluster import LAUNCHER, MACHINE, CpuUse, cores_used, machine_busy_seconds, nodes_cpu
from actors.top import _process


def test_cores_used_counts_only_processes_that_ran_between_the_readings():
    before = {"gateway": (100, 1.0), "book1": (101, 5.0), "md": (102, 2.0), LAUNCHER: (1, 0.5)}
    after = {"gateway": (100, 2.0), "book1": (201, 0.5),  # book1 died and was started again: it counts from 0
             "risk": (103, 1.0),  # not in the first reading
             "md": (102, 2.0), LAUNCHER: (1, 0.9)}
    assert cores_used(before, after, 2.0) == pytest.approx({"gateway": 0.5, "md": 0.0, LAUNCHER: 0.2})
    assert cores_used(before, after, 0.0) == {}


def test_the_summary_line_names_every_share_and_knows_when_the_cores_were_full():
    busy = CpuUse({"gateway": 0.9, "book1": 0.5, LAUNCHER: 0.2, MACHINE: 1.9}, seconds=10.0, available=2,
                  book_commands=10_000)
    line = busy.line()
    assert "1.90 of 2 cores busy (nodes 1.40: gateway 0.90, book1 0.50" in line, line
    assert "this process and its demo traders 0.20; the kernel and other processes 0.30)" in line, line
    assert line.endswith("the nodes' CPU per book command 1,400 us"), line  # 1.4 cores x 10 s / 10,000
    assert busy.full

    quiet = CpuUse({"gateway": 0.3, LAUNCHER: 0.1, MACHINE: 0.5}, seconds=10.0, available=2, book_commands=0)
    assert "0.50 of 2 cores busy" in quiet.line() and "per book command" not in quiet.line(), quiet.line()
    assert not quiet.full
    # Without a machine-wide reading (no /proc/stat) the processes' sum stands for it.
    alone = CpuUse({"gateway": 1.0, LAUNCHER: 0.8}, 1.0, 2, 5)
    assert "1.80 of 2 cores busy" in alone.line() and "kernel" not in alone.line() and alone.full
    assert CpuUse({LAUNCHER: 0.2, MACHINE: 0.3}, 1.0, 2, 5).line() is None  # no node reported


def test_machine_busy_seconds_grows_with_work():
    first = machine_busy_seconds()
    if first is None:
        pytest.skip("no /proc/stat on this system: the summary goes without the machine-wide figure")
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert machine_busy_seconds() - first >= 0.2


def test_node_reports_without_a_usable_cpu_figure_are_left_out():
    stats = {"gateway": {"pid": 10, "cpu_s": 1.5}, "risk": {"pid": 11, "cpu_s": 2},
             "book1": {"pid": 12}, "book2": {"pid": "12", "cpu_s": 1.0}, "md": {"pid": 13, "cpu_s": "lots"},
             "feed": {"pid": 14, "cpu_s": None}, "spare": {}}
    assert nodes_cpu(stats) == {"gateway": (10, 1.5), "risk": (11, 2.0)}


def test_top_takes_only_a_pid_and_a_cpu_time_from_an_answer():
    assert _process([4242, 1.25]) == (4242, 1.25) and _process([4242, 3]) == (4242, 3.0)
    for garbage in (None, "x", [1], [1, 2, 3], ["1", 2.0], [1, "2"], [1, -1.0], [True, 1.0], {"pid": 1}):
        assert _process(garbage) is None, garbage


def test_a_stat_file_that_says_something_else_gives_no_machine_figure(tmp_path):
    good = tmp_path / "stat"
    good.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n")
    assert machine_busy_seconds(str(good)) * os.sysconf("SC_CLK_TCK") == 150
    for text in ("", "cpu\n", "cpu 1 2\n", "intr 1 2 3 4 5\n", "cpu a b c d e\n", "cpu 1 2 3 -4 5\n"):
        good.write_text(text)
        assert machine_busy_seconds(str(good)) is None, text
    good.write_bytes(b"\xff\xfe\x00garbage")
    assert machine_busy_seconds(str(good)) is None
    assert machine_busy_seconds(str(tmp_path / "absent")) is None
