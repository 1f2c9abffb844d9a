"""Files a run leaves behind: JSON report, Markdown summary, quality baseline.

Everything here is a pure function of the session's collected results
(:class:`~pytest_llmquant.verdicts.GateResult` objects, coverages and settings), so it
is tested with fabricated results and needs no model and no torch. The plugin calls
:func:`finish_session` once at the end of a run; it writes what the options ask for.

JSON report (``--llmq-report=FILE``)
    Every pair, its coverage and every gate result with its measurement, thresholds,
    verdict, message and table rows, plus the versions and settings the numbers were
    taken with, so a CI artifact can be read without the log. Strict JSON: NaN and
    infinities become ``null`` (JSON has no NaN; ``json.loads`` in other languages
    rejects it). Written to a temporary file and renamed, so a crashed or parallel run
    never leaves half a file.

Markdown summary (``--llmq-report-md=FILE``, else ``$GITHUB_STEP_SUMMARY``)
    One table per pair and a one-line overall verdict. The step summary is *appended*
    to, because other steps of the same job write there too; it is left alone when no
    gate and no model ran, so installing the plugin does not clutter unrelated jobs.

Quality baselines (``--llmq-save-baseline=FILE`` / ``--llmq-baseline=FILE``)
    Modelled on pytest-memray's ``--fail-on-increase``: save the metrics of a good run,
    then fail later runs whose metrics got worse than the saved ones by more than a
    tolerance, even when they still pass the absolute gate thresholds. A quantizer
    change that doubles the KL divergence is a regression worth seeing long before it
    crosses ``max_kl``. Default tolerances, and why:

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
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import LlmqUsageError

SCHEMA_VERSION = 1
REPORT_KIND = "pytest-llmquant report"
BASELINE_KIND = "pytest-llmquant baseline"

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
_INFO_KEYS = ("speedup_ci_low", "speedup_ci_high")  # stored with speedup, never compared


def _metric_spec(name: str) -> tuple[str, bool, str, str] | None:
    if name in _METRICS:
        return _METRICS[name]
    if name.startswith("memory_ratio_"):  # memory_ratio_file, memory_ratio_peak_rss
        kind = name.removeprefix("memory_ratio_")
        return ("memory_ratio", False, f"memory ratio ({kind})", "{:.2f}x")
    return None


# -- small helpers -------------------------------------------------------------------------


def strict_json(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Non-finite floats become None; tuples and sets become lists; numpy scalars become
    Python numbers; anything else unknown becomes its ``str`` rather than a crash at
    the end of a long run.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [strict_json(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return strict_json(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _atomic_write(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temporary file in the target's directory, then ``os.replace`` it:
    readers (and a parallel run) see the old file or the new one, never half of one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def _dump(data: Any) -> str:
    return json.dumps(strict_json(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _num(value: Any) -> float | None:
    """A finite float, or None for a missing, null or non-finite value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def versions() -> dict[str, str]:
    """Versions that change the numbers. torch and transformers are read only when already
    imported: a report must not pay a multi-second torch import (or fail without it)."""
    out = {"python": platform.python_version()}
    try:
        import pytest

        out["pytest"] = pytest.__version__
    except ImportError:  # pragma: no cover - we are a pytest plugin
        pass
    for name in ("torch", "transformers"):
        module = sys.modules.get(name)
        found = getattr(module, "__version__", None) if module is not None else None
        if found:
            out[name] = str(found)
    try:
        from importlib.metadata import version as dist_version

        out["pytest-llmquant"] = dist_version("pytest-llmquant")
    except Exception:  # not installed as a distribution (a source checkout)
        from . import __version__

        out["pytest-llmquant"] = __version__
    return out


def _opt(config: Any, name: str) -> Any:
    """An option's value, or None without a pytest config (tests pass fake sessions)."""
    if config is None:
        return None
    from . import options

    return options.get(config, name)


