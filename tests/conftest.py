"""Shared test settings: hypothesis is derandomised under CI so runs repeat exactly."""
import os

from hypothesis import HealthCheck, settings

# The xp fixture below is function-scoped but holds no state a drawn example could
# change, so hypothesis's warning about such fixtures does not apply.
_quiet = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=_quiet)
settings.register_profile("dev", deadline=None, max_examples=25, suppress_health_check=_quiet)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from engine import backend  # noqa: E402


@pytest.fixture(params=["numpy", "numpy-plain", "cupy"])
def xp(request):
    """The array module under test. Every layer test runs on NumPy with the CPU kernels
    (``layers.dispatch`` picks them where an op has one), on NumPy with every op on its plain
    path (the code CuPy shares), and on CuPy (with the CUDA kernels where they exist)."""
    from layers import dispatch
    if request.param == "numpy":
        with dispatch.use("auto"):
            yield np
    elif request.param == "numpy-plain":
        with dispatch.use("plain"):
            yield np
    else:
        if not backend.cuda_available():
            pytest.skip("CuPy with a CUDA device is not available")
        with dispatch.use("auto"):
            yield backend.require_cuda()


def to_np(a):
    return backend.to_numpy(a.data if hasattr(a, "data") and not isinstance(a, np.ndarray) else a)
