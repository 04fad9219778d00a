"""Cluster configuration: which nodes exist, where they listen, which actors each hosts.

One TOML file describes the whole cluster; where an actor lives is configuration only. Actors
are named ``kind/key`` (``gateway/0``, ``risk/1``, ``book/AAPL``, ``md/0``) and numbered in file
order: that number is how binary messages address them.
"""

from __future__ import annotations

import tomllib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from exchange.instruments import Instrument, instruments_from_entries
from exchange.recent_ids import RecentOrderIds
from exchange.risk import RiskLimits

ACTOR_KINDS = ("gateway", "risk", "book", "md", "feed")


class ConfigError(ValueError):
    """A configuration that cannot describe a working cluster; the message names the problem."""


@dataclass(frozen=True)
class NodeConfig:
    """One OS process: its name, where it binds, and the actors it hosts."""

    name: str
    index: int
    host: str
    port: int
    actors: tuple[str, ...]
    backend: str = "software"
    link: str | None = None


@dataclass(frozen=True)
class Durability:
    """Journals and snapshots (see exchange/journal.py for what each fsync policy promises)."""

    enabled: bool = False
    state_dir: str = ""  # where journals live; empty: a fresh directory per `matchwire run`
    fsync: str = "batch"
    batch_ms: float = 2.0
    snapshot_every: int = 100_000
    snapshot_seconds: float = 60.0
    # Events a book keeps in memory for re-sends before it spills a chunk to its history files (0: a share of its
    # node's budget, actors/event_history.py in_memory_for).
    events_in_memory: int = 0

    def directory(self, node: str) -> str:
        if not self.state_dir:
            raise ConfigError("durability is on but no state_dir is set (matchwire run sets one)")
        return str(Path(self.state_dir) / node)


@dataclass
class ClusterConfig:
    """The whole cluster, validated."""

    name: str
    transport: str
    ipc_dir: str
    control_host: str
    control_port: int
    client_port: int
    ouch_port: int
    send_hwm: int
    max_backlog: int
    socket_buffer: int
    nodes: list[NodeConfig]
    instruments: dict[str, Instrument]
    accounts: list[str]
    demo: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    source: str = "<embedded default>"
    risk_defaults: RiskLimits = field(default_factory=RiskLimits)
    risk_accounts: dict[str, RiskLimits] = field(default_factory=dict)
    durability: Durability = field(default_factory=Durability)
    # Records an actor keeps per peer actor that cannot take them, before it drops the oldest: as many as a book
    # keeps to send again on request (actors/event_history.py RECENT_EVENTS): what a peer that returns asks for.
    max_held: int = 200_000

    def limits_for(self, account: str) -> RiskLimits:
        """An account's risk limits: its own table over the defaults."""
        return self.risk_accounts.get(account, self.risk_defaults)

    def __post_init__(self) -> None:
        self.actor_index: dict[str, int] = {}
        self.actor_node: dict[str, NodeConfig] = {}
        for node in self.nodes:
            for actor in node.actors:
                self.actor_index[actor] = len(self.actor_index)
                self.actor_node[actor] = node
        self.actor_names = list(self.actor_index)
        self.risk_shards = sorted((a for a in self.actor_index if a.startswith("risk/")),
                                  key=lambda a: int(a.split("/", 1)[1]))
        self.gateways = sorted((a for a in self.actor_index if a.startswith("gateway/")),
                               key=lambda a: int(a.split("/", 1)[1]))
        self.market_data = [a for a in self.actor_index if a.startswith("md/")]
        self.feeds = [a for a in self.actor_index if a.startswith("feed/")]
        self._shard_of: dict[str, str] = {}  # risk_shard's answers so far

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"{self.source}: no node named {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def endpoint(self, node: NodeConfig, bind: bool = False) -> str:
        """The ZeroMQ endpoint of a node's inbound socket."""
        if self.transport == "ipc":
            return f"ipc://{self.ipc_dir}/{self.name}-{node.name}.sock"
        host = "*" if bind and node.host not in ("127.0.0.1", "localhost", "::1") else node.host
        return f"tcp://{host}:{node.port}"

    def control_endpoint(self, bind: bool = False) -> str:
        host = "*" if bind and self.control_host not in ("127.0.0.1", "localhost") else self.control_host
        return f"tcp://{host}:{self.control_port}"

    def client_endpoint(self, gateway: str = "gateway/0", bind: bool = False) -> str:
        node = self.actor_node[gateway]
        host = "*" if bind and node.host not in ("127.0.0.1", "localhost") else node.host
        return f"tcp://{host}:{self.client_port + self.gateways.index(gateway)}"

    def ouch_address(self, gateway: str = "gateway/0", bind: bool = False) -> tuple[str, int]:
        """(host, port) of a gateway's OUCH 5.0 over SoupBinTCP 4.0 listener."""
        node = self.actor_node[gateway]
        host = "0.0.0.0" if bind and node.host not in ("127.0.0.1", "localhost") else node.host
        return host, self.ouch_port + self.gateways.index(gateway)

    def risk_shard(self, account: str) -> str:
        """The risk actor of an account: a stable hash, so every node agrees."""
        # Asked for both accounts of every fill by every risk shard: remembered (bounded, as accounts are the
        # clients' texts; past the bound the hash is computed each time).
        shard = self._shard_of.get(account)
        if shard is None:
            shard = self.risk_shards[zlib.crc32(account.encode("ascii", "replace")) % len(self.risk_shards)]
            if len(self._shard_of) < 65536:
                self._shard_of[account] = shard
        return shard

    def book_actor(self, symbol: str) -> str:
        return f"book/{symbol}"


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{source}: {message}")


