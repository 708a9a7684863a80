# Step 1. The autograd engine on a tiny graph, and why backward goes in topological order.
#
# Run from the repository root:   python docs/walkthrough/step01_autograd.py
#
# Training a network means asking, for every weight w, "if I nudged w, how would the loss
# change?": the derivative dL/dw. GoogLeNet trains 13 million weights (7 million, plus 6 in
# its training-only auxiliary heads). Finding each derivative separately would cost 13 million
# forward passes; reverse-mode differentiation ("backprop") gets all of them at once, for
# about the price of two more forward passes. This step shows how, first on a toy engine
# written here in twenty lines, then on the project's engine (engine/tensor.py).
#
# The idea. A computation is a graph: values flow from inputs through operations to a result.
# If every operation knows its *local* derivatives (for z = x * y: dz/dx = y, dz/dy = x), the
# chain rule gives the derivative of the result with respect to anything upstream:
#
#     dL/dx = sum over every consumer z of x:  dL/dz * dz/dx
#
# That sum is the whole story of this step. A value used by several operations (in GoogLeNet,
# the input of every Inception module feeds four branches) receives one contribution per
# consumer, and its own gradient is complete only when *all* of them have arrived.
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:           # run as a script: make engine/, layers/... importable
    sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("WALKTHROUGH_OUT") or ROOT / "docs" / "walkthrough" / "out")
OUT.mkdir(parents=True, exist_ok=True)

import numpy as np  # noqa: E402

from engine import Profiler, Tensor, no_grad  # noqa: E402
from viz import draw_graph, gradients, render_dot, to_dot  # noqa: E402

# ---------------------------------------------------------------------------------------
# A toy engine over Python floats. A Node remembers its value, the nodes it was computed
# from (its parents) and the local derivative with respect to each parent. Its generation
# is one more than its newest parent's: inputs are generation 0, and every node comes after
# everything it was computed from.


class Node:
    def __init__(self, value, parents=(), local_grads=(), op="input"):
        self.value, self.parents, self.local_grads, self.op = value, parents, local_grads, op
        self.grad = 0.0
        self.generation = 1 + max((p.generation for p in parents), default=-1)


def add(a, b):
    return Node(a.value + b.value, (a, b), (1.0, 1.0), "add")


def mul(a, b):
    return Node(a.value * b.value, (a, b), (b.value, a.value), "mul")


# The test function: repeat x <- x + x*x a few times. Each round uses x twice, once directly
# by the add and once through the mul, so each round is a small "diamond" like an Inception
# module's fan-out and join. The exact derivative is easy: each round multiplies it by
# d(x + x^2)/dx = 1 + 2x.
DEPTH, X0 = 12, 0.05


def build(x0):
    x = Node(x0)
    y = x
    for _ in range(DEPTH):
        y = add(y, mul(y, y))
    return x, y


def exact_derivative(x0):
    d, v = 1.0, x0
    for _ in range(DEPTH):
        d *= 1 + 2 * v
        v = v + v * v
    return d


# Strategy A: push every contribution upstream the moment it is produced. Correct (the chain
# rule is linear, so the pieces add up), but a node is visited once per *path* from the
# output. Each round offers three paths back to its input (directly through the add, and
# through either factor of the mul), so the visits grow as 3^DEPTH. Through GoogLeNet's
# nine Inception modules, four branches each, the stem would be visited 4^9 = 262144 times.
def backward_every_path(out):
    visits = 0

    def push(node, g):
        nonlocal visits
        visits += 1
        node.grad += g
        for parent, local in zip(node.parents, node.local_grads):
            push(parent, g * local)

    push(out, 1.0)
    return visits


# Strategy B: visit each node once, in the order it is first reached walking back from the
# output (breadth first). Cheap, but wrong: x is reached from the add one step before the
# mul has delivered its share, so x passes on an incomplete gradient.
def backward_first_reached(out):
    out.grad, queue, done, visits = 1.0, [out], set(), 0
    while queue:
        node = queue.pop(0)
        if id(node) in done:
            continue
        done.add(id(node))
        visits += 1
        for parent, local in zip(node.parents, node.local_grads):
            parent.grad += node.grad * local
            queue.append(parent)
    return visits


# Strategy C, what the engine does: visit each node once, newest generation first. Every
# consumer of a node has a higher generation than the node, so by the time a node is
# visited all its consumers have been, and its gradient is complete. That ordering is a
# topological order of the graph, reversed.
def backward_topological(out):
    nodes, stack, seen = [], [out], set()
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            nodes.append(node)
            stack.extend(node.parents)
    out.grad = 1.0
    for node in sorted(nodes, key=lambda n: -n.generation):
        for parent, local in zip(node.parents, node.local_grads):
            parent.grad += node.grad * local
    return len(nodes)


print("Toy engine: y = (x + x^2) applied", DEPTH, "times, x =", X0)
print(f"  exact dy/dx (chain rule by hand)       {exact_derivative(X0):.12f}")
for name, strategy in (("A: push along every path", backward_every_path),
                       ("B: first reached, once each", backward_first_reached),
                       ("C: reverse topological order", backward_topological)):
    x, y = build(X0)
    visits = strategy(y)
    print(f"  {name:<38} {x.grad:.12f}   node visits: {visits}")
    right = abs(x.grad - exact_derivative(X0)) < 1e-9
    # A: T(k) = 3 T(k-1) + 2 visits (add, mul, and three pushes into round k-1), so
    # T = 2 * 3^DEPTH - 1; B and C visit each of the 2 * DEPTH + 1 nodes once.
    assert right == (strategy is not backward_first_reached), name
    assert visits == (2 * 3 ** DEPTH - 1 if strategy is backward_every_path
                      else 2 * DEPTH + 1), (name, visits)
