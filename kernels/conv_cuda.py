"""Custom CUDA kernels for GoogLeNet's stride-1 "same" convolutions: plans, launcher, dispatch.

The kernels (``kernels/cuda/*.cu``) cover float32 NCHW convolutions with square kernels
k in {1, 3, 5}, stride 1 and pad k // 2 (the output has the input's height and width):

    forward          y[n,k,h,v]  = b[k] + sum_{c,r,s} w[k,c,r,s] x[n,c,h+r-P,v+s-P]   (+ ReLU)
    backward data    gx[n,c,h,v] = sum_{k,r,s} gy[n,k,h-r+P,v-s+P] w[k,c,r,s]
    backward weight  gw[k,c,r,s] = sum_{n,h,v} gy[n,k,h,v] x[n,c,h+r-P,v+s-P]
    backward bias    gb[k]       = sum_{n,h,v} gy[n,k,h,v]

with x (N, C, H, W), w (K, C, k, k), y and gy (N, K, H, W), P = k // 2.

Each direction has numbered versions (``versions(direction)``), slow and obvious first, fast
last; each fast version has tile configurations (``configs(direction, version)``). The code is
split in two so that most of it runs and is tested without a GPU:

* *planning* (pure Python): :func:`plan` turns (direction, version, config, problem) into a
  :class:`Plan`, the exact list of kernel launches (source file, template instance, grid, block,
  arguments) and temporary buffers. The kernels' compile-time constraints are mirrored by
  :func:`check_config`.
* *execution*: :func:`execute` runs a plan with CuPy (``RawModule`` compiled once per process per
  kernel instance); ``kernels.emu`` runs the same plan on the CPU through a thread-per-CUDA-thread
  emulation, which is how the index maths is tested on machines without a GPU.

Public API (CuPy arrays in and out; ``version=None`` picks the fastest version with its
autotuned tile configuration, see ``kernels.autotune``):

    supports(x_shape, w_shape, stride, pad, dtype="float32") -> bool
    conv_forward(x, w, b=None, relu=False, version=None, config=None) -> y
    conv_backward_data(gy, w, version=None, config=None) -> gx
    conv_backward_weight(x, gy, ksize, version=None, config=None) -> gw
    conv_backward_bias(gy) -> gb
    versions(direction) -> list[str]

CuPy is imported lazily: importing this module works without it.
Environment: ``GOOGLENET_AUTOTUNE=0`` disables autotuning (a size-based heuristic picks the tile),
``GOOGLENET_CUDA_SYNC=1`` synchronises after every launch so that an asynchronous fault is
reported at the kernel that caused it.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KERNEL_DIR = Path(__file__).with_name("cuda")
DIRECTIONS = ("fwd", "bwd_data", "bwd_weight")
KSIZES = (1, 3, 5)
COMPILE_OPTIONS = ("-std=c++17",)
BLOCK_1D = 256          # block size of the one-thread-per-output kernels
DEFAULT_SM_COUNT = 132  # H100 SXM; used for planning when no device can be asked
INT32_MAX = 2**31 - 1

# ----------------------------------------------------------------------------- versions

_VERSIONS = {
    "fwd": ("v1", "v2", "v3", "v4"),
    # v2..v4: flip/transpose the weights, then the forward kernel of the same number.
    "bwd_data": ("v1", "v2", "v3", "v4"),
    "bwd_weight": ("v1", "v2"),
}
# The version ``version=None`` means (the fastest one), whose configs the autotuner searches.
BEST_VERSION = {"fwd": "v4", "bwd_data": "v4", "bwd_weight": "v2"}

# (BM, BN, BK, TM, TN): block tile BM output channels x BN pixels, BK reduction steps per tile,
# TM x TN outputs per thread. The first entries suit large layers, the last ones small ones.
GEMM_TILES = (
    (128, 128, 8, 8, 8),
    (128, 128, 16, 8, 8),
    (128, 64, 8, 8, 8),
    (64, 128, 8, 8, 8),
    (64, 64, 8, 8, 8),
    (64, 64, 8, 4, 4),
    (32, 128, 8, 4, 8),
    (32, 64, 8, 4, 4),
    (64, 32, 8, 4, 4),
    (32, 32, 8, 4, 4),
)
# Backward weight: BM output channels x BN columns (c, r, s), BK pixels per reduction tile.
BWD_WEIGHT_TILES = (
    (128, 128, 8, 8, 8),
    (128, 64, 16, 8, 8),
    (64, 128, 16, 8, 8),
    (64, 64, 16, 8, 8),
    (64, 64, 16, 4, 4),
    (32, 64, 16, 4, 4),
)
_CONFIGS = {
    ("fwd", "v1"): ((BLOCK_1D,),),
    ("fwd", "v2"): ((16,), (8,)),
    ("fwd", "v3"): GEMM_TILES,
    ("fwd", "v4"): GEMM_TILES,
    ("bwd_data", "v1"): ((BLOCK_1D,),),
    ("bwd_data", "v2"): ((16,), (8,)),
    ("bwd_data", "v3"): GEMM_TILES,
    ("bwd_data", "v4"): GEMM_TILES,
    ("bwd_weight", "v1"): ((BLOCK_1D,),),
    ("bwd_weight", "v2"): BWD_WEIGHT_TILES,
}


def versions(direction: str) -> list[str]:
    """Kernel versions for ``direction`` ("fwd", "bwd_data" or "bwd_weight"), oldest first."""
    _check_direction(direction)
    return list(_VERSIONS[direction])


def configs(direction: str, version: str) -> list[tuple]:
    """Tile configurations of one version (1-tuples for the simple ones: block or tile size)."""
    _check_version(direction, version)
    return list(_CONFIGS[(direction, version)])


def config_name(config) -> str:
    """'128x128x8/8x8' for (BM, BN, BK, TM, TN); '16' for a 1-tuple."""
    if len(config) == 5:
        bm, bn, bk, tm, tn = config
        return f"{bm}x{bn}x{bk}/{tm}x{tn}"
    return "x".join(str(c) for c in config)


def _check_direction(direction):
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")


def _check_version(direction, version):
    _check_direction(direction)
    if version not in _VERSIONS[direction]:
        raise ValueError(f"{direction}: unknown version {version!r}; "
                         f"available: {list(_VERSIONS[direction])}")


def check_config(direction: str, version: str, config) -> None:
    """Raise ValueError unless ``config`` satisfies the kernel's compile-time constraints.

    Mirrors the ``static_assert``s of the .cu files (so a bad config fails here, in Python, before
    any compilation) and the hardware limits: at most 1024 threads and 48 KiB of static shared
    memory per block.
    """
    _check_version(direction, version)
    config = tuple(int(c) for c in config)
    where = f"{direction} {version} config {config}"
    gemm = (direction in ("fwd", "bwd_data") and version in ("v3", "v4")) or \
           (direction == "bwd_weight" and version == "v2")
    if not gemm:
        if len(config) != 1 or config[0] < 1:
            raise ValueError(f"{where}: expected a 1-tuple (block or tile size)")
        size = config[0]
        threads = size * size if version == "v2" else size
        if threads > 1024:
            raise ValueError(f"{where}: {threads} threads per block exceeds 1024")
        return
    if len(config) != 5:
        raise ValueError(f"{where}: expected (BM, BN, BK, TM, TN)")
    bm, bn, bk, tm, tn = config
    if min(config) < 1 or tm % 4 or tn % 4:
        raise ValueError(f"{where}: TM and TN must be positive multiples of 4")
    if bm % tm or bn % tn:
        raise ValueError(f"{where}: BM must be a multiple of TM and BN of TN")
    threads = (bm // tm) * (bn // tn)
    if threads > 1024:
        raise ValueError(f"{where}: {threads} threads per block exceeds 1024")
    buffers = 1 if version == "v3" else 2
    smem = 4 * buffers * bk * ((bm + 4) + (bn + 4))
    if smem > 48 * 1024:
        raise ValueError(f"{where}: {smem} bytes of shared memory exceeds 48 KiB")
    if direction == "bwd_weight":
        if threads % bk:
            raise ValueError(f"{where}: the thread count {threads} must be a multiple of BK")
    else:
        if threads % bn:
            raise ValueError(f"{where}: the thread count {threads} must be a multiple of BN")
        if version == "v4" and bk % 4:
            raise ValueError(f"{where}: BK must be a multiple of 4 (float4 weight loads)")


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One convolution: x (n, c, h, w), weights (k, c, ksize, ksize), stride 1, pad ksize // 2."""

    n: int
    c: int
    h: int
    w: int
    k: int
    ksize: int

    @property
    def hw(self) -> int:
        return self.h * self.w

    @property
    def pixels(self) -> int:
        """N*H*W: the GEMM dimension that runs over output pixels."""
        return self.n * self.h * self.w

    @property
    def crs(self) -> int:
        """C*k*k: the reduction length of the forward GEMM."""
        return self.c * self.ksize * self.ksize

    @property
    def macs(self) -> int:
        """Multiply-adds of one direction (the same count for all three)."""
        return self.pixels * self.k * self.crs

    def as_tuple(self) -> tuple:
        return (self.n, self.c, self.h, self.w, self.k, self.ksize)

    def shapes(self) -> dict:
        """Array shapes by buffer name."""
        x = (self.n, self.c, self.h, self.w)
        y = (self.n, self.k, self.h, self.w)
        w = (self.k, self.c, self.ksize, self.ksize)
        return {"x": x, "gx": x, "y": y, "gy": y, "w": w, "gw": w, "b": (self.k,), "gb": (self.k,)}

    @classmethod
    def from_shapes(cls, x_shape, w_shape) -> "Problem":
        n, c, h, w = (int(s) for s in x_shape)
        k, _, kh, _ = (int(s) for s in w_shape)
        return cls(n, c, h, w, k, kh)


