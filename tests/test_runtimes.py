"""Gates on the runtime that ships the file: llama.cpp and ONNX Runtime.

A tiny Llama is built here as a transformers directory (the reference), as GGUF files
written with ``gguf`` (F32, Q8_0, Q4_0) and as an int8 ONNX by onnxruntime-genai's model
builder. Each gate then runs against each runtime through the plugin, passing and failing
at bounds on both sides of what it measures, with its message checked. The speed gate's
CPU meter is made quiet (the decode steps are real): on a shared CI runner another
worker's load would otherwise make it inconclusive, which test_speed_inconclusive covers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

# the runtime extras are part of the test extra: CI fails on these skips (scripts/check_skips.py)
needs_llama_cpp = pytest.mark.skipif(
    find_spec("llama_cpp") is None, reason="needs llama-cpp-python (the llamacpp extra)"
)
needs_onnx = pytest.mark.skipif(
    find_spec("onnxruntime_genai") is None, reason="needs onnxruntime-genai (the onnx extra)"
)

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

QUIET = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import pytest
from speed_fakes import quiet_meter
from pytest_llmquant.speed import timing


@pytest.fixture(autouse=True)
def quiet_cpu(monkeypatch):
    real = timing.measure_speedup
    monkeypatch.setattr(
        timing, "measure_speedup", lambda *a, **kw: real(*a, **{{**kw, "cpu": quiet_meter()}})
    )
"""

# every gate twice: once with a bound the tiny model clears by far, once with one it cannot
GATES = """
import pytest

@pytest.mark.quant_similarity(max_kl=1.0, min_same_top=0.01, max_ppl_ratio=2.0)
def test_similar(llmq_pair): pass

@pytest.mark.quant_similarity(max_kl=1e-6, min_same_top=0.01, max_ppl_ratio=2.0)
def test_identical(llmq_pair): pass

@pytest.mark.quant_speedup(0.01)
def test_not_much_slower(llmq_pair): pass

@pytest.mark.quant_speedup(100)
def test_hundred_times_faster(llmq_pair): pass

@pytest.mark.quant_memory(min_ratio=1.5)
def test_weights_smaller(llmq_pair): pass

@pytest.mark.quant_memory(min_ratio=50)
def test_weights_fifty_times_smaller(llmq_pair): pass

@pytest.mark.quant_memory(min_ratio=1.5, kind="file")
def test_file_smaller(llmq_pair): pass

@pytest.mark.quant_memory(min_ratio=50, kind="file")
def test_file_fifty_times_smaller(llmq_pair): pass
"""
PASSING = ("test_similar", "test_not_much_slower", "test_weights_smaller", "test_file_smaller")


