"""Every setting of the plugin, resolved once (the options are declared in :mod:`.options`).

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from .errors import LlmqUsageError
from .options import BY_NAME, OPTIONS, Option
from .setting_checks import THRESHOLDS, default_threads

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
