"""The converted-weights cache: built once, verified on every read, never half-trusted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from pytest_llmquant.models import cache as cache_mod
from pytest_llmquant.models.cache import LlmqCacheWarning, ModelCache

FP = {"size": 10, "mtime_ns": 1}


def builder(calls: list[int], payload: bytes = b"weights" * 1000):
    def build(directory: Path) -> None:
        calls.append(1)
        (directory / "model.safetensors").write_bytes(payload)
        (directory / "config.json").write_text("{}")

    return build


@pytest.fixture(autouse=True)
def fresh_warnings() -> None:
    cache_mod._warned.clear()


def test_second_use_is_a_hit(tmp_path: Path) -> None:
    calls: list[int] = []
    cache = ModelCache(tmp_path)
    first = cache.get_or_build("fp32", "model-a", FP, builder(calls))
    second = ModelCache(tmp_path).get_or_build("fp32", "model-a", FP, builder(calls))
    assert first == second and calls == [1]
    manifest = json.loads((first / "llmq-cache.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "config.json"}


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "is truncated (model.safetensors)"),
        (
            lambda p: p.write_bytes(b"X" + p.read_bytes()[1:]),
            "is corrupt (model.safetensors fails its checksum)",
        ),
        (
            lambda p: (p.parent / "llmq-cache.json").write_text("{not json"),
            "has an unreadable manifest",
        ),
    ],
)
def test_damaged_entry_is_rebuilt_with_one_warning(tmp_path: Path, damage, problem: str) -> None:
    calls: list[int] = []
    entry = ModelCache(tmp_path).get_or_build("fp32", "model-a", FP, builder(calls))
    damage(entry / "model.safetensors")
    with pytest.warns(
        LlmqCacheWarning, match=re.escape(f"cache entry for model-a {problem}; rebuilding it")
    ):
        ModelCache(tmp_path).get_or_build("fp32", "model-a", FP, builder(calls))
    assert calls == [1, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # valid again: no second warning
        ModelCache(tmp_path).get_or_build("fp32", "model-a", FP, builder(calls))
    assert calls == [1, 1]


def test_stale_entry_is_rebuilt(tmp_path: Path) -> None:
    calls: list[int] = []
    ModelCache(tmp_path).get_or_build("fp32", "model-a", FP, builder(calls))
    with pytest.warns(LlmqCacheWarning, match="is stale"):
        ModelCache(tmp_path).get_or_build("fp32", "model-a", {**FP, "mtime_ns": 2}, builder(calls))
    assert calls == [1, 1]


def test_unwritable_cache_dir_falls_back_to_a_temporary_one(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("a file where the cache dir should be")
    with pytest.warns(
        LlmqCacheWarning, match=f"cache dir {blocked / 'cache'} is not writable; using "
    ):
        cache = ModelCache(blocked / "cache")
    assert cache.root.is_dir() and os.access(cache.root, os.W_OK)


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    cache = ModelCache(tmp_path)
    with pytest.raises(RuntimeError, match="^killed$"):  # the builder's own error, unchanged
        cache.get_or_build("fp32", "model-a", FP, broken)
    assert list((tmp_path / "fp32").glob("*/*")) == []
    assert not cache.entry_path("fp32", "model-a").exists()


WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pytest_llmquant.models.cache import ModelCache

    root, log, delay = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])

    def build(directory):
        with log.open("a") as fh:
            fh.write("build\\n")
        (directory / "model.safetensors").write_bytes(b"w" * 4_000_000)
        time.sleep(delay)

    entry = ModelCache(root).get_or_build("fp32", "shared-model", {"size": 1}, build)
    data = (entry / "model.safetensors").read_bytes()
    print("OK" if len(data) == 4_000_000 else "BAD")
""")


def test_two_processes_build_once_and_both_read_a_valid_file(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "builds.log"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "c"), str(log), "1.5"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == ["OK", "OK"]
    assert log.read_text().splitlines() == ["build"]


def test_killed_builder_leaves_no_file_a_later_run_trusts(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "builds.log"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "c"), str(log), "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not (log.exists() and log.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # killed in the middle of writing the entry
    proc.wait()
    cache = ModelCache(tmp_path / "c")
    assert not cache.entry_path("fp32", "shared-model").exists()
    again = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "c"), str(log), "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.stdout.strip() == "OK"
    assert log.read_text().splitlines() == ["build", "build"]
    assert list((tmp_path / "c" / "fp32").glob("*.build-*")) == []  # the leftover was cleaned


def test_interrupt_during_build_leaves_no_entry(tmp_path: Path) -> None:
    def interrupted(directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("Ctrl-C mid-build")

    cache = ModelCache(tmp_path)
    with pytest.raises(KeyboardInterrupt, match="^Ctrl-C mid-build$"):
        cache.get_or_build("fp32", "model-a", FP, interrupted)
    calls: list[int] = []
    ModelCache(tmp_path).get_or_build("fp32", "model-a", FP, builder(calls))
    assert calls == [1]
