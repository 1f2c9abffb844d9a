"""The built-in regression suite, added to the collection by ``--llmq-suite``.

Each function is one named check, run once per model and scheme with the thresholds
from the CLI or ini defaults, e.g. ``llmq-suite::similarity[smollm2-135m-weight-only-int8]``.
No test code is needed: ``pytest --llmq-model=M --llmq-suite`` tells whether INT8 is
safe for M. A check that cannot run in this setup skips and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

    from .run.pair import ModelPair
    from .session import LlmqSession
    from .sides.base import ModelSide
    from .speed.benchmark import LlmqBenchmark

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


def _prompts(pair: ModelPair) -> list[list[int]]:
    """The first evaluation prompts as token ids, cut to fit both sides."""
    from .evaltext import EVAL_PROMPTS
    from .models.causal_lm import encode_prompt

    context = _context(pair)
    return [encode_prompt(pair.tokenizer, p, context=context) for p in EVAL_PROMPTS[:3]]


def _context(pair: ModelPair) -> int | None:
    contexts = [c for c in (s.context_length() for s in _sides(pair)) if c]
    return min(contexts) if contexts else None


def _sides(pair: ModelPair) -> tuple[ModelSide, ModelSide]:
    return pair.reference_side, pair.int8_side


def _logits(side: ModelSide, prompts: list[list[int]], threads: int) -> list[torch.Tensor]:
    """Every position's logits of each prompt, one window per prompt."""
    import torch

    with side.measuring(threads):
        return [side.scored_logits(torch.tensor([ids]), len(ids)) for ids in prompts]


def _int8_logits(session: LlmqSession, pair: ModelPair) -> list[torch.Tensor]:
    """The INT8 logits on the fixed prompts: finite and round_trip share one pass."""
    return session.memo.once(
        ("suite", "int8 logits", *pair.key),
        lambda: _logits(pair.int8_side, _prompts(pair), pair.threads),
    )


def loads(llmq_pair: ModelPair) -> None:
    """Both models load (a torch model in eval mode) and share one vocabulary."""
    from .sides.torch_side import TorchSide

    for side in _sides(llmq_pair):
        if isinstance(side, TorchSide):
            assert not side.model.training, f"{side.label} is in training mode"
    sizes = [side.vocab_size() for side in _sides(llmq_pair)]
    assert sizes[0] <= sizes[1], f"{llmq_pair.name}: vocabularies of {sizes[0]} and {sizes[1]} ids"


def coverage(llmq_pair: ModelPair) -> None:
    """Every weight kind the INT8 model's maker claims to quantize is quantized: linear
    layers (nn.Linear and Conv1D), lm_head, expert banks; the failure names what is not."""
    cov = llmq_pair.coverage
    problems = cov.problems()
    if cov.total == 0 and not problems:
        problems = ["no linear layer was counted"]
    assert not problems, (
        f"{llmq_pair.name}: {'; '.join(problems)}, where {_maker(llmq_pair)} should "
        f"quantize {', '.join(cov.expected)} ({cov})"
    )


def _maker(pair: ModelPair) -> str:
    """Who is held to quantize those kinds: our scheme (it declares them), else the user's
    model (every kind but embeddings and norms)."""
    origin = pair.origin
    if origin is None or origin.route == "scheme":
        return f"scheme {pair.scheme!r}"
    return f"{origin.label} (from the {origin.made_by})"


def finite(llmq_pair: ModelPair, llmq_session: LlmqSession) -> None:
    """No NaN or inf in the logits of either model."""
    import torch

    reference = _logits(llmq_pair.reference_side, _prompts(llmq_pair), llmq_pair.threads)
    both = ((llmq_pair.reference_label, reference), ("INT8", _int8_logits(llmq_session, llmq_pair)))
    for precision, logits in both:
        bad = sum(int((~torch.isfinite(t)).sum()) for t in logits)
        assert bad == 0, f"{precision} logits of {llmq_pair.name} have {bad} NaN/inf values"


@pytest.mark.quant_similarity()
def similarity(llmq_pair: ModelPair) -> None:
    """The quality gate (default thresholds: mean KLD, same-top, PPL ratio)."""


@pytest.mark.quant_speedup()
def speedup(llmq_pair: ModelPair) -> None:
    """The speed gate (--llmq-min-speedup)."""


@pytest.mark.quant_memory()
def memory(llmq_pair: ModelPair) -> None:
    """The memory gate on weights (--llmq-min-memory-ratio)."""


