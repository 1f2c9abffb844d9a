"""A tiny Llama as a transformers directory and as GGUF files (F32, Q8_0, Q4_0), for the
runtime tests. Written with the ``gguf`` package the way llama.cpp's ``convert_hf_to_gguf``
writes a Llama: its hyper-parameters, its byte-level BPE tokenizer, and q/k rows permuted
from transformers' rotate-half order to llama.cpp's interleaved one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tiny_models import make_tokenizer

HIDDEN, HEADS, KV_HEADS, LAYERS, FFN = 64, 4, 2, 2, 128


def make_tiny_llama(directory: Path, seed: int = 0, vocab_size: int = 400) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(directory, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=FFN,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # weights big enough that 4-bit rounding shows in the logits
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _tokenizer_keys(writer, directory: Path) -> None:  # type: ignore[no-untyped-def]
    spec = json.loads((directory / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in spec.get("added_tokens", [])}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    eos = vocab["<|endoftext|>"]
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)


def hyperparameters(writer, config: dict, ffn: int) -> None:  # type: ignore[no-untyped-def]
    """The ``llama.*`` keys of a tiny model with ``config`` (its config.json) and FFN width
    ``ffn``; the rope base from transformers 5's ``rope_parameters`` or the older key."""
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(0)


def write_llama_gguf(directory: Path, dst: Path) -> Path:
    """The F32 GGUF of the transformers Llama in ``directory``."""
    from gguf import GGUFWriter
    from safetensors.numpy import load_file

    config = json.loads((directory / "config.json").read_text())
    w = load_file(str(directory / "model.safetensors"))
    writer = GGUFWriter(dst, "llama")
    hyperparameters(writer, config, FFN)
    _tokenizer_keys(writer, directory)
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }  # fmt: skip
    writer.add_tensor("token_embd.weight", w["model.embed_tokens.weight"])
    for i in range(LAYERS):
        layer_tensors(writer, w, i, names)
    return finish(writer, w, dst)


def layer_tensors(writer, w: dict[str, np.ndarray], i: int, names: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Layer ``i``'s tensors ``names`` (transformers -> GGUF), q/k rows in llama.cpp's order."""
    for hf, gg in names.items():
        t = w[f"model.layers.{i}.{hf}.weight"].astype(np.float32)
        if gg == "attn_q":
            t = _permute(t, HEADS)
        elif gg == "attn_k":
            t = _permute(t, KV_HEADS)
        writer.add_tensor(f"blk.{i}.{gg}.weight", t)


def finish(writer, w: dict[str, np.ndarray], dst: Path) -> Path:  # type: ignore[no-untyped-def]
    """The final norm and the output matrix, then the file."""
    writer.add_tensor("output_norm.weight", w["model.norm.weight"])
    writer.add_tensor("output.weight", w["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def tiny_llama_files(root: Path) -> dict[str, Path]:
    """``{"dir": ..., "F32": ..., "Q8_0": ..., "Q4_0": ...}`` under ``root``."""
    from pytest_llmquant.formats.gguf.write import rewrite_gguf

    directory = make_tiny_llama(root / "tiny-llama")
    f32 = write_llama_gguf(directory, root / "tiny-llama.F32.gguf")
    files = {"dir": directory, "F32": f32}
    for kind in ("Q8_0", "Q4_0"):
        files[kind] = rewrite_gguf(f32, root / f"tiny-llama.{kind}.gguf", kind)
    return files
