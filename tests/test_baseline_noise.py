"""Baselines that know their noise, and refuse to compare other texts or settings.

A similarity metric regresses only when its change exceeds its tolerance *and* z
combined standard errors, sqrt(se_old² + se_new²) (z = 3, ``--llmq-baseline-z``). A
baseline records what it was measured on (text SHA-256, scored tokens, window,
reference dtype, device); comparing numbers from another text or setting is a
one-line error (exit 4) that says what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fabricated import (
    MEASURED_ON,
    PAIR,
    Terminal,
    fake_record,
    fake_settings,
    memory,
    similarity,
)

from pytest_llmquant.baseline.compare import compare_baselines, compare_to_baseline
from pytest_llmquant.baseline.store import baseline_dict, load_baseline, write_baseline
from pytest_llmquant.errors import LlmqUsageError
from pytest_llmquant.reporting.finish import finish_session


def measured(**kw: Any) -> Any:
    """A similarity result as a real session records it, text and setting included."""
    return similarity(measured_on=dict(MEASURED_ON), **kw)


def saved(tmp_path: Path, *results: Any) -> dict[str, Any]:
    path = tmp_path / "baseline.json"
    write_baseline(fake_record(list(results)), path)
    return load_baseline(path)


# -- the noise rule --------------------------------------------------------------------------


def test_a_change_within_tolerance_but_beyond_noise_passes(tmp_path: Path) -> None:
    # SE 0.0001 each: noise 3 × 0.000141 = 0.000424; change 0.0014 is 10 SEs, but the
    # tolerance allows up to 0.0041 × 1.25 + 0.001 = 0.006125
    baseline = saved(tmp_path, measured(kld_se=0.0001))
    notes: list[str] = []
    now = fake_record([measured(mean_kld=0.0055, kld_se=0.0001)])
    assert compare_to_baseline(now, baseline, notes=notes) == []
    assert notes == []


def test_a_change_beyond_tolerance_but_within_noise_passes_with_a_note(tmp_path: Path) -> None:
    # SE 0.002 each (a short, noisy text): 3 × 0.00283 = 0.00849 > change 0.0029
    baseline = saved(tmp_path, measured(kld_se=0.002))
    notes: list[str] = []
    now = fake_record([measured(mean_kld=0.007, kld_se=0.002)])
    assert compare_to_baseline(now, baseline, notes=notes) == []
    assert notes == [
        f"{PAIR}: mean KLD 0.0041 → 0.007 is beyond the tolerance +25% relative + 0.001 "
        "absolute, limit 0.00613, but within the noise (change 0.0029 ≤ 3 × SE 0.00283 = "
        "0.00849): not a regression"
    ]


def test_a_change_beyond_tolerance_and_noise_regresses_naming_both(tmp_path: Path) -> None:
    baseline = saved(tmp_path, measured(kld_se=0.002))
    now = fake_record([measured(mean_kld=0.015, kld_se=0.002)])
    assert compare_to_baseline(now, baseline) == [
        f"{PAIR}: mean KLD regressed 0.0041 → 0.015 (tolerance +25% relative + 0.001 "
        "absolute, limit 0.00613; change 0.0109 > 3 × SE 0.00283 = 0.00849)"
    ]


@pytest.mark.parametrize(
    ("z", "regressed"), [(0.0, True), (1.0, True), (3.0, False), (10.0, False)]
)
def test_z_sets_how_many_standard_errors_count_as_noise(
    tmp_path: Path, z: float, regressed: bool
) -> None:
    baseline = saved(tmp_path, measured(same_top_se=0.005))  # combined SE 0.00707
    now = fake_record([measured(same_top=0.95, same_top_se=0.005)])  # change 0.02: 2.8 SE
    assert bool(compare_to_baseline(now, baseline, z=z)) is regressed


def test_each_similarity_metric_uses_its_own_standard_error(tmp_path: Path) -> None:
    baseline = saved(tmp_path, measured(ppl_ratio_se=0.01, same_top_se=0.001))
    now = fake_record(
        [measured(ppl_ratio=1.03, ppl_ratio_se=0.01, same_top=0.95, same_top_se=0.001)]
    )
    notes: list[str] = []
    assert compare_to_baseline(now, baseline, notes=notes) == [
        f"{PAIR}: same-top-1 regressed 0.970 → 0.950 (tolerance -0.01 absolute, limit "
        "0.960; change 0.02 > 3 × SE 0.00141 = 0.00424)"
    ]
    assert [n.split(" is beyond")[0] for n in notes] == [f"{PAIR}: PPL ratio 1.0080 → 1.0300"]


def test_metrics_without_standard_errors_are_judged_on_tolerance_alone(tmp_path: Path) -> None:
    baseline = saved(tmp_path, measured(), memory(ratio=3.8))
    assert compare_to_baseline(fake_record([measured(), memory(ratio=3.0)]), baseline) == [
        f"{PAIR}: memory ratio (weights) regressed 3.80x → 3.00x (tolerance -5% relative, "
        "limit 3.61x)"
    ]


# -- what a baseline was measured on --------------------------------------------------------


def test_a_baseline_records_text_tokens_window_dtype_device_and_errors() -> None:
    data = baseline_dict(fake_record([measured()]))
    assert data["pairs"][PAIR] == {
        "mean_kld": 0.0041,
        "mean_kld_se": 0.0003,
        "same_top": 0.97,
        "same_top_se": 0.005,
        "ppl_ratio": 1.008,
        "ppl_ratio_se": 0.001,
        "measured_on": {
            "eval_text": "built-in corpus",
            "eval_text_sha256": MEASURED_ON["eval_text_sha256"],
            "eval_tokens": 512,
            "window": 512,
            "reference_dtype": "float32",
            "device": "cpu",
            "int8_runtime": "torch",
            "reference_runtime": "torch",
        },
    }


def test_the_reference_dtype_of_a_pair_without_similarity_comes_from_its_summary() -> None:
    record = fake_record([memory()], pairs={PAIR: {"reference_dtype": "bfloat16"}})
    assert baseline_dict(record)["pairs"][PAIR]["measured_on"] == {
        "reference_dtype": "bfloat16",
        "device": "cpu",
        "int8_runtime": "torch",
        "reference_runtime": "torch",
    }


def test_a_baseline_of_another_runtime_is_not_compared() -> None:
    """The same pair name measured by llama.cpp and by torch: the numbers answer different
    questions, so the comparison is refused, naming the runtimes."""
    from pytest_llmquant.baseline.comparable import check_comparable

    torch_run = baseline_dict(fake_record([measured()]))
    llama_run = baseline_dict(
        fake_record([measured()], pairs={PAIR: {"int8": {"runtime": "llama.cpp"}}})
    )
    with pytest.raises(LlmqUsageError, match="INT8 runtime torch in the baseline, llama.cpp here"):
        check_comparable(torch_run, llama_run)


OTHER_TEXT = "9ab1c2d3e4f5" + "1" * 52


@pytest.mark.parametrize(
    ("changed", "difference"),
    [
        (
            {"eval_text": "eval.txt", "eval_text_sha256": OTHER_TEXT},
            "evaluation text sha256 3f2a9b1c0d4e… (built-in corpus) in the baseline, "
            "sha256 9ab1c2d3e4f5… (eval.txt) here",
        ),
        ({"window": 256}, "window 512 in the baseline, 256 here"),
        ({"reference_dtype": "bfloat16"}, "reference dtype float32 in the baseline, bfloat16 here"),
    ],
)
def test_another_text_or_setting_is_a_one_line_error_saying_what_differs(
    tmp_path: Path, changed: dict[str, Any], difference: str
) -> None:
    baseline = saved(tmp_path, measured())
    now = fake_record([similarity(measured_on={**MEASURED_ON, **changed})])
    with pytest.raises(LlmqUsageError) as info:
        compare_to_baseline(now, baseline, source="base.json")
    assert str(info.value) == (
        f"baseline base.json was measured on another text or setting than this run: "
        f"{difference}; run with the baseline's settings, or re-create it with "
        "--llmq-save-baseline=base.json"
    )


def test_every_difference_is_named_once_and_pairs_only_when_not_all_differ(
    tmp_path: Path,
) -> None:
    other = "tiny [dynamic-int8]"
    baseline = saved(tmp_path, measured(), similarity(other, measured_on=dict(MEASURED_ON)))
    now = fake_record(
        [
            similarity(n_tokens=256, measured_on={**MEASURED_ON, "reference_dtype": "float16"}),
            similarity(other, n_tokens=256, measured_on=dict(MEASURED_ON)),
        ]
    )
    with pytest.raises(LlmqUsageError, match="^the baseline was measured") as info:
        compare_to_baseline(now, baseline)
    message = str(info.value)
    assert "scored tokens 512 in the baseline, 256 here; " in message
    assert f"reference dtype float32 in the baseline, float16 here for {PAIR};" in message
    assert message.endswith("--llmq-save-baseline=FILE") and "\n" not in message


def test_the_built_in_corpus_of_another_python_is_another_text() -> None:
    old = {
        "versions": {"python": "3.11.7"},
        "pairs": {PAIR: {"mean_kld": 0.004, "measured_on": dict(MEASURED_ON)}},
    }
    new = {
        "versions": {"python": "3.12.1"},
        "pairs": {
            PAIR: {"mean_kld": 0.004, "measured_on": {**MEASURED_ON, "eval_text_sha256": "ab"}}
        },
    }
    with pytest.raises(LlmqUsageError, match=r"\(the built-in corpus of Python 3.11.7 vs 3.12.1\)"):
        compare_baselines(old, new)


def test_a_baseline_that_records_no_setting_is_compared_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    metrics = {"mean_kld": 0.0041, "same_top": 0.97, "ppl_ratio": 1.008}
    path.write_text(json.dumps({"schema_version": 1, "pairs": {PAIR: metrics}}))
    notes: list[str] = []
    assert compare_to_baseline(fake_record([measured()]), load_baseline(path), notes=notes) == []
    assert notes == [
        "the baseline does not record what it was measured on (evaluation text, scored "
        "tokens, window, reference dtype, device) nor its standard errors: an older file, "
        "compared on its tolerances only; re-save it to have both checked"
    ]


def test_a_merged_baseline_is_looked_up_by_pair_and_device(tmp_path: Path) -> None:
    cuda = {**MEASURED_ON, "device": "cuda"}
    old = {
        "pairs": {
            PAIR: {"mean_kld": 0.0041, "measured_on": dict(MEASURED_ON)},
            f"{PAIR} @ cuda": {"mean_kld": 0.0020, "measured_on": cuda},
            **{f"m{i} [dynamic-int8]": {"mean_kld": 0.001} for i in range(4)},
        }
    }
    notes: list[str] = []
    record = fake_record([similarity(mean_kld=0.0045, measured_on=cuda)], device="cuda")
    [regression] = compare_to_baseline(record, old, notes=notes)
    assert regression.startswith(f"{PAIR}: mean KLD regressed 0.002 → 0.0045")
    assert notes[-1:] == [  # the other jobs' pairs, in one line
        "5 pairs in the baseline were not measured in this run "
        f"({PAIR}, m0 [dynamic-int8], m1 [dynamic-int8], …)"
    ]


# -- the end of the run ----------------------------------------------------------------------


def test_finish_session_refuses_another_setting_with_exit_4(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    write_baseline(fake_record([measured()]), base)
    record = fake_record(
        [similarity(mean_kld=0.5, measured_on={**MEASURED_ON, "device": "cuda"})],
        settings=fake_settings(baseline=str(base)),
    )
    tr = Terminal()
    assert finish_session(record, tr) == 4
    assert tr.lines == [
        f"pytest-llmquant: baseline {base} was measured on another text or setting than this "
        "run: device cpu in the baseline, cuda here; run with the baseline's settings, or "
        f"re-create it with --llmq-save-baseline={base}"
    ]
    assert not (tmp_path / "base.obtained.json").exists()  # nothing was compared


def test_finish_session_uses_the_z_setting(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    write_baseline(fake_record([measured(kld_se=0.002)]), base)
    results = [measured(mean_kld=0.007, kld_se=0.002)]  # beyond tolerance, 1 SE
    for z, status in ((3.0, None), (0.5, 1)):
        record = fake_record(results, settings=fake_settings(baseline=str(base), baseline_z=z))
        assert finish_session(record, Terminal()) == status


FABRICATE = """
import os
from types import SimpleNamespace
from pytest_llmquant.verdicts import similarity_verdict

