"""Assertion helpers: the gates without markers, for tests that hold their own models.

Each one measures, decides with the same rules as the markers, raises
``AssertionError`` with the same readable report on failure, and returns the
measurement so a test can check more.
"""

from __future__ import annotations

from typing import Any

from .errors import LlmqUsageError
from .marks import validate
from .verdicts import GateResult, memory_verdict, similarity_verdict, speedup_verdict


def _raise_if_failed(result: GateResult) -> None:
    if not result.passed:
        raise AssertionError(result.long_repr)


def _check(name: str, kwargs: dict[str, Any]) -> None:
    try:
        validate(name, (), kwargs, "assertion")
    except LlmqUsageError as exc:
        raise ValueError(str(exc)) from None


def assert_similar(
    fp32_model: Any,
    int8_model: Any,
    tokenizer: Any,
    *,
    max_kl: float = 0.01,
    min_same_top: float = 0.95,
    max_ppl_ratio: float = 1.02,
    text: str | None = None,
    n_tokens: int = 2048,
    name: str = "INT8 model",
) -> Any:
    """Fail unless INT8 next-token distributions match FP32 within the bounds."""
    from .similarity import measure_similarity

    _check(
        "quant_similarity",
        {"max_kl": max_kl, "min_same_top": min_same_top, "max_ppl_ratio": max_ppl_ratio},
    )
    result = measure_similarity(fp32_model, int8_model, tokenizer, text=text, n_tokens=n_tokens)
    _raise_if_failed(
        similarity_verdict(
            result, name, max_kl=max_kl, min_same_top=min_same_top, max_ppl_ratio=max_ppl_ratio
        )
    )
    return result


def assert_speedup(
    fp32_model: Any,
    int8_model: Any,
    tokenizer: Any,
    min_speedup: float = 1.0,
    *,
    new_tokens: int = 32,
    threads: int | None = None,
    time_budget: float = 5.0,
    name: str = "INT8 model",
) -> Any:
    """Fail unless INT8 generation is at least ``min_speedup`` times faster (interleaved, with a CI)."""
    from .speed.timing import measure_speedup

    _check("quant_speedup", {"min_speedup": min_speedup})
    result = measure_speedup(
        fp32_model,
        int8_model,
        tokenizer,
        threshold=min_speedup,
        new_tokens=new_tokens,
        threads=threads,
        time_budget=time_budget,
    )
    _raise_if_failed(speedup_verdict(result, name, min_speedup=min_speedup))
    return result


def assert_memory_reduction(
    fp32_model: Any,
    int8_model: Any,
    min_ratio: float = 2.0,
    *,
    kind: str = "weights",
    name: str = "INT8 model",
) -> Any:
    """Fail unless the INT8 model is at least ``min_ratio`` times smaller (``kind``: weights/file)."""
    from .memory import measure_memory

    _check("quant_memory", {"min_ratio": min_ratio, "kind": kind})
    result = measure_memory(fp32_model, int8_model, kind)
    _raise_if_failed(memory_verdict(result, name, min_ratio=min_ratio))
    return result
