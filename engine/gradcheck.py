"""Finite-difference checks of hand-written gradients.

The function under test, ``fn(*inputs) -> Tensor``, is reduced to a scalar
``L = sum(r * fn(x))`` with a fixed random ``r``, so every output element is
checked at once. Backprop gives ``dL/dx``; central differences in float64 give
the same numbers independently:

* **element by element** (tiny inputs): ``dL/dx_j ~ (L(x + h e_j) - L(x - h e_j)) / 2h``;
* **along random directions** (any size): for a unit direction ``d`` over all
  inputs, ``sum_i <dL/dx_i, d_i> ~ (L(x + h d) - L(x - h d)) / 2h``: two
  evaluations per direction, whatever the number of elements.

A pair passes when ``|numeric - analytic| <= atol + rtol * |numeric|``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import backend
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when a gradient disagrees with finite differences."""


@dataclass
class GradcheckResult:
    ok: bool
    mode: str                 # "elementwise" or "directional"
    checks: int               # how many numeric/analytic pairs were compared
    worst_error: float        # largest |numeric - analytic|
    worst_where: str          # which input/element or direction it was
    worst_numeric: float
    worst_analytic: float
    details: list = field(default_factory=list)

    def __str__(self):
        verdict = "passed" if self.ok else "FAILED"
        return (f"gradcheck {verdict} ({self.mode}, {self.checks} checks): worst |numeric - analytic| "
                f"= {self.worst_error:.3e} at {self.worst_where} "
                f"(numeric {self.worst_numeric:.6e}, analytic {self.worst_analytic:.6e})")


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-4,
              mode: str = "auto", directions: int = 8, elementwise_limit: int = 256,
              seed: int = 0, raise_on_failure: bool = True) -> GradcheckResult:
    """Check ``fn``'s gradients with respect to ``inputs`` (float64 Tensors).

    ``inputs`` may be leaves created with ``requires_grad=True`` or a model's
    ``Parameter``s that ``fn`` uses; they are perturbed in place and restored.
    ``fn`` must be deterministic (reseed inside it if it uses dropout).
    ``mode`` is "elementwise", "directional", or "auto" (element by element when
    the inputs hold at most ``elementwise_limit`` numbers).
    """
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor) or not t.requires_grad:
            raise TypeError(f"gradcheck: input {i} must be a Tensor with requires_grad=True")
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} has dtype {t.dtype}; finite differences "
                            f"need float64 (build the layer or model in float64)")
    xp = backend.get_array_module(inputs[0].data)
    rng = np.random.default_rng(seed)

    with no_grad():
        y0 = fn(*inputs)
    weights = xp.asarray(rng.standard_normal(y0.shape))

    def loss() -> float:
        with no_grad():
            return float((fn(*inputs).data * weights).sum())

    # Analytic gradients by backprop.
    saved_grads = [t.grad for t in inputs]
    for t in inputs:
        t.grad = None
    y = fn(*inputs)
    y.backward(weights.astype(y.dtype))
    analytic = [backend.to_numpy(t.grad) if t.grad is not None else np.zeros(t.shape)
                for t in inputs]
    for t, g in zip(inputs, saved_grads):
        t.grad = g

    total = sum(t.size for t in inputs)
    if mode == "auto":
        mode = "elementwise" if total <= elementwise_limit else "directional"
    rows = []  # (where, numeric, analytic)

    if mode == "elementwise":
        for i, t in enumerate(inputs):
            flat = t.data.reshape(-1)  # a view: writing into it perturbs t.data
            for j in range(t.size):
                old = float(flat[j])
                flat[j] = old + eps
                plus = loss()
                flat[j] = old - eps
                minus = loss()
                flat[j] = old
                idx = np.unravel_index(j, t.shape)
                rows.append((f"input {i} element {tuple(int(k) for k in idx)}",
                             (plus - minus) / (2 * eps), float(analytic[i].reshape(-1)[j])))
    elif mode == "directional":
        for k in range(directions):
            ds = [rng.standard_normal(t.shape) for t in inputs]
            norm = np.sqrt(sum(float((d * d).sum()) for d in ds))
            ds = [d / norm for d in ds]
            originals = [t.data.copy() for t in inputs]
            for t, d, o in zip(inputs, ds, originals):
                t.data[...] = o + eps * xp.asarray(d)
            plus = loss()
            for t, d, o in zip(inputs, ds, originals):
                t.data[...] = o - eps * xp.asarray(d)
            minus = loss()
            for t, o in zip(inputs, originals):
                t.data[...] = o
            rows.append((f"random direction {k}", (plus - minus) / (2 * eps),
                         float(sum((a * d).sum() for a, d in zip(analytic, ds)))))
    else:
        raise ValueError(f"gradcheck: mode must be 'auto', 'elementwise' or 'directional', not {mode!r}")

    errors = [abs(n - a) for _, n, a in rows]
    excess = [e / (atol + rtol * abs(n)) for e, (_, n, _) in zip(errors, rows)]
    worst = int(np.argmax(excess))
    result = GradcheckResult(
        ok=all(x <= 1.0 for x in excess), mode=mode, checks=len(rows),
        worst_error=errors[worst], worst_where=rows[worst][0],
        worst_numeric=rows[worst][1], worst_analytic=rows[worst][2], details=rows)
    if not result.ok and raise_on_failure:
        bad = sum(x > 1.0 for x in excess)
        raise GradcheckError(f"{result}; {bad} of {len(rows)} checks outside "
                             f"atol={atol:g} + rtol={rtol:g} * |numeric|")
    return result
