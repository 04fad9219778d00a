"""``make bench-cluster``: end-to-end throughput and latency of a local cluster under open-loop load.

The load follows a fixed schedule (orders due at t0 + i/rate); each order carries its *scheduled*
send time, and latency is measured from that time to the first report, so a generator that
falls behind shows up as latency instead of hiding queueing (coordinated omission avoided).
Runs the same load against 1 and 2 book nodes and reports the scaling ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

from actors.client import ClusterClient
from actors.cluster import Cluster
from actors.config import load_config
from actors.demo import LATENCY_MAX_US, new_latency_histogram
from actors.metrics import histogram_delta, histogram_quantile
from actors.ports import free_port_block
from exchange.orders import CancelOrder, NewOrder, Side, TimeInForce
from exchange.wire import (
    ORDER,
    REASON_CODES,
    REASONS_BY_CODE,
    REPORT,
    REPORT_SIZE,
    EventKind,
    command_to_record,
)

SYMBOLS = ("AAPL", "MSFT", "GOOG", "TSLA")


BENCH_PASSWORD = "bench"
BENCH_USER = "BENCH"  # the OUCH user of the bench cluster


# Where the actors run (--placement): "per-role" is the embedded default's shape (gateway, risk, book and
# market-data nodes; --book-nodes splits the books); the others put roles together in one process, where
# their actors talk through pykka instead of ZeroMQ.
_BOOKS = ["book/AAPL", "book/MSFT", "book/GOOG", "book/TSLA"]
PLACEMENTS: dict[str, list[tuple[str, list[str]]]] = {
    "gateway+risk": [("front", ["gateway/0", "risk/0", "risk/1"]), ("book1", _BOOKS), ("md", ["md/0"])],
    "gateway+risk+md": [("front", ["gateway/0", "risk/0", "risk/1", "md/0"]), ("book1", _BOOKS)],
    "single": [("all", ["gateway/0", "risk/0", "risk/1", *_BOOKS, "md/0"])],
}


def _nodes(book_nodes: int, placement: str) -> list[tuple[str, list[str]]]:
    if placement != "per-role":
        return PLACEMENTS[placement]
    books = [("book1", _BOOKS)] if book_nodes == 1 else [("book1", _BOOKS[:2]), ("book2", _BOOKS[2:])]
    return [("gateway", ["gateway/0"]), ("risk", ["risk/0", "risk/1"]), *books, ("md", ["md/0"])]


def _config_text(base: int, book_nodes: int, extra_cluster: str = "", fsync: str = "off",
                 placement: str = "per-role") -> str:
    """The bench cluster; ``fsync`` "off" runs without journals, else journals with that fsync policy."""
    nodes = "".join(f'[[node]]\nname = "{name}"\nactors = {json.dumps(actors)}\n\n'
                    for name, actors in _nodes(book_nodes, placement))
    instruments = "".join(f'[[instrument]]\nsymbol = "{s}"\ntick_size = 1\n\n' for s in SYMBOLS)
    accounts = "".join(f'[[account]]\nname = "B{i}"\n\n' for i in range(8))
    from exchange.accounts import hash_password

    accounts += (f'[[user]]\nname = "{BENCH_USER}"\npassword_hash = "{hash_password(BENCH_PASSWORD, n=1 << 10)}"\n'
                 f'accounts = [{", ".join(repr(f"B{i}").replace(chr(39), chr(34)) for i in range(8))}]\n\n'
                 '[risk.defaults]\nmax_open_orders = 10000000\norders_per_second = 10000000\nburst = 10000000\n\n')
    if fsync != "off":
        accounts += f'[durability]\nenabled = true\nfsync = "{fsync}"\n\n'

    return f"""[cluster]
name = "bench"
base_port = {base}
control_port = {base + 90}
client_port = {base + 91}
{extra_cluster}

