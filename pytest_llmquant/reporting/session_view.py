"""What the output writers read from a session, in the shape they all need.

The writers take the plugin's session object or, in tests, a ``SimpleNamespace`` with
the same attributes, so everything here reads attributes with defaults.
"""

from __future__ import annotations

from typing import Any


def option(session: Any, name: str) -> Any:
    """A setting's value (``Settings`` field name), or None for a session without settings."""
    return getattr(getattr(session, "settings", None), name, None)


def results_by_pair(session: Any) -> dict[str, list[Any]]:
    """Pair name -> its gate results in run order; pairs with only a coverage included."""
    pairs: dict[str, list[Any]] = {name: [] for name in (getattr(session, "coverages", None) or {})}
    for result in getattr(session, "results", None) or []:
        pairs.setdefault(result.pair, []).append(result)
    return pairs
