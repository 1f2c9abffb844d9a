"""``python -m pytest_llmquant.merge``: one report (or baseline) from a CI matrix's jobs.

Reports and baselines are told apart by their kind; mixing them, another schema, or the
same pair measured differently in two files is refused in one line (exit 2) unless
``--last-wins``. The same pair on CPU and CUDA is two entries (``name @ cuda``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fabricated import MEASURED_ON, OTHER, PAIR, fake_record, memory, similarity, speedup

from pytest_llmquant.baseline.store import load_baseline, write_baseline
from pytest_llmquant.merge import main
from pytest_llmquant.reporting.json_report import write_json_report


def job(tmp_path: Path, name: str, results: list[Any], device: str = "cpu") -> dict[str, Path]:
    """What one matrix job uploads: its report and its baseline."""
    record = fake_record(results, device=device)
    paths = {"report": tmp_path / f"{name}-report.json", "baseline": tmp_path / f"{name}-base.json"}
    write_json_report(record, paths["report"])
    write_baseline(record, paths["baseline"])
    return paths


def merge(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_reports_of_two_jobs_merge_into_one_with_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = job(tmp_path, "a", [similarity(PAIR), memory(PAIR)])
    b = job(tmp_path, "b", [similarity(OTHER, mean_kld=0.5)])
    out = tmp_path / "merged.json"
    status, text, err = merge(capsys, "--out", out, a["report"], b["report"])
    assert (status, err) == (0, "")
    assert text.splitlines() == [
        f"pytest-llmquant merge: 2 reports -> {out}: 2 pairs, 1 passed, 1 failed "
        "(3 gates, 1 failed)",
        f"  passed {PAIR}",
        f"  FAILED {OTHER}: quant_similarity",
    ]
    merged = json.loads(out.read_text())
    assert (merged["kind"], merged["schema_version"]) == ("pytest-llmquant report", 1)
    assert list(merged["pairs"]) == [PAIR, OTHER]
    assert merged["pairs"][PAIR]["source"] == "a-report.json"
    assert merged["pairs"][OTHER]["device"] == "cpu"
    assert merged["passed"] is False and merged["counts"] == {"gates": 3, "failed": 1}
    assert [s["file"] for s in merged["merged_from"]] == ["a-report.json", "b-report.json"]
    assert merged["settings"]["device"] == "cpu"  # shared by both jobs


def test_baselines_merge_and_a_job_compares_against_the_merged_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = job(tmp_path, "a", [similarity(PAIR, measured_on=dict(MEASURED_ON))])
    b = job(tmp_path, "b", [similarity(OTHER, measured_on=dict(MEASURED_ON))])
    out = tmp_path / "merged-base.json"
    status, text, _ = merge(capsys, "--out", out, a["baseline"], b["baseline"])
    assert status == 0
    assert text.splitlines() == [
        f"pytest-llmquant merge: 2 baselines -> {out}: 2 pairs",
        f"  {PAIR}",
        f"  {OTHER}",
    ]
    merged = load_baseline(out)  # a baseline --llmq-baseline accepts
    assert merged["pairs"][PAIR]["mean_kld"] == 0.0041


def test_the_same_pair_on_two_devices_is_two_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cpu = job(tmp_path, "cpu", [similarity(measured_on=dict(MEASURED_ON)), speedup()])
    cuda_on = {**MEASURED_ON, "device": "cuda"}
    cuda = job(tmp_path, "cuda", [similarity(measured_on=cuda_on), speedup(point=5)], "cuda")
    for kind in ("report", "baseline"):
        out = tmp_path / f"merged-{kind}.json"
        assert merge(capsys, "--out", out, cpu[kind], cuda[kind])[0] == 0
        assert list(json.loads(out.read_text())["pairs"]) == [PAIR, f"{PAIR} @ cuda"]
    again = tmp_path / "again.json"  # a merged file merges again without renaming
    assert merge(capsys, "--out", again, tmp_path / "merged-baseline.json", cpu["baseline"])[0] == 0
    assert list(json.loads(again.read_text())["pairs"]) == [PAIR, f"{PAIR} @ cuda"]


def test_the_same_pair_measured_differently_is_refused_unless_last_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = job(tmp_path, "a", [similarity(mean_kld=0.004)])
    b = job(tmp_path, "b", [similarity(mean_kld=0.005)])
    out = tmp_path / "merged.json"
    status, text, err = merge(capsys, "--out", out, a["baseline"], b["baseline"])
    assert (status, text) == (2, "")
    assert err == (
        f"pytest-llmquant merge: error: {a['baseline']} and {b['baseline']} both hold "
        f"'{PAIR}', measured differently (mean_kld 0.004 vs 0.005); merge one of them, or "
        "pass --last-wins to keep the later file's\n"
    )
    assert not out.exists()
    status, text, _ = merge(capsys, "--out", out, "--last-wins", a["baseline"], b["baseline"])
    assert status == 0
    assert f"replaced (--last-wins): {PAIR}: {a['baseline']} replaced by {b['baseline']}" in text
    assert load_baseline(out)["pairs"][PAIR]["mean_kld"] == 0.005
    same = merge(capsys, "--out", out, a["baseline"], a["baseline"])  # a re-run of the merge
    assert same[0] == 0


@pytest.mark.parametrize(
    ("second", "words"),
    [
        ("report", "(a baseline) with {b} (a report); merge reports and baselines separately"),
        ("schema", "(schema_version 1) with {b} (schema_version 2); merge files written by"),
        ("kind", "{b} has kind 'something else', not 'pytest-llmquant report' or"),
        ("missing", "{b} does not exist"),
        ("garbage", "{b} is not valid JSON (line 1: "),
    ],
)
def test_files_that_cannot_be_merged_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], second: str, words: str
) -> None:
    a = job(tmp_path, "a", [similarity()])
    b = tmp_path / "b.json"
    data = json.loads(a["baseline"].read_text())
    if second == "report":
        b = job(tmp_path, "b", [memory(OTHER)])["report"]
    elif second == "schema":
        b.write_text(json.dumps({**data, "schema_version": 2}))
    elif second == "kind":
        b.write_text(json.dumps({**data, "kind": "something else"}))
    elif second == "garbage":
        b.write_text("{oops")
    status, _, err = merge(capsys, "--out", tmp_path / "m.json", a["baseline"], b)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("pytest-llmquant merge: error: ")
    assert words.format(b=b) in err


def test_two_real_jobs_on_the_tiny_gpt2_merge(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two matrix cells (two schemes) run the real plugin; the command merges their files,
    and a later run of one cell compares cleanly against the merged baseline."""
    from pytest_llmquant.evaltext import default_corpus

    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.quant_similarity(max_kl=5, min_same_top=0.01, max_ppl_ratio=10)
        @pytest.mark.quant_memory(1.5)
        def test_gates(llmq_pair):
            pass
        """
    )
    common = [f"--llmq-model={tiny_gpt2_dir}", "--llmq-eval-tokens=128", "-p", "no:cacheprovider"]
    files = []
    for scheme in ("dynamic-int8", "weight-only-int8"):
        report, base = pytester.path / f"{scheme}.json", pytester.path / f"{scheme}-base.json"
        result = pytester.runpytest_inprocess(
            *common, f"--llmq-scheme={scheme}", f"--llmq-report={report}",
            f"--llmq-save-baseline={base}",
        )  # fmt: skip
        result.assert_outcomes(passed=1)
        files.append((report, base))
    merged_report, merged_base = pytester.path / "merged.json", pytester.path / "merged-base.json"
    for out, inputs in (
        (merged_report, [r for r, _ in files]),
        (merged_base, [b for _, b in files]),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "pytest_llmquant.merge", "--out", str(out), *map(str, inputs)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        print(done.stdout)
    report = json.loads(merged_report.read_text())
    assert report["passed"] is True and report["counts"] == {"gates": 4, "failed": 0}
    assert [p.split(" [")[1] for p in report["pairs"]] == ["dynamic-int8]", "weight-only-int8]"]
    baseline = load_baseline(merged_base)
    for entry in baseline["pairs"].values():
        assert entry["measured_on"] == {  # what the real session recorded
            "eval_text": "built-in corpus",
            "eval_text_sha256": hashlib.sha256(default_corpus().encode()).hexdigest(),
            "eval_tokens": 128,
            "window": 256,  # the tiny model's 256 positions cap the default 512
            "reference_dtype": "float32",
            "device": "cpu",
            "int8_runtime": "torch",
            "reference_runtime": "torch",
        }
        assert entry["mean_kld_se"] > 0 and entry["memory_ratio"] > 1.5
    print(merged_report.read_text())
    again = pytester.runpytest_inprocess(
        *common, "--llmq-scheme=dynamic-int8", f"--llmq-baseline={merged_base}"
    )
    assert again.ret == 0
    again.stdout.fnmatch_lines(
        [
            "note: * [[]weight-only-int8]: in the baseline but not measured in this run",
            f"pytest-llmquant: no regression against baseline {merged_base}",
        ]
    )


def test_merging_needs_neither_pytest_nor_torch(tmp_path: Path) -> None:
    """The matrix's merge job installs the package with --no-deps."""
    a = job(tmp_path, "a", [similarity(PAIR)])
    b = job(tmp_path, "b", [memory(OTHER)])
    out = tmp_path / "merged.json"
    blocked = (
        "import runpy, sys; sys.modules.update(pytest=None, torch=None, transformers=None); "
        "sys.argv = sys.argv[1:]; runpy.run_module('pytest_llmquant.merge', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked, "merge", "--out", str(out), str(a["report"]), str(b["report"])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert list(json.loads(out.read_text())["pairs"]) == [PAIR, OTHER]


def test_the_matrix_example_uses_real_options_and_merges_what_the_cells_upload() -> None:
    import re

    yaml = pytest.importorskip("yaml")
    from pytest_llmquant.settings import OPTIONS

    path = Path(__file__).resolve().parent.parent / "examples" / "ci" / "matrix.yml"
    text = path.read_text()
    flags = set(re.findall(r"--llmq-[a-z-]+", text))
    assert flags - {o.cli for o in OPTIONS} == set()  # no flag the plugin does not have
    assert {"--llmq-report", "--llmq-save-baseline", "--llmq-baseline"} <= flags
    jobs = yaml.safe_load(text)["jobs"]
    assert set(jobs["gate"]["strategy"]["matrix"]) >= {"model", "scheme", "device"}
    steps = {s.get("uses", "").split("@")[0] or s.get("name"): s for s in jobs["gate"]["steps"]}
    assert steps["actions/upload-artifact"]["with"]["path"] == "out/"
    assert "--llmq-report=out/report.json --llmq-save-baseline=out/baseline.json" in text
    assert jobs["merge"]["needs"] == "gate"
    merge_run = next(s["run"] for s in jobs["merge"]["steps"] if "merge" in s.get("run", ""))
    assert "--out merged/report.json cells/*/report.json" in merge_run
    assert "--out merged/baseline.json cells/*/baseline.json" in merge_run
    restored = steps["actions/cache/restore"]["with"]["path"]
    saved = next(
        s for s in jobs["merge"]["steps"] if s.get("uses", "").startswith("actions/cache/save")
    )
    assert restored == saved["with"]["path"] == "out/llmq-baseline.json"
