"""hdl.itch.ItchDecoder on Icarus Verilog and Verilator (cocotb via sim.runner; bench:
sim/benches/test_itch_stream.py). Every record must equal the reference model (exchange.itch_record, fields
from the software decoder), and the records must rebuild exactly what the software feed decoder returns.

CI sizes (docs/itch-hdl.md): the first CI_MESSAGES messages of the shared sample file at full rate, plus
every type at every lane and corrupt, truncated and edge-case packets with idle input cycles and output
stalls. The whole file: ``make bench-itch-hdl``.
"""

import gzip
import random
import time

import pytest

from exchange.feed_decoder import SoftwareFeedDecoder
from exchange.itch_record import describe, records_to_feed, reference_records
from sim.itch_backend import (
    SAMPLE_FILE,
    edge_packets,
    every_type_packets,
    file_packets,
    random_packets,
    run_packets,
)
from sim.runner import SIMULATORS

CI_MESSAGES = 3000


def sample_prefix(messages: int) -> bytes:
    data = gzip.decompress(SAMPLE_FILE.read_bytes())
    pos = 0
    for _ in range(messages):
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
    return data[:pos]


def check(packets, run):
    for index, (packet, got) in enumerate(zip(packets, run.records, strict=True)):
        expected = reference_records(packet)
        if got != expected:
            raise AssertionError(f"{run.simulator}: packet {index} ({len(packet)} bytes):\n  gateware:\n    "
                                 + "\n    ".join(describe(got)) + "\n  reference:\n    "
                                 + "\n    ".join(describe(expected)))
        assert records_to_feed(got, packet) == SoftwareFeedDecoder().decode(packet)


@pytest.mark.skipif(not SAMPLE_FILE.exists(), reason=f"sample data not found at {SAMPLE_FILE}")
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_sample_file_at_full_rate(simulator):
    """The shared sample file's first CI_MESSAGES messages, cut into 1400-byte packets as a MoldUDP64
    publisher would: equal records, one beat per cycle, every record 4 cycles after its last byte."""
    started = time.monotonic()
    packets = [p for _, p in file_packets(sample_prefix(CI_MESSAGES))]
    run = run_packets(packets, simulator=simulator)
    check(packets, run)
    assert sum(len(r) for r in run.records) == CI_MESSAGES
    assert run.cycles == run.beats  # no input cycle lost
    assert set(run.latencies) == {4}
    print(f"{simulator}: {CI_MESSAGES} messages, {run.bytes} bytes in {run.cycles} cycles "
          f"({run.bytes_per_cycle:.2f} bytes/cycle), latency {max(run.latencies)} cycles, "
          f"{time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_every_type_corrupt_and_truncated_with_stalls(simulator):
    """Encoder-generated messages of all 23 types with their prefix at every lane; corrupt frames (wrong,
    zero and tiny lengths, unknown types, non-ASCII text), packets cut anywhere (in a prefix too), several
    frames starting in one beat; random idle input cycles and output stalls."""
    rng = random.Random(9)
    packets = every_type_packets(rng) + edge_packets(rng) + random_packets(rng, 80, corrupt=0.35, cut=0.3)
    rng.shuffle(packets)
    run = run_packets(packets, simulator=simulator, slots=4, idle_prob=0.25, stall_prob=0.4, seed=9)
    check(packets, run)
