"""The value checks of every setting, shared by the command line and the markers.

Each check returns the parsed value or raises ``ValueError("must be ...")``; the words
after "must be" are what the user reads, whether the value came from a flag, the
environment, the ini file or a marker argument.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable


def default_threads() -> int:
    """All cores this process may run on (respects taskset / cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


# -- value checks: each returns the parsed value or raises ValueError("must be ...") ---------
# A value is an ``object``: a command-line or ini string, an env variable, or whatever a
# marker argument holds.


def _number(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("is a boolean")
    if isinstance(value, str):
        return float(value)  # "abc" raises ValueError
    if not isinstance(value, (int, float)):
        raise ValueError(f"is a {type(value).__name__}")
    return float(value)


def _number_or_nan(value: object) -> float:
    """NaN for anything that is not a number: every range check below then refuses it."""
    try:
        return _number(value)
    except ValueError:
        return math.nan


def positive_number(value: object) -> float:
    """A finite number > 0 (a bound on KLD, a ratio, a speedup, seconds)."""
    number = _number_or_nan(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError("must be a finite number > 0")
    return number


def non_negative_number(value: object) -> float:
    """A finite number >= 0 (a number of standard errors: 0 turns a check off)."""
    number = _number_or_nan(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError("must be a finite number >= 0")
    return number


def fraction(value: object) -> float:
    """A share in (0, 1] (top-1 agreement)."""
    number = _number_or_nan(value)
    if not (0 < number <= 1):
        raise ValueError("must be a finite number in (0, 1]")
    return number


def positive_int(value: object) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise ValueError("must be a positive integer")
    return int(text)


_DEVICE = re.compile(r"(cpu|cuda(:[0-9]+)?|mps|xpu(:[0-9]+)?)")


def device(value: object) -> str:
    text = str(value).strip()
    if not _DEVICE.fullmatch(text):
        raise ValueError("must be a device like cpu, cuda or cuda:1")
    return text


REFERENCE_DTYPES = ("float32", "bfloat16", "float16")


def reference_dtype(value: object) -> str:
    text = str(value).strip().lower()
    if text not in REFERENCE_DTYPES:
        raise ValueError(f"must be one of {', '.join(REFERENCE_DTYPES)}")
    return text


def text(value: object) -> str:
    return str(value).strip()


def existing_file(value: object) -> str:
    path = os.path.expanduser(str(value).strip())
    if not os.path.isfile(path):
        raise ValueError("must be an existing file (no such file)")
    return path


def writable_path(value: object) -> str:
    path = os.path.expanduser(str(value).strip())
    parent = os.path.dirname(os.path.abspath(path))
    if not path or os.path.isdir(path) or not os.path.isdir(parent):
        raise ValueError("must be a file path in an existing directory")
    return path


def directory(value: object) -> str:
    path = os.path.expanduser(str(value).strip())
    if not path or (os.path.exists(path) and not os.path.isdir(path)):
        raise ValueError("must be a directory (it is a file)")
    return path


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


#: The marker-argument checks, by argument name; the CLI/env/ini values use the same ones.
THRESHOLDS: dict[str, Callable[[object], float]] = {
    "max_kl": positive_number,
    "min_same_top": fraction,
    "max_ppl_ratio": positive_number,
    "min_speedup": positive_number,
    "min_ratio": positive_number,
}


def runtime_name(value: object) -> str:
    """One of the runtimes a side can run in (:data:`~.sides.base.RUNTIMES`)."""
    from .sides.base import RUNTIMES

    return one_of(value, RUNTIMES)


def one_of(value: object, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    return text
