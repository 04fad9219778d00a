"""A node: one OS process hosting pykka actors, its inbound pump, and its supervisor.

``matchwire node --config FILE --name NODE`` runs one; ``matchwire run`` starts every node of
a configuration on this machine. A node reports to the launcher's control socket (JSON: ready,
statistics every second, failures) and exits non-zero when one of its actors fails: a dead
book is not silently restarted empty, it is reported and its instruments become unavailable.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import logging
import math
import os
import resource
import signal
import sys
import threading
import time

import pykka
import zmq

from actors.backends import BackendOptions, BackendUnavailable, book_factory
from actors.base import ActorFailed, ClusterActor, NodeContext, StatsReport
from actors.book import BookActor, book_peer_nodes
from actors.config import ClusterConfig, ConfigError, load_config, name_list
from actors.durable import StateLock, check_state_dir
from actors.feed import FeedHandlerActor
from actors.gateway import GatewayActor
from actors.marketdata import MarketDataActor
from actors.metrics import MetricsServer, start_node_metrics
from actors.risk import RiskActor
from actors.transport import HEARTBEAT_MS, Inbound, LocalDirectory, Tick, heartbeat_interval_ms

log = logging.getLogger("matchwire.node")

EXIT_ACTOR_FAILED = 70
EXIT_CONFIG = 78
TICK_SECONDS = 0.1
#: A node hosting more books than this ticks each of them once a second, a tenth of them on each tick, instead
#: of all of them ten times a second (a book with records held for a peer still gets every tick): ten thousand
#: ticks a second were a large part of what a node of a thousand books spent standing still.
MANY_BOOKS = 64
BOOK_TICK_TURNS = 10


class GcPauses:
    """How often and how long the garbage collector stopped this process (every thread waits for it).

    Counted per generation from ``gc.callbacks``; ``max_us`` is the longest pause since the last report,
    the figure a tail latency is made of.
    """

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.total_ns = [0, 0, 0]
        self.max_ns_by_generation = [0, 0, 0]  # since start
        self.max_ns = 0
        self.max_ns_ever = 0
        self.freezes = 0  # the node's periodic freezes (Node.run)
        self._started = 0
        self._frozen = 0
        self._frozen_at = -math.inf

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
            return
        elapsed = time.perf_counter_ns() - self._started
        generation = info.get("generation", 0)
        self.collections[generation] += 1
        self.total_ns[generation] += elapsed
        if elapsed > self.max_ns_by_generation[generation]:
            self.max_ns_by_generation[generation] = elapsed
        if elapsed > self.max_ns:
            self.max_ns = elapsed
        if elapsed > self.max_ns_ever:
            self.max_ns_ever = elapsed

    #: ``gc.get_freeze_count()`` walks every frozen object (CPython keeps them in a list): in a book node of a
    #: thousand books that was a sixth of its idle CPU when done every second. It is counted this often.
    FROZEN_COUNT_SECONDS = 10.0

    def report(self) -> dict:
        now = time.monotonic()
        if now - self._frozen_at >= self.FROZEN_COUNT_SECONDS:
            self._frozen, self._frozen_at = gc.get_freeze_count(), now
        out = {"collections": list(self.collections), "total_ms": [round(t / 1e6, 3) for t in self.total_ns],
               "max_us": round(self.max_ns / 1e3), "max_us_ever": round(self.max_ns_ever / 1e3),
               "max_us_by_generation": [round(t / 1e3) for t in self.max_ns_by_generation],
               "frozen": self._frozen, "freezes": self.freezes, "mode": gc_mode()}
        self.max_ns = 0
        return out


# Garbage collection for latency (docs/cluster.md "Garbage collection"). A full collection walks every
# live container object: with a book's tens of thousands of resting orders that stopped a book node for
# 36-100 ms (measured). So what exists once the node is up is frozen out of every later collection, and
# then, every tick (0.1 s), whatever survived since is frozen too (after a collection of the young
# generations, so cyclic garbage made meanwhile is freed first): a collection only ever walks the
# objects made since the last freeze. Frozen objects are still freed by reference counting; only a
# reference cycle that becomes garbage after it was frozen is never collected (the node's statistics
# show the frozen count). The young generation is collected every 50,000 net allocations instead of 700.
# MATCHWIRE_GC=default keeps Python's settings; MATCHWIRE_GC=thresholds only raises the thresholds.
GC_THRESHOLDS = (50_000, 20, 100)


def gc_mode() -> str:
    return os.environ.get("MATCHWIRE_GC", "freeze")


def tune_gc() -> bool:
    if gc_mode() == "default":
        return False
    watching, gc.callbacks[:] = gc.callbacks[:], []  # the start-up collection is not a pause of the running node
    gc.collect()
    gc.callbacks[:] = watching
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return True


class SupervisorActor(pykka.ThreadingActor):
    """The node's supervisor: gathers its actors' statistics, reports health and failures.

    Actors only ever *tell* it things; it never asks them, so nothing waits on anything.
    """

    FULL_STATS_SECONDS = 10.0

    def __init__(self, config: ClusterConfig, node: str, control_endpoint: str | None, fatal: threading.Event,
                 inbound: Inbound | None = None, gc_pauses: GcPauses | None = None) -> None:
        super().__init__()
        self.config = config
        self.node = node
        self.control_endpoint = control_endpoint
        self.fatal = fatal
        self.inbound = inbound
        self.actor_stats: dict[str, dict] = {}
        self.failures: list[dict] = []
        self.socket: zmq.Socket | None = None
        self.context: zmq.Context | None = None
        self.ready_sent = False
        self.started = time.monotonic()
        self.gc_pauses = gc_pauses or GcPauses()
        self.changed: set[str] = set()  # actors whose statistics came in since the last publish
        self.last_full = -math.inf

    def on_start(self) -> None:
        self.gc_pauses.install()
        if self.control_endpoint:
            self.context = zmq.Context.instance()
            self.socket = self.context.socket(zmq.PUSH)
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.setsockopt(zmq.SNDHWM, 100)
            self.socket.connect(self.control_endpoint)

    def on_stop(self) -> None:
        self.gc_pauses.remove()
        if self.socket is not None:
            self._send({"type": "stopped"})
            self.socket.close(linger=0)

    def _send(self, message: dict) -> None:
        if self.socket is None:
            return
        message.update({"node": self.node, "pid": os.getpid(), "time": time.time()})
        try:
            self.socket.send(json.dumps(message).encode(), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the launcher is behind; the next report supersedes this one

    def on_receive(self, message: object) -> object:
        if isinstance(message, StatsReport):
            self.actor_stats[message.actor] = message.stats
            self.changed.add(message.actor)
            self._maybe_ready()
        elif isinstance(message, ActorFailed):
            failure = {"actor": message.actor, "error": message.error}
            self.failures.append(failure)
            log.error("node %s: actor %s failed: %s", self.node, message.actor, message.error)
            self._send({"type": "failed", **failure})
            self.fatal.set()
        elif message == "publish":
            # Only the actors that reported since the last publish, and all of them every FULL_STATS_SECONDS (a
            # report the launcher missed is then made good): a node of a thousand books sent all their statistics
            # as JSON every second, a fifth of its CPU standing still. The launcher merges ("full": false).
            inbound = self.inbound.stats if self.inbound is not None else {}
            now = time.monotonic()
            full = now - self.last_full >= self.FULL_STATS_SECONDS
            if full:
                self.last_full = now
                actors = self.actor_stats
            else:
                actors = {name: self.actor_stats[name] for name in self.changed}
            self.changed = set()
            # cpu_s: the process's CPU time, every thread (the launcher shows each node's share of the cores).
            self._send({"type": "stats", "full": full, "actors": actors, "inbound": dict(inbound),
                        "ready": self.ready_sent, "gc": self.gc_pauses.report(), "cpu_s": time.process_time()})
        elif message == "stats":
            return dict(self.actor_stats)
        return None

    def _maybe_ready(self) -> None:
        if self.ready_sent:
            return
        node = self.config.node(self.node)
        if not all(actor in self.actor_stats for actor in node.actors):
            return
        down = {n for stats in self.actor_stats.values() for n in stats.get("peers_down", [])}
        if down and time.monotonic() - self.started < 15:
            return
        self.ready_sent = True
        self._send({"type": "ready", "peers_down": sorted(down)})


#: Files an actor keeps open besides its connections: its socket's mailbox, its journal and the journal's lock.
OPEN_FILES_PER_ACTOR = 3
#: For what cannot be counted from the configuration: client sessions, the metrics endpoint, snapshots being written.
OPEN_FILES_SPARE = 256


def node_connections(config: ClusterConfig, name: str) -> tuple[int, int]:
    """(outgoing, incoming) connections of node ``name``: one per local actor and node it sends to, one per actor
    elsewhere that sends to this node."""
    peers = {actor: book_peer_nodes(config, actor) if actor.startswith("book/")
             else [node.name for node in config.nodes if node.name != config.actor_node[actor].name]
             for actor in config.actor_names}
    outgoing = sum(len(peers[actor]) for actor in config.node(name).actors)
    incoming = sum(name in nodes for nodes in peers.values())
    return outgoing, incoming


def open_files_needed(config: ClusterConfig, name: str) -> int:
    """About how many files node ``name`` keeps open: per actor, its own files and a connection to each node it sends
    to; per actor elsewhere that sends to this node, the accepted connection. A node of 200 books had 1,221."""
    outgoing, incoming = node_connections(config, name)
    return OPEN_FILES_PER_ACTOR * len(config.node(name).actors) + outgoing + incoming + OPEN_FILES_SPARE


def ensure_open_files(config: ClusterConfig, name: str) -> None:
    """Raise this process's limit on open files as far as the node needs and may (the hard limit), or refuse to
    start, saying so: under a usual soft limit of 1,024 a node of some 170 books failed half-way through its start
    with "Too many open files"; its peers take a connection per book, so they need as many."""
    need = open_files_needed(config, name)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need * 2 if hard == resource.RLIM_INFINITY else min(hard, need * 2)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("node %s: open files limit raised from %d to %d (it needs about %d)", name, soft, target, need)
        soft = target
    if soft < need:
        raise ConfigError(f"node {name} needs about {need} open files (its {len(config.node(name).actors)} actors and "
                          f"their connections) and may open {soft} (`ulimit -n`; hard limit {hard}): raise the limit, "
                          "or spread the instruments over more nodes")


def start_actor(context: NodeContext, name: str, backend: str, link: str | None) -> pykka.ActorRef:
    """Start the actor for a configured name (its kind is the part before the slash)."""
    kind, key = name.split("/", 1)
    if kind == "book":
        factory = book_factory(backend, BackendOptions(link=link))
        return BookActor.start(context, name, factory(context.config.instruments[key]))
    classes: dict[str, type[ClusterActor]] = {"risk": RiskActor, "gateway": GatewayActor, "md": MarketDataActor,
                                              "feed": FeedHandlerActor}
    cls = classes.get(kind)
    if cls is None:
        raise ConfigError(f"actor {name!r}: no actor of kind {kind!r} can run yet")
    return cls.start(context, name)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies: no orphans, even on kill -9."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


class Node:
    """Everything one node process runs; usable in-process by tests as well."""

    def __init__(self, config: ClusterConfig, name: str, control_endpoint: str | None = None,
                 parent_pid: int | None = None) -> None:
        self.parent_pid = parent_pid
        self.config = config
        self.node = config.node(name)
        self.name = name
        self.control_endpoint = control_endpoint
        self.zmq_context = zmq.Context()
        self.local = LocalDirectory()
        self.fatal = threading.Event()
        self.stopping = threading.Event()
        self.refs: list[pykka.ActorRef] = []
        self.inbound: Inbound | None = None
        self.supervisor: pykka.ActorRef | None = None
        self.metrics: MetricsServer | None = None
        self.metrics_started = time.monotonic()
        self.gc_pauses: GcPauses | None = None
        self.state_locks: list[StateLock] = []
        self.ticks = 0
        self.tick_plan: list[tuple[pykka.ActorRef, int, int | None]] = []  # (ref, actor index, turn or None)

    def start(self) -> None:
        if self.config.transport == "ipc":
            os.makedirs(self.config.ipc_dir, exist_ok=True)
        ensure_open_files(self.config, self.name)
        # ZeroMQ refuses a context's socket beyond 1,023 by default ("Too many open files" whatever the process may
        # open): a node of 1,024 books could not start. One socket per actor, the pump's, the supervisor's and spare.
        self.zmq_context.set(zmq.MAX_SOCKETS, max(self.zmq_context.get(zmq.MAX_SOCKETS),
                                                  len(self.node.actors) + OPEN_FILES_SPARE))
        # One process per journal (each actor's directory locked), and journals that do not fit the configuration
        # any more refused, before anything replays them.
        check_state_dir(self.config, self.name, self.state_locks)
        outgoing, incoming = node_connections(self.config, self.name)
        self.heartbeat_ms = heartbeat_interval_ms(outgoing + incoming)
        if self.heartbeat_ms > HEARTBEAT_MS:
            log.info("node %s: %d connections: heartbeats every %.1f s", self.name, outgoing + incoming,
                     self.heartbeat_ms / 1000)
        self.inbound = Inbound(self.zmq_context, self.config, self.name, self.local, heartbeat_ms=self.heartbeat_ms,
                               backlog=max(100, incoming))
        self.gc_pauses = GcPauses()
        self.supervisor = SupervisorActor.start(self.config, self.name, self.control_endpoint, self.fatal,
                                                self.inbound, self.gc_pauses)
        many_books = sum(name.startswith("book/") for name in self.node.actors) > MANY_BOOKS
        context = NodeContext(self.config, self.name, self.zmq_context, self.local, self.supervisor,
                              stats_interval=0.25, many_books=many_books, heartbeat_ms=self.heartbeat_ms)
        for actor_name in self.node.actors:
            ref = start_actor(context, actor_name, self.node.backend, self.node.link)
            index = self.config.actor_index[actor_name]
            self.local.register(index, ref)
            self.refs.append(ref)
            turn = index % BOOK_TICK_TURNS if many_books and actor_name.startswith("book/") else None
            self.tick_plan.append((ref, index, turn))
        # Start reading only once every local actor can take its messages.
        self.inbound.start()
        self.inbound.ready.wait(5)
        if self.inbound.error is not None:
            raise RuntimeError(f"node {self.name}: cannot bind {self.config.endpoint(self.node, bind=True)}: "
                               f"{self.inbound.error}")
        # Prometheus endpoint ([metrics] in the configuration; see actors/metrics.py).
        self.metrics = start_node_metrics(self)

    def tick(self) -> None:
        tick = Tick()
        self.ticks += 1
        now_turn = self.ticks % BOOK_TICK_TURNS
        wants = self.local.wants_ticks
        for ref, index, turn in self.tick_plan:
            if turn is not None and turn != now_turn and index not in wants:
                continue
            try:
                ref.tell(tick)
            except pykka.ActorDeadError:
                self.fatal.set()

    def run(self) -> int:
        """Tick until told to stop or until an actor fails; returns the process exit code."""
        last_publish = 0.0
        parent = self.parent_pid
        freeze = gc_mode() == "freeze"
        while not self.stopping.is_set() and not self.fatal.is_set():
            time.sleep(TICK_SECONDS)
            self.tick()
            if freeze:
                # Each tick, so the collection before the freeze walks a tenth of a second of survivors:
                # ~1 ms at 20k orders/s in a book node, where once a second took ~10 ms (measured).
                gc.collect(1)
                gc.freeze()
                if self.gc_pauses is not None:
                    self.gc_pauses.freezes += 1
            now = time.monotonic()
            if now - last_publish >= 1.0 and self.supervisor is not None:
                last_publish = now
                self.supervisor.tell("publish")
            if parent is not None and os.getppid() != parent:
                log.error("node %s: launcher went away; stopping", self.name)
                break
        return EXIT_ACTOR_FAILED if self.fatal.is_set() else 0

    def stop(self, term_timeout: float = 5.0) -> bool:
        """Stop every part of the node; False if its ZeroMQ context could not be terminated in time."""
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        for ref in self.refs:
            try:
                ref.stop(timeout=5)
            except (pykka.ActorDeadError, pykka.Timeout):
                pass
        if self.inbound is not None:
            self.inbound.stopping.set()
            self.inbound.join(2)
        if self.supervisor is not None:
            try:
                self.supervisor.stop(timeout=2)
            except (pykka.ActorDeadError, pykka.Timeout):
                pass
        for lock in self.state_locks:  # the actors that wrote the journals have stopped
            lock.release()
        # term() waits for every socket to be closed. One left open by a part that died (an actor's own socket,
        # a thread killed by an exception) would keep a failed node alive, and its other threads (a client
        # listener) serving, instead of exiting so that the launcher can start it again.
        terminator = threading.Thread(target=self.zmq_context.term, name="zmq-term", daemon=True)
        terminator.start()
        terminator.join(term_timeout)
        if terminator.is_alive():
            log.error("node %s: sockets still open %.0f s after stopping; exiting without closing them",
                      self.name, term_timeout)
            return False
        return True


def main(config_path: str | None, name: str, control_endpoint: str | None, parent_pid: int | None = None,
         state_dir: str | None = None) -> int:
    """Entry point of ``matchwire node``."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s",
                        stream=sys.stderr)
    _die_with_parent()
    if parent_pid is not None and os.getppid() != parent_pid:
        # The launcher died before the death signal was armed.
        print(f"matchwire node {name}: launcher {parent_pid} is gone; not starting", file=sys.stderr)
        return 1
    try:
        config = load_config(config_path)
        if state_dir and not config.durability.state_dir:
            config.durability = dataclasses.replace(config.durability, state_dir=state_dir)
        if config.durability.enabled and not config.durability.state_dir:
            raise ConfigError(f"{config.source}: journals are on ([durability] enabled) but no state directory is "
                              "set: give [durability] state_dir, or --state-dir DIR (matchwire run sets one itself)")
        node = Node(config, name, control_endpoint, parent_pid)
    except (ConfigError, BackendUnavailable) as exc:
        print(f"matchwire node: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def request_stop(signum: int, frame: object) -> None:
        node.stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    # Ctrl-C in a terminal reaches every process of the foreground group: a node with a launcher leaves the
    # shutdown to it (demo traders first, then the nodes, by SIGTERM), instead of vanishing under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN if parent_pid is not None else request_stop)
    # A launcher starts its nodes with SIGINT blocked (actors/cluster.py _spawn): one sent before this point is
    # pending, and was just discarded by SIG_IGN.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        node.start()
    except (RuntimeError, BackendUnavailable, ConfigError) as exc:
        print(f"matchwire node {name}: {exc}", file=sys.stderr)
        node.stopping.set()
        node.stop()
        return EXIT_CONFIG
    tuned = tune_gc()
    log.info("node %s up: actors %s on %s%s", name, name_list(node.node.actors), config.endpoint(node.node),
             "" if tuned else " (garbage collector untuned)")
    code = node.run()
    clean = node.stop()
    log.info("node %s stopped (exit %d)", name, code)
    if not clean:
        # Threads still holding sockets would keep the interpreter from exiting.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code or EXIT_ACTOR_FAILED)
    return code
