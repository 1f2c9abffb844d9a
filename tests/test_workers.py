"""Under xdist, a model pair stays on one worker (``--dist loadgroup``), and the
controller's reports still have every pair's coverage, origin and load time."""

from __future__ import annotations

import json

import pytest

TESTS = """
import os, pytest

@pytest.mark.parametrize("n", range(3))
def test_uses_the_pair(llmq_pair, n):
    with open(os.environ["WORKERS_FILE"], "a") as f:
        f.write(f"{llmq_pair.name}\\t{os.environ.get('PYTEST_XDIST_WORKER')}\\n")
"""


def test_each_pair_runs_on_one_worker_and_the_controller_reports_it(
    pytester: pytest.Pytester,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tiny_models import make_tiny_gpt2

    first = make_tiny_gpt2(tmp_path_factory.mktemp("model-a"))
    second = make_tiny_gpt2(tmp_path_factory.mktemp("model-b"), seed=1)
    pytester.makepyfile(TESTS)
    monkeypatch.setenv("WORKERS_FILE", str(pytester.path / "workers.txt"))
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        f"--llmq-model={first}",
        f"--llmq-model={second}",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        f"--llmq-report={report}",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=6)
    rows = [line.split("\t") for line in (pytester.path / "workers.txt").read_text().splitlines()]
    workers: dict[str, set[str]] = {}
    for pair, worker in rows:
        workers.setdefault(pair, set()).add(worker)
    assert len(workers) == 2 and all(len(w) == 1 for w in workers.values()), workers
    data = json.loads(report.read_text())
    assert set(data["pairs"]) == set(workers)
    for pair in data["pairs"].values():
        assert pair["coverage"]["quantized"] == 9
    assert len(data["load_times_s"]) == 2
    for pair in data["pairs"].values():
        assert pair["int8"]["route"] == "scheme" and pair["reference_dtype"] == "float32"
    result.stdout.fnmatch_lines(
        ["*: FP32 loaded in * s*", "*quantized *% of weight bytes: 9 of 9 linear layers*"]
    )