def _pair(v, name):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def supports(x_shape, w_shape, stride=1, pad=None, dtype="float32") -> bool:
    """True when the custom kernels can run this convolution.

    That is: x (N, C, H, W) and w (K, C, k, k) with matching C, k in {1, 3, 5}, stride 1 (or
    (1, 1)), pad == k // 2 (None means k // 2), float32, and sizes that 32-bit indexing covers.
    """
    try:
        if len(x_shape) != 4 or len(w_shape) != 4:
            return False
        n, c, h, w = (int(s) for s in x_shape)
        k, c2, kh, kw = (int(s) for s in w_shape)
        if c != c2 or kh != kw or kh not in KSIZES:
            return False
        if min(n, c, h, w, k) < 1:
            return False
        if _pair(stride, "stride") != (1, 1):
            return False
        if pad is not None and _pair(pad, "pad") != (kh // 2, kh // 2):
            return False
        if np.dtype(dtype) != np.float32:
            return False
    except (TypeError, ValueError):
        return False
    # Pixel and per-image offsets are 32-bit ints inside the kernels.
    return n * h * w * max(c, k) <= INT32_MAX and k * c * kh * kw <= INT32_MAX


# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Call:
    """One kernel launch: template instance ``name`` of ``source``, grid, block, arguments.

    ``args`` holds buffer names (str, resolved at execution) and 32-bit ints.
    """

    source: str
    name: str
    grid: tuple
    block: tuple
    args: tuple


@dataclass(frozen=True)
class Plan:
    """Everything a direction needs: the launches in order, the output, the temporaries."""

    direction: str
    version: str
    config: tuple
    problem: Problem
    output: str
    output_shape: tuple
    temps: tuple = ()  # ((name, shape), ...)
    calls: tuple = ()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _vec_ok(problem: Problem, c_in: int) -> bool:
    """float4 paths of conv_fwd_v4: C_in*k*k % 4 == 0 and H*W % 4 == 0 (alignment checked apart)."""
    return (c_in * problem.ksize * problem.ksize) % 4 == 0 and problem.hw % 4 == 0


def _forward_call(version, config, n, c, h, w, k, ksize, xname, wname, bname, yname,
                  has_bias, relu, aligned) -> Call:
    """The forward kernel vN on input (n, c, h, w) and weights (k, c, ksize, ksize)."""
    pixels = n * h * w
    args = (xname, wname, bname, yname, n, c, h, w, k, int(has_bias), int(relu))
    if version == "v1":
        (block,) = config
        return Call("conv_fwd_v1.cu", f"conv_fwd_v1<{ksize}>",
                    (_cdiv(pixels * k, block), 1, 1), (block, 1, 1), args)
    if version == "v2":
        (tile,) = config
        return Call("conv_fwd_v2.cu", f"conv_fwd_v2<{tile}, {ksize}>",
                    (_cdiv(pixels, tile), _cdiv(k, tile), 1), (tile, tile, 1), args)
    bm, bn, bk, tm, tn = config
    threads = (bm // tm) * (bn // tn)
    grid = (_cdiv(pixels, bn), _cdiv(k, bm), 1)
    if version == "v3":
        name = f"conv_fwd_v3<{bm}, {bn}, {bk}, {tm}, {tn}, {ksize}>"
    else:
        vec = aligned and (c * ksize * ksize) % 4 == 0 and (h * w) % 4 == 0
        name = f"conv_fwd_v4<{bm}, {bn}, {bk}, {tm}, {tn}, {ksize}, {'true' if vec else 'false'}>"
    return Call(f"conv_fwd_{version}.cu", name, grid, (threads, 1, 1), args)


def split_count(problem: Problem, config, sm_count: int = DEFAULT_SM_COUNT) -> tuple[int, int]:
    """(splits, chunk) for conv_bwd_weight_v2: how many blocks share one output tile's reduction.

    Aim for about two blocks per SM over the whole grid, but give each split at least 8 reduction
    tiles (8*BK pixels) so the partial sums stay worth their workspace traffic. ``chunk`` (pixels
    per split) is a multiple of BK and no split is empty.
    """
    bm, bn, bk, _, _ = config
    tiles = _cdiv(problem.k, bm) * _cdiv(problem.crs, bn)
    pixels = problem.pixels
    want = _cdiv(2 * max(1, sm_count), tiles)
    splits = max(1, min(want, pixels // (8 * bk), 64))
    chunk = _cdiv(_cdiv(pixels, splits), bk) * bk
    return _cdiv(pixels, chunk), chunk


def plan(direction: str, version: str, config, problem: Problem, *, has_bias: bool = False,
         relu: bool = False, aligned: bool = True, sm_count: int = DEFAULT_SM_COUNT) -> Plan:
    """The launches that compute ``direction`` for ``problem`` with one version and config.

    Buffer names: forward reads x, w, b and writes y; backward data reads gy, w and writes gx
    (temporary wt: the flipped weights); backward weight reads x, gy and writes gw (temporary ws:
    split-K partial sums). ``aligned`` says whether every array is 16-byte aligned (float4 paths).
    """
    check_config(direction, version, config)
    config = tuple(int(c) for c in config)
    p = problem
    if p.ksize not in KSIZES:
        raise ValueError(f"{direction}: kernel size {p.ksize} is not one of {KSIZES}")
    shapes = p.shapes()
    if direction == "fwd":
        call = _forward_call(version, config, p.n, p.c, p.h, p.w, p.k, p.ksize,
                             "x", "w", "b" if has_bias else "w", "y", has_bias, relu, aligned)
        return Plan(direction, version, config, p, "y", shapes["y"], (), (call,))

    if direction == "bwd_data":
        if version == "v1":
            (block,) = config
            call = Call("conv_bwd_data_v1.cu", f"conv_bwd_data_v1<{p.ksize}>",
                        (_cdiv(p.n * p.c * p.hw, block), 1, 1), (block, 1, 1),
                        ("gy", "w", "gx", p.n, p.c, p.h, p.w, p.k))
            return Plan(direction, version, config, p, "gx", shapes["gx"], (), (call,))
        flip = Call("conv_bwd_data_v2.cu", f"flip_transpose_weight<{p.ksize}>",
                    (_cdiv(p.k * p.crs, BLOCK_1D), 1, 1), (BLOCK_1D, 1, 1), ("w", "wt", p.k, p.c))
        # gx = forward conv of gy (n, K, h, w) with wt (C, K, k, k): input channels K, outputs C.
        gemm = _forward_call(version, config, p.n, p.k, p.h, p.w, p.c, p.ksize,
                             "gy", "wt", "wt", "gx", False, False, aligned)
        temps = (("wt", (p.c, p.k, p.ksize, p.ksize)),)
        return Plan(direction, version, config, p, "gx", shapes["gx"], temps, (flip, gemm))

    # bwd_weight
    if version == "v1":
        (block,) = config
        call = Call("conv_bwd_weight_v1.cu", f"conv_bwd_weight_v1<{p.ksize}>",
                    (_cdiv(p.k * p.crs, block), 1, 1), (block, 1, 1),
                    ("x", "gy", "gw", p.n, p.c, p.h, p.w, p.k))
        return Plan(direction, version, config, p, "gw", shapes["gw"], (), (call,))
    bm, bn, bk, tm, tn = config
    splits, chunk = split_count(p, config, sm_count)
    target = "gw" if splits == 1 else "ws"
    gemm = Call("conv_bwd_weight_v2.cu", f"conv_bwd_weight_v2<{bm}, {bn}, {bk}, {tm}, {tn}, {p.ksize}>",
                (_cdiv(p.crs, bn), _cdiv(p.k, bm), splits), ((bm // tm) * (bn // tn), 1, 1),
                ("x", "gy", target, p.n, p.c, p.h, p.w, p.k, chunk))
    if splits == 1:
        return Plan(direction, version, config, p, "gw", shapes["gw"], (), (gemm,))
    count = p.k * p.crs
    reduce = Call("conv_bwd_weight_v2.cu", "splitk_reduce", (_cdiv(count, BLOCK_1D), 1, 1),
                  (BLOCK_1D, 1, 1), ("ws", "gw", count, splits))
    return Plan(direction, version, config, p, "gw", shapes["gw"],
                (("ws", (splits, p.k, p.crs)),), (gemm, reduce))


def bias_plan(n: int, k: int, hw: int) -> Plan:
    """gb = gy.sum((0, 2, 3)) with one block per channel (deterministic tree reduction)."""
    call = Call("conv_bwd_bias.cu", f"conv_bias_grad<{BLOCK_1D}>", (k, 1, 1), (BLOCK_1D, 1, 1),
                ("gy", "gb", n, k, hw))
    return Plan("bwd_bias", "v1", (BLOCK_1D,), Problem(n, k, hw, 1, k, 1), "gb", (k,), (), (call,))


def default_config(direction: str, version: str, problem: Problem,
                   sm_count: int = DEFAULT_SM_COUNT) -> tuple:
    """A size-based guess at a good config (used when autotuning is off or a version is forced).

    For the tiled GEMMs: the first config in list order (largest tiles first) that both launches
    at least one block per SM and wastes at most a quarter of its tile on padding; failing that,
    the one with the most useful blocks.
    """
    cands = configs(direction, version)
    if len(cands[0]) != 5:
        return cands[0]
    if direction == "bwd_data":  # the GEMM is a forward conv with C and K swapped
        rows, cols = problem.c, problem.pixels
    elif direction == "fwd":
        rows, cols = problem.k, problem.pixels
    else:
        rows, cols = problem.k, problem.crs

    def score(cfg):
        bm, bn = cfg[0], cfg[1]
        blocks = _cdiv(rows, bm) * _cdiv(cols, bn)
        if direction == "bwd_weight":
            blocks *= split_count(problem, cfg, sm_count)[0]
        used = (rows * cols) / (_cdiv(rows, bm) * bm * _cdiv(cols, bn) * bn)
        return blocks, used

    for cfg in cands:
        blocks, used = score(cfg)
        if blocks >= sm_count and used >= 0.75:
            return cfg
    return max(cands, key=lambda cfg: min(score(cfg)[0], sm_count) * score(cfg)[1])


# ----------------------------------------------------------------------------- sources


def source_text(source: str) -> str:
    """The text of ``kernels/cuda/<source>``."""
    return (KERNEL_DIR / source).read_text()


def all_instances() -> dict[str, list[str]]:
    """Every template instance any plan can launch, by source file (for compile checks)."""
    out: dict[str, set] = {}
    sm = DEFAULT_SM_COUNT
    for direction in DIRECTIONS:
        for version in _VERSIONS[direction]:
            for cfg in _CONFIGS[(direction, version)]:
                for k in KSIZES:
                    # Shapes chosen so both float4 and scalar variants of v4 appear, and split-K.
                    for prob in (Problem(2, 8, 4, 4, 8, k), Problem(2, 3, 5, 5, 8, k)):
                        pl = plan(direction, version, cfg, prob, has_bias=True, sm_count=sm)
                        for call in pl.calls:
                            out.setdefault(call.source, set()).add(call.name)
    bias = bias_plan(2, 8, 16).calls[0]
    out.setdefault(bias.source, set()).add(bias.name)
    out.setdefault("conv_bwd_weight_v2.cu", set()).add("splitk_reduce")
    return {src: sorted(names) for src, names in sorted(out.items())}


# ----------------------------------------------------------------------------- execution


def _cupy():
    import cupy  # noqa: PLC0415  (lazy on purpose: this module imports without CuPy)
    return cupy


@functools.cache
def _compiled(code: str, options: tuple, name: str):
    """Compile one kernel instance with NVRTC, once per process (CuPy also caches on disk)."""
    cp = _cupy()
    module = cp.RawModule(code=code, options=options, name_expressions=(name,))
    return module.get_function(name)


def kernel(source: str, name: str):
    """The compiled ``name`` (a template instance) from ``kernels/cuda/<source>``."""
    return _compiled(source_text(source), COMPILE_OPTIONS, name)


def _sync_each_launch() -> bool:
    return os.environ.get("GOOGLENET_CUDA_SYNC", "0") not in ("", "0")


def launch(call: Call, buffers: dict, check: bool | None = None) -> None:
    """Launch one planned kernel on CuPy arrays, then check for errors.

    CuPy raises if the launch itself fails (bad configuration, too many resources). Faults that
    happen while the kernel runs (an illegal address) surface at the next synchronisation, so with
    ``check`` (or ``GOOGLENET_CUDA_SYNC=1``) we synchronise here and name the kernel in the error.
    """
    cp = _cupy()
    gx, gy, gz = call.grid
    if not (1 <= gx <= INT32_MAX and 1 <= gy <= 65535 and 1 <= gz <= 65535):
        raise ValueError(f"{call.name}: grid {call.grid} is outside the CUDA limits")
    if call.block[0] * call.block[1] * call.block[2] > 1024:
        raise ValueError(f"{call.name}: block {call.block} has more than 1024 threads")
    args = tuple(buffers[a] if isinstance(a, str) else np.int32(a) for a in call.args)
    fn = kernel(call.source, call.name)
    try:
        fn(call.grid, call.block, args)
    except Exception as exc:
        raise RuntimeError(f"launch of {call.name} (grid {call.grid}, block {call.block}) "
                           f"failed: {exc}") from exc
    if check if check is not None else _sync_each_launch():
        try:
            cp.cuda.get_current_stream().synchronize()
        except Exception as exc:
            raise RuntimeError(f"{call.name} (grid {call.grid}, block {call.block}) failed "
                               f"while running: {exc}") from exc


def execute(pl: Plan, buffers: dict, *, poison: bool = False, check: bool | None = None,
            out=None):
    """Run a plan on CuPy arrays ``buffers`` (by name); allocate output and temps; return output.

    ``poison`` fills the output (and temps) with NaN first, so an element no thread writes shows.
    """
    cp = _cupy()
    bufs = dict(buffers)

    def alloc(shape):
        return cp.full(shape, cp.nan, dtype=cp.float32) if poison else cp.empty(shape, cp.float32)

    for name, shape in pl.temps:
        bufs[name] = alloc(shape)
    if out is None:
        out = alloc(pl.output_shape)
    elif poison:
        out.fill(cp.nan)
    bufs[pl.output] = out
    for call in pl.calls:
        launch(call, bufs, check)
    return out


@functools.cache
def device_sm_count() -> int:
    """Number of SMs of the current CUDA device."""
    cp = _cupy()
    rt = cp.cuda.runtime
    return int(rt.deviceGetAttribute(rt.cudaDevAttrMultiProcessorCount, cp.cuda.Device().id))


@functools.cache
def device_name() -> str:
    cp = _cupy()
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


# ----------------------------------------------------------------------------- public API


def _validate(op: str, direction: str, arrays: dict, problem: Problem):
    """Check types, dtypes, contiguity and shape support; return contiguous arrays."""
    cp = _cupy()
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


def _aligned(*arrays) -> bool:
    return all(a.data.ptr % 16 == 0 for a in arrays if a is not None)


def _resolve(direction, problem, version, config, buffers, *, has_bias=False, relu=False):
    """Pick (version, config): autotuned for version=None, the heuristic default otherwise."""
    from . import autotune  # noqa: PLC0415

    sm = device_sm_count()
    if version is None and config is None:
        version = BEST_VERSION[direction]
        if autotune.enabled():
            candidates = [(version, cfg) for cfg in configs(direction, version)]

            def measure(candidate):
                v, cfg = candidate
                pl = plan(direction, v, cfg, problem, has_bias=has_bias, relu=relu,
                          aligned=_aligned(*buffers.values()), sm_count=sm)
                return autotune.time_cuda(lambda: execute(pl, buffers))

            key = autotune.make_key(direction, problem.as_tuple(), device_name())
            return autotune.best(key, candidates, measure)
        return version, default_config(direction, version, problem, sm)
    if version is None:
        version = BEST_VERSION[direction]
    _check_version(direction, version)
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
              aligned=_aligned(*bufs.values()), sm_count=device_sm_count())
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
              sm_count=device_sm_count())
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
    pl = plan("bwd_weight", version, config, problem, sm_count=device_sm_count())
    return execute(pl, bufs)


def conv_backward_bias(gy):
    """gb[k] = sum over n, h, w of gy (N, K, H, W) -> (K,), deterministic order."""
    cp = _cupy()
    if not isinstance(gy, cp.ndarray) or gy.ndim != 4 or gy.dtype != cp.float32:
        raise ValueError(f"conv_backward_bias: expected a float32 cupy array (N, K, H, W), "
                         f"got {type(gy).__name__} {getattr(gy, 'shape', None)}")
    n, k, h, w = gy.shape
    return execute(bias_plan(n, k, h * w), {"gy": cp.ascontiguousarray(gy)})


# ----------------------------------------------------------------------------- CLI


def _write_instantiations(out_dir: Path) -> list[Path]:
    """One .cu per source that forces every instance plans can launch (for nvcc checks)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for source, names in all_instances().items():
        lines = [f'#include "{(KERNEL_DIR / source).resolve()}"', "",
                 "// Taking each instance's address makes nvcc compile it.",
                 "void* instances_for_compile_check[] = {"]
        lines += [f"    (void*)&{name}," for name in names]
        lines += ["};", ""]
        path = out_dir / f"inst_{Path(source).stem}.cu"
        path.write_text("\n".join(lines))
        paths.append(path)
    return paths


def nvrtc_check(archs=("compute_80", "compute_90")) -> int:
    """Compile every instance with NVRTC (CuPy's compiler) for ``archs``; no GPU needed.

    Uses the NVRTC library directly (CuPy's helpers ask the device for its architecture).
    Raises RuntimeError with NVRTC's log on failure; returns the number of instances compiled.
    """
    from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415

    count = 0
    for source, names in all_instances().items():
        code = source_text(source)
        for arch in archs:
            prog = nvrtc.createProgram(code, source, (), ())
            try:
                for name in names:
                    nvrtc.addNameExpression(prog, name)
                try:
                    nvrtc.compileProgram(prog, (*COMPILE_OPTIONS, f"-arch={arch}"))
                except nvrtc.NVRTCError as exc:
                    raise RuntimeError(f"NVRTC failed on {source} for {arch}:\n"
                                       f"{nvrtc.getProgramLog(prog)}") from exc
                for name in names:
                    nvrtc.getLoweredName(prog, name)  # every name expression resolved
            finally:
                nvrtc.destroyProgram(prog)
        count += len(names)
    return count


def main(argv=None) -> int:
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="python -m kernels.conv_cuda", description=(
        "List kernel versions and instances, write instantiation units for nvcc checks, "
        "or compile every instance with NVRTC."))
    ap.add_argument("--instantiate", metavar="DIR", help="write inst_<source>.cu files into DIR")
    ap.add_argument("--list", action="store_true", help="print every template instance by source")
    ap.add_argument("--nvrtc-check", action="store_true",
                    help="compile every instance with NVRTC for compute_80 and compute_90 "
                         "(needs CuPy and the NVRTC library, not a GPU)")
    args = ap.parse_args(argv)
    if args.instantiate:
        for p in _write_instantiations(Path(args.instantiate)):
            print(p)
    if args.nvrtc_check:
        n = nvrtc_check()
        print(f"NVRTC: {n} instances compiled for compute_80 and compute_90")
    if args.list or not (args.instantiate or args.nvrtc_check):
        for source, names in all_instances().items():
            print(f"{source}: {len(names)} instances")
            for name in names:
                print(f"    {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
