"""The SoupBinTCP server on loopback, with nasdaq-protocols' client (conformance) and ours.

The application is the gateway in miniature and without a cluster: the OUCH translator in front of the
reference engine, run on the server thread, answering through ``send_sequenced``.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from contextlib import contextmanager

import pytest
from nasdaq_protocols import soup as nsoup

from actors.ouch_client import ConnectionClosed, LoginRejected, OuchClient
from actors.sequenced_store import MemorySequencedStore
from actors.soup_server import SoupApplication, SoupServer
from exchange import ouch
from exchange import soupbintcp as soup
from exchange.accounts import User, Users, hash_password
from exchange.engine import Exchange

SESSION = "TEST000001"
PASSWORDS = {"DEMO1": "pw1", "DEMO2": "pw2", "DEMO3": "pw3"}
USERS = Users(User(name, hash_password(pw, n=1 << 8), (f"ACC{name[-1]}",)) for name, pw in PASSWORDS.items())


class EngineApp(SoupApplication):
    """OUCH translator + reference engine behind the server (what the gateway actor will do via the
    cluster)."""

    def __init__(self) -> None:
        self.server: SoupServer | None = None
        self.exchange = Exchange()
        self.translator = ouch.OuchTranslator(USERS.accounts)
        self.logins: list[str] = []
        self.logouts: list[str] = []
        self.auth_calls = 0

    def authenticate(self, username: str, password: str) -> bool:
        self.auth_calls += 1
        return USERS.authenticate(username, password)

    def on_login(self, username: str) -> None:
        self.logins.append(username)

    def on_logout(self, username: str) -> None:
        self.logouts.append(username)

    def on_message(self, username: str, payload: bytes) -> None:
        result = self.translator.on_message(username, payload)
        if result.error is not None:
            self.server.disconnect(username)  # malformed OUCH: a protocol violation
            return
        for reply in result.replies:
            self.server.send_sequenced(username, reply)
        for command in result.commands:
            for user, out in self.translator.on_events(self.exchange.process(command)):
                self.server.send_sequenced(user, out)


@contextmanager
def running(**options):
    app = EngineApp()
    server = SoupServer(app, session=SESSION, **options)
    app.server = server
    server.start()
    try:
        yield server, app
    finally:
        server.stop(timeout=3)


def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def take(c: OuchClient, n: int, timeout: float = 5.0) -> list[dict]:
    """Exactly ``n`` reports (fails if they do not arrive in time)."""
    out = []
    for _ in range(n):
        msg = c.recv(timeout)
        assert msg is not None, f"only {len(out)} of {n} reports arrived"
        out.append(msg)
    return out


def enter(ref: int, side: str = "B", qty: int = 100, price: int = 1_000_000, symbol: str = "AAPL") -> bytes:
    return ouch.encode_inbound("O", user_ref_num=ref, side=side, quantity=qty, symbol=symbol, price=price,
                               time_in_force="5", display="Y", capacity="A", inter_market_sweep_eligibility="N",
                               cross_type="N", cl_ord_id=f"C{ref}")


def client(server: SoupServer, user: str = "DEMO1", **kw) -> OuchClient:
    return OuchClient(*server.address, user, PASSWORDS.get(user, "x"), **kw)


def raw_connect(server: SoupServer, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(server.address)
    sock.settimeout(5)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> list[soup.Packet]:
    """Every packet the server sends until it closes the connection."""
    decoder = soup.SoupDecoder(soup.SERVER)
    sock.settimeout(timeout)
    packets: list[soup.Packet] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return packets
        decoder.feed(data)
        packets += decoder.packets()


def raw_login(server: SoupServer, user: str = "DEMO1", seq: int = 0) -> socket.socket:
    sock = raw_connect(server)
    sock.sendall(soup.login_request(user, PASSWORDS[user], "", seq))
    decoder = soup.SoupDecoder(soup.SERVER)
    while True:
        decoder.feed(sock.recv(4096))
        packets = list(decoder.packets())
        if packets:
            assert packets[0].type == "A"
            return sock


# -- conformance: nasdaq-protocols' SoupBinTCP client, unchanged ---------------------------------------------


def test_nasdaq_protocols_client_logs_in_and_trades():
    async def scenario(address):
        session = await nsoup.connect_async(address, "DEMO1", "pw1", "", 1, client_heartbeat_interval=1,
                                            server_heartbeat_interval=3)
        assert session.session_id.session == SESSION
        session.send_unseq_data(enter(1))
        reply = await asyncio.wait_for(session.receive_msg(), 5)
        assert isinstance(reply, nsoup.SequencedData)
        accepted = ouch.decode_outbound(reply.data)
        assert (accepted["type"], accepted["user_ref_num"], accepted["quantity"]) == ("A", 1, 100)
        # Idle: both sides heartbeat and nobody times out. (nasdaq-protocols heartbeats only after a whole
        # interval without a ping *and* a check, so its gap is up to 2 intervals: wait for the second.)
        await asyncio.sleep(2.2)
        assert session.is_active()
        session.send_unseq_data(ouch.encode_inbound("X", user_ref_num=1, quantity=0))
        canceled = ouch.decode_outbound((await asyncio.wait_for(session.receive_msg(), 5)).data)
        assert (canceled["type"], canceled["quantity"], canceled["reason"]) == ("C", 100, "U")
        assert session.sequence == 2
        session.logout()
        await asyncio.sleep(0.1)

    with running() as (server, app):
        asyncio.run(scenario(server.address))
        wait_for(lambda: app.logouts == ["DEMO1"])
        counters = server.counters()
        assert counters["heartbeats_out"] >= 1 and counters["heartbeats_in"] >= 1
        assert counters["logouts"] == 1 and counters["protocol_errors"] == 0


def test_nasdaq_protocols_replay_and_sequence_zero():
    async def scenario(address):
        first = await nsoup.connect_async(address, "DEMO2", "pw2", "", 1, client_heartbeat_interval=1)
        for ref in (1, 2, 3):
            first.send_unseq_data(enter(ref, price=1_000_000 - ref))
        for _ in range(3):
            await asyncio.wait_for(first.receive_msg(), 5)
        first.logout()
        await asyncio.sleep(0.2)
        # Ask for message 2: the server replays 2 and 3, and says so in Login Accepted.
        again = await nsoup.connect_async(address, "DEMO2", "pw2", SESSION, 2, client_heartbeat_interval=1)
        assert again.sequence == 1  # nasdaq-protocols keeps "last received" = Login Accepted's number - 1
        replayed = [ouch.decode_outbound((await asyncio.wait_for(again.receive_msg(), 5)).data) for _ in range(2)]
        assert [m["user_ref_num"] for m in replayed] == [2, 3]
        again.logout()
        await asyncio.sleep(0.2)
        # Sequence 0: start with the next message generated; no replay.
        fresh = await nsoup.connect_async(address, "DEMO2", "pw2", "", 0, client_heartbeat_interval=1)
        assert fresh.sequence == 3
        fresh.send_unseq_data(enter(4))
        msg = ouch.decode_outbound((await asyncio.wait_for(fresh.receive_msg(), 5)).data)
        assert msg["user_ref_num"] == 4
        fresh.logout()
        await asyncio.sleep(0.1)

    with running() as (server, _):
        asyncio.run(scenario(server.address))
        assert server.counters()["replayed"] == 2


def test_nasdaq_protocols_login_refused():
    async def scenario(address):
        with pytest.raises(ConnectionRefusedError):
            await nsoup.connect_async(address, "DEMO1", "wrong", "", 1)
        with pytest.raises(ConnectionRefusedError):
            await nsoup.connect_async(address, "DEMO1", "pw1", "OTHERSESS", 1)

    with running() as (server, _):
        asyncio.run(scenario(server.address))
        counters = server.counters()
        assert counters["logins_rejected_auth"] == 1 and counters["logins_rejected_session"] == 1


def test_nasdaq_protocols_sync_client():
    with running() as (server, _):
        session = nsoup.connect(server.address, "DEMO3", "pw3", "", 1, client_heartbeat_interval=1)
        try:
            session.send_msg(nsoup.UnSequencedData(enter(1)))
            reply = session.receive()
            assert ouch.decode_outbound(reply.data)["type"] == "A"
        finally:
            session.logout()


# -- our client ---------------------------------------------------------------------------------------------


def test_two_users_trade():
    with running() as (server, app):
        with client(server, "DEMO1") as seller, client(server, "DEMO2") as buyer:
            assert seller.session == SESSION
            ref = seller.enter_order("AAPL", "S", 100, 1_000_000)
            assert seller.recv(2)["type"] == "A"
            buy = buyer.enter_order("AAPL", "B", 60, 1_000_000, time_in_force="3")
            assert [buyer.recv(2)["type"] for _ in range(2)] == ["A", "E"]
            fill = seller.recv(2)
            assert (fill["type"], fill["user_ref_num"], fill["quantity"], fill["liquidity_flag"]) == ("E", ref, 60, "A")
            assert buyer.next_user_ref_num == buy + 1
            # Nobody can cancel someone else's order.
            buyer.cancel_order(ref)
            assert buyer.recv(2)["type"] == "I"
            seller.cancel_order(ref)
            canceled = seller.recv(2)
            assert (canceled["type"], canceled["quantity"], canceled["seq"]) == ("C", 40, 3)
        wait_for(lambda: sorted(app.logouts) == ["DEMO1", "DEMO2"])


def test_wrong_password_and_unknown_user_are_refused():
    with running() as (server, _):
        for user, password in (("DEMO1", "nope"), ("NOBODY", "pw1"), ("DEMO1", "")):
            with pytest.raises(LoginRejected) as info:
                OuchClient(*server.address, user, password)
            assert info.value.reason == "A"
        assert server.counters()["logins_rejected_auth"] == 3 and server.live_users() == set()


def test_second_concurrent_login_is_refused():
    with running() as (server, _):
        first = client(server)
        with pytest.raises(LoginRejected) as info:
            client(server)
        assert info.value.reason == "S"
        first.enter_order("AAPL", "B", 1, 1)
        assert first.recv(2)["type"] == "A"
        first.logout()
        wait_for(lambda: not server.live_users())
        second = client(server)  # the slot is free again
        second.logout()


def test_requested_session_must_be_ours():
    with running() as (server, _):
        with pytest.raises(LoginRejected) as info:
            OuchClient(*server.address, "DEMO1", "pw1", session="YESTERDAY")
        assert info.value.reason == "S"
        with OuchClient(*server.address, "DEMO1", "pw1", session=SESSION) as ok:
            assert ok.session == SESSION


def test_data_before_login_disconnects():
    with running() as (server, _):
        for packet in (soup.unsequenced_data(enter(1)), soup.CLIENT_HEARTBEAT, soup.LOGOUT_REQUEST):
            sock = raw_connect(server)
            sock.sendall(packet)
            assert read_until_closed(sock) == []
            sock.close()
        wait_for(lambda: server.counters()["data_before_login"] == 3)


def test_garbage_closes_only_that_session():
    rng = random.Random(6)
    with running() as (server, _):
        with client(server, "DEMO1") as good:
            victims = [raw_login(server, "DEMO2")]
            victims[0].sendall(b"\x00\x05?abcd")  # unknown type after login
            for _ in range(6):  # random bytes before login
                sock = raw_connect(server)
                sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))))
                victims.append(sock)
            bad_length = raw_connect(server)
            bad_length.sendall(b"\x00\x30L" + bytes(47))  # a login request one byte too long
            victims.append(bad_length)
            for sock in victims:
                read_until_closed(sock)  # each is closed by the server...
                sock.close()
            good.enter_order("AAPL", "B", 1, 1)  # ...and the good session carries on
            assert good.recv(2)["type"] == "A"
        counters = server.counters()
        assert counters["protocol_errors"] + counters["data_before_login"] >= 7
        assert counters["logins_accepted"] == 2


def test_malformed_ouch_is_a_protocol_violation():
    with running() as (server, app):
        c = client(server)
        c.send(b"O\x00\x01")
        with pytest.raises(ConnectionClosed):
            c.recv(3)
        wait_for(lambda: app.logouts == ["DEMO1"])


def test_pipelined_packets_behind_the_login_are_processed():
    with running() as (server, _):
        sock = raw_connect(server)
        sock.sendall(soup.login_request("DEMO1", "pw1", "", 1) + soup.unsequenced_data(enter(1)) + soup.LOGOUT_REQUEST)
        packets = read_until_closed(sock)
        sock.close()
        assert [p.type for p in packets] == ["A", "S"]
        assert ouch.decode_outbound(packets[1].payload)["type"] == "A"


def test_unsequenced_packets_of_one_read_are_delivered_as_one_run_in_order():
    """Unsequenced data that arrives together reaches the application in one ``on_messages`` call, and
    a heartbeat or logout between messages keeps its place (the run before it is delivered first)."""
    calls: list[tuple[str, list[bytes]]] = []
    events: list[str] = []

    class Recorder(EngineApp):
        def on_messages(self, username: str, payloads: list[bytes]) -> None:
            calls.append((username, list(payloads)))
            events.append(f"run{len(payloads)}")

        def on_logout(self, username: str) -> None:
            events.append("logout")
            super().on_logout(username)

    app = Recorder()
    server = SoupServer(app, session=SESSION)
    app.server = server
    server.start()
    try:
        sock = raw_login(server)
        messages = [f"m{i}".encode() for i in range(5)]
        sock.sendall(b"".join(soup.unsequenced_data(m) for m in messages[:3]) + soup.CLIENT_HEARTBEAT
                     + b"".join(soup.unsequenced_data(m) for m in messages[3:]) + soup.LOGOUT_REQUEST)
        read_until_closed(sock)
        sock.close()
        wait_for(lambda: "logout" in events)
        assert [p for _, run in calls for p in run] == messages
        assert all(user == "DEMO1" for user, _ in calls)
        assert events[-1] == "logout"
        # The heartbeat ends a run (TCP may split one further, never reorder).
        assert not any(b"m2" in run and b"m3" in run for _, run in calls)
        assert len(calls) >= 2 and max(len(run) for _, run in calls) > 1
        assert server.counters()["unsequenced_in"] == 5
    finally:
        server.stop(timeout=3)


# -- timeouts, limits, slow consumers --------------------------------------------------------------------


def test_silent_client_is_timed_out_and_a_polling_one_is_not():
    with running(heartbeat_timeout=0.6) as (server, app):
        silent = raw_login(server, "DEMO1")
        silent.setblocking(False)
        alive = client(server, "DEMO2", heartbeat_interval=0.2)
        started = time.monotonic()
        received, closed_after = b"", None
        while closed_after is None and time.monotonic() - started < 3:
            alive.poll(0.05)  # the live client keeps heartbeating meanwhile
            try:
                data = silent.recv(4096)
            except BlockingIOError:
                continue
            if data:
                received += data
            else:
                closed_after = time.monotonic() - started
        assert closed_after is not None and 0.5 < closed_after < 2
        assert received == soup.SERVER_HEARTBEAT * (len(received) // 3)  # at most heartbeats, then the close
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            alive.poll(0.05)
        assert alive.connected
        silent.close()
        alive.enter_order("AAPL", "B", 1, 1)
        assert alive.recv(2)["type"] == "A"
        assert server.counters()["heartbeat_timeouts"] == 1 and "DEMO1" in app.logouts
        alive.logout()


def test_connection_without_login_is_closed():
    with running(login_timeout=0.4) as (server, _):
        sock = raw_connect(server)
        assert read_until_closed(sock) == []
        sock.close()
        assert server.counters()["login_timeouts"] == 1


def test_login_flood_is_rate_limited():
    with running(login_rate=1.0, login_burst=3) as (server, app):
        refused = 0
        for _ in range(10):
            with pytest.raises(LoginRejected):
                OuchClient(*server.address, "DEMO1", "guess")
            refused += 1
        counters = server.counters()
        assert refused == 10 and counters["logins_throttled"] >= 6
        assert app.auth_calls <= 4  # throttled attempts never reach the (slow) password check
        time.sleep(1.1)  # the bucket refills
        with client(server) as ok:
            assert ok.connected


def test_slow_consumer_is_disconnected_and_others_are_not():
    with running(stall_timeout=0.5, output_watermark=8192) as (server, _):
        sleeper = raw_connect(server, rcvbuf=4096)
        sleeper.sendall(soup.login_request("DEMO1", "pw1", "", 0))
        time.sleep(0.2)
        started = time.monotonic()
        server.send_sequenced_many("DEMO1", [bytes(200)] * 20000)  # 4 MB it will never read
        with client(server, "DEMO2") as other:
            other.enter_order("AAPL", "B", 1, 1)
            assert other.recv(2)["type"] == "A"
            wait_for(lambda: server.counters()["slow_consumers"] == 1, timeout=5)
            assert time.monotonic() - started < 4
            other.enter_order("AAPL", "B", 1, 1)
            assert other.recv(2)["type"] == "A"
        sleeper.close()


# -- sequencing, replay and reconnect ----------------------------------------------------------------------


def test_reconnect_mid_stream_receives_exactly_what_it_missed():
    with running() as (server, app):
        trader = client(server, "DEMO1")
        refs = [trader.enter_order("AAPL", "S", 10, 1_000_000 + i) for i in range(20)]
        got = [trader.recv(2) for _ in range(5)]
        trader.close()  # the connection drops with reports in flight
        wait_for(lambda: "DEMO1" not in server.live_users())
        with client(server, "DEMO2") as taker:  # fills for DEMO1 while it is away
            taker.enter_order("AAPL", "B", 95, 1_000_009, time_in_force="3")
            assert [m["type"] for m in take(taker, 11)] == ["A"] + ["E"] * 10  # 9 whole makers and 5 of one
        total = server.next_seq("DEMO1") - 1
        assert total == 20 + 10  # 20 accepted, 10 executions
        assert trader.reconnect() <= total
        got += take(trader, total - len(got))
        assert trader.recv(0.05) is None  # and nothing more
        assert [m["seq"] for m in got] == list(range(1, total + 1))  # all of them, once each, in order
        assert [m["user_ref_num"] for m in got if m["type"] == "A"] == refs
        assert sum(m["quantity"] for m in got if m["type"] == "E") == 95
        assert server.counters()["replayed"] > 0
        trader.logout()
        assert app.logins.count("DEMO1") == 2


def test_messages_for_an_absent_user_wait_for_its_login():
    with running() as (server, _):
        for i in range(3):
            server.send_sequenced("DEMO3", ouch.encode_outbound("S", timestamp=i, event_code="S"))
        with client(server, "DEMO3") as c:
            assert [m["timestamp"] for m in take(c, 3)] == [0, 1, 2]
        with client(server, "DEMO3", next_seq=0) as c:  # only new messages
            assert c.next_seq == 4 and c.recv(0.05) is None


def test_large_replay_is_streamed_in_order():
    with running(output_watermark=4096) as (server, _):
        payloads = [ouch.encode_outbound("S", timestamp=i, event_code="S") for i in range(5000)]
        assert server.send_sequenced_many("DEMO1", payloads) == 5000
        with client(server, "DEMO1", next_seq=1234) as c:
            seen = [(m["seq"], m["timestamp"]) for m in take(c, 5000 - 1233)]
            assert c.recv(0.05) is None
        assert seen == [(i + 1, i) for i in range(1233, 5000)]


def test_send_sequenced_from_many_threads():
    with running() as (server, _):
        with client(server, "DEMO1") as c:
            def pump(tag: int) -> None:
                for i in range(200):
                    server.send_sequenced("DEMO1", ouch.encode_outbound("S", timestamp=tag * 1000 + i, event_code="S"))
            threads = [threading.Thread(target=pump, args=(t,)) for t in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            got = take(c, 800)
        assert [m["seq"] for m in got] == list(range(1, 801))
        for tag in range(4):  # each thread's messages in its own order
            mine = [m["timestamp"] for m in got if m["timestamp"] // 1000 == tag]
            assert mine == sorted(mine) and len(mine) == 200


def test_end_of_session_on_stop_and_disconnect():
    with running() as (server, app):
        a, b = client(server, "DEMO1"), client(server, "DEMO2")
        server.disconnect("DEMO2")
        with pytest.raises(ConnectionClosed):
            b.recv(2)
        assert not b.end_of_session
        server.stop()
        with pytest.raises(ConnectionClosed):
            a.recv(2)
        assert a.end_of_session
        assert sorted(app.logouts) == ["DEMO1", "DEMO2"]
        assert server.counters()["end_of_session_sent"] == 1


def test_batch_sends_and_user_ref_num_sync():
    with running() as (server, _):
        with client(server) as c:
            with c.batch():
                refs = [c.enter_order("AAPL", "B", 1, 100 + i) for i in range(50)]
            c.send_many([enter(1000 + i) for i in range(10)])
            got = take(c, 60)
            assert [m["user_ref_num"] for m in got] == refs + list(range(1000, 1010))
        with client(server, first_user_ref_num=1) as restarted:
            assert restarted.sync_user_ref_num() == 1010
            ref = restarted.enter_order("AAPL", "B", 1, 1)
            assert ref == 1010
            msgs = take(restarted, 62)  # the 60 old reports, the query response, the new order
            assert [m["type"] for m in msgs][-2:] == ["Q", "A"]


def test_store_interface():
    store = MemorySequencedStore()
    assert store.next_seq("X") == 1 and store.get_from("X", 1, 10) == []
    assert [store.append("X", bytes([i])) for i in range(5)] == [1, 2, 3, 4, 5]
    assert store.get_from("X", 4, 10) == [b"\x03", b"\x04"] and store.get_from("X", 2, 1) == [b"\x01"]
    assert store.get_from("X", 0, 10) == [] and store.next_seq("X") == 6 and store.next_seq("Y") == 1
