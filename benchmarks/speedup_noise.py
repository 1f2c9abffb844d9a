"""How often does the speedup gate get it wrong on a busy machine?

Measures, on a real model, the two error rates that matter for ``quant_speedup``:

* **false fails**: the gate run ``--runs`` times at a threshold 0.8x the true
  speedup; every ``fail`` is a false alarm (target: at most 1 in 50);
* **detections**: the gate run ``--runs`` times at 1.2x the true speedup; every
  ``fail`` is a correct detection (target: all of them).

The true speedup is first measured in a long run without the competing load
(``--true-pairs`` decode-step pairs, or given with ``--true-speedup``). The gate runs
then happen while a helper process keeps ``--busy`` cores at 100% with a Python busy
loop, the two thresholds alternating run by run so that any drift of the machine
hits both alike. Every gate run uses the gate's defaults (single decode steps,
Hodges-Lehmann / signed-rank interval, ``--budget`` seconds) unless told otherwise.

Example (the full benchmark: run it on an otherwise quiet machine)::

    python benchmarks/speedup_noise.py --runs 50 --threads 1 --out speedup-noise.json

Smoke test: ``python benchmarks/speedup_noise.py --runs 2 --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

FACTORS = (0.8, 1.2)


def busy_loop(stop: Any, cpu: int | None, parent: int) -> None:
    """Keep one core at 100% until ``stop`` is set or the parent is gone (runs in a child
    process: a parent killed by a signal runs no ``finally``, and a busy loop left behind
    would skew every later measurement on the machine)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    x = 0
    while not stop.is_set() and os.getppid() == parent:
        for i in range(20_000):
            x ^= i


def start_busy(n: int) -> tuple[Any, list[Any]]:
    """Start ``n`` busy processes, pinned to the last ``n`` cores this process may use."""
    ctx = mp.get_context("spawn")  # no fork of a process that holds torch's thread pools
    stop = ctx.Event()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    procs = []
    for k in range(n):
        cpu = cpus[-1 - (k % len(cpus))] if cpus else None
        p = ctx.Process(target=busy_loop, args=(stop, cpu, os.getpid()), daemon=True)
        p.start()
        procs.append(p)
    return stop, procs


def stop_busy(stop: Any, procs: list[Any]) -> None:
    stop.set()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join()


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]], factor: float, threshold: float) -> dict[str, Any]:
    mine = [r for r in runs if r["factor"] == factor]
    walls = {v: [r["wall_s"] for r in mine if r["verdict"] == v] for v in ("pass", "fail")}
    return {
        "factor": factor,
        "threshold": threshold,
        "runs": len(mine),
        "fails": sum(r["verdict"] == "fail" for r in mine),
        "passes": sum(r["verdict"] == "pass" for r in mine),
        "close": sum(bool(r["close"]) for r in mine),
        "median_wall_s_pass": _median(walls["pass"]),
        "median_wall_s_fail": _median(walls["fail"]),
        "median_pairs": _median([r["n_pairs"] for r in mine]),
        "median_speedup": _median([r["speedup"] for r in mine]),
    }


