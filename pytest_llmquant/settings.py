"""Every setting of the plugin, declared once and resolved once.

Each setting is a CLI flag, an environment variable and an ini key with the same name
(``--llmq-max-kl``, ``PYTEST_LLMQ_MAX_KL``, ``llmq_max_kl``). Precedence, highest first:
marker argument (gate thresholds only), CLI flag, environment, ini key, built-in default,
as pytest-timeout does. :func:`resolve` runs once in ``pytest_configure``: every bad value
of every option is a usage error (exit 4) before collection, naming the option, where the
value came from and the fix. Test-time code reads the frozen :class:`Settings`, never the
pytest config.

The value checks of the gate thresholds are the same functions the markers use
(:data:`THRESHOLDS`), so the command line and a marker accept the same ranges and say
the same thing about a bad value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from .errors import LlmqUsageError
from .setting_checks import (
    THRESHOLDS,
    boolean,
    default_threads,
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
#: the default memory threshold against a bfloat16/float16 reference (2.0 against float32).
#: int8 + scales is ~1.1 bytes a weight, embeddings stay 16-bit and a tied lm_head gets its
#: own int8 copy: SmolLM2-135M's weight-only-int8 is 1.29x smaller than its bfloat16 weights
#: (measured; 2.03x against float32), a model with half its linear layers left 16-bit ~1.06x
HALF_PRECISION_MIN_MEMORY_RATIO = 1.25


def addoptions(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmquant", "quantized LLM testing (pytest-llmquant)")
    for opt in OPTIONS:
        metavar = opt.name.upper()
        if opt.flag:
            group.addoption(opt.cli, action="store_true", default=None, dest=opt.key, help=opt.help)
            parser.addini(opt.key, opt.help, default=None)
        elif opt.multiple:
            group.addoption(
                opt.cli, action="append", default=None, dest=opt.key, metavar=metavar, help=opt.help
            )
            parser.addini(opt.key, opt.help, type="linelist", default=[])
        else:
            group.addoption(
                opt.cli, action="store", default=None, dest=opt.key, metavar=metavar, help=opt.help
            )
            parser.addini(opt.key, opt.help, default=None)


@dataclass(frozen=True)
class Settings:
    """Every option's value for this run, resolved and checked once at start-up.

    Each default is the option's own (:data:`OPTIONS` is the one place defaults are
    declared); ``reference_dtype`` and ``threads`` are resolved from the device and the
    machine at start-up, and default here to what a bare ``Settings()`` means: float32 on
    one thread.
    """

    model: tuple[str, ...] = BY_NAME["model"].default
    scheme: tuple[str, ...] = BY_NAME["scheme"].default
    device: str = BY_NAME["device"].default
    reference_dtype: str = "float32"
    cache_dir: str | None = BY_NAME["cache_dir"].default
    threads: int = 1
    trust_remote_code: bool = BY_NAME["trust_remote_code"].default
    int8_model: str | None = BY_NAME["int8_model"].default
    int8_runtime: str = BY_NAME["int8_runtime"].default
    reference_runtime: str = BY_NAME["reference_runtime"].default
    runtime_timeout: float = BY_NAME["runtime_timeout"].default
    eval_text: str | None = BY_NAME["eval_text"].default
    eval_tokens: int = BY_NAME["eval_tokens"].default
    max_kl: float = BY_NAME["max_kl"].default
    min_same_top: float = BY_NAME["min_same_top"].default
    max_ppl_ratio: float = BY_NAME["max_ppl_ratio"].default
    min_speedup: float = BY_NAME["min_speedup"].default
    min_memory_ratio: float = BY_NAME["min_memory_ratio"].default
    time_budget: float = BY_NAME["time_budget"].default
    speed_inconclusive: str = BY_NAME["speed_inconclusive"].default
    new_tokens: int = BY_NAME["new_tokens"].default
    suite: bool = BY_NAME["suite"].default
    report: str | None = BY_NAME["report"].default
    report_md: str | None = BY_NAME["report_md"].default
    save_baseline: str | None = BY_NAME["save_baseline"].default
    baseline: str | None = BY_NAME["baseline"].default
    baseline_z: float = BY_NAME["baseline_z"].default
    #: option name -> where its value came from: "CLI", "env", "ini" or "default"
    origin: dict[str, str] = field(default_factory=dict, compare=False)


#: the built-in defaults, for code that runs without a session (the assertion helpers)
DEFAULTS = Settings()


def _split(values: Iterable[object], commas: bool) -> list[str]:
    out: list[str] = []
    for v in values:
        parts = str(v).split(",") if commas else [str(v)]
        out.extend(p.strip() for p in parts if p.strip())
    return out


def _raw(config: pytest.Config, opt: Option) -> tuple[Any, str, str]:
    """The highest-precedence value given for ``opt``, where it came from, and how to name it."""
    cli = config.getoption(opt.key, default=None)
    if cli is not None and cli != []:
        return cli, "CLI", opt.cli
    env = os.environ.get(opt.env)
    if env is not None and env.strip():
        return ([env] if opt.multiple else env), "env", opt.env
    ini = config.getini(opt.key)
    if ini not in (None, "", []):
        return ini, "ini", f"ini key {opt.key}"
    return None, "default", opt.cli


_WHERE = {"CLI": "on the command line", "env": "in the environment", "ini": "in the ini file"}


def _bad(opt: Option, label: str, origin: str, raw: object, why: str) -> LlmqUsageError:
    shown = raw if not isinstance(raw, list) else ",".join(map(str, raw))
    example = f" (e.g. {opt.cli}={opt.example})" if opt.example else ""
    return LlmqUsageError(f"{label}={shown!r} {_WHERE[origin]}: {why}; {opt.fix}{example}")


def set_where(settings: Settings, name: str) -> str:
    """Where an option's value was set, for errors found after resolving (a model path)."""
    origin = settings.origin.get(name, "default")
    opt = BY_NAME[name]
    return {
        "CLI": "set on the command line",
        "env": f"set in the environment ({opt.env})",
        "ini": f"set by the ini key {opt.key}",
        "default": "the default",
    }[origin]


