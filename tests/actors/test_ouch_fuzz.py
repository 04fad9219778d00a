"""Random OUCH 5.0 messages, well framed but with random field values (sides, times in force, prices from
0 to 2**63, quantities up to 2**32 - 1, unknown symbols, reused and random UserRefNums, replaces,
cancels and modifies of anything), from two users through a real cluster with journals: nothing dies, nothing
is logged as an error, and every order the book holds is one its owner was told about."""

from __future__ import annotations

import collections
import random
import time

from actors.admin import admin_request
from actors.ouch_client import ConnectionClosed, OuchClient
from exchange import ouch
from tests.actors.cluster_helpers import start_cluster, users_toml, write_config

USERS = {"F1": ("f1-pw", "A1"), "F2": ("f2-pw", "A2")}
SYMBOLS = ["AAPL", "MSFT", "GOOG", "TSLA", "ZZZZ", "", "aapl", "A\x00B"]


def _message(rng: random.Random, next_ref: int, n: int) -> tuple[str, bytes, int | None]:
    kind = rng.choices("OUXMQ", [6, 2, 2, 1, 0.2])[0]
    # Mostly the next UserRefNum; else a gap ahead (allowed), one used already or 0 (ignored, as the spec says).
    ref = rng.choice([next_ref] * 8 + [next_ref + rng.randrange(1, 5), rng.randrange(0, next_ref)])
    grid_price = rng.randrange(990_000, 1_010_000, 100)
    if kind == "O":
        fields = dict(user_ref_num=ref, side=rng.choice("BSBSBSTEZ"), quantity=rng.choice(
                          [rng.randrange(1, 1000)] * 4 + [0, 2**32 - 1, rng.randrange(0, 2**32)]),
                      symbol=rng.choice(SYMBOLS[:4] * 3 + SYMBOLS).ljust(8)[:8],
                      price=rng.choice([grid_price] * 6 + [rng.randrange(0, 2**40), 0, 2**63 - 1, grid_price + 1]),
                      time_in_force=rng.choice("000335569"), display=rng.choice("YYYYNPAIQ"),
                      capacity=rng.choice("APR"),
                      inter_market_sweep_eligibility=rng.choice("NNY"), cross_type=rng.choice("NNNNNNOC"),
                      cl_ord_id=f"c{n}")
    elif kind == "U":
        fields = dict(orig_user_ref_num=rng.randrange(0, next_ref + 2), user_ref_num=ref,
                      quantity=rng.choice([rng.randrange(0, 500), 2**32 - 1]),
                      price=rng.choice([grid_price, 7, 0, 2**63 - 1]), time_in_force=rng.choice("035"),
                      display=rng.choice("YN"), inter_market_sweep_eligibility="N", cl_ord_id=f"r{n}")
    elif kind == "X":
        fields = dict(user_ref_num=rng.randrange(0, next_ref + 2),
                      quantity=rng.choice([0, rng.randrange(500), 2**32 - 1]))
    elif kind == "M":
        fields = dict(user_ref_num=rng.randrange(0, next_ref + 2), side=rng.choice("BSTEZ"),
                      quantity=rng.choice([0, rng.randrange(500)]))
    else:
        fields = {}
    return kind, ouch.encode_inbound(kind, **fields), fields.get("user_ref_num") if kind in "OU" else None


def test_random_ouch_fields_through_a_cluster_break_nothing(tmp_path):
    users = users_toml(USERS)
    path = write_config(tmp_path, extra=users + '[durability]\nenabled = true\nfsync = "none"\n')
    cluster = start_cluster(path, tmp_path / "logs")
    rng = random.Random(20261205)
    clients = {user: OuchClient(*cluster.config.ouch_address(), user, pw, next_seq=1)
               for user, (pw, _) in USERS.items()}
    next_ref = dict.fromkeys(USERS, 1)
    try:
        for n in range(1500):
            user = rng.choice(list(USERS))
            kind, payload, ref = _message(rng, next_ref[user], n)
            clients[user].send(payload)
            if ref is not None and ref >= next_ref[user]:
                next_ref[user] = ref + 1
            if n % 100 == 0:
                for client in clients.values():
                    list(client.messages(0.0))
        time.sleep(1.0)
        for _ in range(10):
            cluster.pump(0.05)
        assert all(cluster.alive().values()), cluster.events
        # Every session is still up (the messages were well formed) and every answer can be replayed.
        told: dict[str, set[int]] = {}
        for user, (pw, _) in USERS.items():
            clients[user].close()
            replay = OuchClient(*cluster.config.ouch_address(), user, pw, next_seq=1)
            messages: list[dict] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                got = list(replay.messages(0.2))
                messages += got
                if not got and messages:
                    break
            replay.close()
            kinds = collections.Counter(m["type"] for m in messages)
            assert kinds["A"] > 10 and kinds["E"] > 5 and kinds["J"] > 50 and kinds[None] == 0, kinds
            told[user] = {m["order_reference_number"] for m in messages if m["type"] in "AU"}
        # What rests in the books was announced to its owner (Accepted or Replaced).
        for symbol in ("AAPL", "MSFT", "GOOG", "TSLA"):
            for order in admin_request(cluster.config, f"book/{symbol}", {"command": "snapshot"})["state"]["orders"]:
                owner = {"A1": "F1", "A2": "F2"}[order[1]]
                assert order[0] in told[owner], (symbol, order)
        for name in cluster.nodes:
            log = (tmp_path / "logs" / f"{name}.log").read_text()
            assert " ERROR " not in log and "Traceback" not in log, (name, log[-2000:])
    finally:
        for client in clients.values():
            try:
                client.close()
            except (OSError, ConnectionClosed):
                pass
        cluster.stop()
