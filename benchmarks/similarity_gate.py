"""Wall time of the similarity gate as the session runs it, on one model and scheme.

``direct`` measures without a stored reference (both models run), ``cold`` with an empty
reference cache (FP32 runs once and is stored), ``warm`` with ``--cache`` already holding
the reference (only the INT8 model runs; the first warm call of a new cache dir is cold).
Loading and quantizing are not timed. One JSON line per run, with the 1-minute load
average before and after: on a shared machine, compare runs only at similar load.

    python benchmarks/similarity_gate.py warm --threads 1 --cache /tmp/llmq-ref
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["direct", "cold", "warm"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scheme", default="weight-only-int8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", help="reference cache dir for 'warm'")
    args = parser.parse_args()

    import torch

    from pytest_llmquant.evaltext import load_eval_text
    from pytest_llmquant.int8.build import build_int8
    from pytest_llmquant.models.cache import ModelCache
    from pytest_llmquant.models.loading import load_fp32
    from pytest_llmquant.models.sources import resolve
    from pytest_llmquant.similarity import ReferenceStore, measure_similarity

    torch.set_num_threads(args.threads)
    fp32, tok = load_fp32(args.model)
    int8, _ = build_int8(fp32, args.scheme)
    reference = None
    if args.mode != "direct":
        root = args.cache if args.mode == "warm" else tempfile.mkdtemp(prefix="llmq-ref-")
        reference = ReferenceStore.for_source(ModelCache(root), resolve(args.model), fp32)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = measure_similarity(fp32, int8, tok, text=load_eval_text(None), store=reference)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "mode": args.mode,
                "threads": args.threads,
                "seconds": round(seconds, 1),
                "load1": [round(load, 2), round(os.getloadavg()[0], 2)],
                "result": str(result),
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
