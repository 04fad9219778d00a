"""The frame format's reference codec (exchange.framing_spec) and the host Link (host.framing)."""

import binascii
import random
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange import framing_spec as fs
from host.framing import BadFrame, Frame, FrameError, Link, LinkTimeout, StreamDecoder, encode_frame

# -- COBS ------------------------------------------------------------------------------------------

# Wikipedia's COBS examples (those where the "trailing 01" variants agree).
COBS_VECTORS = [
    ("00", "01 01"),
    ("00 00", "01 01 01"),
    ("00 11 00", "01 02 11 01"),
    ("11 22 00 33", "03 11 22 02 33"),
    ("11 22 33 44", "05 11 22 33 44"),
    ("11 00 00 00", "02 11 01 01 01"),
    (
        " ".join(f"{n:02x}" for n in range(1, 256)),
        "ff " + " ".join(f"{n:02x}" for n in range(1, 255)) + " 02 ff",
    ),
    (
        " ".join(f"{n:02x}" for n in range(2, 256)) + " 00",
        "ff " + " ".join(f"{n:02x}" for n in range(2, 256)) + " 01 01",
    ),
]


@pytest.mark.parametrize(("plain", "encoded"), COBS_VECTORS)
def test_cobs_vectors(plain, encoded):
    assert fs.cobs_encode(bytes.fromhex(plain)) == bytes.fromhex(encoded)
    assert fs.cobs_decode(bytes.fromhex(encoded)) == bytes.fromhex(plain)


def test_cobs_full_final_group_forms():
    data = bytes(range(1, 255))
    assert fs.cobs_encode(data) == b"\xff" + data + b"\x01"  # as the paper's StuffData
    assert fs.cobs_decode(b"\xff" + data) == data  # the shorter form is accepted


@settings(deadline=None)
@given(st.binary(max_size=2000))
def test_cobs_roundtrip(data):
    encoded = fs.cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= fs.cobs_max_len(len(data))
    assert fs.cobs_decode(encoded) == data


@pytest.mark.parametrize("bad", [b"\x03\x11", b"\x02\x00", b"\x00", b"\x05\x01\x02"])
def test_cobs_decode_rejects_malformed(bad):
    with pytest.raises(ValueError):
        fs.cobs_decode(bad)


# -- CRC and frames --------------------------------------------------------------------------------


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_crc_reference_matches_zlib(data):
    assert fs.CRC.compute(data) == fs.crc32(data) == binascii.crc32(data)


def test_frame_layout():
    wire = encode_frame(0x41, b"\x00hi")
    body = bytes([0x41]) + b"\x00hi" + binascii.crc32(b"\x41\x00hi").to_bytes(4, "little")
    assert wire == b"\x00" + fs.cobs_encode(body) + b"\x00"
    assert encode_frame(0x41, b"\x00hi", lead=False) == wire[1:]
    assert len(encode_frame(7, bytes([1]) * fs.MAX_PAYLOAD)) <= fs.MAX_ENCODED


@pytest.mark.parametrize(("frame_type", "payload"), [(256, b""), (-1, b""), (1, bytes(fs.MAX_PAYLOAD + 1))])
def test_encode_rejects_bad_frames(frame_type, payload):
    with pytest.raises(ValueError):
        encode_frame(frame_type, payload)


frames_st = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=600)), max_size=12)


@settings(deadline=None)
@given(frames_st, st.randoms(use_true_random=False))
def test_decode_roundtrip_any_chunking(frames, rng):
    wire = b"".join(encode_frame(t, p) for t, p in frames)
    decoder = StreamDecoder()
    events = []
    pos = 0
    while pos < len(wire):
        step = rng.randrange(1, 64)
        events += decoder.feed(wire[pos : pos + step])
        pos += step
    assert events == [Frame(t, p) for t, p in frames]
    assert decoder.stats.good == len(frames) and not decoder.in_frame


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.randoms(use_true_random=False))
def test_decoder_never_raises_and_ignores_chunking(garbage, rng):
    whole = StreamDecoder(64).feed(garbage)
    decoder = StreamDecoder(64)
    pieces = []
    pos = 0
    while pos < len(garbage):
        step = rng.randrange(1, 100)
        pieces += decoder.feed(garbage[pos : pos + step])
        pos += step
    assert pieces == whole
    # a good frame after any garbage is always recovered (its leading delimiter resynchronises)
    assert decoder.feed(encode_frame(9, b"after", max_payload=64))[-1:] == [Frame(9, b"after")]