def markdown(summary: list[dict[str, Any]], true_speedup: float) -> str:
    def fmt(v: float | None, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        f"True speedup (quiet): {true_speedup:.3f}x",
        "",
        "| threshold | runs | fails | meaning of a fail | median wall s (pass) "
        "| median wall s (fail) | close verdicts | median pairs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        meaning = "false fail" if s["factor"] < 1 else "detection"
        lines.append(
            f"| {s['factor']:g}x true = {s['threshold']:.3f}x | {s['runs']} | {s['fails']} "
            f"| {meaning} | {fmt(s['median_wall_s_pass'])} | {fmt(s['median_wall_s_fail'])} "
            f"| {s['close']} | {fmt(s['median_pairs'], 'g')} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "model",
        nargs="?",
        default="smollm2-135m",
        help="an --llmq-model value: alias, hub id or model directory; default %(default)s",
    )
    ap.add_argument(
        "--scheme", default="weight-only-int8", help="INT8 scheme (default %(default)s)"
    )
    ap.add_argument("--runs", type=int, default=50, help="gate runs per threshold (default 50)")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="time budget of each gate run, seconds (default: the gate's default)",
    )
    ap.add_argument(
        "--true-pairs",
        type=int,
        default=300,
        help="decode-step pairs of the quiet reference measurement (default 300)",
    )
    ap.add_argument(
        "--true-speedup",
        type=float,
        default=None,
        help="skip the reference measurement and use this speedup",
    )
    ap.add_argument("--busy", type=int, default=1, help="cores kept busy (default 1)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: all cores this process may use)",
    )
    ap.add_argument(
        "--new-tokens",
        type=int,
        default=32,
        help="decode steps per prompt before the next prompt is prefilled (default 32)",
    )
    ap.add_argument(
        "--confidence",
        type=float,
        default=None,
        help="gate confidence level (default: the gate's default)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write all results to this JSON file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import copy
    import inspect

    from pytest_llmquant.errors import LlmqError
    from pytest_llmquant.models.loading import load_fp32
    from pytest_llmquant.schemes import get_scheme
    from pytest_llmquant.speed.stats import DEFAULT_CONFIDENCE
    from pytest_llmquant.speed.timing import format_speedup, measure_speedup

    confidence = args.confidence if args.confidence is not None else DEFAULT_CONFIDENCE
    budget = args.budget
    if budget is None:
        budget = inspect.signature(measure_speedup).parameters["time_budget"].default

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    try:
        fp32, tokenizer = load_fp32(args.model)
    except LlmqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    int8 = get_scheme(args.scheme).quantize(copy.deepcopy(fp32)).eval()
    log(f"loaded {args.model} and built {args.scheme} in {time.perf_counter() - t0:.1f} s")

    common: dict[str, Any] = {
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "confidence": confidence,
    }
    if args.true_speedup is not None:
        true_speedup = args.true_speedup
        reference: dict[str, Any] | None = None
        log(f"true speedup given: {true_speedup:.3f}x")
    else:
        ref = measure_speedup(
            fp32,
            int8,
            tokenizer,
            threshold=1.0,
            time_budget=math.inf,
            min_pairs=args.true_pairs,
            max_pairs=args.true_pairs,
            **common,
        )
        true_speedup = ref.speedup
        reference = ref.as_dict()
        log(f"reference (quiet): {format_speedup(ref)}")

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores or 1
    if cores and threads + args.busy > cores:
        log(
            f"note: {threads} torch threads + {args.busy} busy core(s) > {cores} cores: every "
            "parallel region waits for a descheduled thread, so runs get many times slower "
            "and noisier (this is what the gate sees with its default threads on a busy box)"
        )

    thresholds = {f: f * true_speedup for f in FACTORS}
    runs: list[dict[str, Any]] = []
    stop, procs = start_busy(args.busy)
    log(f"{args.busy} busy process(es) started")
    try:
        for i in range(args.runs):
            for factor in FACTORS:  # alternate thresholds so that drift hits both alike
                r = measure_speedup(
                    fp32,
                    int8,
                    tokenizer,
                    threshold=thresholds[factor],
                    time_budget=budget,
                    **common,
                )
                row = {"factor": factor, "run": i, **r.as_dict()}
                runs.append(row)
                log(
                    f"[{factor:g}x true, run {i + 1}/{args.runs}] {r.verdict:4s} "
                    f"wall {r.wall_s:5.1f} s: {format_speedup(r)}"
                )
    finally:
        stop_busy(stop, procs)

    summary = [summarize(runs, f, thresholds[f]) for f in FACTORS]
    print(markdown(summary, true_speedup))
    if args.out is not None:
        report = {
            "model": str(args.model),
            "scheme": args.scheme,
            "runs_per_threshold": args.runs,
            "budget_s": budget,
            "busy_cores": args.busy,
            "confidence": confidence,
            "new_tokens": args.new_tokens,
            "threads": threads,
            "true_speedup": true_speedup,
            "reference": reference,
            "summary": summary,
            "runs": runs,
        }
        args.out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
