import os

import numpy as np
import pytest

from gpucnn import backend

try:  # hypothesis is a dev dependency; tests/test_properties.py skips without it
    from hypothesis import HealthCheck, settings
except ImportError:
    settings = None

if settings is not None:
    # One fixed budget for the property tests (tests/test_properties.py): 200
    # examples per test, ~11 s in all on the shared 2-core machine (measured). CI=true derandomizes (the same examples on
    # every run, so a red CI is reproducible); locally each run explores new ones.
    # HYPOTHESIS_PROFILE=thorough for a longer local search.
    _common = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("gpucnn", max_examples=200, derandomize=os.environ.get("CI") == "true", **_common)
    settings.register_profile("thorough", max_examples=1000, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpucnn"))


def pytest_collection_modifyitems(config, items):
    if backend.gpu_available():
        return
    skip = pytest.mark.skip(reason=f"no usable GPU: {backend.gpu_unavailable_reason()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
