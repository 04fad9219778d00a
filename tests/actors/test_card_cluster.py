"""End to end: one order flow through a cluster twice, software books and then a simulated card for one instrument
(``[[node]] backend = "card"``, ``link = "socket://..."`` served by ``matchwire card sim``), gives identical execution
reports at the clients and an identical ITCH capture (timestamps aside)."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest

from actors.client import ClusterClient
from exchange.itch import read_itch_file
from exchange.orders import Fill, OrderType, Side, TimeInForce
from host.card import CardLink
from sim.card_sim import CardSimProcess
from sim.runner import simulator_available
from tests.actors.cluster_helpers import free_port_block, start_cluster

SIMULATOR = next((s for s in ("verilator", "icarus") if simulator_available(s)), None)
pytestmark = pytest.mark.skipif(SIMULATOR is None, reason="neither Verilator nor Icarus Verilog is usable")

CARD_SYMBOL = "AAPL"
SYMBOLS = ("AAPL", "MSFT")
BASE = 1_000_000
TICK = 100


def cluster_file(tmp_path: Path, name: str, capture: Path, card_link: str | None) -> Path:
    base = free_port_block(100)
    card = f'backend = "card"\nlink = "{card_link}"\n' if card_link else ""
    text = f"""
[cluster]
name = "{name}"
transport = "tcp"
host = "127.0.0.1"
base_port = {base}
ipc_dir = "{tmp_path}/ipc"
control_port = {base + 90}
client_port = {base + 91}

[[node]]
name = "gateway"
actors = ["gateway/0"]

[[node]]
name = "risk"
actors = ["risk/0", "risk/1"]

[[node]]
name = "card"
actors = ["book/{CARD_SYMBOL}"]
{card}
[[node]]
name = "book2"
actors = ["book/MSFT"]

[[node]]
name = "md"
actors = ["md/0"]

[[instrument]]
symbol = "AAPL"
tick_size = {TICK}
reference_price = {BASE}

[[instrument]]
symbol = "MSFT"
tick_size = {TICK}
reference_price = {BASE}

[[account]]
name = "A1"

[[account]]
name = "A2"

[[account]]
name = "A3"