{nodes}{instruments}{accounts}"""


def latency_histogram(latencies_ns: list[int]) -> dict:
    """HdrHistogram (1 us .. 1 h, 3 significant digits) of latencies: percentile ladder and the encoded histogram."""
    histogram = new_latency_histogram()
    for value in latencies_ns:
        histogram.record_value(min(max(1, value // 1000), LATENCY_MAX_US))
    count = histogram.get_total_count()
    ladder = [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0]
    # A percentile finer than one sample in the run is not a measurement: stop the ladder there.
    ladder = [p for p in ladder if p in (0.0, 100.0) or count * (100 - p) / 100 >= 1 - 1e-9]
    return {"unit": "us", "count": count,
            "percentiles": [[p, histogram.get_value_at_percentile(p)] for p in ladder],
            "hdr": histogram.encode().decode("ascii") if count else ""}


def _zmq_plan(total: int, seed: int) -> list[bytes]:
    """The order records of a run, made before it starts (the choices never depend on answers): at send time
    only the scheduled time is written in, so the load generator takes little of the CPU it measures."""
    rng = random.Random(seed)
    live: list[tuple[str, int]] = []
    next_id = 1
    records = []
    for _ in range(total):
        roll = rng.random()
        if roll < 0.45 or not live:
            symbol = rng.choice(SYMBOLS)
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            price = 10_000 - rng.randint(1, 50) if side is Side.BUY else 10_000 + rng.randint(1, 50)
            records.append(command_to_record(NewOrder(symbol, next_id, f"B{next_id % 8}", side, price, 100)))
            live.append((symbol, next_id))
            next_id += 1
        elif roll < 0.9:
            symbol, order_id = live.pop(rng.randrange(len(live)))
            records.append(command_to_record(CancelOrder(symbol, order_id)))
        else:
            symbol = rng.choice(SYMBOLS)
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            price = 10_060 if side is Side.BUY else 9_940
            records.append(command_to_record(NewOrder(symbol, next_id, f"B{next_id % 8}", side, price, 100,
                                                      tif=TimeInForce.IOC)))
            next_id += 1
    return records


# Where a report's kind, reason and trace time sit (exchange/wire.py REPORT), read in place by the load loop.
_TRACE_AT = REPORT.offset_of("trace_ns") // 8
_REASON_AT = REPORT.offset_of("reason") // 8
_ORDER_TRACE_AT = ORDER.offset_of("trace_ns") // 8
_ACCEPTED, _REJECTED, _CANCELLED = int(EventKind.ACCEPTED), int(EventKind.REJECTED), int(EventKind.CANCELLED)
_USER = REASON_CODES["user"]


def is_answer(payload: bytes, offset: int = 0) -> bool:
    """Whether the report at ``offset`` answers a command: accepted, rejected, or the cancel of a user's cancel
    (an IOC remainder's cancel follows its Accepted and answers nothing)."""
    kind = payload[offset]
    return kind == _ACCEPTED or kind == _REJECTED or (kind == _CANCELLED and payload[offset + _REASON_AT] == _USER)


def run_load(endpoint: str, rate: float, seconds: float, seed: int = 7, send_tick_us: float = 0.0) -> dict:
    """Offer ``rate`` commands/s for ``seconds``; returns achieved rate and latency percentiles (us).

    ``send_tick_us``: the sender wakes at most this often and sends every order due by then as one message (0: a
    message per order). Each order's latency still counts from its own scheduled time, so the wait is measured.
    """
    client = ClusterClient(endpoint, name=f"bench-{os.getpid()}-{rate:.0f}", send_hwm=1_000_000)
    latencies: list[int] = []
    answered = 0
    busy = 0
    rejected: dict[str, int] = {}
    total = int(rate * seconds)
    plan = _zmq_plan(total, seed)
    interval_ns = int(1e9 / rate)
    trace = struct.Struct("<Q").pack
    unpack_trace = struct.Struct("<Q").unpack_from
    first, rest = _ORDER_TRACE_AT, _ORDER_TRACE_AT + 8
    start = time.perf_counter_ns() + 20_000_000
    sent = 0
    last_answer = start
    last_send = 0
    messages = 0  # client messages sent (one per order without a send tick)
    tick_ns = int(send_tick_us * 1000)

    def read(timeout: float) -> None:
        nonlocal answered, last_answer
        for payload in client.poll_records(timeout):
            now = time.perf_counter_ns()
            for offset in range(0, len(payload), REPORT_SIZE):
                if is_answer(payload, offset):
                    latencies.append(now - unpack_trace(payload, offset + _TRACE_AT)[0])
                    answered += 1
                    last_answer = now
                    if payload[offset] == _REJECTED:  # an answer, but not a trade: overload shows as "busy"
                        reason = REASONS_BY_CODE.get(payload[offset + _REASON_AT], "?")
                        rejected[reason] = rejected.get(reason, 0) + 1

    try:
        while sent < total:
            now = time.perf_counter_ns()
            if now - last_send >= tick_ns:
                due = min(total, (now - start) // interval_ns + 1) if now >= start else 0
                if due > sent:
                    last_send = now
                    messages += 1
                pending = client.pending  # flush replaces the list
                while sent < due:
                    record = plan[sent]
                    pending.append(record[:first] + trace(start + sent * interval_ns) + record[rest:])
                    sent += 1
                if not client.flush():
                    busy += 1
            # Wait in the socket until the next order is due (to the microsecond: no spinning).
            next_send = max(start + sent * interval_ns, last_send + tick_ns) if sent < total else 0
            read(min(max((next_send - time.perf_counter_ns()) / 1e9, 0.0), 0.002))
        deadline = time.monotonic() + 10
        while answered < sent and time.monotonic() < deadline:
            read(0.05)
        elapsed = (time.perf_counter_ns() - start) / 1e9 if answered < sent else (last_answer - start) / 1e9
    finally:
        client.close()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000 if latencies else float("nan")

    return {"offered": rate, "sent": sent, "answered": answered, "achieved": answered / elapsed,
            "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99), "p999_us": pct(0.999),
            "max_us": latencies[-1] / 1000 if latencies else float("nan"), "client_busy": busy,
            "client_messages": messages,
            "rejected": rejected, "latency": latency_histogram(latencies)}


def ouch_plan(total: int, seed: int, first_ref: int = 1) -> list[tuple[tuple[str, int], bytes]]:
    """The OUCH messages of a run, made before it starts, with the key of the answer each waits for: the mix
    of :func:`_zmq_plan` (45 % new orders resting near 10,000, 45 % cancels of resting ones, 10 % IOC takers),
    seeded, UserRefNums from ``first_ref`` on. Made up front, as :func:`_zmq_plan`, and shared with the
    pipeline bench's OUCH mode (``actors.bench_pipeline --client ouch``)."""
    from exchange import ouch

    rng = random.Random(seed)
    live: list[int] = []
    plan: list[tuple[tuple[str, int], bytes]] = []
    ref = first_ref
    encode = ouch.encode_inbound
    for _ in range(total):
        roll = rng.random()
        if roll < 0.45 or roll >= 0.9 or not live:
            ioc = roll >= 0.9
            side = "B" if rng.random() < 0.5 else "S"
            if ioc:
                price = 10_060 if side == "B" else 9_940
            else:
                price = 10_000 - rng.randint(1, 50) if side == "B" else 10_000 + rng.randint(1, 50)
            plan.append((("O", ref), encode("O", user_ref_num=ref, side=side, quantity=100,
                                            symbol=rng.choice(SYMBOLS), price=price,
                                            time_in_force="3" if ioc else "0", display="Y", capacity="A",
                                            inter_market_sweep_eligibility="N", cross_type="N", cl_ord_id="",
                                            options={"firm": f"B{ref % 8}"})))
            if not ioc:
                live.append(ref)
            ref += 1
        else:
            cancelled = live.pop(rng.randrange(len(live)))
            plan.append((("X", cancelled), encode("X", user_ref_num=cancelled, quantity=0)))
    return plan


def ouch_answer_key(message: dict) -> tuple[str, int | None]:
    """The plan key (:func:`ouch_plan`) an outbound OUCH message would answer: a cancel's by Canceled or Cancel
    Reject, an order's by anything else with its UserRefNum; only the first message for a key answers."""
    return ("X", message["user_ref_num"]) if message["type"] in "CI" else ("O", message.get("user_ref_num"))


def run_load_ouch(address: tuple[str, int], rate: float, seconds: float, seed: int = 7) -> dict:
    """The same open-loop schedule as :func:`run_load`, through OUCH 5.0 over SoupBinTCP 4.0."""
    from actors.ouch_client import OuchClient
    from exchange import ouch

    client = OuchClient(address[0], address[1], BENCH_USER, BENCH_PASSWORD, next_seq=0)
    client.sync_user_ref_num()
    total = int(rate * seconds)
    plan = ouch_plan(total, seed, client.next_user_ref_num)
    client.next_user_ref_num += sum(1 for (kind, _), _ in plan if kind == "O")
    scheduled_of: dict[tuple[str, int | None], int] = {}
    latencies: list[int] = []
    interval_ns = int(1e9 / rate)
    start = time.perf_counter_ns() + 20_000_000
    sent = answered = 0
    last_answer = start
    rejected: dict[str, int] = {}

    def read(timeout: float) -> None:
        nonlocal answered, last_answer
        for message in client.messages(timeout):
            scheduled = scheduled_of.pop(ouch_answer_key(message), None)
            if scheduled is not None:
                now = time.perf_counter_ns()
                latencies.append(now - scheduled)
                answered += 1
                last_answer = now
                if message["type"] == "J":
                    code = message.get("reason")
                    reason = ouch.matchwire_reason("J", code) or f"ouch_{code}"
                    rejected[reason] = rejected.get(reason, 0) + 1
            timeout = 0.0

    try:
        while sent < total:
            now = time.perf_counter_ns()
            due = min(total, (now - start) // interval_ns + 1) if now >= start else 0
            payloads = []
            while sent < due:
                key, payload = plan[sent]
                scheduled_of[key] = start + sent * interval_ns
                payloads.append(payload)
                sent += 1
            if payloads:
                client.send_many(payloads)
            wait = (start + sent * interval_ns - time.perf_counter_ns()) / 1e9
            read(min(max(wait, 0.0), 0.002))
        deadline = time.monotonic() + 10
        while scheduled_of and time.monotonic() < deadline:
            read(0.05)
    finally:
        client.close()
    elapsed = (last_answer - start) / 1e9
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000 if latencies else float("nan")

    return {"offered": rate, "sent": sent, "answered": answered, "achieved": answered / max(elapsed, 1e-9),
            "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99), "p999_us": pct(0.999),
            "max_us": latencies[-1] / 1000 if latencies else float("nan"), "rejected": rejected,
            "latency": latency_histogram(latencies)}


# The stages of an order's way, in order, by where a batch is taken: (stage, actor kind, histogram).
_STAGES = (("gateway", "gateway/", "age_orders_ns"), ("risk", "risk/", "age_orders_ns"),
           ("book", "book/", "age_orders_ns"), ("answer", "gateway/", "age_reports_ns"),
           ("md", "md/", "age_reports_ns"))


def _stage_ages(cluster: Cluster) -> dict[str, dict]:
    """Per stage, every actor's histogram of record ages on arrival (see actors/base.py), added up."""
    out: dict[str, dict] = {}
    for stage, prefix, key in _STAGES:
        counts: list[int] = []
        for node in cluster.nodes.values():
            for actor, stats in ((node.stats or {}).get("actors") or {}).items():
                hist = stats.get(key) if actor.startswith(prefix) and isinstance(stats, dict) else None
                for i, n in enumerate((hist or {}).get("counts", [])):
                    if i >= len(counts):
                        counts.append(0)
                    counts[i] += n
        if counts:
            out[stage] = {"counts": counts}
    return out


def _fsyncs(cluster: Cluster) -> dict[str, int]:
    """Per node, the fsyncs of its actors' journals so far (from its last statistics report)."""
    return {name: sum(stats.get("journal_fsyncs", 0) for stats in ((node.stats or {}).get("actors") or {}).values()
                      if isinstance(stats, dict))
            for name, node in cluster.nodes.items()}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gc_totals(stats: dict | None) -> tuple[int, float]:
    """(collections, milliseconds collecting) of a node so far, from its last statistics report."""
    gc_stats = (stats or {}).get("gc") or {}
    return sum(gc_stats.get("collections", ())), sum(gc_stats.get("total_ms", ()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="end-to-end cluster throughput and latency (open loop)")
    parser.add_argument("--rates", help="offered commands/s, comma list (default 5000,10000,25000,50000,100000; "
                                        "--quick 1000)")
    parser.add_argument("--seconds", type=float, help="seconds per rate (default 3; --quick 1)")
    parser.add_argument("--book-nodes", default="1,2", help="topologies to run")
    parser.add_argument("--client", help="load through OUCH/SoupBinTCP, the ZeroMQ client API, or both (the "
                                         "difference is the gateway's added cost); default ouch,zmq; --quick zmq")
    parser.add_argument("--fsync", default="off",
                        help="comma list of book durability settings: off (no journal), or journals with fsync "
                             "none, batch or always (docs/durability.md)")
    parser.add_argument("--transport", choices=("tcp", "ipc"), default="tcp",
                        help="how the nodes talk to each other (default tcp, as the embedded configuration)")
    parser.add_argument("--placement", choices=("per-role", *PLACEMENTS), default="per-role",
                        help="which actors share a node (process): per-role (default, as the embedded configuration; "
                             "--book-nodes applies), or roles together (their actors talk through pykka)")
    parser.add_argument("--send-tick-us", type=float, default=0.0,
                        help="ZeroMQ clients: send the orders due as one message at most every this many us (default "
                             "0: a message per order); latency still counts from each order's scheduled time")
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (see the defaults above)")
    parser.add_argument("--json", metavar="FILE", help="also write every run as JSON (with HdrHistogram latencies)")
    args = parser.parse_args(argv)
    if args.send_tick_us < 0:
        parser.error(f"--send-tick-us must be 0 or more, got {args.send_tick_us:g}")
    # Explicit values win over --quick's.
    args.rates = args.rates or ("1000" if args.quick else "5000,10000,25000,50000,100000")
    args.seconds = args.seconds or (1.0 if args.quick else 3.0)
    args.client = args.client or ("zmq" if args.quick else "ouch,zmq")
    rates = [float(r) for r in args.rates.split(",")]
    policies = args.fsync.split(",")
    for policy in policies:
        if policy not in ("off", "none", "batch", "always"):
            parser.error(f"--fsync: {policy!r} is not off, none, batch or always")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(f"# bench-cluster: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    best: dict[tuple[str, int, str], float] = {}
    runs: list[dict] = []
    for policy in policies:
        # The durability setting is only printed when asked for: the default lines stay as they were.
        tag = f"fsync={policy} " if policy != "off" else ""
        if args.placement != "per-role":
            tag += f"placement={args.placement} "
        for book_nodes in [int(n) for n in args.book_nodes.split(",")] if args.placement == "per-role" else [1]:
            work = Path(tempfile.mkdtemp(prefix="matchwire-bench-"))
            path = work / "cluster.toml"
            transport = f'transport = "{args.transport}"\nipc_dir = "{work / "ipc"}"' if args.transport == "ipc" else ""
            path.write_text(_config_text(free_port_block(100), book_nodes, transport, fsync=policy,
                                         placement=args.placement))
            config = load_config(path)
            cluster = Cluster(config, str(path), log_dir=work / "logs")
            finished = False
            try:
                cluster.start()
                for client in args.client.split(","):
                    for rate in rates:
                        cluster.pump(0)
                        before = {n: _cpu_seconds(p.process.pid) for n, p in cluster.nodes.items()}
                        gc_before = {n: _gc_totals(p.stats) for n, p in cluster.nodes.items()}
                        ages_before = _stage_ages(cluster)
                        fsyncs_before = _fsyncs(cluster)
                        bench_cpu = time.process_time()
                        if client == "ouch":
                            result = run_load_ouch(config.ouch_address(), rate, args.seconds)
                        else:
                            result = run_load(config.client_endpoint(), rate, args.seconds,
                                              send_tick_us=args.send_tick_us)
                        cpu = {n: (_cpu_seconds(p.process.pid) - before[n]) * 1e6 / max(result["sent"], 1)
                               for n, p in cluster.nodes.items()}
                        cpu["client"] = (time.process_time() - bench_cpu) * 1e6 / max(result["sent"], 1)
                        time.sleep(1.1)  # the nodes' next statistics report covers the whole run
                        cluster.pump(0)
                        gc_ms = {n: _gc_totals(p.stats)[1] - gc_before[n][1] for n, p in cluster.nodes.items()}
                        # What the group commit costs: fsyncs per order, per node (none without journals).
                        fsyncs = {n: (v - fsyncs_before[n]) / max(result["sent"], 1)
                                  for n, v in _fsyncs(cluster).items()} if policy in ("batch", "always") else {}
                        ages = {stage: histogram_delta(hist, ages_before.get(stage) or None)
                                for stage, hist in _stage_ages(cluster).items()}
                        # None where nothing was measured (OUCH orders reach the gateway outside batches).
                        age_us = {stage: [None if (v := histogram_quantile(h, q)) is None else round(v / 1000)
                                          for q in (0.5, 0.99)] for stage, h in ages.items()}
                        # The longest pause of any node since the cluster started (reports reset their own max).
                        gc_max = max((p.stats or {}).get("gc", {}).get("max_us_ever", 0)
                                     for p in cluster.nodes.values())
                        print(f"{tag}book_nodes={book_nodes} client={client} offered={rate:.0f} "
                              f"achieved={result['achieved']:.0f} answered={result['answered']}/{result['sent']} "
                              f"p50_us={result['p50_us']:.0f} p90_us={result['p90_us']:.0f} "
                              f"p99_us={result['p99_us']:.0f} p999_us={result['p999_us']:.0f} "
                              f"max_us={result['max_us']:.0f} cpu_us_per_order="
                              + ",".join(f"{n}:{v:.0f}" for n, v in cpu.items())
                              + " gc_ms=" + ",".join(f"{n}:{v:.1f}" for n, v in gc_ms.items())
                              + f" gc_max_pause_us={gc_max}"
                              + (" fsyncs_per_order=" + ",".join(f"{n}:{v:.2f}" for n, v in fsyncs.items())
                                 if fsyncs else "")
                              + " arrival_age_p50/p99_us="
                              + ",".join(f"{stage}:{p50}/{p99}" for stage, (p50, p99) in age_us.items()
                                         if p50 is not None)
                              + (f" client_messages={result['client_messages']}" if "client_messages" in result
                                 else ""), flush=True)
                        sustained = result["answered"] == result["sent"] and result["achieved"] >= 0.95 * rate
                        runs.append({"fsync": policy, "book_nodes": book_nodes, "client": client, **result,
                                     "sustained": sustained, "cpu_us_per_order": cpu, "gc_ms": gc_ms,
                                     "gc_max_pause_us": gc_max, "arrival_age_us": age_us,
                                     "fsyncs_per_order": fsyncs})
                        if sustained:
                            key = (policy, book_nodes, client)
                            best[key] = max(best.get(key, 0.0), result["achieved"])
                finished = True
            finally:
                codes = cluster.stop()
                if finished and not cluster.events and all(code == 0 for code in codes.values()):
                    shutil.rmtree(work, ignore_errors=True)  # a clean run leaves nothing behind (one per run, else)
                else:
                    # Journals are only bulk: the logs stay for a post-mortem.
                    shutil.rmtree(work / "logs" / "state", ignore_errors=True)
                    print(f"# the nodes' logs of this cluster are kept in {work / 'logs'}", file=sys.stderr, flush=True)
    for (policy, nodes, client), rate in sorted(best.items()):
        tag = f"fsync={policy} " if policy != "off" else ""
        print(f"{tag}book_nodes={nodes} client={client} max_sustained_per_s={rate:.0f}")
    for policy in policies:
        tag = f"fsync={policy} " if policy != "off" else ""
        for client in args.client.split(","):
            if (policy, 1, client) in best and (policy, 2, client) in best:
                print(f"{tag}client={client} scaling_1_to_2_book_nodes="
                      f"{best[(policy, 2, client)] / best[(policy, 1, client)]:.2f}")
    if args.json:
        import json
        import math

        def clean(value: object) -> object:
            # JSON has no NaN: a run with no answers has no percentiles.
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        document = {"benchmark": "cluster", "date": started, "cores": os.cpu_count(),
                    "python": sys.version.split()[0], "rates": rates, "seconds": args.seconds,
                    "book_nodes": [int(n) for n in args.book_nodes.split(",")], "clients": args.client.split(","),
                    "fsync": policies, "runs": [clean(run) for run in runs],
                    "max_sustained": [{"fsync": p, "book_nodes": n, "client": c, "per_s": r}
                                      for (p, n, c), r in sorted(best.items())]}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
