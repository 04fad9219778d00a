"""Port blocks for local clusters come from below the ephemeral range and are free."""

import random
import socket

import pytest

from actors.ports import ephemeral_range, free_port_block


def test_block_is_free_and_below_the_ephemeral_range():
    low, high = ephemeral_range()
    assert 0 < low <= high
    base = free_port_block(20, rng=random.Random(7))
    assert base >= 10000 and base + 20 <= low
    held = []
    try:
        for port in range(base, base + 20):
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", port))
    finally:
        for s in held:
            s.close()


class _FirstTry(random.Random):
    """Starts the first probe at a given port, then behaves normally."""

    def __init__(self, first: int) -> None:
        super().__init__(1)
        self.first: int | None = first

    def randrange(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        if self.first is not None:
            first, self.first = self.first, None
            return first
        return super().randrange(*args, **kwargs)


def test_a_block_overlapping_a_taken_port_is_skipped():
    taken = socket.socket()
    taken.bind(("127.0.0.1", free_port_block(1)))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        base = free_port_block(5, rng=_FirstTry(port - 2))
        assert not base <= port < base + 5
    finally:
        taken.close()


@pytest.mark.parametrize("count", [0, -3])
def test_bad_count_is_refused(count):
    with pytest.raises(ValueError, match="count"):
        free_port_block(count)
