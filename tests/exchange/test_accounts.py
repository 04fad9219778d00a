"""Users, salted scrypt password hashes and the TOML user table."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from exchange import accounts
from exchange.accounts import AccountError, Users, hash_password, load_users, verify_password

FAST = {"n": 1 << 8}  # cheap parameters: these tests are about format and logic, not cost


def test_hash_string_carries_its_parameters():
    text = hash_password("secret", n=1 << 10, r=4, p=2)
    scheme, n, r, p, salt, digest = text.split("$")
    assert (scheme, n, r, p) == ("scrypt", "1024", "4", "2")
    assert len(bytes.fromhex(salt)) == 16 and len(bytes.fromhex(digest)) == 32
    assert verify_password("secret", text)
    assert not verify_password("secreT", text)
    assert not verify_password("", text)


def test_default_parameters_and_salting():
    first, second = hash_password("pw"), hash_password("pw")
    assert first.startswith(f"scrypt${accounts.DEFAULT_N}${accounts.DEFAULT_R}${accounts.DEFAULT_P}$")
    assert first != second  # a fresh salt each time
    assert verify_password("pw", first) and verify_password("pw", second)


def test_known_vector_is_stable():
    # The hash of a fixed salt is fixed: stored hashes keep working across releases.
    text = hash_password("pw", n=16, r=1, p=1, salt=bytes(16))
    assert text.split("$")[5] == hashlib.scrypt(b"pw", salt=bytes(16), n=16, r=1, p=1, dklen=32).hex()


@pytest.mark.parametrize("password", ["", "x" * 11, "with space", "pässword", "tab\t"])
def test_bad_passwords_are_refused(password):
    with pytest.raises(AccountError):
        hash_password(password, **FAST)


@pytest.mark.parametrize("text", ["", "scrypt$1$8$1$00$00", "bcrypt$16$8$1$" + "00" * 16 + "$" + "00" * 32,
                                  "scrypt$1000$8$1$" + "00" * 16 + "$" + "00" * 32,  # n not a power of 2
                                  "scrypt$16$8$1$zz$" + "00" * 32, "scrypt$16$8$1$" + "00" * 16 + "$00"])
def test_malformed_hash_strings(text):
    with pytest.raises(AccountError):
        verify_password("pw", text)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(body)
    return path


def test_load_users_from_toml(tmp_path):
    h1, h2 = hash_password("one", **FAST), hash_password("two", **FAST)
    path = _write(tmp_path, f'''
[[user]]
name = "DEMO1"
password_hash = "{h1}"
accounts = ["MM1", "MM2"]

[[user]]
name = "DEMO2"
password_hash = "{h2}"
accounts = ["HF1"]
''')
    users = load_users(path)
    assert set(users) == {"DEMO1", "DEMO2"} and len(users) == 2
    assert users["DEMO1"].accounts == ("MM1", "MM2") and users["DEMO1"].default_account == "MM1"
    assert users.accounts == {"DEMO1": ("MM1", "MM2"), "DEMO2": ("HF1",)}
    assert users.authenticate("DEMO1", "one")
    assert not users.authenticate("DEMO1", "two")
    assert not users.authenticate("NOBODY", "one")  # costs the same as a wrong password
    assert not users.authenticate("demo1", "one")


@pytest.mark.parametrize("entry, words", [
    ('name = "TOOLONG"', "name"),
    ('name = "A B"', "name"),
    ('name = "A"\naccounts = ["X"]', "password_hash"),
    ('name = "A"\npassword_hash = "{h}"', "accounts"),
    ('name = "A"\npassword_hash = "{h}"\naccounts = []', "accounts"),
    ('name = "A"\npassword_hash = "{h}"\naccounts = ["NINECHARS"]', "accounts"),
    ('name = "A"\npassword_hash = "nope"\naccounts = ["X"]', "scrypt"),
    ('name = "A"\npassword_hash = "{h}"\naccounts = ["X"]\npassword = "plain"', "unknown"),
])
def test_bad_user_tables(tmp_path, entry, words):
    h = hash_password("pw", **FAST)
    path = _write(tmp_path, "[[user]]\n" + entry.replace("{h}", h) + "\n")
    with pytest.raises(AccountError) as info:
        load_users(path)
    assert words in str(info.value)


def test_duplicate_users_and_bad_documents(tmp_path):
    h = hash_password("pw", **FAST)
    entry = f'[[user]]\nname = "A"\npassword_hash = "{h}"\naccounts = ["X"]\n'
    with pytest.raises(AccountError, match="twice"):
        load_users(_write(tmp_path, entry * 2))
    with pytest.raises(AccountError):
        load_users(_write(tmp_path, "user = 3\n"))
    with pytest.raises(AccountError):
        load_users(_write(tmp_path, "[[user]\n"))
    assert len(load_users({"user": [{"name": "A", "password_hash": h, "accounts": ["X"]}]})) == 1
    assert len(Users()) == 0 and not Users().authenticate("A", "pw")


def test_cli_prints_a_usable_hash(capsys):
    assert accounts.main(["hash", "letmein", "-n", "256"]) == 0
    text = capsys.readouterr().out.strip()
    assert verify_password("letmein", text)
    assert accounts.main(["hash", "has space"]) == 2


def test_cli_as_a_module():
    out = subprocess.run([sys.executable, "-m", "exchange.accounts", "hash", "pw", "-n", "256"], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    assert verify_password("pw", out.stdout.strip())
