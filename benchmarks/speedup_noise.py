"""How often does the speedup gate get it wrong on a busy machine?

Measures, on a real model, the two error rates that matter for ``quant_speedup``:

* **false fails**: the gate run ``--runs`` times at a threshold 0.8x the true
  speedup; every ``fail`` is a false alarm (target: at most 1 in 50);
* **detections**: the gate run ``--runs`` times at 1.2x the true speedup; every
  ``fail`` is a correct detection (target: all of them).

and a third count: **inconclusive** runs, where the gate found the CPU too busy to
judge (target: under 10% of runs); an inconclusive run is neither a pass nor a fail.

The gate's threads: ``--threads T``, or by default the gate's own default, the cores
that are free when it starts (``pytest_llmquant.speed.contention.timing_threads``). The
true speedup is first measured in a long run without the competing load
(``--true-pairs`` decode-step pairs, or given with ``--true-speedup``) at the threads
the gate will use under the load: with the default, the benchmark starts the busy
loop, asks the gate's resolver, and stops the loop again before the quiet run. The gate
runs then happen while a helper process keeps ``--busy`` cores at 100% with a Python
busy loop, the two thresholds alternating run by run so that any drift of the machine
hits both alike. Each run prints its verdict, threads and the CPU contention the gate
measured (the share of time its threads waited for a core, the cores other processes
used); a run whose threads differ from the truth's is counted apart. The load average
is printed before and after.

Example (the full benchmark: run it on an otherwise quiet machine)::

    python benchmarks/speedup_noise.py --runs 50 --busy 1 --out speedup-noise.json
    python benchmarks/speedup_noise.py --runs 50 --busy 1 --threads 1

Smoke test: ``python benchmarks/speedup_noise.py --runs 2``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
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


def summarize(
    runs: list[dict[str, Any]], factor: float, threshold: float, threads: int
) -> dict[str, Any]:
    mine = [r for r in runs if r["factor"] == factor]
    walls = {v: [r["wall_s"] for r in mine if r["verdict"] == v] for v in ("pass", "fail")}
    stalls = [r["cpu_stalled"] for r in mine if r.get("cpu_stalled") is not None]
    others = [r["cpu_others"] for r in mine if r.get("cpu_others") is not None]
    return {
        "factor": factor,
        "threshold": threshold,
        "runs": len(mine),
        "fails": sum(r["verdict"] == "fail" for r in mine),
        "passes": sum(r["verdict"] == "pass" for r in mine),
        "inconclusive": sum(r["verdict"] == "inconclusive" for r in mine),
        "close": sum(bool(r["close"]) for r in mine),
        "other_threads": sum(r["threads"] != threads for r in mine),
        "median_wall_s_pass": _median(walls["pass"]),
        "median_wall_s_fail": _median(walls["fail"]),
        "median_pairs": _median([r["n_pairs"] for r in mine]),
        "median_speedup": _median([r["speedup"] for r in mine]),
        "median_stalled": _median(stalls),
        "median_others": _median(others),
    }


def markdown(summary: list[dict[str, Any]], true_speedup: float, threads: int) -> str:
    def fmt(v: float | None, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        f"True speedup (quiet, {threads} thread{'s' if threads != 1 else ''}): {true_speedup:.3f}x",
        "",
        "| threshold | runs | fails | meaning of a fail | inconclusive | close verdicts "
        "| median wall s (pass) | median wall s (fail) | median pairs | median CPU wait "
        "| median others' cores | runs at other threads |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        meaning = "false fail" if s["factor"] < 1 else "detection"
        stall = "-" if s["median_stalled"] is None else f"{100 * s['median_stalled']:.0f}%"
        lines.append(
            f"| {s['factor']:g}x true = {s['threshold']:.3f}x | {s['runs']} | {s['fails']} "
            f"| {meaning} | {s['inconclusive']} | {s['close']} "
            f"| {fmt(s['median_wall_s_pass'])} | {fmt(s['median_wall_s_fail'])} "
            f"| {fmt(s['median_pairs'], 'g')} | {stall} | {fmt(s['median_others'], '.2f')} "
            f"| {s['other_threads']} |"
        )
    return "\n".join(lines)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def gate_threads(asked: int | None, busy: int) -> tuple[int, str]:
    """The threads the gate will use under the load: ``asked``, or the gate's own default
    measured while ``busy`` cores are kept busy (the loop is stopped again)."""
    if asked is not None:
        return asked, "asked"
    from pytest_llmquant.setting_checks import default_threads
    from pytest_llmquant.speed.contention import default_meter, timing_threads

    stop, procs = start_busy(busy)
    try:
        time.sleep(1.0)  # let the loop reach its core
        threads, note = timing_threads(None, default_meter(), default_threads())
    finally:
        stop_busy(stop, procs)
    return threads, note or "the gate's default: all cores"


def run_line(factor: float, i: int, runs: int, r: Any) -> str:
    from pytest_llmquant.speed.timing import format_speedup

    stall = "-" if r.cpu_stalled is None else f"{100 * r.cpu_stalled:3.0f}%"
    others = "-" if r.cpu_others is None else f"{r.cpu_others:.2f}"
    return (
        f"[{factor:g}x true, run {i + 1}/{runs}] {r.verdict:12s} wall {r.wall_s:5.1f} s, "
        f"{r.threads} thr, CPU wait {stall}, others {others} cores: {format_speedup(r)}"
    )


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
        help="the gate's threads (default: the gate's default, the cores free at its start)",
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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gate_runs(
    gate: Callable[..., Any],
    thresholds: dict[float, float],
    runs: int,
    busy: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """``runs`` gate runs per threshold under ``busy`` busy cores, thresholds alternating
    so that any drift of the machine hits both alike."""
    rows: list[dict[str, Any]] = []
    stop, procs = start_busy(busy)
    log(f"{busy} busy process(es) started")
    try:
        for i in range(runs):
            for factor in FACTORS:
                r = gate(threshold=thresholds[factor])
                rows.append({"factor": factor, "run": i, **r.as_dict()})
                log(run_line(factor, i, runs, r))
    finally:
        stop_busy(stop, procs)
    return rows


def load_pair(model: str, scheme: str) -> tuple[Any, Any, Any] | None:
    """The reference, its INT8 model and the tokenizer; None (after saying why) if not."""
    import copy

    from pytest_llmquant.errors import LlmqError
    from pytest_llmquant.models.loading import load_fp32
    from pytest_llmquant.schemes import get_scheme

    t0 = time.perf_counter()
    try:
        reference, tokenizer = load_fp32(model)
    except LlmqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    int8 = get_scheme(scheme).quantize(copy.deepcopy(reference)).eval()
    log(f"loaded {model} and built {scheme} in {time.perf_counter() - t0:.1f} s")
    return reference, int8, tokenizer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import inspect

    from pytest_llmquant.speed.stats import DEFAULT_CONFIDENCE
    from pytest_llmquant.speed.timing import format_speedup, measure_speedup

    confidence = args.confidence if args.confidence is not None else DEFAULT_CONFIDENCE
    budget = args.budget
    if budget is None:
        budget = inspect.signature(measure_speedup).parameters["time_budget"].default
    log(f"load average at the start: {load_average()}")
    loaded = load_pair(args.model, args.scheme)
    if loaded is None:
        return 2
    threads, how = gate_threads(args.threads, args.busy)
    log(f"the gate's threads with {args.busy} busy core(s): {threads} ({how})")
    common: dict[str, Any] = {"new_tokens": args.new_tokens, "confidence": confidence}
    if args.true_speedup is not None:
        true_speedup, reference = args.true_speedup, None
        log(f"true speedup given: {true_speedup:.3f}x")
    else:
        ref = measure_speedup(
            *loaded, threshold=1.0, time_budget=math.inf, min_pairs=args.true_pairs,
            max_pairs=args.true_pairs, threads=threads, **common,
        )  # fmt: skip
        true_speedup, reference = ref.speedup, ref.as_dict()
        log(f"reference (quiet, load {load_average()}): {format_speedup(ref)}")

    thresholds = {f: f * true_speedup for f in FACTORS}
    gate = functools.partial(
        measure_speedup, *loaded, time_budget=budget, threads=args.threads, **common
    )
    runs = gate_runs(gate, thresholds, args.runs, args.busy, log)
    log(f"load average at the end: {load_average()}")
    summary = [summarize(runs, f, thresholds[f], threads) for f in FACTORS]
    print(markdown(summary, true_speedup, threads))
    if args.out is not None:
        report = {
            "model": str(args.model), "scheme": args.scheme, "runs_per_threshold": args.runs,
            "budget_s": budget, "busy_cores": args.busy, "confidence": confidence,
            "new_tokens": args.new_tokens, "threads": threads, "threads_chosen": how,
            "true_speedup": true_speedup, "reference": reference, "summary": summary,
            "runs": runs,
        }  # fmt: skip
        args.out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
