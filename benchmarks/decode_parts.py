"""Where one INT8 decode step's time goes: the int8 matrix products, the rest of the model.

Three measurements on the same machine, at ``--threads``:

* **kernel**: every decode call of SmolLM2's int8 layers as the model makes them (fused
  q/k/v, o, fused gate/up, down: 30 of each, so the weights stream from memory as in a
  step; lm_head once), each call's best of 5 rounds, with GB/s of the bytes read and a
  plain float32 read of 256 MB (``torch.sum``) beside them;
* **generate**, interleaved (``thread_sweep.generate_pairs``): HF ``generate`` of
  ``--tokens`` greedy tokens, ms/token, of the INT8 model and of the same model with every linear layer replaced by one that
  returns zeros: what transformers' own per-token work costs (norms, rotary, attention,
  the cache, sampling), which no int8 kernel can remove.

Example (about a minute on 2 cores)::

    python benchmarks/decode_parts.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from typing import Any

from thread_sweep import bandwidth_gbs, generate_pairs  # the same measurements, same folder

SHAPES = {"q/k/v": (960, 576), "o": (576, 576), "gate/up": (3072, 576), "down": (576, 1536)}
LM_HEAD = (49152, 576)


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def kernel_rows(threads: int) -> list[tuple[str, float, float]]:
    """(layer kind, us per call, GB/s) for SmolLM2's int8 decode calls."""
    import torch
    from torch import nn

    from pytest_llmquant.schemes.kernels.calls import PackedCall
    from pytest_llmquant.schemes.weight_only_linear import WeightOnlyInt8Linear

    torch.set_num_threads(threads)
    rows = []
    for name, (n, k), copies in [*((s, v, 30) for s, v in SHAPES.items()), ("lm_head", LM_HEAD, 1)]:
        layers = [
            WeightOnlyInt8Linear.from_linear(nn.Linear(k, n, bias=False), 32) for _ in range(copies)
        ]
        calls = [
            PackedCall(la.packed, k, 32, [n], [None]) for la in layers if la.packed is not None
        ]
        x = torch.randn(1, k)
        best = min(_seconds(lambda c=calls, x=x: [call(x) for call in c]) for _ in range(6))
        nbytes = sum(c.packed.numel() for c in calls)
        rows.append((name, best / len(calls) * 1e6, nbytes / best / 1e9))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=9)
    args = ap.parse_args()

    import torch
    from torch import nn

    from pytest_llmquant import load_fp32
    from pytest_llmquant.schemes import get_scheme

    class Zeros(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*x.shape[:-1], self.n)

    print(f"{args.threads} threads; plain read {bandwidth_gbs(256, args.threads):.1f} GB/s; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    total = 0.0
    for name, us, gbs in kernel_rows(args.threads):
        per_token = us * (1 if name == "lm_head" else 30) / 1e3
        total += per_token
        print(f"  kernel {name:8s} {us:8.1f} us/call {gbs:5.1f} GB/s  {per_token:5.2f} ms/token")
    print(f"  kernel all      {total:5.2f} ms/token")
    fp32, tok = load_fp32(args.model)
    int8 = get_scheme("weight-only-int8").quantize(copy.deepcopy(fp32))
    zeros = copy.deepcopy(fp32)
    for parent in list(zeros.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, child_name, Zeros(child.out_features))
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        pair = generate_pairs(zeros, int8, ids, args.tokens, args.pairs)
    print(f"  generate: INT8 {pair['int8_ms']:.2f} ms/token, every linear returning zeros "
          f"{pair['fp32_ms']:.2f} ms/token ({args.pairs} interleaved pairs, median); "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
