"""Host side of the card link: the frame codec and a framed :class:`Link` over pyserial.

The format itself lives in :mod:`exchange.framing_spec` (shared with the gateware); this module
only re-exports it and adds transport. ``Link`` opens any pyserial URL:

* ``socket://HOST:PORT`` for a simulated card,
* ``/dev/ttyUSB0`` (or ``COM3``) for a board's serial port,
* ``loop://`` for tests (whatever is sent is received).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import serial

from exchange.framing_spec import (
    MAX_PAYLOAD,
    BadFrame,
    DecoderStats,
    Frame,
    FrameError,
    StreamDecoder,
    decode_stream,
    encode_frame,
)

__all__ = [
    "MAX_PAYLOAD",
    "BadFrame",
    "DecoderStats",
    "Frame",
    "FrameError",
    "Link",
    "LinkTimeout",
    "StreamDecoder",
    "decode_stream",
    "encode_frame",
]

#: Longest single blocking read; bounds how late a deadline can be noticed.
POLL_INTERVAL = 0.05


class LinkTimeout(TimeoutError):
    """No complete good frame arrived in time."""


class Link:
    """A framed, resynchronising link to the card over a pyserial URL.

    ``timeout`` is the default for :meth:`recv_frame`; ``write_timeout`` bounds
    :meth:`send_frame` on a stalled port. Bad frames (CRC, oversize, truncated) never surface
    as frames: they are counted in :attr:`stats` and passed to ``on_bad_frame`` if given.
    Pass ``port`` to wrap an already open ``serial.SerialBase`` instead of a URL.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        baudrate: int = 115200,
        timeout: float = 1.0,
        write_timeout: float | None = 1.0,
        max_payload: int = MAX_PAYLOAD,
        on_bad_frame: Callable[[BadFrame], None] | None = None,
        port: serial.SerialBase | None = None,
    ) -> None:
        if (url is None) == (port is None):
            raise ValueError("give exactly one of url and port")
        if timeout < 0:
            raise ValueError(f"timeout must be non-negative, not {timeout}")
        self.timeout = timeout
        self.max_payload = max_payload
        self.on_bad_frame = on_bad_frame
        self._decoder = StreamDecoder(max_payload)
        self._frames: deque[Frame] = deque()
        if port is None:
            port = serial.serial_for_url(url, baudrate=baudrate, write_timeout=write_timeout)
        if not port.timeout or port.timeout > POLL_INTERVAL:  # None (blocking) or 0 would not poll
            port.timeout = min(timeout, POLL_INTERVAL) or POLL_INTERVAL
        self.port = port

    # -- lifecycle

    def close(self) -> None:
        """Close the port (idempotent)."""
        if self.port.is_open:
            self.port.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> DecoderStats:
        """Counts of good and rejected frames received so far."""
        return self._decoder.stats

    # -- sending

    def send_frame(self, frame_type: int, payload: bytes | bytearray = b"") -> None:
        """Encode and send one frame (ValueError for a bad type or an oversize payload)."""
        self.send_raw(encode_frame(frame_type, payload, max_payload=self.max_payload))

    def send_raw(self, data: bytes | bytearray) -> None:
        """Send bytes as they are (for tests and line diagnostics)."""
        written = self.port.write(bytes(data))
        if written is not None and written != len(data):
            raise serial.SerialTimeoutException(f"wrote {written} of {len(data)} bytes")
        self.port.flush()

    # -- receiving

    def _absorb(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            if isinstance(event, Frame):
                self._frames.append(event)
            elif self.on_bad_frame is not None:
                self.on_bad_frame(event)

    def poll(self) -> list[Frame]:
        """Return the good frames that arrived so far, without waiting."""
        waiting = self.port.in_waiting
        if waiting:
            self._absorb(self.port.read(waiting))
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def recv_frame(self, timeout: float | None = None) -> Frame:
        """Wait for the next good frame; :class:`LinkTimeout` after ``timeout`` seconds
        (default: the link's; checked every :data:`POLL_INTERVAL`) without one. Garbage and bad
        frames are skipped."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self._frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkTimeout(f"no frame within {timeout} s")
            # the port's own timeout is at most POLL_INTERVAL: the deadline is checked that often
            data = self.port.read(max(1, self.port.in_waiting))
            if data:
                self._absorb(data)
        return self._frames.popleft()

    def resync(self) -> None:
        """Start clean on both ends: drop unread input and any partial frame here, and send a
        lone delimiter so the card drops any partial frame of ours."""
        self.port.reset_input_buffer()
        self._decoder.reset()
        self._frames.clear()
        self.send_raw(b"\x00")
