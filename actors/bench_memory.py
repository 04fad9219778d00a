"""What grows over a trading day: ``python -m actors.bench_memory --runs 8 [--client ouch]``.

Starts the bench cluster (one book node; no journals unless ``--fsync`` names a policy; the workload of
``actors.bench_cluster``: 45 % new orders, 45 % cancels, 10 % crossing IOCs) and drives it with one open-loop run
after another on the same cluster, printing after each the resident memory of every node and what the gateway and a
risk shard hold. A node whose memory keeps growing while its live orders do not keeps something per order it should
not. Figures and what they mean: docs/cluster.md "Memory over a trading day".
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from actors.admin import admin_request
from actors.bench_cluster import _config_text, run_load, run_load_ouch
from actors.bench_instruments import _status
from actors.cluster import Cluster
from actors.config import load_config
from actors.ports import free_port_block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="runs, one after another on one cluster")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--rate", type=float, default=20_000, help="commands a second (open loop)")
    parser.add_argument("--client", choices=("zmq", "ouch"), default="zmq", help="the binary API or OUCH")
    parser.add_argument("--fsync", choices=("off", "none", "batch", "always"), default="off",
                        help="journals with this fsync policy (off: none, the gateway's SoupBinTCP streams in memory)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0 or args.rate <= 0:
        parser.error("--runs, --seconds and --rate must be positive")
    with tempfile.TemporaryDirectory(prefix="matchwire-memory-") as directory:
        path = Path(directory) / "cluster.toml"
        path.write_text(_config_text(free_port_block(100), 1, fsync=args.fsync))
        config = load_config(path)
        cluster = Cluster(config, str(path), log_dir=Path(directory) / "logs")
        try:
            cluster.start()
            for run in range(1, args.runs + 1):
                if args.client == "ouch":
                    result = run_load_ouch(config.ouch_address(), args.rate, args.seconds, seed=7 + run)
                else:
                    result = run_load(config.client_endpoint(), args.rate, args.seconds, seed=7 + run)
                cluster.pump(0)
                _report(cluster, run, run * round(args.rate * args.seconds), result)
        finally:
            cluster.stop()
    return 0


def _report(cluster: Cluster, run: int, offered: int, result: dict) -> None:
    memory = " ".join(f"{name}={_status(node.process.pid, 'VmRSS') // 1024}" for name, node in cluster.nodes.items())
    gateway = admin_request(cluster.config, "gateway/0", {"command": "stats"})["stats"]
    risk = admin_request(cluster.config, "risk/0", {"command": "stats"})["stats"]
    soup = gateway.get("soup_messages_in_memory")
    rejected = ",".join(f"{reason}:{n}" for reason, n in sorted(result["rejected"].items())) or "none"
    print(f"run={run} offered={offered} achieved_per_s={result['achieved']:.0f} rss_mb: {memory} "
          f"gateway_live_orders={gateway.get('live_orders')} risk0_open_orders={risk.get('open_orders')}"
          f"{'' if soup is None else f' soup_messages_in_memory={soup}'} rejected={rejected}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
