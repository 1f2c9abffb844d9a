"""pytest-llmquant: test that an INT8 copy of an LLM stays right, fast and small.

The names below are imported on first use (PEP 562), so ``import pytest_llmquant``
and loading the pytest plugin never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "assert_similar": "pytest_llmquant.assertions",
    "assert_speedup": "pytest_llmquant.assertions",
    "assert_memory_reduction": "pytest_llmquant.assertions",
    "measure_similarity": "pytest_llmquant.similarity",
    "SimilarityResult": "pytest_llmquant.similarity",
    "measure_speedup": "pytest_llmquant.speed.timing",
    "SpeedupResult": "pytest_llmquant.speed.timing",
    "measure_memory": "pytest_llmquant.memory",
    "MemoryResult": "pytest_llmquant.memory",
    "ModelPair": "pytest_llmquant.session",
    "Coverage": "pytest_llmquant.layers",
    "QuantScheme": "pytest_llmquant.schemes.base",
    "get_scheme": "pytest_llmquant.schemes",
    "load_fp32": "pytest_llmquant.models.loading",
    "build_int8": "pytest_llmquant.int8.build",
    "LlmqError": "pytest_llmquant.errors",
    "LlmqUsageError": "pytest_llmquant.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pytest_llmquant' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
