"""Property tests of the reference engine against tests/exchange/simple_model.py.

Random command streams over a narrow price range (so orders cross often) and three accounts (so
self-trade prevention triggers), mixing every order type, time in force, post-only, icebergs,
STP modes, cancels and modifies of live and unknown ids, end of day, set_base, and a sprinkle of
invalid values. Each stream runs under three book profiles: the unlimited software book, a
capacity-limited hardware-like book (window, max_orders) and a feature-restricted one.

Checked after every command: (a) the engine's events equal the model's, event for event and key for
key (a failure names the first differing event and the command); (b) the book is never crossed;
(c) per order, filled + resting + cancelled = entered (modifies set new leaves); (d) every fill takes
the head of the best level in an L3 book rebuilt from the events alone, at the maker's price, within
the taker's limit, never against the taker's own account under STP; the public queries agree with
the model and the rebuilt book. Also: (e) determinism, byte for byte, directly and through a JSONL
round trip; snapshot/restore mid-stream; and a 20,000-command seeded run against the model.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.engine import SOFTWARE_PROFILE, BookProfile, Exchange, OrderBook
from exchange.instruments import Instrument
from exchange.orders import (
    CancelOrder,
    EndOfDay,
    ModifyOrder,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    SetBasePrice,
    Side,
    TimeInForce,
)
from exchange.script import command_to_json, event_to_json, parse_script
from tests.exchange.simple_model import FeedBook, SimpleExchange, comparable

# On the software profile the engine serves books without a band through fast paths: XYZ (unit grid)
# and QQ (tick 5, lot 10) take them; BND has a band, so it always goes through full validation.
INSTRUMENTS = {
    "XYZ": Instrument("XYZ", tick_size=1, lot_size=1),
    "QQ": Instrument("QQ", tick_size=5, lot_size=10),
    "BND": Instrument("BND", tick_size=1, lot_size=1, band=(98, 102)),
}
PROFILES = {
    "software": SOFTWARE_PROFILE,
    "hardware": BookProfile(name="hw", max_orders=4, window_ticks=5),
    "restricted": BookProfile(name="lite", market_orders=False, reserve_orders=False, post_only=False,
                              self_trade_prevention=False, day_orders=False, fok_orders=False),
}
PRICES = {"XYZ": (95, 105), "QQ": (475, 525), "BND": (96, 104)}

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- command streams ---------------------------------------------------------------------------------


class StreamMaker:
    """Builds random commands one at a time, remembering which ids it has handed out.

    New orders mostly take a fresh id; cancels and modifies mostly name one of the last ten ids on
    its own symbol, so that they often find the order still resting. ``odd`` is the chance that a
    field gets an invalid value (a wrong type, zero, off the grid...).
    """

    def __init__(self, odd: float = 0.04) -> None:
        self.odd = odd
        self.used: list[tuple[str, int]] = []  # (symbol, order_id), newest first
        self.taken: set[int] = set()

    def _odd(self, rng: random.Random) -> bool:
        return rng.random() < self.odd

    def _price(self, rng: random.Random, symbol: str) -> int:
        low, high = PRICES[symbol]
        tick = INSTRUMENTS[symbol].tick_size
        if rng.random() < 0.1:
            return rng.randint(low, high)  # maybe off tick
        return rng.randint(low // tick, high // tick) * tick

    def command(self, rng: random.Random) -> object:
        kind = rng.choices(["new", "cancel", "modify", "end_of_day", "set_base"], [60, 12, 24, 2, 2])[0]
        symbol = rng.choices(["XYZ", "QQ", "BND", "NOPE", "BAD SYM"], [70, 18, 10, 1, 1])[0]
        grid = symbol if symbol in INSTRUMENTS else "XYZ"
        lot = INSTRUMENTS[grid].lot_size
        # Fresh ids are not handed out in ascending order, so that id order differs from arrival order.
        fresh = rng.randrange(1, 10_000)
        while fresh in self.taken:
            fresh += 1
        order_id: object = fresh
        is_fresh = kind == "new"
        if kind in ("new", "cancel", "modify"):
            if self._odd(rng):
                order_id, is_fresh = rng.choice([0, -3, None, "7", 2.0, True]), False
            elif self.used and (kind != "new" or rng.random() < 0.03):
                is_fresh = False
                symbol, order_id = rng.choice(self.used[:10])
                grid = symbol if symbol in INSTRUMENTS else "XYZ"
                lot = INSTRUMENTS[grid].lot_size
        if kind == "new":
            if is_fresh:
                self.used.insert(0, (symbol, fresh))
                self.taken.add(fresh)
            return self._new(rng, symbol, grid, lot, order_id)
        if kind == "cancel":
            return CancelOrder(symbol, order_id)
        if kind == "modify" and rng.random() < 0.25:  # a cut
            qty = rng.choice([rng.randint(1, 4) * lot, rng.randint(1, 12) * lot])
            if self._odd(rng):
                qty = rng.choice([0, -1, 1.0, None, lot + 1 if lot > 1 else 0])
            price = self._price(rng, grid) if self._odd(rng) else None
            return ModifyOrder(symbol, order_id, qty=qty, price=price, reduce=True)
        if kind == "modify":
            lots = rng.randint(1, 12) * lot
            qty = rng.choice([None, lots, lots, lots + 5 if lot > 1 else lots])  # QQ: sometimes off lot
            price = rng.choice([None, self._price(rng, grid)])
            if self._odd(rng):
                qty = rng.choice([0, -1, 1.0, 7])
            if self._odd(rng):
                price = rng.choice([0, 1000, "x"])
            return ModifyOrder(symbol, order_id, qty=qty, price=price)
        if kind == "end_of_day":
            return EndOfDay(symbol)
        return SetBasePrice(symbol, rng.choice([0, 101, None]) if self._odd(rng) else rng.choice([98, 100, 102, 500,
                                                                                                  505]))

    def _new(self, rng: random.Random, symbol: str, grid: str, lot: int, order_id: object) -> NewOrder:
        odd = self._odd
        market = rng.random() < 0.12
        order_type: object = OrderType.MARKET if market else OrderType.LIMIT
        if market:
            tif: object = rng.choice([TimeInForce.IOC, TimeInForce.IOC, TimeInForce.FOK])
            price: object = None
        else:
            tif = rng.choice([TimeInForce.GTC] * 4 + [TimeInForce.DAY] * 2 + [TimeInForce.IOC, TimeInForce.FOK])
            price = self._price(rng, grid)
        can_rest = not market and tif in (TimeInForce.GTC, TimeInForce.DAY)
        display: object = rng.randint(1, 4) * lot if can_rest and rng.random() < 0.3 else 0
        if odd(rng):
            order_type = rng.choice(["limit", None])
        if odd(rng):
            tif = rng.choice(["gtc", None, 5, TimeInForce.GTC, TimeInForce.DAY])
        if odd(rng):
            price = rng.choice([0, -1, 100.0, None, "100", 89, 111, 503, 100])
        qty: object = rng.randint(1, 12) * lot + (rng.choice([0, 0, 0, 0, 0, 0, 0, 0, 0, 5]) if lot > 1 else 0)
        if odd(rng):
            qty = rng.choice([0, -10, 2.5, None, 15, 11])
        if odd(rng):
            display = rng.choice([-1, 1.5, None, 3, 1000, 10])
        account: object = rng.choice("ABC") if not odd(rng) else rng.choice(["", "TOOLONGAC", "A B", None, 7])
        side: object = rng.choice([Side.BUY, Side.SELL]) if not odd(rng) else rng.choice(["buy", None, 1])
        stp: object = rng.choice([SelfTradePrevention.NONE] * 5 + list(SelfTradePrevention))
        if odd(rng):
            stp = rng.choice(["cancel_both", None])
        return NewOrder(symbol, order_id, account, side, price, qty, order_type=order_type, tif=tif,
                        post_only=rng.random() < 0.15, display_qty=display, stp=stp)


SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def streams(draw: st.DrawFn, max_size: int = 80) -> list:
    """A command stream: one drawn seed per command (cheap to draw, and shrinking deletes commands)."""
    maker = StreamMaker()
    return [maker.command(random.Random(draw(SEEDS))) for _ in range(draw(st.integers(1, max_size)))]


STREAMS = streams()


def _base_commands() -> list[SetBasePrice]:
    """Every stream starts by placing the windows, so hardware-profile books see orders."""
    return [SetBasePrice("XYZ", 100), SetBasePrice("QQ", 500), SetBasePrice("BND", 100)]


# -- checking helpers --------------------------------------------------------------------------------


def _describe(index: int, command: object) -> str:
    try:
        return f"command #{index} {command_to_json(command)}"  # type: ignore[arg-type]
    except Exception:  # garbage commands need not serialize
        return f"command #{index} {command!r}"


def _compare_with_model(index: int, command: object, got: list[dict], want: list[dict]) -> None:
    a = [comparable(e) for e in got]
    b = [comparable(e) for e in want]
    if a == b:
        for event in got:
            if event["event"] == "rejected":
                assert isinstance(event["text"], str) and event["text"], f"reject without a text: {event}"
        return
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    pytest.fail(f"{_describe(index, command)}: first mismatch at event {first}\n"
                f"  engine: {got[first] if first < len(got) else '<none>'}\n"
                f"  model:  {want[first] if first < len(want) else '<none>'}\n"
                f"  all engine events: {got}\n  all model events:  {want}")


def _engine_l3(book) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """The engine's book as {(side, price): [(order_id, displayed)]} via its public queries."""
    out = {}
    depth = book.depth()
    for name, side in (("bids", Side.BUY), ("asks", Side.SELL)):
        for price, _qty, _count in depth[name]:
            out[(side.name.lower(), price)] = [(o["order_id"], o["displayed"]) for o in book.orders_at(side, price)]
    return out


