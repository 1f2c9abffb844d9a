"""The ``gguf`` route: a llama.cpp ``Q8_0`` file passed with ``--llmq-int8-model``.

Its Q8_0 blocks go losslessly into ``weight-only-int8`` layers of the reference's
architecture (:mod:`..gguf_q8_0`), so nothing is re-quantized; the file is what ships, and
a probe process loads it the same way, next to a reference it then frees.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Int8Built, Int8Request, ProbeArgs, ProbeLoaded, ReferenceLoader

if TYPE_CHECKING:
    from ...origin import Int8Origin
    from ...sides.base import ProbeSpec, ShippedFile
    from ...types import CausalLM, Tokenizer


class GgufRoute:
    name = "gguf"

    def origin_of(self, path: str) -> Int8Origin:
        """The file's label and bits from its header alone (torch-free, at start-up)."""
        from ...origin import Int8Origin
        from ..gguf_q8_0 import describe_gguf

        p = Path(path).expanduser()
        label, bits, _ = describe_gguf(str(p))
        return Int8Origin("checkpoint", label, bits, checkpoint=str(p), scheme="weight-only-int8")

    def build_or_load(self, request: Int8Request) -> Int8Built | None:
        from ...layers import coverage
        from ..build import claims
        from ..gguf_q8_0 import load_gguf_int8
        from .checkpoint import checked_coverage

        path = request.checkpoint
        if path is None:
            return None
        origin = self.origin_of(path)
        model = load_gguf_int8(path, request.reference, device=request.device)
        expected, notes = claims(origin.scheme)
        cov = coverage(request.reference, model, expected=expected, notes=notes)
        built = Int8Built(model, cov, origin)
        return checked_coverage(built, path, request.reference)

    def ship(self, model: CausalLM, origin: Int8Origin, directory: Path) -> ShippedFile:
        """The GGUF file itself (``directory`` is unused)."""
        from .shipped import shipped_single_file

        path = Path(str(origin.checkpoint)).expanduser()
        return shipped_single_file(path, f"the GGUF file {path}")

    def probe(
        self, model: CausalLM, tokenizer: Tokenizer | None, origin: Int8Origin, workdir: Path
    ) -> ProbeSpec:
        from ...sides.base import ProbeSpec

        return ProbeSpec({"route": self.name, "int8_gguf": str(origin.checkpoint)})

    def load_in_probe(self, args: ProbeArgs, reference: ReferenceLoader) -> ProbeLoaded:
        """The reference loaded here (for its architecture), the file's blocks put into it."""
        from ..gguf_q8_0 import load_gguf_int8

        model, tokenizer = reference()
        int8_model = load_gguf_int8(
            str(args["int8_gguf"]), model, device=str(args.get("device", "cpu"))
        )
        return ProbeLoaded(int8_model, tokenizer, {"int8_gguf": str(args["int8_gguf"])})
