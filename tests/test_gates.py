"""The three gate markers, each shown to pass and to fail, with the message checked.

These run real measurements on the tiny GPT-2 with thresholds far on either side of
the truth, so the verdict is certain; the decision logic itself is tested with
injected samples in test_stats.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def run(pytester: pytest.Pytester, model: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(
        f"--llmq-model={model}",
        "-p",
        "no:cacheprovider",
        "--llmq-eval-tokens=256",
        "--llmq-time-budget=3",
        *args,
    )


GATE = """
import pytest

@pytest.mark.{mark}
def test_gate(llmq_pair):
    pass
"""


def test_similarity_passes_with_loose_bounds(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    pytester.makepyfile(
        GATE.format(mark="quant_similarity(max_kl=5.0, min_same_top=0.01, max_ppl_ratio=10)")
    )
    result = run(pytester, tiny_gpt2_dir, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*quant_similarity passed for tiny-gpt2* [[]weight-only-int8]: mean KLD * ≤ 5*"]
    )


def test_similarity_fails_with_a_readable_report(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    pytester.makepyfile(
        GATE.format(mark="quant_similarity(max_kl=1e-9, min_same_top=1.0, max_ppl_ratio=1.0000001)")
    )
    result = run(pytester, tiny_gpt2_dir)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*quant_similarity failed for tiny-gpt2* [[]weight-only-int8]: mean KLD * ± * > 1e-09*(over 256 tokens)",
            "metric*FP32*INT8*ratio*threshold*verdict",
            "mean KLD*≤ 1e-09*FAIL",
        ]
    )


def test_similarity_uses_ini_defaults(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makeini("[pytest]\nllmq_max_kl = 1e-9\n")
    pytester.makepyfile(GATE.format(mark="quant_similarity(min_same_top=0.01, max_ppl_ratio=10)"))
    result = run(pytester, tiny_gpt2_dir)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*mean KLD * > 1e-09 (over 256 tokens)"])


def test_marker_argument_wins_over_cli(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makepyfile(
        GATE.format(mark="quant_similarity(max_kl=5.0, min_same_top=0.01, max_ppl_ratio=10)")
    )
    run(pytester, tiny_gpt2_dir, "--llmq-max-kl=1e-9").assert_outcomes(passed=1)


def test_speedup_passes_a_low_bar(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makepyfile(GATE.format(mark="quant_speedup(0.01)"))
    result = run(pytester, tiny_gpt2_dir, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*quant_speedup passed for tiny-gpt2* [[]weight-only-int8]: INT8 *x faster than FP32 (*% CI *–*, * interleaved pairs, * threads) ≥ 0.01x*"
        ]
    )


def test_speedup_fails_an_impossible_bar(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makepyfile(GATE.format(mark="quant_speedup(100)"))
    result = run(pytester, tiny_gpt2_dir)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*quant_speedup failed for tiny-gpt2* [[]weight-only-int8]: INT8 *x faster than FP32 (*% CI *) < 100x*",
            "ms/token*≥ 100x*FAIL",
        ]
    )


def test_memory_passes_and_fails(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.quant_memory(1.5)
        def test_small_enough(llmq_pair):
            pass

        @pytest.mark.quant_memory(50)
        def test_impossible(llmq_pair):
            pass
    """)
    result = run(pytester, tiny_gpt2_dir)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*quant_memory failed for tiny-gpt2* [[]weight-only-int8]: weights * MB → * MB (ratio *x < 50x)*"
        ]
    )


def test_marked_body_runs_first_and_a_failing_body_is_not_measured(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.quant_memory(50)
        def test_body_fails(llmq_pair):
            assert False, "body failed first"
    """)
    result = run(pytester, tiny_gpt2_dir)
    result.assert_outcomes(failed=1)
    assert "body failed first" in result.stdout.str()
    assert "quant_memory failed" not in result.stdout.str()


def test_several_markers_on_one_test_and_a_test_without_llmq_pair(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.quant_memory(50)
        @pytest.mark.quant_similarity(max_kl=1e-9, min_same_top=0.01, max_ppl_ratio=10)
        def test_two_gates():  # no fixture asked for: the plugin supplies the pair
            pass
    """)
    result = run(pytester, tiny_gpt2_dir)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "quant_memory failed" in out and "quant_similarity failed" in out


def test_summary_table_per_model(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makepyfile(GATE.format(mark="quant_memory(1.5)"))
    result = run(pytester, tiny_gpt2_dir)
    result.stdout.fnmatch_lines(
        [
            "*pytest-llmquant summary*",
            "tiny-gpt2* [[]weight-only-int8]  (* threads, device cpu)",
            "metric*FP32*INT8*ratio*threshold*verdict",
            "memory (weights)*MB*MB*x*≥ 1.5x*ok",
        ]
    )


@pytest.mark.parametrize(
    "mark, message",
    [
        (
            "quant_speedup(-1)",
            "@pytest.mark.quant_speedup min_speedup=-1 must be a finite number > 0, e.g. @pytest.mark.quant_speedup(1.2)",
        ),
        (
            "quant_speedup(0)",
            "@pytest.mark.quant_speedup min_speedup=0 must be a finite number > 0",
        ),
        (
            "quant_speedup(float('nan'))",
            "@pytest.mark.quant_speedup min_speedup=nan must be a finite number > 0",
        ),
        (
            "quant_speedup('fast')",
            "@pytest.mark.quant_speedup min_speedup='fast' must be a finite number > 0",
        ),
        (
            "quant_similarity(max_kld=0.1)",
            "bad arguments to @pytest.mark.quant_similarity (got an unexpected keyword argument 'max_kld'); valid arguments: max_kl, min_same_top, max_ppl_ratio",
        ),
        (
            "quant_similarity(min_same_top=1.5)",
            "@pytest.mark.quant_similarity min_same_top=1.5 must be a finite number in (0, 1]",
        ),
        (
            "quant_memory(2.0, kind='gpu')",
            "@pytest.mark.quant_memory(kind='gpu') is not a memory kind; use one of weights, file, peak_rss, vram",
        ),
        (
            "quant_memory(True)",
            "@pytest.mark.quant_memory min_ratio=True must be a finite number > 0",
        ),
    ],
)
def test_bad_marker_arguments_are_collection_errors(
    pytester: pytest.Pytester, mark: str, message: str
) -> None:
    pytester.makepyfile(GATE.format(mark=mark))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # pytest's exit code for collection errors
    result.stdout.fnmatch_lines(
        [f"test_bad_marker_arguments_are_collection_errors.py::test_gate: {message}*"]
    )
    assert "Traceback" not in result.stdout.str()