def resolve(config: pytest.Config) -> Settings:
    """Read every option once; the first bad value raises a one-line usage error."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for opt in OPTIONS:
        raw, source, label = _raw(config, opt)
        origin[opt.name] = source
        if raw is None:
            default = opt.default
            values[opt.name] = tuple(default) if opt.multiple else default
            continue
        try:
            if opt.multiple:
                values[opt.name] = tuple(_split(raw, commas=opt.name != "model"))
            else:
                values[opt.name] = opt.check(raw)
        except (TypeError, ValueError) as exc:
            raise _bad(opt, label, source, raw, str(exc).split(";")[0]) from None
    if values["threads"] is None:
        values["threads"] = default_threads()
    if values["reference_dtype"] is None:  # what a user deploys instead of INT8 there
        values["reference_dtype"] = "bfloat16" if values["device"].startswith("cuda") else "float32"
    if origin["min_memory_ratio"] == "default" and values["reference_dtype"] != "float32":
        # 2x of a 16-bit reference is out of reach (see HALF_PRECISION_MIN_MEMORY_RATIO)
        values["min_memory_ratio"] = HALF_PRECISION_MIN_MEMORY_RATIO
    return Settings(**values, origin=origin)


def threshold(name: str, value: object, where: str, example: str) -> float:
    """Check one marker argument with the CLI's check (the same range, the same words)."""
    try:  # a marker argument is a Python number, never text: "1.2" is refused like "fast"
        return THRESHOLDS[name](math.nan if isinstance(value, str) else value)
    except (TypeError, ValueError) as exc:
        raise LlmqUsageError(f"{where} {name}={value!r} {exc}, e.g. {example}") from None
