"""The gateware ITCH decoder in simulation: traffic, beats, runs, the ``sim`` feed decoder and CLI backend.

Pieces, from the bottom up (pure Python; only :func:`run_packets` and what calls it start a simulator):

* Traffic: :func:`random_message` (any ITCH type, encoded by ``exchange.itch.encode_message``),
  :func:`random_frames` / :func:`random_packets` (every type with corrupt frames mixed in: wrong, zero
  and tiny lengths, unknown types, non-ASCII text, long garbage; packets cut anywhere, empty packets),
  :func:`every_type_packets` (each type with its length prefix at every lane), :func:`edge_packets`
  (hand-made corner cases), :func:`file_packets` (an ITCH file cut into MoldUDP64-sized packets of
  whole frames, as a publisher would).
* :func:`packet_beats`: a packet as decoder input beats (``data``, ``keep``, ``last``).
* :func:`run_packets`: packets through ``hdl.itch.ItchDecoder`` on Icarus or Verilator (cocotb bench
  ``sim.benches.test_itch_stream`` via :mod:`sim.runner`): records per packet (:func:`split_records`)
  and cycle figures (:func:`last_beats` for latencies).
* :class:`SimFeedDecoder`: the ``sim`` backend of ``exchange.feed_decoder`` (registered on import);
  :func:`decode_file` / :func:`cmd_decode` behind ``matchwire itch decode FILE --backend sim``;
  :func:`bench` / :func:`main` behind ``make bench-itch-hdl``.

How records become the software decoder's output (``exchange.itch_record.records_to_feed``): OK records
are turned back into the message dict and error records into ``{"type": "error", ...}`` from the record
alone. For SKIPPED records (types other than A F E C X D U P) the gateware reports type, offset and
length; the host checks them against the bytes and decodes those bytes with the software decoder.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from exchange.feed_decoder import SoftwareFeedDecoder, register_decoder
from exchange.itch import ALPHA, MESSAGE_SPECS, encode_message, message_length, to_json_dict
from exchange.itch_record import BOOK_TYPES, ItchStatus, records_to_feed, reference_records, unpack_record

__all__ = [
    "SAMPLE_FILE",
    "SimFeedDecoder",
    "SimRun",
    "bench",
    "cmd_decode",
    "decode_file",
    "edge_packets",
    "every_type_packets",
    "file_packets",
    "last_beats",
    "packet_beats",
    "random_frames",
    "random_message",
    "random_packets",
    "register",
    "run_packets",
    "split_records",
]

Beat = tuple[int, int, int]  # (data, keep, last)

#: The shared sample file (12,012 messages); ``ITCH_SAMPLE`` overrides it, as in the Makefile.
SAMPLE_FILE = Path(os.environ.get("ITCH_SAMPLE") or
                   Path(__file__).resolve().parents[2] / "shared/data/itch/sample-20101224.ITCH50.gz")


# -- traffic -----------------------------------------------------------------------------------------


def random_message(rng: random.Random, code: str) -> bytes:
    """A valid message of type ``code`` with random field values (alpha fields: printable ASCII,
    sometimes padded or blank, single-character codes including a space)."""
    fields: dict[str, Any] = {}
    for name, kind, width in MESSAGE_SPECS[code].fields:
        if kind == ALPHA:
            size = rng.choice((width, width, rng.randint(0, width)))
            fields[name] = "".join(chr(rng.randint(0x21, 0x7E)) for _ in range(size))
            if width == 1 and rng.random() < 0.1:
                fields[name] = " "
        else:
            bits = 8 * width
            roll = rng.random()
            fields[name] = (rng.getrandbits(bits) if roll < 0.6 else
                            rng.choice((0, 1, (1 << bits) - 1, 1 << (bits - 1), rng.randint(0, 1000))))
    return encode_message(code, **fields)


def _non_ascii(rng: random.Random, wire: bytes) -> bytes:
    spec = MESSAGE_SPECS[chr(wire[0])]
    spots = [offset + i for (_, kind, width), offset in zip(spec.fields, spec.field_offsets, strict=True)
             if kind == ALPHA for i in range(width)]
    out = bytearray(wire)
    for spot in rng.sample(spots, min(len(spots), rng.choice((1, 1, 2)))):
        out[spot] = rng.randint(0x80, 0xFF)
    return bytes(out)


def _frame(body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return n.to_bytes(2, "big") + body


def random_frames(rng: random.Random, count: int, *, corrupt: float = 0.15, book_share: float = 0.6) -> list[bytes]:
    """``count`` frames (length prefix included) of every type, a ``corrupt`` share of them broken."""
    codes = list(MESSAGE_SPECS)
    frames = []
    for _ in range(count):
        code = rng.choice(BOOK_TYPES) if rng.random() < book_share else rng.choice(codes)
        wire = random_message(rng, code)
        if rng.random() >= corrupt:
            frames.append(_frame(wire))
            continue
        kind = rng.randrange(6)
        if kind == 0:  # length prefix disagrees with the type (the frame is as long as its prefix says)
            n = max(1, len(wire) + rng.choice((-1, 1, -5, 7, rng.randint(-len(wire) + 1, 30))))
            body = (wire + bytes(rng.getrandbits(8) for _ in range(64)))[:n]
            frames.append(_frame(body))
        elif kind == 1:  # unknown type byte
            unknown = [b for b in range(256) if chr(b) not in MESSAGE_SPECS]
            frames.append(_frame(bytes([rng.choice(unknown)]) + wire[1:]))
        elif kind == 2:
            frames.append(_frame(b""))  # zero length
        elif kind == 3:
            frames.append(_frame(_non_ascii(rng, wire)))
        elif kind == 4:  # very short frames: several may start in one beat
            n = rng.randint(1, 7)
            frames.append(_frame(bytes([rng.choice((ord(rng.choice(codes)), rng.randint(0, 255)))])
                                 + bytes(rng.getrandbits(8) for _ in range(n - 1))))
        else:  # long garbage frame of a known type
            n = rng.randint(60, 300)
            frames.append(_frame(bytes([ord(rng.choice(codes))]) + bytes(rng.getrandbits(8) for _ in range(n - 1))))
    return frames


def random_packets(rng: random.Random, packets: int, *, frames: tuple[int, int] = (1, 12), corrupt: float = 0.15,
                   cut: float = 0.15) -> list[bytes]:
    """MoldUDP64 packet bodies of random frames; a ``cut`` share of packets ends inside a frame (anywhere,
    including after one prefix byte) and a few are empty."""
    out = []
    for _ in range(packets):
        if rng.random() < 0.03:
            out.append(b"")
            continue
        body = b"".join(random_frames(rng, rng.randint(*frames), corrupt=corrupt))
        if rng.random() < cut and body:
            body = body[: rng.randrange(len(body))]
        out.append(body)
    return out


def every_type_packets(rng: random.Random, lanes: int = 8) -> list[bytes]:
    """For every ITCH type and every lane: a packet in which a message of that type has its length prefix
    at that lane of a beat (``a`` E messages, 33 bytes with their prefix, shift it by ``a``), with
    another message after it so that its end meets the next frame's start at varied lanes too."""
    shift = message_length("E") + 2  # 33: one lane further per E message on any beat width
    out = []
    for code in MESSAGE_SPECS:
        for lane in range(lanes):
            a = next(k for k in range(lanes) if (k * shift) % lanes == lane)
            frames = [_frame(random_message(rng, "E")) for _ in range(a)]
            frames.append(_frame(random_message(rng, code)))
            frames.append(_frame(random_message(rng, rng.choice(list(MESSAGE_SPECS)))))
            out.append(b"".join(frames))
    return out


