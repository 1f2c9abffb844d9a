"""FP32 vs ``weight-only-int8`` decode speed at 1, 2, ... threads, two ways, beside the
memory-bandwidth limit of the same machine.

For each thread count T (1 to ``--max-threads``, default the core count):

* **bandwidth**: GB/s of a ``--bw-mb`` MB float32 read (``torch.sum``, T threads, best
  of 5), and the INT8 model's floor: the bytes its int8 layers hold (read once per
  token) over that rate. ``of limit`` is that floor over the measured INT8 ms/token;
* **gate**: the speedup gate's own decode-step measurement,
  :func:`pytest_llmquant.speed.timing.measure_speedup` with ``threads=T`` and exactly
  ``--pairs`` interleaved pairs (median step ms, Hodges-Lehmann speedup and its 99% CI);
* **generate**: HF ``generate`` of ``--tokens`` greedy tokens (EOS suppressed), ``--gen-pairs``
  interleaved FP32/INT8 pairs in alternating order, median ms/token and the median of
  the per-pair ratios with a distribution-free 95% CI (binomial order statistics).

The load average (1 min) is printed on every row: on a shared machine compare rows
only at similar load. Example (about 3 minutes on 2 cores)::

    python benchmarks/thread_sweep.py --model smollm2-135m --cache-dir /tmp/llmq-cache
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from typing import Any


def bandwidth_gbs(mb: int, threads: int) -> float:
    """Best of 5 reads of an ``mb`` MB float32 tensor at ``threads`` threads, in GB/s."""
    import torch

    torch.set_num_threads(threads)
    data = torch.ones(mb * (1 << 20) // 4, dtype=torch.float32)
    best = math.inf
    for _ in range(6):
        t0 = time.perf_counter()
        float(data.sum())
        best = min(best, time.perf_counter() - t0)
    return data.numel() * 4 / best / 1e9


def median_ci(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """Median and its distribution-free ~95% interval (order statistics of a binomial)."""
    v = sorted(values)
    n = len(v)
    half = z * math.sqrt(n) / 2
    lo, hi = max(0, int(math.floor(n / 2 - half))), min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    return statistics.median(v), v[lo], v[max(lo, hi)]


def generate_pairs(fp32: Any, int8: Any, ids: Any, tokens: int, pairs: int) -> dict[str, Any]:
    """Interleaved ``generate`` pairs: ms/token of each model and the per-pair ratio."""
    import torch

    def one(model: Any) -> float:
        t0 = time.perf_counter()
        model.generate(
            ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
            attention_mask=torch.ones_like(ids), pad_token_id=0,
        )  # fmt: skip
        return (time.perf_counter() - t0) / tokens * 1e3

    one(fp32), one(int8)  # warm-up
    f, q = [], []
    for i in range(pairs):
        if i % 2:
            q.append(one(int8))
            f.append(one(fp32))
        else:
            f.append(one(fp32))
            q.append(one(int8))
    ratio = median_ci([a / b for a, b in zip(f, q, strict=True)])
    return {"fp32_ms": statistics.median(f), "int8_ms": statistics.median(q), "ratio": ratio}


def int8_bytes(model: Any) -> int:
    """Bytes of the int8 layers' weights, scales and biases: what one token reads."""
    from pytest_llmquant.schemes.weight_only_linear import WeightOnlyInt8Linear

    total = 0
    for m in model.modules():
        if isinstance(m, WeightOnlyInt8Linear):
            total += sum(b.numel() * b.element_size() for b in m.buffers())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--max-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pairs", type=int, default=200, help="gate decode-step pairs")
    ap.add_argument("--gen-pairs", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--bw-mb", type=int, default=256)
    args = ap.parse_args()

    import torch

    from pytest_llmquant import load_fp32
    from pytest_llmquant.models.cache import ModelCache
    from pytest_llmquant.schemes import get_scheme, kernels
    from pytest_llmquant.speed.timing import measure_speedup

    kernels.set_cache_dir(args.cache_dir)
    fp32, tok = load_fp32(args.model, cache=ModelCache(args.cache_dir))
    int8 = get_scheme("weight-only-int8").quantize(copy.deepcopy(fp32))
    nbytes = int8_bytes(int8)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    print(f"{args.model}: INT8 layers hold {nbytes / 1e6:.1f} MB; kernel: "
          f"{kernels.path_description()}; torch {torch.__version__}")  # fmt: skip
    head = (
        f"{'T':>2} {'GB/s':>5} {'floor':>6} | {'gate fp32':>9} {'int8':>6} {'speedup':>7} "
        f"{'99% CI':>11} {'of lim':>6} | {'gen fp32':>8} {'int8':>6} {'ratio':>5} "
        f"{'95% CI':>11} {'of lim':>6} | load"
    )
    print(head)
    print("-" * len(head))
    with torch.inference_mode():
        for t in range(1, args.max_threads + 1):
            bw = bandwidth_gbs(args.bw_mb, t)
            floor = nbytes / bw / 1e6  # ms/token at the bandwidth limit
            load_before = os.getloadavg()[0]
            g = measure_speedup(
                fp32, int8, tok, threshold=1.0, threads=t, time_budget=1e9,
                min_pairs=args.pairs, max_pairs=args.pairs,
            )  # fmt: skip
            torch.set_num_threads(t)
            h = generate_pairs(fp32, int8, ids, args.tokens, args.gen_pairs)
            r, lo, hi = h["ratio"]
            print(
                f"{t:2d} {bw:5.1f} {floor:6.2f} | {g.reference_ms_per_token:9.2f} "
                f"{g.int8_ms_per_token:6.2f} {g.speedup:6.2f}x {g.ci_low:5.2f}-{g.ci_high:<5.2f} "
                f"{floor / g.int8_ms_per_token:6.0%} | {h['fp32_ms']:8.2f} {h['int8_ms']:6.2f} "
                f"{r:4.2f}x {lo:5.2f}-{hi:<5.2f} {floor / h['int8_ms']:6.0%} | "
                f"{load_before:.2f}-{os.getloadavg()[0]:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
