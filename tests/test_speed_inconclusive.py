"""The speed gate's third verdict: "inconclusive" when the CPU was too busy to judge.

First the verdict's message under each ``--llmq-speed-inconclusive`` policy, on made-up
results; then the marker end to end on the tiny GPT-2, with the decode steps and the
CPU's load injected (no real load: a real one would make these tests as flaky as the
machine), showing a pass, a fail and an inconclusive run with their messages, and the
contention figure in the JSON report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmquant.errors import LlmqSkip
from pytest_llmquant.speed.timing import SpeedupResult
from pytest_llmquant.verdicts import speedup_verdict

PAIR = "smollm2-135m [weight-only-int8]"


def result(verdict: str, *, stalled: float = 0.41, others: float = 1.0) -> SpeedupResult:
    return SpeedupResult(
        verdict=verdict,  # type: ignore[arg-type]
        speedup=2.84,
        ci_low=2.31,
        ci_high=3.92,
        confidence=0.99,
        close=False,
        rule="",
        threshold=1.57,
        n_pairs=64,
        reference_ms_per_token=275.0,
        int8_ms_per_token=96.8,
        reference_tokens_per_s=3.6,
        int8_tokens_per_s=10.3,
        threads=2,
        new_tokens=32,
        prompts=4,
        wall_s=6.0,
        cpu_cores=2,
        cpu_stalled=stalled,
        cpu_others=others,
    )


INCONCLUSIVE = (
    "quant_speedup inconclusive for smollm2-135m [weight-only-int8]: the CPU was busy (3.0 "
    "threads wanted the 2 cores (the gate's 2 and 1.0 from other processes) and the gate's "
    "threads waited for a core 41% of the time), so the pairs may be biased; INT8 2.84x "
    "faster than FP32 (99% CI 2.31–3.92, 64 interleaved pairs, 2 threads) vs 1.57x; rerun "
    "on a quiet machine or with fewer --llmq-threads, or pass "
    "--llmq-speed-inconclusive=skip|pass"
)


def test_an_inconclusive_gate_fails_by_default_with_the_evidence() -> None:
    gate = speedup_verdict(result("inconclusive"), PAIR, min_speedup=1.57)
    assert not gate.passed and gate.message == INCONCLUSIVE
    assert gate.close  # shown in the summary like a close call
    assert gate.measurement["verdict"] == "inconclusive"
    assert gate.measurement["cpu_stalled"] == 0.41 and gate.measurement["cpu_others"] == 1.0
    rows = {row.metric: row for row in gate.rows}
    assert rows["ms/token"].ok is None  # neither ok nor FAIL: not judged
    assert rows["CPU contention"].ratio == "waited 41%, others 1.0 of 2 cores"


def test_an_inconclusive_gate_can_count_as_passed_and_says_so() -> None:
    gate = speedup_verdict(result("inconclusive"), PAIR, min_speedup=1.57, inconclusive="pass")
    assert gate.passed
    assert gate.message == INCONCLUSIVE + " (counted as passed: --llmq-speed-inconclusive=pass)"


def test_an_inconclusive_gate_can_skip_with_the_evidence_as_reason() -> None:
    with pytest.raises(LlmqSkip, match=r"^inconclusive for smollm2-135m .*41% of the time"):
        speedup_verdict(result("inconclusive"), PAIR, min_speedup=1.57, inconclusive="skip")


def test_a_pass_on_a_busy_cpu_says_it_was_busy() -> None:
    gate = speedup_verdict(result("pass"), PAIR, min_speedup=0.1)
    assert gate.passed
    assert gate.message.endswith(
        "≥ 0.1x; decided on a busy CPU (3.0 threads wanted the 2 cores (the gate's 2 and 1.0 "
        "from other processes) and the gate's threads waited for a core 41% of the time): the "
        "interval clears the threshold by more than contention can bias it"
    )


def test_a_pass_on_a_quiet_cpu_reads_as_before() -> None:
    gate = speedup_verdict(result("pass", stalled=0.02, others=0.1), PAIR, min_speedup=1.5)
    assert gate.message == (
        "quant_speedup passed for smollm2-135m [weight-only-int8]: INT8 2.84x faster than "
        "FP32 (99% CI 2.31–3.92, 64 interleaved pairs, 2 threads) ≥ 1.5x"
    )


# -- the marker, end to end -------------------------------------------------------------

#: the inner run's conftest: every speed measurement gets injected decode steps
#: (reference 40 ms, INT8 20 ms: a true 2x) on a fake clock, and an injected CPU load
CONFTEST = """
import pytest

from pytest_llmquant.speed import timing
from pytest_llmquant.speed.contention import CpuCounters

STALLED, OTHERS = {stalled}, {others}


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


