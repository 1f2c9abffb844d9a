"""The ``scheme`` route: one of our built-in schemes quantizes a private copy of the reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Int8Built, Int8Request, ProbeArgs, ProbeLoaded, ReferenceLoader

if TYPE_CHECKING:
    from ...origin import Int8Origin
    from ...sides.base import ProbeSpec, ShippedFile
    from ...types import CausalLM, Tokenizer


class SchemeRoute:
    name = "scheme"

    def build_or_load(self, request: Int8Request) -> Int8Built:
        from ...origin import Int8Origin
        from ...schemes import get_scheme
        from ..build import build_int8

        scheme = request.scheme
        model, cov = build_int8(
            request.reference, scheme, device=request.device, label=request.label
        )
        path = get_scheme(scheme).describe().get("kernel")  # after quantizing: the path taken
        origin = Int8Origin("scheme", scheme, 8, scheme=scheme, path=path)
        return Int8Built(model, cov, origin)

    def ship(self, model: CausalLM, origin: Int8Origin, directory: Path) -> ShippedFile:
        from ...schemes import get_scheme
        from .shipped import shipped_directory

        directory.mkdir(parents=True, exist_ok=True)
        get_scheme(str(origin.scheme)).save(model, directory)
        return shipped_directory(directory, model, f"{origin.scheme}'s safetensors + recipe")

    def probe(
        self, model: CausalLM, tokenizer: Tokenizer | None, origin: Int8Origin, workdir: Path
    ) -> ProbeSpec:
        from ...sides.base import ProbeSpec

        args: ProbeArgs = {"route": self.name, "scheme": origin.scheme}
        return ProbeSpec(args, "built from the reference in-process")

    def load_in_probe(self, args: ProbeArgs, reference: ReferenceLoader) -> ProbeLoaded:
        """The reference, loaded here, quantized by the scheme, then freed by the caller."""
        from ...schemes import default_scheme
        from ..build import build_int8

        model, tokenizer = reference()
        scheme = str(args.get("scheme") or default_scheme())
        int8_model, coverage = build_int8(model, scheme, device=str(args.get("device", "cpu")))
        return ProbeLoaded(int8_model, tokenizer, {"scheme": scheme, "coverage": str(coverage)})
