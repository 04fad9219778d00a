"""``make bench-pipeline``: CPU per order of each role's per-record work, without threads or ZeroMQ.

The cluster's ceiling on a small machine is the Python each order costs in the gateway, risk, book and
market-data actors (docs/benchmarks.md): the cluster bench measures it through process CPU times, which
mixes it with thread hand-offs, system calls and whatever else the machine runs. This bench takes the real
actors of the benchmark cluster's configuration, calls their ``handle_batch`` in one thread, and carries each
actor's buffered output to the actors it is addressed to, as the transport would: the same records, the same
code path, no hand-offs. What it prints is the per-record cost alone, per role, and it is repeatable to a few
percent, so a change to per-record code can be judged in one run.

    python -m actors.bench_pipeline [--orders N] [--batch B] [--rounds R] [--client zmq|ouch] [--json FILE]

The load is the cluster bench's (``actors.bench_cluster``): the same seeded mix of new orders, cancels and
IOC takers, sent by one binary-API client in batches of ``B`` orders, or with ``--client ouch`` by one OUCH 5.0
user in reads of ``B`` messages, as the SoupBinTCP thread hands them over (the gateway's sequenced answers go to
its SoupBinTCP store as in the cluster; the server thread that would send them on is not counted).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import zmq

from actors.backends import BackendOptions, book_factory
from actors.base import ClusterActor, NodeContext
from actors.bench_cluster import BENCH_USER, _config_text, _zmq_plan, is_answer, ouch_answer_key, ouch_plan
from actors.book import BookActor
from actors.config import ClusterConfig, load_config
from actors.gateway import GatewayActor, OuchInbound
from actors.marketdata import MarketDataActor
from actors.ports import free_port_block
from actors.risk import RiskActor
from actors.transport import Batch, LocalDirectory
from exchange import ouch
from exchange.wire import MSG_ORDERS

CLIENT_SESSION = b"bench-pipeline"
_ROLES = {"gateway": GatewayActor, "risk": RiskActor, "md": MarketDataActor}


class Pipeline:
    """The actors of a configuration, started in this process, wired by hand: ``run`` returns CPU seconds per
    role. Their outboxes open sockets (as ``on_start`` does) but nothing is sent through them."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.zmq = zmq.Context()
        self.actors: dict[int, ClusterActor] = {}
        for name in config.actor_names:
            kind, key = name.split("/", 1)
            context = NodeContext(config, config.actor_node[name].name, self.zmq, LocalDirectory())
            if kind == "book":
                actor: ClusterActor = BookActor(context, name, book_factory("software", BackendOptions())(
                    config.instruments[key]))
            elif kind in _ROLES:
                actor = _ROLES[kind](context, name)
            else:
                continue
            actor.on_start()
            self.actors[config.actor_index[name]] = actor
        self.roles = {index: config.actor_names[index].split("/", 1)[0] for index in self.actors}
        self.gateway = config.actor_index[config.gateways[0]]
        self.answers = 0  # reports that reached the client and answer a command

    def close(self) -> None:
        for actor in self.actors.values():
            if actor.outbox is not None:  # closed first: on_stop would flush it towards peers that are not there
                actor.outbox.close()
                actor.outbox = None
            actor.on_stop()  # the gateway's client port and SoupBinTCP threads, market data's sockets
        self.zmq.term()

    def _take_output(self, index: int, pending: deque) -> None:
        actor = self.actors[index]
        outbox = actor.outbox
        assert outbox is not None
        buffers, outbox.buffers, outbox.buffered = outbox.buffers, {}, 0
        for (destination, kind), records in buffers.items():
            if destination in self.actors:
                pending.append((destination, Batch(kind, index, b"".join(records), len(records))))
        to_clients = getattr(actor, "to_clients", None)
        if to_clients:
            actor.to_clients = {}  # type: ignore[attr-defined]
            for records in to_clients.values():
                self.answers += sum(map(is_answer, records))

    def run(self, batches: list[list[bytes]], client: str = "zmq") -> dict[str, float]:
        """Every batch through the gateway and on, to the end of what it causes, before the next."""
        cpu = dict.fromkeys(self.roles.values(), 0.0)
        pending: deque = deque()
        # This thread's CPU only: the gateway's SoupBinTCP thread, woken by its answers, is not per-record work.
        clock = time.thread_time
        gateway = self.actors[self.gateway]
        for orders in batches:
            if client == "ouch":
                # As the SoupBinTCP thread hands over what one read of a session brought.
                started = clock()
                gateway.on_other(OuchInbound(BENCH_USER, orders))
                cpu["gateway"] += clock() - started
                self._take_output(self.gateway, pending)
            else:
                # As the gateway's client port hands a client's message over (source -1: no actor).
                pending.append((self.gateway, Batch(MSG_ORDERS, -1, b"".join(orders), len(orders),
                                                    session=CLIENT_SESSION)))
            while pending:
                index, batch = pending.popleft()
                started = clock()
                self.actors[index].handle_batch(batch)
                cpu[self.roles[index]] += clock() - started
                self._take_output(index, pending)
        return cpu

    def ouch_answers(self, plan: list[tuple[tuple[str, int], bytes]]) -> int:
        """How many of the plan's messages the gateway answered, read back from its SoupBinTCP store."""
        gateway = self.actors[self.gateway]
        store = gateway.store  # type: ignore[attr-defined]
        waiting = {key for key, _ in plan}
        answered, seq = 0, 1
        while seq < store.next_seq(BENCH_USER):
            chunk = store.get_from(BENCH_USER, seq, 10_000)
            seq += len(chunk)
            for payload in chunk:
                key = ouch_answer_key(ouch.decode_outbound(payload))
                if key in waiting:
                    waiting.discard(key)
                    answered += 1
        return answered


