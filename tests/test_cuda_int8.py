"""``weight-only-int8`` with any float activation dtype, and on CUDA.

On the CPU (these run in CI): the layer takes float32, bfloat16 and float16 activations
and answers in the same dtype (the C kernel is fed float32, cast in and out); a bfloat16
or float16 reference of the tiny GPT-2 goes end to end (build, forward, save, load) and
reloads bit for bit in its own dtype; the CPU-only schemes refuse CUDA in one line.

On CUDA (skipped without a GPU, run by ``benchmarks/gpu_check.py``): the layer keeps the
row-major layout there and computes what the CPU computes; the tiny GPT-2 with a
bfloat16 reference builds, runs and round-trips on the GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pytest_llmquant.errors import LlmqUsageError  # noqa: E402
from pytest_llmquant.int8.build import build_int8  # noqa: E402
from pytest_llmquant.schemes import get_scheme  # noqa: E402
from pytest_llmquant.schemes.int8_math import dequantize, linear_reference  # noqa: E402
from pytest_llmquant.schemes.weight_only_linear import (  # noqa: E402
    KERNEL_MAX_TOKENS,
    WeightOnlyInt8Linear,
)

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu_check.py there)"
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
#: how far a layer's output may sit from the float64 reference, relative to its largest
#: value: float32 sums only, or one rounding of the weight and of the result to 8 or
#: 11 mantissa bits plus half-precision accumulation
REL_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _layer(rows: int, cols: int, group: int | None, seed: int = 0) -> WeightOnlyInt8Linear:
    gen = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(cols, rows)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(rows, cols, generator=gen))
        linear.bias.copy_(torch.randn(rows, generator=gen))
    return WeightOnlyInt8Linear.from_linear(linear, group)


def _same_state(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    """The same int8 weights and scales, bit for bit, wherever each one lives."""
    return all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a, b, strict=True))


def _assert_close_to_reference(y: torch.Tensor, layer: WeightOnlyInt8Linear, x: torch.Tensor):
    q, scales = layer.int8_state()
    bias = None if layer.bias is None else layer.bias.cpu()
    want = linear_reference(x.float().cpu(), q.cpu(), scales.cpu(), layer.group_size, bias)
    err = (y.float().cpu() - want).abs().max().item()
    assert err <= REL_TOL[y.dtype] * want.abs().max().item(), f"{y.dtype}: max error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", [1, KERNEL_MAX_TOKENS + 5], ids=["decode", "prompt"])
@pytest.mark.parametrize("shape", [(64, 96, 32), (10, 40, None)], ids=["packed", "row-major"])
def test_cpu_layer_answers_in_the_activation_dtype(dtype, tokens, shape) -> None:
    rows, cols, group = shape
    layer = _layer(rows, cols, group)
    x = torch.randn(2, tokens, cols, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.inference_mode():
        y = layer(x)
    assert y.dtype == dtype and y.shape == (2, tokens, rows)
    _assert_close_to_reference(y, layer, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(8, 64, 32), (5, 40, 32), (3, 7, None)])
def test_dequantized_weight_is_one_rounding_of_the_float32_products(dtype, shape) -> None:
    rows, cols, group = shape
    layer = _layer(rows, cols, group)
    q, scales = layer.int8_state()
    want = dequantize(q, scales, group).to(dtype)
    assert torch.equal(layer.dequantized_weight(dtype), want)


def test_layout_follows_the_device_on_the_cpu() -> None:
    packable, odd = _layer(8, 64, 32), _layer(5, 40, 32)
    assert packable.is_packed and packable.weight_int8 is None and packable.packed is not None
    assert not odd.is_packed and odd.packed is None and odd.weight_int8 is not None
    before = packable.int8_state()
    packable.to("cpu").to(torch.bfloat16)  # a move that changes nothing keeps the layout
    assert packable.is_packed and _same_state(before, packable.int8_state())


def test_weight_only_runs_on_cuda_and_the_others_say_they_do_not() -> None:
    get_scheme("weight-only-int8").check_device("cuda")
    get_scheme("weight-only-int8").check_device("cuda:1")
    for name in ("smoothquant-w8a8", "dynamic-int8"):
        with pytest.raises(LlmqUsageError) as info:
            get_scheme(name).check_device("cuda")
        message = str(info.value)
        assert "\n" not in message and f"scheme {name!r} runs only on cpu" in message
        assert "--llmq-device=cpu" in message


# -- a bfloat16 / float16 reference end to end, on the CPU -------------------------------


def _reference(directory: Path, dtype: torch.dtype, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()


def _ids(model, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.randint(0, model.config.vocab_size, (2, 20), generator=gen).to(device)


def _end_to_end(tiny_gpt2_dir: Path, tmp_path: Path, dtype: torch.dtype, device: str) -> None:
    reference = _reference(tiny_gpt2_dir, dtype, device)
    ids = _ids(reference, device)
    int8, cov = build_int8(reference, "weight-only-int8", device=device)
    assert cov.complete, str(cov)
    with torch.inference_mode():
        ref_logits = reference(input_ids=ids).logits
        logits = int8(input_ids=ids).logits
        decode = int8(input_ids=ids[:, :3]).logits  # few tokens: the kernel path on the CPU
    assert logits.dtype == dtype and decode.dtype == dtype and logits.device.type == device
    assert bool(torch.isfinite(logits).all()) and bool(torch.isfinite(decode).all())
    # the tiny model's logits are nearly flat: int8 moves them by well under 0.05
    assert (logits.float() - ref_logits.float()).abs().max().item() < 0.05
    assert torch.allclose(decode.float(), logits[:, :3].float(), atol=0.02)

    scheme = get_scheme("weight-only-int8")
    scheme.save(int8, tmp_path / "int8")
    reloaded = scheme.load(tmp_path / "int8", device=device)
    assert reloaded.get_input_embeddings().weight.dtype == dtype
    with torch.inference_mode():
        again = reloaded(input_ids=ids).logits
    assert again.dtype == dtype and torch.equal(again, logits)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_reference_end_to_end_on_cpu(tiny_gpt2_dir, tmp_path, dtype) -> None:
    _end_to_end(tiny_gpt2_dir, tmp_path, dtype, "cpu")


def test_describe_names_the_cpu_path_after_a_cpu_build(tiny_gpt2_dir) -> None:
    """The C kernel where it is expected to build (a failed build shows here as the
    fallback), else the fallback with the reason the kernel is not expected."""
    from pytest_llmquant.schemes import kernels

    build_int8(_reference(tiny_gpt2_dir, torch.float32), "weight-only-int8")
    path = get_scheme("weight-only-int8").describe()["kernel"]
    reason = kernels.kernel_unavailable_reason()
    assert path == ("AVX2 C kernel" if reason is None else f"torch dequantize fallback ({reason})")


# -- on a GPU ---------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", [1, 40], ids=["decode", "prompt"])
def test_cuda_layer_matches_the_reference(dtype, tokens) -> None:
    layer = _layer(64, 96, 32)
    before = layer.int8_state()
    layer.to("cuda")
    assert not layer.is_packed and layer.packed is None
    assert layer.weight_int8 is not None and layer.weight_int8.device.type == "cuda"
    assert layer.scales is not None and layer.scales.dtype == torch.float32
    assert _same_state(before, layer.int8_state())
    x = torch.randn(2, tokens, 96, generator=torch.Generator().manual_seed(1)).to("cuda", dtype)
    with torch.inference_mode():
        y = layer(x)
    assert y.dtype == dtype and y.device.type == "cuda"
    _assert_close_to_reference(y, layer, x)
    layer.to("cpu")  # and back: packed again, the same numbers
    assert layer.is_packed and _same_state(before, layer.int8_state())


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_reference_end_to_end_on_cuda(tiny_gpt2_dir, tmp_path, dtype) -> None:
    _end_to_end(tiny_gpt2_dir, tmp_path, dtype, "cuda")
    path = get_scheme("weight-only-int8").describe()["kernel"]
    assert path == "torch dequantize-per-call path on cuda (the C kernel is CPU only)"
