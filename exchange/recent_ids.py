"""A window of the newest order ids per origin: what a duplicate rule needs to remember in a cluster.

An exchange's order ids are minted by its gateways, one increasing sequence each, and a gateway sends an order again
only while it has no answer for it (after its own restart, or a risk shard's or a book's). Those copies are among
its newest orders: while a gateway is down it mints none. So a window of each gateway's newest ids recognises every
copy, where a set of every id of the day grows with the day: in a book at 9,000 new orders a second, 7 GB by the
close, every journal snapshot writing it all out (docs/cluster.md "Memory over a trading day"). One window per
origin, so that a busy gateway does not push a quiet one's ids out.

Used by risk shards (the orders that passed) and by the cluster's books (``OrderBook.remember_ids``: the
engine's duplicate rule). The engine alone, without a window, remembers every id.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable

__all__ = ["RecentOrderIds", "ids_of_state"]


class RecentOrderIds:
    """The newest ``limit`` ids per origin (``origin_of(id)``, e.g. the gateway that minted it), in arrival order.

    ``in`` and ``add`` like a set; ``save_state``/``load_state`` for snapshots: per origin, its window as differences
    from one id to the next (mostly small numbers, so a snapshot stays small).
    """

    def __init__(self, limit: int, origin_of: Callable[[int], int]) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be a positive integer, not {limit!r}")
        self.limit = limit
        self.origin_of = origin_of
        self.ids: set[int] = set()
        self.by_origin: dict[int, collections.deque] = {}

    def __contains__(self, order_id: object) -> bool:
        return order_id in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, order_id: int) -> None:
        if order_id in self.ids:
            return
        self.ids.add(order_id)
        origin = self.origin_of(order_id)
        window = self.by_origin.get(origin)
        if window is None:
            window = self.by_origin[origin] = collections.deque()
        window.append(order_id)
        if len(window) > self.limit:
            self.ids.discard(window.popleft())

    def save_state(self) -> dict:
        return {str(origin): [b - a for a, b in zip([0, *window], window, strict=False)]
                for origin, window in self.by_origin.items()}

    def load_state(self, state: dict | list) -> None:
        """A state of :meth:`save_state`, or a plain list of ids (a snapshot that kept every id: each origin keeps
        its newest, taking larger ids as newer)."""
        self.ids, self.by_origin = set(), {}
        if isinstance(state, list):
            for order_id in sorted(state):
                self.add(order_id)
            return
        for origin, deltas in state.items():
            window = collections.deque(itertools.accumulate(deltas))
            while len(window) > self.limit:
                window.popleft()
            self.by_origin[int(origin)] = window
            self.ids.update(window)


def ids_of_state(state: dict | list) -> Iterable[int]:
    """The ids a snapshot's ``seen_ids`` holds, in either form."""
    if isinstance(state, list):
        return state
    return itertools.chain.from_iterable(itertools.accumulate(deltas) for deltas in state.values())
