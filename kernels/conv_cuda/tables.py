"""What exists: directions, kernel versions, their tile configurations and the configs' rules.

Pure Python, no CuPy. ``check_config`` mirrors the ``static_assert``s of ``kernels/cuda/*.cu``
and the hardware limits, so a bad config fails here before anything is compiled.
"""
from __future__ import annotations

DIRECTIONS = ("fwd", "bwd_data", "bwd_weight")
KSIZES = (1, 3, 5)
BLOCK_1D = 256          # block size of the one-thread-per-output kernels
DEFAULT_SM_COUNT = 132  # H100 / H200 SXM; used for planning when no device can be asked
INT32_MAX = 2**31 - 1

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
    check_direction(direction)
    return list(_VERSIONS[direction])


def configs(direction: str, version: str) -> list[tuple]:
    """Tile configurations of one version (1-tuples for the simple ones: block or tile size)."""
    check_version(direction, version)
    return list(_CONFIGS[(direction, version)])


def config_name(config) -> str:
    """'128x128x8/8x8' for (BM, BN, BK, TM, TN); '16' for a 1-tuple."""
    if len(config) == 5:
        bm, bn, bk, tm, tn = config
        return f"{bm}x{bn}x{bk}/{tm}x{tn}"
    return "x".join(str(c) for c in config)


def check_direction(direction):
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")


def check_version(direction, version):
    check_direction(direction)
    if version not in _VERSIONS[direction]:
        raise ValueError(f"{direction}: unknown version {version!r}; "
                         f"available: {list(_VERSIONS[direction])}")


def check_config(direction: str, version: str, config) -> None:
    """Raise ValueError unless ``config`` satisfies the kernel's compile-time constraints.

    Mirrors the ``static_assert``s of the .cu files (so a bad config fails here, in Python, before
    any compilation) and the hardware limits: at most 1024 threads and 48 KiB of static shared
    memory per block.
    """
    check_version(direction, version)
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
