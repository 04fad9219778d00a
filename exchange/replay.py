"""Replaying command scripts through books: the engine of ``matchwire match``.

The replay is backend-agnostic: it drives any :class:`~exchange.engine.Exchange`, whatever
book factory matches behind it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TextIO

from exchange.engine import Exchange
from exchange.orders import Command, Event
from exchange.script import ScriptError, event_to_json, parse_script


def load_script(lines: Iterable[str], errors: TextIO, source: str = "script") -> list[Command]:
    """Parse a whole script, reporting malformed lines to ``errors`` as ``SOURCE:LINE: reason``."""
    commands: list[Command] = []
    for item in parse_script(lines):
        if isinstance(item, ScriptError):
            errors.write(f"{source}:{item.line}: {item.reason}; line skipped\n")
        else:
            commands.append(item)
    return commands


def replay(commands: Iterable[Command], exchange: Exchange, emit: Callable[[Event], None]) -> int:
    """Feed commands through ``exchange``, handing each event to ``emit``; returns the event count."""
    count = 0
    process = exchange.process
    for command in commands:
        for event in process(command):
            emit(event)
            count += 1
    return count


def replay_to_jsonl(commands: Iterable[Command], exchange: Exchange, out: TextIO) -> int:
    """Replay and write one JSON line per event."""
    write = out.write
    return replay(commands, exchange, lambda event: write(event_to_json(event) + "\n"))


def bench(commands: list[Command], make_exchange: Callable[[], Exchange], min_seconds: float = 1.0) -> dict:
    """Time the engine alone over pre-parsed commands, repeating until ``min_seconds`` have passed.

    Each repetition starts from a fresh exchange; only the command loop is timed.
    """
    if not commands:
        raise ValueError("nothing to time: the script holds no commands")
    elapsed = 0
    messages = 0
    events = 0
    rounds = 0
    clock = time.perf_counter_ns
    while elapsed < min_seconds * 1e9 or rounds == 0:
        exchange = make_exchange()
        process = exchange.process
        start = clock()
        for command in commands:
            events += len(process(command))
        elapsed += clock() - start
        messages += len(commands)
        rounds += 1
    ns_per_msg = elapsed / messages
    return {"ns_per_msg": ns_per_msg, "msgs_per_s": 1e9 / ns_per_msg, "messages": messages, "rounds": rounds,
            "events_per_msg": events / messages}
