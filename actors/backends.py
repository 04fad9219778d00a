"""Which matcher sits behind a book: chosen by configuration alone.

``software`` is the reference engine; ``card`` is the gateware matcher on a card over a link
(a board's serial port, or ``matchwire card sim`` on a TCP port; see docs/card.md). Backends
register here and are picked by name from the CLI and the cluster configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from exchange.engine import SOFTWARE_PROFILE, BookFactory, BookProfile, OrderBook
from exchange.instruments import Instrument


@dataclass
class BackendOptions:
    """Everything a backend may need to open its books."""

    profile: BookProfile = SOFTWARE_PROFILE
    simulator: str = "icarus"
    link: str | None = None
    extra: dict = field(default_factory=dict)


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run here (a tool is missing, a link does not answer)."""


def _software(options: BackendOptions) -> BookFactory:
    profile = options.profile

    def factory(instrument: Instrument) -> OrderBook:
        return OrderBook(instrument, profile)

    return factory


def _card(options: BackendOptions) -> BookFactory:
    """A book on a card over ``options.link`` (host.card.HardwareBook); a card holds one book."""
    if not options.link:
        raise BackendUnavailable("backend 'card' needs a link: set link = \"/dev/ttyUSB0\" (or socket://HOST:PORT) "
                                 "on the node, or pass --link URL")
    import serial

    from host.card import CardError, HardwareBook

    opened: dict[str, HardwareBook] = {}

    def factory(instrument: Instrument) -> HardwareBook:
        others = [symbol for symbol in opened if symbol != instrument.symbol]
        if others:
            raise BackendUnavailable(f"card at {options.link} already holds the {others[0]} book; a card holds one "
                                     f"book, so give {instrument.symbol} a node (and a card) of its own")
        previous = opened.pop(instrument.symbol, None)
        if previous is not None:  # the same book opened again: start over on the card
            previous.close()
        try:
            book = HardwareBook(instrument, options.link)
        except (CardError, ValueError, OSError, serial.SerialException) as exc:
            raise BackendUnavailable(f"card at {options.link} for {instrument.symbol}: {exc}") from exc
        opened[instrument.symbol] = book
        return book

    return factory


def _sim(options: BackendOptions) -> BookFactory:
    """The gateware matcher in an HDL simulator (``options.simulator``): sim.matcher_backend."""
    from sim.matcher_backend import sim_backend  # needs Amaranth and a simulator: imported on use

    return sim_backend(options)


BACKENDS: dict[str, Callable[[BackendOptions], BookFactory]] = {"software": _software, "card": _card, "sim": _sim}


def book_factory(name: str, options: BackendOptions | None = None) -> BookFactory:
    """The book factory of backend ``name``; raises BackendUnavailable with the reason."""
    builder = BACKENDS.get(name)
    if builder is None:
        raise BackendUnavailable(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}")
    return builder(options or BackendOptions())
