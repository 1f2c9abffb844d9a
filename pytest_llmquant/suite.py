"""The built-in regression suite, added to the collection by ``--llmq-suite``.

Each function is one named check, run once per model and scheme with the thresholds
from the CLI or ini defaults, e.g. ``llmq-suite::similarity[smollm2-135m-weight-only-int8]``.
No test code is needed: ``pytest --llmq-model=M --llmq-suite`` tells whether INT8 is
safe for M. A check that cannot run in this setup skips and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

CHECKS = (
    "loads",
    "coverage",
    "finite",
    "similarity",
    "speedup",
    "memory",
    "round_trip",
    "determinism",
    "generation",
    "prompt_property",
    "benchmark_fp32",
    "benchmark_int8",
)

#: per-prompt bound on next-token KL divergence: the gate bounds the *mean* over
#: thousands of tokens; a single prompt may sit in the tail, so its bound is looser.
PROMPT_MAX_KL = 0.5
#: FP32's top token must stay within INT8's top-k (exact top-1 agreement on *every*
#: prompt is not a property even a good INT8 model has: ~97% is excellent).
PROMPT_TOP_K = 5
#: prompts per forward pass (and per hypothesis example) of prompt_property
PROMPT_BATCH = 5
#: the suite's pytest-benchmark entries: a cheap, fixed workload (stated in extra_info),
#: unless --llmq-new-tokens is set explicitly. A full benchmark is a user test calling
#: ``llmq_benchmark.run("int8")`` (five rounds of --llmq-new-tokens tokens).
BENCHMARK_ROUNDS = 3
BENCHMARK_NEW_TOKENS = 8


def _inputs(pair: Any) -> Any:
    from .evaltext import EVAL_PROMPTS

    return pair.tokenizer(list(EVAL_PROMPTS[:3]), return_tensors="pt", padding=True).to(pair.device)


def _once(session: Any, pair: Any, what: str, compute: Any) -> Any:
    """``compute()`` once per pair and session: two checks that need the same deterministic
    output of the same model (INT8 logits on the fixed prompts, a greedy run) share it."""
    key = ("suite", what, *pair.key)
    if key not in session.measurements:
        session.measurements[key] = compute()
    return session.measurements[key]


def _int8_logits(session: Any, pair: Any) -> Any:
    import torch

    def compute() -> Any:
        with torch.inference_mode():
            return pair.int8(**_inputs(pair)).logits

    return _once(session, pair, "int8 logits", compute)


def loads(fp32_model: Any, int8_model: Any) -> None:
    """Both precisions load, in eval mode."""
    assert not fp32_model.training and not int8_model.training


def coverage(llmq_pair: Any) -> None:
    """Every linear layer (nn.Linear and Conv1D) is quantized; the failure lists what is not."""
    cov = llmq_pair.coverage
    assert cov.complete, f"{llmq_pair.name}: {cov}"


def finite(llmq_pair: Any, llmq_session: Any) -> None:
    """No NaN or inf in the logits of either model."""
    import torch

    with torch.inference_mode():
        fp32 = llmq_pair.fp32(**_inputs(llmq_pair)).logits
    for precision, logits in (("FP32", fp32), ("INT8", _int8_logits(llmq_session, llmq_pair))):
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


def round_trip(llmq_pair: Any, llmq_session: Any, tmp_path: Path) -> None:
    """save -> fresh load of the INT8 model gives identical logits: what a user ships is
    what was gated."""
    import torch

    from .schemes import get_scheme

    scheme = get_scheme(llmq_pair.scheme)
    if not any(scheme.is_quantized_module(m) for m in llmq_pair.int8.modules()):
        pytest.skip(
            f"the INT8 model was not built by scheme {llmq_pair.scheme!r}, so it has no "
            "pytest-llmquant save format; save it with your own tooling"
        )
    scheme.save(llmq_pair.int8, tmp_path / "int8")
    reloaded = scheme.load(tmp_path / "int8", device=llmq_pair.device)
    a = _int8_logits(llmq_session, llmq_pair)
    with torch.inference_mode():
        b = reloaded(**_inputs(llmq_pair)).logits
    assert torch.equal(a, b), (
        f"reloaded INT8 logits differ by up to {(a - b).abs().max().item():.3g}"
    )


def _greedy(pair: Any, new_tokens: int = 12) -> Any:
    import torch

    from .evaltext import EVAL_PROMPTS
    from .models.causal_lm import fit_to_context

    ids = fit_to_context(
        pair.tokenizer(EVAL_PROMPTS[0], return_tensors="pt"), pair.int8, new_tokens
    )
    ids = {k: v.to(pair.device) for k, v in ids.items()}
    with torch.inference_mode():
        out = pair.int8.generate(
            **ids,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pair.tokenizer.pad_token_id,
        )
    return out[0, ids["input_ids"].shape[1] :]


def determinism(llmq_pair: Any, llmq_session: Any) -> None:
    """Two INT8 greedy runs give identical tokens."""
    first = _once(llmq_session, llmq_pair, "greedy", lambda: _greedy(llmq_pair))
    second = _greedy(llmq_pair)
    assert first.tolist() == second.tolist()


def generation(llmq_pair: Any, llmq_session: Any) -> None:
    """The INT8 output is non-empty and decodes to text."""
    tokens = _once(llmq_session, llmq_pair, "greedy", lambda: _greedy(llmq_pair))
    text = llmq_pair.tokenizer.decode(tokens, skip_special_tokens=True)
    assert tokens.numel() > 0 and text.strip(), f"INT8 generated no text: {text!r}"


def _prompt_ids(pair: Any, prompt: str) -> Any:
    """The prompt's token ids (1-D), fitted to the context; EOS (or 0) for an empty one."""
    import torch

    from .models.causal_lm import fit_to_context

    ids = fit_to_context(pair.tokenizer(prompt, return_tensors="pt"), pair.fp32)["input_ids"][0]
    if ids.shape[0] == 0:
        ids = torch.tensor([pair.tokenizer.eos_token_id or 0])
    return ids