def edge_packets(rng: random.Random, lanes: int = 8) -> list[bytes]:
    """Hand-made corner cases: packets cut after the first prefix byte at every lane, cut right after a
    whole prefix, runs of zero-length and one-byte frames (several frames starting in one beat), frames
    of 1 to 7 bytes at every lane, a long frame of garbage, empty packets, exact multiples of a beat."""
    d = _frame(random_message(rng, "D"))  # 21 bytes
    out = [b"", b""]
    for lane in range(lanes):
        pad = b"".join(_frame(random_message(rng, "E")) for _ in range(next(
            k for k in range(lanes) if (k * 33) % lanes == lane)))
        out.append(pad + b"\x00")  # one prefix byte, then the packet ends
        out.append(pad + b"\x00\x24")  # a whole prefix (36), no body
        out.append(pad + _frame(random_message(rng, "A"))[:-1])  # one byte short
        for n in range(1, 8):
            out.append(pad + _frame(bytes([ord(rng.choice("AFECXDUPSQ?"))] + [rng.getrandbits(8)
                                                                            for _ in range(n - 1)])) + d)
    out.append(b"\x00\x00" * 4 + d)  # four frames start in the first beat
    out.append(b"\x00\x00" * 9 + d + b"\x00\x01A" * 5 + d)
    out.append(d + _frame(b"P" + bytes(rng.getrandbits(8) for _ in range(299))) + d)
    out.append(_frame(b"S" + bytes(11)) * 4 + bytes(0))
    exact = b"".join(_frame(random_message(rng, "P")) for _ in range(2))  # 2 * 46 bytes
    out.append(exact + d + _frame(random_message(rng, "A")) + _frame(random_message(rng, "X"))[:lanes])
    return out


