"""Launch plans: (direction, version, config, problem) -> the exact kernel launches. Pure Python.

A :class:`Plan` lists every launch (source file, template instance, grid, block, arguments) and
every temporary buffer; ``launch.execute`` runs it with CuPy and ``kernels.emu`` on the CPU, so
the arithmetic here is tested without a GPU. :func:`all_instances` enumerates every template
instance a plan can name (what the compile checks build), :func:`production_plans` the plans
GoogLeNet launches at a given batch (what the validation tests must cover).
"""
from __future__ import annotations

from dataclasses import dataclass

from .problem import Problem
from .tables import (_CONFIGS, _VERSIONS, BEST_VERSION, BLOCK_1D, DEFAULT_SM_COUNT, DIRECTIONS,
                     KSIZES, check_config, configs, versions)

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


def all_calls() -> dict[str, list[Call]]:
    """One representative call of every template instance any plan can launch, by source file
    (the name says which instance; the arguments' kinds are its signature)."""
    out: dict[str, dict[str, Call]] = {}
    sm = DEFAULT_SM_COUNT
    plans = [bias_plan(2, 8, 16)]
    for direction in DIRECTIONS:
        for version in _VERSIONS[direction]:
            for cfg in _CONFIGS[(direction, version)]:
                for k in KSIZES:
                    # Shapes chosen so both float4 and scalar variants of v4 appear, and split-K.
                    for prob in (Problem(2, 8, 4, 4, 8, k), Problem(2, 3, 5, 5, 8, k),
                                 Problem(2, 3, 16, 16, 8, k)):
                        plans.append(plan(direction, version, cfg, prob, has_bias=True, sm_count=sm))
    for pl in plans:
        for call in pl.calls:
            out.setdefault(call.source, {}).setdefault(call.name, call)
    assert "splitk_reduce" in out["conv_bwd_weight_v2.cu"]
    return {src: [calls[n] for n in sorted(calls)] for src, calls in sorted(out.items())}


def all_instances() -> dict[str, list[str]]:
    """Every template instance any plan can launch, by source file (for compile checks)."""
    return {src: [c.name for c in calls] for src, calls in all_calls().items()}


# ----------------------------------------------------------------------------- coverage


def signature(pl: Plan) -> tuple:
    """What makes two plans run different code paths: direction, version, the kernel instances
    launched (tile config, kernel size and float4 variant are in the names) and, for split-K,
    the number of splits. Two plans with one signature differ only in sizes."""
    splits = pl.calls[0].grid[2] if pl.direction == "bwd_weight" else 1
    return (pl.direction, pl.version, tuple(c.name for c in pl.calls), splits)


def production_plans(batch: int = 128, sm_count: int = DEFAULT_SM_COUNT,
                     aligned: bool = True) -> list[Plan]:
    """Every plan ``layers`` can launch for GoogLeNet at ``batch`` on a GPU with ``sm_count`` SMs.

    Per stride-1 convolution and direction: each autotuner candidate (the best version with
    every config) and each version's heuristic default (forced versions, autotuning off).
    Forward plans carry the bias and the fused ReLU as the layers use them.
    """
    from ..shapes import googlenet_conv_shapes  # noqa: PLC0415  (shapes imports Problem)

    out = []
    for shape in googlenet_conv_shapes():
        if not shape.same_stride1():
            continue
        prob = shape.problem(batch)
        for d in DIRECTIONS:
            best = BEST_VERSION[d]
            chosen = {(best, tuple(cfg)) for cfg in configs(d, best)}
            chosen |= {(v, tuple(default_config(d, v, prob, sm_count))) for v in versions(d)}
            for v, cfg in sorted(chosen):
                out.append(plan(d, v, cfg, prob, has_bias=d == "fwd", relu=d == "fwd",
                                aligned=aligned, sm_count=sm_count))
    return out


def small_problem(pl: Plan, sm_count: int = DEFAULT_SM_COUNT) -> Problem:
    """A problem small enough for the CPU emulation whose plan (same direction, version and
    config, same ``sm_count``) has the signature of ``pl``.

    It keeps the template instance (kernel size; float4 or scalar path: H*W and C*k*k
    divisible by 4 or not) and the split count, and puts every tile edge off the tile sizes:
    the GEMM's row count is BM + 4 or BM + 3, the pixel count not a multiple of BN, widths
    14 (float4) or 7 (scalar).
    """
    d, v, cfg, p = pl.direction, pl.version, pl.config, pl.problem
    ks = p.ksize
    if d == "bwd_weight" and v == "v2":
        splits = signature(pl)[3]
        bm, bn, bk, _, _ = cfg
        if splits == 1:
            return Problem(2, 5, 7, 7, bm + 3, ks)
        # split_count gives min(want, pixels // (8 BK), 64) splits: with 8*BK*S pixels and one
        # or two output tiles (want = 2*sm_count / tiles >= 64) that is exactly S, chunk 8*BK.
        return Problem(2, 3, 4 * bk, splits, 5, ks)
    if len(cfg) != 5:
        return Problem(2, 5, 7, 7, 6, ks)
    bm = cfg[0]
    vec = pl.calls[-1].name.endswith("true>")
    rows = bm + (4 if vec else 3)
    other = 12 if vec else 5          # the GEMM's input channels: C*k*k % 4 == 0 iff vec
    side = 14 if vec else 7           # H*W = 196 (divisible by 4) or 49
    if d == "fwd":
        return Problem(2, other, side, side, rows, ks)
    return Problem(2, rows, side, side, other, ks)   # bwd_data: the GEMM's rows are C


def validation_cases(batch: int = 128, sm_count: int = DEFAULT_SM_COUNT) -> list[tuple]:
    """(direction, version, config, small problem) covering every signature of
    :func:`production_plans` (``batch``, ``sm_count``) once, in a stable order."""
    seen = {}
    for pl in production_plans(batch, sm_count):
        sig = signature(pl)
        if sig not in seen:
            seen[sig] = (pl.direction, pl.version, pl.config, small_problem(pl, sm_count))
    return [seen[s] for s in sorted(seen)]
