"""The evaluation text: a built-in corpus that is the same everywhere, or the user's file."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_llmquant.errors import LlmqUsageError
from pytest_llmquant.evaltext import EVAL_PROMPTS, default_corpus, load_eval_text

SHA_IN_SUBPROCESS = (
    "import hashlib, sys\n"
    "from pytest_llmquant.evaltext import default_corpus\n"
    "sys.stdout.write(hashlib.sha256(default_corpus().encode('utf-8')).hexdigest())\n"
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_default_corpus_is_the_same_text_on_every_call_and_in_every_process():
    first = default_corpus()
    assert default_corpus() is first  # cached: built once per process
    default_corpus.cache_clear()
    assert default_corpus() == first  # and rebuilt identically

    other = subprocess.run(
        [sys.executable, "-c", SHA_IN_SUBPROCESS],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert other.stdout == sha(first)


def test_default_corpus_is_long_enough_for_the_default_gate_with_a_big_margin():
    # A ~50k-vocab BPE tokenizer makes at least one token per whitespace-separated
    # word, so the word count is a lower bound on tokens; the gate needs ~2,300.
    words = default_corpus().split()
    assert len(words) >= 20_000


def test_default_corpus_is_prose_paragraphs_without_doctests():
    paragraphs = default_corpus().split("\n\n")
    assert len(paragraphs) > 500
    assert len(set(paragraphs)) == len(paragraphs)  # deduplicated
    for paragraph in paragraphs:
        assert paragraph == " ".join(paragraph.split())  # whitespace normalised, one line
        assert not paragraph.startswith(">>>")
        assert len(paragraph) >= 40


def test_default_corpus_is_cheap_to_build():
    default_corpus.cache_clear()
    start = time.perf_counter()
    default_corpus()
    # < 1 s on an idle machine; the bound is loose so a busy CI box does not flake
    assert time.perf_counter() - start < 5.0


def test_eval_prompts_are_a_few_fixed_natural_prompts():
    assert isinstance(EVAL_PROMPTS, tuple)
    assert 4 <= len(EVAL_PROMPTS) <= 8
    assert "The capital of France is" in EVAL_PROMPTS
    for prompt in EVAL_PROMPTS:
        # a trailing space would make BPE tokenizers predict a token that starts
        # without its usual leading space, an unnatural case for every model
        assert prompt == prompt.strip() and prompt


def test_no_path_means_the_built_in_corpus():
    assert load_eval_text(None) == default_corpus()


def test_a_user_file_is_read_as_utf8(tmp_path: Path):
    file = tmp_path / "eval.txt"
    file.write_text("Größe, naïve café — 東京.\n", encoding="utf-8")
    assert load_eval_text(str(file)) == "Größe, naïve café — 東京.\n"


def one_line_error(path: str) -> str:
    with pytest.raises(LlmqUsageError) as info:
        load_eval_text(path)
    message = str(info.value)
    assert "\n" not in message
    assert path in message
    assert "--llmq-eval-text" in message
    return message


def test_a_missing_file_is_a_usage_error_naming_the_file_and_the_option(tmp_path: Path):
    assert "does not exist" in one_line_error(str(tmp_path / "nope.txt"))


def test_a_directory_is_a_usage_error(tmp_path: Path):
    assert "is a directory" in one_line_error(str(tmp_path))


def test_a_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path):
    file = tmp_path / "latin1.txt"
    file.write_bytes("caf\xe9 au lait".encode("latin-1"))
    message = one_line_error(str(file))
    assert "not valid UTF-8 (byte 3)" in message


def test_an_empty_file_is_a_usage_error(tmp_path: Path):
    file = tmp_path / "empty.txt"
    file.write_text("  \n\n", encoding="utf-8")
    assert "is empty" in one_line_error(str(file))
