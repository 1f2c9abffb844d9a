"""Where does fanning a decode matrix-vector product out over threads start to pay?

Times ``llmq_wo_packed_parts`` (one token, Q8_0 blocks of 32) on 1 thread and on
``--threads`` threads for a sweep of output widths, with weights cycled through a set of
copies bigger than the last-level cache (as in a real decode step, where each layer's
weight comes from DRAM), 1-thread and N-thread runs interleaved, median of ``--reps``.
Prints one line per shape with the load average, and the smallest work (multiply-adds)
from which N threads were faster at every larger size: the figure behind
``kernels.PARALLEL_MIN_WORK``.

    python benchmarks/kernel_grain.py --threads 2 --cache-dir /tmp/llmq-cache
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _time(lib, copies, x, y, n, k, threads):  # type: ignore[no-untyped-def]
    rows = (__import__("ctypes").c_int64 * 1)(n)
    bias = (__import__("ctypes").c_void_p * 1)(None)
    t0 = time.perf_counter()
    for p in copies:
        lib.llmq_wo_packed_parts(
            p.data_ptr(), x.data_ptr(), y.data_ptr(), 1, k, 32, 1, rows, bias, threads
        )
    return (time.perf_counter() - t0) / len(copies) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--k", type=int, default=576)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--bytes", type=float, default=128e6, help="weight bytes cycled per timing")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()

    import torch

    from pytest_llmquant.schemes import kernels
    from pytest_llmquant.schemes.int8_math import pack_rows, quantize_per_channel

    kernels.set_cache_dir(args.cache_dir)
    lib = kernels.load_library()
    torch.set_num_threads(args.threads)
    k = args.k
    print(f"k={k}, 1 vs {args.threads} threads, median of {args.reps}, weights from DRAM")
    faster: list[tuple[int, bool]] = []
    for n in (16, 32, 64, 128, 192, 256, 384, 576, 960, 1536, 3072):
        q, s = quantize_per_channel(torch.randn(n, k), 32)
        base = pack_rows(q, s, 32)
        copies = [base.clone() for _ in range(max(2, int(args.bytes // base.numel())))]
        x, y = torch.randn(1, k), torch.empty(1, n)
        one, many = [], []
        for rep in range(args.reps):
            order = (1, args.threads) if rep % 2 else (args.threads, 1)
            for t in order:
                (one if t == 1 else many).append(_time(lib, copies, x, y, n, k, t))
        a, b = statistics.median(one), statistics.median(many)
        faster.append((n * k, b < a))
        print(
            f"n={n:5d} work={n * k:9d}  1t {a:8.1f} us  {args.threads}t {b:8.1f} us  "
            f"1t/{args.threads}t {a / b:5.2f}  load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    grain = next((w for i, (w, _) in enumerate(faster) if all(f for _, f in faster[i:])), None)
    print(f"smallest work from which {args.threads} threads won at every larger size: {grain}")


if __name__ == "__main__":
    main()