def round_trip(llmq_pair: ModelPair, llmq_session: LlmqSession, tmp_path: Path) -> None:
    """save -> fresh load of the INT8 model gives identical logits: what a user ships is
    what was gated."""
    import torch

    from .run.pair import is_side
    from .schemes import get_scheme
    from .schemes import names as scheme_names
    from .sides.torch_side import TorchSide

    model = llmq_pair.int8
    if is_side(model) and llmq_pair.int8_side.runtime != "torch":
        pytest.skip(
            f"the INT8 model is the file {llmq_pair.int8_side.runtime} runs, gated as it "
            "ships: there is no pytest-llmquant save format to go through"
        )
    # the scheme whose layers the model holds: a Q8_0 GGUF's label is "gguf Q8_0", its
    # layers weight-only-int8's
    origin = llmq_pair.origin
    name = origin.scheme if origin is not None and origin.scheme else llmq_pair.scheme
    scheme = get_scheme(name) if not is_side(model) and name in scheme_names() else None
    if scheme is None or not any(scheme.is_quantized_module(m) for m in model.modules()):  # type: ignore[union-attr]
        pytest.skip(
            f"the INT8 model was not built by scheme {llmq_pair.scheme!r}, so it has no "
            "pytest-llmquant save format; save it with your own tooling"
        )
    scheme.save(model, tmp_path / "int8")  # type: ignore[arg-type]
    reloaded = TorchSide(scheme.load(tmp_path / "int8", device=llmq_pair.device), "reloaded")
    before = _int8_logits(llmq_session, llmq_pair)
    after = _logits(reloaded, _prompts(llmq_pair), llmq_pair.threads)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b), (
            f"reloaded INT8 logits differ by up to {(a - b).abs().max().item():.3g}"
        )


def _greedy(pair: ModelPair, new_tokens: int = 12) -> list[int]:
    from .evaltext import EVAL_PROMPTS
    from .models.causal_lm import encode_prompt

    side = pair.int8_side
    ids = encode_prompt(
        pair.tokenizer, EVAL_PROMPTS[0], context=side.context_length(), new_tokens=new_tokens
    )
    with side.measuring(pair.threads):
        return side.greedy([ids], new_tokens)[0]


def determinism(llmq_pair: ModelPair, llmq_session: LlmqSession) -> None:
    """Two INT8 greedy runs give identical tokens."""
    first = llmq_session.memo.once(("suite", "greedy", *llmq_pair.key), lambda: _greedy(llmq_pair))
    assert first == _greedy(llmq_pair)


def generation(llmq_pair: ModelPair, llmq_session: LlmqSession) -> None:
    """The INT8 output is non-empty and decodes to text."""
    tokens = llmq_session.memo.once(("suite", "greedy", *llmq_pair.key), lambda: _greedy(llmq_pair))
    text = llmq_pair.tokenizer.decode(tokens, skip_special_tokens=True)
    assert tokens and text.strip(), f"INT8 generated no text: {text!r}"


def _prompt_ids(pair: ModelPair, prompt: str) -> list[int]:
    """The prompt's token ids, fitted to the context; EOS (or 0) for an empty one."""
    from .models.causal_lm import encode_prompt

    ids = encode_prompt(pair.tokenizer, prompt, context=_context(pair))
    return ids or [pair.tokenizer.eos_token_id or 0]


def next_token_divergences(
    pair: ModelPair, prompts: Sequence[str]
) -> list[tuple[float, int, int, list[int]]]:
    """For each prompt: KL(reference || INT8) of the next token, both top tokens, INT8's
    top-k. All prompts go through each side in one batch (:meth:`ModelSide.next_token_logits`)."""
    import torch

    rows = [_prompt_ids(pair, p) for p in prompts]
    with pair.reference_side.measuring(pair.threads):
        p = torch.log_softmax(pair.reference_side.next_token_logits(rows).double(), -1)
    with pair.int8_side.measuring(pair.threads):
        q = torch.log_softmax(pair.int8_side.next_token_logits(rows).double().to(p.device), -1)
    kld = (p.exp() * (p - q)).sum(-1)
    topk = q.topk(PROMPT_TOP_K, dim=-1).indices
    return [
        (float(kld[i]), int(p[i].argmax()), int(q[i].argmax()), topk[i].tolist())
        for i in range(len(rows))
    ]


def next_token_divergence(pair: ModelPair, prompt: str) -> tuple[float, int, int, list[int]]:
    """KL(reference || INT8) of the next token after ``prompt``, both top tokens, INT8's top-k."""
    return next_token_divergences(pair, [prompt])[0]


def prompt_property(llmq_pair: ModelPair, request: pytest.FixtureRequest) -> None:
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
            kld, top_reference, top_int8, topk = found
            assert kld <= PROMPT_MAX_KL and top_reference in topk, (
                f"prompt {prompt!r}: next-token KLD {kld:.3g} (bound {PROMPT_MAX_KL}); FP32 top "
                f"{tok.decode([top_reference])!r} vs INT8 top {tok.decode([top_int8])!r}"
            )

    check()


def _suite_benchmark(
    llmq_benchmark: LlmqBenchmark, llmq_session: LlmqSession, precision: str
) -> None:
    explicit = llmq_session.settings.origin.get("new_tokens", "default") != "default"
    tokens = llmq_benchmark.new_tokens if explicit else BENCHMARK_NEW_TOKENS
    llmq_benchmark.run(precision, rounds=BENCHMARK_ROUNDS, new_tokens=tokens)


def benchmark_fp32(llmq_benchmark: LlmqBenchmark, llmq_session: LlmqSession) -> None:
    """FP32 generation timing, recorded as a pytest-benchmark entry (BENCHMARK_ROUNDS rounds
    of BENCHMARK_NEW_TOKENS tokens unless --llmq-new-tokens is given; see extra_info)."""
    _suite_benchmark(llmq_benchmark, llmq_session, "fp32")


def benchmark_int8(llmq_benchmark: LlmqBenchmark, llmq_session: LlmqSession) -> None:
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
