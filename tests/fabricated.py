"""Fabricated gate results for the output and baseline tests.

The outputs are pure functions of the run record (:class:`RunRecord`), so the tests
build its results with the real verdict functions from small fake measurements: every message and
file format is checked without loading a model (or importing torch).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from pytest_llmquant.layers import Coverage
from pytest_llmquant.run.record import Load, PairSummary, RunRecord
from pytest_llmquant.settings import Settings
from pytest_llmquant.verdicts import memory_verdict, similarity_verdict, speedup_verdict

PAIR = "smollm2-135m [dynamic-int8]"
OTHER = "tiny-gpt2 [weight-only-int8]"


# -- fabricated measurements ---------------------------------------------------------------


#: what the session records a real similarity measurement was taken on
MEASURED_ON = {
    "eval_text": "built-in corpus",
    "eval_text_sha256": "3f2a9b1c0d4e" + "0" * 52,
    "window": 512,
    "reference_dtype": "float32",
    "device": "cpu",
}


def similarity(pair: str = PAIR, *, mean_kld: float = 0.0041, same_top: float = 0.97,
               ppl_ratio: float = 1.008, max_kl: float = 0.01, kld_se: float = 0.0003,
               same_top_se: float = 0.005, ppl_ratio_se: float = 0.001, n_tokens: int = 512,
               measured_on: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """A similarity gate result; ``measured_on`` as the session adds it (None: a result
    without it, like an older plugin's)."""
    r = SimpleNamespace(
        n_tokens=n_tokens,
        mean_kld=mean_kld,
        kld_se=kld_se,
        p99_kld=0.03,
        max_kld=0.2,
        same_top=same_top,
        same_top_se=same_top_se,
        ppl_fp32=12.0,
        ppl_int8=12.0 * ppl_ratio,
        ppl_ratio=ppl_ratio,
        ppl_ratio_se=ppl_ratio_se,
        rms_dp=0.012,
        rms_dp_se=math.nan,  # a non-finite value must not break strict JSON
        greedy_match=None,
    )
    if measured_on is not None:
        r.measured_on = measured_on
    return similarity_verdict(r, pair, max_kl=max_kl, min_same_top=0.9, max_ppl_ratio=1.05)


def speedup(pair: str = PAIR, *, point: float = 2.0, low: float = 1.8, high: float = 2.2,
            n_pairs: int = 12, threshold: float = 1.0) -> Any:  # fmt: skip
    from pytest_llmquant.speed.timing import SpeedupResult

    r = SpeedupResult(
        verdict="pass" if point >= threshold else "fail",
        speedup=point,
        ci_low=low,
        ci_high=high,
        confidence=0.99,
        close=False,
        rule="interval clear of the threshold",
        threshold=threshold,
        n_pairs=n_pairs,
        reference_ms_per_token=20.0,
        int8_ms_per_token=20.0 / point,
        reference_tokens_per_s=50.0,
        int8_tokens_per_s=50.0 * point,
        threads=2,
        new_tokens=32,
        prompts=4,
        wall_s=1.0,
        reference_samples=[0.020, 0.021, 0.019],
        int8_samples=[0.010, 0.011, 0.0105],
    )
    return speedup_verdict(r, pair, min_speedup=threshold)


def memory(pair: str = PAIR, *, ratio: float = 3.8, kind: str = "weights") -> Any:
    r = SimpleNamespace(
        kind=kind,
        fp32_bytes=int(380e6),
        int8_bytes=int(380e6 / ratio),
        ratio=ratio,
        kept_float=None,
        note="",
    )
    return memory_verdict(r, pair, min_ratio=2.0)


def fake_settings(**values: Any) -> Settings:
    """The run's settings, as pytest_configure would resolve them from these options
    (2 threads unless told)."""
    return Settings(**{"threads": 2, **values})


def fake_record(
    results: list[Any],
    settings: Settings | None = None,
    *,
    device: str = "cpu",
    pairs: dict[str, PairSummary] | None = None,
    loads: dict[str, Load] | None = None,
) -> RunRecord:
    """The run record of a run that produced ``results``: each of their pairs with a
    coverage, the ``dynamic-int8`` scheme, ``fake_settings(device=device)`` unless given."""
    names = dict.fromkeys(r.pair for r in results)
    return RunRecord(
        settings=settings if settings is not None else fake_settings(device=device),
        schemes=["dynamic-int8"],
        results=list(results),
        pairs=dict(pairs or {}),
        coverages={p: Coverage(quantized=["a", "b", "c"], kept_float=["lm_head"]) for p in names},
        loads=dict(loads or {}),
    )


class Terminal:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write_line(self, line: str, **markup: bool) -> None:
        self.lines.append(line)


def all_three(pair: str = PAIR, **kw: Any) -> list[Any]:
    return [similarity(pair), speedup(pair), memory(pair)]
