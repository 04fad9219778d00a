"""cocotb bench serving a simulated matcher to another process (``matchwire match --backend sim``).

The client (:class:`sim.matcher_backend.SimBook`) listens on a Unix socket named by the bench
parameter ``socket``; this bench connects and answers one JSON line per request:

* ``{"op": "run", "word": <command record as an int>}`` -> ``{"burst": [<event words>],
  "latency": <accept to first event, cycles>}``: one command record, run to the end of its burst.
* ``{"op": "bench"}`` -> ``{"accepted": [...], "events": [[cycle, word], ...]}``: resets the
  gateware and replays every record received so far back to back (sink always ready); the
  bursts must equal the first run's, else the bench fails.
* ``{"op": "quit"}`` -> ``{}``, and the simulation ends.

While the bench waits for a request no simulated time passes.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import cocotb
from cocotb.clock import Clock

from exchange.matcher_format import MatcherConfig
from sim.benches.test_matcher_pump import MatcherPort
from sim.conftest_helpers import bench_params


@cocotb.test()
async def serve(dut: Any) -> None:
    """Answer the client's requests until it says quit (or goes away)."""
    params = bench_params({"config": {}, "socket": None})
    config = MatcherConfig(**params["config"])
    Clock(dut.clk, 10, unit="ns").start()
    port = MatcherPort(dut, config)
    await port.reset()
    sent: list = []
    bursts: list = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(params["socket"])
        stream = sock.makefile("rwb")
        while True:
            line = stream.readline()
            if not line:
                return
            request = json.loads(line)
            op = request.get("op")
            if op == "run":
                record = config.decode_command(config.command_layout.from_int(request["word"]))
                burst, accepted, first = await port.run_record(record)
                sent.append(record)
                bursts.append(burst)
                reply: dict = {"burst": [config.event_layout.to_int(config.encode_event(r)) for r in burst],
                               "latency": first - accepted}
            elif op == "bench":
                await port.reset()
                result = await port.stream(sent)
                if result.bursts() != bursts:
                    raise AssertionError("the back-to-back replay gave other event records than the first run")
                reply = {"accepted": result.accepted,
                         "events": [[cycle, config.event_layout.to_int(config.encode_event(r))]
                                    for cycle, r in result.events]}
                # Leave the book as the first run left it: replay was from empty, so it is.
            elif op == "quit":
                stream.write(b"{}\n")
                stream.flush()
                return
            else:
                reply = {"error": f"unknown op {op!r}"}
            stream.write(json.dumps(reply).encode() + b"\n")
            stream.flush()
