"""Generation timings recorded in pytest-benchmark, so ``--benchmark-compare-fail`` gates CI.

The reference and INT8 are separate benchmark entries (pytest-benchmark allows one
benchmark per test), grouped by model, so that ``--benchmark-compare`` matches each one
with its own past run. Both time a model side's
:meth:`~pytest_llmquant.sides.base.ModelSide.greedy` generation through
``benchmark.pedantic`` with warm-up rounds and a fixed number of new tokens (no early
EOS), so a run measures the same work every time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..session import ModelPair
    from ..sides.base import ModelSide
    from ..types import JSONValue

ROUNDS = 5
WARMUP_ROUNDS = 1
PRECISIONS = ("fp32", "int8")  # the names users pass to run(); "fp32" is the reference

#: where a median is kept for the speedup: (model, "<precision>, <n> tokens", scheme)
MedianKey = tuple[str, str, str]


class Benchmark(Protocol):
    """pytest-benchmark's ``benchmark`` fixture, as far as this module uses it."""

    group: str | None
    extra_info: dict[str, JSONValue]

    def pedantic(
        self, target: Callable[[], object], *, rounds: int, warmup_rounds: int, iterations: int
    ) -> object: ...


class Medians(Protocol):
    """Where the run keeps each entry's median, to compute the speedup between two (the
    run record)."""

    benchmark_medians: dict[MedianKey, float]


def generation_target(side: ModelSide, prompt: list[int], new_tokens: int) -> Callable[[], object]:
    """A zero-argument callable that generates exactly ``new_tokens`` tokens after ``prompt``."""
    return lambda: side.greedy([prompt], new_tokens)


def _median_key(pair: ModelPair, precision: str, new_tokens: int) -> MedianKey:
    """With the token count, so that a speedup is only ever computed from two runs of the
    same length."""
    return (pair.label, f"{precision}, {new_tokens} tokens", pair.scheme)


def _side(pair: ModelPair, precision: str) -> ModelSide:
    """The side a benchmark times: the pair's reference for ``"fp32"``, else its INT8 side."""
    return pair.reference_side if precision == "fp32" else pair.int8_side


def _median_s(bench: Benchmark) -> float | None:
    """The median round in seconds, where pytest-benchmark kept statistics."""
    stats = getattr(bench, "stats", None)  # a third-party object: absent when disabled
    inner = getattr(stats, "stats", None)
    median = getattr(inner, "median", None)
    return float(median) if median else None


def _check(bench: Benchmark, precision: str, rounds: int, warmup: int, tokens: int | None) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
    if getattr(bench, "disabled", False):
        import pytest

        pytest.skip(
            "pytest-benchmark is disabled here (it turns itself off under xdist and "
            "with --benchmark-disable); run without -n to record timings"
        )
    if rounds < 1 or warmup < 0 or (tokens is not None and tokens < 1):
        raise ValueError(
            f"need rounds >= 1, warmup_rounds >= 0 and new_tokens >= 1; got {rounds}, "
            f"{warmup} and {tokens}"
        )


class LlmqBenchmark:
    """What the ``llmq_benchmark`` fixture gives: ``run("fp32")`` or ``run("int8")``."""

    def __init__(self, benchmark: Benchmark, pair: ModelPair, record: Medians, new_tokens: int):
        self.benchmark = benchmark
        self.pair = pair
        self.record = record
        self.new_tokens = new_tokens

    def run(
        self,
        precision: str,
        *,
        rounds: int = ROUNDS,
        warmup_rounds: int = WARMUP_ROUNDS,
        new_tokens: int | None = None,
    ) -> object:
        """Time ``rounds`` generations of ``new_tokens`` (default ``--llmq-new-tokens``)
        tokens after ``warmup_rounds`` untimed ones; what was timed goes into ``extra_info``
        so that a comparison between runs with other settings is visibly apples to pears."""
        from ..evaltext import EVAL_PROMPTS
        from ..models.causal_lm import encode_prompt

        bench, pair = self.benchmark, self.pair
        _check(bench, precision, rounds, warmup_rounds, new_tokens)
        tokens = self.new_tokens if new_tokens is None else new_tokens
        side = _side(pair, precision)
        prompt = encode_prompt(
            pair.tokenizer, EVAL_PROMPTS[0], context=side.context_length(), new_tokens=tokens
        )
        bench.group = pair.label
        with side.measuring(pair.threads):
            result = bench.pedantic(
                generation_target(side, prompt, tokens),
                rounds=rounds,
                warmup_rounds=warmup_rounds,
                iterations=1,
            )
        bench.extra_info.update(self._info(precision, tokens, rounds, warmup_rounds))
        return result

    def _info(self, precision: str, tokens: int, rounds: int, warmup: int) -> dict[str, JSONValue]:
        from ..versions import library_versions

        pair = self.pair
        info: dict[str, JSONValue] = {
            "model": pair.label,
            "scheme": pair.scheme if precision == "int8" else "fp32",
            "precision": precision,
            "device": pair.device,
            "threads": pair.threads,
            "new_tokens": tokens,
            "rounds": rounds,
            "warmup_rounds": warmup,
            "coverage": str(pair.coverage),
            **library_versions(),
        }
        median = _median_s(self.benchmark)
        if median:
            info["ms_per_token"] = 1000 * median / tokens
            info["tokens_per_s"] = tokens / median
            medians = self.record.benchmark_medians
            medians[_median_key(pair, precision, tokens)] = median
            other = "fp32" if precision == "int8" else "int8"
            if other_s := medians.get(_median_key(pair, other, tokens)):
                reference_s, int8_s = (
                    (median, other_s) if precision == "fp32" else (other_s, median)
                )
                info["speedup"] = reference_s / int8_s
        return info
