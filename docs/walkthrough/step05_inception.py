# Step 5. The Inception module: the naive version against the one with 1x1 reductions.
#
# Run from the repository root:   python docs/walkthrough/step05_inception.py
#
# The paper's idea (Szegedy et al. 2015, section 4): at each stage, let the network look at
# the same input through several filter sizes at once (1x1, 3x3, 5x5, and a 3x3 max pool)
# and stack the results along the channels; the next stage picks what it needs.
#
# Done naively, this is ruinous. Take inception_3a: input 192 channels at 28x28, outputs of
# 64 (1x1), 128 (3x3) and 32 (5x5) channels. A k x k convolution from C_in to C_out channels
# on an H x W map costs C_in * k * k * C_out * H * W multiply-adds ("MACs"), and holds
# C_in * k * k * C_out weights + C_out biases. The 5x5 branch alone reads all 192 channels
# through 25 taps. And the pool branch passes all 192 input channels through, so the output
# is wider than the input (64 + 128 + 32 + 192 = 416), and the next module pays for that.
#
# The fix is the "1x1 reduction": a cheap 1x1 convolution first squeezes 192 channels down to
# 96 (before the 3x3) or 16 (before the 5x5), and a 1x1 "pool projection" squeezes the pool
# branch to 32. Each 1x1 also adds a ReLU, so the module gets more non-linearity for free.
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("WALKTHROUGH_OUT") or ROOT / "docs" / "walkthrough" / "out")
OUT.mkdir(parents=True, exist_ok=True)

import numpy as np  # noqa: E402

import layers as L  # noqa: E402
from engine import Module, Profiler, Tensor, manual_seed, no_grad  # noqa: E402
from viz import draw_graph, render_dot, to_dot  # noqa: E402
from models.googlenet import INCEPTION, Inception, conv_relu  # noqa: E402

C_IN, SIDE = 192, 28
c1, c3r, c3, c5r, c5, pp = INCEPTION["inception_3a"]      # 64, 96, 128, 16, 32, 32


def conv_cost(c_in, c_out, k, side=SIDE):
    """(MACs, parameters) of a k x k 'same' convolution with bias on a side x side map."""
    return c_in * k * k * c_out * side * side, c_in * k * k * c_out + c_out


naive = [("1x1", C_IN, c1, 1), ("3x3", C_IN, c3, 3), ("5x5", C_IN, c5, 5)]
reduced = [("1x1", C_IN, c1, 1), ("3x3 reduce", C_IN, c3r, 1), ("3x3", c3r, c3, 3),
           ("5x5 reduce", C_IN, c5r, 1), ("5x5", c5r, c5, 5), ("pool proj", C_IN, pp, 1)]


def table(title, rows, out_channels):
    print(f"{title}\n  {'branch':<12}{'conv':>16}{'MACs':>12}{'params':>11}")
    total_macs = total_params = 0
    for name, cin, cout, k in rows:
        macs, params = conv_cost(cin, cout, k)
        total_macs, total_params = total_macs + macs, total_params + params
        print(f"  {name:<12}{f'{cin}->{cout} {k}x{k}':>16}{macs / 1e6:>11.1f}M{params:>11,}")
    print(f"  {'total':<28}{total_macs / 1e6:>11.1f}M{total_params:>11,}   "
          f"output {out_channels} channels\n")
    return total_macs, total_params


print(f"inception_3a on a {C_IN}x{SIDE}x{SIDE} input (the max pool branch costs no MACs)\n")
naive_macs, naive_params = table("naive module (no 1x1 reductions)", naive, c1 + c3 + c5 + C_IN)
real_macs, real_params = table("GoogLeNet's module (with 1x1 reductions)", reduced,
                               c1 + c3 + c5 + pp)
print(f"the reductions cut the MACs {naive_macs / real_macs:.1f}x and the parameters "
      f"{naive_params / real_params:.1f}x, and the output is {c1 + c3 + c5 + pp} channels "
      f"instead of {c1 + c3 + c5 + C_IN}.")

