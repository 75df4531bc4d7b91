"""Shared test set-up: hypothesis profiles and the path of the tests' byte builders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

# fast (CI and make test) draws the same examples every run, so a run's result is the code's, not the draw's;
# deep explores at random (HYPOTHESIS_PROFILE=deep).
settings.register_profile("fast", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
