"""Hypothesis settings shared by the package's property tests, and Triton's CPU interpreter.

The default profile "ci" is reproducible (derandomized: the same examples on every run and
machine, no example database) and small enough for the whole package suite to run in well under
two minutes on two CPU cores. For a longer search run
``pytest tests --hypothesis-profile=thorough``.
"""

import os

from hypothesis import HealthCheck, settings

# The Triton kernel (backend "triton") runs CPU tensors under Triton's interpreter. Triton reads
# this variable when a kernel is decorated and again while kernels run, so it is set for the
# whole session, before anything imports triton. Nothing else here runs Triton kernels.
os.environ["TRITON_INTERPRET"] = "1"

_common = dict(deadline=None, database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=40, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.load_profile("ci")
