"""``matchwire admin``: operator requests to a running cluster's actors (JSON over ZeroMQ).

The request goes to the node hosting the actor (its inbound socket answers CONTROL messages);
nothing else of the cluster is involved, so admin works while the cluster is under load.
"""

from __future__ import annotations

import itertools
import json
import os
import time

import zmq

from actors.config import ClusterConfig
from exchange.layout import LayoutError
from exchange.wire import MessageKind, pack_header, unpack_header

_ids = itertools.count(1)


class AdminError(RuntimeError):
    """The cluster could not be asked, or did not answer."""


def admin_request(config: ClusterConfig, actor: str, request: dict, timeout: float = 5.0) -> dict:
    """Send ``request`` to ``actor`` and return its answer."""
    node = config.actor_node.get(actor)
    if node is None:
        raise AdminError(f"no actor {actor!r} in {config.source}")
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    try:
        socket.setsockopt(zmq.ROUTING_ID, f"admin@{os.getpid()}:{next(_ids)}".encode())
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.IMMEDIATE, 1)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(config.endpoint(node))
        header = pack_header(MessageKind.CONTROL, 1, 0, config.actor_index[actor], 0)
        body = json.dumps({"actor": actor, **request}).encode()
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.send_multipart([node.name.encode(), header, body], flags=zmq.NOBLOCK)
                break
            except zmq.ZMQError as exc:
                if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                    raise
                if time.monotonic() > deadline:
                    raise AdminError(f"node {node.name} at {config.endpoint(node)} is not reachable") from exc
                time.sleep(0.02)
        while time.monotonic() < deadline:
            if not socket.poll(50):
                continue
            frames = socket.recv_multipart()
            if len(frames) != 3:
                continue
            try:
                if unpack_header(frames[1])["kind"] is not MessageKind.CONTROL:
                    continue
                return json.loads(frames[2])
            except (LayoutError, ValueError):
                continue
        raise AdminError(f"{actor} on node {node.name} did not answer within {timeout:.0f} s")
    finally:
        socket.close(linger=0)
        context.term()


def risk_request(config: ClusterConfig, account: str, command: str, timeout: float = 5.0) -> dict:
    """A request to the risk shard that owns ``account``."""
    return admin_request(config, config.risk_shard(account), {"command": command, "account": account}, timeout)


def kill_and_wait(config: ClusterConfig, account: str, timeout: float = 10.0) -> dict:
    """Kill switch: refuse new orders, cancel all open ones, and wait until none is left."""
    answer = risk_request(config, account, "kill", timeout)
    if "error" in answer:
        return answer
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = risk_request(config, account, "status", timeout)
        if status.get("open_orders") == 0:
            return {**answer, "effective": True, "status": status}
        time.sleep(0.05)
    return {**answer, "effective": False, "status": risk_request(config, account, "status", timeout)}
