"""The built-in regression suite, added to the collection by ``--llmq-suite``.

Each function is one named check, run once per model and scheme with the thresholds
from the CLI or ini defaults, e.g. ``llmq-suite::similarity[smollm2-135m-dynamic-int8]``.
No test code is needed: ``pytest --llmq-model=M --llmq-suite`` tells whether INT8 is
safe for M. A check that cannot run in this setup skips and says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHECKS = (
    "loads", "coverage", "finite", "similarity", "speedup", "memory", "round_trip",
    "determinism", "generation", "benchmark_fp32", "benchmark_int8",
)


def _inputs(pair: Any) -> Any:
    from .evaltext import EVAL_PROMPTS

    return pair.tokenizer(list(EVAL_PROMPTS[:3]), return_tensors="pt", padding=True).to(pair.device)


def loads(fp32_model: Any, int8_model: Any) -> None:
    """Both precisions load, in eval mode."""
    assert not fp32_model.training and not int8_model.training


def coverage(llmq_pair: Any) -> None:
    """Every linear layer (nn.Linear and Conv1D) is quantized; the failure lists what is not."""
    cov = llmq_pair.coverage
    assert cov.complete, f"{llmq_pair.name}: {cov}"


def finite(llmq_pair: Any) -> None:
    """No NaN or inf in the logits of either model."""
    import torch

    inputs = _inputs(llmq_pair)
    with torch.inference_mode():
        for precision, model in (("FP32", llmq_pair.fp32), ("INT8", llmq_pair.int8)):
            logits = model(**inputs).logits
            bad = int((~torch.isfinite(logits)).sum())
            assert bad == 0, f"{precision} logits of {llmq_pair.name} have {bad} NaN/inf values"


@pytest.mark.quant_similarity()
def similarity(llmq_pair: Any) -> None:
    """The quality gate (default thresholds: mean KLD, same-top, PPL ratio)."""


@pytest.mark.quant_speedup()
def speedup(llmq_pair: Any) -> None:
    """The speed gate (--llmq-min-speedup)."""


@pytest.mark.quant_memory()
def memory(llmq_pair: Any) -> None:
    """The memory gate on weights (--llmq-min-memory-ratio)."""


def round_trip(llmq_pair: Any, tmp_path: Path) -> None:
    """save -> fresh load of the INT8 model gives identical logits: the seed's broken
    save_pretrained step, done right."""
    import torch

    from .schemes import get_scheme

    scheme = get_scheme(llmq_pair.scheme)
    if not any(scheme.is_quantized_module(m) for m in llmq_pair.int8.modules()):
        pytest.skip(f"the INT8 model was not built by scheme {llmq_pair.scheme!r}, so it has no "
                    "pytest-llmquant save format; save it with your own tooling")
    scheme.save(llmq_pair.int8, tmp_path / "int8")
    reloaded = scheme.load(tmp_path / "int8", device=llmq_pair.device)
    inputs = _inputs(llmq_pair)
    with torch.inference_mode():
        a = llmq_pair.int8(**inputs).logits
        b = reloaded(**inputs).logits
    assert torch.equal(a, b), (f"reloaded INT8 logits differ by up to "
                               f"{(a - b).abs().max().item():.3g}")


def _greedy(pair: Any, new_tokens: int = 12) -> Any:
    import torch

    from .evaltext import EVAL_PROMPTS

    ids = pair.tokenizer(EVAL_PROMPTS[0], return_tensors="pt").to(pair.device)
    with torch.inference_mode():
        out = pair.int8.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=pair.tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:]


def determinism(llmq_pair: Any) -> None:
    """Two INT8 greedy runs give identical tokens."""
    first, second = _greedy(llmq_pair), _greedy(llmq_pair)
    assert first.tolist() == second.tolist()


def generation(llmq_pair: Any) -> None:
    """The INT8 output is non-empty and decodes to text."""
    tokens = _greedy(llmq_pair)
    text = llmq_pair.tokenizer.decode(tokens, skip_special_tokens=True)
    assert tokens.numel() > 0 and text.strip(), f"INT8 generated no text: {text!r}"


def benchmark_fp32(llmq_benchmark: Any) -> None:
    """FP32 generation timing, recorded as a pytest-benchmark entry."""
    llmq_benchmark.run("fp32")


def benchmark_int8(llmq_benchmark: Any) -> None:
    """INT8 generation timing, recorded as a pytest-benchmark entry."""
    llmq_benchmark.run("int8")


class SuiteModule(pytest.Module):
    """This file, collected under the node id ``llmq-suite`` with plain check names."""

    def funcnamefilter(self, name: str) -> bool:
        return name in CHECKS

    def classnamefilter(self, name: str) -> bool:
        return False


def collect_suite(session: pytest.Session) -> list[pytest.Item]:
    module = SuiteModule.from_parent(session, path=Path(__file__), nodeid="llmq-suite")
    return list(session.genitems(module))
