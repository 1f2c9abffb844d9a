"""A pytest run that uses no model fixture must not pay for torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_plugin_import_does_not_import_torch() -> None:
    code = (
        "import sys, pytest_llmquant, pytest_llmquant.plugin; "
        "print(sorted(m for m in ('torch', 'transformers', 'hypothesis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plain_test_run_with_plugin_active_has_no_torch(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import sys

        def test_plain(pytestconfig):
            assert pytestconfig.pluginmanager.hasplugin("llmquant")
            assert "torch" not in sys.modules
            assert "transformers" not in sys.modules
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
