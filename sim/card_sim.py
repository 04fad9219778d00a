"""The card in simulation: served on a TCP port, wired to a host port in-process, and line faults.

* :func:`serve` runs a card top (``design="matcher"``: :class:`hdl.card.Card`; ``design="itch"``: the
  ITCH decoder card :class:`hdl.itch_card.ItchCard`) under cocotb (Verilator or Icarus,
  through :mod:`sim.runner`) and serves its wire byte stream on a TCP port: what
  ``matchwire card sim`` does. The bench (``sim.benches.test_card_server``) accepts connections
  in a thread and shuttles bytes between the socket and the card's ``rx``/``tx`` streams, one
  per clock; while the card is idle and the host silent it blocks on the socket, so an idle
  simulated card costs no CPU. The host opens ``socket://HOST:PORT`` with the same code it uses
  for a board's serial port: only the speed differs. A newer connection replaces an older one
  (like re-opening a serial port); the card keeps its state across connections, as a board does.
* :class:`SimulatedCardPort` runs a card in Amaranth's own simulator in a thread and looks like
  a pyserial port to :class:`host.framing.Link` (``Link(port=SimulatedCardPort(card))``): for
  quick tests of the gateware with the real host code, no external simulator needed.
* :class:`FrameTamper` and :class:`TamperRelay` damage the line on purpose, frame by frame
  (corrupt, truncate, drop, duplicate, glue frames together, insert garbage), for the link tests.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from exchange.card_protocol import matcher_preset

__all__ = [
    "ACTIONS",
    "DESIGNS",
    "CardSimProcess",
    "FrameTamper",
    "SimulatedCardPort",
    "TamperRelay",
    "random_policy",
    "serve",
    "start_server",
]

CARD_SIM_NAME = "card"
BENCH_MODULE = "sim.benches.test_card_server"
#: Card designs the server can run: both have the same wire ports (rx, tx, busy), so one bench serves either.
DESIGNS = ("matcher", "itch")


# -- Amaranth simulator behind a pyserial-like port ------------------------------------------------


class SimulatedCardPort:
    """A card in Amaranth's simulator, behind the subset of pyserial's port API that
    :class:`host.framing.Link` uses (``write``, ``read``, ``in_waiting``, ``flush``,
    ``reset_input_buffer``, ``timeout``, ``is_open``, ``close``).

    The simulation runs in a background thread; when the card has been idle (``busy`` low, no
    output, no input waiting) for ``idle_cycles`` cycles it waits for the host without stepping.
    ``to_card``/``to_host`` (e.g. :meth:`FrameTamper.feed`) rewrite the bytes of each direction.
    """

    def __init__(self, card, *, timeout: float = 0.05, idle_cycles: int = 16,  # noqa: ANN001
                 to_card: Callable[[bytes], bytes] | None = None,
                 to_host: Callable[[bytes], bytes] | None = None) -> None:
        self.card = card
        self.timeout = timeout
        self.idle_cycles = idle_cycles
        self.to_card = to_card
        self.to_host = to_host
        self.name = self.port = "amaranth-sim://card"
        self.is_open = True
        self.cycles = 0
        self.error: BaseException | None = None
        self._inbox: queue.Queue[bytes] = queue.Queue()
        self._outbox = bytearray()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="card-sim", daemon=True)
        self._thread.start()

    # -- simulator thread

    def _run(self) -> None:
        from amaranth.sim import Simulator

        sim = Simulator(self.card)
        sim.add_clock(1e-8)
        sim.add_testbench(self._bench)
        try:
            sim.run()
        except BaseException as exc:  # surfaced to the host on its next read or write
            self.error = exc
        finally:
            with self._cond:
                self._cond.notify_all()

    def _publish(self, out: bytearray) -> None:
        data = bytes(out)
        out.clear()
        if self.to_host is not None:
            data = self.to_host(data)
        if data:
            with self._cond:
                self._outbox += data
                self._cond.notify_all()

    async def _bench(self, ctx) -> None:  # noqa: ANN001
        card = self.card
        pending = bytearray()
        out = bytearray()
        quiet = 0
        ctx.set(card.tx.ready, 1)
        sample = ctx.tick().sample(card.rx.ready, card.tx.valid, card.tx.payload, card.busy)
        while self.is_open:
            if not pending:
                try:
                    while True:
                        pending += self._inbox.get_nowait()
                except queue.Empty:
                    pass
            if pending:
                ctx.set(card.rx.valid, 1)
                ctx.set(card.rx.payload, pending[0])
            else:
                ctx.set(card.rx.valid, 0)
            _clk, _rst, ready, valid, payload, busy = await sample
            self.cycles += 1
            if pending and ready:
                del pending[0]
            if valid:
                out.append(payload)
            if out and (not valid or len(out) >= 1024):
                self._publish(out)
            if pending or valid or busy:
                quiet = 0
                continue
            quiet += 1
            if quiet >= self.idle_cycles:
                try:
                    pending += self._inbox.get(timeout=0.1)
                except queue.Empty:
                    pass

    # -- the port API

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the simulated card failed: {self.error!r}") from self.error
        if not self.is_open:
            raise OSError("port is closed")

    def write(self, data: bytes) -> int:
        self._check()
        data = bytes(data)
        sent = len(data)
        if self.to_card is not None:
            data = self.to_card(data)
        if data:
            self._inbox.put(data)
        return sent

    def flush(self) -> None:
        self._check()

    @property
    def in_waiting(self) -> int:
        self._check()
        return len(self._outbox)

    def read(self, size: int = 1) -> bytes:
        self._check()
        deadline = time.monotonic() + (self.timeout or 0)
        with self._cond:
            while not self._outbox:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.error is not None:
                    break
                self._cond.wait(remaining)
            data = bytes(self._outbox[:size])
            del self._outbox[:size]
        return data

    def reset_input_buffer(self) -> None:
        with self._cond:
            self._outbox.clear()

    def close(self) -> None:
        """Stop the simulation (idempotent)."""
        if self.is_open:
            self.is_open = False
            self._thread.join(5)


# -- line faults ---------------------------------------------------------------------------------------

#: What :class:`FrameTamper` can do to a frame.
ACTIONS = ("pass", "corrupt", "truncate", "drop", "duplicate", "glue", "garbage")


def random_policy(rng: random.Random, rate: float, actions: Sequence[str] = ACTIONS[1:]) -> Callable[[int, bytes], str]:
    """A tamper policy: each frame is damaged with probability ``rate``, by a random action."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be within 0..1, not {rate}")
    unknown = set(actions) - set(ACTIONS)
    if unknown:
        raise ValueError(f"unknown tamper actions {sorted(unknown)}; choose from {ACTIONS}")

    def policy(index: int, body: bytes) -> str:
        return rng.choice(list(actions)) if rng.random() < rate else "pass"

    return policy