def next_token_divergences(
    pair: Any, prompts: Sequence[str]
) -> list[tuple[float, int, int, list[int]]]:
    """For each prompt: KL(FP32 || INT8) of the next token, both top tokens, INT8's top-k.

    All prompts go through each model in one forward pass. They are padded on the right,
    so each is read as if alone (a causal model never attends to the padding after a
    token) and scored at its own last token; only the float summation order of the
    batched matrix products differs from one-prompt passes.
    """
    import torch

    rows = [_prompt_ids(pair, p) for p in prompts]
    lengths = torch.tensor([len(r) for r in rows])
    pad = pair.tokenizer.pad_token_id
    ids = torch.full((len(rows), int(lengths.max())), 0 if pad is None else pad)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    ids, mask = ids.to(pair.device), mask.to(pair.device)
    last = (torch.arange(len(rows)), lengths - 1)
    with torch.inference_mode():
        p = torch.log_softmax(pair.fp32(ids, attention_mask=mask).logits[last].double(), -1)
        q = torch.log_softmax(pair.int8(ids, attention_mask=mask).logits[last].double(), -1)
    kld = (p.exp() * (p - q)).sum(-1)
    topk = q.topk(PROMPT_TOP_K, dim=-1).indices
    return [
        (float(kld[i]), int(p[i].argmax()), int(q[i].argmax()), topk[i].tolist())
        for i in range(len(rows))
    ]


def next_token_divergence(pair: Any, prompt: str) -> tuple[float, int, int, list[int]]:
    """KL(FP32 || INT8) of the next token after ``prompt``, both top tokens, INT8's top-k."""
    return next_token_divergences(pair, [prompt])[0]


def prompt_property(llmq_pair: Any, request: pytest.FixtureRequest) -> None:
    """For any prompt (hypothesis), the next-token KLD stays below PROMPT_MAX_KL and FP32's
    top token stays in INT8's top-5; a failure shows the shrunk prompt and both top tokens.

    Each hypothesis example is PROMPT_BATCH prompts checked in one forward pass per model,
    and the profile's ``max_examples`` is divided by PROMPT_BATCH: as many prompts as one
    per example, at about a third of the cost (an INT8 prompt pass dequantizes every
    weight once, however many prompts it holds)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from .strategies import PROFILE_NAME, prompts, register_profiles

    register_profiles()
    chosen = request.config.getoption("hypothesis_profile", default=None)
    profile = settings.get_profile(chosen or PROFILE_NAME)
    examples = max(1, -(-profile.max_examples // PROMPT_BATCH))
    tok = llmq_pair.tokenizer
    batches = st.lists(prompts(max_size=60), min_size=PROMPT_BATCH, max_size=PROMPT_BATCH)

    @settings(profile, max_examples=examples)
    @given(batch=batches)
    def check(batch: list[str]) -> None:
        for prompt, found in zip(batch, next_token_divergences(llmq_pair, batch), strict=True):
            kld, top_fp32, top_int8, topk = found
            assert kld <= PROMPT_MAX_KL and top_fp32 in topk, (
                f"prompt {prompt!r}: next-token KLD {kld:.3g} (bound {PROMPT_MAX_KL}); FP32 top "
                f"{tok.decode([top_fp32])!r} vs INT8 top {tok.decode([top_int8])!r}"
            )

    check()


def _suite_benchmark(llmq_benchmark: Any, llmq_session: Any, precision: str) -> None:
    explicit = llmq_session.settings.origin.get("new_tokens", "default") != "default"
    tokens = llmq_benchmark.new_tokens if explicit else BENCHMARK_NEW_TOKENS
    llmq_benchmark.run(precision, rounds=BENCHMARK_ROUNDS, new_tokens=tokens)


def benchmark_fp32(llmq_benchmark: Any, llmq_session: Any) -> None:
    """FP32 generation timing, recorded as a pytest-benchmark entry (BENCHMARK_ROUNDS rounds
    of BENCHMARK_NEW_TOKENS tokens unless --llmq-new-tokens is given; see extra_info)."""
    _suite_benchmark(llmq_benchmark, llmq_session, "fp32")


def benchmark_int8(llmq_benchmark: Any, llmq_session: Any) -> None:
    """INT8 generation timing, recorded as a pytest-benchmark entry (as benchmark_fp32)."""
    _suite_benchmark(llmq_benchmark, llmq_session, "int8")


class SuiteModule(pytest.Module):
    """This file, collected under the node id ``llmq-suite`` with plain check names."""

    def funcnamefilter(self, name: str) -> bool:
        return name in CHECKS

    def classnamefilter(self, name: str) -> bool:
        return False


def collect_suite(session: pytest.Session) -> list[pytest.Item]:
    module = SuiteModule.from_parent(session, path=Path(__file__), nodeid="llmq-suite")
    return list(session.genitems(module))
