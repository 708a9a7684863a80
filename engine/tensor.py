"""The autograd core: ``Tensor``, ``Function`` and reverse-mode differentiation.

A ``Tensor`` wraps one array (NumPy or CuPy). Calling a ``Function`` on tensors
runs its ``forward`` over the raw arrays and, when gradients are wanted, records
itself as the *creator* of the outputs. ``Tensor.backward`` then visits the
creators in reverse topological order, calling each one's ``backward`` with the
gradients of its outputs and handing the results to its inputs.

Ordering uses *generations*: a function's generation is the largest generation of
its inputs, and its outputs are one more. Every consumer of a tensor therefore
has a higher generation than the tensor's creator, so popping functions from a
max-heap of generations processes a function only after all of its outputs'
consumers have delivered their gradients. The walk is a loop over a heap, not a
recursion, so depth is unlimited.
"""
from __future__ import annotations

import contextlib
import heapq
import itertools

import numpy as np

from . import backend
from . import profile as _profile

# ------------------------------------------------------------------- scheduling
class BackwardSchedule:
    """How a backward pass may let kernels defer work; the engine itself defers nothing.
    ``layers.dispatch`` installs one (:func:`set_backward_schedule`) under which the CPU
    kernels queue their per-image work and run it in stretches: ``scope()`` is the context
    around a pass, ``deferrable(f)`` says whether ``f.backward`` leaves every read of a
    queued gradient to those kernels, and ``outside()`` is the context for anything else
    that reads gradients (another function's backward, a gradient hook): what is queued
    runs first, and nothing is queued inside."""

    def scope(self):
        return contextlib.nullcontext()

    def deferrable(self, f) -> bool:
        return False

    def outside(self):
        return contextlib.nullcontext()


_schedule = BackwardSchedule()


def set_backward_schedule(schedule: BackwardSchedule) -> None:
    global _schedule
    _schedule = schedule


