"""A broken INT8 model is a failed test, not a crashed session.

The gates measure in the call phase: whatever the model raises while a gate measures
fails that test with the gate's name, the pair, the exception's last line and the
traceback's tail; the next test still runs, the exit code is 1, and the call phase's
duration (what ``--durations`` lists) counts the gate's time.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

#: an INT8 model whose kernel refuses long sequences, as a user's custom kernel might
REFUSING_MODEL = """
import copy, pytest, torch
from pytest_llmquant import get_scheme

class RefusesLongSequences(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.generation_config = inner.generation_config
    def forward(self, input_ids=None, **kw):
        if input_ids is not None and input_ids.shape[-1] > 4:
            raise RuntimeError("my_int8_kernel: sequence of %d tokens is longer than 4" % input_ids.shape[-1])
        return self.inner(input_ids=input_ids, **kw)
    def generate(self, input_ids=None, **kw):
        return self.forward(input_ids=input_ids, **kw)

@pytest.fixture(scope="session")
def int8_model(fp32_model):
    return RefusesLongSequences(get_scheme("weight-only-int8").quantize(copy.deepcopy(fp32_model))).eval()
"""

#: the weights accounting of this run raises (a model that cannot be walked)
BROKEN_ACCOUNTING = """
import pytest

@pytest.fixture(autouse=True)
def broken_accounting(monkeypatch):
    import pytest_llmquant.sides.torch_weights as weights
    def boom(model):
        raise RuntimeError("cannot walk this model's tensors")
    monkeypatch.setattr(weights, "weights_breakdown", boom)
"""

TESTS = """
import pytest

@pytest.mark.{mark}
def test_gated(llmq_pair):
    pass

def test_next_one_still_runs():
    pass
"""

CASES = {
    "quant_similarity": (REFUSING_MODEL, "RuntimeError: my_int8_kernel: sequence of * tokens"),
    "quant_speedup": (REFUSING_MODEL, "RuntimeError: my_int8_kernel: sequence of * tokens"),
    "quant_memory": (BROKEN_ACCOUNTING, "RuntimeError: cannot walk this model's tensors"),
}


@pytest.mark.parametrize("gate", sorted(CASES))
def test_a_gate_that_raises_fails_its_test_and_the_session_goes_on(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, gate: str
) -> None:
    conftest, last_line = CASES[gate]
    pytester.makeconftest(conftest)
    pytester.makepyfile(TESTS.format(mark=f"{gate}()"))
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_gpt2_dir}",
        "--llmq-eval-tokens=128",
        "--llmq-time-budget=2",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(failed=1, passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "INTERNALERROR" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            f"*{gate} crashed while measuring tiny-gpt2* [[]weight-only-int8]: {last_line}*",
            "Traceback (most recent call last*",
            "*conftest.py*",
        ]
    )


SLOW_GATE = """
import pytest

@pytest.mark.quant_similarity(max_kl=5, min_same_top=0.01, max_ppl_ratio=10)
def test_gated(llmq_pair):
    pass
"""


def test_durations_count_the_gate_in_the_call(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    """``--durations`` lists each phase's ``report.duration``; junit XML writes the same
    number for the call phase (``junit_duration_report=call``), where it can be read
    without parsing the terminal table."""
    pytester.makepyfile(SLOW_GATE)
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_gpt2_dir}",
        "--llmq-eval-tokens=512",
        "-p",
        "no:cacheprovider",
        "--junitxml=junit.xml",
        "-o",
        "junit_duration_report=call",
    )
    result.assert_outcomes(passed=1)
    [case] = ET.parse(pytester.path / "junit.xml").iter("testcase")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    gate_s = float(props["llmq.quant_similarity.seconds"])
    assert gate_s > 0
    assert float(case.get("time", "nan")) >= gate_s - 0.01  # the call includes the gate
