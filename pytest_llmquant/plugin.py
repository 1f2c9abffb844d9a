"""pytest hooks and fixtures of pytest-llmquant.

Loading this module must stay cheap: it imports neither torch nor transformers.
Everything heavy sits behind the fixtures and the marker checks, so a pytest run
that uses none of them pays nothing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import pytest

from . import hooks, settings
from .errors import LlmqError, LlmqUsageError
from .gates import GATE_RUN, gate_marks, outcome, properties, run_gates
from .marks import MARKERS, marker_line, validate
from .reporting.json_report import strict_json
from .session import SESSION_KEY, LlmqSession, ModelPair, get_session
from .workers import (
    RESULT_PROPERTY,
    WorkerResults,
    group_marks,
    in_xdist_worker,
    warn_if_groups_are_ignored,
    worker_properties,
)

F = TypeVar("F", bound=Callable[..., Any])
NO_MODEL = (
    "no model to test: pass --llmq-model=ID (a hub id, a local directory, a .gguf file "
    "or smollm2-135m), or set llmq_model in your ini file"
)


# -- set-up --------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.addoptions(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    from .strategies_profile import maybe_register_profile

    maybe_register_profile(config)
    for name in MARKERS:
        config.addinivalue_line("markers", marker_line(name))
    try:  # every option is read and checked here, once: a bad value exits 4 before collection
        config.stash[SESSION_KEY] = LlmqSession.from_config(config, settings.resolve(config))
    except LlmqUsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    from .schemes import kernels  # torch-free: only remembers where the kernel is built

    kernels.set_cache_dir(config.stash[SESSION_KEY].settings.cache_dir)
    if getattr(config.option, "numprocesses", None) and not in_xdist_worker(config):
        config.pluginmanager.register(WorkerResults(config.stash[SESSION_KEY]), "llmquant-xdist")
        warn_if_groups_are_ignored(config)


# -- collection ------------------------------------------------------------------------


def _own_marks(collector: pytest.Collector, obj: Any) -> list[pytest.Mark]:
    marks = list(getattr(obj, "pytestmark", []))
    marks += list(collector.iter_markers())
    return [m for m in marks if getattr(m, "name", None) in MARKERS]


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> None:
    """A test with a gate marker needs the model pair even if its body does not ask for it,
    and its marker arguments are checked here, before any model is loaded."""
    if not callable(obj) or not collector.funcnamefilter(name):  # type: ignore[attr-defined]
        return None
    marks = _own_marks(collector, obj)
    if not marks:
        return None
    where = f"{collector.nodeid}::{name}"
    for mark in marks:
        try:
            validate(mark.name, mark.args, mark.kwargs, where)
        except LlmqUsageError as exc:
            raise collector.CollectError(str(exc)) from None
    pytest.mark.usefixtures("llmq_pair")(obj)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every model-dependent test runs once per model (and per scheme when it uses INT8)."""
    session = metafunc.config.stash.get(SESSION_KEY, None)
    if session is None or not session.sources:
        return
    names = metafunc.fixturenames
    config = metafunc.config
    if "llmq_model_id" in names:
        models = [
            pytest.param(s.spec, id=label, marks=group_marks(config, "model", s.spec))
            for s, label in zip(session.sources, session.labels, strict=True)
        ]
        metafunc.parametrize("llmq_model_id", models, scope="session")
    if "llmq_scheme" in names:
        schemes = [
            pytest.param(s, id=i, marks=group_marks(config, "scheme", s))
            for s, i in zip(session.schemes, _int8_ids(metafunc, session), strict=True)
        ]
        metafunc.parametrize("llmq_scheme", schemes, scope="session")


def _int8_ids(metafunc: pytest.Metafunc, session: LlmqSession) -> list[str]:
    """The INT8 part of a test id says what is tested, as far as collection can know it: the
    checkpoint's label, else "fixture" (an ``int8_model`` override) or "hook" (a
    ``pytest_llmq_quantize`` hook, which may still hand a scheme back), else the scheme.
    The summary and reports give the label read from the built model."""
    from .origin import id_part

    if session.int8_path:
        return [id_part(s) for s in session.schemes]
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get("int8_model") or []
    if defs and getattr(defs[-1].func, "__module__", __name__) != __name__:
        route = "fixture"
    elif metafunc.config.hook.pytest_llmq_quantize.get_hookimpls():
        route = "hook"
    else:
        return list(session.schemes)
    return [route] if len(session.schemes) == 1 else [f"{route}-{s}" for s in session.schemes]


# -- fixtures ---------------------------------------------------------------------------


def _one_line(fn: F) -> F:
    """Our errors become a one-line test error, never a torch traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LlmqError as exc:
            pytest.fail(str(exc), pytrace=False)

    return wrapper  # type: ignore[return-value]


@pytest.fixture(scope="session")
def llmq_session(pytestconfig: pytest.Config) -> LlmqSession:
    """The plugin's session state: models, schemes, settings and collected results."""
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
def llmq_tokenizer(llmq_session: LlmqSession, llmq_model_id: str) -> Any:
    """The model's tokenizer (with a pad token set when it had none)."""
    return llmq_session.fp32(llmq_model_id)[1]


@pytest.fixture(scope="session")
@_one_line
def reference_model(llmq_session: LlmqSession, llmq_model_id: str) -> Any:
    """The reference model every gate compares the INT8 one with, in eval mode, loaded once
    per session in ``--llmq-reference-dtype`` (float32 on CPU, bfloat16 on CUDA)."""
    return llmq_session.fp32(llmq_model_id)[0]


