"""llama.cpp's KLD statistics, checked against direct computations, and the windowed run.

The reference values below are computed with plain Python loops and the ``math`` and
``statistics`` modules, one token at a time, so that they share no code (and no
vectorised formula) with :mod:`pytest_llmquant.similarity`.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pytest_llmquant import similarity  # noqa: E402
from pytest_llmquant.errors import LlmqUsageError  # noqa: E402
from pytest_llmquant.evaltext import default_corpus  # noqa: E402
from pytest_llmquant.similarity import (  # noqa: E402
    MIN_TOKENS,
    SimilarityResult,
    TokenStats,
    measure_similarity,
    metrics,
    plan_windows,
    summarize,
    token_stats,
)

# -- reference implementation: one token at a time, no vectorisation ----------------


def ref_log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_z for x in row]


def ref_argmax(row: list[float]) -> int:
    best = 0
    for i, x in enumerate(row):
        if x > row[best]:
            best = i
    return best


def ref_token(p_logits: list[float], q_logits: list[float], target: int) -> dict:
    logp, logq = ref_log_softmax(p_logits), ref_log_softmax(q_logits)
    kld = 0.0
    for lp, lq in zip(logp, logq, strict=True):
        kld += math.exp(lp) * (lp - lq)
    return {
        "kld": kld,
        "same_top": ref_argmax(p_logits) == ref_argmax(q_logits),
        "logp": logp[target],
        "logq": logq[target],
        "dp": math.exp(logq[target]) - math.exp(logp[target]),
    }


def ref_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def random_case(n: int = 150, vocab: int = 40, noise: float = 0.7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    fp32 = torch.randn(n, vocab, generator=gen) * 3
    int8 = fp32 + noise * torch.randn(n, vocab, generator=gen)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    return fp32, int8, targets


# -- per-token statistics ----------------------------------------------------------------


def test_token_stats_match_a_direct_computation():
    fp32, int8, targets = random_case()
    stats = token_stats(fp32, int8, targets)
    assert len(stats) == 150
    for i in range(150):
        ref = ref_token(fp32[i].tolist(), int8[i].tolist(), int(targets[i]))
        assert stats.kld[i] == pytest.approx(ref["kld"], rel=1e-9, abs=1e-12)
        assert bool(stats.same_top[i]) == ref["same_top"]
        assert stats.logp_reference[i] == pytest.approx(ref["logp"], rel=1e-9)
        assert stats.logp_int8[i] == pytest.approx(ref["logq"], rel=1e-9)
        assert stats.dp[i] == pytest.approx(ref["dp"], rel=1e-9, abs=1e-12)
    assert stats.kld.dtype.name == "float64"
    assert 0 < stats.same_top.mean() < 1  # the case exercises both outcomes


def test_token_stats_are_the_same_when_rows_are_processed_in_small_chunks(monkeypatch):
    fp32, int8, targets = random_case(n=37)
    whole = token_stats(fp32, int8, targets)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 5 * 40)  # 5 rows at a time
    chunked = token_stats(fp32, int8, targets)
    for name in ("kld", "same_top", "logp_reference", "logp_int8", "dp"):
        assert getattr(chunked, name).tolist() == getattr(whole, name).tolist()


def test_identical_logits_give_zero_kld_full_agreement_and_ratio_one():
    fp32, _, targets = random_case()
    result = summarize(token_stats(fp32, fp32.clone(), targets))
    assert result.mean_kld == 0.0 and result.max_kld == 0.0 and result.kld_se == 0.0
    assert result.same_top == 1.0 and result.same_top_se == 0.0
    assert result.ppl_ratio == 1.0 and result.ppl_ratio_se == 0.0
    assert result.ppl_int8 == result.ppl_fp32
    assert result.rms_dp == 0.0 and result.rms_dp_se == 0.0


def test_a_constant_shift_of_all_logits_changes_nothing():
    # softmax is invariant to adding a constant: INT8 logits offset by a bias are fine
    fp32, _, targets = random_case()
    stats = token_stats(fp32, fp32 + 5.0, targets)
    assert stats.kld.max() < 1e-12
    assert stats.same_top.all()


def test_moving_probability_mass_gives_the_textbook_kld():
    # p = (1/2, 1/2), q = (9/10, 1/10):  KL = 1/2 ln(5/9) + 1/2 ln(5) = ln(5/3)
    fp32 = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    int8 = torch.tensor([[math.log(9.0), 0.0]], dtype=torch.float64)
    stats = token_stats(fp32, int8, torch.tensor([1]))
    assert stats.kld[0] == pytest.approx(math.log(5 / 3), rel=1e-12)
    assert stats.logp_reference[0] == pytest.approx(math.log(0.5))
    assert stats.logp_int8[0] == pytest.approx(math.log(0.1))
    assert stats.dp[0] == pytest.approx(0.1 - 0.5)


def test_masked_vocabulary_entries_do_not_turn_kld_into_nan():
    # padded vocabularies carry -inf logits; p = 0 there contributes nothing
    fp32 = torch.tensor([[0.0, 1.0, float("-inf")]])
    int8 = torch.tensor([[0.0, 1.0, float("-inf")]])
    assert token_stats(fp32, int8, torch.tensor([0])).kld[0] == 0.0


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="logits must both be"):
        token_stats(torch.zeros(3, 5), torch.zeros(3, 6), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must be"):
        token_stats(torch.zeros(3, 5), torch.zeros(3, 5), torch.zeros(4, dtype=torch.long))


# -- summary statistics --------------------------------------------------------------------


def test_summary_matches_llama_cpp_formulas_computed_directly():
    fp32, int8, targets = random_case(n=300, noise=1.0, seed=3)
    per_token = [ref_token(fp32[i].tolist(), int8[i].tolist(), int(targets[i])) for i in range(300)]
    result = summarize(token_stats(fp32, int8, targets), greedy_match=0.75)
    n = 300

    klds = [t["kld"] for t in per_token]
    assert result.n_tokens == n
    assert result.mean_kld == pytest.approx(statistics.fmean(klds), rel=1e-9)
    assert result.kld_se == pytest.approx(statistics.stdev(klds) / math.sqrt(n), rel=1e-9)
    assert result.max_kld == pytest.approx(max(klds), rel=1e-9)
    assert result.p99_kld == pytest.approx(ref_percentile(klds, 99), rel=1e-9)

    agree = sum(t["same_top"] for t in per_token) / n
    assert result.same_top == agree
    assert result.same_top_se == pytest.approx(math.sqrt(agree * (1 - agree) / (n - 1)), rel=1e-9)

    nll_fp32 = -statistics.fmean(t["logp"] for t in per_token)
    nll_int8 = -statistics.fmean(t["logq"] for t in per_token)
    assert result.ppl_fp32 == pytest.approx(math.exp(nll_fp32), rel=1e-9)
    assert result.ppl_int8 == pytest.approx(math.exp(nll_int8), rel=1e-9)
    assert result.ppl_ratio == pytest.approx(result.ppl_int8 / result.ppl_fp32, rel=1e-9)

    # llama.cpp: unc(ln ratio)^2 = unc(nll_q)^2 + unc(nll_base)^2 - 2 cov(nll_q, nll_base)
    nq = [-t["logq"] for t in per_token]
    nb = [-t["logp"] for t in per_token]
    cov = statistics.covariance(nq, nb) / n
    ln_ratio_se = math.sqrt(statistics.variance(nq) / n + statistics.variance(nb) / n - 2 * cov)
    assert result.ppl_ratio_se == pytest.approx(result.ppl_ratio * ln_ratio_se, rel=1e-9)

    squares = [t["dp"] ** 2 for t in per_token]
    rms = math.sqrt(statistics.fmean(squares))
    assert result.rms_dp == pytest.approx(rms, rel=1e-9)
    assert result.rms_dp_se == pytest.approx(
        statistics.stdev(squares) / math.sqrt(n) / (2 * rms), rel=1e-9
    )
    assert result.greedy_match == 0.75


def test_the_ratio_is_known_far_better_than_either_perplexity():
    # both models miss the same hard tokens; the paired SE must reflect that
    fp32, int8, targets = random_case(n=400, noise=0.05, seed=5)
    result = summarize(token_stats(fp32, int8, targets))
    stats = token_stats(fp32, int8, targets)
    unpaired_se = math.sqrt(
        statistics.variance(stats.logp_reference.tolist()) / 400
        + statistics.variance(stats.logp_int8.tolist()) / 400
    )
    assert result.ppl_ratio_se < 0.2 * result.ppl_ratio * unpaired_se


def test_fewer_than_100_tokens_is_a_one_line_usage_error():
    fp32, int8, targets = random_case(n=MIN_TOKENS - 1)
    with pytest.raises(LlmqUsageError) as info:
        summarize(token_stats(fp32, int8, targets))
    assert str(info.value) == (
        "similarity needs at least 100 scored tokens (llama.cpp's minimum), "
        "got 99; raise --llmq-eval-tokens"
    )
    fp32, int8, targets = random_case(n=MIN_TOKENS)
    assert summarize(token_stats(fp32, int8, targets)).n_tokens == 100


def test_result_serialises_without_the_per_token_values_unless_asked():
    fp32, int8, targets = random_case()
    result = summarize(token_stats(fp32, int8, targets))
    data = result.as_dict()
    assert "kld_values" not in data
    assert json.loads(json.dumps(data)) == data
    assert len(result.as_dict(include_kld_values=True)["kld_values"]) == 150
    assert "kld_values" not in repr(result)
    text = str(result)
    assert "\n" not in text
    assert f"KLD {result.mean_kld:.5f}" in text and "same top" in text and "150 tokens" in text


def test_non_finite_numbers_become_null_in_json():
    result = SimilarityResult(
        n_tokens=100,
        mean_kld=float("nan"),
        kld_se=float("nan"),
        p99_kld=float("inf"),
        max_kld=float("inf"),
        same_top=0.0,
        same_top_se=0.0,
        ppl_fp32=10.0,
        ppl_int8=float("inf"),
        ppl_ratio=float("inf"),
        ppl_ratio_se=float("nan"),
        rms_dp=0.5,
    )
    data = result.as_dict()
    assert data["mean_kld"] is None and data["ppl_int8"] is None and data["ppl_fp32"] == 10.0
    json.dumps(data, allow_nan=False)


def test_token_stats_concatenate_in_order():
    fp32, int8, targets = random_case(n=10)
    whole = token_stats(fp32, int8, targets)
    joined = TokenStats.concat(
        [token_stats(fp32[:4], int8[:4], targets[:4]), token_stats(fp32[4:], int8[4:], targets[4:])]
    )
    assert joined.kld.tolist() == whole.kld.tolist()
    assert joined.same_top.tolist() == whole.same_top.tolist()


# -- windows -------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [2, 7, 64, 512])
@pytest.mark.parametrize("n_tokens", [100, 257, 2048])
def test_windows_score_each_token_once_after_a_context_only_prefix(window, n_tokens):
    plan = plan_windows(10_000, n_tokens, window)
    prefix = min(64, window // 2)
    scored = [i for w in plan for i in range(10_000)[w.targets]]
    assert scored == list(range(prefix + 1, prefix + 1 + n_tokens))  # contiguous, exact
    for w in plan:
        assert w.stop - w.start <= window  # never longer than the window
        assert w.stop - w.start - w.n_scored == prefix  # the prefix is context only
        # position j of the window predicts token start + j + 1 from j + 1 tokens of text:
        # the first scored one sees the prefix and itself
        first_context = w.targets.start - w.start
        assert first_context == prefix + 1
        assert w.targets.stop <= 10_000


@pytest.mark.parametrize("prefix", [1, 64, 256, 511])
def test_every_prefix_keeps_the_scored_span_and_the_context_guarantee(prefix):
    plan = plan_windows(10_000, 2048, 512, prefix)
    scored = [i for w in plan for i in range(10_000)[w.targets]]
    assert scored == list(range(prefix + 1, prefix + 1 + 2048))
    assert all(w.stop - w.start - w.n_scored == prefix for w in plan)
    assert len(plan) == math.ceil(2048 / (512 - prefix))  # fewest windows that fit


def test_half_a_window_of_prefix_is_llama_cpps_plan():
    # llama.cpp scores the second half of each window: 8 windows of 512 for 2,048 tokens
    plan = plan_windows(10_000, 2048, 512, prefix=256)
    assert [(w.start, w.stop, w.n_scored) for w in plan] == [
        (256 * i, 256 * i + 512, 256) for i in range(8)
    ]


def test_the_default_plan_needs_far_fewer_token_forwards():
    default = plan_windows(10_000, 2048, 512)
    llama = plan_windows(10_000, 2048, 512, prefix=256)
    forwards = sum(w.stop - w.start for w in default)
    assert len(default) == 5 and forwards == 2048 + 5 * 64 == 2368
    assert sum(w.stop - w.start for w in llama) == 4096


def test_a_prefix_outside_the_window_is_refused():
    with pytest.raises(ValueError, match="prefix must be between 1 and window - 1"):
        plan_windows(10_000, 100, 64, prefix=64)
    with pytest.raises(ValueError, match="prefix must be between 1 and window - 1"):
        plan_windows(10_000, 100, 64, prefix=0)


def test_windows_need_the_scored_tokens_plus_the_prefix():
    assert len(plan_windows(2048 + 64 + 1, 2048, 512)) == 5
    with pytest.raises(LlmqUsageError) as info:
        plan_windows(2048 + 64, 2048, 512)
    assert str(info.value) == (
        "evaluation text has only 2112 tokens, 2113 needed for --llmq-eval-tokens=2048; "
        "pass a longer --llmq-eval-text or lower --llmq-eval-tokens"
    )


# -- end to end on a tiny GPT-2 ---------------------------------------------------------------

TEXT = default_corpus()[:30_000]  # plenty for the tests' token counts, quick to tokenize


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_gpt2_dir)


@pytest.fixture(scope="module")
def perturbed(gpt2):
    from tiny_models import perturbed_copy

    return perturbed_copy(gpt2[0], 0.05)


@contextlib.contextmanager
def forward_lengths(model):
    """Collect the sequence length of every forward pass of ``model``."""
    lengths: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda _m, _args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        yield lengths
    finally:
        handle.remove()


def small_gpt2(tok, n_positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_positions=n_positions, n_layer=1, n_embd=32, n_head=2, vocab_size=len(tok)
    )
    return GPT2LMHeadModel(config).eval()


def test_a_model_against_itself_is_exactly_identical(gpt2):
    model, tok = gpt2
    result = measure_similarity(
        model,
        model,
        tok,
        text=TEXT,
        n_tokens=128,
        prompts=["The capital of France is"],
        greedy_tokens=4,
    )
    assert result.mean_kld == 0.0 and result.max_kld == 0.0
    assert result.same_top == 1.0
    assert result.ppl_ratio == 1.0
    assert result.greedy_match == 1.0


def test_a_perturbed_copy_is_measured_as_different(gpt2, perturbed):
    model, tok = gpt2
    result = measure_similarity(model, perturbed, tok, text=TEXT, n_tokens=128, prompts=())
    assert result.mean_kld > 1e-3
    assert result.kld_se > 0
    assert result.same_top < 1.0
    assert result.greedy_match is None  # no prompts, no generation


def test_models_in_training_mode_are_measured_without_dropout_and_handed_back(gpt2):
    model, tok = gpt2
    model.train()  # GPT-2 has dropout 0.1: two train-mode passes would differ
    try:
        result = measure_similarity(model, model, tok, text=TEXT, n_tokens=100, prompts=())
        assert result.mean_kld == 0.0
        assert model.training
    finally:
        model.eval()


def test_windows_never_exceed_the_model_context_and_score_exactly_n_tokens(gpt2):
    _, tok = gpt2
    short = small_gpt2(tok, n_positions=64)
    with forward_lengths(short) as lengths:
        result = measure_similarity(short, short, tok, text=TEXT, n_tokens=150, prompts=())
    assert result.n_tokens == 150 and len(result.kld_values) == 150
    assert max(lengths) == 64  # default window = min(context, 512), prefix 32
    assert len(lengths) == 2 * 5  # ceil(150 / 32) windows, each run by both models

    with forward_lengths(short) as lengths:
        measure_similarity(short, short, tok, text=TEXT, n_tokens=100, window=1000, prompts=())
    assert max(lengths) == 64  # an explicit window is capped by the context too


def test_the_default_window_is_512_tokens_when_the_context_is_longer(gpt2):
    _, tok = gpt2
    long = small_gpt2(tok, n_positions=1024)
    assert similarity.context_length(long) == 1024
    with forward_lengths(long) as lengths:
        measure_similarity(long, long, tok, text=TEXT, n_tokens=600, prompts=())
    assert lengths == [512, 512, 216, 216]  # 64 context + 448 scored, then 64 + 152


def test_an_explicit_window_shorter_than_the_context_is_used_as_given(gpt2):
    model, tok = gpt2
    with forward_lengths(model) as lengths:
        measure_similarity(model, model, tok, text=TEXT, n_tokens=100, window=64, prompts=())
    assert max(lengths) == 64  # the tiny GPT-2's context is 256


def test_too_short_a_text_is_a_one_line_usage_error(gpt2):
    model, tok = gpt2
    n_text = len(
        tok("The capital of France is Paris. " * 10, add_special_tokens=False)["input_ids"]
    )
    with pytest.raises(LlmqUsageError) as info:
        measure_similarity(
            model,
            model,
            tok,
            text="The capital of France is Paris. " * 10,
            n_tokens=200,
            window=64,
            prompts=(),
        )
    assert str(info.value) == (
        f"evaluation text has only {n_text} tokens, 233 needed for --llmq-eval-tokens=200; "
        "pass a longer --llmq-eval-text or lower --llmq-eval-tokens"
    )


def test_asking_for_fewer_than_100_tokens_fails_before_running_a_model(gpt2):
    model, tok = gpt2
    with pytest.raises(LlmqUsageError, match=r"--llmq-eval-tokens=50 is below the 100"):
        measure_similarity(model, model, tok, text=TEXT, n_tokens=50)


def test_importing_the_modules_does_not_import_torch():
    code = (
        "import sys, pytest_llmquant.similarity, pytest_llmquant.evaltext; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
