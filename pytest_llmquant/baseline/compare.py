"""Which changes against a saved baseline are regressions.

A run regresses when a metric got worse than the saved one by more than a tolerance,
even when it still passes the absolute gate thresholds: a quantizer change that doubles
the KL divergence is a regression worth seeing long before it crosses ``max_kl``.
Default tolerances, and why:

============  ===================================================  =================
metric        regression when                                      why
============  ===================================================  =================
mean_kld      new > old * (1 + 0.25) + 0.001                       KLD is small and
                                                                   noisy in relative
                                                                   terms: both slacks
same_top      new < old - 0.01                                     a fraction: absolute
ppl_ratio     new > old + 0.01                                     near 1: absolute
memory_ratio  new < old * (1 - 0.05)                               bytes: relative
speedup       new CI *high end* < old speedup * (1 - 0.10)         timing noise: only
                                                                   when even the most
                                                                   favourable end of
                                                                   the new interval
                                                                   is clearly slower
============  ===================================================  =================

Lower-is-better metrics (``mean_kld``, ``ppl_ratio``) regress when
``new > old * (1 + rel) + abs``; higher-is-better ones (``same_top``,
``memory_ratio`` and every ``memory_ratio_<kind>``, ``speedup``) when
``new < old * (1 - rel) - abs``; a missing ``rel`` or ``abs`` is 0. Override any of
them with ``tolerances={"mean_kld": {"rel": 0.5, "abs": 0.002}, ...}`` (keys not
given keep their default). A pair or metric the baseline lacks is never a
regression: it is reported as a note.

**Noise.** The similarity metrics are means over the tokens of one text and carry a
standard error. A change of ``mean_kld``, ``same_top`` or ``ppl_ratio`` is a regression
only when it exceeds its tolerance *and* ``z`` times the combined standard error of the
two measurements, ``sqrt(se_old² + se_new²)`` (``z`` = 3 by default,
``--llmq-baseline-z``); a change beyond the tolerance but within the noise is a note. A
missing standard error (a hand-written or older baseline) counts as 0. The two
measurements must have been taken on the same text and setting (:mod:`.comparable`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import LlmqUsageError
from ..jsonfiles import finite_number
from ..settings import Settings
from ..types import JSONValue
from .comparable import check_comparable
from .store import BaselineDict, BaselinePair, baseline_dict, find_pair, measured_on

if TYPE_CHECKING:
    from ..run.record import RunRecord

#: the z of the noise rule when none is given: ``--llmq-baseline-z``'s default
DEFAULT_Z: float = Settings.baseline_z

#: per metric: relative and absolute slack, see the module docstring
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "mean_kld": {"rel": 0.25, "abs": 0.001},
    "same_top": {"rel": 0.0, "abs": 0.01},
    "ppl_ratio": {"rel": 0.0, "abs": 0.01},
    "memory_ratio": {"rel": 0.05, "abs": 0.0},
    "speedup": {"rel": 0.10, "abs": 0.0},
}

#: baseline metric -> (tolerance key, lower is better, name in messages, format)
_METRICS: dict[str, tuple[str, bool, str, str]] = {
    "mean_kld": ("mean_kld", True, "mean KLD", "{:.3g}"),
    "same_top": ("same_top", False, "same-top-1", "{:.3f}"),
    "ppl_ratio": ("ppl_ratio", True, "PPL ratio", "{:.4f}"),
    "speedup": ("speedup", False, "speedup", "{:.2f}x"),
    "memory_ratio": ("memory_ratio", False, "memory ratio (weights)", "{:.2f}x"),
}
#: stored with the speedup, never compared
_INFO_KEYS = ("speedup_ci_low", "speedup_ci_high", "speedup_cpu_stalled", "speedup_cpu_others")


def _metric_spec(name: str) -> tuple[str, bool, str, str] | None:
    if name in _METRICS:
        return _METRICS[name]
    if name.startswith("memory_ratio_"):  # memory_ratio_file, memory_ratio_peak_rss
        kind = name.removeprefix("memory_ratio_")
        return ("memory_ratio", False, f"memory ratio ({kind})", "{:.2f}x")
    return None


def resolve_tolerances(
    tolerances: Mapping[str, Mapping[str, float]] | None,
) -> dict[str, dict[str, float]]:
    """The defaults updated key by key with ``tolerances``; unknown names are usage errors."""
    out = {k: dict(v) for k, v in DEFAULT_TOLERANCES.items()}
    for metric, given in (tolerances or {}).items():
        if metric not in out:
            raise LlmqUsageError(
                f"unknown baseline tolerance metric {metric!r}; use one of {', '.join(out)}"
            )
        for key, value in given.items():
            if key not in ("rel", "abs") or finite_number(value) is None or float(value) < 0:
                raise LlmqUsageError(
                    f"baseline tolerance {metric}.{key}={value!r}: use 'rel' and 'abs', "
                    "each a non-negative number"
                )
            out[metric][key] = float(value)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _describe(tol: Mapping[str, float], lower_better: bool) -> str:
    """``+25% relative + 0.001 absolute`` (or ``-5% relative`` for higher-is-better)."""
    sign = "+" if lower_better else "-"
    terms = []
    if tol.get("rel"):
        terms.append(f"{_pct(tol['rel'])} relative")
    if tol.get("abs"):
        terms.append(f"{tol['abs']:g} absolute")
    if not terms:
        return "none"
    return sign + terms[0] + "".join(f" {sign} {t}" for t in terms[1:])


def _noise(
    before: Mapping[str, JSONValue], after: Mapping[str, JSONValue], name: str
) -> float | None:
    """The combined standard error of metric ``name`` in two measurements, or None when
    neither recorded one (a missing one counts as 0)."""
    ses = [finite_number(m.get(f"{name}_se")) for m in (before, after)]
    if all(se is None for se in ses):
        return None
    return math.sqrt(sum((se or 0.0) ** 2 for se in ses))


def _g(x: float) -> str:
    return f"{x:.3g}"


def _judge_beyond_tolerance(
    what: str,
    fmt: str,
    was: float,
    now: float,
    limit: float,
    tol: Mapping[str, float],
    lower_better: bool,
    se: float | None,
    z: float,
) -> tuple[bool, str]:
    """(regressed, line) for a metric already worse than its tolerance allows: a
    regression unless the change is within ``z`` combined standard errors (then a note).
    A metric without standard errors (memory, an older baseline) is judged on its
    tolerance alone."""
    change = f"{fmt.format(was)} → {fmt.format(now)}"
    tolerance = f"tolerance {_describe(tol, lower_better)}, limit {fmt.format(limit)}"
    if se is None:
        return True, f"{what} regressed {change} ({tolerance})"
    delta, noise = abs(now - was), z * se
    noisy = delta > noise
    zse = f"{_g(delta)} {'>' if noisy else '≤'} {z:g} × SE {_g(se)} = {_g(noise)}"
    if noisy:
        return True, f"{what} regressed {change} ({tolerance}; change {zse})"
    return False, (
        f"{what} {change} is beyond the {tolerance}, but within the noise "
        f"(change {zse}): not a regression"
    )


def _judge_speedup(
    pair: str,
    metrics: Mapping[str, JSONValue],
    was: float,
    now: float,
    limit: float,
    tol: Mapping[str, float],
    confidence: Mapping[str, float] | None,
    regressions: list[str],
    notes: list[str],
) -> None:
    """The speedup regresses only when the *high* end of its new interval is below the
    limit: a lower point estimate inside a wide interval is timing noise."""
    fmt = _METRICS["speedup"][3]
    high = finite_number(metrics.get("speedup_ci_high"))
    level = (confidence or {}).get(pair)
    ci = f"{round(100 * level)}% CI" if level else "CI"
    if high is None:
        if now < limit:
            notes.append(
                f"{pair}: speedup {fmt.format(was)} → {fmt.format(now)} has no "
                "upper confidence bound (too few timed pairs), not compared"
            )
        return
    if high < limit:
        low = finite_number(metrics.get("speedup_ci_low"))
        shown = f"{low:.2f}–{high:.2f}" if low is not None else f"≤ {high:.2f}"
        regressions.append(
            f"{pair}: speedup regressed {fmt.format(was)} → {fmt.format(now)} "
            f"({ci} {shown}, high end below the limit {fmt.format(limit)}; "
            f"tolerance {_describe(tol, False)})"
        )


def _limit(was: float, tol: Mapping[str, float], lower_better: bool) -> float:
    """The worst value of a metric that is not yet a regression against ``was``."""
    if lower_better:
        return was * (1 + tol["rel"]) + tol["abs"]
    return was * (1 - tol["rel"]) - tol["abs"]


@dataclass
class _Findings:
    """What a comparison found, one line each, and how to judge it."""

    tolerances: dict[str, dict[str, float]]
    confidence: Mapping[str, float]
    z: float
    regressions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _compare_metric(
    pair: str, name: str, metrics: BaselinePair, before: BaselinePair, found: _Findings
) -> None:
    """Judge one metric of this run's pair against the baseline's value, if both have it."""
    spec = _metric_spec(name)
    if spec is None or name in _INFO_KEYS:
        return
    tol_key, lower_better, label, fmt = spec
    was, now = finite_number(before.get(name)), finite_number(metrics[name])
    if was is None:
        found.notes.append(f"{pair}: {label} not in the baseline, not compared")
        return
    if now is None:
        return
    t = found.tolerances[tol_key]
    limit = _limit(was, t, lower_better)
    if name == "speedup":
        _judge_speedup(
            pair, metrics, was, now, limit, t, found.confidence, found.regressions, found.notes
        )
        return
    if (now > limit) if lower_better else (now < limit):
        regressed, line = _judge_beyond_tolerance(
            f"{pair}: {label}", fmt, was, now, limit, t, lower_better,
            _noise(before, metrics, name), found.z,
        )  # fmt: skip
        (found.regressions if regressed else found.notes).append(line)


def _compare_pair(pair: str, metrics: BaselinePair, before: BaselinePair, found: _Findings) -> None:
    """Every metric of one pair, then those the baseline has and this run did not measure."""
    for name in metrics:
        _compare_metric(pair, name, metrics, before, found)
    for name in before:
        missing = _metric_spec(name) if name not in metrics else None
        if missing is not None and name not in _INFO_KEYS:
            found.notes.append(f"{pair}: {missing[2]} is in the baseline but was not measured")


def _unmatched_notes(unmatched: list[str]) -> list[str]:
    """Pairs of the baseline this run did not measure: named, or counted when many."""
    if len(unmatched) <= 3:
        return [f"{key}: in the baseline but not measured in this run" for key in unmatched]
    return [  # a merged baseline of a CI matrix: the other jobs' pairs
        f"{len(unmatched)} pairs in the baseline were not measured in this run "
        f"({', '.join(unmatched[:3])}, …)"
    ]


def _version_notes(old: BaselineDict, new: BaselineDict) -> list[str]:
    old_v, new_v = old.get("versions") or {}, new.get("versions") or {}
    return [
        f"baseline made with {lib} {old_v[lib]}, this run uses {new_v[lib]}"
        for lib in ("torch", "transformers")
        if old_v.get(lib) and new_v.get(lib) and old_v[lib] != new_v[lib]
    ]


def compare_baselines(
    old: BaselineDict,
    new: BaselineDict,
    tolerances: Mapping[str, Mapping[str, float]] | None = None,
    *,
    confidence: Mapping[str, float] | None = None,
    z: float = DEFAULT_Z,
    source: str | None = None,
) -> tuple[list[str], list[str]]:
    """(regressions, notes) between two baseline dicts; one line each.

    ``confidence`` maps a pair to the confidence level of its new speedup interval, only
    for the message. The speedup regresses only when the *high* end of the new interval
    is below the allowed value: a lower point estimate inside a wide interval is noise.
    A similarity metric regresses only beyond its tolerance and ``z`` combined standard
    errors. Baselines measured on another text or setting raise a one-line
    :class:`LlmqUsageError` (``source``, the baseline's file, names it and the fix).
    """
    found = _Findings(resolve_tolerances(tolerances), confidence or {}, z)
    found.notes.extend(check_comparable(old, new, source=source))
    old_pairs = old.get("pairs") or {}
    matched: set[str] = set()
    for pair, metrics in (new.get("pairs") or {}).items():
        hit = find_pair(old_pairs, pair, measured_on(metrics).get("device"))
        if hit is None:
            found.notes.append(f"{pair}: not in the baseline, nothing to compare")
            continue
        matched.add(hit[0])
        _compare_pair(pair, metrics, hit[1] or {}, found)
    found.notes.extend(_unmatched_notes([key for key in old_pairs if key not in matched]))
    found.notes.extend(_version_notes(old, new))
    return found.regressions, found.notes


def compare_to_baseline(
    record: RunRecord,
    baseline: BaselineDict,
    tolerances: Mapping[str, Mapping[str, float]] | None = None,
    *,
    notes: list[str] | None = None,
    z: float = DEFAULT_Z,
    source: str | None = None,
) -> list[str]:
    """One line per metric of this run that is worse than ``baseline`` beyond tolerance
    (and, for the similarity metrics, beyond ``z`` combined standard errors).

    Pairs and metrics the baseline lacks are not regressions; pass a list as ``notes``
    to receive one line about each of them (and about changed torch/transformers, and
    changes within the noise). A baseline measured on another text or setting raises a
    one-line :class:`LlmqUsageError`; ``source`` (the baseline's path) is named in it.
    """
    confidence = {}
    for r in record.results:
        level = finite_number(r.measurement.get("confidence"))
        if r.gate == "quant_speedup" and level is not None:
            confidence[r.pair] = level
    regressions, found = compare_baselines(
        baseline, baseline_dict(record), tolerances, confidence=confidence, z=z, source=source
    )
    if notes is not None:
        notes.extend(found)
    return regressions
