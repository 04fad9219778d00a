"""Engine events -> the ITCH 5.0 messages matchwire publishes. Pure: no sockets, no clock unless given one.

:class:`ItchPublisher` takes each book's events in that book's sequence order (books may interleave freely)
and returns encoded ITCH messages (bytes, no length prefix). A book rebuilt from its output with
:class:`exchange.l3book.L3Book` has the engine's visible depth (``OrderBook.depth``) after every command,
including the time priority of the orders within each level. The mapping:

==========================================  =============================================================
engine event                                ITCH
==========================================  =============================================================
``order_added`` (new, refreshed or moved)   ``A`` add order, or ``F`` when the account has an MPID
                                            (``attribution``); always a fresh order reference number
``fill``                                    ``E`` order executed, on the maker's current reference.
                                            ``P`` trade only when the maker is not visible on our feed
``order_reduced``                           ``X`` order cancel (partial, priority kept)
``order_removed``                           ``D`` order delete
``modified`` (priority lost) + ``order_     ``U`` order replace, when the order re-enters without
removed`` + ``order_added``                 trading; when it trades on re-entry: ``D``, then ``E`` on
                                            each maker, then ``A`` for any remainder
``accepted``/``rejected``/``cancelled``/    nothing: they carry no change to the visible book (a
``modified`` (priority kept)/...            resting order's cancel is followed by ``order_removed``)
==========================================  =============================================================

To make that one ``U``, the ``D`` of a priority-losing modify is held back for one event: the feed equals the
engine after every command, and within a command everywhere except between those two events. ``end_of_day``
releases anything still held.

Numbering, all deterministic per book so that the output of a book does not depend on how the books'
streams interleave (two publishers fed the same books in different interleavings agree message for
message on every reference and match number):

* Stock locate codes are assigned from 1 in sorted symbol order (as Nasdaq assigns them, alphabetically,
  each day). A symbol first seen in an event and not in the directory gets the next free code and its
  ``R``/``H`` messages at that point.
* Order reference numbers are ``locate << 40 | n`` where n counts the book's visible slices 1, 2, 3...:
  every ``order_added`` is a new slice with a new reference. ITCH references are unique for the day, so a
  reserve (iceberg) order's refreshed slice, which the engine reports as ``order_added`` with the same
  order id, is a new order on the feed (as on Nasdaq, where a reserve refresh is a new add).
* Match numbers are ``locate << 40 | the engine's per-book match number``: unique for the day across all
  books, and the engine's own (symbol, match_number) can be read back from them.

Prices are the engine's integer prices, published 1:1 as ITCH ``Price(4)`` (the default cluster's prices
have 4 implied decimals, 1895000 = $189.50). A price or quantity that does not fit ITCH's 32-bit fields
cannot be published: the slice is kept off the feed (counted in ``stats["unpublishable"]``) and fills
against it print as ``P`` when they fit.

The engine has no hidden orders: every fill is against a displayed slice, so ``E`` covers every trade and
``C`` (execution at a price other than the displayed one) never applies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from exchange.itch import MESSAGE_SPECS
from exchange.orders import (
    Accepted,
    Event,
    Fill,
    Modified,
    OrderAdded,
    OrderReduced,
    OrderRemoved,
    Side,
)

__all__ = [
    "REF_SHIFT",
    "DirectoryEntry",
    "ItchPublisher",
    "match_number_for",
    "ns_since_midnight",
    "reference_parts",
]

REF_SHIFT = 40  # low 40 bits: per-book counter; above: the stock locate
_COUNTER_LIMIT = 1 << REF_SHIFT
_U32 = 0xFFFF_FFFF

_LAYOUT = {code: MESSAGE_SPECS[code].layout for code in "SRHAFEXDUP"}
_PACK_S = _LAYOUT["S"].pack
_PACK_R = _LAYOUT["R"].pack
_PACK_H = _LAYOUT["H"].pack
_PACK_A = _LAYOUT["A"].pack
_PACK_F = _LAYOUT["F"].pack
_PACK_E = _LAYOUT["E"].pack
_PACK_X = _LAYOUT["X"].pack
_PACK_D = _LAYOUT["D"].pack
_PACK_U = _LAYOUT["U"].pack
_PACK_P = _LAYOUT["P"].pack
_SIDE_CODE = {Side.BUY: b"B", Side.SELL: b"S"}


def ns_since_midnight() -> int:
    """Nanoseconds since local midnight (ITCH timestamps are relative to midnight of the trading day)."""
    now = time.time_ns()
    local = time.localtime(now // 1_000_000_000)
    seconds = local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec
    return seconds * 1_000_000_000 + now % 1_000_000_000


def reference_parts(number: int) -> tuple[int, int]:
    """(stock locate, per-book counter) of an order reference or match number made by the publisher."""
    return number >> REF_SHIFT, number & (_COUNTER_LIMIT - 1)


def match_number_for(locate: int, engine_match_number: int) -> int:
    """The ITCH match number of the engine's ``engine_match_number`` in the book with ``locate``."""
    return (locate << REF_SHIFT) | engine_match_number


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """Stock directory (``R``) values for one instrument; the defaults describe a normal common stock."""

    round_lot_size: int = 100
    market_category: str = "Q"
    financial_status_indicator: str = "N"
    issue_classification: str = "C"
    issue_sub_type: str = "Z"
    authenticity: str = "P"


