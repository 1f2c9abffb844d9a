"""ModelCache.prune and ModelCache.discard: removing entries nobody can use, never one in use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from filelock import FileLock

from pytest_llmquant.models import cache as cache_mod
from pytest_llmquant.models.cache import LlmqCacheWarning, ModelCache


@pytest.fixture(autouse=True)
def fresh_warnings() -> None:
    cache_mod._warned.clear()


def build(directory: Path) -> None:
    (directory / "data.bin").write_bytes(b"x" * 100)


def test_prune_deletes_only_the_rejected_entries(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    keep = cache.get_or_build("ns", "keep-me", {"path": "a"}, build)
    drop = cache.get_or_build("ns", "drop-me", {"path": "b"}, build)
    other = cache.get_or_build("other", "drop-me", {"path": "b"}, build)
    removed = cache.prune("ns", lambda manifest: manifest["fingerprint"]["path"] == "a")
    assert removed == 1
    assert keep.is_dir() and not drop.exists() and other.is_dir()  # other namespaces untouched
    assert cache.prune("missing-namespace", lambda _m: False) == 0


def test_prune_leaves_an_entry_whose_lock_is_held(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    entry = cache.get_or_build("ns", "busy", {}, build)
    with FileLock(str(entry) + ".lock"):
        assert cache.prune("ns", lambda _m: False) == 0
    assert entry.is_dir()
    assert cache.prune("ns", lambda _m: False) == 1


def test_discard_warns_once_and_the_next_use_rebuilds(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    calls: list[int] = []

    def counting(directory: Path) -> None:
        calls.append(1)
        build(directory)

    cache.get_or_build("ns", "entry", {}, counting)
    with pytest.warns(
        LlmqCacheWarning, match=re.escape("cache entry for entry has bad rows; rebuilding it")
    ):
        cache.discard("ns", "entry", "has bad rows")
    assert not cache.entry_path("ns", "entry").exists()
    cache.get_or_build("ns", "entry", {}, counting)
    assert calls == [1, 1]
