"""The INT8 routes table: one handler per route, found from any origin, and the INT8 model
side it makes: saved and reloaded the way its route says, measured by the memory gate
without the gate knowing the route."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pytest_llmquant.errors import LlmqUsageError
from pytest_llmquant.int8.routes import (
    ROUTES,
    Int8Request,
    build_or_load,
    int8_side,
    load_in_probe,
    route_for,
    route_for_path,
)
from pytest_llmquant.int8.routes.checkpoint import CheckpointRoute
from pytest_llmquant.int8.routes.gguf import GgufRoute
from pytest_llmquant.int8.routes.scheme import SchemeRoute
from pytest_llmquant.int8.routes.user_model import FixtureRoute, HookRoute
from pytest_llmquant.origin import Int8Origin

HANDLERS = {
    "scheme": SchemeRoute,
    "hook": HookRoute,
    "fixture": FixtureRoute,
    "checkpoint": CheckpointRoute,
    "gguf": GgufRoute,
}


def test_the_table_has_one_handler_per_route() -> None:
    assert {name: type(route) for name, route in ROUTES.items()} == HANDLERS
    for name, route in ROUTES.items():
        assert route.name == name
        for step in ("build_or_load", "ship", "probe", "load_in_probe"):
            assert callable(getattr(route, step)), f"{name} has no {step}"


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.Q8_0.gguf"
    path.write_bytes(b"GGUF")
    return path


@pytest.mark.parametrize(
    ("route", "checkpoint", "handler"),
    [
        ("scheme", None, SchemeRoute),
        ("hook", None, HookRoute),
        ("fixture", None, FixtureRoute),
        ("checkpoint", "directory", CheckpointRoute),
        ("checkpoint", "gguf", GgufRoute),
    ],
)
def test_every_kind_of_origin_finds_its_handler(
    tmp_path: Path, gguf_file: Path, route: Any, checkpoint: str | None, handler: type
) -> None:
    path = {"directory": str(tmp_path), "gguf": str(gguf_file), None: None}[checkpoint]
    origin = Int8Origin(route, "some label", checkpoint=path)
    assert type(route_for(origin)) is handler


def test_a_path_is_a_gguf_file_or_a_checkpoint_directory(tmp_path: Path, gguf_file: Path) -> None:
    assert type(route_for_path(str(gguf_file))) is GgufRoute
    assert type(route_for_path(str(tmp_path))) is CheckpointRoute
    with pytest.raises(LlmqUsageError, match="no such file or directory; pass a directory"):
        route_for_path(str(tmp_path / "missing"))


def test_a_probe_process_asks_the_route_its_arguments_name() -> None:
    with pytest.raises(LlmqUsageError, match="unknown INT8 route 'onnx'; valid: scheme, hook"):
        load_in_probe({"route": "onnx"}, lambda: (None, None))  # type: ignore[arg-type, return-value]


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_gpt2_dir)


def test_a_hook_that_returns_none_leaves_the_model_to_the_scheme(tiny_gpt2: Any) -> None:
    calls: list[str] = []

    def hook(model: Any, scheme: str, config: dict[str, Any]) -> None:
        calls.append(scheme)

    built = build_or_load(Int8Request(tiny_gpt2[0], "dynamic-int8", hook=hook))
    assert calls == ["dynamic-int8"]
    assert (built.origin.route, built.origin.label) == ("scheme", "dynamic-int8")


def test_a_hook_model_is_the_hook_routes(tiny_gpt2: Any) -> None:
    from pytest_llmquant.schemes import get_scheme

    def hook(model: Any, scheme: str, config: dict[str, Any]) -> Any:
        return get_scheme("dynamic-int8").quantize(copy.deepcopy(model)), "my int8"

    built = build_or_load(Int8Request(tiny_gpt2[0], "weight-only-int8", hook=hook))
    assert (built.origin.route, built.origin.label) == ("hook", "my int8")
    assert type(route_for(built.origin)) is HookRoute


def test_the_int8_side_ships_and_probes_as_its_route_says(tiny_gpt2: Any, tmp_path: Path) -> None:
    reference, tokenizer = tiny_gpt2
    built = build_or_load(Int8Request(reference, "dynamic-int8"))
    side = int8_side(built, tokenizer=tokenizer)
    assert (side.label, side.origin) == ("dynamic-int8", built.origin)
    shipped = side.shipped_file(tmp_path / "int8")
    assert "llmq-recipe.json" in shipped.files and shipped.how.startswith("dynamic-int8's")
    probe = side.probe_spec(tmp_path / "probe")
    assert probe.args == {"route": "scheme", "scheme": "dynamic-int8"}
    assert probe.made == "built from the reference in-process"


def test_a_model_with_no_origin_is_described_as_the_fixtures(tiny_gpt2: Any) -> None:
    from pytest_llmquant.schemes import get_scheme

    model = get_scheme("dynamic-int8").quantize(copy.deepcopy(tiny_gpt2[0]))
    side = int8_side(model)
    assert side.origin is not None and side.origin.route == "fixture"
    assert side.label == "dynamic-int8"


def test_the_memory_gate_measures_sides_as_it_measures_modules(tiny_gpt2: Any) -> None:
    from pytest_llmquant.memory import measure_memory
    from pytest_llmquant.sides.torch_side import TorchSide

    reference, tokenizer = tiny_gpt2
    built = build_or_load(Int8Request(reference, "dynamic-int8"))
    sides = TorchSide(reference, "FP32"), int8_side(built, tokenizer=tokenizer)
    for kind in ("weights", "file"):
        from_sides = measure_memory(*sides, kind)
        from_modules = measure_memory(reference, built.model, kind, origin=built.origin)
        assert from_sides.as_dict() == from_modules.as_dict()
        assert from_sides.reference_bytes > from_sides.int8_bytes > 0