@pytest.fixture(scope="session")
def fp32_model(reference_model: Any) -> Any:
    """The reference model under its first name (kept for compatibility: it is in
    ``--llmq-reference-dtype``, float32 unless asked). Prefer ``reference_model``."""
    return reference_model


@pytest.fixture(scope="session")
@_one_line
def int8_model(
    llmq_session: LlmqSession, llmq_model_id: str, llmq_scheme: str, fp32_model: Any
) -> Any:
    """The INT8 model under test: the ``--llmq-int8-model`` checkpoint, or what your
    ``pytest_llmq_quantize`` hook or the built-in ``llmq_scheme`` makes. Override this
    fixture in conftest.py to test your own INT8 model."""
    return llmq_session.int8(llmq_model_id, llmq_scheme, fp32_model).model


@pytest.fixture
@_one_line
def llmq_pair(
    llmq_session: LlmqSession,
    llmq_model_id: str,
    llmq_scheme: str,
    fp32_model: Any,
    int8_model: Any,
    llmq_tokenizer: Any,
) -> ModelPair:
    """Both models, the tokenizer, the coverage and where the INT8 model came from, as the
    gates see them."""
    from .int8.routes import origin_of_model
    from .layers import coverage

    built = llmq_session.built_int8(llmq_model_id, llmq_scheme)
    if built is not None and built.model is int8_model:
        origin, cov = built.origin, built.coverage
    else:  # the int8_model fixture is overridden: describe the model it returned
        origin, cov = origin_of_model(int8_model, "fixture"), coverage(fp32_model, int8_model)
    pair = ModelPair(
        llmq_model_id,
        llmq_session.label_of(llmq_model_id),
        llmq_scheme,
        fp32_model,
        int8_model,
        llmq_tokenizer,
        cov,
        device=llmq_session.device,
        threads=llmq_session.threads,
        origin=origin,
        reference_dtype=llmq_session.settings.reference_dtype,
    )
    llmq_session.pairs[pair.name] = pair.summary()
    llmq_session.coverages[pair.name] = cov
    return pair


@pytest.fixture
def llmq_benchmark(benchmark: Any, llmq_pair: ModelPair, llmq_session: LlmqSession) -> Any:
    """Record FP32 or INT8 generation in pytest-benchmark: ``llmq_benchmark.run("int8")``.
    Group = model, extra_info = model, scheme, threads, ms/token, tokens/s, speedup, versions."""
    from .speed.benchmark import LlmqBenchmark

    return LlmqBenchmark(benchmark, llmq_pair, llmq_session, llmq_session.settings.new_tokens)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """``--llmq-suite`` adds the built-in checks, even when there are no user tests."""
    session_state = config.stash.get(SESSION_KEY, None)
    if session_state is not None and session_state.settings.suite:
        from .suite import collect_suite

        items.extend(collect_suite(session))


# -- gates ---------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After a marked test body passed, measure its pair here, in the call phase: the time
    counts in --durations, and whatever the model raises fails this test only."""
    result = yield  # the test body; its own failure propagates unchanged
    marks = gate_marks(item)
    if not marks:
        return result
    pair = getattr(item, "funcargs", {}).get("llmq_pair")
    if pair is None:  # the fixture errored in setup, and that error is the test's outcome
        return result
    run = run_gates(
        marks,
        pair,
        get_session(item.config),
        nodeid=item.nodeid,
        xdist=in_xdist_worker(item.config),
    )
    item.stash[GATE_RUN] = run
    for gate_result in run.results:  # as record_property does: junit-xml writes these
        item.user_properties.extend(properties(gate_result))
    outcome(run)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    """Attach what the gates measured: a section per gate, and for an xdist controller
    the results themselves (on the call report only, so each arrives once)."""
    report = yield
    if call.when != "call":
        return report
    if in_xdist_worker(item.config):
        report.user_properties.extend(worker_properties(get_session(item.config), item))
    run = item.stash.get(GATE_RUN, None)
    for result in run.results if run is not None else ():
        if in_xdist_worker(item.config):  # the controller writes the reports: send it the result
            report.user_properties.append(
                (RESULT_PROPERTY, json.dumps(strict_json(result.as_dict())))
            )
        report.sections.append(
            (f"llmquant {result.gate}", f"{result.long_repr}\n(measured in {result.seconds:.1f} s)")
        )
    return report


# -- reporting --------------------------------------------------------------------------------


_LLMQ_EXIT = pytest.StashKey["int | None"]()


def _finish_outputs(config: pytest.Config, terminalreporter: Any) -> None:
    """Reports, Markdown, baseline save/compare: once per run (outputs.finish_session)."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None or _LLMQ_EXIT in config.stash:
        return
    from .reporting.finish import finish_session

    config.stash[_LLMQ_EXIT] = finish_session(session, terminalreporter)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return
    if session.load_times or session.coverages or session.results:
        from .reporting.terminal import write_terminal_summary

        write_terminal_summary(terminalreporter, session)
    _finish_outputs(config, terminalreporter)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Generator[None, Any, Any]:
    """Outermost wrapper, so it runs after the terminal summary (and still runs under
    --no-summary); pytest returns session.exitstatus after this hook, so a baseline
    regression can fail a run whose tests all passed."""
    result = yield
    config = session.config
    _finish_outputs(config, config.pluginmanager.get_plugin("terminalreporter"))
    forced = config.stash.get(_LLMQ_EXIT, None)
    if forced and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = forced
    return result
