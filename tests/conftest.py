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
    """The array module under test. Every layer test runs on NumPy with the Numba CPU
    kernels, on NumPy without them (the plain path, which CuPy shares), and on CuPy."""
    if request.param == "numpy":
        yield np
    elif request.param == "numpy-plain":
        import kernels.cpu
        with kernels.cpu.use(False):
            yield np
    else:
        if not backend.cuda_available():
            pytest.skip("CuPy with a CUDA device is not available")
        yield backend.require_cuda()


def to_np(a):
    return backend.to_numpy(a.data if hasattr(a, "data") and not isinstance(a, np.ndarray) else a)
