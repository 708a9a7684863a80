"""Shared test settings: hypothesis is derandomised under CI so runs repeat exactly."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from engine import backend  # noqa: E402


@pytest.fixture(params=["numpy", "cupy"], scope="session")
def xp(request):
    """The array module under test: every layer test runs on NumPy and on CuPy."""
    if request.param == "numpy":
        return np
    if not backend.cuda_available():
        pytest.skip("CuPy with a CUDA device is not available")
    return backend.require_cuda()


def to_np(a):
    return backend.to_numpy(a.data if hasattr(a, "data") and not isinstance(a, np.ndarray) else a)