[market_data]
capture_file = "{capture}"
heartbeat_interval = 0.3
"""
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def order_flow(seed: int, count: int) -> list[tuple[str, str, tuple, dict]]:
    """(client, method, args, kwargs) steps within what the card supports: limit orders of every time in force,
    post-only, market orders, cancels and modifies, around the reference price."""
    rng = random.Random(seed)
    live: dict[str, list[tuple[str, int]]] = {s: [] for s in SYMBOLS}
    next_id = {"c1": 1, "c2": 1}
    accounts = {"c1": ("A1", "A2"), "c2": ("A3",)}
    steps = []
    for _ in range(count):
        symbol = rng.choice(SYMBOLS)
        client = rng.choice(("c1", "c2"))
        roll = rng.random()
        own = [oid for c, oid in live[symbol] if c == client]
        if roll < 0.6 or not own:
            oid = next_id[client]
            next_id[client] += 1
            side = rng.choice((Side.BUY, Side.SELL))
            qty = 100 * rng.randint(1, 8)
            kind = rng.random()
            kwargs: dict = {}
            price: int | None = BASE + TICK * rng.randint(-6, 6)
            if kind < 0.12:
                kwargs["tif"] = TimeInForce.IOC
            elif kind < 0.18:
                kwargs["tif"] = TimeInForce.FOK
            elif kind < 0.24:
                kwargs["tif"], price = TimeInForce.IOC, None
                kwargs["order_type"] = OrderType.MARKET
            elif kind < 0.32:
                kwargs["post_only"] = True
            elif kind < 0.38:
                kwargs["tif"] = TimeInForce.DAY
            steps.append((client, "new_order", (symbol, oid, rng.choice(accounts[client]), side, qty), kwargs | {
                "price": price}))
            live[symbol].append((client, oid))
        elif roll < 0.8:
            oid = rng.choice(own)
            steps.append((client, "cancel", (symbol, oid), {}))
        else:
            oid = rng.choice(own)
            if rng.random() < 0.5:
                steps.append((client, "modify", (symbol, oid), {"qty": 100 * rng.randint(1, 6)}))
            else:
                steps.append((client, "modify", (symbol, oid), {"price": BASE + TICK * rng.randint(-6, 6)}))
    return steps


def _mentions(event, order_id: int) -> bool:
    if isinstance(event, Fill):
        return order_id in (event.taker_order_id, event.maker_order_id)
    return getattr(event, "order_id", None) == order_id


def run_flow(config_path: Path, log_dir: Path, steps) -> dict[tuple[str, str], list]:
    """Run the steps one at a time (each waits for a report on its order, so the books see them in this order);
    returns every report per (client, symbol), in arrival order."""
    cluster = start_cluster(config_path, log_dir)
    reports: dict[tuple[str, str], list] = defaultdict(list)
    try:
        endpoint = cluster.config.client_endpoint()
        with ClusterClient(endpoint, name="c1") as c1, ClusterClient(endpoint, name="c2") as c2:
            clients = {"c1": c1, "c2": c2}
            pending: dict[str, list] = {"c1": [], "c2": []}

            def absorb(name: str, timeout: float) -> None:
                for event, _ in clients[name].poll(timeout):
                    pending[name].append(event)
                    reports[(name, event.symbol)].append(event)

            for client, method, args, kwargs in steps:
                getattr(clients[client], method)(*args, **kwargs)
                order_id = args[1]
                for _ in range(200):
                    if any(_mentions(e, order_id) for e in pending[client]):
                        break
                    absorb(client, 0.05)
                else:
                    raise AssertionError(f"no report for {client} {method}{args} within 10 s")
                pending[client].clear()
                absorb("c1" if client == "c2" else "c2", 0)
            for _ in range(10):  # the last reports (the other side of the last fills)
                absorb("c1", 0.05)
                absorb("c2", 0.05)
    finally:
        cluster.stop()
    return dict(reports)


def itch_by_stock(capture: Path) -> dict[int, list[dict]]:
    """The capture's messages per stock locate (0: system events), timestamps dropped."""
    out: dict[int, list[dict]] = defaultdict(list)
    for _, message in read_itch_file(capture, errors="raise"):
        message = {k: v for k, v in message.items() if k != "timestamp"}
        out[message["stock_locate"]].append(message)
    return dict(out)


def test_a_simulated_card_book_changes_nothing_but_speed(tmp_path):
    steps = order_flow(seed=8, count=90)
    software_capture = tmp_path / "software.itch"
    software = run_flow(cluster_file(tmp_path, "software", software_capture, None), tmp_path / "logs-sw", steps)

    card_capture = tmp_path / "card.itch"
    with CardSimProcess(simulator=SIMULATOR, preset="default", log_path=tmp_path / "card-sim.log") as sim:
        card = run_flow(cluster_file(tmp_path, "card", card_capture, sim.url), tmp_path / "logs-card", steps)
        with CardLink(sim.url) as link:
            status = link.status()

    # The card did the AAPL book's matching (the host rejects cancels and modifies of orders that are gone itself).
    aapl_steps = sum(1 for _, _, args, _ in steps if args[0] == CARD_SYMBOL)
    assert aapl_steps // 2 < status.commands <= aapl_steps + 2 and status.duplicates == 0
    assert software.keys() == card.keys()
    for key in software:
        assert card[key] == software[key], key
    assert sum(isinstance(e, Fill) for events in software.values() for e in events) >= 10
    software_itch, card_itch = itch_by_stock(software_capture), itch_by_stock(card_capture)
    assert software_itch.keys() == card_itch.keys() and len(software_itch) == 3
    for locate in software_itch:
        assert card_itch[locate] == software_itch[locate], locate
    assert {m["type"] for m in card_itch[1] + card_itch[2]} >= {"R", "A", "E", "D", "U"}