def test_error_classification():
    good = encode_frame(1, b"payload")
    corrupt = bytearray(good)
    corrupt[4] ^= 0x40
    oversize = encode_frame(2, bytes(fs.MAX_PAYLOAD + 1), max_payload=fs.MAX_PAYLOAD + 1)
    wire = bytes(corrupt) + good[:-3] + b"\x00" + b"\x00\x01\x00" + oversize + good
    events = fs.decode_stream(wire)
    assert [e.error if isinstance(e, BadFrame) else e for e in events] == [
        FrameError.CRC,
        FrameError.TRUNCATED,
        FrameError.TRUNCATED,
        FrameError.OVERSIZE,
        Frame(1, b"payload"),
    ]


def test_short_final_group_form_decodes():
    rng = random.Random(1)
    while True:  # a zero-free body of exactly 254 bytes: one full COBS group
        payload = bytes(rng.randrange(1, 256) for _ in range(254 - 5))
        body = fs.encode_body(0x33, payload)
        if 0 not in body:
            break
    assert fs.decode_stream(b"\x00\xff" + body + b"\x00") == [Frame(0x33, payload)]
    assert fs.decode_stream(encode_frame(0x33, payload)) == [Frame(0x33, payload)]


def test_garbage_memory_is_bounded():
    decoder = StreamDecoder(100)
    for _ in range(50):
        decoder.feed(bytes([0x55]) * 10_000)
    assert decoder.in_frame and len(decoder._cand.body) == 0
    assert decoder.feed(b"\x00") == [BadFrame(FrameError.OVERSIZE, 500_000)]


# -- Link over loop:// -----------------------------------------------------------------------------


def test_link_loopback():
    bad = []
    with Link("loop://", timeout=0.5, on_bad_frame=bad.append) as link:
        link.send_frame(3, b"abc")
        assert link.recv_frame() == Frame(3, b"abc")
        link.send_raw(b"\x17\x99garbage\x00\x03\x01")  # garbage, a runt, a dangling partial frame
        link.send_frame(4, b"")
        link.send_frame(5, bytes(range(256)) * 4)
        assert link.recv_frame() == Frame(4, b"")
        assert link.recv_frame() == Frame(5, bytes(range(256)) * 4)
        assert [b.error for b in bad] == [FrameError.TRUNCATED, FrameError.TRUNCATED]
        assert link.stats.good == 3
        with pytest.raises(ValueError):
            link.send_frame(6, bytes(fs.MAX_PAYLOAD + 1))


def test_link_timeout_and_poll():
    with Link("loop://", timeout=0.1) as link:
        started = time.monotonic()
        with pytest.raises(LinkTimeout):
            link.recv_frame()
        assert 0.1 <= time.monotonic() - started < 0.5
        link.send_frame(1, b"x")
        link.send_frame(2, b"y")
        assert link.poll() == [Frame(1, b"x"), Frame(2, b"y")]
        assert link.poll() == []


def test_link_resync_drops_partial_input():
    with Link("loop://", timeout=0.2) as link:
        link.send_raw(encode_frame(1, b"half")[:5])
        link.poll()
        assert link._decoder.in_frame
        link.resync()
        link.send_frame(
            2,
            b"whole",
        )
        assert link.recv_frame() == Frame(2, b"whole")


def test_link_argument_checks():
    with pytest.raises(ValueError):
        Link()
    with pytest.raises(ValueError):
        Link("loop://", timeout=-1)


# -- Link over a real TCP socket -------------------------------------------------------------------


class EchoCard:
    """A stand-in card on a TCP socket: answers each good frame with (type + 1, reversed payload),
    preceded by line garbage, written in small random chunks."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
            rng = random.Random(7)
            decoder = StreamDecoder()
            with conn:
                while data := conn.recv(4096):
                    for event in decoder.feed(data):
                        if not isinstance(event, Frame):
                            continue
                        reply = bytes([0x55, 0x00, 0x07, 0xAA])  # line garbage: two runts
                        reply += encode_frame((event.type + 1) % 256, event.payload[::-1])
                        pos = 0
                        while pos < len(reply):
                            step = rng.randrange(1, 40)
                            conn.sendall(reply[pos : pos + step])
                            pos += step
                            time.sleep(0.0005)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            self.server.close()


def test_link_over_tcp_socket():
    card = EchoCard()
    rng = random.Random(3)
    with Link(f"socket://127.0.0.1:{card.port}", timeout=2.0) as link:
        for n in range(30):
            payload = rng.randbytes(rng.choice([0, 1, 20, 300, fs.MAX_PAYLOAD]))
            link.send_frame(n, payload)
            assert link.recv_frame() == Frame(n + 1, payload[::-1])
        assert link.stats.good == 30
        assert link.stats.truncated == 60  # "55" and "07 AA": two runts before each reply
    card.thread.join(timeout=5)
    assert not card.errors
