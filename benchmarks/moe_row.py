"""The MoE row of docs/schemes.md: the suite on a random Mixtral-style model of ~150M weights.

Issue 18: a mixture-of-experts model about the size of SmolLM2 (hidden 576, 9 heads and
3 KV heads, a 49,152-token vocabulary, tied embeddings), with 16 layers of 8 experts
(intermediate 512) of which the router picks 2 per token: ~156M weights in all, ~71M of
them read per token (lm_head included). Random weights (N(0, 0.02), norms 1) are built from the config in a
child process and saved as safetensors with a byte-level BPE tokenizer trained on the
evaluation corpus; this process then runs ``weight-only-int8`` through the plugin as a
user would (``--llmq-suite -k "coverage or similarity or speedup or memory or
round_trip"``, plus a ``quant_memory(kind="file")`` test), and prints:

* the coverage line (how much of the weight bytes are int8, expert banks included);
* mean KLD ± its standard error, and same-top-1, over ``--tokens`` scored tokens;
* the decode speedup with its confidence interval (the speed gate's interleaved pairs);
* the weights and file ratios against the FP32 reference.

Random weights say little about quality: the next-token distributions are nearly uniform,
so the KLD here is far smaller than a trained model's would be. The coverage, memory and
speed numbers are what the row is for.

One torch thread by default, as in the frontier table of docs/schemes.md: on a shared
2-core machine two threads wait for a core whenever anything else runs, and the speed
gate then calls its pairs inconclusive.

    python benchmarks/moe_row.py [--tokens 1024] [--threads 1] [--time-budget 20] [--keep DIR]
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

CONFIG: dict[str, Any] = {
    "hidden_size": 576,
    "intermediate_size": 512,
    "num_hidden_layers": 16,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
CHECKS = "coverage or similarity or speedup or memory or round_trip or test_file"
FILE_GATE = """
import pytest

@pytest.mark.quant_memory(1, kind="file")
def test_file(llmq_pair):
    pass
"""


def build(directory: Path) -> None:
    """Save the random model and its tokenizer (in a child process, so that this
    process's memory holds the gates' work alone)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast

    from pytest_llmquant.evaltext import default_corpus

    torch.manual_seed(0)
    with torch.device("meta"):
        model = MixtralForCausalLM(MixtralConfig(**CONFIG))
    model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gives lm_head storage of its own: share the embeddings again
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0) if "norm" in name else param.normal_(0.0, 0.02)
    model.save_pretrained(directory, safe_serialization=True)
    total = sum(p.numel() for p in model.parameters())  # tied weights once
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    print(f"{total / 1e6:.1f}M weights, {experts / 1e6:.1f}M of them in expert banks")
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


def run_suite(model_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import pytest

    tests = work / "tests"
    tests.mkdir(exist_ok=True)
    (tests / "test_moe_file.py").write_text(FILE_GATE, encoding="utf-8")
    report = work / "report.json"
    start = time.perf_counter()
    code = pytest.main(
        [
            str(tests),
            "--llmq-suite",
            f"--llmq-model={model_dir}",
            "--llmq-scheme=weight-only-int8",
            f"--llmq-eval-tokens={args.tokens}",
            f"--llmq-threads={args.threads}",
            f"--llmq-time-budget={args.time_budget}",
            f"--llmq-cache-dir={work / 'cache'}",
            f"--llmq-report={report}",
            "-k",
            CHECKS,
            "-p",
            "no:cacheprovider",
            "-q",
        ]
    )
    wall = time.perf_counter() - start
    return {"exit_code": int(code), "wall_s": wall, "report": json.loads(report.read_text())}


def row(pair: dict[str, Any]) -> list[str]:
    """The lines of the row: coverage, quality, speed, memory, as measured."""
    gates: dict[tuple[str, str], dict[str, Any]] = {}
    for g in pair["gates"]:
        kind = g["measurement"].get("kind", "") if g["gate"] == "quant_memory" else ""
        gates[(g["gate"], kind)] = g["measurement"]
    sim = gates[("quant_similarity", "")]
    speed = gates[("quant_speedup", "")]
    weights, file = gates[("quant_memory", "weights")], gates[("quant_memory", "file")]
    return [
        f"coverage: {pair['coverage']['summary']}",
        f"mean KLD {sim['mean_kld']:.3g} ± {sim['kld_se']:.2g} over {sim['n_tokens']} tokens; "
        f"same-top-1 {100 * sim['same_top']:.1f}% (random weights: near-uniform distributions)",
        f"decode speedup {speed['speedup']:.2f}x, {100 * speed['confidence']:.0f}% CI "
        f"{speed['ci_low']:.2f}-{speed['ci_high']:.2f} ({speed['n_pairs']} pairs, "
        f"{speed['threads']} threads; FP32 {speed['fp32_ms_per_token']:.1f} ms/token, INT8 "
        f"{speed['int8_ms_per_token']:.1f} ms/token)",
        f"weights {weights['fp32_bytes'] / 1e6:.0f} MB -> {weights['int8_bytes'] / 1e6:.0f} MB "
        f"({weights['ratio']:.2f}x); file {file['fp32_bytes'] / 1e6:.0f} MB -> "
        f"{file['int8_bytes'] / 1e6:.0f} MB ({file['ratio']:.2f}x)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1024, help="scored tokens (default 1024)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--time-budget", type=float, default=20.0, help="speed gate seconds")
    parser.add_argument("--keep", type=Path, help="build into (or reuse) this directory")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        build(args.build_only)
        return
    work = Path(tempfile.mkdtemp(prefix="llmq-moe-row-"))
    model_dir = args.keep or work / "model"
    try:
        if not (model_dir / "config.json").exists():
            start = time.perf_counter()
            model_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, __file__, "--build-only", str(model_dir)], check=True)
            print(f"built and saved the model in {time.perf_counter() - start:.1f} s")
        found = run_suite(model_dir, work, args)
        print(f"\nexit code {found['exit_code']}; suite run in {found['wall_s']:.0f} s wall")
        for name, pair in found["report"]["pairs"].items():
            print(name)
            for line in row(pair):
                print("  " + line)
            for g in pair["gates"]:
                print(f"  [{g['verdict']}] {g['message']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
