"""The least wall time the README's main job can take at identical numbers, on this machine.

The main job (``pytest examples/suite --llmq-suite --llmq-model=smollm2-135m``) must do
a fixed amount of model arithmetic to report the figures it reports: the same windows,
prompts and token counts, which is what keeps stored baselines comparable. This script
does that work without pytest, each part the fastest of ``--repeats`` runs, and with
every figure a warm run reads from the cache (the FP32 similarity reference and its
greedy continuations) left out, so the sum is a floor for a warm run:

* **start**: a fresh ``python`` importing what the job imports before its first model
  call (torch, transformers' Llama, hypothesis, pytest), best of ``--repeats``;
* **load**: the FP32 model from the cached safetensors (after those imports), and
  quantizing it;
* the INT8 side of ``similarity`` (its scored windows, its greedy continuations),
  ``prompt_property`` (both sides: the FP32 next-token logits are not stored),
  ``finite`` and ``round_trip`` (the fixed prompts' logits), ``determinism``;
* the timed work: ``benchmark_fp32``/``benchmark_int8`` (one warm-up and
  ``BENCHMARK_ROUNDS`` rounds of ``BENCHMARK_NEW_TOKENS`` tokens each) and the speed
  gate as the suite runs it (``measure_speedup``, its defaults).

Nothing of pytest, the plugin's reporting, checksums or the KLD statistics is counted.
Example (about a minute on 2 cores)::

    python benchmarks/suite_floor.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

START = (
    "import torch, transformers, pytest, hypothesis; "
    "from transformers.models.llama import modeling_llama"
)


def best(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def prompt_batches() -> list[list[str]]:
    """The batches ``prompt_property`` checks under the default profile, in its order."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pytest_llmquant.strategies import PROFILE_NAME, prompts, register_profiles
    from pytest_llmquant.suite import PROMPT_BATCH

    register_profiles()
    profile = settings.get_profile(PROFILE_NAME)
    examples = max(1, -(-profile.max_examples // PROMPT_BATCH))
    seen: list[list[str]] = []

    @settings(profile, max_examples=examples)
    @given(st.lists(prompts(max_size=60), min_size=PROMPT_BATCH, max_size=PROMPT_BATCH))
    def record(batch: list[str]) -> None:
        seen.append(batch)

    record()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    start = best(lambda: subprocess.run([sys.executable, "-c", START], check=True), 3)
    exec(START)  # here too, so that "load" counts loading and not these imports again
    import torch

    from pytest_llmquant import load_fp32
    from pytest_llmquant.evaltext import EVAL_PROMPTS, default_corpus
    from pytest_llmquant.models.cache import ModelCache
    from pytest_llmquant.models.causal_lm import encode_prompt
    from pytest_llmquant.schemes import get_scheme, kernels
    from pytest_llmquant.settings import Settings
    from pytest_llmquant.sides.torch_side import TorchSide
    from pytest_llmquant.similarity.forward import EvalIds
    from pytest_llmquant.similarity.greedy import GREEDY_TOKENS
    from pytest_llmquant.speed.timing import measure_speedup
    from pytest_llmquant.suite import BENCHMARK_NEW_TOKENS, BENCHMARK_ROUNDS

    kernels.set_cache_dir(args.cache_dir)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    fp32, tok = load_fp32(args.model, cache=ModelCache(args.cache_dir))
    load = time.perf_counter() - t0
    scheme = get_scheme("weight-only-int8")
    int8 = scheme.quantize(copy.deepcopy(fp32))
    quantize = best(lambda: scheme.quantize(copy.deepcopy(fp32)), args.repeats)
    ref, q = TorchSide(fp32, "FP32", tokenizer=tok), TorchSide(int8, "INT8", tokenizer=tok)
    evaluation = EvalIds.read(tok, default_corpus(), Settings.eval_tokens, 512, None)
    greedy_ids = [
        encode_prompt(tok, p, context=None, new_tokens=GREEDY_TOKENS) for p in EVAL_PROMPTS
    ]
    fixed = [encode_prompt(tok, p, context=None) for p in EVAL_PROMPTS[:3]]
    batches = [[encode_prompt(tok, p, context=None) or [0] for p in b] for b in prompt_batches()]

    def windows() -> None:
        for w in evaluation.plan:
            q.scored_logits(evaluation.window_input(w), w.n_scored)

    def generate(model: Any, rounds: int) -> None:
        ids = torch.tensor([fixed[0]])
        for _ in range(rounds):
            model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0,
                max_new_tokens=BENCHMARK_NEW_TOKENS, min_new_tokens=BENCHMARK_NEW_TOKENS,
            )  # fmt: skip

    def logits(side: TorchSide) -> None:
        for ids in fixed:
            side.scored_logits(torch.tensor([ids]), len(ids))

    parts: list[tuple[str, Callable[[], Any]]] = [
        (f"similarity: {len(evaluation.plan)} INT8 windows", windows),
        (
            f"similarity: {len(greedy_ids)} x {GREEDY_TOKENS} INT8 greedy tokens",
            lambda: q.greedy(greedy_ids, GREEDY_TOKENS),
        ),
        (
            f"prompt_property: {len(batches)} batches, INT8",
            lambda: [q.next_token_logits(b) for b in batches],
        ),
        (
            f"prompt_property: {len(batches)} batches, FP32",
            lambda: [ref.next_token_logits(b) for b in batches],
        ),
        (
            "finite + round_trip: 3 prompts, FP32 once, INT8 twice",
            lambda: (logits(ref), logits(q), logits(q)),
        ),  # fmt: skip
        (
            "determinism + generation: 2 x 12 INT8 greedy tokens",
            lambda: (q.greedy([fixed[0]], 12), q.greedy([fixed[0]], 12)),
        ),  # fmt: skip
        (
            f"benchmark_fp32: {1 + BENCHMARK_ROUNDS} x {BENCHMARK_NEW_TOKENS} tokens",
            lambda: generate(fp32, 1 + BENCHMARK_ROUNDS),
        ),
        (
            f"benchmark_int8: {1 + BENCHMARK_ROUNDS} x {BENCHMARK_NEW_TOKENS} tokens",
            lambda: generate(int8, 1 + BENCHMARK_ROUNDS),
        ),
        (
            "speedup: the gate, its defaults",
            lambda: measure_speedup(fp32, int8, tok, threshold=1.0, threads=args.threads),
        ),
    ]
    print(
        f"{args.model}, {args.threads} threads, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}; best of {args.repeats}"
    )
    rows = [(f"start: a fresh python importing {START.split(';')[0][7:]}", start),
            ("load: FP32 from the cache (once)", load),
            ("load: quantize", quantize)]  # fmt: skip
    with torch.inference_mode():
        for label, fn in parts:
            rows.append((label, best(fn, args.repeats)))
    for label, seconds in rows:
        print(f"{seconds:7.2f} s  {label}")
    print(f"{sum(s for _, s in rows):7.2f} s  the floor of a warm run "
          f"(load average now {os.getloadavg()[0]:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