def _by_pair(session: Any) -> dict[str, list[Any]]:
    """Pair name -> its gate results in run order; pairs with only a coverage included."""
    pairs: dict[str, list[Any]] = {name: [] for name in (getattr(session, "coverages", None) or {})}
    for result in getattr(session, "results", None) or []:
        pairs.setdefault(result.pair, []).append(result)
    return pairs


def _models(session: Any) -> list[dict[str, str]]:
    sources = getattr(session, "sources", None) or []
    labels = getattr(session, "labels", None) or []
    return [
        {"label": label, "spec": str(getattr(src, "spec", src))}
        for src, label in zip(sources, labels, strict=False)
    ]


# -- JSON report -------------------------------------------------------------------------------


def report_dict(session: Any) -> dict[str, Any]:
    """Everything measured and decided in this run, as strict-JSON-ready data."""
    settings: dict[str, Any] = {
        "threads": getattr(session, "threads", None),
        "device": getattr(session, "device", None),
        "schemes": list(getattr(session, "schemes", None) or []),
        "models": _models(session),
    }
    config = getattr(session, "config", None)
    for name in ("llmq_eval_tokens", "llmq_new_tokens", "llmq_time_budget"):
        try:
            value = _opt(config, name)
        except LlmqUsageError:
            value = None
        if value is not None:
            settings[name.removeprefix("llmq_")] = value
    coverages = getattr(session, "coverages", None) or {}
    pairs: dict[str, Any] = {}
    for name, results in _by_pair(session).items():
        cov = coverages.get(name)
        pairs[name] = {
            "coverage": cov.as_dict() if cov is not None else None,
            "passed": all(r.passed for r in results),
            "gates": [{**r.as_dict(), "verdict": "pass" if r.passed else "fail"} for r in results],
        }
    results = list(getattr(session, "results", None) or [])
    load_times = getattr(session, "load_times", None) or {}
    data = {
        "schema_version": SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "settings": settings,
        "load_times_s": dict(load_times),
        "passed": all(r.passed for r in results),
        "counts": {"gates": len(results), "failed": sum(not r.passed for r in results)},
        "pairs": pairs,
    }
    return strict_json(data)


