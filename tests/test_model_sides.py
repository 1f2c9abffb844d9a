"""Every gate reads a model only through the ModelSide protocol.

A conftest overrides ``reference_model`` and ``int8_model`` with :class:`FakeSide`
objects (fake_side.py): logits from fixed tables, decode steps of a set duration,
weights of a set size, and no ``nn.Module`` anywhere. The three gates then measure
them, pass where the fakes are inside the bound and fail where they are outside, with
the numbers the fakes imply, and no gate code knows the fakes exist.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})

import pytest
import torch
from fake_side import FakeSide, logit_table
from speed_fakes import quiet_meter
from pytest_llmquant.origin import Int8Origin
from pytest_llmquant.speed import timing

VOCAB = 400  # the tiny tokenizer's
REFERENCE = logit_table(VOCAB, seed=0)
# the INT8 stand-in: the same table, nudged; its KLD is what the nudge implies
NUDGED = REFERENCE + 0.05 * logit_table(VOCAB, seed=1, scale=1.0)


@pytest.fixture(autouse=True)
def quiet_cpu(monkeypatch):
    # the fakes' step times are set, not measured: the machine's real load (another
    # xdist worker) must not make the gate call them inconclusive
    real = timing.measure_speedup
    monkeypatch.setattr(
        timing, "measure_speedup", lambda *a, **kw: real(*a, **{{**kw, "cpu": quiet_meter()}})
    )


@pytest.fixture(scope="session")
def reference_model():
    return FakeSide(REFERENCE, step_seconds=0.002, weights={{"float: linear": 4000}},
                    label="FAKE32")


@pytest.fixture(scope="session")
def int8_model():
    return FakeSide(NUDGED, step_seconds=0.001, weights={{"int8": 1000}}, label="fake-int8",
                    origin=Int8Origin("fixture", "fake-int8", bits=8))
"""

GATES = """
import pytest

@pytest.mark.quant_similarity(max_kl=1.0, min_same_top=0.5, max_ppl_ratio=2.0)
def test_close_enough(llmq_pair):
    pass

@pytest.mark.quant_similarity(max_kl=1e-9, min_same_top=0.01, max_ppl_ratio=100.0)
def test_not_identical(llmq_pair):
    pass

@pytest.mark.quant_speedup(1.5)
def test_twice_as_fast(llmq_pair):
    pass

@pytest.mark.quant_speedup(3.0)
def test_not_three_times(llmq_pair):
    pass

@pytest.mark.quant_memory(3.5)
def test_four_times_smaller(llmq_pair):
    pass

@pytest.mark.quant_memory(5.0)
def test_not_five_times(llmq_pair):
    pass
"""


@pytest.fixture
def gated(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(GATES)
    return pytester.runpytest_inprocess(
        f"--llmq-model={tiny_gpt2_dir}",
        "--llmq-eval-tokens=256",
        "--llmq-time-budget=2",
        "-p",
        "no:cacheprovider",
        "-v",
    )


def test_all_three_gates_measure_a_side_that_is_no_torch_model(gated: pytest.RunResult) -> None:
    gated.assert_outcomes(passed=3, failed=3)
    out = gated.stdout.str()
    for name in ("close_enough", "twice_as_fast", "four_times_smaller"):
        assert f"test_{name}[" in out and "PASSED" in out.split(f"test_{name}[")[1].split("\n")[0]
    # the failures carry the numbers the fakes imply: a nudged table, half the step time,
    # a quarter of the bytes
    gated.stdout.fnmatch_lines_random(
        [
            "*quant_similarity failed for *fake-int8*mean KLD*> 1e-09*",
            "*quant_speedup failed for *fake-int8*",
            "*quant_memory failed for *fake-int8*ratio 4.00x < 5x*",
        ]
    )


def test_the_fake_decode_steps_were_the_ones_timed(gated: pytest.RunResult) -> None:
    """The speed verdicts are near the fakes' 2 ms / 1 ms ratio, so the gate timed them."""
    # a side names its runtime ("fake") and its label, as a llama.cpp side does
    gated.stdout.fnmatch_lines(["*: fake-int8 *x faster than fake FAKE32*"])
    line = next(ln for ln in gated.stdout.lines if "faster than fake FAKE32" in ln)
    speedup = float(line.split(": fake-int8 ")[1].split("x faster")[0])
    assert 1.9 <= speedup <= 2.1, line
