"""A minimal autograd engine over NumPy (CPU) and CuPy (GPU) arrays.

Read in this order: ``tensor.py`` (Tensor, Function, backward), ``ops.py``
(arithmetic), ``module.py`` (Module, Parameter), ``optim.py`` (SGD, Adam),
``gradcheck.py`` (finite differences), ``backend.py`` (devices), ``distributed.py``
(data parallelism over MPI and NCCL; imported on its own, it needs mpi4py).
"""
from .backend import (cuda_available, get_array_module, manual_seed, normalize_device,
                      random_generator, to_device, to_numpy)
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .module import Module, Parameter, Sequential
from .ops import add, flatten, matmul, mean, mul, reshape, sum_to
from .ops import sum as sum  # noqa: A004
from .optim import SGD, Adam, Optimizer, PolyakAverage
from .profile import Profiler
from .tensor import Function, Tensor, as_tensor, is_grad_enabled, no_grad

__all__ = [
    "Tensor", "Function", "as_tensor", "no_grad", "is_grad_enabled",
    "Module", "Parameter", "Sequential", "SGD", "Adam", "Optimizer", "PolyakAverage", "Profiler",
    "gradcheck", "GradcheckError", "GradcheckResult",
    "add", "mul", "matmul", "reshape", "flatten", "sum", "mean", "sum_to",
    "cuda_available", "get_array_module", "manual_seed", "normalize_device",
    "random_generator", "to_device", "to_numpy",
]
