"""One plain function per marker (the pytest-memray layout).

Each function takes the marker's own arguments plus ``pair`` and ``settings`` (the
resolved CLI/ini defaults), measures, and returns a :class:`GateResult`. The plugin
calls it after the test body passed, and turns a failed result into a test failure.
``validate`` checks marker arguments at collection, before any model is loaded.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import LlmqUsageError
from .verdicts import GateResult, memory_verdict, similarity_verdict, speedup_verdict

if TYPE_CHECKING:
    from .session import LlmqSession, ModelPair

MEMORY_KINDS = ("weights", "file", "peak_rss")


def quant_similarity(
    max_kl: float | None = None,
    min_same_top: float | None = None,
    max_ppl_ratio: float | None = None,
    *,
    pair: ModelPair,
    session: LlmqSession,
) -> GateResult:
    """INT8 next-token distributions stay close to FP32: mean KL divergence, top-1
    agreement and perplexity ratio over the evaluation text (llama.cpp's KLD statistics)."""
    from . import options

    cfg = session.config
    result = session.similarity(pair)
    return similarity_verdict(
        result,
        pair.name,
        max_kl=max_kl if max_kl is not None else options.get(cfg, "llmq_max_kl"),
        min_same_top=min_same_top
        if min_same_top is not None
        else options.get(cfg, "llmq_min_same_top"),
        max_ppl_ratio=max_ppl_ratio
        if max_ppl_ratio is not None
        else options.get(cfg, "llmq_max_ppl_ratio"),
    )


def quant_speedup(
    min_speedup: float | None = None, *, pair: ModelPair, session: LlmqSession
) -> GateResult:
    """INT8 generation is at least min_speedup times faster than FP32, decided on interleaved
    runs with a confidence interval (see the README's decision rule)."""
    from . import options

    threshold = (
        min_speedup if min_speedup is not None else options.get(session.config, "llmq_min_speedup")
    )
    result = session.speedup(pair, threshold)
    return speedup_verdict(result, pair.name, min_speedup=threshold)


def quant_memory(
    min_ratio: float | None = None, kind: str = "weights", *, pair: ModelPair, session: LlmqSession
) -> GateResult:
    """INT8 memory is at least min_ratio times smaller than FP32; kind is weights (parameters
    and buffers), file (serialized size) or peak_rss (load + generate in a fresh process)."""
    from . import options

    threshold = (
        min_ratio if min_ratio is not None else options.get(session.config, "llmq_min_memory_ratio")
    )
    result = session.memory(pair, kind)
    return memory_verdict(result, pair.name, min_ratio=threshold)


MARKERS: dict[str, Callable[..., GateResult]] = {
    "quant_similarity": quant_similarity,
    "quant_speedup": quant_speedup,
    "quant_memory": quant_memory,
}

_UPPER_BOUNDED = {"min_same_top": 1.0}


def marker_line(name: str) -> str:
    """The ``markers`` ini line: signature and the first sentence of the docstring."""
    fn = MARKERS[name]
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind != p.KEYWORD_ONLY]
    sig = ", ".join(f"{p.name}={p.default!r}" for p in params)
    doc = " ".join((fn.__doc__ or "").split())
    return f"{name}({sig}): {doc}"


def validate(
    name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """Bind and check marker arguments; return them by name. Raises a one-line usage error."""
    fn = MARKERS[name]
    public = [p for p in inspect.signature(fn).parameters.values() if p.kind != p.KEYWORD_ONLY]
    example = {
        "quant_similarity": "@pytest.mark.quant_similarity(max_kl=0.01)",
        "quant_speedup": "@pytest.mark.quant_speedup(1.2)",
        "quant_memory": "@pytest.mark.quant_memory(2.0, kind='weights')",
    }[name]
    sig = inspect.Signature(public)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        valid = ", ".join(p.name for p in public)
        raise LlmqUsageError(
            f"{where}: bad arguments to @pytest.mark.{name} ({exc}); valid arguments: {valid}, "
            f"e.g. {example}"
        ) from None
    values = dict(bound.arguments)
    for key, value in values.items():
        if key == "kind":
            if value not in MEMORY_KINDS:
                raise LlmqUsageError(
                    f"{where}: @pytest.mark.{name}(kind={value!r}) is not a memory kind; use one "
                    f"of {', '.join(MEMORY_KINDS)}"
                )
            continue
        if value is None:
            continue
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        )
        if ok and key in _UPPER_BOUNDED and value > _UPPER_BOUNDED[key]:
            ok = False
        if not ok:
            bound_text = f"in (0, {_UPPER_BOUNDED[key]}]" if key in _UPPER_BOUNDED else "> 0"
            raise LlmqUsageError(
                f"{where}: @pytest.mark.{name} {key}={value!r} must be a finite number "
                f"{bound_text}, e.g. {example}"
            )
    return values
