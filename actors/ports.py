"""Free TCP port blocks for local clusters (tests, benchmarks, ``matchwire run`` on a busy machine)."""

from __future__ import annotations

import random
import socket

__all__ = ["ephemeral_range", "free_port_block"]


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for automatically assigned (outgoing) ports; Linux's default if unreadable."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port_block(count: int, host: str = "127.0.0.1", rng: random.Random | None = None) -> int:
    """A base port with ``count`` consecutive ports after it that are free now.

    The block is taken below the kernel's ephemeral range: a port in that range can be handed to any
    outgoing connection (ZeroMQ's own connects included) between this probe and the node's bind, and
    a node restarted after a crash would then find its port taken. Below it, only another process
    probing the same way can collide, and the random start makes that unlikely.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    rng = rng or random.Random()
    low_ephemeral, _ = ephemeral_range()
    low, high = 10000, min(low_ephemeral, 65536) - count
    if high <= low:
        raise RuntimeError(f"no room for {count} ports below the ephemeral range starting at {low_ephemeral}")
    for _ in range(200):
        base = rng.randrange(low, high)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no block of {count} free ports found below {low_ephemeral}")
