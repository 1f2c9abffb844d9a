"""Hypothesis strategies for testing quantized causal LMs, and a CI settings profile.

Users import this module explicitly (``from pytest_llmquant.strategies import prompts``),
so it may import hypothesis at top level; torch and transformers are imported only
inside the functions that need a model, because the plugin itself must stay light.

Why these strategies exist: a quantized model usually breaks on inputs nobody typed
by hand (a CJK prompt whose bytes split into many tokens, a trailing newline, a rare
token id, a sampling config with a tiny ``top_p``). The strategies generate those
inputs, and shrink towards short plain text, greedy decoding and low token ids so
that a failure is reported on the simplest input that shows it.

Example::

    from hypothesis import given
    from pytest_llmquant.strategies import apply_generation_config, generation_configs, prompts

    @given(prompts(max_size=80), generation_configs())
    def test_int8_generates(llmq_pair, prompt, cfg):
        inputs = llmq_pair.tokenizer(prompt, return_tensors="pt")
        out = apply_generation_config(llmq_pair.int8, inputs, cfg)
        ...
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

if TYPE_CHECKING:
    import torch
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "PROFILE_NAME",
    "apply_generation_config",
    "generation_configs",
    "prompts",
    "register_profiles",
    "special_token_ids",
    "token_ids",
]

#: name of the settings profile :func:`register_profiles` registers
PROFILE_NAME = "llmq-ci"

# fmt: off
#: used when ``pytest_llmquant.evaltext`` is missing or yields no words; ordered short
#: first, because ``sampled_from`` shrinks towards the first element
_FALLBACK_WORDS: tuple[str, ...] = tuple(sorted((
    "a", "is", "of", "the", "and", "cat", "map", "int", "test", "text", "model", "scale",
    "token", "weight", "eight", "float", "layer", "paris", "france", "integer", "quantize",
    "pytest", "generate", "capital", "language", "precision",
), key=lambda w: (len(w), w)))

#: pieces that tokenizers and models handle badly; each is a separate ``sampled_from``
#: element so a failure shrinks to the one piece that matters
_UNICODE_PIECES: tuple[str, ...] = (
    "café", "naïve", "Zürich", "façade", "e\u0301",  # precomposed and combining accents
    "日本語", "中文测试", "한국어", "こんにちは",  # CJK: several bytes, often several tokens, per char
    "🙂", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷",  # emoji, skin tone modifier, ZWJ sequence, flag
    "שלום", "مرحبا",  # right-to-left scripts
    "Ω≈ç√∫", "“quoted”", "—", "…", "\u200b",  # symbols, smart quotes, zero-width space
)
_PUNCTUATION: tuple[str, ...] = (".", ",", "?", "!", ":", ";", "'", '"', "(", ")", "-", "#")
_WHITESPACE: tuple[str, ...] = (
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \t ", "\u00a0", "\u3000",
)
# fmt: on
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_MAX_WORDS = 5000


@functools.lru_cache(maxsize=1)
def _corpus_words() -> tuple[str, ...]:
    """Distinct words of the evaluation corpus, shortest first (the shrink order).

    The corpus module is written separately and may be absent in an older install;
    a strategy must still work then, so any failure falls back to a built-in list.
    """
    try:
        from .evaltext import default_corpus

        text = default_corpus()
    except Exception:  # ImportError, or a corpus that cannot be built here
        return _FALLBACK_WORDS
    words = sorted(set(_WORD.findall(text)), key=lambda w: (len(w), w))
    return tuple(words[:_MAX_WORDS]) or _FALLBACK_WORDS


def _fit(lead: str, core: str, trail: str, filler: str, min_size: int, max_size: int) -> str:
    """Join the parts and bring the length into ``[min_size, max_size]`` characters.

    ``core`` starts with a non-whitespace character, and it is the last thing cut, so the
    result is never empty after ``strip()``.
    """
    text = lead + core + trail
    if len(text) > max_size:
        text = lead + core
    if len(text) > max_size:
        text = core
    text = text[:max_size]
    while len(text) < min_size:
        text = text + " " + filler
    return text[:max_size]


def prompts(min_size: int = 1, max_size: int = 200) -> SearchStrategy[str]:
    """Natural-ish prompts of ``min_size`` to ``max_size`` characters (code points).

    Three kinds, in shrink order: plain words of the evaluation corpus joined by single
    spaces; words mixed with punctuation, accents, CJK, emoji, right-to-left text and
    odd whitespace (tabs, newlines, repeated and non-breaking spaces), with optional
    leading and trailing whitespace; and arbitrary printable unicode.

    Every prompt has at least one non-whitespace character (``prompt.strip() != ""``):
    an empty prompt tokenizes to zero ids, which ``generate`` rejects for models without
    a BOS token. That is a tokenizer edge case, not a quantization one, so test it on its
    own if you need it. Length is bounded in characters, not tokens: one CJK character or
    emoji can be several tokens, so truncate with the tokenizer (``truncation=True,
    max_length=...``) when a model has a short context.
    """
    if min_size < 1:
        raise InvalidArgument(f"prompts(min_size={min_size}): min_size must be at least 1")
    if max_size < min_size:
        raise InvalidArgument(
            f"prompts(min_size={min_size}, max_size={max_size}): max_size must be >= min_size"
        )
    words = _corpus_words()
    word = st.sampled_from(words)
    max_words = max(1, max_size // 2)

    plain = st.lists(word, min_size=1, max_size=max_words).map(" ".join)

    piece = st.one_of(word, st.sampled_from(_UNICODE_PIECES), st.sampled_from(_PUNCTUATION))
    sep = st.one_of(st.just(" "), st.just(""), st.sampled_from(_WHITESPACE))
    mixed = st.lists(st.tuples(piece, sep), min_size=1, max_size=max_words).map(
        lambda parts: "".join(p + s for p, s in parts)
    )

    printable = st.text(
        alphabet=st.characters(exclude_categories=("Cs", "Co", "Cn", "Cc")),
        min_size=1,
        max_size=max_size,
    )

    def finish(parts: tuple[str, str, str]) -> str:
        lead, core, trail = parts
        # the core must start with a visible character so the prompt is non-empty after strip
        core = core.lstrip() or words[0]
        return _fit(lead, core, trail, words[0], min_size, max_size)

    no_space = st.just("")
    edge_space = st.one_of(no_space, st.sampled_from(_WHITESPACE))
    return st.one_of(
        st.tuples(no_space, plain, no_space),
        st.tuples(edge_space, mixed, edge_space),
        st.tuples(edge_space, printable, edge_space),
    ).map(finish)


def special_token_ids(tokenizer: object) -> frozenset[int]:
    """Ids of the tokenizer's special tokens (BOS, EOS, PAD, UNK, added special tokens).

    Models are trained on few of these in running text, and many (PAD, UNK) have
    untrained embeddings, so a logit gap there says nothing about the quantizer.
    """
    ids: set[int] = set()
    ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", None) or () if i is not None)
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, tok in added.items() if getattr(tok, "special", False))
    return frozenset(ids)


def token_ids(tokenizer: object, min_len: int = 1, max_len: int = 64) -> SearchStrategy[list[int]]:
    """Lists of ``min_len`` to ``max_len`` ids valid for ``tokenizer``, special ids excluded.

    Valid means ``0 <= id < len(tokenizer)`` (``len`` counts added tokens, unlike
    ``vocab_size``). Ids shrink towards the lowest non-special id. Note that the
    model's embedding matrix may be larger than the tokenizer (padded vocabularies);
    ids beyond the tokenizer have no text, so they are never drawn.
    """
    if min_len < 0 or max_len < min_len:
        raise InvalidArgument(
            f"token_ids(min_len={min_len}, max_len={max_len}): need 0 <= min_len <= max_len"
        )
    if not isinstance(tokenizer, Sized):
        raise InvalidArgument(
            f"token_ids: {type(tokenizer).__name__} has no len(); pass a transformers tokenizer"
        )
    size = len(tokenizer)
    special = special_token_ids(tokenizer)
    allowed = [i for i in range(size) if i not in special]
    if not allowed:
        raise InvalidArgument(f"token_ids: all {size} ids of the tokenizer are special")
    return st.lists(st.sampled_from(allowed), min_size=min_len, max_size=max_len)


def generation_configs(max_new_tokens: int = 16) -> SearchStrategy[dict[str, object]]:
    """Keyword arguments for ``model.generate``: greedy, or sampling with a fixed seed.

    Greedy configs are ``{"do_sample": False, "max_new_tokens": n}``. Sampling configs
    add ``temperature`` (0.1 to 2), ``top_k`` (1 to 50), ``top_p`` (0.05 to 1) and a
    ``seed``. ``seed`` is not a ``generate`` argument: pass the config to
    :func:`apply_generation_config`, which seeds torch with it and calls ``generate``,
    or pop it yourself and call ``torch.manual_seed(cfg.pop("seed"))`` first. Shrinks
    towards greedy decoding of one token.
    """
    if max_new_tokens < 1:
        raise InvalidArgument(f"generation_configs(max_new_tokens={max_new_tokens}): must be >= 1")
    new_tokens = st.integers(1, max_new_tokens)
    greedy = st.fixed_dictionaries({"do_sample": st.just(False), "max_new_tokens": new_tokens})
    sampling = st.fixed_dictionaries(
        {
            "do_sample": st.just(True),
            "max_new_tokens": new_tokens,
            "temperature": st.floats(0.1, 2.0, allow_nan=False, allow_infinity=False),
            "top_k": st.integers(1, 50),
            "top_p": st.floats(0.05, 1.0, allow_nan=False, allow_infinity=False),
            "seed": st.integers(0, 2**32 - 1),
        }
    )
    return st.one_of(greedy, sampling)


def apply_generation_config(model: Any, inputs: Any, cfg: Mapping[str, Any]) -> torch.Tensor:
    """Run ``model.generate`` with a config from :func:`generation_configs`; return the ids.

    ``inputs`` is what a tokenizer returns (``tokenizer(text, return_tensors="pt")``),
    any mapping of tensors, or a tensor of input ids. ``cfg`` is not modified. A
    ``seed`` seeds torch inside :func:`torch.random.fork_rng`, so the same config gives
    the same tokens every time and the caller's random state is left as it was.
    When the model has no pad token, EOS is used, as ``generate`` would, but silently.
    """
    import torch

    kwargs = dict(cfg)
    seed = kwargs.pop("seed", None)
    if isinstance(inputs, torch.Tensor):
        model_inputs: dict[str, Any] = {"input_ids": inputs}
    else:
        model_inputs = dict(inputs)
    device = getattr(model, "device", None)
    if device is not None:
        model_inputs = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_inputs.items()
        }
    gen_cfg = getattr(model, "generation_config", None)
    if "pad_token_id" not in kwargs and gen_cfg is not None and gen_cfg.pad_token_id is None:
        eos = gen_cfg.eos_token_id
        if isinstance(eos, Sequence) and not isinstance(eos, str):
            eos = eos[0] if eos else None
        if eos is not None:
            kwargs["pad_token_id"] = eos
    fork_devices: list[Any] = []
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        fork_devices = [device]
    with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
        if seed is not None:
            torch.manual_seed(int(seed))
        return model.generate(**model_inputs, **kwargs)


_registered = False


def register_profiles() -> None:
    """Register the ``llmq-ci`` settings profile; safe to call any number of times.

    The profile makes CI runs reproducible and bounded: the same examples every run
    (``derandomize``), no example database written to the checkout (``database=None``),
    no per-example deadline (a forward pass of a real model is slow and its time
    varies), 25 examples, and the reproduction blob printed on failure. It is only
    registered here, never loaded: choose it with ``--hypothesis-profile=llmq-ci``
    or ``settings.load_profile("llmq-ci")``.
    """
    global _registered
    if _registered:
        return
    settings.register_profile(
        PROFILE_NAME,
        derandomize=True,
        deadline=None,
        max_examples=25,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    _registered = True