# ------------------------------------------------------------------- grad mode
_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Within this block functions record no graph (inference, weight updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


# ---------------------------------------------------------------------- Tensor
class Tensor:
    """An array plus what autograd needs: ``grad``, ``creator`` and ``generation``.

    ``data`` is a ``numpy.ndarray`` or ``cupy.ndarray``; ``grad`` is an array of
    the same shape, type and device (not a Tensor), filled by ``backward`` for
    tensors created with ``requires_grad=True`` (leaves). Gradients of
    intermediate tensors are passed along and freed, not stored.
    """

    __array_priority__ = 100  # make `ndarray * Tensor` call Tensor.__rmul__
    # Called as ``grad_hook(tensor)`` after each gradient backward adds into a leaf's
    # ``.grad``: lets ``engine.distributed`` start sending gradients while backward goes on.
    grad_hook = None

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        if not (isinstance(data, np.ndarray) or backend.is_cupy_array(data)):
            data = np.asarray(data)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator: Function | None = None
        self.generation = 0
        self.name = name

    # --- array-like facts
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device}{grad})"

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU when needed)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(f"item(): tensor of shape {self.shape} has more than one element")
        return float(self.numpy().reshape(-1)[0])

    def to(self, device) -> "Tensor":
        """A tensor on ``device``, detached from the graph (same object if already there)."""
        device = backend.normalize_device(device)
        if device == self.device:
            return self
        return Tensor(backend.to_device(self.data, device), requires_grad=self.requires_grad)

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    # --- autograd
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` defaults to ones for a single-element tensor (a loss). With
        ``retain_graph=False`` the graph is released as it is walked, so the
        memory each function kept for its backward is freed early.
        """
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise ValueError(
                    f"backward: grad can be omitted only for a single-element tensor, "
                    f"not shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad shape {grad.shape} != tensor shape {self.shape}")
        if self.creator is None:
            if not self.requires_grad:
                raise RuntimeError("backward: this tensor does not require grad and has no "
                                   "graph (was it computed under no_grad?)")
            self._accumulate(grad)
            return
        run_backward(self, grad, retain_graph)

    def _accumulate(self, g, fresh: bool = False) -> None:
        if self.grad is None:
            # Own the memory: g may alias an array another tensor still uses, unless the
            # function that made it says it is new (Function.fresh_grads).
            self.grad = g if fresh else backend.copy(g)
        else:
            backend.add_into(self.grad, g)
        if self.grad_hook is not None:
            with _schedule.outside():
                self.grad_hook(self)

    # --- arithmetic (implemented as Functions in engine.ops)
    def __add__(self, other):
        return ops.add(self, other)

    __radd__ = __add__

    def __sub__(self, other):
        return ops.add(self, ops.neg(ops.as_tensor(other, self)))

    def __rsub__(self, other):
        return ops.add(ops.neg(self), other)

    def __mul__(self, other):
        return ops.mul(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, Tensor):
            return ops.mul(self, ops.reciprocal(other))
        return ops.mul(self, 1.0 / other)

    def __neg__(self):
        return ops.neg(self)

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ops.reshape(self, shape)

    def flatten(self, start_dim: int = 1):
        return ops.flatten(self, start_dim)

    def sum(self, axis=None, keepdims=False):
        return ops.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.mean(self, axis, keepdims)


# -------------------------------------------------------------------- Function
_counter = itertools.count()


class Function:
    """One differentiable operation over raw arrays.

    Subclasses implement

    * ``forward(*xs) -> y or tuple of ys`` over NumPy/CuPy arrays, saving on
      ``self`` only what ``backward`` will need, and
    * ``backward(*gys) -> gx or tuple of gxs`` (one per input; ``None`` where an
      input needs no gradient).

    ``self.needs_grad[i]`` tells ``backward`` whether input ``i`` wants a
    gradient, so expensive ones (a convolution's input gradient at the first
    layer) can be skipped. Non-array settings (stride, padding...) go to
    ``__init__``.
    """

    needs_grad: tuple = ()
    # True when ``backward`` returns arrays it has just allocated and keeps no reference to
    # (a convolution's or a linear layer's weight gradient): a leaf then keeps the array as
    # its ``.grad`` instead of a copy.
    fresh_grads: bool = False

    def __call__(self, *inputs):
        tensors = [as_tensor(x) for x in inputs]
        record = _grad_enabled and any(t.requires_grad for t in tensors)
        self.needs_grad = tuple(t.requires_grad for t in tensors) if record else (False,) * len(tensors)
        arrays = [t.data for t in tensors]
        prof = _profile.active()
        if prof is None:
            ys = self.forward(*arrays)
        else:
            ys, seconds = prof.time_call(lambda: self.forward(*arrays), arrays[0])
            outs = ys if isinstance(ys, tuple) else (ys,)
            prof.record(prof.scope, type(self).__name__, "forward", seconds, outs,
                        self.macs(arrays, outs))
            self._scope = prof.scope
        single = not isinstance(ys, tuple)
        outputs = [Tensor(y) for y in ((ys,) if single else ys)]
        if record:
            # The graph keeps edges, not data: an intermediate input is remembered as
            # (its creator, which output), a leaf wanting a gradient as itself, a
            # constant as None. Whatever array backward needs, forward saved itself.
            self.inputs = [(t.creator, t._output_index) if t.creator is not None
                           else (t if t.requires_grad else None) for t in tensors]
            self.input_shapes = [t.shape for t in tensors]
            self.generation = max(t.generation for t in tensors)
            self._order = next(_counter)
            self.output_specs = [(y.shape, y.dtype) for y in outputs]
            for i, y in enumerate(outputs):
                y.requires_grad = True
                y.creator = self
                y.generation = self.generation + 1
                y._output_index = i
        return outputs[0] if single else tuple(outputs)

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, *gys):
        raise NotImplementedError

    def macs(self, xs, ys) -> int:
        """Multiply-adds of one forward call (for profiles and summaries); 0 if negligible."""
        return 0

    def release(self) -> None:
        """Drop what was kept for backward (called once backward has run); keep the
        ordering keys so a second backward can say the graph is gone."""
        order = {k: self.__dict__[k] for k in ("generation", "_order") if k in self.__dict__}
        self.__dict__.clear()
        self.__dict__.update(order)

    def __repr__(self):
        return f"<{type(self).__name__}>"


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """Wrap an array or a Python number as a constant tensor (dtype of ``like``)."""
    if isinstance(x, Tensor):
        return x
    if like is not None and np.isscalar(x):
        xp = backend.get_array_module(like.data)
        return Tensor(xp.asarray(x, dtype=like.dtype))
    return Tensor(x)


def run_backward(root: Tensor, grad, retain_graph: bool = False) -> None:
    """Propagate ``grad`` from ``root`` to every leaf that requires a gradient.

    Gradients of intermediate outputs wait in ``pending`` (keyed by function
    and output index) until their creator is popped; several consumers of one
    tensor add into the same slot, which is the accumulation every Inception
    input needs (it feeds four branches).
    """
    pending: dict = {}   # (id(function), output index) -> summed gradient
    heap: list = []      # (-generation, -order, function)
    seen: set = set()

    def push(f):
        if id(f) not in seen:
            seen.add(id(f))
            heapq.heappush(heap, (-f.generation, -f._order, id(f), f))

    def deliver(edge, g, fresh=False):
        if isinstance(edge, Tensor):       # a leaf
            edge._accumulate(g, fresh)
            return
        creator, index = edge
        key = (id(creator), index)
        if key in pending:
            pending[key] = backend.add(pending[key], g)
        else:
            pending[key] = g
        push(creator)

    deliver((root.creator, root._output_index), grad)
    with _schedule.scope():
        _walk(heap, pending, deliver, retain_graph)


def _walk(heap, pending, deliver, retain_graph) -> None:
    """run_backward's loop: pop the next function, call its backward, deliver the results."""
    while heap:
        *_, f = heapq.heappop(heap)
        if not hasattr(f, "inputs"):
            raise RuntimeError("backward through a graph that was already released; "
                               "pass retain_graph=True to the first backward")
        gys = [pending.pop((id(f), i), None) for i in range(len(f.output_specs))]
        if any(g is None for g in gys):
            # An output nobody used contributes a zero gradient.
            xp = backend.get_array_module(next(g for g in gys if g is not None))
            gys = [g if g is not None else xp.zeros(shape, dtype=dtype)
                   for g, (shape, dtype) in zip(gys, f.output_specs)]
        # f may read a gradient that kernels have queued, unless it is one of those kernels
        with contextlib.nullcontext() if _schedule.deferrable(f) else _schedule.outside():
            prof = _profile.active()
            if prof is None:
                gxs = f.backward(*gys)
            else:
                gxs, seconds = prof.time_call(lambda: f.backward(*gys), gys[0])
                outs = gxs if isinstance(gxs, tuple) else (gxs,)
                prof.record(getattr(f, "_scope", ""), type(f).__name__, "backward", seconds,
                            outs, 0)
        if not isinstance(gxs, tuple):
            gxs = (gxs,)
        if len(gxs) != len(f.inputs):
            raise RuntimeError(f"{type(f).__name__}.backward returned {len(gxs)} gradients "
                               f"for {len(f.inputs)} inputs")
        for edge, shape, gx in zip(f.inputs, f.input_shapes, gxs):
            if gx is not None and edge is not None:
                if gx.shape != shape:
                    raise RuntimeError(f"{type(f).__name__}.backward: gradient shape {gx.shape} "
                                       f"!= input shape {shape}")
                deliver(edge, gx, f.fresh_grads)
        if not retain_graph:
            f.release()


from . import ops  # noqa: E402  (ops needs Tensor and Function defined above)
