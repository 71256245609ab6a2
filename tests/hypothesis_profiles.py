"""Hypothesis profiles: ``default`` for CI (2 cores), ``fuzz`` for long local runs.

``HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py ...`` multiplies every property's example
count by 100 and lifts the deadline; tests that set ``max_examples`` wrap it in :func:`budget` so
the profile scales them too.  bench/fuzz/ holds the atheris harnesses for coverage-guided runs.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("default", settings.get_profile("default"))
settings.register_profile("fuzz", max_examples=10_000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def budget(examples: int) -> int:
    """``examples`` under the default profile, scaled by the loaded profile's count."""
    return max(1, examples * settings.default.max_examples // 100)
