"""Memory kinds: what is counted (hand counts on small modules and the tiny GPT-2), saved
sizes, the fresh-process RSS probe, and the usage errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pytest_llmquant import memory
from pytest_llmquant.errors import LlmqModelError, LlmqUsageError
from pytest_llmquant.memory import (
    FLOAT_BIAS,
    FLOAT_EMBED,
    FLOAT_NORM,
    INT8,
    OTHER,
    MemoryResult,
    file_bytes,
    measure_memory,
    rss,
    weights_breakdown,
    weights_bytes,
)


@pytest.fixture(scope="module")
def gpt2_pair(tiny_gpt2_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    from pytest_llmquant.schemes import get_scheme

    fp32 = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = get_scheme("dynamic-int8").quantize(copy.deepcopy(fp32))
    return fp32, int8


class Small(nn.Module):
    """Tied embedding/head, a norm, a persistent int64 buffer, a non-persistent bool
    buffer, and two buffers that are views of one storage."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight
        self.norm = nn.LayerNorm(4)
        self.register_buffer("pos", torch.arange(6))
        self.register_buffer("mask", torch.ones(3, 3, dtype=torch.bool), persistent=False)
        whole = torch.zeros(8)
        self.register_buffer("lo", whole[:3])
        self.register_buffer("hi", whole[3:])


def test_weights_bytes_matches_a_direct_count() -> None:
    m = Small()
    expected = (
        10 * 4 * 4  # embedding, shared with the head: once
        + (4 + 4) * 4  # LayerNorm weight and bias
        + 6 * 8  # int64 positions
        + 3 * 3 * 1  # non-persistent bool mask: resident, so counted
        + 8 * 4  # two views of one 8-float storage: the storage, once
    )
    assert weights_bytes(m) == expected
    naive = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    assert naive == expected + 10 * 4 * 4 - 9, "state_dict repeats the tied weight, drops mask"

    parts = weights_breakdown(m)
    assert parts[FLOAT_EMBED] == 160 and parts[FLOAT_NORM] == 32 and parts[OTHER] == 48 + 9
    assert sum(parts.values()) == expected
    assert list(parts.values()) == sorted(parts.values(), reverse=True)
    by_dtype = weights_breakdown(m, by="dtype")
    assert by_dtype == {"torch.float32": 160 + 32 + 32, "torch.int64": 48, "torch.bool": 9}


def test_meta_tensors_count_their_nominal_size() -> None:
    with torch.device("meta"):
        m = nn.Linear(8, 2)
    assert weights_bytes(m) == (16 + 2) * 4


def test_breakdown_rejects_unknown_grouping() -> None:
    with pytest.raises(LlmqUsageError, match="by='role' or by='dtype'"):
        weights_breakdown(Small(), by="module")  # type: ignore[arg-type]


def test_tiny_gpt2_int8_hand_count(gpt2_pair: tuple[Any, Any]) -> None:
    fp32, int8 = gpt2_pair
    # FP32: every parameter once (lm_head is tied to wte; parameters() lists it once)
    assert weights_bytes(fp32) == sum(p.numel() * 4 for p in fp32.parameters())

    qtype = torch.ao.nn.quantized.dynamic.Linear
    layers = [m for m in int8.modules() if type(m) is qtype]
    assert len(layers) == 9  # 2 blocks x (c_attn, c_proj, c_fc, mlp c_proj) + lm_head
    int8_elems = bias_bytes = 0
    for layer in layers:
        w, b = layer._packed_params._weight_bias()
        assert w.dtype == torch.qint8
        int8_elems += w.numel()
        bias_bytes += 0 if b is None else b.numel() * 4
    float_params = sum(p.numel() * 4 for p in int8.parameters())  # wte, wpe, norms
    hand = int8_elems + 8 * len(layers) + bias_bytes + float_params

    result = measure_memory(fp32, int8, "weights")
    assert result.int8_bytes == weights_bytes(int8) == hand
    assert result.fp32_bytes == weights_bytes(fp32)
    assert result.ratio == pytest.approx(result.fp32_bytes / hand) and result.ratio > 1
    assert result.kept_float is not None
    assert result.kept_float[FLOAT_EMBED] == sum(
        int8.get_submodule(n).weight.numel() * 4 for n in ("transformer.wte", "transformer.wpe")
    )
    assert result.kept_float[FLOAT_BIAS] == bias_bytes
    assert INT8 not in result.kept_float
    assert result.details["int8_breakdown"][INT8] == int8_elems + 8 * len(layers)
    json.dumps(result.as_dict())  # reportable as is


