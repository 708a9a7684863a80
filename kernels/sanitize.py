"""Run every kernel version under ThreadSanitizer and AddressSanitizer through the CPU emulation.

    python -m kernels.sanitize                        # both tools, the full matrix (minutes)
    python -m kernels.sanitize --subset ci            # a few cases per tool (what CI runs)
    python -m kernels.sanitize --tool address --directions bwd_weight

The emulation (``kernels.emu``) runs each CUDA thread of a block as an OS thread, so host tools
see the kernels' real memory traffic:

* ``thread``: g++ ``-fsanitize=thread``. A shared-memory access not ordered by a
  ``__syncthreads()`` barrier (a missing or misplaced barrier, a double-buffer slot reused too
  early) is a data race between OS threads, and TSan reports it with both stacks.
* ``address``: ``-fsanitize=address,undefined``. Out-of-bounds reads and writes of the global
  buffers (every buffer is its own heap allocation with red zones), of ``__shared__`` arrays
  (``-fsanitize=bounds`` checks each index of a fixed-size array), misaligned float4 accesses
  (``-fsanitize=alignment``) and signed overflow in index arithmetic.

Each tool runs in a child process that preloads the sanitizer's runtime (Python itself is not
instrumented), with the emulation built for that tool, and stops at the first report. The
matrix: every version x every tile config x the edge shapes below, plus every case of
``conv_cuda.validation_cases()`` (each kernel instance and split count GoogLeNet launches at
batch 128). ``--subset ci`` keeps five cases of the fast versions (three kernel sources to
build) that still cover the float4 and scalar paths, split-K with its reduction, and every
direction. Outputs are also compared with the float64 reference. Exit status: 0 clean, 1 a
report or a wrong result, 2 a tool is missing.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import time

from . import conv_cuda
from .conv_cuda import DIRECTIONS, Problem

TOOLS = ("thread", "address")
RUNTIME = {"thread": "libtsan.so", "address": "libasan.so"}
OPTIONS = {
    "thread": ("TSAN_OPTIONS", "halt_on_error=1:exitcode=66:second_deadlock_stack=1"),
    "address": ("ASAN_OPTIONS", "detect_leaks=0:halt_on_error=1:exitcode=67:"
                                "allocator_may_return_null=1"),
}
UBSAN = ("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1:exitcode=68")

# K, C and H*W off every tile size; odd widths 7, 14 and 28; a 1x1 image (all taps but the
# centre in the padding); pixel tiles that cross image boundaries.
EDGE_SHAPES = (
    Problem(2, 5, 7, 7, 6, 3),
    Problem(1, 12, 14, 14, 10, 1),
    Problem(1, 6, 28, 28, 9, 5),
    Problem(1, 3, 1, 1, 2, 3),
    Problem(3, 36, 8, 8, 40, 1),
)

CI_CASES = (
    ("fwd", "v4", (128, 128, 8, 8, 8), Problem(2, 12, 14, 14, 132, 3)),   # float4 path
    ("fwd", "v4", (64, 32, 8, 4, 4), Problem(2, 5, 7, 7, 67, 5)),         # scalar path
    ("bwd_data", "v4", (64, 64, 8, 4, 4), Problem(2, 67, 7, 7, 12, 3)),
    ("bwd_weight", "v2", (64, 64, 16, 4, 4), Problem(2, 3, 64, 7, 5, 3)),  # 7 splits + reduce
    ("bwd_weight", "v2", (128, 128, 8, 8, 8), Problem(2, 5, 7, 7, 131, 1)),  # one split
)

SM_COUNT = conv_cuda.DEFAULT_SM_COUNT


def cases(subset: str, directions=DIRECTIONS) -> list[tuple]:
    """(direction, version, config, problem) to run, in a stable order without repeats."""
    if subset == "ci":
        out = list(CI_CASES)
    else:
        out = [(d, v, tuple(cfg), p) for d in DIRECTIONS for v in conv_cuda.versions(d)
               for cfg in conv_cuda.configs(d, v) for p in EDGE_SHAPES]
        out += [(d, v, tuple(cfg), p) for d, v, cfg, p in conv_cuda.validation_cases(128, SM_COUNT)]
    seen, unique = set(), []
    for c in out:
        if c[0] in directions and c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


def runtime_library(tool: str) -> str | None:
    """Absolute path of the sanitizer's runtime for the C++ compiler, or None."""
    from . import emu  # noqa: PLC0415
    cxx = emu.compiler()
    if cxx is None:
        return None
    res = subprocess.run([cxx, f"-print-file-name={RUNTIME[tool]}"], capture_output=True, text=True)
    path = res.stdout.strip()
    return path if res.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def _plant(kind: str) -> int:
    """A deliberate bug, to show the tool catches one here: ``overflow`` runs a plan whose
    output buffer is one image short (the kernel writes past its end); ``race`` runs the same
    launch from two host threads at once on one output (unordered writes from two threads)."""
    import dataclasses  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from . import emu, lab  # noqa: PLC0415

    p = Problem(2, 8, 4, 4, 8, 1)
    pl = conv_cuda.plan("fwd", "v1", (conv_cuda.BLOCK_1D,), p, sm_count=SM_COUNT)
    inputs = lab.make_inputs("fwd", p, 0, bias=False)
    emu.build([pl])
    if kind == "overflow":
        emu.execute(dataclasses.replace(pl, output_shape=(1, *pl.output_shape[1:])), inputs)
        return 0
    out = emu.execute(pl, inputs)
    fn, _ = emu.function(pl.calls[0])
    args = [ctypes.c_uint(int(v)) for v in (*pl.calls[0].grid, *pl.calls[0].block)]
    ptrs = {"x": inputs["x"], "w": inputs["w"], "y": out}
    args += [ctypes.c_void_p(ptrs[a].ctypes.data) if isinstance(a, str) else ctypes.c_int(a)
             for a in pl.calls[0].args]
    threads = [threading.Thread(target=fn, args=args) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


def _child(tool: str, subset: str, directions) -> int:
    """Runs inside the instrumented process: build what the cases launch, run and check them."""
    from . import emu, lab  # noqa: PLC0415

    symbol = {"thread": "__tsan_init", "address": "__asan_init"}[tool]
    if not hasattr(ctypes.CDLL(None), symbol):
        print(f"sanitize: the {tool} sanitizer runtime is not loaded", file=sys.stderr)
        return 2
    todo = cases(subset, directions)
    t0 = time.perf_counter()
    emu.build([conv_cuda.plan(d, v, cfg, p, has_bias=True, relu=d == "fwd", sm_count=SM_COUNT)
               for d, v, cfg, p in todo])
    print(f"[{tool}] built {len(todo)} cases' kernels in {time.perf_counter() - t0:.0f} s", flush=True)
    wrong = 0
    for i, (d, v, cfg, p) in enumerate(todo):
        chk = lab.validate(d, v, p, cfg, backend="emu", sm_count=SM_COUNT)
        wrong += not chk.ok
        if not chk.ok or subset == "ci" or i % 25 == 0:
            print(f"[{tool}] {i + 1}/{len(todo)} {d} {v} {conv_cuda.config_name(cfg)} "
                  f"{p.as_tuple()} rel {chk.rel:.1e} {'ok' if chk.ok else 'WRONG'}", flush=True)
    print(f"[{tool}] {len(todo)} cases, {wrong} wrong, no sanitizer report, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return 1 if wrong else 0


def run_tool(tool: str, subset: str = "full", directions=DIRECTIONS, timeout: float | None = None,
             plant: str | None = None, echo: bool = False) -> tuple[int, str]:
    """Run one tool's child process; return (exit status, its combined output), which ``echo``
    also prints line by line as it comes."""
    lib = runtime_library(tool)
    if lib is None:
        return 2, f"sanitize: no {RUNTIME[tool]} for the C++ compiler; {tool} check not run"
    env = dict(os.environ)
    env.update({"LD_PRELOAD": lib, "GOOGLENET_EMU_SANITIZE": tool, OPTIONS[tool][0]: OPTIONS[tool][1],
                UBSAN[0]: UBSAN[1], "PYTHONUNBUFFERED": "1"})
    cmd = [sys.executable, "-m", "kernels.sanitize", "--child", tool, "--subset", subset,
           "--directions", ",".join(directions)] + (["--plant", plant] if plant else [])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    lines = []
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    timer = None
    if timeout is not None:
        import threading  # noqa: PLC0415
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
    for line in proc.stdout:   # the child's progress and any report, as they come
        lines.append(line)
        if echo:
            print(line, end="", flush=True)
    rc = proc.wait()
    if timer is not None:
        timer.cancel()
        if rc < 0:
            lines.append(f"sanitize: {tool} run exceeded {timeout} s\n")
            rc = 1
    return rc, "".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.sanitize", description=(
        "Run the kernels' CPU emulation under ThreadSanitizer and AddressSanitizer (+UBSan): "
        "every version x config x edge shape, and every batch-128 launch's instance and split "
        "count. Needs g++ with libtsan / libasan."))
    ap.add_argument("--tool", choices=(*TOOLS, "both"), default="both")
    ap.add_argument("--subset", choices=("full", "ci"), default="full",
                    help="full: the whole matrix (minutes per tool); ci: a few cases")
    ap.add_argument("--directions", default=",".join(DIRECTIONS),
                    help="comma-separated subset of fwd,bwd_data,bwd_weight")
    ap.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--plant", choices=("overflow", "race"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    directions = tuple(d for d in args.directions.split(",") if d)
    for d in directions:
        if d not in DIRECTIONS:
            ap.error(f"unknown direction {d!r}; expected some of {','.join(DIRECTIONS)}")
    if args.child and args.plant:
        return _plant(args.plant)
    if args.child:
        return _child(args.child, args.subset, directions)
    from . import emu  # noqa: PLC0415
    if not emu.available():
        print("kernels.sanitize needs g++ (C++20); none was found.", file=sys.stderr)
        return 2
    status = 0
    for tool in (TOOLS if args.tool == "both" else (args.tool,)):
        t0 = time.perf_counter()
        rc, out = run_tool(tool, args.subset, directions, echo=True)
        verdict = {0: "clean", 2: "NOT RUN"}.get(rc, f"FAILED (exit status {rc})")
        print(f"== {tool}: {verdict} in {time.perf_counter() - t0:.0f} s", flush=True)
        status = max(status, 1 if rc not in (0, 2) else rc)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
