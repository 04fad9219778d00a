"""Order-entry users: salted password hashes and the accounts each user may trade for.

Users come from TOML tables (the configuration file, or the embedded default)::

    [[user]]
    name = "DEMO1"                      # 1-6 characters: the SoupBinTCP username field
    password_hash = "scrypt$16384$8$1$<salt hex>$<hash hex>"
    accounts = ["MM1", "MM2"]           # the first is the default account

Passwords are never stored, only ``hashlib.scrypt`` digests with a random 16-byte salt. The cost
parameters travel inside the hash string (``scrypt$n$r$p$salt$hash``), so they can be raised later
without invalidating existing hashes. Verification compares digests in constant time
(``hmac.compare_digest``), and an unknown username costs as much as a wrong password, so timing tells
nothing about which usernames exist.

Print a hash for a configuration file with ``python -m exchange.accounts hash PASSWORD``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_N",
    "DEFAULT_P",
    "DEFAULT_R",
    "MAX_PASSWORD_LEN",
    "MAX_USERNAME_LEN",
    "AccountError",
    "User",
    "Users",
    "hash_password",
    "load_users",
    "users_from_entries",
    "valid_username",
    "verify_password",
]

MAX_USERNAME_LEN = 6  # SoupBinTCP Login Request: Username is 6 alpha characters
MAX_PASSWORD_LEN = 10  # ... and Password 10
MAX_ACCOUNT_LEN = 8  # matchwire accounts are 1-8 printable ASCII characters without spaces

# scrypt cost: N=2^14, r=8, p=1 takes ~16 MiB and tens of milliseconds, the usual interactive setting.
DEFAULT_N = 1 << 14
DEFAULT_R = 8
DEFAULT_P = 1
_SALT_BYTES = 16
_DKLEN = 32
_MAX_N = 1 << 20  # refuse hash strings that would make verification absurdly expensive


class AccountError(ValueError):
    """A malformed user table, hash string or password."""


def valid_username(name: object) -> bool:
    """True for 1-6 printable ASCII characters without spaces (what fits the SoupBinTCP field)."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_USERNAME_LEN and name.isascii()
            and name.isprintable() and " " not in name)


def _valid_account(name: object) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= MAX_ACCOUNT_LEN and name.isascii()
            and name.isprintable() and " " not in name)


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P,
                  salt: bytes | None = None) -> str:
    """A salted scrypt hash string ``scrypt$n$r$p$salt_hex$hash_hex`` for ``password``.

    Passwords are 1-10 printable ASCII characters without spaces (what the SoupBinTCP field carries).
    """
    if not (isinstance(password, str) and 0 < len(password) <= MAX_PASSWORD_LEN and password.isascii()
            and password.isprintable() and " " not in password):
        raise AccountError(f"a password is 1-{MAX_PASSWORD_LEN} printable ASCII characters without spaces")
    _check_cost(n, r, p)
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, n, r, p)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def _check_cost(n: int, r: int, p: int) -> None:
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 64 and 1 <= p <= 16):
        raise AccountError(f"bad scrypt parameters n={n} r={r} p={p}")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: OpenSSL's default cap (32 MiB) is too tight for some legal r/p combinations.
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_DKLEN,
                          maxmem=256 * n * r * (p + 1) + (1 << 20))


def _parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    try:
        scheme, n, r, p, salt, digest = text.split("$")
        if scheme != "scrypt":
            raise ValueError(scheme)
        values = int(n), int(r), int(p), bytes.fromhex(salt), bytes.fromhex(digest)
    except ValueError:
        raise AccountError("a password hash is 'scrypt$n$r$p$salt_hex$hash_hex'") from None
    _check_cost(*values[:3])
    if not values[3] or len(values[4]) < 16:
        raise AccountError("password hash: salt or digest too short")
    return values


def verify_password(password: str, password_hash: str) -> bool:
    """True if ``password`` matches ``password_hash`` (constant-time comparison of the digests)."""
    n, r, p, salt, digest = _parse_hash(password_hash)
    candidate = hashlib.scrypt(password.encode("utf-8", "replace"), salt=salt, n=n, r=r, p=p, dklen=len(digest),
                               maxmem=256 * n * r * (p + 1) + (1 << 20))
    return hmac.compare_digest(candidate, digest)


