"""Which matcher sits behind a book: chosen by configuration alone.

``software`` is the reference engine. Later backends (the simulated gateware, a card over a
link) register here and are picked by name from the CLI and the cluster configuration.
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


BACKENDS: dict[str, Callable[[BackendOptions], BookFactory]] = {"software": _software}


def book_factory(name: str, options: BackendOptions | None = None) -> BookFactory:
    """The book factory of backend ``name``; raises BackendUnavailable with the reason."""
    builder = BACKENDS.get(name)
    if builder is None:
        raise BackendUnavailable(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}")
    return builder(options or BackendOptions())
