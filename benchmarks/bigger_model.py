"""The similarity and memory gates on a 1.1B-parameter model: peak RSS and wall time.

Issue 13 item 4 ("bigger models in the same RAM"): a TinyLlama-1.1B-shaped Llama (hidden
2048, intermediate 5632, 22 layers, 32 heads, 4 KV heads, vocabulary 32000, untied
lm_head), random weights (N(0, 0.02), norms 1), is built from its config in a child
process and saved as safetensors to a temporary directory, with a byte-level BPE tokenizer
trained on the evaluation corpus (every id it makes is below 32000). Then this process
runs ``pytest --llmq-suite -k "similarity or memory"`` on it in-process (the plugin's own
loading, ``weight-only-int8``, the similarity gate over ``--tokens`` scored tokens and the
memory gate on weights) and reports:

* the peak resident memory of this process (``VmHWM``: loading both models, quantizing,
  both gates), against the target 1.6 x the reference weight bytes + 1 GB;
* the wall time of the gates run (the build is timed apart);
* what the gates found.

Random weights make the quality numbers meaningless (near-uniform next-token
distributions); what this measures is memory and time at 8x SmolLM2's size.

    python benchmarks/bigger_model.py [--tokens 2048] [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
GB = 1e9


def build(directory: Path) -> None:
    """Save the random model and the tokenizer (run in a child process, so this process's
    peak RSS is the gates' alone). The weights are made on the meta device and filled in
    place: no default initialisation first, no second copy."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from pytest_llmquant.evaltext import default_corpus

    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0) if "norm" in name else param.normal_(0.0, 0.02)
    model.save_pretrained(directory, safe_serialization=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        default_corpus().split("\n\n"),
        vocab_size=CONFIG["vocab_size"],
        special_tokens=["<|endoftext|>"],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    assert len(tokenizer) <= CONFIG["vocab_size"]
    tokenizer.save_pretrained(directory)


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def run_gates(model_dir: Path, work: Path, tokens: int, threads: int) -> dict[str, Any]:
    import pytest

    suite_dir = Path(__file__).resolve().parents[1] / "examples" / "suite"
    report = work / "report.json"
    start = time.perf_counter()
    code = pytest.main(
        [
            str(suite_dir),
            "--llmq-suite",
            f"--llmq-model={model_dir}",
            "--llmq-scheme=weight-only-int8",
            f"--llmq-eval-tokens={tokens}",
            f"--llmq-threads={threads}",
            f"--llmq-cache-dir={work / 'cache'}",
            f"--llmq-report={report}",
            "-k",
            "similarity or memory",
            "-p",
            "no:cacheprovider",
            "-q",
        ]
    )
    wall = time.perf_counter() - start
    return {"exit_code": int(code), "wall_s": wall, "report": json.loads(report.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", type=int, default=2048, help="scored tokens (default 2048, the gate's own)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--keep", type=Path, help="build into (or reuse) this directory")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        build(args.build_only)
        return

    work = Path(tempfile.mkdtemp(prefix="llmq-bigger-"))
    model_dir = args.keep or work / "model"
    try:
        if not (model_dir / "config.json").exists():
            start = time.perf_counter()
            model_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, __file__, "--build-only", str(model_dir)], check=True)
            print(f"built and saved the model in {time.perf_counter() - start:.1f} s")
        before = status_kib("VmRSS") * 1024 / GB
        found = run_gates(model_dir, work, args.tokens, args.threads)
        peak = status_kib("VmHWM") * 1024 / GB
        gates = [g for pair in found["report"]["pairs"].values() for g in pair["gates"]]
        memory = next(g for g in gates if g["gate"] == "quant_memory")
        reference = memory["measurement"]["fp32_bytes"] / GB
        target = 1.6 * reference + 1.0
        print(f"\nmodel: {model_dir} ({reference:.2f} GB of FP32 weights)")
        print(f"exit code {found['exit_code']}; gates run in {found['wall_s']:.1f} s wall")
        for g in gates:
            print(f"  {g['message']} [{g['seconds']:.1f} s]")
        print(f"RSS before the run {before:.2f} GB; peak (VmHWM) {peak:.2f} GB")
        verdict = "within" if peak <= target else "OVER"
        print(f"target 1.6 x {reference:.2f} + 1 = {target:.2f} GB: {verdict}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
