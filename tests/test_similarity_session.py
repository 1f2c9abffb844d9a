"""The session keeps the similarity reference in its cache dir: the second run of a suite
runs only the INT8 model, and a user's own FP32 model is never mistaken for the source's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

GATE_AND_RECORD = """
import json

import pytest


@pytest.mark.quant_similarity(max_kl=5, min_same_top=0.01, max_ppl_ratio=10)
def test_gate(llmq_pair):
    pass


def test_zz_record(llmq_session, llmq_pair, fp32_model):
    calls = []
    fp32_model.register_forward_pre_hook(lambda *_: calls.append(1))
    llmq_session.memo.clear()  # measure again, watching the FP32 model
    result = llmq_session.memo.similarity(llmq_pair)
    with open("record.json", "w") as fh:
        json.dump({"fp32_calls": len(calls), "result": result.as_dict()}, fh)
"""

OWN_FP32 = """
import pytest
from transformers import AutoModelForCausalLM


@pytest.fixture(scope="session")
def fp32_model(llmq_session, llmq_model_id):
    return AutoModelForCausalLM.from_pretrained(llmq_model_id).eval()
"""


def run(pytester: pytest.Pytester, model_dir: Path, cache_dir: Path) -> dict:
    result = pytester.runpytest_inprocess(
        f"--llmq-model={model_dir}",
        "--llmq-eval-tokens=256",
        f"--llmq-cache-dir={cache_dir}",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    return json.loads((pytester.path / "record.json").read_text())


@pytest.mark.parametrize("model", ["tiny_gpt2_dir", "tiny_mixtral_dir"], ids=["gpt2", "mixtral"])
def test_the_second_session_reads_the_fp32_side_from_the_cache(
    pytester: pytest.Pytester, model: str, cache_dir: Path, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue(model)
    pytester.makepyfile(GATE_AND_RECORD)
    first = run(pytester, model_dir, cache_dir)
    assert first["fp32_calls"] == 0  # the first test of this session already stored it
    assert {"similarity-greedy", "similarity-reference"} <= {p.name for p in cache_dir.iterdir()}
    second = run(pytester, model_dir, cache_dir)
    assert second["fp32_calls"] == 0
    assert second["result"] == first["result"]


def test_a_user_fp32_fixture_is_measured_directly_and_nothing_is_stored(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, cache_dir: Path
) -> None:
    pytester.makeconftest(OWN_FP32)
    pytester.makepyfile(GATE_AND_RECORD)
    record = run(pytester, tiny_gpt2_dir, cache_dir)
    assert record["fp32_calls"] > 0  # measured directly, every time
    assert not (cache_dir / "similarity-reference").exists()
