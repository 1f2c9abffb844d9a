"""Options the int8 schemes share, parsed one way so ``group_size=0`` or ``skip=["lm_head"]``
means the same thing to every scheme that takes it."""

from __future__ import annotations


def group_size_option(value: object) -> int | None:
    """``group_size`` as given by a user: an int >= 1, or None for one scale per channel
    (spelled ``None``, ``0``, ``"0"``, ``"none"`` or ``"channel"``)."""
    if value in (None, 0, "0", "none", "channel"):
        return None
    if not isinstance(value, (int, float, str)):
        raise ValueError(
            f"group_size must be an int >= 1 (or 0/None for per channel), not {value!r}"
        )
    size = int(value)
    if size < 1:
        raise ValueError(f"group_size must be >= 1 (or 0/None for per channel), not {value!r}")
    return size


def is_skipped(name: str, skip: list[str]) -> bool:
    """Whether layer ``name`` is kept in float32: it equals a ``skip`` entry or ends with
    ``"." + entry`` (``"lm_head"`` skips ``lm_head``, not ``not_lm_head``)."""
    return any(name == s or name.endswith("." + s) for s in skip)