# The width problem compounds. The next module, inception_3b, has branches of 128, 192 and 96
# channels; naively on the 416-channel output of a naive 3a:
n1, n3r, n3, n5r, n5, npp = INCEPTION["inception_3b"]
wide = c1 + c3 + c5 + C_IN
naive_3b = sum(conv_cost(wide, c, k)[0] for c, k in ((n1, 1), (n3, 3), (n5, 5)))
real_in = c1 + c3 + c5 + pp                                    # 256, the real 3a's output
real_3b = sum(conv_cost(cin, cout, k)[0] for cin, cout, k in (
    (real_in, n1, 1), (real_in, n3r, 1), (n3r, n3, 3), (real_in, n5r, 1), (n5r, n5, 5),
    (real_in, npp, 1)))
print(f"two modules deep: naive 3b on {wide} channels costs {naive_3b / 1e6:.0f}M MACs and "
      f"outputs {wide + n1 + n3 + n5} channels; the real 3b costs {real_3b / 1e6:.0f}M "
      f"(the paper's Table 1 prints 304M) and outputs {n1 + n3 + n5 + npp}.\n")
# The figures above, as computed (the paper prints 128M for 3a and 304M for 3b):
assert (int(naive_macs / 1e6), int(real_macs / 1e6), int(naive_3b / 1e6)) == (303, 128, 1388)
assert abs(real_3b / 304e6 - 1) < 0.005 and round(naive_macs / real_macs, 1) == 2.4
assert (c1 + c3 + c5 + C_IN, c1 + c3 + c5 + pp, wide + n1 + n3 + n5) == (416, 256, 832)


# ---------------------------------------------------------------------------------------
# Both modules, built from the project's layers. The real one is models.googlenet.Inception;
# the naive one is four lines. Running each on one 192x28x28 input under the Profiler counts
# the MACs every convolution actually performed, which must match the formulas above.
class NaiveInception(Module):
    def __init__(self, cin, c1, c3, c5):
        super().__init__()
        self.conv_1x1 = conv_relu(cin, c1, 1)
        self.conv_3x3 = conv_relu(cin, c3, 3, pad=1)
        self.conv_5x5 = conv_relu(cin, c5, 5, pad=2)
        self.pool = L.MaxPool2d(3, 1, 1)

    def forward(self, x):
        return L.concat([self.conv_1x1(x), self.conv_3x3(x), self.conv_5x5(x), self.pool(x)])


manual_seed(0)
modules = {"naive": NaiveInception(C_IN, c1, c3, c5),
           "real": Inception(C_IN, *INCEPTION["inception_3a"])}
x = np.random.default_rng(0).standard_normal((1, C_IN, SIDE, SIDE)).astype(np.float32)
for name, module in modules.items():
    with no_grad(), Profiler(module) as prof:
        y = module(x)
    measured = sum(r.macs for r in prof.records)
    expected = naive_macs if name == "naive" else real_macs
    params = module.num_parameters()
    print(f"{name:>5} module in the engine: output {y.shape}, {measured / 1e6:.1f}M MACs "
          f"counted (formula {expected / 1e6:.1f}M), {params:,} parameters")
    assert measured == expected and params == (naive_params if name == "naive" else real_params)

# ---------------------------------------------------------------------------------------
# Pictures of both graphs. viz.to_dot walks the graph back from the output; naming the
# module's parameters (names=module) labels each convolution by its attribute name. The
# Pillow drawing leaves the weights out and always works; the Graphviz one (when `dot` is
# installed) shows every weight and bias as well. The input is marked requires_grad so the
# graph keeps it as one node shared by the four branches.
xt = Tensor(x, requires_grad=True, name="x")
pictures = []
for name, module in modules.items():
    y = module(xt)
    title = (f"inception_3a with 1x1 reductions ({real_macs / 1e6:.0f} M MACs)" if name == "real"
             else f"naive Inception, no 1x1 reductions ({naive_macs / 1e6:.0f} M MACs)")
    stem = "step05_inception" if name == "real" else "step05_naive_inception"
    pictures.append(draw_graph(y, png_path=str(OUT / f"{stem}.png"), names=module, title=title))
    source = to_dot(y, name=stem, names=module)
    (OUT / f"{stem}.dot").write_text(source)
    if render_dot(source, str(OUT / f"{stem}_dot.png")):
        pictures.append(str(OUT / f"{stem}_dot.png"))
print("\nwrote " + ", ".join(pictures)
      + ("" if len(pictures) > 2
         else "  (Graphviz `dot` not found: .dot files written, not rendered)"))
