"""Input validation shared by the layers: clear errors naming the op and the shapes."""
from __future__ import annotations

import numpy as np


def check_float(op: str, **arrays) -> None:
    """Every array must be float32 or float64, and all of one dtype."""
    dtypes = {name: a.dtype for name, a in arrays.items()}
    for name, dt in dtypes.items():
        if dt not in (np.float32, np.float64):
            raise TypeError(f"{op}: {name} has dtype {dt}; expected float32 or float64")
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n}={d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: dtypes differ ({listed}); cast them to one float type")


def check_rank(op: str, name: str, a, ndim: int, layout: str = "") -> None:
    if a.ndim != ndim:
        hint = f" ({layout})" if layout else ""
        raise ValueError(f"{op}: {name} must have {ndim} dimensions{hint}, got shape {tuple(a.shape)}")
