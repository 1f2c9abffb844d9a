"""The ``hook`` and ``fixture`` routes: a model the user made in their own code.

Both are measured as what they are: labelled from their layers (torchao tensor subclasses,
bitsandbytes, quanto, our schemes...), saved with their library's safe format where one
exists, and reloaded from those files in a probe process; where no safe save exists the
file and probe gates skip with the fix (``--llmq-int8-model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from ...errors import LlmqSkip, LlmqUsageError
from .base import Int8Built, Int8Request, ProbeArgs, ProbeLoaded, ReferenceLoader

if TYPE_CHECKING:
    from ...origin import Int8Origin, Route
    from ...sides.base import ProbeSpec, ShippedFile
    from ...types import CausalLM, Tokenizer


def origin_of_model(model: CausalLM, route: Route, label: str | None = None) -> Int8Origin:
    """Describe a model the user made (hook or fixture): the label they gave, else the one
    read from its layers (torchao tensor subclasses, bitsandbytes, quanto, our schemes...)."""
    from ...origin import Int8Origin
    from ..third_party.detect import describe_int8

    desc = describe_int8(model)
    return Int8Origin(route, label or desc.label, desc.bits, scheme=desc.scheme)


def ship_saved(model: CausalLM, origin: Int8Origin, directory: Path) -> ShippedFile:
    """Saved with its maker's safe format (:func:`~..third_party.save.save_int8`), or a skip
    saying why none exists; ``origin.checkpoint``: the user's own files, not saved again."""
    from ..third_party.save import save_int8
    from .shipped import shipped_directory

    outcome = save_int8(model, directory, origin=origin.checkpoint)
    if isinstance(outcome, str):
        raise LlmqSkip(f"{origin.label} from the {origin.made_by}: {outcome}")
    return shipped_directory(Path(outcome.directory), model, outcome.how, outcome.bytes)


def probe_saved(
    route: str, saved: Path, tokenizer: Tokenizer | None, origin: Int8Origin, workdir: Path
) -> ProbeSpec:
    """A probe that loads the saved directory ``saved`` as its maker loads it, with the
    tokenizer written next to it (under ``workdir``)."""
    from ...sides.base import ProbeSpec
    from ..third_party.probe import loader_for

    if tokenizer is None:
        raise LlmqUsageError(
            f"{origin.label}: a fresh process needs its tokenizer to load it; pass tokenizer="
        )
    tokenizer_dir = workdir / "tokenizer"
    tokenizer.save_pretrained(str(tokenizer_dir))
    args: ProbeArgs = {
        "route": route,
        "int8_dir": str(saved),
        "int8_loader": loader_for(saved),
        "tokenizer_dir": str(tokenizer_dir),
    }
    return ProbeSpec(args)


def load_saved_in_probe(args: ProbeArgs) -> ProbeLoaded:
    """The saved directory of ``args``, loaded as its maker loads it: no reference at all."""
    from transformers import AutoTokenizer

    from ..third_party.probe import load_saved_int8

    tokenizer = cast("Tokenizer", AutoTokenizer.from_pretrained(str(args["tokenizer_dir"])))
    loader = args.get("int8_loader")
    model = load_saved_int8(
        str(args["int8_dir"]),
        str(loader) if loader else None,
        device=str(args.get("device", "cpu")),
    )
    return ProbeLoaded(model, tokenizer, {"int8_dir": str(args["int8_dir"])})


class _UserModelRoute:
    """Ship, probe and probe loading, shared by the two routes of a user's model."""

    name: str

    def ship(self, model: CausalLM, origin: Int8Origin, directory: Path) -> ShippedFile:
        return ship_saved(model, origin, directory)

    def probe(
        self, model: CausalLM, tokenizer: Tokenizer | None, origin: Int8Origin, workdir: Path
    ) -> ProbeSpec:
        saved = self.ship(model, origin, workdir / "int8").path
        return probe_saved(self.name, saved, tokenizer, origin, workdir)

    def load_in_probe(self, args: ProbeArgs, reference: ReferenceLoader) -> ProbeLoaded:
        return load_saved_in_probe(args)


class HookRoute(_UserModelRoute):
    """The user's ``pytest_llmq_quantize`` hook, on the reference; None when it returns None
    (then the built-in scheme builds the model)."""

    name = "hook"

    def build_or_load(self, request: Int8Request) -> Int8Built | None:
        from ..build import check_quantizable, checked, probe_logits

        if request.hook is None:
            return None
        what = "the pytest_llmq_quantize hook"
        check_quantizable(request.reference, what, request.label)
        before = probe_logits(request.reference)
        config = {"device": request.device, "label": request.label}
        returned = request.hook(model=request.reference, scheme=request.scheme, config=config)
        if returned is None:
            return None
        model, given = returned if isinstance(returned, tuple) else (returned, None)
        if (
            isinstance(returned, tuple)
            and len(returned) != 2
            or not hasattr(model, "named_modules")
        ):
            raise LlmqUsageError(
                "pytest_llmq_quantize returned "
                f"{type(returned).__name__}; return the INT8 model, (model, 'a label') or None"
            )
        cov = checked(request.reference, model, before, what, request.label)
        return Int8Built(model, cov, origin_of_model(model, "hook", str(given) if given else None))


class FixtureRoute(_UserModelRoute):
    """The model an overridden ``int8_model`` fixture returned (``request.model``)."""

    name = "fixture"

    def build_or_load(self, request: Int8Request) -> Int8Built | None:
        from ...layers import coverage

        if request.model is None:
            return None
        cov = coverage(request.reference, request.model)
        return Int8Built(request.model, cov, origin_of_model(request.model, "fixture"))
