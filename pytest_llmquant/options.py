"""Every setting of the plugin, declared once.

Each setting is a CLI flag, an environment variable and an ini key with the same
name (``--llmq-model``, ``PYTEST_LLMQ_MODEL``, ``llmq_model``). Precedence, highest
first: marker argument (for gate thresholds), CLI flag, environment, ini key,
built-in default. This mirrors pytest-timeout so
that users can pin a value in ``pyproject.toml`` and override it for one run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest


def default_threads() -> int:
    """All cores this process may run on (respects taskset / cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Option:
    name: str  # attribute name, e.g. "llmq_model"; the ini key is the same
    help: str
    default: Any = None
    multiple: bool = False  # repeatable flag / comma-separated / ini "linelist"
    type: Callable[[str], Any] = str
    flag: bool = False  # a boolean switch

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """Environment variable between CLI and ini, e.g. PYTEST_LLMQ_THREADS (as pytest-timeout)."""
        return "PYTEST_" + self.name.upper()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be a positive number, got {text}")
    return value


OPTIONS: tuple[Option, ...] = (
    Option(
        "llmq_model",
        "model to test: hub id, local directory, .gguf file or the alias "
        "'smollm2-135m'; repeat to test several",
        multiple=True,
        default=(),
    ),
    Option(
        "llmq_scheme",
        "INT8 scheme(s) to build the INT8 model with; comma-separated or "
        "repeated (see the README for the list)",
        multiple=True,
        default=None,
    ),
    Option("llmq_device", "device to run both models on", default="cpu"),
    Option(
        "llmq_cache_dir",
        "where converted FP32 weights and INT8 checkpoints are cached "
        "(default: $XDG_CACHE_HOME/pytest-llmquant)",
        default=None,
    ),
    Option(
        "llmq_threads",
        "torch threads for every measurement (default: all cores)",
        type=_positive_int,
        default=None,
    ),
    Option(
        "llmq_trust_remote_code",
        "allow models whose code lives in the model repo (runs that code!)",
        flag=True,
        default=False,
    ),
    Option(
        "llmq_int8_model",
        "a pre-quantized INT8 checkpoint to test instead of quantizing the FP32 model",
        default=None,
    ),
    Option(
        "llmq_eval_text",
        "UTF-8 text file to measure similarity on (default: a built-in "
        "corpus made from Python's own docstrings)",
        default=None,
    ),
    Option(
        "llmq_eval_tokens", "tokens scored by the similarity gate", type=_positive_int, default=2048
    ),
    Option(
        "llmq_max_kl",
        "default quant_similarity bound on mean KL divergence",
        type=_positive_float,
        default=0.01,
    ),
    Option(
        "llmq_min_same_top",
        "default quant_similarity bound on top-1 agreement",
        type=_positive_float,
        default=0.95,
    ),
    Option(
        "llmq_max_ppl_ratio",
        "default quant_similarity bound on PPL(INT8)/PPL(FP32)",
        type=_positive_float,
        default=1.02,
    ),
    Option(
        "llmq_min_speedup",
        "default quant_speedup threshold (INT8 vs FP32 generation)",
        type=_positive_float,
        default=1.0,
    ),
    Option(
        "llmq_min_memory_ratio",
        "default quant_memory threshold (FP32 bytes / INT8 bytes)",
        type=_positive_float,
        default=2.0,
    ),
    Option(
        "llmq_time_budget",
        "seconds the speedup gate may sample before it decides",
        type=_positive_float,
        default=20.0,
    ),
    Option("llmq_new_tokens", "tokens generated per timed run", type=_positive_int, default=32),
    Option(
        "llmq_suite",
        "add the built-in regression suite to the collection",
        flag=True,
        default=False,
    ),
    Option("llmq_report", "write every measurement and verdict to this JSON file", default=None),
    Option(
        "llmq_report_md",
        "write a Markdown summary to this file (default: $GITHUB_STEP_SUMMARY when set)",
        default=None,
    ),
    Option("llmq_save_baseline", "write measured metrics to this JSON baseline file", default=None),
    Option("llmq_baseline", "fail when a metric is worse than in this baseline file", default=None),
)

BY_NAME = {o.name: o for o in OPTIONS}


def addoptions(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmquant", "quantized LLM testing (pytest-llmquant)")
    for opt in OPTIONS:
        if opt.flag:
            group.addoption(
                opt.cli, action="store_true", default=None, dest=opt.name, help=opt.help
            )
            parser.addini(opt.name, opt.help, type="bool", default=opt.default)
        elif opt.multiple:
            group.addoption(
                opt.cli,
                action="append",
                default=None,
                dest=opt.name,
                metavar=opt.name.removeprefix("llmq_").upper(),
                help=opt.help,
            )
            parser.addini(opt.name, opt.help, type="linelist", default=[])
        else:
            group.addoption(
                opt.cli,
                action="store",
                default=None,
                dest=opt.name,
                metavar=opt.name.removeprefix("llmq_").upper(),
                help=opt.help,
            )
            parser.addini(opt.name, opt.help, default=None)


def _split(values: list[str] | tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in str(v).split(",") if p.strip())
    return out


def get(config: pytest.Config, name: str) -> Any:
    """Resolve one setting: CLI flag, else ini key, else default. Values are type-checked."""
    from .errors import LlmqUsageError

    opt = BY_NAME[name]
    raw: Any = config.getoption(name, default=None)
    source = opt.cli
    if raw is None or (opt.multiple and not raw):
        env = os.environ.get(opt.env)
        if env:
            raw, source = ([env] if opt.multiple else env), f"${opt.env}"
    if raw is None or (opt.multiple and not raw):
        raw = config.getini(name)
        source = f"ini key {name}"
        if raw in (None, "", []) or (opt.flag and raw == opt.default):
            return list(opt.default) if opt.multiple and opt.default is not None else opt.default
    if opt.flag:
        return (
            raw.strip().lower() in ("1", "true", "yes", "on") if isinstance(raw, str) else bool(raw)
        )
    if opt.multiple:
        # models may legitimately contain commas only in odd paths; schemes never do
        return (
            _split(raw) if name != "llmq_model" else [str(v).strip() for v in raw if str(v).strip()]
        )
    try:
        return opt.type(raw)
    except (TypeError, ValueError) as exc:
        raise LlmqUsageError(f"{source}={raw!r}: {exc}; fix the value") from None