def file_packets(data: bytes, max_payload: int = 1400) -> list[tuple[int, bytes]]:
    """An ITCH file's bytes as (offset, packet) pairs: whole frames, at most ``max_payload`` bytes per
    packet unless a single frame is longer; a truncated tail counts as one (last) frame."""
    out = []
    pos, end = 0, len(data)
    while pos < end:
        stop = pos
        while stop < end:
            nxt = min(end, stop + 2 + ((data[stop] << 8) | data[stop + 1])) if stop + 2 <= end else end
            if nxt - pos > max_payload and stop > pos:
                break
            stop = nxt
        out.append((pos, data[pos:stop]))
        pos = stop
    return out


# -- beats -------------------------------------------------------------------------------------------


def packet_beats(payload: bytes, lanes: int = 8) -> list[Beat]:
    """One packet as decoder input beats: full beats, then a last beat holding the rest (an empty last
    beat for an empty packet)."""
    beats: list[Beat] = []
    for i in range(0, len(payload), lanes):
        chunk = payload[i : i + lanes]
        beats.append((int.from_bytes(chunk, "little"), (1 << len(chunk)) - 1, 0))
    if not beats:
        return [(0, 0, 1)]
    data, keep, _ = beats[-1]
    beats[-1] = (data, keep, 1)
    return beats


# -- simulation --------------------------------------------------------------------------------------


@dataclass
class SimRun:
    """Records (raw integer fields, per packet) and cycle figures of one simulated run."""

    records: list[list[dict[str, int]]]
    cycles: int = 0  # from the first input beat accepted to the last one, inclusive
    beats: int = 0
    bytes: int = 0
    latencies: list[int] = field(default_factory=list)  # per record: see docs/itch-hdl.md
    simulator: str = ""

    @property
    def bytes_per_cycle(self) -> float:
        return self.bytes / self.cycles if self.cycles else 0.0


def _write_stream(path: Path, packets: Sequence[bytes], lanes: int) -> int:
    """Input file for the stream bench: one line per beat, ``data keep last`` in hex."""
    beats = 0
    with open(path, "w") as f:
        for packet in packets:
            for data, keep, last in packet_beats(packet, lanes):
                f.write(f"{data:x} {keep:x} {last}\n")
                beats += 1
    return beats


def split_records(records: Sequence[dict[str, int]], packets: Sequence[bytes]) -> list[list[dict[str, int]]]:
    """Records in stream order -> records per packet, using only the packets' lengths and each record's
    offset and length (checked to be consecutive: a missing or extra record raises ValueError)."""
    out: list[list[dict[str, int]]] = []
    it = iter(records)
    for packet in packets:
        group: list[dict[str, int]] = []
        expected = 0
        while expected < len(packet):
            record = next(it, None)
            if record is None:
                raise ValueError(f"records end inside packet {len(out)} (frame at {expected})")
            if record["offset"] != expected & 0xFFFF:
                raise ValueError(f"packet {len(out)}: record offset {record['offset']}, expected {expected}")
            group.append(record)
            expected = len(packet) if record["status"] >= ItchStatus.TRUNCATED else expected + 2 + record["length"]
        out.append(group)
    extra = list(it)
    if extra:
        raise ValueError(f"{len(extra)} records after the last packet")
    return out


