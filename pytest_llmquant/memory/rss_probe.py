"""Child process of the ``peak_rss`` memory kind: load a model, generate, report RSS.

Run as ``python -m pytest_llmquant.memory.rss_probe '{"mode": "fp32", "model": "gpt2"}'``
(:func:`pytest_llmquant.memory.rss.probe` does).
It prints one line, ``LLMQ-PROBE {json}``, with sizes in bytes:

- ``peak_bytes``: the peak RSS of the whole process (imports, load, generate);
- ``loaded_bytes``: RSS once the model is ready (for INT8: after the reference it
  was built from is freed);
- ``serve_peak_bytes``: the peak RSS from that moment through generating 8 tokens
  greedily, i.e. what serving the model costs (``None`` where the high-water mark
  cannot be reset);
- ``ru_maxrss_bytes``: ``getrusage(RUSAGE_SELF).ru_maxrss``, for reference only.

Why not ``ru_maxrss`` alone: on Linux, ``exec`` carries the parent's peak into the
child's ``ru_maxrss`` (the kernel folds the old address space's high-water mark into
the process's ``maxrss``), so a probe started from a pytest process that holds two
models reports the *pytest* process's peak. ``VmHWM`` in ``/proc/self/status`` belongs
to the new address space only, and writing ``5`` to ``/proc/self/clear_refs`` resets
it, which is how the serve phase is measured apart from loading.

Modes: ``fp32``, the reference (``loading.load_fp32``); ``int8``, the INT8 side as the
route its arguments name loads it (``int8.routes.load_in_probe``: a saved directory, a
GGUF next to the reference, or the reference and a scheme's INT8 copy of it, the
reference then freed); and ``baseline``: the same
imports, the same tokenizer and config, the model class built on the meta device (no
weights) and one small matmul to start torch's thread pool. Subtracting the baseline
leaves the memory of the weights and of generating with them.

With ``"report": "vram"`` (the ``vram`` memory kind, a CUDA ``device``) the report also
holds torch's GPU counters (``torch.cuda.max_memory_allocated``: live tensors only):
``vram_load_peak_bytes`` (loading, and building INT8), ``vram_loaded_bytes`` (the model
ready), ``vram_serve_peak_bytes`` (from then through generating, the mark reset with
``torch.cuda.reset_peak_memory_stats``) and ``vram_peak_bytes`` (the whole life).

Errors print ``{"error": ..., "error_kind": "usage" | "model"}`` and exit with 2.
"""

from __future__ import annotations

import gc
import importlib
import json
import resource
import sys
from typing import TYPE_CHECKING

from ..errors import LlmqError, LlmqUsageError
from ..models.causal_lm import model_device
from .rss import PROBE_MARK, PROBE_MODULE, ProbeArgs, ProbeReport

if TYPE_CHECKING:
    import torch

    from ..types import CausalLM, Tokenizer

PROMPT = "The capital of France is"


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def hwm_bytes() -> int | None:
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def ru_maxrss_bytes() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024  # Linux: KiB


