"""The stored FP32 reference: what it keeps, how exact it is, and when it is (re)built.

A warm run must not run the FP32 model at all, must give exactly the numbers of the cold
run, and the numbers must match the direct float computation: KLD to a tiny fraction of
its value and of its standard error, every other statistic exactly.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import re
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from pytest_llmquant.evaltext import default_corpus  # noqa: E402
from pytest_llmquant.models import cache as cache_mod  # noqa: E402
from pytest_llmquant.models.cache import LlmqCacheWarning, ModelCache  # noqa: E402
from pytest_llmquant.models.sources import resolve  # noqa: E402
from pytest_llmquant.similarity import (  # noqa: E402
    ReferenceStore,
    StoredReference,
    measure_similarity,
    reference_token_stats,
    token_stats,
)
from pytest_llmquant.similarity import reference as ref_mod  # noqa: E402

TEXT = default_corpus()[:30_000]
N = 256  # scored tokens: two windows of the tiny GPT-2's 256-token context (prefix 64)
PROMPTS = ["The capital of France is", "def add(a, b):"]


@pytest.fixture(autouse=True)
def fresh_warnings() -> None:
    cache_mod._warned.clear()


# -- the 16-bit form -------------------------------------------------------------------------


def random_log_probs(n: int = 20, vocab: int = 5000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.log_softmax(4 * torch.randn(n, vocab, generator=gen, dtype=torch.float64), -1)


def test_every_entry_comes_back_within_half_a_step_and_rows_stay_normalised():
    logp = random_log_probs()
    codes, base, step = ref_mod.encode_log_probs(logp)
    assert codes.dtype == np.uint16 and codes.shape == logp.shape
    back = ref_mod.decode_log_probs(codes, base, step)
    rng = logp.amax(1) - logp.amin(1)
    assert np.allclose(step, (rng / 65534).numpy())  # the row's own full range, no cut-off
    err = back - logp
    # rounding moves each entry by at most half a step; renormalising then shifts the
    # whole row by one amount, smaller than half a step
    assert ((err.amax(1) - err.amin(1)) <= torch.from_numpy(step) * (1 + 1e-6)).all()
    assert (err.abs().amax(1) <= torch.from_numpy(step)).all()
    assert torch.logsumexp(back, 1).abs().max() < 1e-12
    assert (back.argmax(1) == logp.argmax(1)).all()


def test_masked_entries_stay_minus_infinity_and_a_flat_row_survives():
    logp = torch.log_softmax(torch.tensor([[0.0, 1.0, float("-inf"), 2.0], [0.0] * 4]), -1)
    codes, base, step = ref_mod.encode_log_probs(logp.double())
    assert codes[0, 2] == 0 and (codes[0, [0, 1, 3]] > 0).all()
    back = ref_mod.decode_log_probs(codes, base, step)
    assert back[0, 2] == float("-inf")
    assert torch.allclose(back, logp.double(), atol=1e-4)
    assert torch.allclose(back[1], torch.full((4,), -math.log(4), dtype=torch.float64))


def stored(fp32_logits: torch.Tensor, targets: torch.Tensor) -> StoredReference:
    logp = torch.log_softmax(fp32_logits.double(), -1)
    codes, base, step = ref_mod.encode_log_probs(logp)
    return StoredReference(
        codes=codes,
        base=base,
        step=step,
        target_logp=logp.gather(1, targets[:, None])[:, 0].numpy(),
        top=logp.argmax(1).numpy(),
        targets=targets.numpy(),
        masked=(codes == 0).any(1),
    )


def test_stats_from_the_stored_form_match_the_direct_ones():
    gen = torch.Generator().manual_seed(3)
    fp32 = 3 * torch.randn(300, 2000, generator=gen)
    int8 = fp32 + 0.05 * torch.randn(300, 2000, generator=gen)
    targets = torch.randint(0, 2000, (300,), generator=gen)
    direct = token_stats(fp32, int8, targets)
    from_store = reference_token_stats(stored(fp32, targets), int8, targets)
    # exact side data: the statistics that do not read the 16-bit log-probs are identical
    assert from_store.same_top.tolist() == direct.same_top.tolist()
    assert from_store.logp_reference.tolist() == direct.logp_reference.tolist()
    assert from_store.logp_int8.tolist() == direct.logp_int8.tolist()
    assert from_store.dp.tolist() == direct.dp.tolist()
    # KLD: per token within 1% (rounding errors of random sign, weighted by p (log p - log q)),
    # and on the mean, where they average out, far better
    assert np.allclose(from_store.kld, direct.kld, rtol=1e-2, atol=0)
    mean_err = abs(from_store.kld.mean() - direct.kld.mean())
    se = direct.kld.std(ddof=1) / math.sqrt(300)
    assert mean_err < 1e-4 * direct.kld.mean() and mean_err < 1e-2 * se


def test_masked_logits_in_the_stored_form_give_the_same_kld():
    fp32 = torch.tensor([[0.0, 1.0, float("-inf"), 2.0]] * 3)
    int8 = torch.tensor([[0.1, 1.0, float("-inf"), 1.9]] * 3)
    targets = torch.tensor([0, 1, 3])
    direct = token_stats(fp32, int8, targets)
    from_store = reference_token_stats(stored(fp32, targets), int8, targets)
    assert np.isfinite(from_store.kld).all()
    assert np.allclose(from_store.kld, direct.kld, rtol=1e-3)


# -- end to end on the tiny GPT-2 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_gpt2_dir)


@pytest.fixture(scope="module")
def perturbed(gpt2):
    from tiny_models import perturbed_copy

    return perturbed_copy(gpt2[0], 0.01)


@contextlib.contextmanager
def calls_of(model):
    """Count the forward passes of ``model`` (generate() runs them too)."""
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def store_for(root: Path, tiny_gpt2_dir: Path, model) -> ReferenceStore:
    store = ReferenceStore.for_source(ModelCache(root), resolve(str(tiny_gpt2_dir)), model)
    assert store is not None
    return store


def measure(fp32, int8, tok, store, **kw):
    args = {"text": TEXT, "n_tokens": N, "prompts": PROMPTS, "greedy_tokens": 4, **kw}
    return measure_similarity(fp32, int8, tok, store=store, **args)


def entries(root: Path, namespace: str = ref_mod.KLD_NAMESPACE) -> list[Path]:
    folder = root / namespace
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def test_a_warm_run_runs_only_the_int8_model_and_gives_the_cold_numbers(
    gpt2, perturbed, tiny_gpt2_dir: Path, tmp_path: Path
):
    model, tok = gpt2
    with calls_of(model) as fp32_calls:
        cold = measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model))
    assert fp32_calls  # the reference was computed
    with calls_of(model) as fp32_calls, calls_of(perturbed) as int8_calls:
        warm = measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model))
    assert fp32_calls == []  # neither the windows nor the greedy prompts ran FP32
    assert len(int8_calls) == 2 + 2 * 4  # two windows, 4 greedy tokens for each prompt
    assert warm.as_dict(include_kld_values=True) == cold.as_dict(include_kld_values=True)
    assert len(entries(tmp_path)) == 1 and len(entries(tmp_path, ref_mod.GREEDY_NAMESPACE)) == 1


def test_stored_and_direct_statistics_agree(gpt2, perturbed, tiny_gpt2_dir: Path, tmp_path: Path):
    model, tok = gpt2
    direct = measure_similarity(
        model, perturbed, tok, text=TEXT, n_tokens=N, prompts=PROMPTS, greedy_tokens=4
    )
    cached = measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model))
    assert direct.mean_kld > 1e-3  # a real difference to measure
    err = abs(cached.mean_kld - direct.mean_kld)
    assert err < 1e-4 * direct.mean_kld and err < 1e-2 * direct.kld_se
    assert cached.kld_se == pytest.approx(direct.kld_se, rel=1e-3)
    for name in (
        "same_top",
        "same_top_se",
        "ppl_fp32",
        "ppl_int8",
        "ppl_ratio",
        "ppl_ratio_se",
        "rms_dp",
        "greedy_match",
    ):
        assert getattr(cached, name) == getattr(direct, name), name


@pytest.mark.parametrize(
    "change",
    [
        {"text": TEXT[1000:]},
        {"n_tokens": N + 50},
        {"window": 128},
        {"prefix": 32},
        {"prompts": PROMPTS[:1]},
        {"greedy_tokens": 5},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_different_text_token_count_plan_or_prompt_is_a_new_entry(
    gpt2, perturbed, tiny_gpt2_dir: Path, tmp_path: Path, change
):
    model, tok = gpt2
    measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model))
    before = entries(tmp_path) + entries(tmp_path, ref_mod.GREEDY_NAMESPACE)
    with calls_of(model) as fp32_calls:
        measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model), **change)
    assert fp32_calls  # a miss: FP32 ran again
    after = entries(tmp_path) + entries(tmp_path, ref_mod.GREEDY_NAMESPACE)
    assert len(after) == len(before) + 1 and set(before) < set(after)  # both kept


def test_another_reference_dtype_is_a_new_entry(
    gpt2, perturbed, tiny_gpt2_dir: Path, tmp_path: Path
):
    model, tok = gpt2
    measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model), prompts=())
    double = copy.deepcopy(model).double()
    with calls_of(double) as fp64_calls:
        result = measure(
            double, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, double), prompts=()
        )
    assert fp64_calls and len(entries(tmp_path)) == 2
    manifests = [json.loads((e / "llmq-cache.json").read_text()) for e in entries(tmp_path)]
    assert sorted("float64 on cpu" in m["identity"] for m in manifests) == [False, True]
    assert result.mean_kld > 0


def test_a_corrupt_entry_is_rebuilt_with_one_warning(
    gpt2, perturbed, tiny_gpt2_dir: Path, tmp_path: Path
):
    model, tok = gpt2
    first = measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model))
    [entry] = entries(tmp_path)
    codes = entry / "logprobs.npy"
    data = bytearray(codes.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the log-probs
    codes.write_bytes(bytes(data))
    with (
        pytest.warns(LlmqCacheWarning, match=r"similarity reference .* is corrupt \(logprobs.npy"),
        calls_of(model) as fp32_calls,
    ):
        again = measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model))
    assert fp32_calls
    assert again.as_dict(include_kld_values=True) == first.as_dict(include_kld_values=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # valid again: silent
        measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model))


def _rewrite_manifest(entry: Path) -> None:
    manifest_path = entry / "llmq-cache.json"
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["files"]:
        data = (entry / name).read_bytes()
        manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest))


def test_an_entry_with_valid_checksums_but_other_targets_is_rebuilt(
    gpt2, perturbed, tiny_gpt2_dir: Path, tmp_path: Path
):
    model, tok = gpt2
    first = measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model))
    [entry] = entries(tmp_path)
    with np.load(entry / "rows.npz") as rows:
        arrays = {k: rows[k] for k in rows.files}
    arrays["targets"] = arrays["targets"][::-1].copy()
    np.savez(entry / "rows.npz", **arrays)
    _rewrite_manifest(entry)  # as if a bug, not the disk, had written it
    with pytest.warns(LlmqCacheWarning, match="has other targets; rebuilding it"):
        again = measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model))
    assert again.mean_kld == first.mean_kld


def test_new_library_versions_or_model_files_make_the_entry_stale(
    gpt2, perturbed, tiny_gpt2_dir: Path, tmp_path: Path, monkeypatch
):
    model, tok = gpt2
    measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model), prompts=())
    import pytest_llmquant.versions as versions

    real = versions.library_versions()
    monkeypatch.setattr(versions, "library_versions", lambda: {**real, "torch": "0.0.1"})
    with pytest.warns(LlmqCacheWarning, match="is stale"), calls_of(model) as fp32_calls:
        measure(model, perturbed, tok, store_for(tmp_path, tiny_gpt2_dir, model), prompts=())
    assert fp32_calls and len(entries(tmp_path)) == 1  # replaced, not added


def test_the_fingerprint_of_a_directory_follows_its_files(tiny_gpt2_dir: Path, tmp_path: Path):
    import shutil

    copy_dir = tmp_path / "model"
    shutil.copytree(tiny_gpt2_dir, copy_dir)
    source = resolve(str(copy_dir))
    before = ref_mod.source_fingerprint(source, None)
    assert before is not None and before["path"] == str(copy_dir)
    (copy_dir / "config.json").write_text((copy_dir / "config.json").read_text() + " ")
    assert ref_mod.source_fingerprint(source, None) != before


def test_a_hub_model_is_cached_by_commit_and_not_at_all_without_one(tmp_path: Path):
    class Config:
        _commit_hash = "abc123"

    class Model:
        config = Config()

    source = resolve("org/some-model")
    assert ref_mod.source_fingerprint(source, Model()) == {"hub_commit": "abc123"}
    Config._commit_hash = None
    assert ReferenceStore.for_source(ModelCache(tmp_path), source, Model()) is None


def test_references_of_a_model_that_is_gone_are_pruned_on_the_next_miss(
    gpt2, perturbed, tiny_gpt2_dir: Path, tmp_path: Path
):
    import shutil

    model, tok = gpt2
    doomed = tmp_path / "doomed-model"
    shutil.copytree(tiny_gpt2_dir, doomed)
    cache_root = tmp_path / "cache"
    measure(model, perturbed, tok, store_for(cache_root, doomed, model))
    measure(model, perturbed, tok, store_for(cache_root, tiny_gpt2_dir, model))
    assert len(entries(cache_root)) == 2 and len(entries(cache_root, "similarity-greedy")) == 2
    shutil.rmtree(doomed)
    measure(model, perturbed, tok, store_for(cache_root, tiny_gpt2_dir, model), n_tokens=N + 1)
    identities = [
        json.loads((e / "llmq-cache.json").read_text())["fingerprint"]["path"]
        for e in entries(cache_root) + entries(cache_root, "similarity-greedy")
    ]
    assert identities == [str(tiny_gpt2_dir)] * 3  # the gone model's two entries were deleted


def test_the_identity_in_warnings_says_what_the_entry_is(gpt2, tiny_gpt2_dir: Path, tmp_path):
    model, tok = gpt2
    measure(model, model, tok, store_for(tmp_path, tiny_gpt2_dir, model), prompts=())
    [entry] = entries(tmp_path)
    identity = json.loads((entry / "llmq-cache.json").read_text())["identity"]
    assert re.fullmatch(
        r"similarity reference \(256 tokens, 2 windows\) of tiny-gpt2\S* "
        r"\(float32 on cpu, key [0-9a-f]{16}\)",
        identity,
    )


def test_the_codes_file_reads_exactly_the_rows_asked_for(tmp_path: Path) -> None:
    """Rows are read from the file per slice (a memory map would keep every page it
    touched in RSS): any slice equals the saved array's, and a short file is refused."""
    from pytest_llmquant.similarity.codes_file import CodesFile

    codes = np.random.default_rng(0).integers(0, 65535, size=(13, 7), dtype=np.uint16)
    np.save(tmp_path / "codes.npy", codes)
    stored = CodesFile(tmp_path / "codes.npy")
    assert stored.shape == (13, 7) and len(stored) == 13
    for lo, hi in [(0, 13), (3, 4), (5, 11), (12, 20), (7, 7)]:
        assert np.array_equal(stored[lo:hi], codes[lo:hi]), (lo, hi)
    data = (tmp_path / "codes.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-2])
    with pytest.raises(ValueError, match="truncated"):
        CodesFile(tmp_path / "short.npy")
    np.save(tmp_path / "floats.npy", codes.astype(np.float32))
    with pytest.raises(ValueError, match="uint16"):
        CodesFile(tmp_path / "floats.npy")
