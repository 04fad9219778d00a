"""``matchwire itch decode FILE --backend sim`` prints what the software backend prints (stdout, stderr and
exit code), and the ``sim`` feed decoder gives the software decoder's records, also behind a FeedHandler."""

import gzip
import random

import pytest

from actors.cli import main
from exchange.feed_decoder import FeedHandler, SoftwareFeedDecoder, decoder_for
from exchange.moldudp64 import packetize
from sim.itch_backend import SAMPLE_FILE, SimFeedDecoder, random_frames, random_message
from sim.runner import SIMULATORS, available_simulators


def itch_file(tmp_path, *, compress, tail):
    """200 sample messages (or generated ones) with corrupt frames mixed in and an optional cut tail."""
    rng = random.Random(5)
    if SAMPLE_FILE.exists():
        data = gzip.decompress(SAMPLE_FILE.read_bytes())
        pos = 0
        for _ in range(200):
            pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
        frames = [data[:pos]]
    else:
        frames = [len(m).to_bytes(2, "big") + m for m in (random_message(rng, rng.choice("AFECXDUPSR"))
                                                          for _ in range(200))]
    frames += random_frames(rng, 60, corrupt=0.4)
    body = b"".join(frames) + (b"\x00\x24A\x00\x01" if tail else b"")
    path = tmp_path / ("feed.itch.gz" if compress else "feed.itch")
    path.write_bytes(gzip.compress(body, mtime=0) if compress else body)
    return path


def run_cli(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_cli_decode_sim_matches_software(tmp_path, capsys, simulator):
    path = itch_file(tmp_path, compress=True, tail=True)
    software = run_cli(capsys, ["itch", "decode", str(path)])
    gateware = run_cli(capsys, ["itch", "decode", str(path), "--backend", "sim", "--simulator", simulator])
    assert software[0] == 1 and software[1].count("\n") > 200 and software[2]  # errors were reported
    assert gateware == software


def test_cli_sim_refuses_what_it_does_not_do(tmp_path, capsys):
    path = itch_file(tmp_path, compress=False, tail=False)
    assert run_cli(capsys, ["itch", "stats", str(path), "--backend", "sim"])[0] == 2
    assert run_cli(capsys, ["itch", "decode", str(path), "--backend", "fpga"])[0] == 2
    code, out, err = run_cli(capsys, ["itch", "decode", str(tmp_path / "missing"), "--backend", "software"])
    assert (code, out) == (1, "")
    if available_simulators():
        sim = available_simulators()[0]
        assert run_cli(capsys, ["itch", "decode", str(tmp_path / "missing"), "--backend", "sim",
                                "--simulator", sim]) == (code, out, err)


@pytest.mark.skipif(not available_simulators(), reason="no HDL simulator installed")
def test_sim_feed_decoder_behind_the_feed_handler():
    simulator = "verilator" if "verilator" in available_simulators() else "icarus"
    assert isinstance(decoder_for("sim"), SimFeedDecoder)  # registered by importing sim.itch_backend
    rng = random.Random(6)
    messages = [random_message(rng, rng.choice("AFEXDUP")) for _ in range(60)]
    payload = b"".join(len(m).to_bytes(2, "big") + m for m in messages)
    assert SimFeedDecoder(simulator).decode(payload) == SoftwareFeedDecoder().decode(payload)

    packets = list(packetize("SESSION01", 1, messages, 1400))  # 2 packets: a simulation each
    handlers = [FeedHandler(decoder=SimFeedDecoder(simulator)), FeedHandler()]
    for handler in handlers:
        for packet in packets:
            handler.on_packet(packet)
    assert handlers[0].stats == handlers[1].stats and handlers[0].stats["messages"] == 60
    assert {k: (b.bbo(), b.depth(5)) for k, b in handlers[0].book.books.items()} == \
        {k: (b.bbo(), b.depth(5)) for k, b in handlers[1].book.books.items()}