def parse_config(data: dict, source: str) -> ClusterConfig:
    """Validate a decoded TOML document into a :class:`ClusterConfig`."""
    cluster = data.get("cluster", {})
    _require(isinstance(cluster, dict), source, "[cluster] must be a table")
    transport = cluster.get("transport", "tcp")
    _require(transport in ("tcp", "ipc"), source, f"cluster.transport must be 'tcp' or 'ipc', not {transport!r}")
    host = cluster.get("host", "127.0.0.1")
    base_port = cluster.get("base_port", 7100)
    nodes_raw = data.get("node", [])
    _require(isinstance(nodes_raw, list) and nodes_raw, source, "at least one [[node]] is needed")
    try:
        instruments = instruments_from_entries(data.get("instrument", []))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    nodes: list[NodeConfig] = []
    seen_actors: set[str] = set()
    for index, entry in enumerate(nodes_raw):
        _require(isinstance(entry, dict), source, "each [[node]] must be a table")
        name = entry.get("name")
        _require(isinstance(name, str) and name.isidentifier(), source, f"node {index}: name must be an identifier")
        _require(all(n.name != name for n in nodes), source, f"node {name!r} defined twice")
        actors = entry.get("actors", [])
        _require(isinstance(actors, list) and actors, source, f"node {name!r}: actors must be a non-empty list")
        for actor in actors:
            _require(isinstance(actor, str) and "/" in actor, source, f"node {name!r}: bad actor name {actor!r}")
            kind, key = actor.split("/", 1)
            _require(kind in ACTOR_KINDS, source, f"node {name!r}: unknown actor kind {kind!r} in {actor!r}")
            _require(actor not in seen_actors, source, f"actor {actor!r} placed on two nodes")
            if kind == "book":
                _require(key in instruments, source, f"actor {actor!r}: no [[instrument]] with symbol {key!r}")
            else:
                _require(key.isdigit(), source, f"actor {actor!r}: {kind} actors are numbered ({kind}/0, ...)")
            seen_actors.add(actor)
        backend = entry.get("backend", "software")
        _require(isinstance(backend, str), source, f"node {name!r}: backend must be a string")
        nodes.append(NodeConfig(name=name, index=index, host=entry.get("host", host),
                                port=entry.get("port", base_port + index), actors=tuple(actors),
                                backend=backend, link=entry.get("link")))
    kinds = {a.split("/", 1)[0] for a in seen_actors}
    for needed in ("gateway", "risk", "book"):
        _require(needed in kinds, source, f"the cluster needs at least one {needed} actor")
    for symbol in instruments:
        _require(f"book/{symbol}" in seen_actors, source, f"instrument {symbol} has no book actor on any node")
    accounts = [a.get("name") for a in data.get("account", []) if isinstance(a, dict)]
    for account in accounts:
        _require(isinstance(account, str) and 0 < len(account) <= 8 and account.isascii(), source,
                 f"account name {account!r}: 1-8 ASCII characters")
    risk = data.get("risk", {})
    _require(isinstance(risk, dict), source, "[risk] must be a table")
    try:
        defaults = RiskLimits.from_mapping(risk.get("defaults", {}), where="risk.defaults")
        per_account = {name: RiskLimits.from_mapping(table, defaults, where=f"risk.accounts.{name}")
                       for name, table in risk.get("accounts", {}).items()}
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    table = data.get("durability", {})
    _require(isinstance(table, dict), source, "[durability] must be a table")
    unknown = set(table) - {"enabled", "state_dir", "fsync", "batch_ms", "snapshot_every", "snapshot_seconds",
                            "events_in_memory"}
    _require(not unknown, source, f"[durability]: unknown keys {sorted(unknown)}")
    durability = Durability(**table)
    events = durability.events_in_memory
    _require(type(events) is int and events >= 0, source,
             f"durability.events_in_memory must be a whole number, 0 or more, not {events!r}")
    _require(durability.fsync in ("always", "batch", "none"), source,
             f"durability.fsync must be always, batch or none, not {durability.fsync!r}")
    return ClusterConfig(
        durability=durability,
        risk_defaults=defaults, risk_accounts=per_account,
        name=cluster.get("name", "local"), transport=transport,
        ipc_dir=cluster.get("ipc_dir", "/tmp/matchwire"), control_host=cluster.get("control_host", host),
        control_port=cluster.get("control_port", base_port + 90),
        client_port=cluster.get("client_port", base_port + 91),
        ouch_port=cluster.get("ouch_port", base_port + 95),
        send_hwm=cluster.get("send_hwm", 1000), max_backlog=cluster.get("max_backlog", 64),
        socket_buffer=cluster.get("socket_buffer", 262_144), max_held=cluster.get("max_held", 200_000),
        nodes=nodes, instruments=instruments, accounts=accounts, demo=data.get("demo", {}), raw=data, source=source)


