"""Assertion helpers: the gates without markers, for tests that hold their own models.

Each one measures, decides with the same rules as the markers, raises
``AssertionError`` with the same readable report on failure, and returns the
measurement so a test can check more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import LlmqUsageError
from .marks import validate
from .settings import DEFAULTS
from .verdicts import GateResult, memory_verdict, similarity_verdict, speedup_verdict

if TYPE_CHECKING:
    from .memory import MemoryResult
    from .run.pair import ModelLike
    from .similarity.metrics import SimilarityResult
    from .speed.timing import SpeedupResult
    from .types import Tokenizer


def _raise_if_failed(result: GateResult) -> None:
    if not result.passed:
        raise AssertionError(result.long_repr)


def _check(name: str, kwargs: dict[str, float | str]) -> None:
    try:
        validate(name, (), kwargs, "assertion")
    except LlmqUsageError as exc:
        raise ValueError(str(exc)) from None


def assert_similar(
    reference: ModelLike,
    int8: ModelLike,
    tokenizer: Tokenizer,
    *,
    max_kl: float = DEFAULTS.max_kl,
    min_same_top: float = DEFAULTS.min_same_top,
    max_ppl_ratio: float = DEFAULTS.max_ppl_ratio,
    text: str | None = None,
    n_tokens: int = DEFAULTS.eval_tokens,
    name: str = "INT8 model",
) -> SimilarityResult:
    """Fail unless INT8 next-token distributions match the reference's within the bounds."""
    from .similarity import measure_similarity

    _check(
        "quant_similarity",
        {"max_kl": max_kl, "min_same_top": min_same_top, "max_ppl_ratio": max_ppl_ratio},
    )
    result = measure_similarity(reference, int8, tokenizer, text=text, n_tokens=n_tokens)
    _raise_if_failed(
        similarity_verdict(
            result, name, max_kl=max_kl, min_same_top=min_same_top, max_ppl_ratio=max_ppl_ratio
        )
    )
    return result


def assert_speedup(
    reference: ModelLike,
    int8: ModelLike,
    tokenizer: Tokenizer,
    min_speedup: float = DEFAULTS.min_speedup,
    *,
    new_tokens: int = DEFAULTS.new_tokens,
    threads: int | None = None,
    time_budget: float = DEFAULTS.time_budget,
    name: str = "INT8 model",
) -> SpeedupResult:
    """Fail unless INT8 generation is at least ``min_speedup`` times faster (interleaved, with a CI)."""
    from .speed.timing import measure_speedup

    _check("quant_speedup", {"min_speedup": min_speedup})
    result = measure_speedup(
        reference,
        int8,
        tokenizer,
        threshold=min_speedup,
        new_tokens=new_tokens,
        threads=threads,
        time_budget=time_budget,
    )
    _raise_if_failed(speedup_verdict(result, name, min_speedup=min_speedup))
    return result


def assert_memory_reduction(
    reference: ModelLike,
    int8: ModelLike,
    min_ratio: float = DEFAULTS.min_memory_ratio,
    *,
    kind: str = "weights",
    name: str = "INT8 model",
) -> MemoryResult:
    """Fail unless the INT8 model is at least ``min_ratio`` times smaller (``kind``: weights/file)."""
    from .memory import measure_memory

    _check("quant_memory", {"min_ratio": min_ratio, "kind": kind})
    result = measure_memory(reference, int8, kind)
    _raise_if_failed(memory_verdict(result, name, min_ratio=min_ratio))
    return result