class Meter:
    def __init__(self, clock):
        self.clock = clock

    def cores(self):
        return 2

    def read(self):
        t = self.clock()
        return CpuCounters(wall=t, own_cpu=0.0, cpu_busy=OTHERS * t, cpu_total=2 * t,
                           threads_run=(1 - STALLED) * t, threads_wait=STALLED * t)

    def sleep(self, seconds):
        self.clock.now += seconds


@pytest.fixture(autouse=True)
def injected_steps_and_load(monkeypatch):
    real = timing.measure_speedup

    def measure(reference, int8, tokenizer, **kwargs):
        clock = Clock()

        def runner(model, prompt, step):
            wobble = 1 + 0.01 * ((7 * step + 3 * prompt) % 11)
            seconds = (0.040 if model is reference else 0.020) * wobble
            clock.now += seconds
            return seconds

        return real(reference, int8, tokenizer, clock=clock, runner=runner, cpu=Meter(clock),
                    **kwargs)

    monkeypatch.setattr(timing, "measure_speedup", measure)
"""

GATE = """
import pytest

@pytest.mark.quant_speedup({threshold})
def test_speed(llmq_pair):
    pass
"""


def gate(
    pytester: pytest.Pytester, model: Path, threshold: float, *args: str, stalled: float = 0.01,
    others: float = 0.1,
) -> pytest.RunResult:  # fmt: skip
    pytester.makeconftest(CONFTEST.format(stalled=stalled, others=others))
    pytester.makepyfile(GATE.format(threshold=threshold))
    return pytester.runpytest_inprocess(
        f"--llmq-model={model}", "-p", "no:cacheprovider", "--llmq-eval-tokens=256",
        "--llmq-time-budget=3", "--llmq-threads=1", "-rA", *args,
    )  # fmt: skip


def test_the_marker_passes_on_a_quiet_cpu(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    result = gate(pytester, tiny_gpt2_dir, 1.5)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*quant_speedup passed for tiny-gpt2* [[]weight-only-int8]: INT8 2.0*x faster than "
         "FP32 (99% CI *, 8 interleaved pairs, 1 threads) ≥ 1.5x"]
    )  # fmt: skip


def test_the_marker_fails_on_a_quiet_cpu(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    result = gate(pytester, tiny_gpt2_dir, 3.0)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*quant_speedup failed for tiny-gpt2* [[]weight-only-int8]: INT8 2.0*x faster than "
         "FP32 (99% CI *, 8 interleaved pairs, 1 threads) < 3x*"]
    )  # fmt: skip


def test_the_marker_is_inconclusive_on_a_busy_cpu_and_fails(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    """One gate thread beside 1.6 busy cores: it waits for a core 45% of the time, and a
    2x speedup does not clear 1.5x by the margin a busy CPU needs. Strict by default: the
    test fails, saying why, and the JSON report has the figures."""
    report = tmp_path / "report.json"
    result = gate(pytester, tiny_gpt2_dir, 1.5, f"--llmq-report={report}", stalled=0.45, others=1.6)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*quant_speedup inconclusive for tiny-gpt2* [[]weight-only-int8]: the CPU was busy "
         "(2.6 threads wanted the 2 cores (the gate's 1 and 1.6 from other processes) and the "
         "gate's threads waited for a core 45% of the time), so the pairs may be biased; INT8 "
         "2.0*x faster than FP32 (99% CI *, * interleaved pairs, 1 threads) vs 1.5x; rerun on "
         "a quiet machine or with fewer --llmq-threads, or pass "
         "--llmq-speed-inconclusive=skip|pass"]
    )  # fmt: skip
    [pair] = json.loads(report.read_text())["pairs"].values()
    [measured] = [g["measurement"] for g in pair["gates"] if g["gate"] == "quant_speedup"]
    assert measured["verdict"] == "inconclusive"
    assert measured["cpu_stalled"] == pytest.approx(0.45)
    assert measured["cpu_others"] == pytest.approx(1.6)


def test_an_inconclusive_marker_can_skip_or_pass(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    skipped = gate(
        pytester, tiny_gpt2_dir, 1.5, "--llmq-speed-inconclusive=skip", stalled=0.45, others=1.6
    )
    skipped.assert_outcomes(skipped=1)
    skipped.stdout.fnmatch_lines(["SKIPPED*quant_speedup for tiny-gpt2* inconclusive for *"])
    passed = gate(
        pytester, tiny_gpt2_dir, 1.5, "--llmq-speed-inconclusive=pass", stalled=0.45, others=1.6
    )
    passed.assert_outcomes(passed=1)


def test_a_bad_inconclusive_policy_is_a_usage_error(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    result = gate(pytester, tiny_gpt2_dir, 1.5, "--llmq-speed-inconclusive=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--llmq-speed-inconclusive='maybe'*must be one of fail, skip, pass*"]
    )
