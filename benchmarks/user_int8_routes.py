"""How long each INT8 route users take costs to make, and how fast it decodes, on one model.

Prints ``route | label | bits | make s | decode speedup | saved MB or why not``:

* make: wall time of the quantizing call (``quantize_``, ``quantize`` + ``freeze``, our
  scheme's ``quantize``), or of ``from_pretrained(..., quantization_config=...)`` for the
  transformers routes (that includes reading the FP32 checkpoint: ``fp32 load`` is
  printed for comparison). The model copy being quantized is made outside the timing.
* decode speedup: FP32 time / INT8 time of greedy generation of ``--new-tokens`` (32)
  tokens from a fixed prompt, one warm-up each, then ``--rounds`` rounds in which every
  model runs once, in an order rotated each round (drift of a shared machine hits all
  alike); the median over rounds of the per-round ratio.
* saved: :func:`pytest_llmquant.user_int8.save_int8`'s bytes of model files, or its reason.

Threads are fixed (``--threads``, default 1), as in ``benchmarks/schemes.py``.

Example::

    python benchmarks/user_int8_routes.py --model smollm2-135m --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROMPT = "The capital of France is"


def generation_time(model: Any, inputs: dict[str, Any], new_tokens: int, pad_id: int) -> float:
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
    return time.perf_counter() - start


def routes(fp32: Any, fp32_dir: Path) -> dict[str, Callable[[], Any]]:
    """Each route: a function that makes the INT8 model (timed) from a fresh copy."""
    import torch
    from transformers import AutoModelForCausalLM

    def copied() -> Any:
        return copy.deepcopy(fp32)

    def torchao(config_name: str) -> Callable[[], Any]:
        def make() -> Any:
            from torchao import quantization

            model = copied()
            start = time.perf_counter()
            quantization.quantize_(model, getattr(quantization, config_name)())
            return model, time.perf_counter() - start

        return make

    def transformers(config: Callable[[], Any]) -> Callable[[], Any]:
        def make() -> Any:
            start = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(
                fp32_dir, dtype=torch.float32, quantization_config=config(), device_map="cpu"
            )
            return model.eval(), time.perf_counter() - start

        return make

    def quanto() -> Any:
        from optimum.quanto import freeze, qint8, quantize

        model = copied()
        start = time.perf_counter()
        quantize(model, weights=qint8)
        freeze(model)
        return model, time.perf_counter() - start

    def ours() -> Any:
        from pytest_llmquant import get_scheme

        model = copied()
        start = time.perf_counter()
        model = get_scheme("weight-only-int8").quantize(model)
        return model, time.perf_counter() - start

    def torchao_config() -> Any:
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig())

    def bnb_config() -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True)

    return {
        "torchao quantize_ Int8WeightOnly": torchao("Int8WeightOnlyConfig"),
        "torchao quantize_ Int8DynamicActivationInt8Weight": torchao(
            "Int8DynamicActivationInt8WeightConfig"
        ),
        "transformers TorchAoConfig(Int8WeightOnly)": transformers(torchao_config),
        "transformers BitsAndBytesConfig(load_in_8bit)": transformers(bnb_config),
        "optimum-quanto qint8 (frozen)": quanto,
        "pytest-llmquant weight-only-int8": ours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="route names (substrings) to run")
    args = parser.parse_args()

    import logging
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    from pytest_llmquant import load_fp32

    warnings.simplefilter("ignore")
    hf_logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    fp32, tokenizer = load_fp32(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="llmq-routes-"))
    try:
        run(args, fp32, tokenizer, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ~1.5 GB of checkpoints


def run(args: argparse.Namespace, fp32: Any, tokenizer: Any, tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from pytest_llmquant.user_int8 import SaveOutcome, describe_int8, save_int8
    from pytest_llmquant.user_int8.save import model_files

    fp32_dir = tmp / "fp32"
    fp32.save_pretrained(fp32_dir, safe_serialization=True)
    fp32_mb = sum(p.stat().st_size for p in model_files(fp32_dir)) / 1e6
    print(f"fp32 saved (save_pretrained, safetensors): {fp32_mb:.1f} MB")
    start = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(fp32_dir, dtype=torch.float32)
    print(
        f"fp32 load (from_pretrained of the saved FP32 checkpoint): {time.perf_counter() - start:.2f} s"
    )

    models: dict[str, Any] = {"fp32": fp32}
    rows: dict[str, list[str]] = {}
    for name, make in routes(fp32, fp32_dir).items():
        if args.only and not any(s in name for s in args.only):
            continue
        model, seconds = make()
        desc = describe_int8(model)
        saved = save_int8(model, tmp / f"int8-{len(models)}")
        size = f"{saved.bytes / 1e6:.1f} MB" if isinstance(saved, SaveOutcome) else f"skip: {saved}"
        rows[name] = [desc.label, str(desc.bits), f"{seconds:.2f}", "", size]
        models[name] = model.eval()
        print(f"made {name}: {seconds:.2f} s, {desc}", flush=True)

    inputs = tokenizer(PROMPT, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    names = list(models)
    for name in names:  # warm-up
        generation_time(models[name], inputs, args.new_tokens, pad)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(generation_time(models[name], inputs, args.new_tokens, pad))
        print(
            f"round {r + 1}: " + ", ".join(f"{n[:24]} {times[n][-1]:.2f}s" for n in names),
            flush=True,
        )
    for name in rows:
        ratios = [f / i for f, i in zip(times["fp32"], times[name], strict=True)]
        rows[name][3] = f"{statistics.median(ratios):.2f}x"
    fp32_ms = statistics.median(times["fp32"]) / args.new_tokens * 1000
    print(
        f"\nFP32: {statistics.median(times['fp32']):.2f} s for {args.new_tokens} tokens ({fp32_ms:.0f} ms/token incl. prompt), threads={args.threads}"
    )
    print("| route | label | bits | make s | decode speedup vs FP32 | saved |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
