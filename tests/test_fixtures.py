"""The model-pair fixtures on a small real GPT-2 (Conv1D layers, tied lm_head)."""

from __future__ import annotations

from pathlib import Path

import pytest


def run(pytester: pytest.Pytester, model: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(f"--llmq-model={model}", "-p", "no:cacheprovider", *args)


def test_int8_model_generates(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makepyfile("""
        def test_int8_generates(int8_model, llmq_tokenizer):
            ids = llmq_tokenizer("The capital of France is", return_tensors="pt")
            out = int8_model.generate(**ids, max_new_tokens=8)
            assert out.shape[1] > ids["input_ids"].shape[1]
    """)
    result = run(pytester, tiny_gpt2_dir)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*tiny-gpt2* [[]weight-only-int8]: quantized *% of weight bytes: 9 of 9 linear "
            "layers; float: embeddings 0.2 MB, norms; weight-only-int8, made by the built-in "
            "scheme, runs on the *"
        ]
    )


def test_every_conv1d_and_linear_is_quantized_and_logits_stay_close(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    pytester.makepyfile("""
        import torch
        from transformers.pytorch_utils import Conv1D

        from pytest_llmquant.layers import is_linear_like
        from pytest_llmquant.schemes import get_scheme

        def test_coverage(llmq_pair, fp32_model, int8_model):
            convs = [n for n, m in fp32_model.named_modules() if isinstance(m, Conv1D)]
            linears = [n for n, m in fp32_model.named_modules() if type(m) is torch.nn.Linear]
            assert len(convs) == 8 and linears == ["lm_head"]
            cov = llmq_pair.coverage
            assert sorted(cov.quantized) == sorted(convs + linears)
            assert cov.kept_float == [] and cov.complete
            # GPT-2 ties lm_head to the token embeddings, which stay float with the positions
            said = "9 of 9 linear layers; float: embeddings 0.2 MB, norms"
            assert str(cov) == f"quantized {100 * cov.quantized_fraction:.1f}% of weight bytes: {said}"
            scheme = get_scheme(llmq_pair.scheme)
            for name in cov.quantized:
                layer = int8_model.get_submodule(name)
                assert scheme.is_quantized_module(layer) and not is_linear_like(layer), name

        def test_logits_close(fp32_model, int8_model, llmq_tokenizer):
            ids = llmq_tokenizer("Quantization maps floating point weights", return_tensors="pt")
            with torch.inference_mode():
                a, b = fp32_model(**ids).logits, int8_model(**ids).logits
            assert not torch.equal(a, b)  # really quantized
            assert (a - b).abs().max() < 0.05 * a.abs().max()

        def test_eval_mode(fp32_model, int8_model):
            assert not fp32_model.training and not int8_model.training
    """)
    run(pytester, tiny_gpt2_dir).assert_outcomes(passed=3)


def test_quantizing_leaves_fp32_bit_identical(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    pytester.makepyfile("""
        import torch

        IDS = torch.tensor([[1, 5, 9, 30, 2, 7]])

        def test_before_and_after(request, fp32_model):
            fp32 = fp32_model
            with torch.inference_mode():
                before = fp32(IDS).logits.clone()
            request.getfixturevalue("int8_model")
            with torch.inference_mode():
                after = fp32(IDS).logits
            assert torch.equal(before, after)
    """)
    run(pytester, tiny_gpt2_dir).assert_outcomes(passed=1)


def test_a_hook_that_mutates_fp32_is_caught(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makeconftest("""
        import torch

        def pytest_llmq_quantize(model, scheme, config):
            with torch.no_grad():
                model.lm_head.weight.mul_(0.5)  # quantizing in place: the classic mistake
            return model
    """)
    pytester.makepyfile("def test_x(int8_model):\n    pass\n")
    result = run(pytester, tiny_gpt2_dir)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*changed the FP32 model; a quantizer must work on a copy*"])
    assert "Traceback" not in result.stdout.str()


def test_two_models_parametrize_every_model_test(
    pytester: pytest.Pytester, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    import shutil

    other = tmp_path / "other-gpt2"
    shutil.copytree(tiny_gpt2_dir, other)
    pytester.makepyfile("""
        def test_fp32(fp32_model):
            pass

        def test_pair(llmq_pair):
            pass

        def test_plain():
            pass
    """)
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_gpt2_dir}", f"--llmq-model={other}", "-v", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines_random(
        [
            "*test_fp32?tiny-gpt2* PASSED*",
            "*test_fp32?other-gpt2* PASSED*",
            "*test_pair?tiny-gpt2*-weight-only-int8? PASSED*",
            "*test_pair?other-gpt2-weight-only-int8? PASSED*",
            "*test_plain PASSED*",
        ]
    )


def test_models_load_once_and_only_when_needed(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    pytester.makepyfile("""
        import sys

        def test_a_plain_test_loads_nothing(llmq_session):
            assert llmq_session.store.loaded_references == 0

        def test_first(fp32_model, llmq_session):
            assert llmq_session.store.loaded_references == 1

        def test_second(fp32_model, int8_model, llmq_session):
            assert llmq_session.store.loaded_references == 1 and llmq_session.store.built == 1
    """)
    run(pytester, tiny_gpt2_dir).assert_outcomes(passed=3)


def test_no_model_given_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(fp32_model):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no model to test: pass --llmq-model=ID*"])


def test_model_from_ini(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makeini(f"[pytest]\nllmq_model = {tiny_gpt2_dir}\n")
    pytester.makepyfile("def test_x(fp32_model):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-v")
    result.stdout.fnmatch_lines(["*test_x?tiny-gpt2* PASSED*"])
