"""Every setting is a CLI flag and an ini key; the CLI flag wins."""

from __future__ import annotations

import pytest

SHOW = """
def test_show(llmq_session, pytestconfig):
    from pytest_llmquant import options
    print("SCHEMES", llmq_session.schemes)
    print("THREADS", llmq_session.threads)
    print("DEVICE", llmq_session.device)
    print("MAXKL", options.get(pytestconfig, "llmq_max_kl"))
"""


def test_defaults_without_ini_or_cli(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW)
    result = pytester.runpytest_inprocess("-s")
    result.assert_outcomes(passed=1)
    from pytest_llmquant.schemes import DEFAULT_SCHEME

    result.stdout.fnmatch_lines([f"*SCHEMES ?'{DEFAULT_SCHEME}'?", "DEVICE cpu", "MAXKL 0.01"])


def test_ini_sets_values(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nllmq_threads = 1\nllmq_max_kl = 0.5\nllmq_scheme = dynamic-int8\n")
    pytester.makepyfile(SHOW)
    result = pytester.runpytest_inprocess("-s")
    result.stdout.fnmatch_lines(["THREADS 1", "MAXKL 0.5"])


def test_cli_wins_over_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nllmq_threads = 1\nllmq_max_kl = 0.5\n")
    pytester.makepyfile(SHOW)
    result = pytester.runpytest_inprocess("-s", "--llmq-threads=2", "--llmq-max-kl=0.02")
    result.stdout.fnmatch_lines(["THREADS 2", "MAXKL 0.02"])


def test_bad_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW)
    result = pytester.runpytest_inprocess("--llmq-threads=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--llmq-threads='0': must be a positive integer, got 0; fix the value*"]
    )


def test_unknown_scheme_lists_the_valid_ones(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW)
    result = pytester.runpytest_inprocess("--llmq-scheme=int4-magic")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*unknown --llmq-scheme 'int4-magic'; valid schemes: *dynamic-int8*"]
    )


def test_every_option_is_in_help(pytester: pytest.Pytester) -> None:
    from pytest_llmquant.options import OPTIONS

    result = pytester.runpytest_inprocess("--help")
    text = result.stdout.str()
    for opt in OPTIONS:
        assert opt.cli in text, opt.cli
        assert f"{opt.name} (" in text, opt.name  # the ini key is listed too


def test_markers_are_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.quant_similarity(max_kl=None, min_same_top=None, max_ppl_ratio=None): *",
            "@pytest.mark.quant_speedup(min_speedup=None): *",
            "@pytest.mark.quant_memory(min_ratio=None, kind='weights'): *",
        ]
    )
