"""pytest hooks of pytest-llmquant (the fixtures are in :mod:`.fixtures`, registered here).

Loading this module must stay cheap: it imports neither torch nor transformers.
Everything heavy sits behind the fixtures and the marker checks, so a pytest run
that uses none of them pays nothing.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from _pytest.terminal import TerminalReporter

from . import hooks, settings
from .errors import LlmqUsageError
from .fixtures import (  # noqa: F401  (pytest finds a plugin's fixtures in its namespace)
    fp32_model,
    int8_model,
    llmq_benchmark,
    llmq_model_id,
    llmq_pair,
    llmq_scheme,
    llmq_session,
    llmq_tokenizer,
    reference_model,
)
from .gates import GATE_RUN, gate_marks, outcome, properties, run_gates
from .marks import MARKERS, marker_line, validate
from .reporting.json_report import strict_json
from .session import SESSION_KEY, LlmqSession, get_session
from .workers import (
    RESULT_PROPERTY,
    WorkerResults,
    group_marks,
    in_xdist_worker,
    warn_if_groups_are_ignored,
    worker_properties,
)

#: the module of the built-in fixtures: an int8_model defined elsewhere is a user override
FIXTURES = "pytest_llmquant.fixtures"


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
        config.pluginmanager.register(
            WorkerResults(config.stash[SESSION_KEY].record), "llmquant-xdist"
        )
        warn_if_groups_are_ignored(config)


# -- collection ------------------------------------------------------------------------


def _own_marks(collector: pytest.Collector, obj: object) -> list[pytest.Mark]:
    marks = list(getattr(obj, "pytestmark", []))
    marks += list(collector.iter_markers())
    return [m for m in marks if getattr(m, "name", None) in MARKERS]


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
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

    if session.settings.int8_model:
        return [id_part(s) for s in session.schemes]
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get("int8_model") or []
    if defs and getattr(defs[-1].func, "__module__", FIXTURES) != FIXTURES:
        route = "fixture"
    elif metafunc.config.hook.pytest_llmq_quantize.get_hookimpls():
        route = "hook"
    else:
        return list(session.schemes)
    return [route] if len(session.schemes) == 1 else [f"{route}-{s}" for s in session.schemes]


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
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
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


def _finish_outputs(config: pytest.Config, terminalreporter: TerminalReporter | None) -> None:
    """Reports, Markdown, baseline save/compare: once per run (outputs.finish_session)."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None or _LLMQ_EXIT in config.stash or in_xdist_worker(config):
        return  # an xdist worker writes nothing: the controller has its results
    from .reporting.finish import finish_session

    config.stash[_LLMQ_EXIT] = finish_session(session.record, terminalreporter)


def pytest_terminal_summary(
    terminalreporter: TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return
    if not session.record.empty:
        from .reporting.terminal import write_terminal_summary

        write_terminal_summary(terminalreporter, session.record)
    _finish_outputs(config, terminalreporter)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(
    session: pytest.Session, exitstatus: int
) -> Generator[None, object, object]:
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
