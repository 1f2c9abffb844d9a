"""Hook specifications other plugins and conftest files can implement."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_llmq_quantize(model: Any, scheme: str, config: dict[str, Any]) -> Any:
    """Return your INT8 model built from ``model`` (the FP32 model), or None to let the
    plugin's ``scheme`` do it. Work on a copy: the plugin checks that the FP32 model's
    logits are unchanged afterwards and fails the run if they are not.
    ``config`` holds ``device`` and ``label`` (the model's test-id label)."""
