"""The fixtures of pytest-llmquant: the models of a pair, the pair, the benchmark helper.

All model fixtures are session-scoped and lazy: a model is loaded once per session (by
the session's model store), and only when a test asks for it. Override ``int8_model``
(or ``reference_model``) in a conftest.py to gate your own model: a transformers model,
or any :class:`~pytest_llmquant.sides.base.ModelSide` (another runtime, a test double).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast

import pytest

from .errors import LlmqError
from .session import LlmqSession, get_session

if TYPE_CHECKING:
    from .run.pair import ModelLike, ModelPair
    from .speed.benchmark import LlmqBenchmark
    from .types import Tokenizer

P = ParamSpec("P")
R = TypeVar("R")
NO_MODEL = (
    "no model to test: pass --llmq-model=ID (a hub id, a local directory, a .gguf file "
    "or smollm2-135m), or set llmq_model in your ini file"
)


def _one_line(fn: Callable[P, R]) -> Callable[P, R]:
    """Our errors become a one-line test error, never a torch traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except LlmqError as exc:
            message = str(exc)
        # outside the except block: the failure has no context to print ("During handling
        # of the above exception..." and the same line again)
        pytest.fail(message, pytrace=False)

    return wrapper


@pytest.fixture(scope="session")
def llmq_session(pytestconfig: pytest.Config) -> LlmqSession:
    """The plugin's session state: settings, the model store, measurements and the run record."""
    return get_session(pytestconfig)


@pytest.fixture(scope="session")
def llmq_model_id() -> str:
    """The ``--llmq-model`` value of the current parametrization."""
    pytest.fail(NO_MODEL, pytrace=False)


@pytest.fixture(scope="session")
def llmq_scheme(llmq_session: LlmqSession) -> str:
    """The INT8 scheme of the current parametrization (``--llmq-scheme``)."""
    return llmq_session.schemes[0]


@pytest.fixture(scope="session")
@_one_line
def llmq_tokenizer(llmq_session: LlmqSession, llmq_model_id: str) -> Tokenizer:
    """The model's tokenizer (with a pad token set when it had none)."""
    return llmq_session.store.tokenizer(llmq_model_id)


@pytest.fixture(scope="session")
@_one_line
def reference_model(llmq_session: LlmqSession, llmq_model_id: str) -> ModelLike:
    """The reference model every gate compares the INT8 one with, in eval mode, loaded once
    per session in ``--llmq-reference-dtype`` (float32 on CPU, bfloat16 on CUDA), or run
    by ``--llmq-reference-runtime``."""
    return llmq_session.store.reference_model(llmq_model_id)


@pytest.fixture(scope="session")
def fp32_model(reference_model: ModelLike) -> ModelLike:
    """The reference model under its first name (kept for compatibility: it is in
    ``--llmq-reference-dtype``, float32 unless asked). Prefer ``reference_model``."""
    return reference_model


@pytest.fixture(scope="session")
@_one_line
def int8_model(
    llmq_session: LlmqSession, llmq_model_id: str, llmq_scheme: str, fp32_model: ModelLike
) -> ModelLike:
    """The INT8 model under test: the ``--llmq-int8-model`` checkpoint, or what your
    ``pytest_llmq_quantize`` hook or the built-in ``llmq_scheme`` makes. Override this
    fixture in conftest.py to test your own INT8 model."""
    return llmq_session.store.int8(llmq_model_id, llmq_scheme, fp32_model).model


@pytest.fixture
@_one_line
def llmq_pair(
    llmq_session: LlmqSession,
    llmq_model_id: str,
    llmq_scheme: str,
    fp32_model: ModelLike,
    int8_model: ModelLike,
    llmq_tokenizer: Tokenizer,
) -> ModelPair:
    """Both models, the tokenizer, the coverage and where the INT8 model came from, as the
    gates see them."""
    return llmq_session.pair(llmq_model_id, llmq_scheme, fp32_model, int8_model, llmq_tokenizer)


@pytest.fixture
def llmq_benchmark(
    benchmark: object, llmq_pair: ModelPair, llmq_session: LlmqSession
) -> LlmqBenchmark:
    """Record FP32 or INT8 generation in pytest-benchmark: ``llmq_benchmark.run("int8")``.
    Group = model, extra_info = model, scheme, threads, ms/token, tokens/s, speedup, versions."""
    from .speed.benchmark import Benchmark, LlmqBenchmark

    return LlmqBenchmark(
        cast("Benchmark", benchmark),  # pytest-benchmark's fixture, as far as we use it
        llmq_pair,
        llmq_session.record,
        llmq_session.settings.new_tokens,
    )
