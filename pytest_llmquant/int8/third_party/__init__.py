"""The user's own INT8 model: what it is, how to save it, and why it cannot be measured.

Users bring INT8 models made by torchao, bitsandbytes, optimum-quanto, GPTQ/AWQ or
compressed-tensors checkpoints, or by our own schemes. The gates must measure *that*
model: label it truthfully (:mod:`.detect`), save it the way its maker saves it so the
file and peak-RSS gates see its real size (:mod:`.save`, :mod:`.probe`), and say in one
line why a route cannot be measured (:mod:`.explain`).

Importing this package (and each of its modules) never imports torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Int8Description": "pytest_llmquant.int8.third_party.detect",
    "describe_int8": "pytest_llmquant.int8.third_party.detect",
    "describe_checkpoint": "pytest_llmquant.int8.third_party.detect",
    "SaveOutcome": "pytest_llmquant.int8.third_party.save",
    "save_int8": "pytest_llmquant.int8.third_party.save",
    "probe_spec": "pytest_llmquant.int8.third_party.probe",
    "load_saved_int8": "pytest_llmquant.int8.third_party.probe",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pytest_llmquant.int8.third_party' has no attribute {name!r}")
