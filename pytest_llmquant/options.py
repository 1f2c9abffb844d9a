"""The one option table: every setting's flag, environment variable, ini key, check,
default and help, declared once.

:mod:`.settings` registers and resolves them (precedence, error messages, the frozen
:class:`~.settings.Settings`); this module only says what the options are, so that the
table reads as the documentation of the plugin's settings and tests can walk it (the
README's option rows, the merge tool's keys) without the resolution machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .setting_checks import (
    THRESHOLDS,
    boolean,
    device,
    directory,
    existing_file,
    non_negative_number,
    one_of,
    positive_int,
    positive_number,
    reference_dtype,
    runtime_name,
    text,
    writable_path,
)

#: what an inconclusive speed gate counts as (--llmq-speed-inconclusive); "fail" first: the
#: default, since a gate that cannot decide must not go green silently
SPEED_INCONCLUSIVE = ("fail", "skip", "pass")


@dataclass(frozen=True)
class Option:
    name: str  # attribute of Settings; the ini key is "llmq_" + name
    help: str
    check: Callable[[object], object] = text  # the parsed value, or ValueError
    #: Any: a tuple, a number, a string or None, read into Settings fields of those types
    default: Any = None
    multiple: bool = False  # repeatable flag / comma-separated / ini "linelist"
    flag: bool = False  # a boolean switch
    example: str = ""  # a valid value, for the error message
    fix: str = "fix the value"

    @property
    def key(self) -> str:
        return "llmq_" + self.name

    @property
    def cli(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return "PYTEST_" + self.key.upper()


OPTIONS: tuple[Option, ...] = (
    Option(
        "model",
        "model to test: hub id, local directory, .gguf file or the alias "
        "'smollm2-135m'; repeat to test several",
        multiple=True,
        default=(),
    ),
    Option(
        "scheme",
        "INT8 scheme(s) to build the INT8 model with; comma-separated or repeated "
        "(see the README for the list)",
        multiple=True,
        default=(),
    ),
    Option("device", "device to run both models on", check=device, default="cpu", example="cpu"),
    Option(
        "reference_dtype",
        "precision of the reference model every gate compares against "
        "(default: float32 on CPU, bfloat16 on CUDA)",
        check=reference_dtype,
        example="bfloat16",
    ),
    Option(
        "cache_dir",
        "where converted FP32 weights and the INT8 kernel are cached "
        "(default: $XDG_CACHE_HOME/pytest-llmquant)",
        check=directory,
        fix="pass a directory",
    ),
    Option(
        "threads",
        "torch threads for every measurement (default: all cores)",
        check=positive_int,
        example="1",
    ),
    Option(
        "trust_remote_code",
        "allow models whose code lives in the model repo (runs that code!)",
        check=boolean,
        flag=True,
        default=False,
    ),
    Option(
        "int8_model",
        "a pre-quantized INT8 model to test instead of quantizing the FP32 model",
    ),
    Option(
        "int8_runtime",
        "what runs the INT8 model: torch (default), llama.cpp (a --llmq-int8-model .gguf "
        "of any type) or onnxruntime (the model.onnx of a --llmq-int8-model directory)",
        check=runtime_name,
        default="torch",
        example="llama.cpp",
    ),
    Option(
        "reference_runtime",
        "what runs the reference: torch (default), llama.cpp (a --llmq-model .gguf; a "
        "quantized one as the F32 file of its dequantized tensors) or onnxruntime",
        check=runtime_name,
        default="torch",
        example="llama.cpp",
    ),
    Option(
        "runtime_timeout",
        "seconds a runtime side's process may take to answer one request (loading its file, "
        "a window of logits, a decode step) before it is stopped and that test fails",
        check=positive_number,
        default=600.0,
        example="600",
    ),
    Option(
        "eval_text",
        "UTF-8 text file to measure similarity on (default: a built-in corpus made from "
        "Python's own docstrings)",
        check=existing_file,
        example="eval.txt",
    ),
    Option(
        "eval_tokens",
        "tokens scored by the similarity gate",
        check=positive_int,
        default=2048,
        example="2048",
    ),
    Option(
        "max_kl",
        "default quant_similarity bound on mean KL divergence",
        check=THRESHOLDS["max_kl"],
        default=0.01,
        example="0.01",
    ),
    Option(
        "min_same_top",
        "default quant_similarity bound on top-1 agreement",
        check=THRESHOLDS["min_same_top"],
        default=0.95,
        example="0.95",
    ),
    Option(
        "max_ppl_ratio",
        "default quant_similarity bound on PPL(INT8)/PPL(FP32)",
        check=THRESHOLDS["max_ppl_ratio"],
        default=1.02,
        example="1.02",
    ),
    Option(
        "min_speedup",
        "default quant_speedup threshold (INT8 vs reference generation)",
        check=THRESHOLDS["min_speedup"],
        default=1.0,
        example="1.2",
    ),
    Option(
        "min_memory_ratio",
        "default quant_memory threshold (reference bytes / INT8 bytes)",
        check=THRESHOLDS["min_ratio"],
        default=2.0,
        example="2.0",
    ),
    Option(
        "time_budget",
        "seconds the speedup gate may sample before it decides",
        check=positive_number,
        default=5.0,
        example="5",
    ),
    Option(
        "speed_inconclusive",
        "what a speed gate that cannot judge (the CPU too busy: see docs/gates.md) counts "
        "as: fail, skip or pass",
        check=lambda value: one_of(value, SPEED_INCONCLUSIVE),
        default="fail",
        example="skip",
    ),
    Option(
        "new_tokens",
        "decode steps per prompt in the speed gate (then the next prompt is prefilled); "
        "tokens generated per benchmark round",
        check=positive_int,
        default=32,
        example="32",
    ),
    Option(
        "suite",
        "add the built-in regression suite to the collection",
        check=boolean,
        flag=True,
        default=False,
    ),
    Option(
        "report",
        "write every measurement and verdict to this JSON file",
        check=writable_path,
        fix="create the directory or pass another path",
    ),
    Option(
        "report_md",
        "write a Markdown summary to this file (default: $GITHUB_STEP_SUMMARY when set)",
        check=writable_path,
        fix="create the directory or pass another path",
    ),
    Option(
        "save_baseline",
        "write measured metrics to this JSON baseline file",
        check=writable_path,
        fix="create the directory or pass another path",
    ),
    Option(
        "baseline",
        "fail when a metric is worse than in this baseline file",
        check=existing_file,
        fix="create it with --llmq-save-baseline=FILE on a good run",
    ),
    Option(
        "baseline_z",
        "--llmq-baseline flags a similarity metric only when its change also exceeds this "
        "many combined standard errors of the two measurements (0: tolerance only)",
        check=non_negative_number,
        default=3.0,
        example="3",
    ),
)

BY_NAME = {o.name: o for o in OPTIONS}