class FrameTamper:
    """Rewrites one direction of a link byte stream frame by frame.

    The stream is split at the delimiters; each complete frame goes to ``policy(index, body)``
    (``body`` is the COBS text between the delimiters), which names an action of
    :data:`ACTIONS`: ``corrupt`` flips one bit of one byte, ``truncate`` cuts the frame short,
    ``drop`` removes it, ``duplicate`` sends it twice, ``glue`` sends it with no delimiter
    between it and the previous frame's end (legal concatenation: one shared delimiter),
    ``garbage`` puts random bytes before it. :attr:`log` records ``(index, action)``.
    """

    def __init__(self, policy: Callable[[int, bytes], str], rng: random.Random | None = None) -> None:
        self.policy = policy
        self.rng = rng or random.Random(0)
        self.log: list[tuple[int, str]] = []
        self._partial = bytearray()
        self._index = 0
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> bytes:
        """Bytes in, bytes out (frames held back until their closing delimiter arrives)."""
        with self._lock:
            out = bytearray()
            for byte in data:
                if byte:
                    self._partial.append(byte)
                    continue
                if not self._partial:
                    continue  # leading delimiter or idle fill: re-created below
                out += self._frame(bytes(self._partial))
                self._partial.clear()
            return bytes(out)

    def _frame(self, body: bytes) -> bytes:
        index = self._index
        self._index += 1
        action = self.policy(index, body)
        if action not in ACTIONS:
            raise ValueError(f"unknown tamper action {action!r}")
        if action != "pass":
            self.log.append((index, action))
        rng = self.rng
        framed = b"\x00" + body + b"\x00"
        if action == "pass":
            return framed
        if action == "corrupt":
            damaged = bytearray(body)
            at = rng.randrange(len(damaged))
            damaged[at] ^= 1 << rng.randrange(8)
            return b"\x00" + bytes(damaged) + b"\x00"
        if action == "truncate":
            return b"\x00" + body[: rng.randrange(len(body))] + b"\x00"
        if action == "drop":
            return b""
        if action == "duplicate":
            return framed + framed
        if action == "glue":
            return body + b"\x00"  # rides on the previous frame's trailing delimiter
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        return garbage + framed


