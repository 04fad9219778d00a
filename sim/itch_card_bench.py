"""Throughput of the ITCH decoder card behind the feed handler (``make bench-itch-card``).

Serves the decoder card (``matchwire card sim --design itch``), feeds the sample file's first messages
as MoldUDP64 packets to a ``FeedHandler`` on the ``card`` decoder, and one on the software decoder, and
prints one line: messages per second through the card and whether the handlers' stats agree.

``python -m sim.itch_card_bench [--simulator verilator|icarus] [--messages N] [--file FILE]``
"""

from __future__ import annotations

import argparse
import gzip
import time
from collections.abc import Sequence
from pathlib import Path

from exchange.feed_decoder import FeedHandler, SoftwareFeedDecoder, decoder_for
from exchange.moldudp64 import packetize
from sim.card_sim import CardSimProcess
from sim.itch_backend import SAMPLE_FILE

__all__ = ["first_messages", "main"]


def first_messages(path: Path, count: int) -> list[bytes]:
    """The first ``count`` messages (without their length prefixes) of an ITCH file, gzip or plain."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        data = f.read(count * 60)  # no ITCH message is longer than 50 bytes plus its prefix
    out, pos = [], 0
    while len(out) < count and pos + 2 <= len(data):
        n = int.from_bytes(data[pos : pos + 2], "big")
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement; exit code 1 when the card's handler disagrees with the software one."""
    parser = argparse.ArgumentParser(prog="python -m sim.itch_card_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--file", default=str(SAMPLE_FILE))
    args = parser.parse_args(argv)
    messages = first_messages(Path(args.file), args.messages)
    packets = list(packetize("SAMPLE0001", 1, messages, 1400))
    with CardSimProcess(simulator=args.simulator, design="itch") as sim:
        decoder = decoder_for("card", link=sim.url, timeout=10.0)
        card = FeedHandler(decoder, session="SAMPLE0001")
        started = time.monotonic()
        for packet in packets:
            card.on_packet(packet, 0.0)
        seconds = time.monotonic() - started
        status = decoder.card.status()
        decoder.close()
    software = FeedHandler(SoftwareFeedDecoder(), session="SAMPLE0001")
    for packet in packets:
        software.on_packet(packet, 0.0)
    same = card.all_stats() == software.all_stats()
    print(f"itch_card simulator={args.simulator} messages={len(messages)} packets={len(packets)} "
          f"decode_frames={status.commands} records={status.events} bytes={sum(len(p) for p in packets)} "
          f"seconds={seconds:.1f} msgs_per_s={len(messages) / seconds:.0f} same_as_software={'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