def default_config_text() -> str:
    """The embedded default configuration, as TOML text."""
    return resources.files("actors").joinpath("default.toml").read_text()


def load_config(path: str | Path | None = None) -> ClusterConfig:
    """The configuration at ``path``, or the embedded default; errors name the file."""
    if path is None:
        text, source = default_config_text(), "<embedded default>"
    else:
        try:
            text, source = Path(path).read_text(), str(path)
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return parse_config(data, source)


GATEWAY_SHIFT = 48  # cluster order id = (gateway number + 1) << 48 | the gateway's own counter


#: New orders remembered per gateway by a risk shard (those that passed) and by a book (its duplicate rule): a
#: gateway sends an order again only while it has no answer for it, so copies are among its newest
#: (exchange/recent_ids.py).
SEEN_PER_GATEWAY = 200_000


def recent_order_ids() -> RecentOrderIds:
    """The window of recent order ids a risk shard and a book keep: the newest ``SEEN_PER_GATEWAY`` per gateway."""
    return RecentOrderIds(SEEN_PER_GATEWAY, gateway_number_of)


def cluster_order_id(gateway_number: int, counter: int) -> int:
    """A cluster-wide order id minted by gateway ``gateway_number``."""
    return ((gateway_number + 1) << GATEWAY_SHIFT) | counter


def gateway_number_of(order_id: int) -> int:
    """Which gateway minted a cluster order id (-1 for ids no gateway minted)."""
    return (order_id >> GATEWAY_SHIFT) - 1


def name_list(names: list[str], shown: int = 12) -> str:
    """Names for a message: all of a few, or the first ``shown`` and how many more (a node of a thousand books logged
    a thousand names in one line, and the launcher said them all when it died)."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown:,} more"


def most_traded(symbols: list[str], trades: Callable[[str], int], count: int) -> list[str]:
    """The ``count`` symbols with the most trades, in their order in ``symbols`` (earlier first among equals): what
    the live views show of a cluster with more instruments than fit."""
    order = {symbol: n for n, symbol in enumerate(symbols)}
    busiest = sorted(symbols, key=lambda symbol: (-trades(symbol), order[symbol]))[:count]
    return sorted(busiest, key=order.__getitem__)