print("  -> A is right but its visits grow as 3^depth; B is cheap but wrong; C is right and\n"
      "     visits each node once.\n")

# ---------------------------------------------------------------------------------------
# The project's engine does strategy C on arrays. A Tensor wraps a NumPy (or CuPy) array;
# calling a Function (engine.ops.Mul, layers.conv.Conv2dFunction, ...) runs its forward on
# the arrays and, if any input requires a gradient, records itself as the output's
# `creator` with generation = max(input generations) + 1. Tensor.backward() then pops
# functions from a max-heap keyed by generation and hands each one the summed gradient of
# its outputs (engine/tensor.py, run_backward).

x = Tensor(np.array([X0]), requires_grad=True, name="x")     # float64, 1 element
y = x
for _ in range(DEPTH):
    y = y + y * y
print("Project engine, the same function:")
print(f"  y.creator = {type(y.creator).__name__}, y.generation = {y.generation}, "
      f"x.generation = {x.generation}")
with Profiler() as prof:          # counts (and times) every backward call
    y.backward()
calls = sum(r.phase == "backward" for r in prof.records)
print(f"  x.grad = {x.grad[0]:.12f}  (exact {exact_derivative(X0):.12f}), "
      f"{calls} function backward calls for {2 * DEPTH} functions\n")
assert abs(x.grad[0] - exact_derivative(X0)) < 1e-12
assert calls == 2 * DEPTH

# ---------------------------------------------------------------------------------------
# A tiny graph to look at: e = (a*b + a)^2 with a = 2, b = 3. By hand: c = a*b = 6,
# d = c + a = 8, e = d*d = 64; de/dd = 2d = 16, so de/da = 16 * (b + 1) = 64 (a is used
# twice: by the mul and by the add) and de/db = 16 * a = 32.
#
# viz.to_dot writes the graph in Graphviz's DOT language: functions as boxes, tensors
# as ellipses. `dot -Tpng` turns it into a picture when Graphviz is installed; viz also
# draws a picture with Pillow, which always works. Passing the tensors we hold as
# `values=` puts each one's value and gradient on its node, as micrograd draws it: read
# the gradients from the bottom up and check each against the chain rule above (d's 16
# reaches c unchanged through the add; a collects 16 * 3 from the mul and 16 from the add).
# The engine itself frees intermediate gradients once used, so viz computes them for the
# picture with the same reverse walk. Export *before* backward: backward releases the
# graph as it goes, freeing what each function kept for it.

a = Tensor(np.array([2.0]), requires_grad=True, name="a")
b = Tensor(np.array([3.0]), requires_grad=True, name="b")
c = a * b
d = c + a
e = d * d
for name, t in (("a", a), ("b", b), ("c", c), ("d", d), ("e", e)):
    creator = type(t.creator).__name__ if t.creator is not None else "none (a leaf)"
    print(f"  {name} = {t.data[0]:4g}   generation {t.generation}   creator {creator}")

held = {"a": a, "b": b, "c": c, "d": d, "e": e}
picture_grads = gradients(e)
by_hand = {"a": 64.0, "b": 32.0, "c": 16.0, "d": 16.0, "e": 1.0}
for name, t in held.items():
    ident = (("out", id(t.creator), 0) if t.creator is not None else ("leaf", id(t)))
    assert picture_grads[ident][0] == by_hand[name], (name, picture_grads[ident])
print("  gradients on the picture (computed by viz.gradients): "
      + ", ".join(f"de/d{k} = {v:g}" for k, v in by_hand.items()) + "  (all as by hand)")
dot_source = to_dot(e, name="step01", values=held)
(OUT / "step01_graph.dot").write_text(dot_source)
draw_graph(e, png_path=str(OUT / "step01_graph.png"), values=held,
           title="e = (a*b + a)^2: values and gradients")
rendered = render_dot(dot_source, str(OUT / "step01_graph_dot.png"))
print(f"\nWrote {OUT / 'step01_graph.dot'} and {OUT / 'step01_graph.png'}"
      + (f" and {OUT / 'step01_graph_dot.png'} (Graphviz)" if rendered
         else " (Graphviz `dot` not found: the DOT file was not rendered)"))

e.backward()
print(f"\ne.backward():  de/da = {a.grad[0]:g} (expected 64),  de/db = {b.grad[0]:g} (expected 32)")
assert a.grad[0] == 64 and b.grad[0] == 32

# The graph is gone now: a second backward (or a DOT export) says so instead of silently
# returning wrong numbers. Pass retain_graph=True to the first backward to keep it.
try:
    e.backward()
except RuntimeError as err:
    print(f"second backward: RuntimeError: {err}")

# Inference does not need any of this bookkeeping: under no_grad() functions record
# nothing, so nothing is kept alive for a backward that will never come.
with no_grad():
    f = a * b
print(f"under no_grad(): f.creator = {f.creator}, f.requires_grad = {f.requires_grad}")
