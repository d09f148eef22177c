"""Hypothesis budgets: a modest one for every run (CI), a long one for nightly runs.

Select with HYPOTHESIS_PROFILE=nightly (default: ci). Property tests that set no max_examples of
their own take the profile's; the nightly profile also runs each of those far longer.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile(
    "nightly", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