@pytest.fixture(scope="session")
def llama_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gguf_llama import tiny_llama_files

    return tiny_llama_files(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def llama_onnx(llama_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What onnxruntime-genai's builder writes for the tiny Llama (``-p int8 -e cpu``)."""
    out = tmp_path_factory.mktemp("onnx") / "int8"
    cache = out.parent / "cache"
    subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(llama_files["dir"]),
         "-o", str(out), "-p", "int8", "-e", "cpu", "-c", str(cache)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def run_gates(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    pytester.makeconftest(QUIET)
    pytester.makepyfile(GATES)
    report = pytester.path / "report.json"
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--llmq-eval-tokens=192", f"--llmq-report={report}", *args
    )
    return result, json.loads(report.read_text())


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    found = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):  # type: ignore[attr-defined]
        if rep.when == "call":
            found[rep.nodeid.split("::")[-1].split("[")[0]] = rep.outcome
    return found


def failure_text(result: pytest.RunResult, test: str) -> str:
    for rep in result.reprec.getreports("pytest_runtest_logreport"):  # type: ignore[attr-defined]
        if rep.when == "call" and f"::{test}[" in rep.nodeid:
            return str(rep.longrepr)
    raise AssertionError(f"{test} did not run")


@needs_llama_cpp
def test_every_gate_measures_llama_cpp_both_ways(
    pytester: pytest.Pytester, llama_files: dict[str, Path]
) -> None:
    result, report = run_gates(
        pytester,
        f"--llmq-model={llama_files['dir']}",
        f"--llmq-int8-model={llama_files['Q4_0']}",
        "--llmq-int8-runtime=llama.cpp",
    )
    got = outcomes(result)
    assert got == {name: "passed" if name in PASSING else "failed" for name in got}, got
    assert len(got) == 8
    assert "quant_similarity failed for tiny-llama [llama.cpp Q4_0]: mean KLD" in failure_text(
        result, "test_identical"
    )
    speed = failure_text(result, "test_hundred_times_faster")
    assert "llama.cpp Q4_0" in speed and "faster than torch FP32" in speed and "< 100x" in speed
    assert "(ratio" in failure_text(result, "test_weights_fifty_times_smaller")
    assert "< 50x" in failure_text(result, "test_file_fifty_times_smaller")
    # the label, the test id and the JSON report say what ran, and its bits
    assert any("[tiny-llama-llama.cpp-Q4_0]" in line for line in result.outlines)
    pair = report["pairs"]["tiny-llama [llama.cpp Q4_0]"]["int8"]
    assert pair["runtime"] == "llama.cpp" and pair["label"] == "llama.cpp Q4_0"
    assert pair["bits"] == 4 and pair["bits_label"].endswith("bits/weight")


@needs_onnx
def test_every_gate_measures_onnx_runtime_both_ways(
    pytester: pytest.Pytester, llama_files: dict[str, Path], llama_onnx: Path
) -> None:
    result, report = run_gates(
        pytester,
        f"--llmq-model={llama_files['dir']}",
        f"--llmq-int8-model={llama_onnx}",
        "--llmq-int8-runtime=onnxruntime",
    )
    got = outcomes(result)
    # the builder's file keeps the embedding float beside an int8 lm_head: 1.9x, so the
    # file bound of 1.5x passes and 50x fails like the others
    assert got == {name: "passed" if name in PASSING else "failed" for name in got}, got
    assert len(got) == 8  # every gate ran: an empty run would match the line above
    name = "tiny-llama [onnxruntime MatMulNBits int8]"
    assert f"quant_similarity failed for {name}: mean KLD" in failure_text(result, "test_identical")
    assert "onnxruntime MatMulNBits int8" in failure_text(result, "test_hundred_times_faster")
    assert report["pairs"][name]["int8"]["runtime"] == "onnxruntime"


def kld(report: dict) -> float:
    (pair,) = report["pairs"].values()
    (gate,) = [g for g in pair["gates"] if g["gate"] == "quant_similarity"]
    return float(gate["measurement"]["mean_kld"])


@needs_llama_cpp
def test_llama_cpp_rounds_activations_too_so_its_kld_exceeds_torchs_on_the_same_file(
    pytester: pytest.Pytester, llama_files: dict[str, Path]
) -> None:
    """The same Q8_0 blocks: torch computes with float activations, llama.cpp rounds the
    activations to Q8_0 as well, which the gate on llama.cpp must see."""
    common = (f"--llmq-model={llama_files['dir']}", f"--llmq-int8-model={llama_files['Q8_0']}")
    pytester.makepyfile(
        "import pytest\n@pytest.mark.quant_similarity(max_kl=1.0, min_same_top=0.01)\n"
        "def test_x(llmq_pair): pass\n"
    )
    reports = []
    for runtime in ("torch", "llama.cpp"):
        path = pytester.path / f"{runtime}.json"
        result = pytester.runpytest_inprocess(
            "-p", "no:cacheprovider", "--llmq-eval-tokens=448", f"--llmq-report={path}",
            f"--llmq-int8-runtime={runtime}", *common,
        )  # fmt: skip
        result.assert_outcomes(passed=1)
        reports.append(json.loads(path.read_text()))
    torch_kld, llama_kld = (kld(r) for r in reports)
    assert llama_kld > torch_kld > 0, (torch_kld, llama_kld)


@needs_llama_cpp
def test_the_reference_runs_in_llama_cpp_too(
    pytester: pytest.Pytester, llama_files: dict[str, Path]
) -> None:
    """llama.cpp's own F32 -> Q4_0 comparison; a quantized reference file runs as the F32
    file of its dequantized tensors, so a file compared with itself measures nothing."""
    pytester.makepyfile(
        "import pytest\n@pytest.mark.quant_similarity(max_kl=1e-6, min_same_top=0.01)\n"
        "def test_x(llmq_pair): pass\n"
    )
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--llmq-eval-tokens=192",
        f"--llmq-cache-dir={pytester.path / 'cache'}",
        f"--llmq-model={llama_files['Q4_0']}", "--llmq-reference-runtime=llama.cpp",
        f"--llmq-int8-model={llama_files['Q4_0']}", "--llmq-int8-runtime=llama.cpp",
    )  # fmt: skip
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "quant_similarity failed for tiny-llama.Q4_0 [llama.cpp Q4_0]: mean KLD" in text
    assert "llama.cpp F32" in text  # the reference column names what ran
    assert list((pytester.path / "cache" / "gguf-f32").glob("*.F32.gguf"))
    # only the tokenizer is read in this process: no torch FP32 copy of the file is made
    assert not (pytester.path / "cache" / "fp32").exists()


