# Step 8. Where the time goes, and what a custom CUDA kernel changes.
#
# Run from the repository root:   python docs/walkthrough/step08_profile_and_kernels.py
#
# Part 1 profiles one training step (forward + backward) of the full GoogLeNet on the CPU
# and asks where its time goes. Part 2 reads the project's CUDA kernel lab (kernels/cuda/),
# one version at a time, and, where a GPU is present, validates and times each version.
# Everything in part 1 runs anywhere; part 2 prints what it can and says what it skipped.
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("WALKTHROUGH_OUT") or ROOT / "docs" / "walkthrough" / "out")
OUT.mkdir(parents=True, exist_ok=True)

import numpy as np  # noqa: E402

import layers as L  # noqa: E402
from engine import Profiler, SGD, cuda_available, manual_seed  # noqa: E402
from models.googlenet import GoogLeNet, training_loss  # noqa: E402

# ---------------------------------------------------------------------------------------
# Part 1. engine.Profiler. Inside `with Profiler(model) as prof:`, every Module call pushes
# its dotted name and every Function records its op, phase (forward or backward), time,
# output shapes and multiply-adds under that name. prof.table() sums them per top-level
# layer, like Caffe's `caffe time`. (On a GPU it synchronises around every op, so each op's
# time is its own; that also makes the whole step slower than an unprofiled one.)
#
# We profile two 224x224 images through a whole training step, aux heads included: the
# paper's shapes exactly, about 3 x 1.6 G multiply-adds per image. One whole training step
# runs first, untimed, on the same batch: first calls pay for compiling the Numba kernels
# (or loading them from Numba's cache) and for allocating workspaces, and a profile that
# included them would blame those costs on whichever layers happened to come first.
manual_seed(0)
net = GoogLeNet(num_classes=1000, seed=0)
opt = SGD(net.parameters(), lr=0.0, momentum=0.0)       # lr 0: every step sees the same weights
images = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
labels = np.array([1, 2])


def training_step():
    loss, _ = training_loss(net(images), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()


training_step()                    # warm-up, untimed
with Profiler(net) as prof:
    t0 = time.perf_counter()
    training_step()
    wall = time.perf_counter() - t0
print(f"one training step, batch 2 at 224x224: {wall:.2f} s on the CPU (a measurement)\n")
print(prof.table())
forward_macs = sum(r.macs for r in prof.records if r.phase == "forward")
print(f"(times are for the whole step of 2 images; the MACs column counts each layer's forward "
      f"multiply-adds for the whole batch: {forward_macs / 1e9:.2f} G, "
      f"{forward_macs / 2e9:.3f} G per image, main path and aux heads)")
assert abs(forward_macs / 2 / 1.5916e9 - 1) < 0.001      # 1.583 G + 2 x 4.2 M (aux heads)

# The same records, grouped by what the ops are rather than by where they sit.
by_op = {}
for r in prof.records:
    key = (r.op, r.phase)
    by_op[key] = by_op.get(key, 0.0) + r.seconds
total = sum(by_op.values())
print(f"\nby op ({total:.2f} s recorded):")
for (op, phase), seconds in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]:
    print(f"  {op:<22}{phase:<10}{seconds:>7.3f} s {seconds / total:>6.1%}")

# And the convolutions by kernel size: their share of the multiply-adds against their
# share of the time, and the arithmetic rate each kind achieves (a multiply-add is two
# floating-point operations; backward computes two products of the forward's size, the
# input and the weight gradients, except for conv1, whose input is the image and needs
# no gradient). A 1x1 convolution does C_in multiply-adds per input value it reads, a
# 3x3 one nine times as many, so the 1x1s are the likelier to wait on memory.
# (An Inception module's three 1x1 convolutions on its input run as one op,
# StackedConv1x1Function, recorded under the module's name: one record for three 1x1s.)
kernel = {name: m.ksize for name, m in net.named_modules() if isinstance(m, L.Conv2d)}
CONV_OPS = ("Conv2dFunction", "StackedConv1x1Function")
kinds = {}
for r in prof.records:
    if r.op not in CONV_OPS:
        continue
    k = 1 if r.op == "StackedConv1x1Function" else kernel.get(r.scope, 0)
    entry = kinds.setdefault(k, {"forward": 0.0, "backward": 0.0,
                                                       "macs": 0, "backward_macs": 0})
    entry[r.phase] += r.seconds
    if r.phase == "forward":
        entry["macs"] += r.macs
        entry["backward_macs"] += r.macs * (1 if r.scope == "conv1" else 2)
