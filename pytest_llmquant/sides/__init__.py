"""Model sides: what a gate needs from a model (:mod:`.base`), one implementation per
runtime (:mod:`.torch_side` today)."""

from .base import DecodeTimer, ModelSide, ProbeSpec, ShippedFile

__all__ = ["DecodeTimer", "ModelSide", "ProbeSpec", "ShippedFile"]