@pytest.fixture(scope="session")
def llama_onnx_fp32(llama_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder's float build of the tiny Llama (``-p fp32``): a directory with
    ``model.onnx`` and the tokenizer's files, and no ``config.json`` or torch weights."""
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(llama_files["dir"]),
         "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(out.parent / "cache")],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


@needs_onnx
def test_the_reference_runs_in_onnx_runtime_from_a_build_without_torch_weights(
    pytester: pytest.Pytester, llama_onnx: Path, llama_onnx_fp32: Path
) -> None:
    """ONNX Runtime's own float -> int8 comparison. Every gate measures the reference in
    ONNX Runtime, peak RSS included (a fresh process loads its model.onnx there)."""
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.quant_similarity(max_kl=1e-7, min_same_top=0.01)\n"
        "def test_kld(llmq_pair): pass\n"
        "@pytest.mark.quant_memory(min_ratio=0.01, kind='peak_rss')\n"
        "def test_rss(llmq_pair): pass\n"
    )
    report = pytester.path / "report.json"
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--llmq-eval-tokens=192", f"--llmq-report={report}",
        f"--llmq-cache-dir={pytester.path / 'cache'}",
        f"--llmq-model={llama_onnx_fp32}", "--llmq-reference-runtime=onnxruntime",
        f"--llmq-int8-model={llama_onnx}", "--llmq-int8-runtime=onnxruntime",
    )  # fmt: skip
    assert outcomes(result) == {"test_kld": "failed", "test_rss": "passed"}
    name = "fp32 [onnxruntime MatMulNBits int8]"
    assert f"quant_similarity failed for {name}: mean KLD" in failure_text(result, "test_kld")
    (rss,) = [g for g in json.loads(report.read_text())["pairs"][name]["gates"]
              if g["gate"] == "quant_memory"]  # fmt: skip
    probes = rss["measurement"]["details"]["probes"]
    assert probes["fp32"]["runtime"] == "onnxruntime"  # its model.onnx, not a torch model
    assert probes["fp32"]["generated_tokens"] == 8
    assert not (pytester.path / "cache" / "fp32").exists()


def test_an_onnx_build_is_not_a_torch_reference(
    pytester: pytest.Pytester, llama_onnx_fp32: Path
) -> None:
    pytester.makepyfile("def test_x(llmq_pair): pass\n")
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", f"--llmq-model={llama_onnx_fp32}"
    )
    result.assert_outcomes(errors=1)
    text = result.stdout.str()
    assert (
        "is an ONNX model, which torch does not run; pass --llmq-reference-runtime=onnxruntime"
        in text
    )
