"""The suite's cheaper checks still check the same things: the property check's batched
forward gives each prompt's own numbers, the benchmark entries say what they timed, and
checks that need the same deterministic output compute it once."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_llmquant import suite
from pytest_llmquant.run.record import RunRecord

PROMPTS = ["The capital", "def add(a, b):\n    return", "A test that cannot fail proves", "x"]


@pytest.fixture(scope="module")
def pair(tiny_gpt2_dir: Path) -> Any:
    from pytest_llmquant.int8.build import make_int8
    from pytest_llmquant.models.loading import load_fp32
    from pytest_llmquant.session import ModelPair

    fp32, tokenizer = load_fp32(str(tiny_gpt2_dir))
    built = make_int8(fp32, "weight-only-int8")
    return ModelPair(
        "tiny", "tiny", "weight-only-int8", fp32, built.model, tokenizer, built.coverage
    )


def test_a_batch_of_prompts_scores_each_as_if_alone(pair: Any) -> None:
    batched = suite.next_token_divergences(pair, PROMPTS)
    for prompt, (kld, top_fp32, top_int8, topk) in zip(PROMPTS, batched, strict=True):
        alone = suite.next_token_divergences(pair, [prompt])[0]
        assert kld == pytest.approx(alone[0], rel=1e-4, abs=1e-9), prompt
        assert (top_fp32, top_int8, topk) == alone[1:], prompt


def test_the_batch_holds_prompts_of_different_lengths(pair: Any) -> None:
    import torch

    lengths = [len(pair.tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert len(set(lengths)) > 1  # else the padding would not be exercised
    kld, top_fp32, _, _ = suite.next_token_divergences(pair, PROMPTS)[-1]
    ids = pair.tokenizer(PROMPTS[-1], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert top_fp32 == int(pair.fp32(ids).logits[0, -1].argmax())
    assert kld >= 0


def test_determinism_and_generation_share_one_greedy_run(
    pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    generate = pair.int8.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(pair.int8, "generate", counted)
    from pytest_llmquant.run.memo import Measurements

    # only the memo's once() is used: no settings, store or progress line are needed
    session = SimpleNamespace(memo=Measurements(None, None, progress=print))  # type: ignore[arg-type]
    suite.determinism(pair, session)
    suite.generation(pair, session)
    assert len(calls) == 2  # determinism's two runs; generation reads the first


BENCH_ARGS = ("-k", "benchmark", "-p", "no:cacheprovider", "--benchmark-autosave")


def saved_entries(storage: Path) -> dict[str, Any]:
    [saved] = list(storage.rglob("*.json"))
    data = json.loads(saved.read_text())
    return {b["name"].split("[")[0]: b for b in data["benchmarks"]}


@pytest.mark.parametrize("explicit", [None, 5], ids=["default", "new-tokens-given"])
def test_suite_benchmark_entries_say_what_they_timed(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, tmp_path: Path, explicit: int | None
) -> None:
    storage = tmp_path / "bench"
    args = [f"--llmq-new-tokens={explicit}"] if explicit else []
    result = pytester.runpytest_subprocess(
        f"--llmq-model={tiny_gpt2_dir}",
        "--llmq-suite",
        f"--benchmark-storage=file://{storage}",
        *BENCH_ARGS,
        *args,
    )
    result.assert_outcomes(passed=2, deselected=len(suite.CHECKS) - 2)
    entries = saved_entries(storage)
    assert set(entries) == {"benchmark_fp32", "benchmark_int8"}
    for entry in entries.values():
        info = entry["extra_info"]
        assert info["new_tokens"] == (explicit or suite.BENCHMARK_NEW_TOKENS)
        assert info["rounds"] == suite.BENCHMARK_ROUNDS == entry["stats"]["rounds"]
        assert info["warmup_rounds"] == 1
    assert entries["benchmark_int8"]["extra_info"]["speedup"] > 0  # same length: comparable


class FakeBenchmark:
    """pytest-benchmark's fixture as far as ``LlmqBenchmark.run`` uses it, with a fixed median."""

    disabled = False

    def __init__(self, median: float) -> None:
        self.median, self.group, self.extra_info, self.stats = median, None, {}, None

    def pedantic(self, target: Any, rounds: int, warmup_rounds: int, iterations: int) -> Any:
        self.stats = SimpleNamespace(stats=SimpleNamespace(median=self.median))


@pytest.mark.parametrize(
    "kwargs", [{"rounds": 0}, {"warmup_rounds": -1}, {"new_tokens": 0}], ids=str
)
def test_a_benchmark_of_no_rounds_or_tokens_is_refused_in_one_line(pair: Any, kwargs: Any) -> None:
    from pytest_llmquant.speed.benchmark import LlmqBenchmark

    bench = LlmqBenchmark(FakeBenchmark(1.0), pair, RunRecord(), 8)
    with pytest.raises(
        ValueError, match=r"need rounds >= 1, warmup_rounds >= 0 and new_tokens >= 1"
    ):
        bench.run("int8", **kwargs)


def test_a_speedup_is_only_computed_between_entries_of_the_same_length(pair: Any) -> None:
    from pytest_llmquant.speed.benchmark import LlmqBenchmark

    record = RunRecord()
    LlmqBenchmark(FakeBenchmark(2.0), pair, record, 8).run("fp32", rounds=1, new_tokens=8)
    longer = FakeBenchmark(1.0)
    LlmqBenchmark(longer, pair, record, 8).run("int8", rounds=1, new_tokens=16)
    assert "speedup" not in longer.extra_info
    same = FakeBenchmark(1.0)
    LlmqBenchmark(same, pair, record, 8).run("int8", rounds=1, new_tokens=8)
    assert same.extra_info["speedup"] == pytest.approx(2.0)
