"""A tiny Mixtral as a transformers directory and as GGUF files (F32 and ``Q8_0``), written
the way llama.cpp's ``convert_hf_to_gguf`` writes a Mixtral: architecture ``llama`` with
``expert_count`` and ``expert_used_count``, each layer's experts stacked into three 3-D
tensors (``ffn_gate_exps``, ``ffn_up_exps``: (experts, intermediate, hidden);
``ffn_down_exps``: (experts, hidden, intermediate)), the router as ``ffn_gate_inp``, and
q/k rows permuted to llama.cpp's interleaved order.

Why: the GGUF route must put expert blocks into the INT8 model losslessly, and the only
honest proof of the writer itself is llama.cpp running the F32 file to the same logits as
transformers (:mod:`test_gguf_moe` does both).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from arch_models import FFN, LAYERS, make_tiny
from gguf_llama import _tokenizer_keys, finish, hyperparameters, layer_tensors

KV_HEADS, EXPERTS, USED = 2, 4, 2


def _attention_and_norms(writer, w: dict[str, np.ndarray], i: int) -> None:  # type: ignore[no-untyped-def]
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }  # fmt: skip
    layer_tensors(writer, w, i, names)


def _experts(writer, w: dict[str, np.ndarray], i: int) -> None:  # type: ignore[no-untyped-def]
    moe = f"model.layers.{i}.block_sparse_moe"
    writer.add_tensor(f"blk.{i}.ffn_gate_inp.weight", w[f"{moe}.gate.weight"])
    for hf, gg in (("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")):
        bank = np.stack([w[f"{moe}.experts.{e}.{hf}.weight"] for e in range(EXPERTS)])
        writer.add_tensor(f"blk.{i}.{gg}.weight", bank.astype(np.float32))


def write_mixtral_gguf(directory: Path, dst: Path, ffn: int = FFN) -> Path:
    """The F32 GGUF of the transformers Mixtral in ``directory`` (expert width ``ffn``)."""
    from gguf import GGUFWriter
    from safetensors.numpy import load_file

    config = json.loads((directory / "config.json").read_text())
    w = load_file(str(directory / "model.safetensors"))
    writer = GGUFWriter(dst, "llama")
    hyperparameters(writer, config, ffn)
    writer.add_expert_count(EXPERTS)
    writer.add_expert_used_count(USED)
    _tokenizer_keys(writer, directory)
    writer.add_tensor("token_embd.weight", w["model.embed_tokens.weight"])
    for i in range(LAYERS):
        _attention_and_norms(writer, w, i)
        _experts(writer, w, i)
    return finish(writer, w, dst)


def tiny_mixtral_files(root: Path, ffn: int = FFN, name: str = "tiny-mixtral") -> dict[str, Path]:
    """``{"dir": ..., "F32": ..., "Q8_0": ...}`` under ``root``: a random 2-layer Mixtral
    with 4 experts of width ``ffn``, top-2 (:data:`arch_models.ARCHITECTURES`), and its
    GGUF files."""
    from pytest_llmquant.formats.gguf.write import rewrite_gguf

    directory = make_tiny(
        "mixtral", root / name, num_key_value_heads=KV_HEADS, intermediate_size=ffn
    )
    f32 = write_mixtral_gguf(directory, root / f"{name}.F32.gguf", ffn=ffn)
    q8 = rewrite_gguf(f32, root / f"{name}.Q8_0.gguf", "Q8_0")
    return {"dir": directory, "F32": f32, "Q8_0": q8}