def _engine_leaves(book) -> dict[int, int]:
    depth = book.depth()
    leaves = {}
    for name, side in (("bids", Side.BUY), ("asks", Side.SELL)):
        for price, _qty, _count in depth[name]:
            for order in book.orders_at(side, price):
                assert order["order_id"] not in leaves, f"order #{order['order_id']} rests twice"
                leaves[order["order_id"]] = order["leaves"]
    return leaves


class Ledger:
    """Per order: entered (accepted qty, adjusted by modifies), filled and cancelled quantities."""

    def __init__(self) -> None:
        self.entered: dict[tuple[str, int], int] = {}
        self.filled: dict[tuple[str, int], int] = {}
        self.cancelled: dict[tuple[str, int], int] = {}
        self.limit: dict[tuple[str, int], int | None] = {}
        self.stp: dict[tuple[str, int], str] = {}

    def leaves(self, key: tuple[str, int]) -> int:
        return self.entered[key] - self.filled[key] - self.cancelled[key]

    def apply(self, event: dict) -> None:
        kind, symbol = event["event"], event.get("symbol")
        if kind == "accepted":
            key = (symbol, event["order_id"])
            assert key not in self.entered, f"order id accepted twice: {event}"
            self.entered[key], self.filled[key], self.cancelled[key] = event["qty"], 0, 0
            self.limit[key] = event["price"]
            self.stp[key] = event.get("stp", "none")
        elif kind == "fill":
            for role in ("maker", "taker"):
                key = (symbol, event[f"{role}_order_id"])
                self.filled[key] += event["qty"]
                assert self.leaves(key) >= 0, f"{role} overfilled: {event}"
            taker = (symbol, event["taker_order_id"])
            limit = self.limit[taker]
            if limit is not None:
                ok = event["price"] <= limit if event["taker_side"] == "buy" else event["price"] >= limit
                assert ok, f"fill at {event['price']} outside the taker's limit {limit}: {event}"
            if self.stp[taker] != "none":
                assert event["maker_account"] != event["taker_account"], f"self trade despite STP: {event}"
        elif kind == "cancelled":
            key = (symbol, event["order_id"])
            self.cancelled[key] += event["qty"]
            assert event["qty"] > 0 and self.leaves(key) >= 0, f"cancel of more than remains: {event}"
        elif kind == "modified":
            key = (symbol, event["order_id"])
            self.entered[key] += event["qty"] - self.leaves(key)
            self.limit[key] = event["price"]

    def check(self, symbol: str, resting: dict[int, int]) -> None:
        for key in self.entered:
            if key[0] != symbol:
                continue
            rest = resting.get(key[1], 0)
            assert self.filled[key] + rest + self.cancelled[key] == self.entered[key], (
                f"order {key}: filled {self.filled[key]} + resting {rest} + cancelled {self.cancelled[key]}"
                f" != entered {self.entered[key]}")
        unknown = set(resting) - {oid for sym, oid in self.entered if sym == symbol}
        assert not unknown, f"orders rest in {symbol} that were never accepted: {unknown}"


