"""Evaluation text and prompt edge cases, tokenizers without a pad token, models without a
generation config: each handled with one clear line or a quiet, warned recovery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def test_eval_text_too_short_is_one_line(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.quant_similarity()
        def test_gate(llmq_pair):
            pass
    """)
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_gpt2_dir}", f"--llmq-eval-text={short}", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "quant_similarity could not measure tiny-gpt2* [[]weight-only-int8]: evaluation text has only "
            "* tokens, * needed for --llmq-eval-tokens=2048*; pass a longer --llmq-eval-text or lower "
            "--llmq-eval-tokens",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_missing_eval_text_file(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.quant_similarity()
        def test_gate(llmq_pair):
            pass
    """)
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_gpt2_dir}", "--llmq-eval-text=nope.txt", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # found at start-up, before any model loads
    result.stderr.fnmatch_lines(
        ["*--llmq-eval-text='nope.txt' on the command line: must be an existing file*"]
    )


def test_prompt_longer_than_context_is_truncated_from_the_left(tmp_path: Path) -> None:
    from tiny_models import make_tiny_gpt2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_llmquant.models.causal_lm import LlmqPromptWarning, fit_to_context

    d = make_tiny_gpt2(tmp_path / "short-context", n_positions=16)
    model, tok = AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    inputs = tok("the capital of France is Paris " * 10, return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    with pytest.warns(
        LlmqPromptWarning,
        match=f"prompt of {n} tokens \\(\\+4 new\\) is longer than "
        "the model's context \\(16\\); keeping its last 12 tokens",
    ):
        fitted = fit_to_context(inputs, model, new_tokens=4)
    assert fitted["input_ids"].tolist() == inputs["input_ids"][:, -12:].tolist()
    assert fitted["attention_mask"].shape[1] == 12
    model.generate(**fitted, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # fits: no crash


def test_suite_property_check_survives_prompts_longer_than_context(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    from tiny_models import make_tiny_gpt2

    d = make_tiny_gpt2(tmp_path / "ctx8", n_positions=8)
    result = pytester.runpytest_inprocess(
        f"--llmq-model={d}",
        "--llmq-suite",
        "-k",
        "prompt_property",
        "-p",
        "no:cacheprovider",
        "-W",
        "always",
    )
    result.assert_outcomes(passed=1, deselected=11)
    result.stdout.fnmatch_lines(
        [
            "*LlmqPromptWarning: prompt of * tokens (+0 new) is longer than "
            "the model's context (8); keeping its last 8 tokens*"
        ]
    )


def test_no_pad_token_and_no_generation_config(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny_gpt2_dir, bare)
    (bare / "generation_config.json").unlink()
    tok_config = json.loads((bare / "tokenizer_config.json").read_text())
    assert tok_config.get("pad_token") is None  # the tiny tokenizer really has none
    pytester.makepyfile("""
        def test_generate(int8_model, llmq_tokenizer):
            assert llmq_tokenizer.pad_token == llmq_tokenizer.eos_token
            assert int8_model.generation_config.pad_token_id == llmq_tokenizer.eos_token_id
            batch = llmq_tokenizer(["a b", "the capital of France is"], return_tensors="pt", padding=True)
            out = int8_model.generate(**batch, max_new_tokens=3, do_sample=False)
            assert out.shape == (2, batch["input_ids"].shape[1] + 3)
    """)
    pytester.runpytest_inprocess(f"--llmq-model={bare}", "-p", "no:cacheprovider").assert_outcomes(
        passed=1
    )