@dataclass(frozen=True, slots=True)
class User:
    """One order-entry user: name, password hash and the accounts it may trade for (first = default)."""

    name: str
    password_hash: str
    accounts: tuple[str, ...]

    @property
    def default_account(self) -> str:
        """The account used when an order names none."""
        return self.accounts[0]


class Users(Mapping[str, User]):
    """The user table: a read-only mapping from username to :class:`User`, plus authentication.

    ``authenticate`` is what a SoupBinTCP server calls for each login; ``accounts`` is what the OUCH
    translator needs (username -> allowed accounts).
    """

    def __init__(self, users: Iterable[User] = ()) -> None:
        self._users: dict[str, User] = {}
        for user in users:
            if user.name in self._users:
                raise AccountError(f"user {user.name!r} is defined twice")
            self._users[user.name] = user
        # Verified against for unknown usernames so that they cost the same as a wrong password.
        self._dummy_hash = next(iter(self._users.values())).password_hash if self._users else \
            hash_password("x", n=DEFAULT_N, salt=b"\0" * _SALT_BYTES)

    def __getitem__(self, name: str) -> User:
        return self._users[name]

    def __iter__(self):
        return iter(self._users)

    def __len__(self) -> int:
        return len(self._users)

    def authenticate(self, username: str, password: str) -> bool:
        """True if ``username`` exists and ``password`` is its password."""
        user = self._users.get(username)
        if user is None:
            verify_password(password, self._dummy_hash)
            return False
        return verify_password(password, user.password_hash)

    @property
    def accounts(self) -> dict[str, tuple[str, ...]]:
        """Username -> the accounts it may trade for."""
        return {name: user.accounts for name, user in self._users.items()}


def users_from_entries(entries: list[dict]) -> Users:
    """Build :class:`Users` from the ``[[user]]`` tables of a parsed TOML document."""
    users = []
    for i, entry in enumerate(entries):
        where = f"user #{i + 1}"
        if not isinstance(entry, dict):
            raise AccountError(f"{where}: expected a table")
        unknown = set(entry) - {"name", "password_hash", "accounts"}
        if unknown:
            raise AccountError(f"{where}: unknown key(s) {sorted(unknown)}")
        name = entry.get("name")
        if not valid_username(name):
            raise AccountError(f"{where}: name must be 1-{MAX_USERNAME_LEN} printable ASCII characters, got {name!r}")
        password_hash = entry.get("password_hash")
        if not isinstance(password_hash, str):
            raise AccountError(f"user {name}: password_hash missing")
        _parse_hash(password_hash)
        accounts = entry.get("accounts")
        if not isinstance(accounts, list) or not accounts or not all(_valid_account(a) for a in accounts):
            raise AccountError(f"user {name}: accounts must be a non-empty list of 1-{MAX_ACCOUNT_LEN} character"
                               " names")
        users.append(User(name, password_hash, tuple(accounts)))
    return Users(users)


def load_users(source: str | Path | Mapping) -> Users:
    """Users from a TOML file (a path) or an already parsed document (its ``user`` array)."""
    if isinstance(source, Mapping):
        doc = source
    else:
        with open(source, "rb") as fh:
            try:
                doc = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise AccountError(f"{source}: {exc}") from None
    entries = doc.get("user", [])
    if not isinstance(entries, list):
        raise AccountError("'user' must be an array of tables ([[user]])")
    return users_from_entries(entries)


def main(argv: list[str] | None = None) -> int:
    """``python -m exchange.accounts hash PASSWORD``: print a hash string for a configuration file."""
    parser = argparse.ArgumentParser(prog="python -m exchange.accounts", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("hash", help="print the scrypt hash string of a password")
    cmd.add_argument("password")
    cmd.add_argument("-n", type=int, default=DEFAULT_N, help="scrypt CPU/memory cost (a power of 2)")
    cmd.add_argument("-r", type=int, default=DEFAULT_R, help="scrypt block size")
    cmd.add_argument("-p", type=int, default=DEFAULT_P, help="scrypt parallelism")
    args = parser.parse_args(argv)
    try:
        print(hash_password(args.password, n=args.n, r=args.r, p=args.p))
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