conv_seconds = sum(e["forward"] + e["backward"] for e in kinds.values())
conv_macs = sum(e["macs"] for e in kinds.values())
print(f"\nconvolutions: {conv_seconds / total:.0%} of the recorded time")
print(f"  {'kernel':<8}{'share of MACs':>15}{'share of time':>15}"
      f"{'fwd GFLOP/s':>13}{'bwd GFLOP/s':>13}")
for k in sorted(kinds):
    e = kinds[k]
    print(f"  {f'{k}x{k}':<8}{e['macs'] / conv_macs:>15.0%}"
          f"{(e['forward'] + e['backward']) / conv_seconds:>15.0%}"
          f"{2 * e['macs'] / e['forward'] / 1e9:>13.1f}"
          f"{2 * e['backward_macs'] / e['backward'] / 1e9:>13.1f}")
print("(GFLOP/s are measurements, 2 FLOPs per multiply-add. Multi-threaded BLAS on a machine\n"
      " whose cores are busy with other work can be much slower than one thread:\n"
      " OPENBLAS_NUM_THREADS=1 is worth a try when times look odd.)")

# ---------------------------------------------------------------------------------------
# A roofline. A layer is limited either by arithmetic (the machine's peak FLOP/s) or by
# memory traffic (bytes per second times FLOPs per byte): attainable = min(peak,
# intensity x bandwidth), with intensity = FLOPs / bytes moved. We measure the two ceilings
# here, quickly, with every core this process may use working at once (the convolutions
# spread a batch's images over the cores too): the peak as NumPy's float32 matrix product
# (SGEMM) on 1024 x 1024 matrices, one per core, the bandwidth as copies of 64 MB arrays
# (read once, written once), one per core. Each convolution's intensity counts the least
# traffic it could get away with (read x and w once, write y once, float32); its attained
# rate is its forward time in the profile above. Points near the sloped roof are starved
# for data; points far below both roofs lose time elsewhere (im2col copies, small
# matrices, threads waiting). All of it is measured, and noisy on a shared machine: a point
# a little above the flat roof means the 1024 x 1024 SGEMM is not quite this machine's
# best case, or that the machine was busier while the ceilings were measured.
import threading  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def best_seconds(fn, repeat=5):
    """Shortest wall time of ``fn`` run by ``cores`` threads at once (NumPy releases the GIL):
    a ceiling is the best the machine did, so the fastest of a few runs, not the median."""
    def together():
        threads = [threading.Thread(target=fn) for _ in range(cores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    together()                                         # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        together()
        times.append(time.perf_counter() - t0)
    return min(times)


a = np.random.default_rng(1).standard_normal((1024, 1024)).astype(np.float32)
peak = cores * 2 * 1024 ** 3 / best_seconds(lambda: a @ a) / 1e9               # GFLOP/s
srcs = [np.ones(16 * 2 ** 20, np.float32) for _ in range(cores)]                  # 64 MB each
dsts = [np.empty_like(x) for x in srcs]
turn = iter(range(10 ** 9))


def copy_one():
    i = next(turn) % cores
    np.copyto(dsts[i], srcs[i])


bandwidth = cores * 2 * srcs[0].nbytes / best_seconds(copy_one) / 1e9            # GB/s
del srcs, dsts
print(f"\nceilings on {cores} cores (measurements): SGEMM {peak:.0f} GFLOP/s, memory copy "
      f"{bandwidth:.1f} GB/s")

convs = {name: m for name, m in net.named_modules() if isinstance(m, L.Conv2d)}
modules = dict(net.named_modules())
points = []                                            # (name, k, intensity, GFLOP/s)
for r in prof.records:
    if r.phase != "forward":
        continue
    if r.op == "Conv2dFunction" and r.scope in convs:
        m = convs[r.scope]
        n, c_out, h, w = r.out_shapes[0]
        c_in = m.weight.shape[1]
        moved = 4 * (n * c_in * h * m.stride * w * m.stride + m.weight.size + n * c_out * h * w)
        points.append((r.scope, m.ksize, 2 * r.macs / moved, 2 * r.macs / r.seconds / 1e9))
    elif r.op == "StackedConv1x1Function":            # three 1x1s reading one input
        block = modules[r.scope]
        stack = (block.conv_1x1, block.conv_3x3_reduce, block.conv_5x5_reduce)
        n, _, h, w = r.out_shapes[0]
        c_in = stack[0].weight.shape[1]
        c_out = sum(shape[1] for shape in r.out_shapes)
        moved = 4 * (n * c_in * h * w + sum(m.weight.size for m in stack) + n * c_out * h * w)
        points.append((r.scope, 1, 2 * r.macs / moved, 2 * r.macs / r.seconds / 1e9))
assert len(points) == 59 - 2 * 9                       # 9 stacks of three count as one each
fig, ax = plt.subplots(figsize=(8, 5))
ai = np.logspace(-1, 3, 200)
ax.loglog(ai, np.minimum(peak, ai * bandwidth), "k-", lw=2, label="roof: min(SGEMM, AI x copy BW)")
for k, colour in ((1, "tab:blue"), (3, "tab:orange"), (5, "tab:green"), (7, "tab:red")):
    sel = [(x, y) for _, kk, x, y in points if kk == k]
    if sel:
        ax.loglog(*zip(*sel), "o", color=colour, alpha=0.75, label=f"{k}x{k} convolutions")
ax.set_xlabel("arithmetic intensity (FLOPs per byte of x, w and y)")
ax.set_ylabel("attained GFLOP/s (forward)")
ax.set_title(f"GoogLeNet's 59 convolutions as {len(points)} ops on this CPU, batch 2 (measured)")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "step08_roofline.png", dpi=90)
plt.close(fig)
ridge = peak / bandwidth
below = sum(x < ridge for _, _, x, _ in points)
above = sum(y > peak for _, _, _, y in points)
print(f"ridge point at {ridge:.0f} FLOPs/byte: {below} of {len(points)} convolution ops sit left "
      f"of it (could be memory-bound), {above} above the SGEMM roof; wrote "
      f"{OUT / 'step08_roofline.png'}")

# ---------------------------------------------------------------------------------------
# Part 2. The CUDA kernel lab. On a GPU the im2col + GEMM recipe still works (CuPy's GEMM
# is cuBLAS), but im2col costs memory traffic: for conv2 at batch 128 the column matrix is
# 576 x 401,408 floats, 0.9 GB written and then read back by the GEMM, for every call. The
# engine can skip it for GoogLeNet's stride-1 convolutions: kernels/conv_cuda.py launches
# hand-written CUDA kernels that gather each input window straight from the image as they
# need it ("implicit GEMM") and apply the bias and the ReLU before writing the output once.
# The kernels live in kernels/cuda/ as numbered versions, slow and obvious first, each
# header comment saying what changed and why it should be faster:
#
#   v1  one thread per output value, everything from global memory: the definition,
#       easy to check, slow (every input value is fetched again by every thread that needs it);
#   v2  tiles: a block of threads stages a tile of weights and a tile of input windows in
#       shared memory, and each value loaded is reused by a whole row or column of threads;
#   v3  register blocking: each thread computes a small block of outputs (say 8x8) from
#       values it holds in registers, so it does many multiply-adds per shared-memory load;
#   v4  vectorised 16-byte loads and stores, and double buffering: the next tile is loaded
#       while the current one is being multiplied, so memory latency hides behind arithmetic.
#
# The backward kernels reuse the same ideas (the input gradient *is* a forward convolution
# with flipped, transposed weights). The lab's harness (kernels/lab.py) checks every
# version against a float64 NumPy reference, with the output first filled with NaN so an
# unwritten element cannot pass, before it times anything.
KERNEL_DIR = ROOT / "kernels" / "cuda"
sources = sorted(KERNEL_DIR.glob("*.cu")) if KERNEL_DIR.is_dir() else []


def header_comment(path):
    """The leading // comment block of a source file, without the slashes."""
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("//"):
            lines.append(line[2:].rstrip()[1:] if line[2:3] == " " else line[2:].rstrip())
        elif lines or line.strip():
            break
    return "\n".join(lines)


ORDER = ("conv_fwd", "conv_bwd_data", "conv_bwd_weight")   # forward first: it sets the ideas


def family(path):
    """Sort key: forward, backward-data, backward-weight, then the rest; versions in order."""
    head, _, tail = path.stem.rpartition("_v")
    name, version = (head, int(tail)) if head and tail.isdigit() else (path.stem, 0)
    rank = ORDER.index(name) if name in ORDER else len(ORDER)
    return rank, name, version


print("\n" + "=" * 78)
if not sources:
    print(f"No CUDA sources found under {KERNEL_DIR}: nothing to read in part 2.")
else:
    print(f"The kernel lab: {len(sources)} CUDA sources under {KERNEL_DIR.relative_to(ROOT)}/")
    for path in sorted(sources, key=family):
        print("\n" + "-" * 78 + f"\n{path.name}\n" + "-" * 78)
        print(header_comment(path) or "(no header comment)")


# Without a GPU the kernels can still be *run*, slowly: kernels/emu.py compiles a .cu file
# as ordinary C++ (a small header maps CUDA's built-ins onto threads and barriers) and
# executes the exact launch plan the GPU would get. That checks each version's index
# arithmetic against the NumPy reference on tiny problems; it says nothing about speed.
def run_emulation():
    """Without a GPU: run every kernel version through the CPU emulation on a tiny problem."""
    try:
        from kernels import emu, lab
        from kernels.conv_cuda import DIRECTIONS, Problem, versions
    except Exception as exc:                                   # noqa: BLE001
        print(f"kernel lab not importable ({type(exc).__name__}: {exc}); skipped")
        return
    if not emu.available():
        print("no C++ compiler (g++) found: the CPU emulation of the kernels is skipped")
        return
    problem = Problem(2, 8, 6, 6, 12, 3)       # N, C, H, W, K (output channels), kernel size
    print(f"CPU emulation (kernels/emu.py: every CUDA thread an OS thread), problem "
          f"N,C,H,W,K,k = {problem.as_tuple()}, every version of every direction:")
    failed = 0
    for direction in DIRECTIONS:
        for version in versions(direction):
            try:
                check = lab.validate(direction, version, problem, backend="emu")
            except Exception as exc:                           # noqa: BLE001
                print(f"  {direction:<11}{version}: error ({type(exc).__name__}: {exc})")
                failed += 1
                continue
            print(f"  {direction:<11}{version}: relative error {check.rel:.1e} (tolerance "
                  f"{check.tol:.1e}), {'valid' if check.ok else 'INVALID'}")
            failed += not check.ok
    assert failed == 0, f"{failed} kernel versions failed validation in the emulation"


def run_gpu():
    """With CuPy and a GPU: validate and time every version on one GoogLeNet layer."""
    try:
        import cupy as cp
        from kernels import conv_cuda, lab
        from kernels.shapes import googlenet_conv_shapes
    except Exception as exc:                                   # noqa: BLE001
        print(f"kernel lab not importable ({type(exc).__name__}: {exc}); GPU part skipped")
        return
    shape = next(s for s in googlenet_conv_shapes() if s.name == "inception_3a.conv_3x3")
    batch = 32
    problem = shape.problem(batch)
    print(f"GPU: {conv_cuda.device_name()}; layer {shape.name} "
          f"({shape.c_in}->{shape.c_out}, {shape.k}x{shape.k}, {shape.h}x{shape.w}), "
          f"batch {batch}, "
          f"{shape.macs(batch) / 1e9:.2f} G multiply-adds")
    for direction in conv_cuda.DIRECTIONS:
        for version in conv_cuda.versions(direction):
            try:
                check = lab.validate(direction, version, shape.problem(2))
                ms = lab.time(direction, version, problem) if check.ok else None
            except Exception as exc:                           # noqa: BLE001
                print(f"  {direction:<11}{version}: error ({type(exc).__name__}: {exc})")
                continue
            if not check.ok:
                print(f"  {direction:<11}{version}: FAILED validation (rel {check.rel:.1e})")
                continue
            tflops = 2 * shape.macs(batch) / ms / 1e9
            print(f"  {direction:<11}{version}: {ms:8.3f} ms  {tflops:7.2f} "
                  f"TFLOP/s  (validated, rel error {check.rel:.1e})")

    # The same layer through the engine's two paths on the GPU: im2col + cuBLAS GEMM, or
    # the custom kernels (the fastest version, with its tuned tile).
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((batch, shape.c_in, shape.h, shape.w), dtype=np.float32))
    w = cp.asarray(rng.standard_normal((shape.c_out, shape.c_in, shape.k, shape.k),
                                       dtype=np.float32))
    b = cp.zeros(shape.c_out, np.float32)
    for impl in ("im2col", "custom"):
        try:
            L.conv2d(x, w, b, pad=shape.pad, relu=True, impl=impl)   # compile, tune, warm up
        except Exception as exc:                               # noqa: BLE001
            print(f"  layers.conv2d impl={impl}: error ({type(exc).__name__}: {exc})")
            continue
        cp.cuda.get_current_stream().synchronize()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(20):
            L.conv2d(x, w, b, pad=shape.pad, relu=True, impl=impl)
        end.record()
        end.synchronize()
        ms = cp.cuda.get_elapsed_time(start, end) / 20
        print(f"  layers.conv2d impl={impl:<7}: {ms:7.3f} ms per forward")


print("\n" + "=" * 78)
if sources:
    run_emulation()
else:
    print("no kernels: the CPU emulation is skipped")
if cuda_available() and sources:
    run_gpu()
else:
    print("No CUDA GPU usable through CuPy here: the GPU timings are skipped. On a machine with "
          "one,\nthis step validates and times each kernel version; `python -m kernels.lab` "
          "does the same for every layer.")
