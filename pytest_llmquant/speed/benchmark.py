"""Generation timings recorded in pytest-benchmark, so ``--benchmark-compare-fail`` gates CI.

FP32 and INT8 are separate benchmark entries (pytest-benchmark allows one benchmark per
test), grouped by model, so that ``--benchmark-compare`` matches each one with its own
past run. Both use ``benchmark.pedantic`` with warm-up rounds and a fixed number of new
tokens (no early EOS), so a run measures the same work every time.
"""

from __future__ import annotations

from typing import Any

ROUNDS = 5
WARMUP_ROUNDS = 1


def _inputs(tokenizer: Any, device: str) -> Any:
    from ..evaltext import EVAL_PROMPTS

    return tokenizer(EVAL_PROMPTS[0], return_tensors="pt").to(device)


def generation_target(model: Any, tokenizer: Any, new_tokens: int, device: str = "cpu") -> Any:
    """A zero-argument callable that generates exactly ``new_tokens`` tokens."""
    import torch

    inputs = _inputs(tokenizer, device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def run() -> Any:
        with torch.inference_mode():
            return model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )

    return run


def _median_key(pair: Any, precision: str, new_tokens: int) -> tuple[str, str, str]:
    """Where a median is kept for the speedup: with the token count, so that a speedup is
    only ever computed from two runs of the same length."""
    return (pair.label, f"{precision}, {new_tokens} tokens", pair.scheme)


class LlmqBenchmark:
    """What the ``llmq_benchmark`` fixture gives: ``run("fp32")`` or ``run("int8")``."""

    def __init__(self, benchmark: Any, pair: Any, session: Any, new_tokens: int) -> None:
        self.benchmark = benchmark
        self.pair = pair
        self.session = session
        self.new_tokens = new_tokens

    def run(
        self,
        precision: str,
        *,
        rounds: int = ROUNDS,
        warmup_rounds: int = WARMUP_ROUNDS,
        new_tokens: int | None = None,
    ) -> Any:
        """Time ``rounds`` generations of ``new_tokens`` (default ``--llmq-new-tokens``)
        tokens after ``warmup_rounds`` untimed ones; what was timed goes into ``extra_info``
        so that a comparison between runs with other settings is visibly apples to pears."""
        from ..versions import library_versions

        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
        if getattr(self.benchmark, "disabled", False):
            import pytest

            pytest.skip(
                "pytest-benchmark is disabled here (it turns itself off under xdist and "
                "with --benchmark-disable); run without -n to record timings"
            )
        if rounds < 1 or warmup_rounds < 0 or (new_tokens is not None and new_tokens < 1):
            raise ValueError(
                f"need rounds >= 1, warmup_rounds >= 0 and new_tokens >= 1; got {rounds}, "
                f"{warmup_rounds} and {new_tokens}"
            )
        tokens = self.new_tokens if new_tokens is None else new_tokens
        pair = self.pair
        model = pair.fp32 if precision == "fp32" else pair.int8
        bench = self.benchmark
        bench.group = pair.label
        target = generation_target(model, pair.tokenizer, tokens, pair.device)
        result = bench.pedantic(target, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
        stats = getattr(bench, "stats", None)
        median = stats.stats.median if stats is not None and getattr(stats, "stats", None) else None
        info: dict[str, Any] = {
            "model": pair.label,
            "scheme": pair.scheme if precision == "int8" else "fp32",
            "precision": precision,
            "device": pair.device,
            "threads": pair.threads,
            "new_tokens": tokens,
            "rounds": rounds,
            "warmup_rounds": warmup_rounds,
            "coverage": str(pair.coverage),
            **library_versions(),
        }
        if median:
            info["ms_per_token"] = 1000 * median / tokens
            info["tokens_per_s"] = tokens / median
            medians = self.session.record.benchmark_medians
            medians[_median_key(pair, precision, tokens)] = median
            other = medians.get(
                _median_key(pair, "fp32" if precision == "int8" else "int8", tokens)
            )
            if other:
                fp32_s, int8_s = (median, other) if precision == "fp32" else (other, median)
                info["speedup"] = fp32_s / int8_s
        bench.extra_info.update(info)
        return result
