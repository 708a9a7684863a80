"""Custom CUDA kernels for GoogLeNet's stride-1 "same" convolutions: the public facade.

The kernels (``kernels/cuda/*.cu``) cover float32 NCHW convolutions with square kernels
k in {1, 3, 5}, stride 1 and pad k // 2 (the output has the input's height and width):

    forward          y[n,k,h,v]  = b[k] + sum_{c,r,s} w[k,c,r,s] x[n,c,h+r-P,v+s-P]   (+ ReLU)
    backward data    gx[n,c,h,v] = sum_{k,r,s} gy[n,k,h-r+P,v-s+P] w[k,c,r,s]
    backward weight  gw[k,c,r,s] = sum_{n,h,v} gy[n,k,h,v] x[n,c,h+r-P,v+s-P]
    backward bias    gb[k]       = sum_{n,h,v} gy[n,k,h,v]

with x (N, C, H, W), w (K, C, k, k), y and gy (N, K, H, W), P = k // 2.

Each direction has numbered versions (``versions(direction)``), slow and obvious first, fast
last; each fast version has tile configurations (``configs(direction, version)``). The package
is split by job, so that a failure points at one small file; all but the last three run and are
tested without a GPU:

    tables     directions, versions, tile configs and their rules (``check_config``)
    problem    ``Problem`` (one convolution) and ``supports``
    planning   ``plan``: the exact launches (source, template instance, grid, block, arguments)
               and temporaries; ``all_instances``; the batch-128 coverage (``production_plans``)
    sources    the kernel text NVRTC compiles (headers inlined), the sources' hash, NVRTC check
    select     the autotuner's choice: validate every candidate, time the valid ones
    device     the one CuPy probe; device facts and compiled modules, cached per device
    launcher   run a plan on CuPy arrays; errors that name kernel, config and shape
    api        the public functions below
    __main__   ``python -m kernels.conv_cuda`` (list instances, nvcc units, NVRTC check)

Public API (CuPy arrays in and out; ``version=None`` picks the fastest version with its
validated, autotuned tile configuration):

    supports(x_shape, w_shape, stride, pad, dtype="float32") -> bool
    conv_forward(x, w, b=None, relu=False, version=None, config=None) -> y
    conv_backward_data(gy, w, version=None, config=None) -> gx
    conv_backward_weight(x, gy, ksize, version=None, config=None) -> gw
    conv_backward_bias(gy) -> gb
    versions(direction) -> list[str]

CuPy is imported lazily: importing this package works without it.
Environment: ``GOOGLENET_AUTOTUNE=0`` disables autotuning (a size-based heuristic picks the tile),
``GOOGLENET_CUDA_SYNC=1`` synchronises after every launch so that an asynchronous fault is
reported at the kernel that caused it.
"""
from __future__ import annotations

from .api import (conv_backward_bias, conv_backward_data, conv_backward_weight, conv_forward)
from .device import DeviceInfo, unusable_reason
from .launcher import KernelError, KernelFault, LaunchRejected, execute, launch
from .planning import (Call, Plan, all_instances, bias_plan, default_config, plan,
                       production_plans, signature, small_problem, split_count, validation_cases)
from .problem import Problem, supports
from .sources import COMPILE_OPTIONS, KERNEL_DIR, nvrtc_check, source_text, sources_tag
from .tables import (BEST_VERSION, BLOCK_1D, BWD_WEIGHT_TILES, DEFAULT_SM_COUNT, DIRECTIONS,
                     GEMM_TILES, INT32_MAX, KSIZES, check_config, config_name, configs, versions)


def device_sm_count() -> int:
    """Number of SMs of the current CUDA device (cached per device)."""
    from .device import info  # noqa: PLC0415
    return info().sm_count


def device_name() -> str:
    """Name of the current CUDA device (cached per device)."""
    from .device import info  # noqa: PLC0415
    return info().name


__all__ = [
    "BEST_VERSION", "BLOCK_1D", "BWD_WEIGHT_TILES", "COMPILE_OPTIONS", "Call", "DEFAULT_SM_COUNT",
    "DIRECTIONS", "DeviceInfo", "GEMM_TILES", "INT32_MAX", "KERNEL_DIR", "KSIZES", "KernelError",
    "KernelFault", "LaunchRejected", "Plan", "Problem", "all_instances", "bias_plan",
    "check_config", "config_name", "configs", "conv_backward_bias", "conv_backward_data",
    "conv_backward_weight", "conv_forward", "default_config", "device_name", "device_sm_count",
    "execute", "launch", "nvrtc_check", "plan", "production_plans", "signature", "small_problem",
    "source_text", "sources_tag", "split_count", "supports", "unusable_reason",
    "validation_cases", "versions",
]
