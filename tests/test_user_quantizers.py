"""The three ways to test *your* INT8 model: a fixture override, the quantize hook, and a
pre-quantized checkpoint (``--llmq-int8-model``). The gates then measure that model."""

from __future__ import annotations

from pathlib import Path

import pytest

GATED = """
import pytest

@pytest.mark.quant_similarity(max_kl=5, min_same_top=0.01, max_ppl_ratio=10)
def test_gate(llmq_pair):
    print("INT8 TYPE", type(llmq_pair.int8.lm_head).__name__, llmq_pair.coverage)
"""


def run(pytester: pytest.Pytester, model: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(
        f"--llmq-model={model}", "--llmq-eval-tokens=256", "-p", "no:cacheprovider", "-s", *args
    )


def test_override_the_int8_model_fixture(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makeconftest(
        """
        import copy, pytest, torch
        from pytest_llmquant.layers import convert_conv1d

        class MyInt8Linear(torch.nn.Module):
            def __init__(self, linear):
                super().__init__()
                w = linear.weight.detach()
                self.scale = w.abs().amax(1, keepdim=True) / 127
                self.q = torch.round(w / self.scale).to(torch.int8)
                self.bias = linear.bias
            def forward(self, x):
                y = x @ (self.q.float() * self.scale).t()
                return y if self.bias is None else y + self.bias

        @pytest.fixture(scope="session")
        def int8_model(fp32_model):
            model = copy.deepcopy(fp32_model)
            convert_conv1d(model)
            for name, m in list(model.named_modules()):
                if type(m) is torch.nn.Linear:
                    parent, _, child = name.rpartition(".")
                    setattr(model.get_submodule(parent) if parent else model, child, MyInt8Linear(m))
            return model.eval()
        """
    )
    pytester.makepyfile(GATED)
    result = run(pytester, tiny_gpt2_dir)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*INT8 TYPE MyInt8Linear quantized *% of weight bytes: 9 of 9 linear layers*"]
    )


def test_quantize_hook(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makeconftest(
        """
        import copy
        from pytest_llmquant import get_scheme

        def pytest_llmq_quantize(model, scheme, config):
            print("HOOK CALLED", scheme, config["label"])
            int8 = get_scheme("dynamic-int8").quantize(copy.deepcopy(model))
            int8._made_by_hook = True
            return int8
        """
    )
    pytester.makepyfile(
        GATED + "\n\ndef test_hook_model(int8_model):\n    assert int8_model._made_by_hook\n"
    )
    result = run(pytester, tiny_gpt2_dir)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*HOOK CALLED weight-only-int8 tiny-gpt2*"])


def test_pre_quantized_checkpoint(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    from pytest_llmquant import build_int8, load_fp32
    from pytest_llmquant.schemes import get_scheme

    fp32, _ = load_fp32(str(tiny_gpt2_dir))
    int8, _ = build_int8(fp32, "dynamic-int8")
    get_scheme("dynamic-int8").save(int8, tmp_path / "int8")
    pytester.makepyfile(GATED)
    result = run(pytester, tiny_gpt2_dir, f"--llmq-int8-model={tmp_path / 'int8'}", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_gate?tiny-gpt2*-dynamic-int8? *",
            "*quantized *% of weight bytes: 9 of 9 linear layers*",
        ]
    )


def test_a_plain_save_pretrained_of_a_torch_ao_dynamic_model_is_explained(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    import shutil

    fake = tmp_path / "plain-save"
    shutil.copytree(tiny_gpt2_dir, fake)  # what a plain save_pretrained/reload leaves: FP32
    pytester.makepyfile(GATED)
    result = run(pytester, tiny_gpt2_dir, f"--llmq-int8-model={fake}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --llmq-int8-model=* is not quantized (no llmq-recipe.json, no quantization_config in "
            "config.json): save_pretrained cannot serialize torch.ao quantized layers*"
        ]
    )


LABELLED_HOOK = """
import copy
from pytest_llmquant import get_scheme

def pytest_llmq_quantize(model, scheme, config):
    return get_scheme("weight-only-int8").quantize(copy.deepcopy(model)), "team recipe v2"
"""

BROKEN_HOOK = """
def pytest_llmq_quantize(model, scheme, config):
    return "not a model"
"""

DEVICE_HOOK = """
import copy
from pytest_llmquant import get_scheme

def pytest_llmq_quantize(model, scheme, config):
    return get_scheme("weight-only-int8").quantize(copy.deepcopy(model))
"""


def test_a_hook_may_name_its_model(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makeconftest(LABELLED_HOOK)
    pytester.makepyfile(GATED)
    result = run(pytester, tiny_gpt2_dir, "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_gate?tiny-gpt2*-hook? *",
            "*tiny-gpt2* [[]team recipe v2]: quantized *% of weight bytes: 9 of 9 linear layers; float: embeddings 0.2 MB, norms; team recipe v2, "
            "made by the pytest_llmq_quantize hook",
            "*[[]team recipe v2]  (*",
        ]
    )


def test_a_hook_that_returns_something_else_is_one_line(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    pytester.makeconftest(BROKEN_HOOK)
    pytester.makepyfile(GATED)
    result = run(pytester, tiny_gpt2_dir)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*pytest_llmq_quantize returned str; return the INT8 model, (model, 'a label') or None"]
    )
    assert "Traceback" not in result.stdout.str()


def test_the_built_in_device_check_does_not_judge_a_hook_model(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hook builds the model, so the built-in scheme's device list does not apply."""
    from pytest_llmquant.schemes.weight_only_int8 import WeightOnlyInt8

    monkeypatch.setattr(WeightOnlyInt8, "devices", ("a-device-this-cpu-is-not",))
    pytester.makeconftest(DEVICE_HOOK)
    pytester.makepyfile(GATED)
    run(pytester, tiny_gpt2_dir).assert_outcomes(passed=1)
    pytester.makeconftest("")
    result = run(pytester, tiny_gpt2_dir)  # no hook: the scheme builds it and refuses cpu
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*scheme 'weight-only-int8' runs only on a-device-this-cpu-is-not*"]
    )
