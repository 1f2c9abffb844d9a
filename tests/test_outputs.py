"""JSON report, Markdown summary and quality baselines, on fabricated results
(:mod:`fabricated`): every message and file format is checked without a model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fabricated import (
    OTHER,
    PAIR,
    Terminal,
    all_three,
    fake_record,
    fake_settings,
    memory,
    similarity,
    speedup,
)

from pytest_llmquant.baseline.compare import compare_baselines, compare_to_baseline
from pytest_llmquant.baseline.store import baseline_dict, load_baseline, write_baseline
from pytest_llmquant.errors import LlmqUsageError
from pytest_llmquant.jsonfiles import strict_json, versions
from pytest_llmquant.reporting.finish import finish_session
from pytest_llmquant.reporting.json_report import report_dict, write_json_report
from pytest_llmquant.reporting.markdown import markdown_summary, write_markdown
from pytest_llmquant.reporting.terminal import write_terminal_summary
from pytest_llmquant.run.record import Load, RunRecord, SourceLabel

# -- JSON report -------------------------------------------------------------------------------


def test_report_has_every_pair_and_gate_in_strict_json() -> None:
    results = all_three(PAIR) + [similarity(OTHER, mean_kld=0.5)]
    data = report_dict(fake_record(results))
    data = json.loads(json.dumps(data, allow_nan=False))  # strict JSON round trip
    assert data["schema_version"] == 1
    assert data["created"].endswith("+00:00")
    assert set(data["versions"]) >= {"python", "pytest", "pytest-llmquant"}
    assert data["settings"] == {
        "threads": 2,
        "device": "cpu",
        "schemes": ["dynamic-int8"],
        "models": [],
        "reference_dtype": "float32",
        "eval_tokens": 2048,
        "new_tokens": 32,
        "time_budget": 5.0,
    }
    assert list(data["pairs"]) == [PAIR, OTHER]
    assert data["passed"] is False
    assert data["counts"] == {"gates": 4, "failed": 1}
    pair = data["pairs"][PAIR]
    assert {k: pair["coverage"][k] for k in ("quantized", "total", "kept_float")} == {
        "quantized": 3,
        "total": 4,
        "kept_float": ["lm_head"],
    }
    assert pair["coverage"]["quantized_layers"] == ["a", "b", "c"]
    assert pair["coverage"]["summary"] == "quantized 3 of 4 linear layers (FP32: lm_head)"
    assert [g["gate"] for g in pair["gates"]] == [
        "quant_similarity",
        "quant_speedup",
        "quant_memory",
    ]
    sim = pair["gates"][0]
    assert sim["verdict"] == "pass" and pair["gates"][1]["verdict"] == "pass"
    assert data["pairs"][OTHER]["gates"][0]["verdict"] == "fail"
    assert sim["passed"] is True and sim["message"].startswith("quant_similarity passed for")
    assert sim["measurement"]["mean_kld"] == 0.0041
    assert sim["measurement"]["rms_dp_se"] is None  # NaN became null
    assert sim["thresholds"] == {"max_kl": 0.01, "min_same_top": 0.9, "max_ppl_ratio": 1.05}
    assert sim["rows"][0]["metric"] == "mean KLD" and sim["rows"][0]["verdict"] == "ok"
    assert pair["gates"][1]["measurement"]["fp32_samples"] == [0.020, 0.021, 0.019]
    assert data["pairs"][OTHER]["passed"] is False
    assert data["pairs"][OTHER]["gates"][0]["rows"][0]["verdict"] == "FAIL"


def test_strict_json_replaces_non_finite_and_odd_types() -> None:
    value = {"a": math.inf, "b": (1, -math.inf), 3: {math.nan}, "c": Path("x")}
    assert strict_json(value) == {"a": None, "b": [1, None], "3": [None], "c": "x"}


def test_write_json_report_is_atomic_and_readable(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    target.parent.mkdir()
    target.write_text("old")
    written = write_json_report(fake_record(all_three()), target)
    assert written == target
    assert json.loads(target.read_text())["pairs"][PAIR]["passed"] is True
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temp file left


def test_versions_read_torch_only_when_already_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setitem(sys.modules, "transformers", SimpleNamespace(__version__="9.9"))
    found = versions()
    assert "torch" not in found
    assert found["transformers"] == "9.9"
    assert "torch" not in sys.modules  # and it did not import it either


# -- Markdown ----------------------------------------------------------------------------------


def test_markdown_has_a_table_per_pair_coverage_and_verdict() -> None:
    results = all_three(PAIR) + [similarity(OTHER, mean_kld=0.5)]
    text = markdown_summary(fake_record(results))
    lines = text.splitlines()
    assert lines[0] == "## pytest-llmquant"
    assert "2 threads, device cpu, schemes: dynamic-int8" in lines
    assert f"### {PAIR}" in lines and f"### {OTHER}" in lines
    assert "Coverage: quantized 3 of 4 linear layers (FP32: lm_head)" in lines
    assert lines.count("| metric | FP32 | INT8 | ratio | threshold | verdict |") == 2
    assert "| mean KLD |  | 0.0041 ± 0.0003 |  | ≤ 0.01 | ✅ ok |" in lines
    assert "| perplexity | 12.000 | 12.096 | 1.008 | ≤ 1.05 | ✅ ok |" in lines
    assert "| ms/token | 20.00 | 10.00 | 2.00x | ≥ 1x | ✅ ok |" in lines
    assert "| memory (weights) | 380.0 MB | 100.0 MB | 3.80x | ≥ 2x | ✅ ok |" in lines
    assert "| mean KLD |  | 0.5 ± 0.0003 |  | ≤ 0.01 | ❌ **FAIL** |" in lines
    assert any(line.startswith(f"> quant_similarity failed for {OTHER}") for line in lines)
    assert lines[-1] == (
        f"**❌ pytest-llmquant: 1 of 4 gates FAILED on 2 pairs ({OTHER}: quant_similarity)**"
    )


def test_markdown_verdict_when_all_pass() -> None:
    text = markdown_summary(fake_record(all_three()))
    assert text.splitlines()[-1] == "**✅ pytest-llmquant: all 3 gates passed on 1 pair**"


def test_markdown_goes_to_the_option_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    target = tmp_path / "summary.md"
    target.write_text("stale\n")
    record = fake_record(all_three(), settings=fake_settings(report_md=str(target)))
    assert write_markdown(record) == (target, False)
    assert target.read_text() == markdown_summary(record)  # replaced, not appended
    assert not summary.exists()  # the option wins over the step summary


def test_markdown_appends_to_github_step_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "step.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    record = fake_record(all_three(), settings=fake_settings())
    assert write_markdown(record) == (summary, True)
    assert write_markdown(record) == (summary, True)
    text = summary.read_text()
    assert text.startswith("# earlier step\n\n## pytest-llmquant\n")
    assert text.count("## pytest-llmquant") == 2


def test_markdown_writes_nothing_without_target_or_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert write_markdown(fake_record(all_three())) is None
    summary = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert write_markdown(fake_record([])) is None
    assert not summary.exists()


# -- baselines ----------------------------------------------------------------------------------


def speedup_result(verdict: str, *, stalled: float, others: float) -> Any:
    """A 2.0x speedup gate result of ``verdict``, sampled with that CPU contention (an
    inconclusive one counted as passed, so that it reaches the run record)."""
    from pytest_llmquant.speed.timing import SpeedupResult
    from pytest_llmquant.verdicts import speedup_verdict

    result = SpeedupResult(
        verdict=verdict, speedup=2.0, ci_low=1.8, ci_high=2.2, confidence=0.99, close=False,
        rule="given", threshold=1.0, n_pairs=12, reference_ms_per_token=20.0,
        int8_ms_per_token=10.0, reference_tokens_per_s=50.0, int8_tokens_per_s=100.0,
        threads=2, new_tokens=32, prompts=4, wall_s=1.0, reference_samples=[0.02],
        int8_samples=[0.01], cpu_cores=2, cpu_stalled=stalled, cpu_others=others,
    )  # fmt: skip
    return speedup_verdict(result, PAIR, min_speedup=1.0, inconclusive="pass")


def test_a_baseline_keeps_the_cpu_contention_its_speedup_was_sampled_under() -> None:
    data = baseline_dict(fake_record([speedup_result("pass", stalled=0.02, others=0.1)]))
    entry = data["pairs"][PAIR]
    assert (entry["speedup_cpu_stalled"], entry["speedup_cpu_others"]) == (0.02, 0.1)


def test_an_inconclusive_speedup_is_not_a_baseline() -> None:
    """The CPU was too busy to judge: that number measured the load, not the models."""
    busy = speedup_result("inconclusive", stalled=0.9, others=1.9)
    assert busy.measurement["verdict"] == "inconclusive"
    entry = baseline_dict(fake_record([busy]))["pairs"].get(PAIR, {})
    assert "speedup" not in entry and "speedup_cpu_stalled" not in entry


def test_baseline_dict_holds_only_measured_metrics() -> None:
    data = baseline_dict(
        fake_record(all_three(PAIR) + [similarity(OTHER), memory(OTHER, kind="peak_rss")])
    )
    assert data["schema_version"] == 1
    similarity_metrics = {
        "mean_kld": 0.0041,
        "mean_kld_se": 0.0003,
        "same_top": 0.97,
        "same_top_se": 0.005,
        "ppl_ratio": 1.008,
        "ppl_ratio_se": 0.001,
    }
    assert data["pairs"][PAIR] == {
        **similarity_metrics,
        "speedup": 2.0,
        "speedup_ci_low": 1.8,
        "speedup_ci_high": 2.2,
        "memory_ratio": 3.8,
        "measured_on": {
            "eval_tokens": 512,
            "device": "cpu",
            "int8_runtime": "torch",
            "reference_runtime": "torch",
        },
    }
    assert data["pairs"][OTHER] == {
        **similarity_metrics,
        "memory_ratio_peak_rss": 3.8,
        "measured_on": {
            "eval_tokens": 512,
            "device": "cpu",
            "int8_runtime": "torch",
            "reference_runtime": "torch",
        },
    }


def test_baseline_keeps_the_speedup_with_the_most_pairs() -> None:
    results = [speedup(point=1.9, n_pairs=40), speedup(point=2.5, n_pairs=6, threshold=1.2)]
    assert baseline_dict(fake_record(results))["pairs"][PAIR]["speedup"] == 1.9


def saved(tmp_path: Path, results: list[Any]) -> dict[str, Any]:
    path = tmp_path / "baseline.json"
    write_baseline(fake_record(results), path)
    return load_baseline(path)


def test_same_numbers_do_not_regress(tmp_path: Path) -> None:
    baseline = saved(tmp_path, all_three())
    notes: list[str] = []
    assert compare_to_baseline(fake_record(all_three()), baseline, notes=notes) == []
    assert notes == []


def test_kld_worse_beyond_tolerance_regresses(tmp_path: Path) -> None:
    baseline = saved(tmp_path, all_three())
    worse = fake_record([similarity(mean_kld=0.0093), speedup(), memory()])
    assert compare_to_baseline(worse, baseline) == [
        f"{PAIR}: mean KLD regressed 0.0041 → 0.0093 "
        "(tolerance +25% relative + 0.001 absolute, limit 0.00613; "
        "change 0.0052 > 3 × SE 0.000424 = 0.00127)"
    ]


def test_kld_worse_within_tolerance_passes(tmp_path: Path) -> None:
    baseline = saved(tmp_path, all_three())
    # 0.0041 * 1.25 + 0.001 = 0.006125: a 49% rise of a tiny KLD is within the noise
    slightly = fake_record([similarity(mean_kld=0.0061)])
    assert compare_to_baseline(slightly, baseline) == []


def test_speedup_regresses_only_when_the_whole_interval_is_below(tmp_path: Path) -> None:
    baseline = saved(tmp_path, all_three())  # speedup 2.0: the limit is 1.8
    below = fake_record([speedup(point=1.5, low=1.4, high=1.7)])
    assert compare_to_baseline(below, baseline) == [
        f"{PAIR}: speedup regressed 2.00x → 1.50x "
        "(99% CI 1.40–1.70, high end below the limit 1.80x; tolerance -10% relative)"
    ]
    overlapping = fake_record([speedup(point=1.5, low=1.2, high=1.9)])  # point low, CI not
    assert compare_to_baseline(overlapping, baseline) == []


def test_speedup_without_an_upper_bound_is_a_note(tmp_path: Path) -> None:
    baseline = saved(tmp_path, [speedup()])
    too_few = fake_record([speedup(point=1.2, low=0.0, high=math.inf, n_pairs=3)])
    notes: list[str] = []
    assert compare_to_baseline(too_few, baseline, notes=notes) == []
    assert notes == [
        f"{PAIR}: speedup 2.00x → 1.20x has no upper confidence bound (too few timed "
        "pairs), not compared"
    ]


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (
            similarity(same_top=0.93),
            "same-top-1 regressed 0.970 → 0.930 (tolerance -0.01 absolute, limit 0.960; "
            "change 0.04 > 3 × SE 0.00707 = 0.0212)",
        ),
        (
            similarity(ppl_ratio=1.02),
            "PPL ratio regressed 1.0080 → 1.0200 (tolerance +0.01 absolute, limit 1.0180; "
            "change 0.012 > 3 × SE 0.00141 = 0.00424)",
        ),
        (
            memory(ratio=3.5),
            "memory ratio (weights) regressed 3.80x → 3.50x (tolerance -5% relative, limit 3.61x)",
        ),
    ],
)
def test_other_metrics_regress_with_exact_messages(
    tmp_path: Path, result: Any, message: str
) -> None:
    baseline = saved(tmp_path, all_three())
    assert compare_to_baseline(fake_record([result]), baseline) == [f"{PAIR}: {message}"]


def test_improvements_never_regress(tmp_path: Path) -> None:
    baseline = saved(tmp_path, all_three())
    better = fake_record(
        [
            similarity(mean_kld=0.0001, same_top=1.0, ppl_ratio=1.0),
            speedup(point=3, low=2.5, high=3.5),
            memory(ratio=4),
        ]
    )
    assert compare_to_baseline(better, baseline) == []


def test_missing_pairs_and_metrics_are_notes_not_regressions(tmp_path: Path) -> None:
    baseline = saved(tmp_path, [similarity(PAIR), similarity("gone [dynamic-int8]")])
    now = fake_record([similarity(PAIR, mean_kld=0.0042), speedup(PAIR), memory(OTHER, ratio=1)])
    notes: list[str] = []
    assert compare_to_baseline(now, baseline, notes=notes) == []
    assert notes == [
        f"{PAIR}: speedup not in the baseline, not compared",
        f"{OTHER}: not in the baseline, nothing to compare",
        "gone [dynamic-int8]: in the baseline but not measured in this run",
    ]


def test_tolerances_are_configurable(tmp_path: Path) -> None:
    baseline = saved(tmp_path, all_three())
    worse = fake_record([similarity(mean_kld=0.0093)])
    assert compare_to_baseline(worse, baseline, {"mean_kld": {"rel": 2.0}}) == []
    assert compare_to_baseline(worse, baseline, {"mean_kld": {"abs": 0.0}}) == [
        f"{PAIR}: mean KLD regressed 0.0041 → 0.0093 (tolerance +25% relative, limit 0.00513; "
        "change 0.0052 > 3 × SE 0.000424 = 0.00127)"
    ]
    with pytest.raises(LlmqUsageError, match="unknown baseline tolerance metric 'kl'"):
        compare_to_baseline(worse, baseline, {"kl": {"rel": 1.0}})
    with pytest.raises(LlmqUsageError, match=r"mean_kld\.rel=-1"):
        compare_to_baseline(worse, baseline, {"mean_kld": {"rel": -1}})


def test_changed_torch_version_is_noted() -> None:
    old = {"versions": {"torch": "2.4.0"}, "pairs": {}}
    new = {"versions": {"torch": "2.13.0"}, "pairs": {}}
    assert compare_baselines(old, new) == (
        [],
        ["baseline made with torch 2.4.0, this run uses 2.13.0"],
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "baseline file {p} does not exist; create it with --llmq-save-baseline={p} on a good run"),
        ("{not json", "baseline file {p} is not valid JSON (line {lineno}: {json_msg}); re-create it with --llmq-save-baseline={p} on a good run"),
        ('{"schema_version": 7, "pairs": {}}', "baseline file {p} is not a pytest-llmquant baseline (schema_version 7, expected 1); re-create it with --llmq-save-baseline={p} on a good run"),
        ("[1, 2]", "baseline file {p} is not a pytest-llmquant baseline (not a JSON object); re-create it with --llmq-save-baseline={p} on a good run"),
        ('{"schema_version": 1, "pairs": {"x": 3}}', "baseline file {p} is not a pytest-llmquant baseline (no 'pairs' object of per-pair metrics); re-create it with --llmq-save-baseline={p} on a good run"),
        ('{"schema_version": 1, "kind": "pytest-llmquant report", "pairs": {}}', "baseline file {p} is a --llmq-report file, not a baseline; create it with --llmq-save-baseline={p} on a good run"),
    ],
)  # fmt: skip
def test_load_baseline_errors_are_one_line(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "baseline.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LlmqUsageError) as info:
        load_baseline(path)
    # where the JSON parser's own words go in, they are taken from the parser, not typed here
    lineno, json_msg = _json_error(content) if content is not None else (0, "")
    assert str(info.value) == expected.format(p=path, lineno=lineno, json_msg=json_msg)
    assert "\n" not in str(info.value)


def _json_error(text: str) -> tuple[int, str]:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return exc.lineno, exc.msg
    return 0, ""


def test_load_baseline_reports_an_unreadable_file(tmp_path: Path) -> None:
    """The reason is the OS's (strerror): read from the same failure, not typed here."""
    try:
        tmp_path.read_text()
    except OSError as exc:
        reason = exc.strerror
    with pytest.raises(LlmqUsageError) as info:
        load_baseline(tmp_path)
    assert str(info.value) == (
        f"cannot read baseline file {tmp_path} ({reason}); create it with "
        f"--llmq-save-baseline={tmp_path} on a good run"
    )


