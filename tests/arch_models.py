"""Tiny random models of many architectures, saved like hub checkpoints, for the matrix.

Each entry of :data:`ARCHITECTURES` is a transformers ``model_type`` and the few config
values that make it tiny (hidden 64, 2 layers, 4 heads) while keeping what makes the
architecture itself: GPT-2's Conv1D and learned positions, OPT's learned positions,
Phi-3's and GPT-NeoX's fused QKV, Falcon's multi-query attention, Bloom's ALiBi,
Gemma 2's soft-capped and tied logits, Mixtral's, Qwen2-MoE's and OLMoE's 3-D expert
banks. :func:`make_tiny` saves one with the byte-level tokenizer of :mod:`tiny_models`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 64, 2, 4, 128, 512
#: MoE models: 4 experts, the router picks 2 per token
MOE = {"num_experts_per_tok": 2}
_LLAMA_LIKE = {
    "hidden_size": HIDDEN,
    "intermediate_size": FFN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": 2,
    "max_position_embeddings": POSITIONS,
}

#: model_type -> config values; the test id is the key
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "gpt2": {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_positions": POSITIONS},
    "opt": {
        "hidden_size": HIDDEN,
        "ffn_dim": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "word_embed_proj_dim": HIDDEN,
        "max_position_embeddings": POSITIONS,
    },
    "llama": dict(_LLAMA_LIKE),
    "qwen2": dict(_LLAMA_LIKE),
    "qwen3": {**_LLAMA_LIKE, "head_dim": 16},
    "phi3": {**_LLAMA_LIKE, "pad_token_id": 0},
    "gpt_neox": {
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "max_position_embeddings": POSITIONS,
        "rotary_pct": 0.25,
    },
    "falcon": {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "multi_query": True,
        "new_decoder_architecture": False,
        "max_position_embeddings": POSITIONS,
    },
    "bloom": {"hidden_size": HIDDEN, "n_layer": LAYERS, "n_head": HEADS},
    "gemma2": {
        **_LLAMA_LIKE,
        "head_dim": 16,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "sliding_window": 128,
        "tie_word_embeddings": True,
    },
    "mixtral": {**_LLAMA_LIKE, **MOE, "num_local_experts": 4},
    "qwen2_moe": {
        **_LLAMA_LIKE,
        **MOE,
        "num_experts": 4,
        "moe_intermediate_size": FFN,
        "shared_expert_intermediate_size": FFN,
    },
    "olmoe": {**_LLAMA_LIKE, **MOE, "num_experts": 4},
}
#: the architectures whose experts are 3-D banks
MOE_ARCHITECTURES = ("mixtral", "qwen2_moe", "olmoe")


def make_tiny(arch: str, directory: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Save a random ``arch`` model (float32, safetensors) and the tiny tokenizer to
    ``directory``, as ``save_pretrained`` would for a hub checkpoint."""
    import torch
    from tiny_models import make_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(directory)
    ids = {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id}
    values = {**ids, "vocab_size": len(tok), **ARCHITECTURES[arch], **overrides}
    config = AutoConfig.for_model(arch, **values)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory
