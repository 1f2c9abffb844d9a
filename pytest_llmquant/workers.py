"""pytest-xdist: keep each model pair on one worker, and tell the controller what workers saw.

Session fixtures are per worker (pytest-xdist#271), so without grouping every worker that
runs one of a pair's tests loads and quantizes both models again. Each test that uses a
pair gets the ``xdist_group`` marks of its model and its scheme parameters (xdist joins
them into one group per pair), which ``--dist loadgroup`` honours.
The controller writes the reports, so workers send it their gate results, the pair
summaries (coverage, where the INT8 model came from) and the load times as report
properties.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .run.record import RunRecord
    from .session import LlmqSession

RESULT_PROPERTY = "llmq.result"
PAIR_PROPERTY = "llmq.pair"
LOAD_PROPERTY = "llmq.load"


def in_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def group_marks(config: pytest.Config, kind: str, value: str) -> list[pytest.MarkDecorator]:
    """An ``xdist_group`` mark for one parameter; xdist joins a test's groups, so a test's
    model and scheme together name its pair's group. None without xdist (whose plugin
    registers the marker)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return []
    return [pytest.mark.xdist_group(f"llmq-{kind}:{value}")]


def warn_if_groups_are_ignored(config: pytest.Config) -> None:
    """pytest 9.2 stores node ids in a new form, and pytest-xdist 3.8's ``loadgroup`` still
    writes the old one, so groups are silently ignored (pytest-xdist#1386)."""
    if getattr(config.option, "dist", None) != "loadgroup":
        return
    from importlib.metadata import version

    def parts(name: str) -> tuple[int, ...]:
        return tuple(int(p) for p in version(name).split(".")[:2] if p.isdigit())

    if parts("pytest") >= (9, 2) and parts("pytest-xdist") <= (3, 8):
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"pytest {version('pytest')} with pytest-xdist {version('pytest-xdist')} "
                "ignores xdist_group under --dist loadgroup (pytest-xdist#1386), so a model pair "
                "may load on every worker; use pytest<9.2 until pytest-xdist fixes it"
            ),
            stacklevel=2,
        )


def worker_properties(session: LlmqSession, item: pytest.Item) -> list[tuple[str, str]]:
    """What a worker adds to a test's call report for the controller."""
    out: list[tuple[str, str]] = []
    pair = getattr(item, "funcargs", {}).get("llmq_pair")
    if pair is not None:
        out.append((PAIR_PROPERTY, json.dumps({"name": pair.name, **pair.summary()})))
    spec = getattr(item, "funcargs", {}).get("llmq_model_id")
    load = session.record.loads.get(spec) if isinstance(spec, str) else None
    if load is not None:
        out.append(
            (LOAD_PROPERTY, json.dumps({"spec": spec, "seconds": load.seconds, "note": load.note}))
        )
    return out


class WorkerResults:
    """Registered in the xdist controller: collects what the workers measured, so the
    terminal summary, the JSON report, the Markdown summary and the baseline cover the
    whole run."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from .layers import Coverage
        from .run.record import Load
        from .verdicts import result_from_dict

        for key, value in report.user_properties:
            if not isinstance(value, str):
                continue
            if key == RESULT_PROPERTY:
                self.record.results.append(result_from_dict(json.loads(value)))
            elif key == PAIR_PROPERTY:
                data = json.loads(value)
                name = data.pop("name")
                self.record.pairs[name] = data
                cov = data.get("coverage") or {}
                if "quantized_layers" in cov:
                    self.record.coverages[name] = Coverage.from_dict(cov)
            elif key == LOAD_PROPERTY:
                load = json.loads(value)
                self.record.add_load(load["spec"], Load(load["seconds"], load.get("note", "")))