def test_file_kind_on_tiny_gpt2(gpt2_pair: tuple[Any, Any], tmp_path: Path) -> None:
    fp32, int8 = gpt2_pair
    result = measure_memory(fp32, int8, "file", scheme="dynamic-int8")
    fp32.save_pretrained(tmp_path / "fp32", safe_serialization=True)
    assert result.fp32_bytes == file_bytes(tmp_path / "fp32")
    assert 0 < result.int8_bytes < result.fp32_bytes and result.ratio > 1
    assert "llmq-recipe.json" in result.details["files"]["int8"]
    assert result.kept_float is not None and FLOAT_EMBED in result.kept_float
    assert result.kept_float[FLOAT_EMBED] == sum(
        int8.get_submodule(n).weight.numel() * 4 for n in ("transformer.wte", "transformer.wpe")
    )


def test_file_kind_with_a_custom_save(gpt2_pair: tuple[Any, Any]) -> None:
    fp32, int8 = gpt2_pair

    def save(model: Any, directory: Path) -> None:
        (Path(directory) / "blob.bin").write_bytes(b"x" * 1000)

    result = measure_memory(fp32, int8, "file", save=save)
    assert result.int8_bytes == 1000 and result.kept_float == {}


def test_file_kind_needs_a_way_to_save(gpt2_pair: tuple[Any, Any]) -> None:
    with pytest.raises(LlmqUsageError, match="needs scheme="):
        measure_memory(*gpt2_pair, "file")


def test_bad_kind_lists_the_valid_kinds() -> None:
    with pytest.raises(LlmqUsageError) as info:
        measure_memory(Small(), Small(), "rss")
    assert (
        str(info.value) == "unknown memory kind 'rss'; valid kinds: weights, file, peak_rss, vram"
    )


def test_peak_rss_needs_a_spec() -> None:
    with pytest.raises(LlmqUsageError, match="needs spec="):
        measure_memory(Small(), Small(), "peak_rss")


def test_file_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"2" * 5)
    os.link(tmp_path / "a", tmp_path / "hardlink")  # same inode: once
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "b")  # same inode as b: once
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)  # not followed
    assert file_bytes(tmp_path) == 15
    assert file_bytes(tmp_path / "a") == 10
    with pytest.raises(LlmqUsageError, match="no such file"):
        file_bytes(tmp_path / "missing")


def test_result_as_dict_is_strict_json() -> None:
    r = MemoryResult("peak_rss", 0, 10, float("nan"), None, "too small to measure")
    assert json.loads(json.dumps(r.as_dict(), allow_nan=False))["ratio"] is None