def write_json_report(session: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`report_dict` to ``path`` atomically; returns the path written."""
    return _atomic_write(path, _dump(report_dict(session)))


# -- Markdown ------------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


_VERDICT_MD = {"ok": "✅ ok", "FAIL": "❌ **FAIL**", "info": "info"}


def overall_verdict(session: Any) -> str:
    """One line: how many gates ran and which failed."""
    results = list(getattr(session, "results", None) or [])
    if not results:
        return "pytest-llmquant: no quantization gate ran"
    failed = [r for r in results if not r.passed]
    n_pairs = len({r.pair for r in results})
    where = f"on {n_pairs} pair{'s' if n_pairs != 1 else ''}"
    if not failed:
        return f"pytest-llmquant: all {len(results)} gates passed {where}"
    names = "; ".join(f"{r.pair}: {r.gate}" for r in failed)
    return f"pytest-llmquant: {len(failed)} of {len(results)} gates FAILED {where} ({names})"


def markdown_summary(session: Any) -> str:
    """A Markdown section: settings, then per pair its coverage and one table of all its
    gates' rows, then the overall verdict line."""
    results = list(getattr(session, "results", None) or [])
    failed = any(not r.passed for r in results)
    schemes = ", ".join(getattr(session, "schemes", None) or []) or "-"
    lines = [
        "## pytest-llmquant",
        "",
        f"{getattr(session, 'threads', '?')} threads, device {getattr(session, 'device', '?')}, "
        f"schemes: {schemes}",
        "",
    ]
    coverages = getattr(session, "coverages", None) or {}
    for name, pair_results in _by_pair(session).items():
        lines += [f"### {_cell(name)}", ""]
        cov = coverages.get(name)
        if cov is not None:
            lines += [f"Coverage: {_cell(cov)}", ""]
        rows = [row for r in pair_results for row in r.rows]
        if rows:
            lines.append("| metric | FP32 | INT8 | ratio | threshold | verdict |")
            lines.append("|---|---|---|---|---|---|")
            for row in rows:
                cells = (row.metric, row.fp32, row.int8, row.ratio, row.threshold)
                verdict = _VERDICT_MD.get(row.verdict, row.verdict)
                lines.append("| " + " | ".join(_cell(c) for c in (*cells, verdict)) + " |")
            lines.append("")
        for r in pair_results:
            if not r.passed or r.close:
                lines += [f"> {_cell(r.message)}", ""]
    mark = "❌" if failed else ("✅" if results else "ℹ️")
    lines.append(f"**{mark} {overall_verdict(session)}**")
    return "\n".join(lines) + "\n"


def write_markdown(session: Any, config: Any) -> tuple[Path, bool] | None:
    """Write the summary to ``--llmq-report-md`` (replaced), else append it to
    ``$GITHUB_STEP_SUMMARY``; returns (path, appended) or None when nothing was written.

    The step summary is only written when a model or gate ran: every pytest run in a
    job with the plugin installed would otherwise add an empty section.
    """
    target = _opt(config, "llmq_report_md")
    if target:
        return _atomic_write(target, markdown_summary(session)), False
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not step_summary:
        return None
    if not (getattr(session, "results", None) or getattr(session, "coverages", None)):
        return None
    path = Path(step_summary)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n" + markdown_summary(session))
    return path, True


# -- quality baselines -------------------------------------------------------------------------


def _pair_metrics(results: Iterable[Any]) -> dict[str, float | None]:
    """The comparable metrics of one pair's gate results.

    Similarity is deterministic, so any of its results will do. Of several speedup
    measurements (one per threshold) the one with the most pairs is kept: it has the
    narrowest interval. Memory ratios are kept per kind: ``memory_ratio`` for weights,
    ``memory_ratio_<kind>`` for the others, which measure different things.
    """
    out: dict[str, float | None] = {}
    best_pairs = -1
    for r in results:
        m = r.measurement or {}
        if r.gate == "quant_similarity":
            for key in ("mean_kld", "same_top", "ppl_ratio"):
                if _num(m.get(key)) is not None:
                    out[key] = _num(m.get(key))
        elif r.gate == "quant_speedup" and _num(m.get("speedup")) is not None:
            n = int(_num(m.get("n_pairs")) or 0)
            if n > best_pairs:
                best_pairs = n
                out["speedup"] = _num(m.get("speedup"))
                out["speedup_ci_low"] = _num(m.get("ci_low"))
                out["speedup_ci_high"] = _num(m.get("ci_high"))
        elif r.gate == "quant_memory" and _num(m.get("ratio")) is not None:
            kind = str(m.get("kind") or r.thresholds.get("kind") or "weights")
            key = "memory_ratio" if kind == "weights" else f"memory_ratio_{kind}"
            out[key] = _num(m.get("ratio"))
    return out


def baseline_dict(session: Any) -> dict[str, Any]:
    """The metrics of this run that a later run can be compared with (only those measured)."""
    pairs: dict[str, Any] = {}
    for name, results in _by_pair(session).items():
        metrics = _pair_metrics(results)
        if metrics:
            pairs[name] = metrics
    return strict_json(
        {
            "schema_version": SCHEMA_VERSION,
            "kind": BASELINE_KIND,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            "pairs": pairs,
        }
    )


def write_baseline(session: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`baseline_dict` to ``path`` atomically; returns the path written."""
    return _atomic_write(path, _dump(baseline_dict(session)))


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a baseline file, or raise a one-line :class:`LlmqUsageError` saying how to fix it."""
    fix = f"create it with --llmq-save-baseline={path} on a good run"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LlmqUsageError(f"baseline file {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise LlmqUsageError(f"cannot read baseline file {path} ({reason}); {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LlmqUsageError(
            f"baseline file {path} is not valid JSON (line {exc.lineno}: {exc.msg}); re-{fix}"
        ) from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == REPORT_KIND:
        raise LlmqUsageError(f"baseline file {path} is a --llmq-report file, not a baseline; {fix}")
    problem = None
    if not isinstance(data, dict):
        problem = "not a JSON object"
    elif data.get("schema_version") != SCHEMA_VERSION:
        problem = f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"
    elif kind not in (None, BASELINE_KIND):
        problem = f"kind {kind!r}"
    elif not isinstance(data.get("pairs"), dict) or not all(
        isinstance(v, dict) for v in data["pairs"].values()
    ):
        problem = "no 'pairs' object of per-pair metrics"
    if problem:
        raise LlmqUsageError(
            f"baseline file {path} is not a pytest-llmquant baseline ({problem}); re-{fix}"
        )
    return data


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
            if key not in ("rel", "abs") or _num(value) is None or float(value) < 0:
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


def compare_baselines(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    tolerances: Mapping[str, Mapping[str, float]] | None = None,
    *,
    confidence: Mapping[str, float] | None = None,
) -> tuple[list[str], list[str]]:
    """(regressions, notes) between two baseline dicts; one line each.

    ``confidence`` maps a pair to the confidence level of its new speedup interval, only
    for the message. The speedup regresses only when the *high* end of the new interval
    is below the allowed value: a lower point estimate inside a wide interval is noise.
    """
    tol = resolve_tolerances(tolerances)
    regressions: list[str] = []
    notes: list[str] = []
    old_pairs: Mapping[str, Any] = old.get("pairs") or {}
    new_pairs: Mapping[str, Any] = new.get("pairs") or {}
    for pair, metrics in new_pairs.items():
        if pair not in old_pairs:
            notes.append(f"{pair}: not in the baseline, nothing to compare")
            continue
        before = old_pairs[pair] or {}
        for name, value in metrics.items():
            spec = _metric_spec(name)
            if spec is None or name in _INFO_KEYS:
                continue
            tol_key, lower_better, label, fmt = spec
            was, now = _num(before.get(name)), _num(value)
            if was is None:
                notes.append(f"{pair}: {label} not in the baseline, not compared")
                continue
            if now is None:
                continue
            t = tol[tol_key]
            if lower_better:
                limit = was * (1 + t["rel"]) + t["abs"]
                if now > limit:
                    regressions.append(
                        f"{pair}: {label} regressed {fmt.format(was)} → {fmt.format(now)} "
                        f"(tolerance {_describe(t, True)}, limit {fmt.format(limit)})"
                    )
                continue
            limit = was * (1 - t["rel"]) - t["abs"]
            if name == "speedup":
                high = _num(metrics.get("speedup_ci_high"))
                level = (confidence or {}).get(pair)
                ci = f"{round(100 * level)}% CI" if level else "CI"
                if high is None:
                    if now < limit:
                        notes.append(
                            f"{pair}: speedup {fmt.format(was)} → {fmt.format(now)} has no "
                            "upper confidence bound (too few timed pairs), not compared"
                        )
                    continue
                if high < limit:
                    low = _num(metrics.get("speedup_ci_low"))
                    shown = f"{low:.2f}–{high:.2f}" if low is not None else f"≤ {high:.2f}"
                    regressions.append(
                        f"{pair}: speedup regressed {fmt.format(was)} → {fmt.format(now)} "
                        f"({ci} {shown}, high end below the limit {fmt.format(limit)}; "
                        f"tolerance {_describe(t, False)})"
                    )
                continue
            if now < limit:
                regressions.append(
                    f"{pair}: {label} regressed {fmt.format(was)} → {fmt.format(now)} "
                    f"(tolerance {_describe(t, False)}, limit {fmt.format(limit)})"
                )
        for name in before:
            missing = _metric_spec(name) if name not in metrics else None
            if missing is not None and name not in _INFO_KEYS:
                notes.append(f"{pair}: {missing[2]} is in the baseline but was not measured")
    for pair in old_pairs:
        if pair not in new_pairs:
            notes.append(f"{pair}: in the baseline but not measured in this run")
    old_v, new_v = old.get("versions") or {}, new.get("versions") or {}
    for lib in ("torch", "transformers"):
        if old_v.get(lib) and new_v.get(lib) and old_v[lib] != new_v[lib]:
            notes.append(f"baseline made with {lib} {old_v[lib]}, this run uses {new_v[lib]}")
    return regressions, notes


def compare_to_baseline(
    session: Any,
    baseline: Mapping[str, Any],
    tolerances: Mapping[str, Mapping[str, float]] | None = None,
    *,
    notes: list[str] | None = None,
) -> list[str]:
    """One line per metric of this run that is worse than ``baseline`` beyond tolerance.

    Pairs and metrics the baseline lacks are not regressions; pass a list as ``notes``
    to receive one line about each of them (and about changed torch/transformers).
    """
    confidence = {}
    for r in getattr(session, "results", None) or []:
        level = _num((r.measurement or {}).get("confidence"))
        if r.gate == "quant_speedup" and level is not None:
            confidence[r.pair] = level
    regressions, found = compare_baselines(
        baseline, baseline_dict(session), tolerances, confidence=confidence
    )
    if notes is not None:
        notes.extend(found)
    return regressions


# -- end of the run ----------------------------------------------------------------------------------


def _say(tr: Any, line: str, **markup: bool) -> None:
    if tr is not None:
        tr.write_line(line, **markup)
    else:  # no terminal reporter (-p no:terminal): still tell the user
        sys.stderr.write(line + "\n")


def finish_session(session: Any, terminalreporter: Any) -> int | None:
    """Write the files the options ask for and compare with ``--llmq-baseline``.

    Returns the exit status to force, or None: 1 when a metric regressed against the
    baseline, 4 (pytest's usage error) when an output or the baseline could not be
    written or read. Does nothing in an xdist worker: the controller writes the files.
    """
    config = getattr(session, "config", None)
    if config is not None and hasattr(config, "workerinput"):
        return None
    tr = terminalreporter
    status: int | None = None

    def failed(what: str, exc: BaseException) -> None:
        nonlocal status
        _say(tr, f"pytest-llmquant: {what}: {exc}", red=True)
        status = status or 4

    report = _opt(config, "llmq_report")
    if report:
        try:
            _say(tr, f"pytest-llmquant: wrote report {write_json_report(session, report)}")
        except OSError as exc:
            failed(f"could not write report {report}", exc)
    try:
        written = write_markdown(session, config)
    except OSError as exc:
        failed("could not write the Markdown summary", exc)
    else:
        if written is not None:
            path, appended = written
            verb = "appended Markdown summary to" if appended else "wrote Markdown summary"
            _say(tr, f"pytest-llmquant: {verb} {path}")
    save = _opt(config, "llmq_save_baseline")
    if save:
        data = baseline_dict(session)
        if not data["pairs"]:
            _say(
                tr,
                f"pytest-llmquant: baseline {save} not written: no gate measured anything "
                "in this run",
                yellow=True,
            )
        else:
            try:
                _atomic_write(save, _dump(data))
                _say(tr, f"pytest-llmquant: wrote baseline {save}")
            except OSError as exc:
                failed(f"could not write baseline {save}", exc)
    compare = _opt(config, "llmq_baseline")
    if compare:
        try:
            baseline = load_baseline(compare)
        except LlmqUsageError as exc:
            _say(tr, f"pytest-llmquant: {exc}", red=True)
            return status or 4
        notes: list[str] = []
        regressions = compare_to_baseline(session, baseline, notes=notes)
        for line in notes:
            _say(tr, f"note: {line}")
        for line in regressions:
            _say(tr, line, red=True)
        if regressions:
            _say(tr, f"pytest-llmquant: quality regressed against baseline {compare}", red=True)
            return 1
        _say(tr, f"pytest-llmquant: no regression against baseline {compare}", green=True)
    return status
