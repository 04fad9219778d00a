"""One configuration spread over hosts: every node started on its own with ``matchwire node`` (as each host's
supervisor would), each on its own address (127.0.0.2-5 stand for four hosts) with its own state directory.
Clients trade over OUCH; a book node killed and started again by its "host" comes back with its orders; every
node stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from actors.config import load_config
from actors.ouch_client import OuchClient
from actors.ports import free_port_block
from tests.actors.cluster_helpers import users_toml

NODES = {"gateway": ("127.0.0.2", ["gateway/0"]), "risk": ("127.0.0.3", ["risk/0", "risk/1"]),
         "book1": ("127.0.0.4", ["book/AAPL"]), "md": ("127.0.0.5", ["md/0"])}
USERS = {"U1": ("u1-pw", "A1"), "U2": ("u2-pw", "A2")}


def _config(tmp_path: Path) -> Path:
    base = free_port_block(100)
    nodes = "".join(f'[[node]]\nname = "{name}"\nhost = "{host}"\nactors = {actors!r}\n\n'.replace("'", '"')
                    for name, (host, actors) in NODES.items())
    users = users_toml(USERS)
    path = tmp_path / "cluster.toml"
    path.write_text(f'[cluster]\nname = "hosts"\nbase_port = {base}\ncontrol_port = {base + 90}\n'
                    f'client_port = {base + 91}\nouch_port = {base + 95}\n\n{nodes}'
                    '[[instrument]]\nsymbol = "AAPL"\ntick_size = 100\n\n'
                    '[[account]]\nname = "A1"\n\n[[account]]\nname = "A2"\n\n'
                    '[durability]\nenabled = true\nfsync = "batch"\n\n' + users)
    return path


def _start(path: Path, tmp_path: Path, name: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "a")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen([sys.executable, "-m", "actors.cli", "node", "--config", str(path), "--name", name,
                             "--state-dir", str(tmp_path / f"host-{name}" / "state")],
                            stdout=log, stderr=subprocess.STDOUT)


def _login(config, user: str) -> OuchClient:  # noqa: ANN001
    deadline = time.monotonic() + 15
    while True:
        try:
            return OuchClient(*config.ouch_address(), user, USERS[user][0], next_seq=1)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _enter_until_accepted(client: OuchClient, side: str, quantity: int, then: str = "") -> int:
    """Enter an AAPL order at 100.0000 until one is accepted (and, with ``then``, that message follows it)."""
    deadline = time.monotonic() + 30
    while True:
        ref = client.enter_order("AAPL", side, quantity, 1_000_000)
        got: list[dict] = []
        wait = time.monotonic() + 3
        while len(got) < 1 + len(then) and time.monotonic() < wait:
            got += [m for m in client.messages(0.1) if m.get("user_ref_num") == ref and m["type"] in "AJE"]
        if got and got[0]["type"] == "A" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "".join(m["type"] for m in got) == "A" + then, got
    return ref


def test_nodes_started_one_by_one_on_their_own_hosts_trade_and_recover(tmp_path):
    path = _config(tmp_path)
    config = load_config(path)
    processes = {name: _start(path, tmp_path, name) for name in NODES}
    clients: list[OuchClient] = []
    try:
        seller, buyer = _login(config, "U1"), _login(config, "U2")
        clients += [seller, buyer]
        # Nodes started one by one have no launcher to wait for: until risk sees the book's node, orders are
        # refused (instrument unavailable).
        resting = _enter_until_accepted(seller, "S", 100)
        # The book's host loses the process; its supervisor starts it again from the same state directory.
        processes["book1"].send_signal(signal.SIGKILL)
        processes["book1"].wait(timeout=10)
        processes["book1"] = _start(path, tmp_path, "book1")
        # Orders are refused (instrument unavailable) until risk hears the book is back; then it trades.
        _enter_until_accepted(buyer, "B", 60, then="E")
        # The seller hears of it too (an earlier try that was answered late may be the order that traded).
        executions: list[dict] = []
        deadline = time.monotonic() + 10
        while not executions and time.monotonic() < deadline:
            executions += [m for m in seller.messages(0.1) if m["type"] == "E"]
        assert [(m["quantity"], m["price"]) for m in executions] == [(60, 1_000_000)], executions
        assert executions[0]["user_ref_num"] <= resting
    finally:
        for client in clients:
            client.close()
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(timeout=20) for name, process in processes.items()}
    assert codes == dict.fromkeys(NODES, 0), codes
    assert (tmp_path / "host-book1" / "state" / "book1" / "book-AAPL").is_dir()
    assert not (tmp_path / "host-gateway" / "state" / "book1").exists()  # each host holds its own nodes' journals
