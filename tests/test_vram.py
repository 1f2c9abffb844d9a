"""The ``vram`` memory kind: GPU memory of fresh processes, and a clear skip off the GPU.

On the CPU: ``kind="vram"`` skips with its reason (no probe is started), the parent side
compares the probes' serve-phase peaks from canned reports, running the probes one at
a time, and a probe asked for a vram report without CUDA says so in one line. On a GPU
(skipped here): a real probe of the tiny GPT-2 reports torch's counters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llmquant import memory
from pytest_llmquant.errors import LlmqSkip
from pytest_llmquant.marks import MEMORY_KINDS
from pytest_llmquant.memory import rss, rss_probe, vram

SKIP_REASON = "memory kind 'vram' measures GPU memory, and this run is on 'cpu'"


def test_vram_is_a_memory_kind() -> None:
    assert "vram" in MEMORY_KINDS and "vram" in memory.KINDS


@pytest.mark.parametrize(
    "spec", ["some/model", {"model": "some/model", "device": "cpu"}, None], ids=str
)
def test_vram_on_the_cpu_skips_with_its_reason(monkeypatch: pytest.MonkeyPatch, spec: Any) -> None:
    def no_probe(args: dict[str, Any]) -> Any:
        raise AssertionError("no probe may start on the CPU")

    monkeypatch.setattr(rss, "_start_probe", no_probe)
    monkeypatch.setattr(vram, "_start_probe", no_probe)
    with pytest.raises(LlmqSkip) as info:
        memory.measure_memory(None, None, "vram", spec=spec, scheme="weight-only-int8")
    assert str(info.value).startswith(SKIP_REASON)
    assert "--llmq-device=cuda" in str(info.value) and "\n" not in str(info.value)


def _vram_report(load_peak: int, loaded: int, serve: int) -> dict[str, Any]:
    return {
        "generated_tokens": 8,
        "vram_load_peak_bytes": load_peak,
        "vram_loaded_bytes": loaded,
        "vram_serve_peak_bytes": serve,
        "vram_peak_bytes": max(load_peak, serve),
    }


def test_vram_compares_serve_peaks_one_probe_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    reports = {
        "fp32": _vram_report(3_000_000_000, 3_000_000_000, 3_200_000_000),
        "int8": _vram_report(4_800_000_000, 1_700_000_000, 1_900_000_000),
    }
    events: list[str] = []
    started: list[dict[str, Any]] = []

    def start(args: dict[str, Any]) -> subprocess.Popen[str]:
        assert not events or events[-1].startswith("finished"), "a probe started early"
        events.append(f"started {args['mode']}")
        started.append(args)
        line = memory.PROBE_MARK + json.dumps(reports[args["mode"]])
        return subprocess.Popen(
            [sys.executable, "-c", f"print({line!r})"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    finish = vram._finish_probe

    def finished(proc: Any, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        result = finish(proc, args, timeout)
        events.append(f"finished {args['mode']}")
        return result

    monkeypatch.setattr(vram, "_start_probe", start)
    monkeypatch.setattr(vram, "_finish_probe", finished)
    spec = {"model": "m", "device": "cuda", "dtype": "bfloat16"}
    r = memory.measure_memory(None, None, "vram", spec=spec, scheme="weight-only-int8")
    assert events == ["started fp32", "finished fp32", "started int8", "finished int8"]
    assert all(a["report"] == "vram" and a["device"] == "cuda" for a in started)
    assert started[1]["scheme"] == "weight-only-int8" and started[1]["dtype"] == "bfloat16"
    assert (r.kind, r.fp32_bytes, r.int8_bytes) == ("vram", 3_200_000_000, 1_900_000_000)
    assert r.ratio == pytest.approx(3.2 / 1.9) and r.details["phase"] == "serve"
    assert "reference 3200 MB, INT8 4800 MB (built from the reference in-process)" in r.note


def test_a_vram_report_without_cuda_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = {"mode": "fp32", "model": "m", "device": "cpu", "report": "vram"}
    assert rss_probe.main([json.dumps(args)]) == 2
    error = json.loads(capsys.readouterr().out.strip()[len(memory.PROBE_MARK) :])
    assert error["error_kind"] == "usage"
    assert (
        error["error"]
        == "a vram report needs mode fp32 or int8 on a CUDA device, not 'fp32' on 'cpu'"
    )


def test_a_vram_gate_skips_on_the_cpu(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.quant_memory(1.5, kind="vram")
        def test_gpu_memory(llmq_pair):
            pass

        @pytest.mark.quant_memory(1.5)
        def test_weights(llmq_pair):
            pass
    """)
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_gpt2_dir}", "--llmq-device=cpu", "-p", "no:cacheprovider", "-rs"
    )
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [f"SKIPPED *quant_memory for tiny-gpt2* [[]weight-only-int8[]]: {SKIP_REASON}; *"]
    )


@pytest.mark.skipif(
    "not __import__('torch').cuda.is_available()",
    reason="needs a CUDA GPU (run benchmarks/gpu_check.py there)",
)
def test_a_real_vram_probe_on_cuda(tiny_gpt2_dir: Path) -> None:
    args = {"model": str(tiny_gpt2_dir), "mode": "int8", "device": "cuda", "report": "vram"}
    report = rss._finish_probe(rss._start_probe(args), args, timeout=300)
    assert report["generated_tokens"] == 8
    assert report["vram_peak_bytes"] >= report["vram_load_peak_bytes"] > 0
    assert report["vram_serve_peak_bytes"] >= report["vram_loaded_bytes"] > 0
    # the INT8 model was built from a reference held on the GPU, then that was freed
    assert report["vram_load_peak_bytes"] > report["vram_loaded_bytes"]
