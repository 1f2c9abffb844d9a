"""The speed/quality frontier of the built-in INT8 schemes on one model.

Prints a table ``scheme | speedup | mean KLD | same-top | PPL ratio``:

* speedup: FP32 time / INT8 time of greedy generation of ``--new-tokens`` tokens
  (default 32) from a fixed prompt, after one warm-up each, the two models
  interleaved in one process (the order alternates pair by pair, so drift of a shared
  machine hits both alike); the median of ``--pairs`` per-pair ratios (default 7).
* quality: :func:`pytest_llmquant.similarity.measure_similarity` over ``--tokens``
  (default 2048) tokens of :func:`pytest_llmquant.evaltext.default_corpus`.

The thread count is fixed (``--threads``, default 1). Why 1 by default: on the 2-core
machine this was tuned on, shared with other jobs, two OpenMP threads made *both*
models several times slower (idle threads spin-waiting for a descheduled peer), and
the ratio then measured the machine's load, not the scheme.

Example::

    python benchmarks/schemes.py --model /tmp/smollm2-fp32 \\
        weight-only-int8 weight-only-int8:group_size=0 smoothquant-w8a8:alpha=0.8
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from typing import Any


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name[:key=value,...]``; values are JSON if they parse (``0``, ``null``, ``[...]``)."""
    name, _, rest = spec.partition(":")
    config: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            config[key] = json.loads(value)
        except ValueError:
            config[key] = value
    return name, config


def generation_time(model: Any, inputs: dict[str, Any], new_tokens: int, pad_id: int) -> float:
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
    return time.perf_counter() - start


def measure_speedup(
    fp32: Any, int8: Any, tokenizer: Any, *, pairs: int, new_tokens: int, prompt: str
) -> float:
    inputs = dict(tokenizer(prompt, return_tensors="pt"))
    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    for model in (fp32, int8):  # warm-up: allocator, kernel build, caches
        generation_time(model, inputs, new_tokens, pad)
    ratios = []
    for i in range(pairs):
        order = (fp32, int8) if i % 2 == 0 else (int8, fp32)
        times = {id(m): generation_time(m, inputs, new_tokens, pad) for m in order}
        ratios.append(times[id(fp32)] / times[id(int8)])
    return statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("schemes", nargs="*", help="name[:key=value,...]; default: all registered")
    parser.add_argument("--model", default="/tmp/smollm2-fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=2048, help="scored tokens for KLD")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_llmquant.evaltext import EVAL_PROMPTS
    from pytest_llmquant.schemes import get_scheme, names
    from pytest_llmquant.similarity import measure_similarity

    torch.set_num_threads(args.threads)
    fp32 = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    specs = args.schemes or names()

    print(f"model {args.model}, {args.threads} thread(s), torch {torch.__version__}", flush=True)
    print("| scheme | speedup | mean KLD | same-top | PPL ratio | quantize s |")
    print("|---|---|---|---|---|---|", flush=True)
    for spec in specs:
        name, config = parse_spec(spec)
        scheme = get_scheme(name, **config)
        start = time.perf_counter()
        int8 = scheme.quantize(copy.deepcopy(fp32)).eval()
        quantize_s = time.perf_counter() - start
        speed = (
            "-"
            if args.skip_speed
            else f"{measure_speedup(fp32, int8, tokenizer, pairs=args.pairs, new_tokens=args.new_tokens, prompt=EVAL_PROMPTS[1]):.2f}x"
        )
        kld = top = ppl = "-"
        if not args.skip_quality:
            sim = measure_similarity(fp32, int8, tokenizer, n_tokens=args.tokens, prompts=())
            kld = f"{sim.mean_kld:.5f} ± {sim.kld_se:.5f}"
            top = f"{100 * sim.same_top:.2f}%"
            ppl = f"{sim.ppl_ratio:.4f}"
        print(f"| {spec} | {speed} | {kld} | {top} | {ppl} | {quantize_s:.1f} |", flush=True)
        del int8
    return 0


if __name__ == "__main__":
    sys.exit(main())
