"""``--llmq-suite``: the zero-code regression suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmquant.suite import CHECKS

TINY = ("--llmq-min-speedup=0.05", "--llmq-min-memory-ratio=1.5")  # a 0.6 MB model: overhead-bound


def test_suite_runs_with_no_user_tests_and_lists_every_check(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_gpt2_dir}",
        "--llmq-suite",
        "--llmq-eval-tokens=256",
        "--llmq-time-budget=3",
        "-p",
        "no:cacheprovider",
        "-v",
        *TINY,
    )
    result.assert_outcomes(passed=len(CHECKS))
    label = tiny_gpt2_dir.name
    result.stdout.fnmatch_lines_random(
        [f"llmq-suite::{check}[[]{label}-weight-only-int8] PASSED*" for check in CHECKS]
    )


def test_suite_thresholds_come_from_the_cli(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_gpt2_dir}",
        "--llmq-suite",
        "--llmq-eval-tokens=256",
        "-p",
        "no:cacheprovider",
        "--llmq-max-kl=1e-12",
        "-k",
        "similarity or coverage",
    )
    result.assert_outcomes(passed=1, failed=1, deselected=len(CHECKS) - 2)
    result.stdout.fnmatch_lines(["*quant_similarity failed for *: mean KLD * > 1e-12*"])


def test_without_the_flag_nothing_is_added(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest_inprocess(f"--llmq-model={tiny_gpt2_dir}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_speed_gate_skips_with_its_reason_under_xdist(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    result = pytester.runpytest_subprocess(
        f"--llmq-model={tiny_gpt2_dir}",
        "--llmq-suite",
        "-n",
        "2",
        "-p",
        "no:cacheprovider",
        "-k",
        "speedup or benchmark or coverage",
        "-rs",
    )
    result.assert_outcomes(passed=1, skipped=3)
    # xdist decides which skip is reported first, so match each line on its own.
    result.stdout.fnmatch_lines(
        [
            "*timing gates do not run under xdist: parallel workers share the CPU and distort the "
            "timings; run them without -n*"
        ]
    )
    result.stdout.fnmatch_lines(["*pytest-benchmark is disabled here*"])
