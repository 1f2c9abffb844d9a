"""Small real models built on the spot, so tests need no network.

``make_tiny_gpt2`` builds a ``GPT2LMHeadModel`` (Conv1D layers, tied lm_head) from
``GPT2Config`` and a byte-level BPE tokenizer trained locally on the evaluation
corpus, and saves both with ``save_pretrained`` (safetensors) to a directory that
``--llmq-model=DIR`` can load.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Quantization maps floating point weights to eight bit integers with a scale.",
    "A test that cannot fail proves nothing; a gate must be shown to fail.",
    "def add(a, b):\n    return a + b\n",
] * 20


def make_tokenizer(directory: Path, vocab_size: int = 400):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.save_pretrained(directory)
    return tok


def make_tiny_gpt2(
    directory: Path, *, n_layer: int = 2, n_embd: int = 64, n_positions: int = 256, seed: int = 0
) -> Path:
    """A trained-from-nothing but real GPT-2: random weights, real Conv1D code path."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(directory)
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=4,
        n_positions=n_positions,
        vocab_size=len(tok),
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def perturbed_copy(model, scale: float, seed: int = 1):
    """A deep copy of ``model`` with ``scale`` x N(0, 1) noise added to every parameter: a
    stand-in for an INT8 model that differs from its reference by a known amount."""
    import copy

    import torch

    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in noisy.parameters():
            param.add_(scale * torch.randn(param.shape, generator=gen))
    return noisy
