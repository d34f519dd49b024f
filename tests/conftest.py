"""Hypothesis settings shared by the package's property tests.

The default profile "ci" is reproducible (derandomized: the same examples on every run and
machine, no example database) and small enough for the whole package suite to run in well under
two minutes on two CPU cores. For a longer search run
``pytest tests --hypothesis-profile=thorough``.
"""

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=40, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.load_profile("ci")
