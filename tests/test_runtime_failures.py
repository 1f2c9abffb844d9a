"""A runtime that crashes or cannot load fails the tests that needed it, in one line, and
the session goes on.

The crash is a stand-in runtime (a :class:`~pytest_llmquant.sides.host.RuntimeModel` in a
file of the test) that kills its own process with a signal while scoring, as a native
kernel's segfault would. The bad inputs are real files given to the real runtimes.
"""

from __future__ import annotations

import dataclasses
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

STANDIN = '''
import os
import signal

import numpy as np


class Dying:
    """Loads, answers questions about itself, and dies by SIGSEGV when asked to score."""

    def __init__(self, path, threads=1, vocab=0):
        self.vocab = vocab

    def describe(self):
        return {"vocab_size": self.vocab, "context_length": 256, "weight_bytes": {"int8": 10}}

    def set_threads(self, threads):
        pass

    def scored_logits(self, ids, n_scored):
        os.kill(os.getpid(), signal.SIGSEGV)

    def next_token_logits(self, prompts):
        return np.zeros((len(prompts), self.vocab), dtype=np.float32)
'''

CONFTEST = """
import pytest
from pytest_llmquant.origin import Int8Origin
from pytest_llmquant.sides.child import ChildSide


@pytest.fixture(scope="session")
def int8_model(llmq_tokenizer):
    return ChildSide(
        "standin:Dying", {"path": "model.bin", "threads": 1, "vocab": len(llmq_tokenizer)},
        label="stand-in", runtime="stand-in", what="model.bin",
        origin=Int8Origin("fixture", "stand-in", bits=8, runtime="stand-in"),
    )
"""

TESTS_AFTER_A_CRASH = """
import pytest

@pytest.mark.quant_similarity(max_kl=1.0)
def test_1_crashes(llmq_pair):
    pass

def test_2_runs_after_it(llmq_pair):
    side = llmq_pair.int8_side
    assert side.next_token_logits([[1, 2, 3]]).shape == (1, side.vocab_size())
"""


def test_a_runtime_killed_by_a_signal_fails_its_test_and_the_next_test_runs(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))  # the child imports the stand-in
    pytester.makepyfile(standin=STANDIN)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(TESTS_AFTER_A_CRASH)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--llmq-model={tiny_gpt2_dir}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*stand-in crashed (signal 11, SIGSEGV) while measuring model.bin*"]
    )
    assert "INTERNALERROR" not in result.stdout.str()


def usage_error(pytester: pytest.Pytester, *args: str) -> str:
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = [ln for ln in result.stderr.lines if ln.startswith("ERROR:")]
    return line