class _Slice:
    """One visible slice of an engine order on the feed."""

    __slots__ = ("account", "published", "ref", "shares", "side")

    def __init__(self, ref: int, side: Side, shares: int, account: str | None, published: bool) -> None:
        self.ref = ref
        self.side = side
        self.shares = shares
        self.account = account
        self.published = published  # False: kept off the feed (a value did not fit ITCH)


class _Book:
    """Per-symbol publishing state."""

    __slots__ = ("exhausted", "last_accept", "live", "locate", "modify_pending", "next_slice", "pending", "stock")

    def __init__(self, locate: int, symbol: str) -> None:
        self.locate = locate
        self.stock = symbol.encode("ascii").ljust(8, b" ")
        self.next_slice = 1
        self.live: dict[int, _Slice] = {}  # engine order id -> its visible slice
        # The account of the order a refresh or re-entry belongs to: order_added carries no account.
        self.last_accept: tuple[int, str] | None = None
        self.exhausted: tuple[int, str | None] | None = None  # maker whose visible part a fill used up
        self.modify_pending: int | None = None  # order id of a priority-losing modify in progress
        self.pending: tuple[int, _Slice] | None = None  # its removed slice, held to become a U or a D


class ItchPublisher:
    """Turns engine events into ITCH 5.0 messages (see the module docstring for the mapping).

    ``symbols``: the instruments of the directory; locates are assigned in sorted order. ``clock``:
    returns nanoseconds since midnight (default: the local wall clock); every message made for one
    event carries one timestamp. ``attribution``: account -> MPID (up to 4 characters); orders of those
    accounts are published as ``F``, all others as anonymous ``A``.

    ``start_of_day()`` gives the opening messages, ``on_event(event)`` the messages of one event,
    ``end_of_day()`` the closing ones; all return encoded messages (bytes, no length prefix).
    """

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        clock: Callable[[], int] | None = None,
        attribution: Mapping[str, str] | None = None,
        directory: Mapping[str, DirectoryEntry] | None = None,
        default_directory: DirectoryEntry | None = None,
    ) -> None:
        self.clock = clock or ns_since_midnight
        self.attribution: dict[str, bytes] = {}
        for account, mpid in (attribution or {}).items():
            raw = str(mpid).encode("ascii")
            if not 0 < len(raw) <= 4:
                raise ValueError(f"MPID {mpid!r} of account {account!r}: 1-4 ASCII characters")
            self.attribution[account] = raw.ljust(4, b" ")
        self.directory = dict(directory or {})
        self.default_directory = default_directory or DirectoryEntry()
        self.books: dict[str, _Book] = {}
        for locate, symbol in enumerate(sorted(set(symbols)), start=1):
            self.books[symbol] = _Book(locate, symbol)
        self.started = False
        self.stats: dict[str, int] = {
            "events": 0,
            "messages": 0,
            "adds": 0,
            "executions": 0,
            "cancels": 0,
            "deletes": 0,
            "replaces": 0,
            "trades": 0,
            "unknown_orders": 0,
            "unpublishable": 0,
        }

    # -- journal snapshots -----------------------------------------------------------------------------

    def save_state(self) -> dict:
        """The publishing state (order references, slices, held modifies), as JSON-ready data."""
        def piece(entry: _Slice) -> list:
            return [entry.ref, int(entry.side), entry.shares, entry.account, entry.published]

        books = {}
        for symbol, book in self.books.items():
            books[symbol] = {
                "next_slice": book.next_slice,
                "live": [[order_id, *piece(entry)] for order_id, entry in book.live.items()],
                "last_accept": book.last_accept, "exhausted": book.exhausted, "modify_pending": book.modify_pending,
                "pending": None if book.pending is None else [book.pending[0], *piece(book.pending[1])],
            }
        return {"books": books, "started": self.started, "stats": dict(self.stats)}

    def load_state(self, state: dict) -> None:
        """Continue from what :meth:`save_state` described (the books' locates come from the symbols)."""
        def piece(values: list) -> _Slice:
            ref, side, shares, account, published = values
            return _Slice(ref, Side(side), shares, account, published)

        for symbol, saved in state["books"].items():
            book = self.books.get(symbol)
            if book is None:
                raise ValueError(f"snapshot names instrument {symbol!r}, which the publisher does not have")
            book.next_slice = saved["next_slice"]
            book.live = {values[0]: piece(values[1:]) for values in saved["live"]}
            book.last_accept = tuple(saved["last_accept"]) if saved["last_accept"] else None  # type: ignore[assignment]
            book.exhausted = tuple(saved["exhausted"]) if saved["exhausted"] else None  # type: ignore[assignment]
            book.modify_pending = saved["modify_pending"]
            book.pending = None if saved["pending"] is None else (saved["pending"][0], piece(saved["pending"][1:]))
        self.started = state["started"]
        self.stats.update(state["stats"])

    # -- locates -------------------------------------------------------------------------------------

    def locate_of(self, symbol: str) -> int | None:
        """The stock locate code of ``symbol``, or None if it has none yet."""
        book = self.books.get(symbol)
        return None if book is None else book.locate

    def symbols(self) -> list[str]:
        """Symbols in locate order."""
        return sorted(self.books, key=lambda s: self.books[s].locate)

    def reference_of(self, symbol: str, order_id: int) -> int | None:
        """The ITCH reference of the engine order's visible slice, or None when it shows nothing."""
        book = self.books.get(symbol)
        entry = None if book is None else book.live.get(order_id)
        return None if entry is None or not entry.published else entry.ref

    # -- session messages ----------------------------------------------------------------------------

    def _system(self, code: bytes, now: int) -> bytes:
        self.stats["messages"] += 1
        return _PACK_S(b"S", 0, 0, now >> 32, now & _U32, code)

    def _directory(self, symbol: str, book: _Book, hi: int, lo: int) -> bytes:
        entry = self.directory.get(symbol, self.default_directory)
        self.stats["messages"] += 1
        return _PACK_R(
            b"R", book.locate, 0, hi, lo, book.stock, entry.market_category.encode("ascii"),
            entry.financial_status_indicator.encode("ascii"), entry.round_lot_size, b"N",
            entry.issue_classification.encode("ascii"), entry.issue_sub_type.encode("ascii").ljust(2),
            entry.authenticity.encode("ascii"), b" ", b" ", b" ", b"N", 0, b"N",
        )

    def _trading(self, book: _Book, hi: int, lo: int) -> bytes:
        # H: trading ("T"), no reason (4 spaces).
        self.stats["messages"] += 1
        return _PACK_H(b"H", book.locate, 0, hi, lo, book.stock, b"T", b" ", b"    ")

    def start_of_day(self) -> list[bytes]:
        """Start of messages, the stock directory, start of system hours, trading actions, start of market
        hours (system event codes O, S, Q): what a subscriber needs before the first order."""
        now = self.clock()
        hi, lo = now >> 32, now & _U32
        books = [(symbol, self.books[symbol]) for symbol in self.symbols()]
        out = [self._system(b"O", now)]
        out += [self._directory(symbol, book, hi, lo) for symbol, book in books]
        out.append(self._system(b"S", now))
        out += [self._trading(book, hi, lo) for _, book in books]
        out.append(self._system(b"Q", now))
        self.started = True
        return out

    def end_of_day(self) -> list[bytes]:
        """Anything held back, then end of market hours, end of system hours, end of messages (M, E, C)."""
        now = self.clock()
        out: list[bytes] = []
        for book in self.books.values():
            self._resolve_pending(book, None, now, out)
        out += [self._system(b"M", now), self._system(b"E", now), self._system(b"C", now)]
        return out

    # -- events ---------------------------------------------------------------------------------------

    def _book(self, symbol: str, now: int, out: list[bytes]) -> _Book:
        book = self.books.get(symbol)
        if book is None:
            locate = max((b.locate for b in self.books.values()), default=0) + 1
            book = self.books[symbol] = _Book(locate, symbol)
            if self.started:
                out.append(self._directory(symbol, book, now >> 32, now & _U32))
                out.append(self._trading(book, now >> 32, now & _U32))
        return book

    def _new_ref(self, book: _Book) -> int:
        n = book.next_slice
        if n >= _COUNTER_LIMIT:
            raise OverflowError(f"locate {book.locate}: more than 2**40 order slices in one day")
        book.next_slice = n + 1
        return (book.locate << REF_SHIFT) | n

    def _resolve_pending(self, book: _Book, added: OrderAdded | None, now: int, out: list[bytes]) -> bool:
        """Settle a held-back removal: a U if ``added`` re-enters the same order (then True: ``added`` is
        done with), else a D (False)."""
        pending = book.pending
        if pending is None:
            return False
        book.pending = None
        order_id, old = pending
        if added is not None and added[2] == order_id:
            self._add(book, added, now, out, replaces=old)
            return True
        if old.published:
            self.stats["deletes"] += 1
            self.stats["messages"] += 1
            out.append(_PACK_D(b"D", book.locate, 0, now >> 32, now & _U32, old.ref))
        return False

    def _add(self, book: _Book, event: OrderAdded, now: int, out: list[bytes], replaces: _Slice | None = None) -> None:
        _, _, order_id, side, price, qty = event
        account: str | None = None
        if replaces is not None:
            account = replaces.account
        elif book.exhausted is not None and book.exhausted[0] == order_id:
            account = book.exhausted[1]
        elif book.last_accept is not None and book.last_accept[0] == order_id:
            account = book.last_accept[1]
        book.exhausted = None
        old = book.live.pop(order_id, None)
        if old is not None and old.published:
            # The engine never adds an order that still shows; if it did, the feed must not show it twice.
            self.stats["unknown_orders"] += 1
            self.stats["deletes"] += 1
            self.stats["messages"] += 1
            out.append(_PACK_D(b"D", book.locate, 0, now >> 32, now & _U32, old.ref))
        side_code = _SIDE_CODE.get(side)
        fits = side_code is not None and 0 < qty <= _U32 and 0 < price <= _U32
        ref = self._new_ref(book)
        book.live[order_id] = _Slice(ref, side, qty, account, fits)
        hi, lo = now >> 32, now & _U32
        if not fits:
            self.stats["unpublishable"] += 1
            if replaces is not None and replaces.published:
                self.stats["deletes"] += 1
                self.stats["messages"] += 1
                out.append(_PACK_D(b"D", book.locate, 0, hi, lo, replaces.ref))
            return
        self.stats["messages"] += 1
        if replaces is not None and replaces.published:
            self.stats["replaces"] += 1
            out.append(_PACK_U(b"U", book.locate, 0, hi, lo, replaces.ref, ref, qty, price))
            return
        self.stats["adds"] += 1
        mpid = self.attribution.get(account) if account is not None else None
        if mpid is None:
            out.append(_PACK_A(b"A", book.locate, 0, hi, lo, ref, side_code, qty, book.stock, price))
        else:
            out.append(_PACK_F(b"F", book.locate, 0, hi, lo, ref, side_code, qty, book.stock, price, mpid))

    def on_event(self, event: Event) -> list[bytes]:
        """The ITCH messages for one engine event (often none)."""
        self.stats["events"] += 1
        kind = type(event)
        now = self.clock()
        out: list[bytes] = []
        book = self._book(event[1], now, out)
        if book.pending is not None:
            if kind is OrderAdded:
                if self._resolve_pending(book, event, now, out):  # type: ignore[arg-type]
                    return out
            else:
                self._resolve_pending(book, None, now, out)
        hi, lo = now >> 32, now & _U32
        if kind is Fill:
            _, _, price, qty, maker_id, _, maker_account, _, taker_side, engine_match = event
            match = (book.locate << REF_SHIFT) | engine_match
            entry = book.live.get(maker_id)
            if entry is not None and entry.published:
                self.stats["executions"] += 1
                self.stats["messages"] += 1
                out.append(_PACK_E(b"E", book.locate, 0, hi, lo, entry.ref, qty, match))
            elif 0 < qty <= _U32 and 0 < price <= _U32:
                # The maker is not on our feed (published before we joined, or unpublishable): the trade
                # still prints, as a non-cross trade with reference 0, as Nasdaq does for hidden orders.
                if entry is None:
                    self.stats["unknown_orders"] += 1
                maker_side = b"S" if taker_side == Side.BUY else b"B"
                self.stats["trades"] += 1
                self.stats["messages"] += 1
                out.append(_PACK_P(b"P", book.locate, 0, hi, lo, 0, maker_side, qty, book.stock, price, match))
            if entry is not None:
                entry.shares -= qty
                if entry.shares <= 0:
                    del book.live[maker_id]
                    book.exhausted = (maker_id, entry.account)
            elif maker_account:
                book.exhausted = (maker_id, maker_account)
        elif kind is OrderAdded:
            self._add(book, event, now, out)  # type: ignore[arg-type]
        elif kind is OrderRemoved:
            order_id = event[2]
            entry = book.live.pop(order_id, None)
            if entry is None:
                self.stats["unknown_orders"] += 1
            elif book.modify_pending == order_id:
                # Hold the delete: if the order re-enters at once without trading, this is one U.
                book.pending = (order_id, entry)
            elif entry.published:
                self.stats["deletes"] += 1
                self.stats["messages"] += 1
                out.append(_PACK_D(b"D", book.locate, 0, hi, lo, entry.ref))
            book.modify_pending = None
        elif kind is OrderReduced:
            order_id, cut = event[2], event[3]
            entry = book.live.get(order_id)
            if entry is None:
                self.stats["unknown_orders"] += 1
            else:
                if entry.published:
                    self.stats["cancels"] += 1
                    self.stats["messages"] += 1
                    out.append(_PACK_X(b"X", book.locate, 0, hi, lo, entry.ref, min(cut, entry.shares)))
                entry.shares -= cut
                if entry.shares <= 0:
                    del book.live[order_id]
        elif kind is Accepted:
            book.last_accept = (event[2], event[3])
        elif kind is Modified:
            if not event[6]:
                book.modify_pending = event[2]
        return out

    def on_events(self, events: Iterable[Event]) -> list[bytes]:
        """The messages of several events, in order."""
        out: list[bytes] = []
        for event in events:
            out += self.on_event(event)
        return out
