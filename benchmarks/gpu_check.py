"""The plugin end to end on a GPU, with models built on the spot (no network, no GGUF).

What it runs, each in a fresh ``python -m pytest`` process, printing pytest's output
(the pytest-llmquant summary tables included) and then a wall time per run:

1. ``unit``: the CUDA tests of this repo (tests/test_cuda_int8.py, test_cuda_timing.py,
   test_vram.py); their GPU tests skip on a machine without one.
2. ``tiny-bf16``: ``--llmq-suite`` on the tiny GPT-2 of tests/tiny_models.py with a
   bfloat16 reference (the CUDA default).
3. ``tiny-fp32``: the same with ``--llmq-reference-dtype=float32``.
4. ``llama-1.7b``: ``--llmq-suite`` on a random-init Llama with SmolLM2-1.7B's shape
   (hidden 2048, intermediate 8192, 24 layers, 32 heads and KV heads, vocab 49152, tied
   embeddings), saved with ``save_pretrained``, bfloat16 reference,
   ``--llmq-eval-tokens=512``, plus a ``quant_memory(1.0, kind="vram")`` gate (INT8
   holds no more GPU memory than the reference while serving). ``round_trip`` is
   deselected there unless ``--full`` (it rebuilds the 1.7B model from its config on the
   CPU: time, and the tiny runs and the unit tests cover the same code on the GPU).

The random Llama's logits are nearly flat, so its quality numbers say little about a
real model; what it measures is the shape: speed, memory, and that nothing breaks at
1.7B parameters. A gate that fails is reported as failed, not hidden: the exit status is
the number of runs whose pytest exit code was not 0 (tests failed) or 5 (none ran).

Needs torch, transformers, tokenizers, safetensors, pytest, pytest-benchmark and
hypothesis; not scipy, gguf or torchao. The plugin need not be installed: the runs get
this checkout on ``PYTHONPATH`` and load it with ``PYTEST_PLUGINS`` when it is not.

On a GPU machine, from the repository root::

    python benchmarks/gpu_check.py --out "$OUT"

Here, on the CPU, with small models (checks the script itself)::

    python benchmarks/gpu_check.py --device cpu --small
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIT_TESTS = ("tests/test_cuda_int8.py", "tests/test_cuda_timing.py", "tests/test_vram.py")

#: SmolLM2-1.7B's shape (its config.json); --small shrinks it to check the script on a CPU
LLAMA_FULL = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=49152, max_position_embeddings=8192,
    rms_norm_eps=1e-5, tie_word_embeddings=True,
)  # fmt: skip
LLAMA_SMALL = {
    **LLAMA_FULL,
    **dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=4, vocab_size=1024),
}  # fmt: skip

EXTRA_GATES = '''
import pytest


@pytest.mark.quant_memory(1.0, kind="vram")
def test_vram_no_more_than_the_reference(llmq_pair):
    """Serving INT8 holds no more GPU memory than serving the reference (skips off CUDA)."""
'''


@dataclass
class Run:
    name: str
    args: list[str]
    seconds: float = 0.0
    code: int | None = None
    outcome: str = ""
    notes: list[str] = field(default_factory=list)


def plugin_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "llmquant" for ep in entry_points(group="pytest11"))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"  # nothing here needs the network; fail fast if asked
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not plugin_installed():
        env["PYTEST_PLUGINS"] = "pytest_llmquant.plugin"
    return env


def make_llama(directory: Path, shape: dict[str, object], device: str) -> Path:
    """A random-init Llama of ``shape`` with the tiny BPE tokenizer, saved in bfloat16.

    Built on ``device`` (seconds on a GPU, where a CPU init of 1.7B weights takes a
    minute); the tokenizer's 400 ids all fall inside the model's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import make_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(directory)
    config = LlamaConfig(
        **shape,  # type: ignore[arg-type]
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(directory, safe_serialization=True)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return directory


def run_pytest(run: Run, cwd: Path, env: dict[str, str]) -> None:
    """Run one pytest process, streaming its output; record time, exit code and outcome."""
    cmd = [sys.executable, "-m", "pytest", *run.args]
    print(f"\n{'=' * 30} {run.name} {'=' * 30}\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith(("FAILED ", "ERROR ")):  # the -rfE lines: which check, not why
            run.notes.append(line.split(" - ")[0].strip())
        if re.search(r"\b(passed|failed|skipped|error|no tests ran)\b.* in [0-9.]+s", line):
            last = line.strip(" =\n")
    run.code = proc.wait()
    run.seconds = time.perf_counter() - start
    run.outcome = last or f"exit code {run.code}"
    print(f"--- {run.name}: exit {run.code}, wall {run.seconds:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="a small Llama (CPU check)")
    parser.add_argument("--full", action="store_true", help="keep round_trip on the Llama")
    parser.add_argument("--out", type=Path, help="write each run's JSON report here")
    parser.add_argument("--skip-unit", action="store_true", help="skip the CUDA unit tests")
    parser.add_argument("--only", choices=("unit", "tiny", "llama"), help="one part only")
    opts = parser.parse_args(argv)

    start = time.perf_counter()
    import torch
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"python {sys.version.split()[0]}")  # fmt: skip
    if opts.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(f"--device {opts.device}: no CUDA device visible; use --device cpu --small")
            return 2
        print(f"GPU: {torch.cuda.get_device_name(torch.device(opts.device))}")
    env = child_env()
    print(f"plugin: {'installed' if 'PYTEST_PLUGINS' not in env else 'from this checkout'}")
    if opts.out:
        opts.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="llmq-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        common = [
            "-p", "no:cacheprovider", "-rfEs", "--durations=5", f"--llmq-device={opts.device}",
            f"--llmq-cache-dir={tmp / 'cache'}",
        ]  # fmt: skip

        def report(name: str) -> list[str]:
            return [f"--llmq-report={opts.out / (name + '.json')}"] if opts.out else []

        runs: list[Run] = []
        if not opts.skip_unit and opts.only in (None, "unit"):
            runs.append(Run("unit", [*UNIT_TESTS, "-q", "-rfEs", "-p", "no:cacheprovider"]))
            run_pytest(runs[-1], ROOT, env)

        if opts.only in (None, "tiny"):
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_models import make_tiny_gpt2

            t0 = time.perf_counter()
            tiny = make_tiny_gpt2(tmp / "tiny-gpt2")
            print(f"\ntiny GPT-2 built in {time.perf_counter() - t0:.1f} s")
            for dtype, name in (("bfloat16", "tiny-bf16"), ("float32", "tiny-fp32")):
                runs.append(Run(name, [
                    "--llmq-suite", f"--llmq-model={tiny}", f"--llmq-reference-dtype={dtype}",
                    *common, *report(name),
                ]))  # fmt: skip
                run_pytest(runs[-1], tmp, env)

        if opts.only in (None, "llama"):
            t0 = time.perf_counter()
            shape = LLAMA_SMALL if opts.small else LLAMA_FULL
            llama = make_llama(tmp / "llama", shape, opts.device)
            size = sum(f.stat().st_size for f in llama.glob("*.safetensors")) / 1e9
            built = time.perf_counter() - t0
            print(f"\nLlama {'(small) ' if opts.small else ''}built and saved in {built:.1f} s "
                  f"({size:.2f} GB of bfloat16 safetensors)")  # fmt: skip
            (tmp / "gates").mkdir()
            (tmp / "gates" / "test_gpu_gates.py").write_text(EXTRA_GATES, encoding="utf-8")
            deselect = [] if opts.full else ["--deselect", "llmq-suite::round_trip"]
            name = "llama-small" if opts.small else "llama-1.7b"
            runs.append(Run(name, [
                "gates", "--llmq-suite", f"--llmq-model={llama}",
                "--llmq-reference-dtype=bfloat16", "--llmq-eval-tokens=512", *deselect,
                *common, *report(name),
            ]))  # fmt: skip
            run_pytest(runs[-1], tmp, env)
            runs[-1].notes.insert(0, f"(+ {built:.1f} s to build and save the model)")

    print(f"\n{'=' * 30} gpu_check summary ({opts.device}) {'=' * 30}")
    print(f"{'run':<12} {'exit':>4} {'wall s':>7}  outcome")
    for r in runs:
        print(f"{r.name:<12} {r.code!s:>4} {r.seconds:>7.1f}  {r.outcome}")
        for note in r.notes:
            print(f"{'':<26}{note}")
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    return sum(1 for r in runs if r.code not in (0, 5))


if __name__ == "__main__":
    sys.exit(main())
