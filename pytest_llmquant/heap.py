"""Handing freed heap memory back to the operating system between measurements."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any


@cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def give_back_freed_memory() -> None:
    """Quantizing and scoring free hundreds of MB of float scratch in pieces that glibc
    keeps in the heap (below its self-raising mmap threshold), so the process's RSS would
    stay that high for the rest of the session and stack with the next step's scratch.
    ``malloc_trim(0)`` returns it. A no-op where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