def reset_hwm() -> bool:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _baseline(args: ProbeArgs) -> ProbeReport:
    """Everything a model probe does, except holding weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..models import loading  # noqa: F401  (the model probes import it too)

    scope = "imports"
    model = args.get("model")
    if model:
        try:
            from ..models.sources import resolve

            source = resolve(str(model))
            if source.kind != "gguf":
                trust = bool(args.get("trust_remote_code", False))
                config = AutoConfig.from_pretrained(source.location, trust_remote_code=trust)
                tokenizer = AutoTokenizer.from_pretrained(source.location, trust_remote_code=trust)
                with torch.device("meta"):
                    AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
                tokenizer(PROMPT, return_tensors="pt")
                scope = "imports + tokenizer + model code (no weights)"
        except Exception:  # the baseline must not fail where the model probe would not
            scope = "imports"
    a = torch.randn(64, 64)
    (a @ a).sum().item()
    return {"baseline_scope": scope}


def _load_reference(args: ProbeArgs) -> tuple[CausalLM, Tokenizer]:
    from ..models.loading import load_fp32

    return load_fp32(
        str(args["model"]),
        cache_dir=_text(args.get("cache_dir")),
        device=str(args.get("device", "cpu")),
        trust_remote_code=bool(args.get("trust_remote_code", False)),
        dtype=str(args.get("dtype", "float32")),
    )


def _text(value: str | int | bool | None) -> str | None:
    return None if value is None else str(value)


def _model(args: ProbeArgs, mode: str) -> tuple[CausalLM, Tokenizer, ProbeReport]:
    """The model this probe measures: the reference, or the INT8 side as its route loads
    it (:func:`pytest_llmquant.int8.routes.load_in_probe`: the user's saved directory as
    its maker loads it, a Q8_0 GGUF, or our scheme built from the reference, then freed)."""
    from ..schemes import kernels

    kernels.set_cache_dir(_text(args.get("cache_dir")))  # the parent's kernel, not a second build
    if mode != "int8":
        return (*_load_reference(args), {})
    extra: ProbeReport = {}

    def reference() -> tuple[CausalLM, Tokenizer]:
        loaded = _load_reference(args)
        extra["fp32_loaded_bytes"] = rss_bytes()
        return loaded

    # the one place the memory package reaches the INT8 routes: in the probe process only
    from ..int8.routes import load_in_probe

    loaded = load_in_probe(args, reference)
    extra.update(loaded.extra)
    gc.collect()  # the reference a route built from is gone with its frame
    return loaded.model, loaded.tokenizer, extra


def _gpu(args: ProbeArgs, mode: str) -> torch.device | None:
    """The CUDA device a ``vram`` report measures, or None when none was asked for."""
    if args.get("report") != "vram":
        return None
    import torch

    device = str(args.get("device", "cpu"))
    if mode == "baseline" or not device.startswith("cuda"):
        raise LlmqUsageError(
            f"a vram report needs mode fp32 or int8 on a CUDA device, not {mode!r} on {device!r}"
        )
    if not torch.cuda.is_available():
        raise LlmqUsageError(f"a vram report on {device!r}: no CUDA device is visible here")
    gpu = torch.device(device)
    torch.cuda.reset_peak_memory_stats(gpu)
    return gpu


def _vram_after_load(gpu: torch.device) -> ProbeReport:
    import torch

    torch.cuda.synchronize(gpu)
    report: ProbeReport = {
        "vram_load_peak_bytes": int(torch.cuda.max_memory_allocated(gpu)),
        "vram_loaded_bytes": int(torch.cuda.memory_allocated(gpu)),
    }
    torch.cuda.reset_peak_memory_stats(gpu)  # the mark restarts at what is allocated now
    return report


def _vram_after_generate(gpu: torch.device, report: ProbeReport) -> None:
    import torch

    torch.cuda.synchronize(gpu)
    serve = int(torch.cuda.max_memory_allocated(gpu))
    load_peak = report["vram_load_peak_bytes"]
    report["vram_serve_peak_bytes"] = serve
    report["vram_peak_bytes"] = max(serve, load_peak if isinstance(load_peak, int) else 0)


def run(args: ProbeArgs) -> ProbeReport:
    mode = args.get("mode")
    if mode not in ("fp32", "int8", "baseline"):
        raise LlmqUsageError(f"memory probe mode {mode!r}: use fp32, int8 or baseline")
    import torch

    gpu = _gpu(args, mode)

    threads = args.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    report: ProbeReport = {"mode": mode}
    for module in str(args.get("preload") or "").split(","):
        if module:  # a runtime the other probe loads: every probe imports it alike
            importlib.import_module(module)
    if mode in ("fp32", "int8") and args.get("route") == "runtime":
        from .runtime_probe import serve_in_runtime

        report.update(_baseline(args))  # the same imports as the other probes, then the file
        report.update(serve_in_runtime(args))
        return _finished(report, report.pop("_peak"), report.pop("_loaded"), report.pop("_serve"))
    if mode == "baseline":
        report.update(_baseline(args))
        loaded, serve = rss_bytes(), None
        peak = hwm_bytes()
    else:
        model, tokenizer, extra = _model(args, mode)
        report.update(extra)
        gc.collect()
        if gpu is not None:
            report.update(_vram_after_load(gpu))
        load_peak = hwm_bytes()
        loaded = rss_bytes()
        can_reset = reset_hwm()
        asked = args.get("new_tokens", 8)
        new_tokens = int(asked) if asked is not None else 8
        device = model_device(model)
        inputs = {k: v.to(device) for k, v in tokenizer(PROMPT, return_tensors="pt").items()}
        with torch.inference_mode():
            out = model.generate(  # type: ignore[operator]
                **inputs,
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        report["generated_tokens"] = int(out.shape[1] - inputs["input_ids"].shape[1])
        if gpu is not None:
            _vram_after_generate(gpu, report)
        after = hwm_bytes()
        serve = after if can_reset else None
        peak = None if load_peak is None or after is None else max(load_peak, after)
        report["load_peak_bytes"] = load_peak
    return _finished(report, peak, loaded, serve)


def _finished(
    report: ProbeReport,
    peak: str | int | bool | None,
    loaded: str | int | bool | None,
    serve: str | int | bool | None,
) -> ProbeReport:
    ru = ru_maxrss_bytes()
    report.update(
        {
            "peak_bytes": peak if peak is not None else ru,
            "loaded_bytes": loaded,
            "serve_peak_bytes": serve,
            "ru_maxrss_bytes": ru,
            "source": "VmHWM" if peak is not None else "ru_maxrss",
        }
    )
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) != 1:
            raise LlmqUsageError(f"usage: python -m {PROBE_MODULE} '<json args>'")
        try:
            args = json.loads(argv[0])
        except ValueError as exc:
            raise LlmqUsageError(f"memory probe arguments are not JSON ({exc})") from None
        if not isinstance(args, dict):
            raise LlmqUsageError("memory probe arguments must be a JSON object")
        report = run(args)
    except LlmqError as exc:
        kind = "usage" if isinstance(exc, LlmqUsageError) else "model"
        print(PROBE_MARK + json.dumps({"error": str(exc), "error_kind": kind}), flush=True)
        return 2
    print(PROBE_MARK + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