def test_modules_do_not_import_torch() -> None:
    code = (
        "import sys, pytest_llmquant.memory, pytest_llmquant.memory.rss_probe, "
        "pytest_llmquant.strategies; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the fresh-process probe ---------------------------------------------------------


def _fake_probes(monkeypatch: pytest.MonkeyPatch, reports: dict[str, Any]) -> None:
    """Probes that print canned reports: tests the parent side without loading models."""

    def start(args: dict[str, Any]) -> subprocess.Popen[str]:
        report = reports[args["mode"]]
        if isinstance(report, str):  # raw output, e.g. a crash
            code = report
        else:
            code = f"print({memory.PROBE_MARK + json.dumps(report)!r})"
        return subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    monkeypatch.setattr(rss, "_start_probe", start)


def _report(peak: int, serve: int | None) -> dict[str, Any]:
    return {"peak_bytes": peak, "serve_peak_bytes": serve, "loaded_bytes": serve}


def test_peak_rss_subtracts_the_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_probes(
        monkeypatch,
        {"baseline": _report(100, None), "fp32": _report(600, 500), "int8": _report(900, 200)},
    )
    r = measure_memory(None, None, "peak_rss", spec="some/model", scheme="dynamic-int8")
    assert (r.fp32_bytes, r.int8_bytes, r.ratio) == (400, 100, 4.0)
    assert r.details["phase"] == "serve" and r.details["baseline_bytes"] == 100
    assert r.kept_float is None and "INT8 0 MB" in r.note  # whole-life peaks are reported


def test_peak_rss_falls_back_to_whole_life_peaks(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_probes(
        monkeypatch,
        {"baseline": _report(100, None), "fp32": _report(600, None), "int8": _report(300, None)},
    )
    r = measure_memory(None, None, "peak_rss", spec={"model": "m"})
    assert (r.fp32_bytes, r.int8_bytes, r.details["phase"]) == (500, 200, "total")


def test_peak_rss_smaller_than_noise_gives_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_probes(
        monkeypatch,
        {"baseline": _report(500, None), "fp32": _report(600, 400), "int8": _report(600, 400)},
    )
    r = measure_memory(None, None, "peak_rss", spec="m")
    assert r.ratio != r.ratio and r.as_dict()["ratio"] is None


def test_probe_errors_reach_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    usage = {"error": "--llmq-model=x: no such directory", "error_kind": "usage"}
    _fake_probes(
        monkeypatch,
        {
            "baseline": _report(1, None),
            "fp32": usage,
            "int8": "import sys; sys.exit('boom: out of memory')",
        },
    )
    with pytest.raises(LlmqUsageError, match="no such directory"):
        memory.probe("x", "fp32")
    with pytest.raises(LlmqModelError, match="int8.*failed: boom: out of memory"):
        memory.probe("x", "int8")


def test_probe_main_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_llmquant.memory import rss_probe

    assert rss_probe.main(["{not json"]) == 2
    assert rss_probe.main(['{"mode": "fp16", "model": "m"}']) == 2
    lines = capsys.readouterr().out.splitlines()
    errors = [json.loads(ln[len(memory.PROBE_MARK) :]) for ln in lines]
    assert "not JSON" in errors[0]["error"] and "fp32, int8 or baseline" in errors[1]["error"]
    assert {e["error_kind"] for e in errors} == {"usage"}


@pytest.fixture(scope="module", autouse=True)
def tiny_probe(tiny_gpt2_dir: Path) -> Any:
    """Start the one real probe when this module starts, so that its ~10 s of imports and
    loading overlap the other tests; :func:`test_probe_subprocess_on_tiny_gpt2` collects it."""
    args = {"model": str(tiny_gpt2_dir), "mode": "int8"}
    proc = rss._start_probe(args)
    yield proc, args
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_probe_subprocess_on_tiny_gpt2(tiny_probe: Any) -> None:
    """End to end: a fresh process loads through loading.py, builds INT8, generates."""
    proc, args = tiny_probe
    report = rss._finish_probe(proc, args, timeout=300)
    assert report["generated_tokens"] == 8
    assert report["coverage"].endswith(
        "% of weight bytes: 9 of 9 linear layers; float: embeddings 0.2 MB, norms"
    )
    assert report["peak_bytes"] >= report["load_peak_bytes"] >= report["loaded_bytes"] > 0
    if sys.platform.startswith("linux"):
        assert report["source"] == "VmHWM"
        assert report["loaded_bytes"] <= report["serve_peak_bytes"] <= report["peak_bytes"]