def measure(orders: int, batch: int, seed: int = 7, client: str = "zmq") -> dict:
    """One run on a fresh pipeline: CPU microseconds per order per role, and what came back."""
    work = Path(tempfile.mkdtemp(prefix="matchwire-pipeline-"))
    try:
        path = work / "cluster.toml"
        path.write_text(_config_text(free_port_block(100), 1))
        pipeline = Pipeline(load_config(path))
        try:
            if client == "ouch":
                messages = ouch_plan(orders, seed)
                plan = [payload for _, payload in messages]
            else:
                plan = _zmq_plan(orders, seed)
            batches = [plan[i:i + batch] for i in range(0, orders, batch)]
            # As in the nodes (docs/cluster.md "Garbage collection"): no collection in the middle of a measurement.
            gc.collect()
            gc.disable()
            try:
                cpu = pipeline.run(batches, client)
            finally:
                gc.enable()
            if client == "ouch":
                pipeline.answers = pipeline.ouch_answers(messages)
            counters = pipeline.actors[pipeline.gateway].counters
            return {"orders": orders, "batch": batch, "client": client,
                    "us_per_order": {role: seconds * 1e6 / orders for role, seconds in cpu.items()},
                    "total_us_per_order": sum(cpu.values()) * 1e6 / orders,
                    "answered": pipeline.answers,
                    "client_rejects": {k: v for k, v in counters.items() if k.startswith("rejected_")}}
        finally:
            pipeline.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU per order of each role's per-record work (in one thread)")
    parser.add_argument("--orders", type=int, default=60_000, help="commands per round (default 60,000)")
    parser.add_argument("--batch", type=int, default=16, help="commands per client message (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a fresh pipeline; the best is kept")
    parser.add_argument("--client", choices=("zmq", "ouch"), default="zmq",
                        help="the orders come from a binary-API client (default) or an OUCH 5.0 user")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.batch < 1 or args.rounds < 1:
        parser.error("--orders, --batch and --rounds must be at least 1")
    print(f"# bench-pipeline: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    runs = [measure(args.orders, args.batch, client=args.client) for _ in range(args.rounds)]
    best = min(runs, key=lambda run: run["total_us_per_order"])
    roles = best["us_per_order"]
    print(("client=ouch " if args.client == "ouch" else "")
          + f"orders={best['orders']} batch={best['batch']} rounds={args.rounds} "
          f"total_us_per_order={best['total_us_per_order']:.1f} "
          + " ".join(f"{role}_us_per_order={value:.1f}" for role, value in roles.items())
          + f" one_core_orders_per_s={1e6 / best['total_us_per_order']:.0f}"
          + f" answered={best['answered']}/{best['orders']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(["python -m actors.bench_pipeline", *(argv or
                                                                     sys.argv[1:])]),
                                               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rounds": args.rounds,
                                               "best": best, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