def test_fabricated(llmq_session):
    r = SimpleNamespace(n_tokens=512, mean_kld=float(os.environ["FAKE_KLD"]), kld_se=0.002,
        p99_kld=0.03, max_kld=0.2, same_top=0.97, same_top_se=0.005, ppl_fp32=12.0,
        ppl_int8=12.1, ppl_ratio=1.008, ppl_ratio_se=0.001, rms_dp=0.01,
        measured_on={"eval_text": "built-in corpus", "eval_text_sha256": os.environ["FAKE_SHA"],
                     "window": 512, "reference_dtype": "float32", "device": "cpu"})
    llmq_session.results.append(similarity_verdict(
        r, "fake [dynamic-int8]", max_kl=1, min_same_top=0.5, max_ppl_ratio=2))
"""


def test_plugin_applies_z_and_refuses_another_text(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real hooks: the z option, the obtained file, and exit 4 on another text."""
    pytester.makepyfile(FABRICATE)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    base = pytester.path / "base.json"
    run = ["-p", "no:cacheprovider"]
    monkeypatch.setenv("FAKE_SHA", "aa" * 32)
    monkeypatch.setenv("FAKE_KLD", "0.004")
    assert pytester.runpytest_inprocess(*run, f"--llmq-save-baseline={base}").ret == 0
    monkeypatch.setenv("FAKE_KLD", "0.008")  # beyond the tolerance, 1.4 combined SEs
    assert pytester.runpytest_inprocess(*run, f"--llmq-baseline={base}").ret == 0
    strict = pytester.runpytest_inprocess(*run, f"--llmq-baseline={base}", "--llmq-baseline-z=1")
    assert strict.ret == 1
    strict.stdout.fnmatch_lines(["*mean KLD regressed 0.004 → 0.008 (*; change 0.004 > 1 × SE *)"])
    assert load_baseline(pytester.path / "base.obtained.json")["pairs"]
    monkeypatch.setenv("FAKE_SHA", "bb" * 32)
    other = pytester.runpytest_inprocess(*run, f"--llmq-baseline={base}")
    assert other.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in other.stdout.lines if "another text or setting" in line]
    assert len(lines) == 1 and "evaluation text sha256 aaaaaaaaaaaa…" in lines[0]
