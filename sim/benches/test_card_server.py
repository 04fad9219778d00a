"""cocotb side of ``matchwire card sim``: the card top's byte streams served on a TCP port.

The DUT is ``hdl.card.Card`` (ports ``rx__*``, ``tx__*``, ``busy``; clock ``clk``, reset
``rst``). A thread accepts TCP connections; this coroutine shuttles bytes between the newest
connection and the card, one byte per clock each way: host bytes go to ``rx`` as fast as the
card takes them, every ``tx`` byte is collected (``tx`` is always ready, as a UART transmitter
fed from a FIFO would be) and sent on. When the card has been idle for ``idle_cycles`` (no
``busy``, no output, nothing to send it) the simulation blocks on the socket: it stands still
until the host says something, so an idle simulated card costs nothing.

Parameters (``bench_params``): ``host``, ``port`` (0: any free port), ``ready_file`` (gets the
bound port once listening), ``stop_file`` (the bench ends when it exists), ``parent_pid`` (the
bench ends when that process is gone), ``idle_cycles``, ``clock_ns``.
"""

from __future__ import annotations

import ctypes
import os
import queue
import select
import signal
import socket
import threading
from pathlib import Path

import cocotb
from cocotb.handle import HierarchyObject
from cocotb.triggers import FallingEdge

from sim.conftest_helpers import bench_params, reset, start_clock

DEFAULTS = {"host": "127.0.0.1", "port": 0, "ready_file": "", "stop_file": "", "parent_pid": 0,
            "idle_cycles": 16, "clock_ns": 10}


def _die_with_parent() -> None:
    """Have Linux end this simulator when the process that started it dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class _Server:
    """Accepts connections in a thread; the bench takes the newest one (closing the older)."""

    def __init__(self, host: str, port: int) -> None:
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self.fresh: queue.Queue[socket.socket] = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        threading.Thread(target=self._accept, name="card-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(10.0)
            self.fresh.put(conn)
            os.write(self.wake_w, b"!")

    def newest(self, current: socket.socket | None) -> tuple[socket.socket | None, bool]:
        """The connection to serve, and whether it changed."""
        changed = False
        while True:
            try:
                conn = self.fresh.get_nowait()
            except queue.Empty:
                return current, changed
            if current is not None:
                current.close()
            current, changed = conn, True

    def drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 256):
                pass
        except BlockingIOError:
            pass


def _readable(conn: socket.socket, timeout: float) -> bool:
    return bool(select.select([conn], [], [], timeout)[0])


@cocotb.test()
async def serve(dut: HierarchyObject) -> None:
    """Serve the card until the stop file appears or the parent process ends."""
    params = bench_params(DEFAULTS)
    _die_with_parent()
    stop_file = Path(params["stop_file"]) if params["stop_file"] else None
    parent = int(params["parent_pid"])
    idle_cycles = int(params["idle_cycles"])
    server = _Server(params["host"], int(params["port"]))
    if params["ready_file"]:
        ready = Path(params["ready_file"])
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(str(server.port))
        tmp.replace(ready)
    dut._log.info("card listening on %s:%d", params["host"], server.port)

    dut.rx__valid.value = 0
    dut.rx__payload.value = 0
    dut.tx__ready.value = 1
    start_clock(dut, int(params["clock_ns"]))
    await reset(dut)

    # One trigger per clock: on the falling edge everything has settled since the rising edge.
    # rx.ready comes from flip-flops (hdl.card puts a FIFO there), so a byte presented now with
    # ready high is taken at the next rising edge; tx is always ready, so a tx byte seen now
    # leaves at the next rising edge.
    fall = FallingEdge(dut.clk)
    rx_valid, rx_payload, rx_ready = dut.rx__valid, dut.rx__payload, dut.rx__ready
    tx_valid, tx_payload, busy_sig = dut.tx__valid, dut.tx__payload, dut.busy
    conn: socket.socket | None = None
    pending = bytearray()
    out = bytearray()
    quiet = 0
    driving = 0
    cycle = 0

    def stop_requested() -> bool:
        return (stop_file is not None and stop_file.exists()) or (parent and os.getppid() != parent)

    def receive(timeout: float) -> None:
        nonlocal conn
        conn, changed = server.newest(conn)
        if changed:
            pending.clear()  # a new host: what the old one had not yet delivered is gone
            out.clear()
        if conn is None:
            if timeout:
                select.select([server.wake_r], [], [], timeout)
                server.drain_wake()
            return
        if not _readable(conn, 0) and timeout:
            select.select([conn, server.wake_r], [], [], timeout)
            server.drain_wake()
        if _readable(conn, 0):
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if data:
                pending.extend(data)
            else:
                conn.close()
                conn = None

    def send() -> None:
        nonlocal conn
        if conn is not None and out:
            try:
                conn.sendall(out)
            except OSError:
                conn.close()
                conn = None
        out.clear()

    while True:
        await fall
        cycle += 1
        sending = tx_valid.value == 1
        if sending:
            out.append(int(tx_payload.value))
        active = sending or busy_sig.value == 1
        if not pending and (quiet or not cycle & 15):
            receive(0)
        if pending:
            if not driving:
                rx_valid.value = driving = 1
            rx_payload.value = pending[0]
            if rx_ready.value == 1:
                del pending[0]  # taken at the next rising edge
        elif driving:
            rx_valid.value = driving = 0
        if out and (not sending or len(out) >= 4096):
            send()
        if pending or active:
            quiet = 0
            continue
        quiet += 1
        if quiet >= idle_cycles:
            # Idle: wait for the host without stepping the simulation.
            while not pending:
                if stop_requested():
                    dut._log.info("card served %d clock cycles", cycle)
                    if params["ready_file"]:
                        Path(params["ready_file"] + ".cycles").write_text(str(cycle))
                    if conn is not None:
                        conn.close()
                    server.listener.close()
                    return
                receive(0.2)
            quiet = 0
