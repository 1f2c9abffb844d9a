"""Whether a baseline and this run were measured on the same text and setting.

Numbers from another evaluation text, another number of scored tokens, another window,
another reference precision, another device or another runtime differ for reasons that are not the
quantizer: compared, they would flag or hide regressions at random. Such a comparison is
refused with one line that says what differs. A baseline saved before these were
recorded is compared as before, with a note that nothing was checked.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import LlmqUsageError
from ..types import JSONValue
from .store import BaselineDict, find_pair, measured_on

#: measured_on key -> how the error names it
_LABELS = {
    "eval_text_sha256": "evaluation text",
    "eval_tokens": "scored tokens",
    "window": "window",
    "reference_dtype": "reference dtype",
    "device": "device",
    "int8_runtime": "INT8 runtime",
    "reference_runtime": "reference runtime",
}
#: only the similarity metrics depend on these
_SIMILARITY_ONLY = ("eval_text_sha256", "eval_tokens", "window")
_SIMILARITY_METRICS = ("mean_kld", "same_top", "ppl_ratio")
_BUILT_IN = "built-in corpus"


def _shown(key: str, setup: Mapping[str, JSONValue]) -> str:
    value = setup[key]
    if key == "eval_text_sha256":
        return f"sha256 {str(value)[:12]}… ({setup.get('eval_text', '?')})"
    return str(value)


def _has_similarity(entry: Mapping[str, JSONValue]) -> bool:
    return any(entry.get(k) is not None for k in _SIMILARITY_METRICS)


def setting_differences(old: BaselineDict, new: BaselineDict) -> tuple[list[str], list[str]]:
    """(differences, notes): one phrase per setting that differs between the baseline
    ``old`` and this run's baseline dict ``new`` (naming the pairs when not all of the
    compared ones differ), and a note when the baseline does not record its setting."""
    old_pairs = old.get("pairs") or {}
    found: dict[str, list[str]] = {}
    compared: list[str] = []
    unrecorded = False
    for pair, metrics in (new.get("pairs") or {}).items():
        now = measured_on(metrics)
        hit = find_pair(old_pairs, pair, now.get("device"))
        if hit is None:
            continue
        before = hit[1]
        compared.append(pair)
        was = measured_on(before)
        if not was and now.get("eval_text_sha256") and _has_similarity(before):
            unrecorded = True
        similarity = _has_similarity(before) and _has_similarity(metrics)
        for key, label in _LABELS.items():
            if key in _SIMILARITY_ONLY and not similarity:
                continue
            if was.get(key) is None or now.get(key) is None or was[key] == now[key]:
                continue
            phrase = f"{label} {_shown(key, was)} in the baseline, {_shown(key, now)} here"
            if key == "eval_text_sha256" and was.get("eval_text") == now.get("eval_text"):
                if was.get("eval_text") == _BUILT_IN:  # made from this Python's docstrings
                    py_old = (old.get("versions") or {}).get("python", "?")
                    py_new = (new.get("versions") or {}).get("python", "?")
                    phrase += f" (the built-in corpus of Python {py_old} vs {py_new})"
                else:
                    phrase += " (the file changed)"
            found.setdefault(phrase, []).append(pair)
    differences = [
        phrase if len(pairs) == len(compared) else f"{phrase} for {', '.join(pairs)}"
        for phrase, pairs in found.items()
    ]
    notes = []
    if unrecorded:
        notes.append(
            "the baseline does not record what it was measured on (evaluation text, scored "
            "tokens, window, reference dtype, device) nor its standard errors: an older "
            "file, compared on its tolerances only; re-save it to have both checked"
        )
    return differences, notes


def check_comparable(
    old: BaselineDict, new: BaselineDict, *, source: str | None = None
) -> list[str]:
    """Raise a one-line :class:`LlmqUsageError` naming what differs, or return the notes."""
    differences, notes = setting_differences(old, new)
    if differences:
        name = f"baseline {source}" if source else "the baseline"
        fix = f"--llmq-save-baseline={source}" if source else "--llmq-save-baseline=FILE"
        raise LlmqUsageError(
            f"{name} was measured on another text or setting than this run: "
            + "; ".join(differences)
            + f"; run with the baseline's settings, or re-create it with {fix}"
        )
    return notes