def last_beats(records: Sequence[Sequence[dict[str, int]]], packets: Sequence[bytes], lanes: int) -> list[int]:
    """For every record, the index (in the whole run) of the input beat holding its frame's last byte
    (the packet's last beat for a truncated frame)."""
    out = []
    base = 0
    for packet, group in zip(packets, records, strict=True):
        nbeats = len(packet_beats(packet, lanes))
        expected = 0
        for record in group:
            if record["status"] >= ItchStatus.TRUNCATED:
                out.append(base + nbeats - 1)
            else:
                expected += 2 + record["length"]
                out.append(base + (expected - 1) // lanes)
        base += nbeats
    return out


def run_packets(packets: Sequence[bytes], *, simulator: str = "icarus", lanes: int = 8, slots: int = 3,
                idle_prob: float = 0.0, stall_prob: float = 0.0, seed: int = 1,
                build_root: str | os.PathLike[str] | None = None) -> SimRun:
    """Send ``packets`` through the gateware decoder on ``simulator``; collect every record.

    The bench (``sim.benches.test_itch_stream``) offers one beat per cycle (``idle_prob``: random idle
    cycles) and takes records with random ``ready`` stalls (``stall_prob``); it reports the cycle each
    beat was accepted and the cycle each record's ``valid`` rose, from which the latencies are taken.
    """
    from hdl.itch import ItchDecoder
    from sim.runner import run_cocotb

    with tempfile.TemporaryDirectory(prefix="itch-sim-") as tmp:
        stream = Path(tmp) / "beats.txt"
        out = Path(tmp) / "records.json"
        beats = _write_stream(stream, packets, lanes)
        run_cocotb(
            lambda: ItchDecoder(lanes=lanes, slots=slots),
            name=f"itch_decoder_l{lanes}_s{slots}",
            test_module="sim.benches.test_itch_stream",
            simulator=simulator,
            params={"stream": str(stream), "out": str(out), "beats": beats, "lanes": lanes,
                    "idle_prob": idle_prob, "stall_prob": stall_prob, "seed": seed},
            build_root=build_root,
        )
        result = json.loads(out.read_text())
    flat = [unpack_record(int(v, 16)) for v in result["records"]]
    grouped = split_records(flat, packets)
    accepted, shown = result["accepted"], result["shown"]
    latencies = [shown[i] - accepted[b] for i, b in enumerate(last_beats(grouped, packets, lanes))]
    cycles = accepted[-1] - accepted[0] + 1 if accepted else 0
    return SimRun(records=grouped, cycles=cycles, beats=beats, bytes=sum(len(p) for p in packets),
                  latencies=latencies, simulator=simulator)


class SimFeedDecoder:
    """``FeedDecoder`` backed by the simulated gateware: each ``decode`` call runs one simulation (seconds),
    so it suits verification and demos, not a live feed."""

    name = "sim"

    def __init__(self, simulator: str = "icarus") -> None:
        self.simulator = simulator

    def decode(self, payload: bytes) -> list[dict]:
        """Decode every frame of ``payload`` (one MoldUDP64 packet body) through the gateware."""
        run = run_packets([bytes(payload)], simulator=self.simulator)
        return records_to_feed(run.records[0], payload)


def register() -> None:
    """Make ``exchange.feed_decoder.decoder_for("sim")`` return a :class:`SimFeedDecoder` (done on import)."""
    register_decoder("sim", SimFeedDecoder)


register()


def _read(path: str | os.PathLike[str]) -> tuple[bytes, str | None]:
    """The file's bytes (gunzipped when it starts with the gzip magic) and, for a corrupt or cut gzip
    stream, the reason, as ``exchange.itch.read_itch_file`` reports it; the bytes are then what was
    decompressed before the failure."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw, None
    out = bytearray()
    stream = gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb")
    try:
        while chunk := stream.read1(1 << 20):
            out += chunk
    except (OSError, EOFError, zlib.error) as exc:
        return bytes(out), f"unreadable input: {exc}"
    return bytes(out), None


def decode_file(path: str | os.PathLike[str], *, simulator: str = "icarus",
                max_payload: int = 1400) -> Iterator[dict]:
    """Every frame of an ITCH file decoded by the simulated gateware, as ``SoftwareFeedDecoder`` dicts
    (messages, or error records whose offsets are stream offsets), in one simulation.

    The file is cut into packets of whole frames (:func:`file_packets`). As in ``read_itch_file``, a corrupt
    gzip stream ends with one ``unreadable input`` error after the whole frames read before it.
    """
    data, failure = _read(path)
    if failure is not None:
        data = data[: _whole_frames(data)]
    chunks = file_packets(data, max_payload)
    if chunks:
        run = run_packets([p for _, p in chunks], simulator=simulator)
        for (base, packet), records in zip(chunks, run.records, strict=True):
            yield from records_to_feed(records, packet, base)
    if failure is not None:
        yield {"type": "error", "offset": len(data), "reason": failure}


def _whole_frames(data: bytes) -> int:
    pos = 0
    while pos + 2 <= len(data):
        stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
        if stop > len(data):
            break
        pos = stop
    return pos


def cmd_decode(path: str | os.PathLike[str], out: TextIO, err: TextIO, *, simulator: str = "icarus") -> int:
    """``matchwire itch decode FILE --backend sim``: the same JSON lines and error lines as
    ``exchange.itch_tools.cmd_decode``, built from the gateware's records. Returns the exit code."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    errors = 0
    try:
        for record in decode_file(path, simulator=simulator):
            if record["type"] == "error":
                errors += 1
                print(f"{os.fspath(path)}: offset {record['offset']}: {record['reason']}", file=err)
            else:
                out.write(dumps(to_json_dict(record)))
                out.write("\n")
    except OSError as exc:
        print(f"{os.fspath(path)}: {exc.strerror or exc}", file=err)
        return 1
    return 1 if errors else 0


def bench(path: str | os.PathLike[str], simulators: Sequence[str], out: TextIO,
          messages: int | None = None) -> bool:
    """Whole-file check and figures (``make bench-itch-hdl``): the file (or its first ``messages``) through
    the gateware at full rate on each simulator; records must equal the reference model and rebuild the
    software decoder's output. Prints one line per simulator; returns whether all matched."""
    import time

    data, failure = _read(path)
    if failure is not None:
        raise ValueError(f"{os.fspath(path)}: {failure}")
    if messages is not None:
        pos = 0
        for _ in range(messages):
            if pos + 2 > len(data):
                break
            pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
        data = data[:pos]
    chunks = file_packets(data)
    packets = [p for _, p in chunks]
    expected = [reference_records(p) for p in packets]
    ok = True
    for simulator in simulators:
        started = time.monotonic()
        run = run_packets(packets, simulator=simulator)
        seconds = time.monotonic() - started
        same = run.records == expected and all(
            records_to_feed(r, p) == SoftwareFeedDecoder().decode(p) for p, r in zip(packets, run.records, strict=True))
        ok &= same
        count = sum(len(r) for r in run.records)
        print(f"itch_hdl simulator={simulator} records={count} bytes={run.bytes} packets={len(packets)} "
              f"cycles={run.cycles} bytes_per_cycle={run.bytes_per_cycle:.3f} "
              f"workload=sample-file cycles_per_msg={run.cycles / max(count, 1):.3f} "
              f"latency_min={min(run.latencies)} latency_max={max(run.latencies)} "
              f"match={'yes' if same else 'NO'} seconds={seconds:.1f}", file=out)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sim.itch_backend [FILE] [--simulator icarus|verilator|both] [--messages N]``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m sim.itch_backend", description=bench.__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?", default=str(SAMPLE_FILE))
    parser.add_argument("--simulator", default="both", choices=["icarus", "verilator", "both"])
    parser.add_argument("--messages", type=int, help="only the first N messages")
    args = parser.parse_args(argv)
    simulators = ["icarus", "verilator"] if args.simulator == "both" else [args.simulator]
    return 0 if bench(args.file, simulators, sys.stdout, args.messages) else 1


if __name__ == "__main__":
    raise SystemExit(main())