def run_checked(commands: list, profile: BookProfile) -> None:
    """Run a stream through the engine and the model, checking (a)-(d) after every command."""
    engine = Exchange(INSTRUMENTS, profile=profile)
    model = SimpleExchange(INSTRUMENTS, profile=profile)
    feeds = {symbol: FeedBook() for symbol in INSTRUMENTS}
    ledger = Ledger()
    for index, command in enumerate(commands):
        got = [event.to_dict() for event in engine.process(command)]
        want = model.process(command)
        _compare_with_model(index, command, got, want)  # (a)
        for event in got:
            if event["symbol"] in feeds:
                feeds[event["symbol"]].apply(event)  # (d) fills are checked against the L3 feed book
            ledger.apply(event)  # (c) bookkeeping, and fills within the taker's limit
        symbol = getattr(command, "symbol", None)
        if symbol not in INSTRUMENTS:
            continue
        book, simple = engine.books[symbol], model.books[symbol]
        bid, _, ask, _ = book.bbo()
        assert bid is None or ask is None or bid < ask, f"crossed book after {_describe(index, command)}"  # (b)
        assert book.bbo() == simple.bbo()
        assert book.depth() == simple.depth()
        assert book.depth(2) == simple.depth(2)
        l3 = _engine_l3(book)
        assert l3 == feeds[symbol].snapshot(), f"feed book differs from the engine after {_describe(index, command)}"
        resting = _engine_leaves(book)
        ledger.check(symbol, resting)  # (c)
        assert book.resting_qty() == sum(resting.values()) == simple.resting_qty()


