"""Turn measurements into pass/fail verdicts with messages a person can act on.

Pure functions over result objects: the markers, the assertion helpers, the suite
and the baseline comparison all use these, so a threshold means the same thing
everywhere, and the tests can check every message without running a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import LlmqSkip

if TYPE_CHECKING:
    from .memory import MemoryResult
    from .similarity.metrics import SimilarityResult
    from .speed.timing import SpeedupResult


@dataclass
class Row:
    """One line of the summary table."""

    metric: str
    reference: str  # the reference's column (rows of reports before 0.2 call it "fp32")
    int8: str
    ratio: str
    threshold: str
    ok: bool | None  # None: reported for information, not gated

    @property
    def verdict(self) -> str:
        return "info" if self.ok is None else ("ok" if self.ok else "FAIL")


@dataclass
class GateResult:
    gate: str  # quant_similarity / quant_speedup / quant_memory
    pair: str  # "smollm2-135m [dynamic-int8]"
    passed: bool
    message: str  # one line
    rows: list[Row] = field(default_factory=list)
    measurement: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    close: bool = False
    test: str = ""
    seconds: float = 0.0  # wall time of the measurement behind this verdict, in this test
    reference: str = "FP32"  # the precision the INT8 model was compared with (a column name)

    @property
    def long_repr(self) -> str:
        return self.message + "\n" + format_table(self.rows, self.reference)

    def as_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "pair": self.pair,
            "test": self.test,
            "passed": self.passed,
            "close": self.close,
            "seconds": round(self.seconds, 3),
            "reference": self.reference,
            "message": self.message,
            "thresholds": self.thresholds,
            "measurement": self.measurement,
            "rows": [{**vars(r), "verdict": r.verdict} for r in self.rows],
        }


def result_from_dict(data: dict[str, Any]) -> GateResult:
    """Rebuild a result sent from an xdist worker (see the plugin's logreport hook)."""
    rows = [
        Row(
            r["metric"],
            r.get("reference", r.get("fp32", "")),
            r["int8"],
            r["ratio"],
            r["threshold"],
            r["ok"],
        )
        for r in data.get("rows", [])
    ]
    return GateResult(
        data["gate"],
        data["pair"],
        data["passed"],
        data["message"],
        rows,
        data.get("measurement", {}),
        data.get("thresholds", {}),
        data.get("close", False),
        data.get("test", ""),
        data.get("seconds", 0.0),
        data.get("reference", "FP32"),
    )


def format_table(rows: list[Row], reference: str = "FP32") -> str:
    header = ("metric", reference, "INT8", "ratio", "threshold", "verdict")
    body = [(r.metric, r.reference, r.int8, r.ratio, r.threshold, r.verdict) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
        for line in (header, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _g(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def _vs(value: float, bound: float, decimals: int = 2) -> str:
    """``value`` with enough decimals that it does not print the same as ``bound``: a
    failure that reads "ratio 1.00 > 1" helps nobody, "ratio 1.00003 > 1" does."""
    for d in range(decimals, 9):
        text = f"{value:.{d}f}"
        if value == bound or float(text) != float(f"{bound:.{d}f}"):
            return text
    return f"{value:.9g}"


def _vs_g(value: float, bound: float, digits: int = 2) -> str:
    """:func:`_vs` in significant digits, for values far below 1: "mean KLD 0.011 > 0.0112"
    reads as false, "mean KLD 0.0113 > 0.0112" does not."""
    if not math.isfinite(value):
        return _g(value, digits)
    for d in range(digits, 9):
        text = f"{value:.{d}g}"
        if value == bound or float(text) != float(f"{bound:.{d}g}"):
            return text
    return f"{value:.9g}"


# -- similarity -------------------------------------------------------------------


def _similarity_rows(
    r: SimilarityResult,
    max_kl: float,
    min_same_top: float,
    max_ppl_ratio: float,
    oks: tuple[bool, bool, bool],
) -> list[Row]:
    """The summary table of a similarity measurement: the three bounds, then information."""
    kl_ok, top_ok, ppl_ok = oks
    greedy = getattr(r, "greedy_match", None)
    rows = [
        Row("mean KLD", "", f"{_g(r.mean_kld)} ± {_g(r.kld_se, 2)}", "", f"≤ {_g(max_kl)}", kl_ok),
        Row("p99 / max KLD", "", f"{_g(r.p99_kld)} / {_g(r.max_kld)}", "", "", None),
        Row(
            "same-top-1",
            "",
            f"{r.same_top:.3f} ± {r.same_top_se:.3f}",
            "",
            f"≥ {_g(min_same_top)}",
            top_ok,
        ),
        Row(
            "perplexity",
            f"{r.ppl_fp32:.3f}",
            f"{r.ppl_int8:.3f}",
            _vs(r.ppl_ratio, max_ppl_ratio, 3),
            f"≤ {_g(max_ppl_ratio)}",
            ppl_ok,
        ),
        Row("RMS Δp", "", f"{100 * r.rms_dp:.2f}%", "", "", None),
    ]
    if greedy is not None:
        rows.append(Row("greedy token match", "", f"{greedy:.3f}", "", "", None))
    return rows


def similarity_verdict(
    result: SimilarityResult,
    pair: str,
    *,
    max_kl: float,
    min_same_top: float,
    max_ppl_ratio: float,
) -> GateResult:
    r = result
    kl_ok = r.mean_kld <= max_kl
    top_ok = r.same_top >= min_same_top
    ppl_ok = r.ppl_ratio <= max_ppl_ratio
    parts = {
        "kl": f"mean KLD {_vs_g(r.mean_kld, max_kl)} ± {_g(r.kld_se, 1)} {'≤' if kl_ok else '>'} {_g(max_kl)}",
        "top": f"same-top {_vs(r.same_top, min_same_top, 3)} ± {r.same_top_se:.3f} {'≥' if top_ok else '<'} {_g(min_same_top)}",
        "ppl": f"PPL {r.ppl_fp32:.2f} → {r.ppl_int8:.2f} (ratio {_vs(r.ppl_ratio, max_ppl_ratio)} "
        f"{'≤' if ppl_ok else '>'} {_g(max_ppl_ratio)})",
    }
    oks = {"kl": kl_ok, "top": top_ok, "ppl": ppl_ok}
    passed = all(oks.values())
    shown = [parts[k] for k in parts if not oks[k]] if not passed else list(parts.values())
    message = (
        f"quant_similarity {'passed' if passed else 'failed'} for {pair}: "
        + "; ".join(shown)
        + f" (over {r.n_tokens} tokens)"
    )
    rows = _similarity_rows(r, max_kl, min_same_top, max_ppl_ratio, (kl_ok, top_ok, ppl_ok))
    # what the numbers were measured on (text hash, window, reference dtype, device),
    # flat in the measurement, so a baseline can refuse other settings
    measurement = _as_dict(r)
    measurement.pop("measured_on", None)
    measurement.update(getattr(r, "measured_on", None) or {})
    return GateResult(
        "quant_similarity",
        pair,
        passed,
        message,
        rows,
        measurement,
        {"max_kl": max_kl, "min_same_top": min_same_top, "max_ppl_ratio": max_ppl_ratio},
    )


# -- speedup ------------------------------------------------------------------------


def _speedup_message(
    r: SpeedupResult, pair: str, min_speedup: float, reference: str, inconclusive: str
) -> tuple[str, bool]:
    """The one-line message and whether the test passes."""
    passed = r.verdict == "pass"
    # the number that decided (the point estimate of a close call, else the interval's end
    # nearer the threshold), with enough decimals not to print as the threshold does
    point, low, high = f"{r.speedup:.2f}", f"{r.ci_low:.2f}", f"{r.ci_high:.2f}"
    if r.close:
        point = _vs(r.speedup, min_speedup)
    elif passed:
        low = _vs(r.ci_low, min_speedup)
    else:
        high = _vs(r.ci_high, min_speedup)
    ci = f"{int(round(100 * r.confidence))}% CI {low}–{high}"
    from .sides.base import in_runtime

    subject = "INT8"
    if (r.reference_runtime, r.int8_runtime) != ("torch", "torch"):  # name both runtimes
        subject, reference = (
            in_runtime(r.int8_label, r.int8_runtime),
            in_runtime(reference, r.reference_runtime),
        )
    measured = (
        f"{subject} {point}x faster than {reference} ({ci}, {r.n_pairs} interleaved pairs, "
        f"{r.threads} threads)"
    )
    outcome, cmp = ("passed", "≥") if passed else ("failed", "<")
    message = f"quant_speedup {outcome} for {pair}: {measured} {cmp} {_g(min_speedup)}x"
    if r.verdict == "inconclusive":
        message = (
            f"quant_speedup inconclusive for {pair}: the CPU was busy ({r.contention.describe()})"
            f", so the pairs may be biased; {measured} vs {_g(min_speedup)}x; rerun on a quiet "
            "machine or with fewer --llmq-threads, or pass --llmq-speed-inconclusive=skip|pass"
        )
        if inconclusive == "skip":
            raise LlmqSkip(message.removeprefix("quant_speedup "))
        passed = inconclusive == "pass"
        if passed:
            message += " (counted as passed: --llmq-speed-inconclusive=pass)"
    elif r.close:
        message += (
            "; close call: the interval still contains the threshold, decided on the point estimate"
        )
    elif r.contention.busy:
        message += (
            f"; decided on a busy CPU ({r.contention.describe()}): the interval clears the "
            "threshold by more than contention can bias it"
        )
    if r.threads_note:
        message += f"; {r.threads_note}"
    return message, passed


def speedup_verdict(
    result: SpeedupResult,
    pair: str,
    *,
    min_speedup: float,
    reference: str = "FP32",
    inconclusive: str = "fail",
) -> GateResult:
    """The gate's verdict. An inconclusive measurement (the CPU too busy to judge) counts
    as ``inconclusive`` says (``--llmq-speed-inconclusive``): a failure, a skip (raised as
    :class:`~pytest_llmquant.errors.LlmqSkip`) or a pass, always with its own message."""
    r = result
    message, passed = _speedup_message(r, pair, min_speedup, reference, inconclusive)
    judged = r.verdict != "inconclusive"
    rows = [
        Row(
            "ms/token",
            f"{r.reference_ms_per_token:.2f}",
            f"{r.int8_ms_per_token:.2f}",
            f"{r.speedup:.2f}x",
            f"≥ {_g(min_speedup)}x",
            passed if judged else None,
        ),
        Row(
            "tokens/s",
            f"{r.reference_tokens_per_s:.1f}",
            f"{r.int8_tokens_per_s:.1f}",
            "",
            "",
            None,
        ),
        Row("speedup CI", "", "", f"{r.ci_low:.2f}–{r.ci_high:.2f}", f"{r.confidence:.0%}", None),
        Row("CPU contention", "", "", r.contention.short(), "", None),
    ]
    return GateResult(
        "quant_speedup",
        pair,
        passed,
        message,
        rows,
        _as_dict(r),
        {"min_speedup": min_speedup},
        close=bool(r.close) or not judged,
    )


# -- memory ---------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def memory_verdict(
    result: MemoryResult, pair: str, *, min_ratio: float, bits: int | None = 8
) -> GateResult:
    r = result
    passed = r.ratio >= min_ratio
    message = (
        f"quant_memory {'passed' if passed else 'failed'} for {pair}: {r.kind} "
        f"{_mb(r.fp32_bytes)} → {_mb(r.int8_bytes)} (ratio {_vs(r.ratio, min_ratio)}x "
        f"{'≥' if passed else '<'} {_g(min_ratio)}x)"
    )
    if bits != 8:  # a 4-bit model is gated all the same, and the message says what it holds
        message += "; its weights are " + ("of unknown width" if bits is None else f"{bits}-bit")
    kept = getattr(r, "kept_float", None)
    if kept:
        shown = list(kept.items())[:3]
        message += "; still float: " + ", ".join(
            f"{k.removeprefix('float: ')} {_mb(v)}" for k, v in shown
        )
    rows = [
        Row(
            f"memory ({r.kind})",
            _mb(r.fp32_bytes),
            _mb(r.int8_bytes),
            f"{r.ratio:.2f}x",
            f"≥ {_g(min_ratio)}x",
            passed,
        )
    ]
    return GateResult(
        "quant_memory",
        pair,
        passed,
        message,
        rows,
        _as_dict(r),
        {"min_ratio": min_ratio, "kind": r.kind},
    )


def _as_dict(result: object) -> dict[str, Any]:
    if hasattr(result, "as_dict"):
        return dict(result.as_dict())
    return {k: v for k, v in vars(result).items() if not k.startswith("_")}
