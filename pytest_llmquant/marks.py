"""One plain function per marker (the pytest-memray layout).

Each function takes the marker's own arguments plus ``pair`` and ``session`` (whose
frozen settings give the CLI/env/ini defaults), measures, and returns a
:class:`GateResult`. The plugin calls it in the call phase, after the test body passed,
and turns a failed result into a test failure.
``validate`` checks marker arguments at collection, before any model is loaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .errors import LlmqUsageError
from .settings import threshold
from .verdicts import GateResult, memory_verdict, similarity_verdict, speedup_verdict

if TYPE_CHECKING:
    from .session import LlmqSession, ModelPair

MEMORY_KINDS = ("weights", "file", "peak_rss", "vram")


def quant_similarity(
    max_kl: float | None = None,
    min_same_top: float | None = None,
    max_ppl_ratio: float | None = None,
    *,
    pair: ModelPair,
    session: LlmqSession,
) -> GateResult:
    """INT8 next-token distributions stay close to the reference: mean KL divergence, top-1
    agreement and perplexity ratio over the evaluation text (llama.cpp's KLD statistics)."""
    s = session.settings
    return similarity_verdict(
        session.memo.similarity(pair),
        pair.name,
        max_kl=s.max_kl if max_kl is None else max_kl,
        min_same_top=s.min_same_top if min_same_top is None else min_same_top,
        max_ppl_ratio=s.max_ppl_ratio if max_ppl_ratio is None else max_ppl_ratio,
    )


def quant_speedup(
    min_speedup: float | None = None, *, pair: ModelPair, session: LlmqSession
) -> GateResult:
    """INT8 generation is at least min_speedup times faster than the reference, decided on
    interleaved runs with a confidence interval (see the decision rule in docs/gates.md)."""
    threshold = session.settings.min_speedup if min_speedup is None else min_speedup
    return speedup_verdict(
        session.memo.speedup(pair, threshold),
        pair.name,
        min_speedup=threshold,
        reference=pair.reference_label,
        inconclusive=session.settings.speed_inconclusive,
    )


def quant_memory(
    min_ratio: float | None = None, kind: str = "weights", *, pair: ModelPair, session: LlmqSession
) -> GateResult:
    """INT8 memory is at least min_ratio times smaller than the reference; kind is weights
    (parameters and buffers), file (serialized size), peak_rss (load + generate in a fresh
    process) or vram (the same on a CUDA device: GPU memory; skips elsewhere)."""
    threshold = session.settings.min_memory_ratio if min_ratio is None else min_ratio
    bits = pair.origin.bits if pair.origin is not None else 8
    return memory_verdict(
        session.memo.memory(pair, kind), pair.name, min_ratio=threshold, bits=bits
    )


MARKERS: dict[str, Callable[..., GateResult]] = {
    "quant_similarity": quant_similarity,
    "quant_speedup": quant_speedup,
    "quant_memory": quant_memory,
}


def marker_line(name: str) -> str:
    """The ``markers`` ini line: signature and the first sentence of the docstring."""
    fn = MARKERS[name]
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind != p.KEYWORD_ONLY]
    sig = ", ".join(f"{p.name}={p.default!r}" for p in params)
    doc = " ".join((fn.__doc__ or "").split())
    return f"{name}({sig}): {doc}"


def validate(
    name: str, args: tuple[object, ...], kwargs: Mapping[str, object], where: str
) -> dict[str, object]:
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
        elif value is not None:
            values[key] = threshold(key, value, f"{where}: @pytest.mark.{name}", example)
    return values
