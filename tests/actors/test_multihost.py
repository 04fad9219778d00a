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


def _messages(client: OuchClient, count: int, timeout: float = 10.0) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += client.messages(0.1)
    return got


def _login(config, user: str) -> OuchClient:  # noqa: ANN001
    deadline = time.monotonic() + 15
    while True:
        try:
            return OuchClient(*config.ouch_address(), user, USERS[user][0], next_seq=1)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_nodes_started_one_by_one_on_their_own_hosts_trade_and_recover(tmp_path):
    path = _config(tmp_path)
    config = load_config(path)
    processes = {name: _start(path, tmp_path, name) for name in NODES}
    clients: list[OuchClient] = []
    try:
        seller, buyer = _login(config, "U1"), _login(config, "U2")
        clients += [seller, buyer]
        resting = seller.enter_order("AAPL", "S", 100, 1_000_000)
        assert [m["type"] for m in _messages(seller, 1)] == ["A"]
        # The book's host loses the process; its supervisor starts it again from the same state directory.
        processes["book1"].send_signal(signal.SIGKILL)
        processes["book1"].wait(timeout=10)
        processes["book1"] = _start(path, tmp_path, "book1")
        # Orders are refused (instrument unavailable) until risk hears the book is back; then it trades.
        deadline = time.monotonic() + 30
        while True:
            buyer.enter_order("AAPL", "B", 60, 1_000_000)
            answers = [m for m in _messages(buyer, 2, timeout=3) if m["type"] in "AJE"]
            if answers and answers[0]["type"] == "A" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [m["type"] for m in answers] == ["A", "E"], answers
        execution = next(m for m in _messages(seller, 1) if m["type"] == "E")
        assert (execution["user_ref_num"], execution["quantity"], execution["price"]) == (resting, 60, 1_000_000)
    finally:
        for client in clients:
            client.close()
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(timeout=20) for name, process in processes.items()}
    assert codes == dict.fromkeys(NODES, 0), codes
    assert (tmp_path / "host-book1" / "state" / "book1" / "book-AAPL").is_dir()
    assert not (tmp_path / "host-gateway" / "state" / "book1").exists()  # each host holds its own nodes' journals
