"""The architecture matrix: the suite's cheap checks on a tiny random model of each family.

Every architecture here is built from its config by :mod:`arch_models` and saved like a
hub checkpoint, then gated by ``--llmq-suite`` exactly as a user would run it: it loads,
every weight kind the default scheme claims is quantized (linear layers, lm_head, the
3-D expert banks of the MoE families), the logits are finite, a save and reload gives
identical logits, two greedy runs agree, the weights shrink, and the INT8 model is close
to the reference over 256 scored tokens. Random weights make the numbers say little
about quality; what the matrix holds is that nothing breaks, family by family.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from arch_models import ARCHITECTURES, MOE_ARCHITECTURES, make_tiny

#: the suite's checks that need no timing (speed and benchmarks are for real models)
CHEAP = ("loads", "coverage", "finite", "round_trip", "determinism", "memory", "similarity")


def run_cheap_checks(pytester: pytest.Pytester, model_dir: Path) -> tuple[dict, float]:
    """The cheap checks on ``model_dir``; returns its pair of the JSON report and the
    seconds the run took."""
    report = pytester.path / "report.json"
    started = time.perf_counter()
    result = pytester.runpytest_inprocess(
        f"--llmq-model={model_dir}",
        "--llmq-suite",
        "--llmq-eval-tokens=256",
        # 64 wide with a 383-token vocabulary: the float embeddings (and OPT's 514 learned
        # positions) are up to half the bytes, so the weights shrink ~1.5x, not ~3.5x
        "--llmq-min-memory-ratio=1.3",
        f"--llmq-report={report}",
        "-k",
        " or ".join(CHEAP),
        "-p",
        "no:cacheprovider",
    )
    seconds = time.perf_counter() - started
    result.assert_outcomes(passed=len(CHEAP), deselected=5)
    [pair] = json.loads(report.read_text(encoding="utf-8"))["pairs"].values()
    return pair, seconds


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_cheap_suite_checks_pass(
    arch: str, pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pair, seconds = run_cheap_checks(pytester, make_tiny(arch, tmp_path_factory.mktemp(arch)))
    cov = pair["coverage"]
    assert cov["kept_float"] == [] and cov["expert_banks"]["float"] == []
    moe = arch in MOE_ARCHITECTURES
    assert bool(cov["expert_banks"]["quantized"]) == moe, cov["summary"]
    # what stays float is what no scheme quantizes: embeddings, norms, and MoE routers
    # (a layer class the schemes do not see as linear would show up here as "other")
    left = {"embeddings", "norms", "other"} if moe else {"embeddings", "norms"}
    assert set(cov["weight_bytes"]["float"]) <= left, cov["summary"]
    gates = {g["gate"]: g["measurement"] for g in pair["gates"]}
    kld, ratio = gates["quant_similarity"]["mean_kld"], gates["quant_memory"]["ratio"]
    print(f"{arch}: {cov['summary']}; mean KLD {kld:.2e}; weights {ratio:.2f}x; {seconds:.1f} s")
