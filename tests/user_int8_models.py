"""Helpers for the user-INT8 tests: a tiny Llama (nn.Linear layers, which torchao and
quanto quantize; GPT-2's Conv1D they skip) and a fresh process that reloads a saved
INT8 model through :func:`pytest_llmquant.int8.third_party.probe.load_saved_int8`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

#: a fixed input of 8 token ids, valid for the tiny tokenizer's vocabulary
IDS = [3, 17, 42, 99, 150, 7, 256, 31]

RELOAD = """
import json, sys, torch
torch.set_num_threads(1)
from pytest_llmquant.int8.third_party.probe import load_saved_int8
model = load_saved_int8(**json.loads(sys.argv[1]))
with torch.inference_mode():
    logits = model(torch.tensor([json.loads(sys.argv[2])])).logits
print("LOGITS " + json.dumps(logits.float().flatten().tolist()))
"""


def make_tiny_llama(directory: Path, seed: int = 0, *, tied: bool = False) -> Path:
    """A random-weight LlamaForCausalLM (hidden 64, 2 layers) with the tiny tokenizer;
    ``tied``: lm_head shares the embedding, as in SmolLM2."""
    import torch
    from tiny_models import make_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=256,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=tied,
    )
    LlamaForCausalLM(config).eval().save_pretrained(directory, safe_serialization=True)
    return directory


def load(directory: Path, **kwargs: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs.setdefault("dtype", torch.float32)
    return AutoModelForCausalLM.from_pretrained(directory, **kwargs).eval()


def logits(model: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(torch.tensor([IDS])).logits.float()


def reload_logits(spec: dict[str, str]) -> Any:
    """Logits of the model a fresh ``python -c`` process loads from ``spec``."""
    import torch

    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, json.dumps(spec), json.dumps(IDS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOGITS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    return torch.tensor(json.loads(lines[-1][len("LOGITS ") :]))