class TamperRelay:
    """A TCP relay on loopback between a host and a card (e.g. ``matchwire card sim``) that passes
    each direction through an optional :class:`FrameTamper`. Connect the host to :attr:`url`."""

    def __init__(self, card_host: str, card_port: int, *, to_card: FrameTamper | None = None,
                 to_host: FrameTamper | None = None) -> None:
        self.card_addr = (card_host, card_port)
        self.to_card = to_card
        self.to_host = to_host
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"socket://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                host, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            card = socket.create_connection(self.card_addr)
            for s in (host, card):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sockets.append(s)
            for src, dst, tamper in ((host, card, self.to_card), (card, host, self.to_host)):
                t = threading.Thread(target=self._pump, args=(src, dst, tamper), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, tamper: FrameTamper | None) -> None:
        src.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if tamper is not None:
                data = tamper.feed(data)
            try:
                if data:
                    dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop relaying and close every socket."""
        self._stop.set()
        self.listener.close()
        for s in self._sockets:
            s.close()
        for t in self._threads:
            t.join(1)

    def __enter__(self) -> TamperRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the card served on a TCP port by cocotb ---------------------------------------------------------------


def _card_top(design: str, preset: str):  # noqa: ANN202
    if design == "itch":
        from hdl.itch_card import ItchCard

        return ItchCard()
    from hdl.card import Card

    return Card(matcher_preset(preset))


def _sim_name(design: str, preset: str) -> str:
    return f"{CARD_SIM_NAME}_itch" if design == "itch" else f"{CARD_SIM_NAME}_{preset}"


def _describe(design: str, preset: str) -> str:
    return "ITCH decoder card" if design == "itch" else f"{preset} card"


def _check_design(design: str) -> None:
    if design not in DESIGNS:
        raise ValueError(f"unknown card design {design!r}; choose from {', '.join(DESIGNS)}")


def start_server(*, port: int = 0, host: str = "127.0.0.1", simulator: str = "verilator", preset: str = "default",
                 ready_file: Path | None = None, stop_file: Path | None = None,
                 build_root: Path | str | None = None, design: str = "matcher") -> threading.Thread:
    """Start serving the card in a thread (the simulation is a child process); the bench writes
    the bound port into ``ready_file`` and ends when ``stop_file`` appears. Raises ValueError for
    an unknown simulator, design or preset (``preset`` names the matcher's size; the ITCH decoder
    card has none)."""
    from sim.runner import SUPPORTED_SIMULATORS, run_cocotb

    if simulator not in SUPPORTED_SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}; choose from {', '.join(SUPPORTED_SIMULATORS)}")
    _check_design(design)
    matcher_preset(preset)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"port must be 0..65535, not {port!r}")
    params = {"host": host, "port": port, "ready_file": str(ready_file) if ready_file else "",
              "stop_file": str(stop_file) if stop_file else "", "parent_pid": os.getpid()}
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_cocotb(lambda: _card_top(design, preset), name=_sim_name(design, preset), test_module=BENCH_MODULE,
                       simulator=simulator, params=params, build_root=build_root)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="card-sim-server", daemon=True)
    thread.failure = failure  # type: ignore[attr-defined]
    thread.start()
    return thread


def serve(*, port: int = 0, host: str = "127.0.0.1", simulator: str = "verilator", preset: str = "default",
          announce: Callable[[str], None] = print, startup_timeout: float = 900.0, design: str = "matcher") -> int:
    """Serve the simulated card until SIGTERM/SIGINT (``matchwire card sim``); returns an exit code.

    ``announce`` gets one line naming the URL once the card listens (the first build of a
    simulator takes a while; later starts reuse it).
    """
    with tempfile.TemporaryDirectory(prefix="matchwire-card-sim-") as tmp:
        ready = Path(tmp) / "ready"
        stop = Path(tmp) / "stop"
        stopping = threading.Event()

        def request_stop(signum: int, frame: object) -> None:
            stopping.set()

        old = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            thread = start_server(port=port, host=host, simulator=simulator, preset=preset, ready_file=ready,
                                  stop_file=stop, design=design)
            deadline = time.monotonic() + startup_timeout
            while not ready.exists() and thread.is_alive() and not stopping.is_set():
                if time.monotonic() > deadline:
                    stopping.set()
                    break
                time.sleep(0.05)
            if ready.exists():
                bound = int(ready.read_text())
                announce(f"matchwire card sim: {_describe(design, preset)} on {simulator}, "
                         f"serving socket://{host}:{bound}")
            while thread.is_alive() and not stopping.is_set():
                thread.join(0.2)
            stop.touch()
            thread.join(10)
            failure = getattr(thread, "failure", [])
            if failure and not stopping.is_set():
                raise failure[0]
            return 0 if ready.exists() else 1
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def _die_with_parent() -> None:
    """In a child, before exec: have Linux end it when its parent dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class CardSimProcess:
    """``matchwire card sim`` as a child process: started on entry (waiting until it serves),
    :attr:`url` to give a host, stopped (SIGTERM, then SIGKILL) on exit. Its output goes to
    ``log_path`` when given. Raises RuntimeError when it does not come up within
    ``startup_timeout`` seconds (the first build of a simulator takes a minute or two).
    ``design="itch"`` serves the ITCH decoder card instead of the matcher card."""

    def __init__(self, *, simulator: str = "verilator", preset: str = "default", port: int = 0,
                 startup_timeout: float = 900.0, log_path: Path | str | None = None,
                 design: str = "matcher") -> None:
        _check_design(design)
        self.command = [sys.executable, "-m", "actors.cli", "card", "sim", "--port", str(port),
                        "--simulator", simulator, "--matcher", preset, "--design", design]
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> CardSimProcess:
        log = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log, text=True,
                                     cwd=Path(__file__).resolve().parents[1], preexec_fn=_die_with_parent)
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if "serving socket://" in line and not self.url:
                    self.url = line.rsplit("serving ", 1)[1].strip()
                    found.set()

        self._reader = threading.Thread(target=read, name="card-sim-output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.startup_timeout
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.lines[-20:])
                raise RuntimeError(f"matchwire card sim did not come up (exit {self.proc.returncode}):\n{tail}")
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """Stop the simulated card (idempotent)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> CardSimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
