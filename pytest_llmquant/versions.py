"""The one fingerprint of the libraries that change the numbers.

A cache entry (converted weights, a stored reference, a saved recipe), a benchmark entry
and a report each record it, so a number is never reused or compared across a torch or
transformers upgrade. One function, so that all of them agree on what counts.
"""

from __future__ import annotations

import sys

#: the libraries whose versions change what a model computes
NUMERIC_LIBRARIES = ("torch", "transformers")


def library_versions(*, imported_only: bool = False) -> dict[str, str]:
    """``{"torch": ..., "transformers": ...}``.

    With ``imported_only`` a library is read only when it is already imported: a report
    must not pay a multi-second torch import (or fail without torch) to say what ran.
    """
    out: dict[str, str] = {}
    for name in NUMERIC_LIBRARIES:
        module = sys.modules.get(name)
        if module is None and not imported_only:
            import importlib

            module = importlib.import_module(name)
        found = getattr(module, "__version__", None) if module is not None else None
        if found:
            out[name] = str(found)
    return out