def test_hand_written_baseline_in_the_documented_shape_loads(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(
        json.dumps({"schema_version": 1, "versions": {}, "pairs": {PAIR: {"mean_kld": 0.001}}})
    )
    baseline = load_baseline(path)
    assert compare_to_baseline(fake_record([similarity()]), baseline) == [
        f"{PAIR}: mean KLD regressed 0.001 → 0.0041 "
        "(tolerance +25% relative + 0.001 absolute, limit 0.00225; "
        "change 0.0031 > 3 × SE 0.0003 = 0.0009)"  # no SE in the file: this run's alone
    ]


# -- finish_session --------------------------------------------------------------------------------


def test_finish_session_writes_every_requested_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    files = {k: tmp_path / f"{k}.out" for k in ("report", "md", "base")}
    config = fake_settings(
        report=str(files["report"]),
        report_md=str(files["md"]),
        save_baseline=str(files["base"]),
    )
    tr = Terminal()
    assert finish_session(fake_record(all_three(), settings=config), tr) is None
    assert tr.lines == [
        f"pytest-llmquant: wrote report {files['report']}",
        f"pytest-llmquant: wrote Markdown summary {files['md']}",
        f"pytest-llmquant: wrote baseline {files['base']}",
    ]
    assert json.loads(files["report"].read_text())["schema_version"] == 1
    assert load_baseline(files["base"])["pairs"][PAIR]["speedup"] == 2.0


def test_finish_session_forces_failure_on_a_regression(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    write_baseline(fake_record(all_three()), base)
    record = fake_record(
        [similarity(mean_kld=0.0093), speedup(), memory()],
        settings=fake_settings(baseline=str(base)),
    )
    tr = Terminal()
    assert finish_session(record, tr) == 1
    obtained = tmp_path / "base.obtained.json"
    assert tr.lines == [
        f"{PAIR}: mean KLD regressed 0.0041 → 0.0093 "
        "(tolerance +25% relative + 0.001 absolute, limit 0.00613; "
        "change 0.0052 > 3 × SE 0.000424 = 0.00127)",
        f"pytest-llmquant: quality regressed against baseline {base}; this run's baseline "
        f"is in {obtained}: review it and copy it over {base} to accept the change",
    ]
    assert load_baseline(obtained)["pairs"][PAIR]["mean_kld"] == 0.0093
    record.results = all_three()
    tr = Terminal()
    assert finish_session(record, tr) is None
    assert tr.lines == [f"pytest-llmquant: no regression against baseline {base}"]


def test_finish_session_does_not_overwrite_a_baseline_with_nothing(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text("keep")
    tr = Terminal()
    record = fake_record([], settings=fake_settings(save_baseline=str(base)))
    assert finish_session(record, tr) is None
    assert base.read_text() == "keep"
    assert tr.lines == [
        f"pytest-llmquant: baseline {base} not written: no gate measured anything in this run"
    ]


def test_a_hand_built_record_without_settings_still_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merge tool and tests build records with no settings: CPU, threads unknown, and
    no file but the step summary."""
    summary = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    record = RunRecord(results=all_three())
    assert report_dict(record)["settings"] == {
        "threads": None,
        "device": "cpu",
        "schemes": [],
        "models": [],
    }
    assert markdown_summary(record).splitlines()[2] == "? threads, device cpu, schemes: -"
    tr = Terminal()
    assert finish_session(record, tr) is None
    assert tr.lines == [f"pytest-llmquant: appended Markdown summary to {summary}"]


def test_the_report_names_the_models_and_their_load_times() -> None:
    record = fake_record(
        all_three(),
        loads={"HuggingFaceTB/SmolLM2-135M": Load(12.5, "FP32 weights from the cache")},
    )
    record.sources = [SourceLabel("HuggingFaceTB/SmolLM2-135M", "smollm2-135m")]
    data = report_dict(record)
    assert data["settings"]["models"] == [
        {"label": "smollm2-135m", "spec": "HuggingFaceTB/SmolLM2-135M"}
    ]
    assert data["load_times_s"] == {"HuggingFaceTB/SmolLM2-135M": 12.5}


class SummaryTerminal(Terminal):
    def write_sep(self, sep: str, title: str | None = None, **markup: bool) -> None:
        self.lines.append(f"{sep * 3} {title} {sep * 3}")


def test_terminal_summary_lists_loads_coverage_and_a_table_per_pair() -> None:
    record = fake_record(
        all_three(PAIR) + [similarity(OTHER)],
        settings=fake_settings(reference_dtype="bfloat16"),
        loads={"HuggingFaceTB/SmolLM2-135M": Load(12.5, "FP32 weights from the cache")},
        pairs={PAIR: {"int8": {"label": "dynamic-int8", "made_by": "scheme", "path": ""}}},
    )
    record.sources = [SourceLabel("HuggingFaceTB/SmolLM2-135M", "smollm2-135m")]
    tr = SummaryTerminal()
    write_terminal_summary(tr, record)
    assert tr.lines[:4] == [
        "=== pytest-llmquant summary ===",
        "smollm2-135m: BF16 loaded in 12.5 s (FP32 weights from the cache)",
        f"{PAIR}: quantized 3 of 4 linear layers (FP32: lm_head); dynamic-int8, made by the scheme",
        f"{OTHER}: quantized 3 of 4 linear layers (FP32: lm_head)",
    ]
    assert f"{PAIR}  (2 threads, device cpu)" in tr.lines
    assert f"{OTHER}  (2 threads, device cpu)" in tr.lines
    headers = [line.split()[:3] for line in tr.lines if line.startswith("metric ")]
    assert headers == [["metric", "FP32", "INT8"]] * 2  # the gates' own reference column


def test_an_xdist_worker_writes_no_output(pytester: pytest.Pytester) -> None:
    """The controller writes the files from every worker's results; a worker (xdist sets
    ``workerinput`` on its config) writes none, so two processes never race on a file."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_configure(config):
            config.workerinput = {"workerid": "gw0"}
        """
    )
    pytester.makepyfile("def test_nothing(): pass")
    report = pytester.path / "r.json"
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--llmq-report={report}")
    assert result.ret == 0
    assert not report.exists()


# -- the plugin wiring, end to end (no model: the test appends fabricated results) -------------

FABRICATE = """
import os
from types import SimpleNamespace
from pytest_llmquant.verdicts import similarity_verdict

def test_fabricated(llmq_session):
    r = SimpleNamespace(n_tokens=512, mean_kld=float(os.environ["FAKE_KLD"]), kld_se=0.0003,
        p99_kld=0.03, max_kld=0.2, same_top=0.97, same_top_se=0.005, ppl_fp32=12.0,
        ppl_int8=12.1, ppl_ratio=1.008, rms_dp=0.01)
    llmq_session.results.append(similarity_verdict(
        r, "fake [dynamic-int8]", max_kl=1, min_same_top=0.5, max_ppl_ratio=2))
"""


def test_plugin_wiring_saves_compares_and_forces_exit_status(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real plugin hooks write, compare and force the exit status."""
    pytester.makepyfile(FABRICATE)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    base = pytester.path / "base.json"
    monkeypatch.setenv("FAKE_KLD", "0.004")
    saved = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--llmq-save-baseline={base}")
    assert saved.ret == 0
    saved.stdout.fnmatch_lines([f"pytest-llmquant: wrote baseline {base}"])
    monkeypatch.setenv("FAKE_KLD", "0.02")
    worse = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--llmq-baseline={base}")
    worse.assert_outcomes(passed=1)
    assert worse.ret == 1  # every test passed, the baseline comparison failed the run
    worse.stdout.fnmatch_lines(
        [
            "fake [[]dynamic-int8]: mean KLD regressed 0.004 → 0.02 (tolerance *)",
            f"pytest-llmquant: quality regressed against baseline {base}; this run's *",
        ]
    )
    quiet = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--no-summary", f"--llmq-baseline={base}"
    )
    assert quiet.ret == 1  # also without a terminal summary


def test_xdist_workers_send_their_results_to_the_report(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    import json as _json

    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.quant_memory(1.5)
        def test_a(llmq_pair):
            pass

        @pytest.mark.quant_similarity(max_kl=5, min_same_top=0.01, max_ppl_ratio=10)
        def test_b(llmq_pair):
            pass
        """
    )
    report = tmp_path / "report.json"
    result = pytester.runpytest_subprocess(
        f"--llmq-model={tiny_gpt2_dir}",
        "-n",
        "2",
        "--llmq-eval-tokens=256",
        f"--llmq-report={report}",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    data = _json.loads(report.read_text())
    [pair] = data["pairs"].values()
    assert sorted(g["gate"] for g in pair["gates"]) == ["quant_memory", "quant_similarity"]
