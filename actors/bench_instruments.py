"""What many instruments cost a cluster: ``python -m actors.bench_instruments --instruments 400``.

Every instrument's book is an actor (a thread, a ZeroMQ socket connected to the nodes it sends to, ticks and
statistics reports), so a cluster's fixed cost grows with its instrument count. This starts the usual five nodes with
the instruments split over two book nodes (journals on), enters one order per instrument, and prints per node: its
resident memory, threads, open files (and the node's own estimate, which sets its limit), and CPU while idle
afterwards. Figures and what they mean: docs/cluster.md "Many instruments".
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from actors.client import ClusterClient
from actors.cluster import Cluster
from actors.config import load_config
from actors.node import open_files_needed
from actors.ports import free_port_block
from exchange.orders import Accepted


def config_text(instruments: int, base: int, state_dir: Path) -> str:
    symbols = [f"S{i:04d}" for i in range(instruments)]
    half = instruments // 2
    books = [", ".join(f'"book/{s}"' for s in part) for part in (symbols[:half], symbols[half:])]
    return (f'[cluster]\nname = "instruments"\nbase_port = {base}\ncontrol_port = {base + 90}\n'
            f'client_port = {base + 91}\nouch_port = {base + 95}\n\n'
            '[[node]]\nname = "gateway"\nactors = ["gateway/0"]\n\n'
            '[[node]]\nname = "risk"\nactors = ["risk/0", "risk/1"]\n\n'
            f'[[node]]\nname = "book1"\nactors = [{books[0]}]\n\n'
            f'[[node]]\nname = "book2"\nactors = [{books[1]}]\n\n'
            '[[node]]\nname = "md"\nactors = ["md/0"]\n\n'
            + "".join(f'[[instrument]]\nsymbol = "{s}"\ntick_size = 100\n\n' for s in symbols)
            + f'[[account]]\nname = "A1"\n\n[durability]\nenabled = true\nfsync = "batch"\n'
              f'state_dir = "{state_dir}"\n')


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instruments", type=int, default=400, help="instruments (books), split over 2 nodes")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU measured after the orders")
    args = parser.parse_args(argv)
    if args.instruments < 2:
        parser.error("--instruments must be at least 2")
    work = Path(tempfile.mkdtemp(prefix="matchwire-instruments-"))
    path = work / "cluster.toml"
    path.write_text(config_text(args.instruments, free_port_block(100), work / "state"))
    started = time.monotonic()
    cluster = Cluster(load_config(path), str(path), log_dir=work / "logs")
    try:
        try:
            cluster.start(timeout=120)
        except RuntimeError as exc:  # a node refused (its open-files limit, say): the reason, not a traceback
            print(f"bench_instruments: {exc}", file=sys.stderr)
            return 1
        print(f"instruments={args.instruments} start_s={time.monotonic() - started:.1f}")
        symbols = list(cluster.config.instruments)
        with ClusterClient(cluster.config.client_endpoint(), name="instruments") as client:
            sent = time.monotonic()
            for number, symbol in enumerate(symbols, 1):
                client.new_order(symbol, number, "A1", "buy", 100, price=1_000_000)
            accepted = 0
            while accepted < len(symbols) and time.monotonic() - sent < 30:
                accepted += sum(isinstance(event, Accepted) for event, _ in client.poll(0.2))
            print(f"accepted={accepted}/{len(symbols)} seconds={time.monotonic() - sent:.2f}")
        time.sleep(1.0)
        before = {name: _cpu_ticks(node.process.pid) for name, node in cluster.nodes.items()}
        time.sleep(args.idle)
        hz = os.sysconf("SC_CLK_TCK")
        for name, node in cluster.nodes.items():
            pid = node.process.pid
            idle = (_cpu_ticks(pid) - before[name]) / hz / args.idle * 100
            files = len(os.listdir(f"/proc/{pid}/fd"))
            print(f"node={name} rss_mb={_status(pid, 'VmRSS') // 1024} threads={_status(pid, 'Threads')} "
                  f"open_files={files} (estimated {open_files_needed(cluster.config, name)}) idle_cpu_pct={idle:.1f}")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
