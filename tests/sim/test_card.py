"""The simulated card as a host sees it: ``matchwire card sim`` (cocotb on Verilator, or Icarus) serving the card top
on a TCP port, the host's HardwareBook on ``socket://``, and a relay in between that damages frames both ways."""

from __future__ import annotations

import random

import pytest

from actors.cli import main as cli_main
from exchange.card_protocol import MAGIC, VERSION, matcher_preset
from exchange.instruments import Instrument
from host.card import CardLink, HardwareBook
from sim.card_sim import CardSimProcess, FrameTamper, TamperRelay, random_policy
from sim.matcher_backend import first_mismatch, random_commands, reference_events
from sim.runner import simulator_available

SIMULATOR = next((s for s in ("verilator", "icarus") if simulator_available(s)), None)
pytestmark = pytest.mark.skipif(SIMULATOR is None, reason="neither Verilator nor Icarus Verilog is usable")
INSTRUMENT = Instrument("TEST")


@pytest.fixture(scope="module")
def card_sim(tmp_path_factory):
    log = tmp_path_factory.mktemp("card-sim") / "card-sim.log"
    with CardSimProcess(simulator=SIMULATOR, preset="default", log_path=log) as sim:
        yield sim


def test_the_simulated_card_identifies_itself(card_sim):
    with CardLink(card_sim.url) as card:
        assert (card.identity.magic, card.identity.version) == (MAGIC, f"{VERSION[0]}.{VERSION[1]}")
        assert card.config == matcher_preset("default") and card.identity.clock_hz == 0


def test_a_damaging_line_loses_and_repeats_no_command(card_sim):
    config = matcher_preset("default")
    commands = random_commands(random.Random(21), 160, config, INSTRUMENT, spread_ticks=6)
    expected = reference_events(commands, INSTRUMENT, config)
    to_card = FrameTamper(random_policy(random.Random(1), 0.0), random.Random(2))
    to_host = FrameTamper(random_policy(random.Random(3), 0.0), random.Random(4))
    with TamperRelay("127.0.0.1", card_sim.port, to_card=to_card, to_host=to_host) as relay:
        book = HardwareBook(INSTRUMENT, relay.url)  # opened over a clean line, then the damage starts
        book.card.timeout, book.card.retries = 0.3, 12
        card_before, host_before = book.card.status().commands, book.card.stats.commands
        to_card.policy = random_policy(random.Random(1), 0.08)
        to_host.policy = random_policy(random.Random(3), 0.08)
        got = [book.process(command) for command in commands]
        mismatch = first_mismatch(commands, expected, got)
        assert mismatch is None, mismatch
        to_card.policy = to_host.policy = lambda index, body: "pass"
        status = book.card.status()
        stats = book.card.stats
        book.close()
    actions = {action for _, action in to_card.log + to_host.log}
    assert {"corrupt", "truncate", "glue", "duplicate"} <= actions, actions
    # Each record the host sent ran exactly once (the card's counters span connections: take differences).
    assert status.commands - card_before == stats.commands - host_before > len(commands) // 2
    assert stats.resends > 0 and status.duplicates > 0
    assert status.frames_crc + status.frames_truncated > 0


SCRIPT = """\
{"op": "set_base", "symbol": "ACME", "price": 1000}
{"op": "new", "symbol": "ACME", "order_id": 1, "account": "MM1", "side": "sell", "price": 1010, "qty": 300}
{"op": "new", "symbol": "ACME", "order_id": 2, "account": "MM2", "side": "sell", "price": 1010, "qty": 200}
{"op": "new", "symbol": "ACME", "order_id": 3, "account": "MM1", "side": "buy", "price": 1020, "qty": 400}
{"op": "modify", "symbol": "ACME", "order_id": 2, "qty": 50}
{"op": "new", "symbol": "ACME", "order_id": 4, "account": "MM2", "side": "buy", "type": "market", "qty": 80}
{"op": "cancel", "symbol": "ACME", "order_id": 2}
{"op": "cancel", "symbol": "ACME", "order_id": 2}
"""


def test_match_verb_replays_a_script_through_the_card(card_sim, tmp_path, capsys):
    script = tmp_path / "script.jsonl"
    script.write_text(SCRIPT)
    assert cli_main(["match", str(script)]) == 0
    software = capsys.readouterr().out
    assert cli_main(["match", str(script), "--backend", "card", "--link", card_sim.url]) == 0
    card = capsys.readouterr().out
    assert card == software and card.count("\n") >= 12 and '"fill"' in card


def test_icarus_serves_the_small_card(tmp_path):
    if not simulator_available("icarus"):
        pytest.skip("Icarus Verilog not installed")
    config = matcher_preset("small")
    commands = random_commands(random.Random(4), 40, config, INSTRUMENT)
    expected = reference_events(commands, INSTRUMENT, config)
    with CardSimProcess(simulator="icarus", preset="small", log_path=tmp_path / "icarus.log") as sim:
        book = HardwareBook(INSTRUMENT, sim.url, timeout=5.0)
        got = [book.process(command) for command in commands]
        book.close()
    assert first_mismatch(commands, expected, got) is None
