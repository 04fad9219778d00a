"""Helpers for multi-process cluster tests: a configuration on free ports, and a running cluster."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from actors.cluster import Cluster
from actors.config import load_config
from actors.ports import free_port_block


def write_config(tmp_path: Path, *, send_hwm: int = 1000, max_backlog: int = 64, transport: str = "tcp",
                 socket_buffer: int = 262144, extra: str = "") -> Path:
    """A two-book-node cluster on free ports."""
    base = free_port_block(100)
    text = f"""
[cluster]
name = "test"
transport = "{transport}"
host = "127.0.0.1"
base_port = {base}
ipc_dir = "{tmp_path}/ipc"
control_port = {base + 90}
client_port = {base + 91}
send_hwm = {send_hwm}
max_backlog = {max_backlog}
socket_buffer = {socket_buffer}

[[node]]
name = "gateway"
actors = ["gateway/0"]

[[node]]
name = "risk"
actors = ["risk/0", "risk/1"]

[[node]]
name = "book1"
actors = ["book/AAPL", "book/MSFT"]

[[node]]
name = "book2"
actors = ["book/GOOG", "book/TSLA"]

[[node]]
name = "md"
actors = ["md/0"]

[[instrument]]
symbol = "AAPL"
tick_size = 100

[[instrument]]
symbol = "MSFT"
tick_size = 100

[[instrument]]
symbol = "GOOG"
tick_size = 100

[[instrument]]
symbol = "TSLA"
tick_size = 100

[[account]]
name = "A1"

[[account]]
name = "A2"

[[account]]
name = "A3"

[[account]]
name = "A4"
{extra}
"""
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def users_toml(users: Mapping[str, tuple[str, str]]) -> str:
    """``[[user]]`` tables for OUCH logins: name -> (password, account). Cheap hashes: tests log in often."""
    from exchange.accounts import hash_password

    return "".join(f'[[user]]\nname = "{name}"\npassword_hash = "{hash_password(password, n=1 << 10)}"\n'
                   f'accounts = ["{account}"]\n\n' for name, (password, account) in users.items())


def start_cluster(path: Path, log_dir: Path) -> Cluster:
    config = load_config(path)
    cluster = Cluster(config, str(path), log_dir=log_dir)
    try:
        cluster.start(timeout=30)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def ouch_reports(client, count: int, timeout: float = 5.0) -> list[dict]:  # noqa: ANN001
    """OUCH messages from ``client`` until ``count`` have come or ``timeout`` passed (Account Query answers, session
    housekeeping, left out)."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += [m for m in client.messages(0.05) if m["type"] != "Q"]
    return got
