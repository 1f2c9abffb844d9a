"""Make ``--hypothesis-profile=llmq-ci`` work without importing hypothesis on every run.

Hypothesis's pytest plugin loads the chosen profile in its own ``pytest_configure``; ours
runs first and registers ``llmq-ci`` only when that is the profile asked for.
"""

from __future__ import annotations

import pytest

PROFILE_NAME = "llmq-ci"


def maybe_register_profile(config: pytest.Config) -> None:
    try:
        chosen = config.getoption("hypothesis_profile")
    except ValueError:  # hypothesis's plugin is not active
        return
    if chosen == PROFILE_NAME:
        from .strategies import register_profiles

        register_profiles()
