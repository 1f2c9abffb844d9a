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
    from .evaltext import EVAL_PROMPTS

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


class LlmqBenchmark:
    """What the ``llmq_benchmark`` fixture gives: ``run("fp32")`` or ``run("int8")``."""

    def __init__(self, benchmark: Any, pair: Any, session: Any, new_tokens: int) -> None:
        self.benchmark = benchmark
        self.pair = pair
        self.session = session
        self.new_tokens = new_tokens

    def run(
        self, precision: str, *, rounds: int = ROUNDS, warmup_rounds: int = WARMUP_ROUNDS
    ) -> Any:
        from .loading import library_versions

        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
        if getattr(self.benchmark, "disabled", False):
            import pytest

            pytest.skip(
                "pytest-benchmark is disabled here (it turns itself off under xdist and "
                "with --benchmark-disable); run without -n to record timings"
            )
        pair = self.pair
        model = pair.fp32 if precision == "fp32" else pair.int8
        bench = self.benchmark
        bench.group = pair.label
        target = generation_target(model, pair.tokenizer, self.new_tokens, pair.device)
        result = bench.pedantic(target, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
        stats = getattr(bench, "stats", None)
        median = stats.stats.median if stats is not None and getattr(stats, "stats", None) else None
        info: dict[str, Any] = {
            "model": pair.label,
            "scheme": pair.scheme if precision == "int8" else "fp32",
            "precision": precision,
            "device": pair.device,
            "threads": pair.threads,
            "new_tokens": self.new_tokens,
            "coverage": str(pair.coverage),
            **library_versions(),
        }
        if median:
            info["ms_per_token"] = 1000 * median / self.new_tokens
            info["tokens_per_s"] = self.new_tokens / median
            self.session.benchmark_medians[(pair.label, precision, pair.scheme)] = median
            other = self.session.benchmark_medians.get(
                (pair.label, "fp32" if precision == "int8" else "int8", pair.scheme)
            )
            if other:
                fp32_s, int8_s = (median, other) if precision == "fp32" else (other, median)
                info["speedup"] = fp32_s / int8_s
        bench.extra_info.update(info)
        return result