# -- the properties -----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", list(PROFILES), ids=list(PROFILES))
@SETTINGS
@given(commands=STREAMS)
def test_engine_agrees_with_simple_model(profile: str, commands: list) -> None:
    """(a)-(d): same events as the model, an uncrossed book, conserved quantities, priority fills."""
    run_checked(_base_commands() + commands, PROFILES[profile])


@SETTINGS
@given(commands=STREAMS)
def test_events_are_deterministic(commands: list) -> None:
    """(e) the same stream through two fresh exchanges gives byte-identical JSON lines."""
    def run() -> str:
        exchange = Exchange(INSTRUMENTS, profile=PROFILES["hardware"])
        return "".join(event_to_json(e) + "\n" for c in _base_commands() + commands for e in exchange.process(c))

    first, second = run(), run()
    assert first == second
    assert first  # set_base alone gives events, so an empty output is wrong


@pytest.mark.parametrize("profile", ["software", "hardware"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=STREAMS, cut=st.integers(0, 80))
def test_a_book_restored_from_its_snapshot_goes_on_identically(profile: str, commands: list, cut: int) -> None:
    """Snapshot every book mid-stream, pass the snapshot through JSON, restore it into fresh books: the
    rest of the stream gives byte-identical events in the original and the restored exchange."""
    commands = _base_commands() + commands
    original = Exchange(INSTRUMENTS, profile=PROFILES[profile])
    for command in commands[:cut]:
        original.process(command)
    restored = Exchange(INSTRUMENTS, profile=PROFILES[profile])
    for symbol, instrument in INSTRUMENTS.items():
        state = json.loads(json.dumps(original.books[symbol].snapshot()))
        book = OrderBook(instrument, PROFILES[profile])
        book.restore(state)
        restored.books[symbol] = book
    for index, command in enumerate(commands[cut:], start=cut):
        got = [event_to_json(e) for e in restored.process(command)]
        want = [event_to_json(e) for e in original.process(command)]
        assert got == want, f"after restore, {_describe(index, command)}"
    for symbol in INSTRUMENTS:
        assert restored.books[symbol].depth() == original.books[symbol].depth()


CLEAN_NEW = st.builds(
    NewOrder, st.sampled_from(["XYZ", "QQ"]), st.integers(1, 30), st.sampled_from(["A", "B", "C"]),
    st.sampled_from(list(Side)), st.one_of(st.none(), st.integers(95, 105), st.integers(480, 520)),
    st.integers(1, 12).map(lambda n: n * 10), order_type=st.sampled_from(list(OrderType)),
    tif=st.sampled_from(list(TimeInForce)), post_only=st.booleans(), display_qty=st.sampled_from([0, 0, 10, 20]),
    stp=st.sampled_from(list(SelfTradePrevention)))
CLEAN_STREAMS = st.lists(st.one_of(
    CLEAN_NEW, CLEAN_NEW, CLEAN_NEW,
    st.builds(CancelOrder, st.sampled_from(["XYZ", "QQ"]), st.integers(1, 30)),
    st.builds(ModifyOrder, st.sampled_from(["XYZ", "QQ"]), st.integers(1, 30),
              qty=st.one_of(st.none(), st.integers(1, 12).map(lambda n: n * 10)),
              price=st.one_of(st.none(), st.integers(95, 105))),
    st.builds(EndOfDay, st.sampled_from(["XYZ", "QQ"])),
), max_size=50)


@SETTINGS
@given(commands=CLEAN_STREAMS)
def test_script_round_trip_gives_the_same_events(commands: list) -> None:
    """(e) writing a stream as a JSONL script and parsing it back changes no event, byte for byte."""
    script = [command_to_json(c) for c in commands]
    parsed = list(parse_script(script))
    assert len(parsed) == len(commands)

    def run(stream: list) -> list[str]:
        exchange = Exchange(INSTRUMENTS)
        return [event_to_json(e) for c in stream for e in exchange.process(c)]

    assert run(parsed) == run(commands)
    for line in run(commands):
        assert json.loads(line)["event"]


# -- a long seeded run ----------------------------------------------------------------------------------


def test_long_seeded_run_agrees_with_model() -> None:
    """20,000 commands from a fixed seed, compared event for event, with the invariants checked."""
    rng = random.Random(20_240_611)
    maker = StreamMaker(odd=0.01)
    commands = [maker.command(rng) for _ in range(20_000)]
    engine = Exchange(INSTRUMENTS)
    model = SimpleExchange(INSTRUMENTS)
    kinds: dict[str, int] = {}
    for index, command in enumerate(commands):
        got = [event.to_dict() for event in engine.process(command)]
        _compare_with_model(index, command, got, model.process(command))
        for event in got:
            key = event["event"] + ":" + str(event.get("reason", ""))
            kinds[key] = kinds.get(key, 0) + 1
        if command.symbol in INSTRUMENTS:
            bid, _, ask, _ = engine.books[command.symbol].bbo()
            assert bid is None or ask is None or bid < ask
    # The stream must really exercise the rules it claims to: every outcome shows up many times.
    for key in ("fill:", "order_added:", "order_reduced:", "modified:", "cancelled:user", "cancelled:ioc",
                "cancelled:fok", "cancelled:stp", "cancelled:post_only", "cancelled:expired",
                "rejected:unknown_order", "rejected:no_change", "rejected:duplicate_order_id"):
        assert kinds.get(key, 0) >= 20, f"the long run produced {key} only {kinds.get(key, 0)} times: {kinds}"


def test_long_run_detects_a_divergence() -> None:
    """The comparison is not vacuous: a model that forgets one rule is caught."""
    engine = Exchange(INSTRUMENTS)
    model = SimpleExchange(INSTRUMENTS)
    commands = [NewOrder("XYZ", 1, "A", Side.SELL, 100, 5), NewOrder("XYZ", 2, "B", Side.BUY, 101, 5)]
    for command in commands[:1]:
        engine.process(command)
        model.process(command)
    model.books["XYZ"].resting[0].price = 99  # the model now believes the ask is at 99
    with pytest.raises(pytest.fail.Exception, match="first mismatch at event 1"):
        _compare_with_model(1, commands[1], [e.to_dict() for e in engine.process(commands[1])],
                            model.process(commands[1]))
