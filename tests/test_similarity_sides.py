"""The similarity gate reads model sides, not modules: a pure-Python side whose logits come
from a fixed table is measured like any model, and its statistics are the ones the table
implies, worked out here by hand.

The fake tokenizer maps each character to one id (``ord(c) % VOCAB``) and the fake side's
logits at a position depend only on the id read there (row ``table[id]``), so the KLD,
same-top and PPL of a measurement follow from the text alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pytest_llmquant.models.cache import ModelCache  # noqa: E402
from pytest_llmquant.sides.base import ModelSide  # noqa: E402
from pytest_llmquant.similarity import (  # noqa: E402
    DEFAULT_WINDOW,
    ReferenceStore,
    default_prefix,
    greedy_match,
    measure_similarity,
    window_for,
)

VOCAB = 8
CONTEXT = 64
TEXT = "the quick brown fox jumps over the lazy dog; " * 8  # 360 characters, 360 ids
N_TOKENS = 100


def reference_table() -> list[list[float]]:
    return [[((t * 3 + v * 5) % 7) / 2.0 for v in range(VOCAB)] for t in range(VOCAB)]


def nudged_table() -> list[list[float]]:
    """The reference table moved by up to 0.9 per entry: enough to flip some argmaxes."""
    return [
        [x + 0.9 * ((t + v) % 3 - 1) for v, x in enumerate(row)]
        for t, row in enumerate(reference_table())
    ]


class CharTokenizer:
    """One id per character; no special tokens."""

    bos_token_id = None
    eos_token_id = None
    pad_token_id = None

    def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % VOCAB for c in text]}

    def decode(self, ids: Sequence[int], **kwargs: object) -> str:
        raise NotImplementedError

    def save_pretrained(self, directory: str) -> None:
        raise NotImplementedError


@dataclass
class TableSide:
    """A :class:`ModelSide` with no model: the logits at a position are ``table[id]``."""

    table: list[list[float]]
    label: str = "table"
    context: int | None = CONTEXT
    runtime: str = "fake"
    device: str = "cpu"
    dtype: str = "float64"
    origin: None = None
    forwards: int = 0
    measured_with: list[int] = field(default_factory=list)
    measuring_now: bool = False

    def context_length(self) -> int | None:
        return self.context

    def vocab_size(self) -> int:
        return VOCAB

    @contextmanager
    def measuring(self, threads: int) -> Iterator[None]:
        self.measured_with.append(threads)
        self.measuring_now = True
        try:
            yield
        finally:
            self.measuring_now = False

    def scored_logits(self, input_ids: torch.Tensor, n_scored: int) -> torch.Tensor:
        assert self.measuring_now and input_ids.shape[1] <= CONTEXT
        self.forwards += 1
        rows = [self.table[int(t)] for t in input_ids[0, -n_scored:]]
        return torch.tensor(rows, dtype=torch.float64)

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.tensor([self.table[ids[-1]] for ids in prompts], dtype=torch.float64)

    def greedy(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
        out = []
        for ids in prompts:
            last, continuation = ids[-1], []
            for _ in range(new_tokens):
                row = self.table[last]
                last = row.index(max(row))
                continuation.append(last)
            out.append(continuation)
        return out

    def decode_timer(self, *args: object, **kwargs: object) -> object:
        raise NotImplementedError  # similarity never times

    def weight_bytes(self) -> dict[str, int]:
        raise NotImplementedError

    def shipped_file(self, directory: Path) -> object:
        raise NotImplementedError

    def probe_spec(self, workdir: Path) -> object:
        raise NotImplementedError


def log_softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    norm = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - norm for x in row]


def expected(reference: list[list[float]], int8: list[list[float]]) -> dict[str, float]:
    """The statistics by hand: scored positions are ``prefix .. prefix + N_TOKENS - 1``
    (the windows' scored spans are contiguous), each predicting the next id."""
    ids = CharTokenizer()(TEXT)["input_ids"]
    prefix = default_prefix(CONTEXT)
    kld, same, lp, lq = [], [], [], []
    for pos in range(prefix, prefix + N_TOKENS):
        p, q = log_softmax(reference[ids[pos]]), log_softmax(int8[ids[pos]])
        kld.append(sum(math.exp(a) * (a - b) for a, b in zip(p, q, strict=True)))
        same.append(p.index(max(p)) == q.index(max(q)))
        lp.append(p[ids[pos + 1]])
        lq.append(q[ids[pos + 1]])
    return {
        "mean_kld": sum(kld) / N_TOKENS,
        "max_kld": max(kld),
        "same_top": sum(same) / N_TOKENS,
        "ppl_fp32": math.exp(-sum(lp) / N_TOKENS),
        "ppl_int8": math.exp(-sum(lq) / N_TOKENS),
    }


def measure(reference: ModelSide, int8: ModelSide, **kw: object):
    args: dict = {"text": TEXT, "n_tokens": N_TOKENS, "prompts": ["fox", "dog"], **kw}
    return measure_similarity(reference, int8, CharTokenizer(), greedy_tokens=4, **args)


def test_the_fake_is_a_model_side() -> None:
    assert isinstance(TableSide(reference_table()), ModelSide)


def test_two_identical_sides_are_identical() -> None:
    result = measure(TableSide(reference_table()), TableSide(reference_table()))
    assert result.mean_kld == 0.0 and result.max_kld == 0.0
    assert result.same_top == 1.0 and result.ppl_ratio == 1.0
    assert result.greedy_match == 1.0
    assert result.window == CONTEXT  # the default 512, capped by the sides' context


def test_the_statistics_are_what_the_tables_imply() -> None:
    result = measure(TableSide(reference_table()), TableSide(nudged_table()))
    want = expected(reference_table(), nudged_table())
    assert 0 < want["same_top"] < 1 and want["mean_kld"] > 0.01  # a real difference
    for name, value in want.items():
        assert getattr(result, name) == pytest.approx(value, rel=1e-9), name
    assert result.ppl_ratio == pytest.approx(want["ppl_int8"] / want["ppl_fp32"], rel=1e-9)
    assert result.n_tokens == N_TOKENS


def test_greedy_continuations_are_compared_position_by_position() -> None:
    # "fox" ends in 'x' (id 0) and "dog" in 'g' (id 7): the tables agree on some steps only
    reference, int8 = TableSide(reference_table()), TableSide(nudged_table())
    ids = [CharTokenizer()(p)["input_ids"] for p in ("fox", "dog")]
    same = sum(
        a == b
        for r, q in zip(reference.greedy(ids, 4), int8.greedy(ids, 4), strict=True)
        for a, b in zip(r, q, strict=True)
    )
    assert greedy_match(reference, int8, CharTokenizer(), ["fox", "dog"], 4) == same / 8


def test_both_sides_are_measured_with_the_threads_asked_for_and_handed_back() -> None:
    reference, int8 = TableSide(reference_table()), TableSide(nudged_table())
    measure(reference, int8, threads=3)
    assert reference.measured_with == int8.measured_with == [3]
    assert not reference.measuring_now and not int8.measuring_now


def test_the_window_is_the_shorter_context_or_512() -> None:
    short, endless = TableSide(reference_table()), TableSide(reference_table(), context=None)
    assert window_for(short, endless) == CONTEXT
    assert window_for(short, endless, window=1000) == CONTEXT  # asked for more: capped
    assert window_for(short, endless, window=16) == 16
    assert window_for(endless, endless) == DEFAULT_WINDOW


def test_a_stored_reference_of_a_side_spares_its_second_run(tmp_path: Path) -> None:
    store = ReferenceStore(ModelCache(tmp_path), "table", {"table": "v1"}, label="table")
    reference = TableSide(reference_table())
    cold = measure(reference, TableSide(nudged_table()), store=store)
    forwards = reference.forwards
    warm = measure(reference, TableSide(nudged_table()), store=store)
    assert forwards > 0 and reference.forwards == forwards  # warm: the reference never ran
    assert warm.as_dict(include_kld_values=True) == cold.as_dict(include_kld_values=True)
    direct = measure(TableSide(reference_table()), TableSide(nudged_table()))
    assert cold.same_top == direct.same_top and cold.ppl_fp32 == direct.ppl_fp32
    assert cold.mean_kld == pytest.approx(direct.mean_kld, rel=1e-4)  # 16-bit log-probs


def test_the_store_is_still_accepted_by_its_old_name(tmp_path: Path) -> None:
    store = ReferenceStore(ModelCache(tmp_path), "table", {"table": "v1"}, label="table")
    reference, tok = TableSide(reference_table()), CharTokenizer()
    kw = {"text": TEXT, "n_tokens": N_TOKENS, "prompts": ()}
    new = measure_similarity(reference, TableSide(nudged_table()), tok, store=store, **kw)
    forwards = reference.forwards
    old = measure_similarity(reference, TableSide(nudged_table()), tok, reference=store, **kw)
    assert reference.forwards == forwards  # the same entry, read back
    assert old.as_dict(include_kld_values=True) == new.as_dict(include_kld_values=True)
    with pytest.raises(TypeError, match="both store= and reference="):
        measure_similarity(reference, reference, tok, store=store, reference=store, **kw)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['windows'\]"):
        measure_similarity(reference, reference, tok, windows=64, **kw)  # type: ignore[arg-type]


def test_the_result_serialises_as_before_sides() -> None:
    """``window`` and ``measured_on`` are fields, but not keys of :meth:`as_dict`: the
    gate's measurement carries them (flat, from ``measured_on``), so reports and baselines
    keep their shape."""
    result = measure(TableSide(reference_table()), TableSide(nudged_table()))
    assert list(result.as_dict()) == [
        "n_tokens",
        "mean_kld",
        "kld_se",
        "p99_kld",
        "max_kld",
        "same_top",
        "same_top_se",
        "ppl_fp32",
        "ppl_int8",
        "ppl_ratio",
        "ppl_ratio_se",
        "rms_dp",
        "rms_dp_se",
        "greedy_match",
    ]
    assert result.measured_on is None and result.ppl_reference == result.ppl_fp32


def test_a_module_and_its_torch_side_measure_the_same(tiny_gpt2_dir: Path) -> None:
    from tiny_models import perturbed_copy
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_llmquant.sides.torch_side import TorchSide

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    int8 = perturbed_copy(model, 0.01)
    from pytest_llmquant.evaltext import default_corpus

    kw = {"text": default_corpus()[:20_000], "n_tokens": 128, "prompts": ["Hello"]}
    modules = measure_similarity(model, int8, tok, greedy_tokens=3, **kw)
    sides = measure_similarity(
        TorchSide(model, "FP32", tokenizer=tok),
        TorchSide(int8, "INT8", tokenizer=tok),
        tok,
        greedy_tokens=3,
        **kw,
    )
    assert sides.as_dict(include_kld_values=True) == modules.as_dict(include_kld_values=True)
    assert sides.window == modules.window == 256  # the tiny GPT-2's context
