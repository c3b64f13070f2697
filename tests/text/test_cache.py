"""The CATE cache: keys from hashed inputs, values that survive reopening, a clear error for a foreign file."""

import sqlite3

import pytest

from grace_fast.text.cache import Cache, cache_key


def test_cache_key_ignores_field_order_and_sees_every_value():
    key = cache_key(caption="a", labels=["happiness", "surprise"], model="m", prompt="v1")
    assert key == cache_key(prompt="v1", model="m", labels=["happiness", "surprise"], caption="a")
    assert len(key) == 64 and int(key, 16) >= 0
    others = [
        cache_key(caption="b", labels=["happiness", "surprise"], model="m", prompt="v1"),
        cache_key(caption="a", labels=["surprise", "happiness"], model="m", prompt="v1"),
        cache_key(caption="a", labels=["happiness", "surprise"], model="n", prompt="v1"),
        cache_key(caption="a", labels=["happiness", "surprise"], model="m", prompt="v2"),
    ]
    assert len({key, *others}) == 5


def test_values_persist_across_reopening(tmp_path):
    with Cache(tmp_path / "c.sqlite") as cache:
        cache.put("k1", {"description": "één"})
        cache.put_many({"k2": {"caption": "x"}, "k3": {"caption": "y"}})
        cache.put("k1", {"description": "two"})
    with Cache(tmp_path / "c.sqlite") as cache:
        assert len(cache) == 3
        assert cache.get("k1") == {"description": "two"}
        assert cache.get("k3") == {"caption": "y"}
        assert cache.get("missing") is None


def test_put_many_stores_all_or_nothing(tmp_path):
    with Cache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(TypeError):
            cache.put_many({"k1": {"ok": 1}, "k2": {"bad": object()}})
        assert len(cache) == 0


def test_a_file_that_is_not_a_cache_is_named(tmp_path):
    (tmp_path / "c.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="c.sqlite is not a grace_fast cache"):
        Cache(tmp_path / "c.sqlite")


def test_committed_entries_are_visible_to_another_connection(tmp_path):
    with Cache(tmp_path / "c.sqlite") as cache:
        cache.put("k", {"v": 1})
        other = sqlite3.connect(tmp_path / "c.sqlite")
        assert other.execute("SELECT COUNT(*) FROM entries").fetchone() == (1,)
        other.close()