def test_a_runtime_needs_the_file_it_runs(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    line = usage_error(pytester, f"--llmq-model={tiny_gpt2_dir}", "--llmq-int8-runtime=llama.cpp")
    assert line == (
        "ERROR: --llmq-int8-runtime=llama.cpp runs the file you ship: pass it with "
        "--llmq-int8-model=FILE.gguf"
    )


def test_a_runtime_that_is_not_installed_names_its_extra(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llmquant.sides import runtimes

    gone = dataclasses.replace(runtimes.RUNTIMES_BY_NAME["llama.cpp"], package="no_such_llama")
    monkeypatch.setitem(runtimes.RUNTIMES_BY_NAME, "llama.cpp", gone)
    gguf = pytester.path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    line = usage_error(
        pytester, f"--llmq-model={tiny_gpt2_dir}", f"--llmq-int8-model={gguf}",
        "--llmq-int8-runtime=llama.cpp",
    )  # fmt: skip
    assert line == (
        "ERROR: --llmq-int8-runtime=llama.cpp needs the no_such_llama package, which is not "
        "installed; install it with: pip install 'pytest-llmquant[llamacpp]'"
    )


def test_an_unknown_runtime_is_refused(pytester: pytest.Pytester, tiny_gpt2_dir: Path) -> None:
    line = usage_error(pytester, f"--llmq-model={tiny_gpt2_dir}", "--llmq-int8-runtime=vllm")
    assert (
        "--llmq-int8-runtime='vllm' on the command line: must be one of torch, llama.cpp, onnxruntime"
        in line
    )


def test_a_reference_in_llama_cpp_must_be_a_gguf(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    line = usage_error(
        pytester, f"--llmq-model={tiny_gpt2_dir}", "--llmq-reference-runtime=llama.cpp"
    )
    assert line.endswith("is not one; pass --llmq-model=FILE.gguf (F16 or F32) or drop the option")


@pytest.mark.skipif(
    find_spec("llama_cpp") is None, reason="needs llama-cpp-python (the llamacpp extra)"
)
def test_a_file_llama_cpp_cannot_load_fails_its_tests_in_one_line(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    """A GGUF of an architecture llama.cpp does not know: the header reads, the load fails."""
    from gguf_files import write_small_gguf

    bad = write_small_gguf(pytester.path / "odd.gguf", "no-such-arch", {"block_count": 1})
    pytester.makepyfile("def test_a(llmq_pair):\n    pass\n\ndef test_b():\n    pass\n")
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", f"--llmq-model={tiny_gpt2_dir}", f"--llmq-int8-model={bad}",
        "--llmq-int8-runtime=llama.cpp",
    )  # fmt: skip
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"*llama.cpp cannot load {bad}: *"])
    assert "Traceback" not in result.stdout.str()


@pytest.mark.skipif(
    find_spec("llama_cpp") is None, reason="needs llama-cpp-python (the llamacpp extra)"
)
def test_a_file_of_another_vocabulary_is_refused_before_anything_is_measured(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    from gguf_llama import make_tiny_llama, write_llama_gguf
    from tiny_models import make_tiny_gpt2

    other = write_llama_gguf(
        make_tiny_llama(tmp_path / "llama", vocab_size=300), tmp_path / "o.gguf"
    )
    reference = make_tiny_gpt2(tmp_path / "gpt2")
    pytester.makepyfile("def test_a(llmq_pair):\n    pass\n")
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", f"--llmq-model={reference}", f"--llmq-int8-model={other}",
        "--llmq-int8-runtime=llama.cpp",
    )  # fmt: skip
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            f"*{other}: vocabulary of * tokens against the reference's *; both sides get the same token ids*"
        ]
    )


def test_an_onnx_without_logits_is_refused_in_one_line(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["hidden"])],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("hidden", TensorProto.INT64, [1, None])],
    )
    directory = pytester.path / "onnx"
    directory.mkdir()
    onnx.save(helper.make_model(graph), str(directory / "model.onnx"))
    line = usage_error(
        pytester, f"--llmq-model={tiny_gpt2_dir}", f"--llmq-int8-model={directory}",
        "--llmq-int8-runtime=onnxruntime",
    )  # fmt: skip
    assert line.endswith(
        "model.onnx has no 'logits' output; export the causal LM with its logits "
        "(onnxruntime-genai's builder does)"
    )


HANGING = '''
import time

import numpy as np


class Hanging:
    """Loads, then never answers a request to score, as a deadlocked runtime would."""

    def __init__(self, path, threads=1, vocab=0):
        self.vocab = vocab

    def describe(self):
        return {"vocab_size": self.vocab, "context_length": 256, "weight_bytes": {"int8": 10}}

    def set_threads(self, threads):
        pass

    def scored_logits(self, ids, n_scored):
        time.sleep(3600)

    def next_token_logits(self, prompts):
        return np.zeros((len(prompts), self.vocab), dtype=np.float32)
'''

HANGING_CONFTEST = """
import pytest
from pytest_llmquant.origin import Int8Origin
from pytest_llmquant.session import get_session
from pytest_llmquant.sides.child import ChildSide


@pytest.fixture(scope="session")
def int8_model(llmq_tokenizer, request):
    return ChildSide(
        "hanging:Hanging", {"path": "model.bin", "threads": 1, "vocab": len(llmq_tokenizer)},
        label="stand-in", runtime="stand-in", what="model.bin",
        origin=Int8Origin("fixture", "stand-in", bits=8, runtime="stand-in"),
        timeout=get_session(request.config).settings.runtime_timeout,
    )
"""


def test_a_runtime_that_hangs_is_stopped_after_the_timeout_and_the_next_test_runs(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    pytester.makepyfile(hanging=HANGING)
    pytester.makeconftest(HANGING_CONFTEST)
    pytester.makepyfile(TESTS_AFTER_A_CRASH)
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", f"--llmq-model={tiny_gpt2_dir}", "--llmq-runtime-timeout=1.5"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*stand-in did not answer within 1.5 s while measuring model.bin, and was stopped;"
         " raise --llmq-runtime-timeout if it is only slow*"]
    )  # fmt: skip
    assert "INTERNALERROR" not in result.stdout.str()
