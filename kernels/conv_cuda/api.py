"""The public functions ``layers`` call: check the arrays, choose version and config, run.

CuPy arrays in and out. ``version=None`` (what ``layers`` uses) runs the best version with the
tile config the autotuner validated and found fastest for this shape on this device
(``kernels.conv_cuda.select``); ``GOOGLENET_AUTOTUNE=0`` uses the size-based heuristic instead.
"""
from __future__ import annotations

from .. import autotune
from . import device, select
from .launcher import execute
from .planning import bias_plan, default_config, plan
from .problem import Problem, supports
from .tables import BEST_VERSION, KSIZES, check_version


def _toolchain_tag() -> str:
    t = device.toolchain()
    return " ".join(f"{k} {v}" for k, v in sorted(t.items()))


def _device_tag(info) -> str:
    return f"{info.name} {info.arch}"


def _validate(op: str, direction: str, arrays: dict, problem: Problem):
    """Check types, dtypes, contiguity and shape support; return contiguous arrays."""
    cp = device.cupy()
    shapes = ", ".join(f"{k} {tuple(getattr(v, 'shape', ()))}" for k, v in arrays.items())
    out = {}
    for name, a in arrays.items():
        if not isinstance(a, cp.ndarray):
            raise ValueError(f"{op}: {name} must be a cupy.ndarray, got {type(a).__name__} ({shapes})")
        if a.dtype != cp.float32:
            raise ValueError(f"{op}: {name} must be float32, got {a.dtype} ({shapes})")
        out[name] = cp.ascontiguousarray(a)
    x_shape = (problem.n, problem.c, problem.h, problem.w)
    w_shape = (problem.k, problem.c, problem.ksize, problem.ksize)
    if not supports(x_shape, w_shape, 1, problem.ksize // 2):
        raise ValueError(f"{op}: unsupported convolution ({shapes}); the custom kernels need "
                         f"stride 1, pad k//2, square k in {KSIZES}, float32")
    expected = problem.shapes()
    for name, a in out.items():
        want = expected[name]
        if tuple(a.shape) != want:
            raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, expected {want} ({shapes})")
    return out


def _address(a) -> int:
    """Device address of a CuPy array (host address of a NumPy one, for CPU stand-ins)."""
    ptr = getattr(a.data, "ptr", None)
    return int(ptr) if ptr is not None else int(a.__array_interface__["data"][0])


def _aligned(*arrays) -> bool:
    """Every array 16-byte aligned: the float4 paths may run."""
    return all(_address(a) % 16 == 0 for a in arrays if a is not None)


def _resolve(direction, problem, version, config, buffers, *, has_bias=False, relu=False):
    """Pick (version, config): autotuned for version=None, the heuristic default otherwise."""
    info = device.info()
    sm = info.sm_count
    if version is None and config is None:
        version = BEST_VERSION[direction]
        if autotune.enabled():
            return select.tuned_choice(
                direction, problem, buffers, has_bias=has_bias, relu=relu,
                aligned=_aligned(*buffers.values()), sm_count=sm, device_tag=_device_tag(info),
                toolchain_tag=_toolchain_tag())
        return version, default_config(direction, version, problem, sm)
    if version is None:
        version = BEST_VERSION[direction]
    check_version(direction, version)
    if config is None:
        config = default_config(direction, version, problem, sm)
    return version, tuple(config)


def conv_forward(x, w, b=None, relu: bool = False, version: str | None = None, config=None):
    """y = relu?(conv(x, w) + b): x (N, C, H, W), w (K, C, k, k), b (K,) or None -> y (N, K, H, W)."""
    xs = getattr(x, "shape", None)
    ws = getattr(w, "shape", None)
    if xs is None or ws is None or len(xs) != 4 or len(ws) != 4 or xs[1] != ws[1]:
        raise ValueError(f"conv_forward: expected x (N, C, H, W) and w (K, C, k, k), got x {xs}, w {ws}")
    problem = Problem.from_shapes(xs, ws)
    arrays = {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}
    bufs = _validate("conv_forward", "fwd", arrays, problem)
    version, config = _resolve("fwd", problem, version, config, bufs, has_bias=b is not None, relu=relu)
    pl = plan("fwd", version, config, problem, has_bias=b is not None, relu=relu,
              aligned=_aligned(*bufs.values()), sm_count=device.info().sm_count)
    return execute(pl, bufs)


def conv_backward_data(gy, w, version: str | None = None, config=None):
    """gx = dL/dx from gy (N, K, H, W) and w (K, C, k, k) -> gx (N, C, H, W)."""
    gs = getattr(gy, "shape", None)
    ws = getattr(w, "shape", None)
    if gs is None or ws is None or len(gs) != 4 or len(ws) != 4 or gs[1] != ws[0]:
        raise ValueError(f"conv_backward_data: expected gy (N, K, H, W) and w (K, C, k, k), "
                         f"got gy {gs}, w {ws}")
    problem = Problem(int(gs[0]), int(ws[1]), int(gs[2]), int(gs[3]), int(ws[0]), int(ws[2]))
    if ws[2] != ws[3]:
        raise ValueError(f"conv_backward_data: non-square kernel (gy {gs}, w {ws})")
    bufs = _validate("conv_backward_data", "bwd_data", {"gy": gy, "w": w}, problem)
    version, config = _resolve("bwd_data", problem, version, config, bufs)
    pl = plan("bwd_data", version, config, problem, aligned=_aligned(*bufs.values()),
              sm_count=device.info().sm_count)
    return execute(pl, bufs)


def conv_backward_weight(x, gy, ksize: int, version: str | None = None, config=None):
    """gw = dL/dw from x (N, C, H, W) and gy (N, K, H, W) for a ksize x ksize kernel -> (K, C, k, k)."""
    xs = getattr(x, "shape", None)
    gs = getattr(gy, "shape", None)
    if xs is None or gs is None or len(xs) != 4 or len(gs) != 4 or xs[0] != gs[0] \
            or tuple(xs[2:]) != tuple(gs[2:]):
        raise ValueError(f"conv_backward_weight: expected x (N, C, H, W) and gy (N, K, H, W), "
                         f"got x {xs}, gy {gs}")
    problem = Problem(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), int(gs[1]), int(ksize))
    bufs = _validate("conv_backward_weight", "bwd_weight", {"x": x, "gy": gy}, problem)
    version, config = _resolve("bwd_weight", problem, version, config, bufs)
    pl = plan("bwd_weight", version, config, problem, sm_count=device.info().sm_count)
    return execute(pl, bufs)


def conv_backward_bias(gy):
    """gb[k] = sum over n, h, w of gy (N, K, H, W) -> (K,), deterministic order."""
    cp = device.cupy()
    if not isinstance(gy, cp.ndarray) or gy.ndim != 4 or gy.dtype != cp.float32:
        raise ValueError(f"conv_backward_bias: expected a float32 cupy array (N, K, H, W), "
                         f"got {type(gy).__name__} {getattr(gy, 'shape', None)}")
    n, k, h, w = gy.shape
    return execute(bias_plan(n, k, h * w), {"gy": cp.ascontiguousarray(gy)})
