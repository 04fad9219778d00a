"""ClusterConfig.risk_shard: a stable hash every node agrees on, remembered without changing an answer, for any
account text a client may send (empty, non-ASCII, too long), also past the bound of what it remembers."""

from __future__ import annotations

import zlib

from actors.config import load_config
from tests.actors.cluster_helpers import write_config


def _hashed(config, account: str) -> str:  # noqa: ANN001
    return config.risk_shards[zlib.crc32(account.encode("ascii", "replace")) % len(config.risk_shards)]


def test_risk_shard_answers_by_the_hash_for_any_text_and_past_its_memory(tmp_path):
    config = load_config(write_config(tmp_path))
    assert len(config.risk_shards) > 1
    odd = ["", " ", "é", "\x00\xff", "A" * 300, "ACCT-1"]
    for account in odd:
        assert config.risk_shard(account) == _hashed(config, account)  # asked first
        assert config.risk_shard(account) == _hashed(config, account)  # remembered
    many = [f"acct{i}" for i in range(70_000)]  # more than it remembers
    assert all(config.risk_shard(a) == _hashed(config, a) for a in many)
    assert all(config.risk_shard(a) == _hashed(config, a) for a in many[-100:] + odd)
    assert len({config.risk_shard(a) for a in many}) == len(config.risk_shards)  # every shard gets accounts
    (tmp_path / "again").mkdir()
    fresh = load_config(write_config(tmp_path / "again"))  # another node reading its own copy agrees
    assert all(fresh.risk_shard(a) == config.risk_shard(a) for a in many[::97] + odd)
