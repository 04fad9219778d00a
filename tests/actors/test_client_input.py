"""ClusterClient against a gateway that misbehaves: a real ROUTER socket playing the gateway sends it garbage,
and every bad message is counted and skipped while the good ones around it still arrive."""

from __future__ import annotations

import time

import zmq

from actors.client import ClusterClient
from exchange.orders import Accepted, CancelOrder, OrderType, SelfTradePrevention, Side, TimeInForce
from exchange.wire import MSG_REPORTS, REPORT_SIZE, event_to_record, pack_header


def _accepted(order_id: int) -> bytes:
    # Built from its items as a book's report decodes (Accepted's constructor takes a new order and its seq).
    return event_to_record(tuple.__new__(Accepted, (1, "AAPL", order_id, "A1", Side.BUY, OrderType.LIMIT,
                                                    TimeInForce.GTC, 100, 10, 0, False, SelfTradePrevention.NONE)))


def test_malformed_messages_are_counted_and_skipped():
    context = zmq.Context()
    gateway = context.socket(zmq.ROUTER)
    gateway.setsockopt(zmq.LINGER, 0)
    port = gateway.bind_to_random_port("tcp://127.0.0.1")
    client = ClusterClient(f"tcp://127.0.0.1:{port}", name="garbage-test", context=context)
    try:
        client.queue(CancelOrder("AAPL", 1))
        assert client.flush()
        identity, header, payload = gateway.recv_multipart()  # the client is connected: answer it
        good = _accepted(7)
        for frames in ([b"one frame only"],  # no header
                       [pack_header(MSG_REPORTS, 1, 0, 0, 0), good, b"a third frame"],
                       [b"\xff" * 16, good],  # an unknown version and kind
                       [pack_header(MSG_REPORTS, 2, 0, 0, 0), good],  # the count disagrees with the payload
                       [pack_header(MSG_REPORTS, 1, 0, 0, 0), good]):  # the only good one
            gateway.send_multipart([identity, *frames])
        deadline = time.monotonic() + 5
        records: list[bytes] = []
        while client.malformed < 4 or not records:
            assert time.monotonic() < deadline, (client.malformed, records)
            records += client.poll_records(0.05)
        assert client.malformed == 4
        assert records == [good] and len(good) == REPORT_SIZE and client.received == 1
    finally:
        client.close()
        gateway.close(linger=0)
        context.term()
