"""Pictures of a computation: the creator graph as Graphviz DOT, or drawn with Pillow.

Every tensor computed with gradients on remembers its ``creator`` (a ``Function``) and
every function its ``inputs``, so the graph behind a result can be walked back from it:

    y = model(x)
    source = to_dot(y, names=model)                 # Graphviz DOT text
    render(source, "model.png")                      # False when Graphviz is not installed
    draw_png(y, png_path="model_pil.png", names=model)   # always works (Pillow only)

(``viz`` exports them as ``to_dot``, ``render_dot`` and ``draw_graph``.)

In the picture, functions are boxes (op name, settings such as kernel size, output shape)
and tensors are ellipses (name or role, shape). Only the tensors that enter the graph from
outside (inputs, parameters, constants) and the outputs asked for are drawn as ellipses by
default; an intermediate result is the edge between its creator and its consumer, and the
creator's box already shows its shape. ``intermediates=True`` draws those as ellipses too.
A tensor used by several functions (an Inception input feeds four branches) is one node.

``backward`` releases the graph as it walks it (each function forgets its inputs), so export
*before* calling backward, or call ``backward(retain_graph=True)``.

Values and gradients on the nodes (micrograd's picture): pass the tensors you hold as
``tensors={"a": a, "c": c, ...}`` and every one of them becomes a node showing its name, its
value and its gradient. The engine frees the gradients of intermediate results as soon as
they are used, so :func:`gradients` computes them for the picture by walking the graph once
in reverse topological order, as ``engine.tensor.run_backward`` does, but keeping each one:

    e = (a * b + a) * (a * b + a)
    draw_png(e, png_path="e.png", tensors={"a": a, "b": b, "e": e})   # values and gradients
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

import numpy as np

from engine.backend import get_array_module, to_numpy
from engine.module import Parameter
from engine.tensor import Function, Tensor

__all__ = ["Graph", "build_graph", "gradients", "layout", "to_dot", "render", "draw_png",
           "draw_network"]


# ------------------------------------------------------------------ the graph as data
@dataclass
class Node:
    key: str              # stable id: "n0", "n1", ... in discovery order
    kind: str             # "function", "input", "parameter", "constant", "output", "tensor"
    lines: list           # label, one entry per line
    op: str = ""          # the function's class name (functions only)


@dataclass
class Graph:
    """Nodes in topological order (every edge goes from an earlier node to a later one)."""
    nodes: list = field(default_factory=list)
    edges: list = field(default_factory=list)   # (source key, target key)


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape) if len(shape) else "scalar"


def _param_names(names) -> dict:
    """{id(tensor): name} from a Module, a dict, or None."""
    if names is None:
        return {}
    if hasattr(names, "named_parameters"):
        return {id(p): n for n, p in names.named_parameters()}
    return dict(names)


def _op_name(f: Function) -> str:
    name = type(f).__name__
    return name[:-len("Function")] if name.endswith("Function") and len(name) > 8 else name


def _input_edges(f: Function) -> list:
    """What feeds ``f``, one entry per input: ("function", creator, output index, shape),
    ("leaf", tensor, None, shape) or ("constant", None, None, shape).

    The graph stores an intermediate input as (creator, output index), a leaf that wants a
    gradient as the tensor itself, and an input that wants none (an image batch, a scalar)
    as None with only its shape kept. Inputs held as Tensors are read the same way.
    """
    shapes = getattr(f, "input_shapes", None)
    edges = []
    for i, entry in enumerate(f.inputs):
        if isinstance(entry, Tensor):
            shape = entry.shape
            if entry.creator is not None:
                edges.append(("function", entry.creator, getattr(entry, "_output_index", 0), shape))
            elif entry.requires_grad:
                edges.append(("leaf", entry, None, shape))
            else:
                edges.append(("constant", entry, None, shape))
        elif isinstance(entry, tuple):
            edges.append(("function", entry[0], entry[1], shapes[i] if shapes else None))
        else:
            edges.append(("constant", None, None, shapes[i] if shapes else ()))
    return edges


def _settings(f: Function, shapes) -> str:
    """A few words on the op's settings, read from the attributes the layers use."""
    d = f.__dict__
    if "stride" in d and "pad" in d and len(shapes) >= 2 and len(shapes[1]) == 4:  # convolution
        kh, kw = shapes[1][2:]
        text = f"{kh}x{kw}/{d['stride']}" + (f" pad {d['pad']}" if d["pad"] else "")
        return text + (" +ReLU" if d.get("relu") else "")
    if "count" in d and "sizes" in d:                             # stacked 1x1 convolutions
        return f"{d['count']} x 1x1/1" + (" +ReLU" if d.get("relu") else "")
    if "k" in d and "s" in d:                                     # pooling
        return f"{d['k']}x{d['k']}/{d['s']}" + (f" pad {d['pad']}" if d.get("pad") else "")
    if "size" in d and "beta" in d:                               # LRN
        return f"size {d['size']}"
    return ""


def _scope(edges, names: dict) -> str:
    """The module path of a function that uses a named parameter ("inception_3a.conv_1x1"), or
    the paths joined by " + " when it uses several modules' parameters."""
    scopes = []
    for kind, obj, _, _ in edges:
        name = names.get(id(obj)) if kind == "leaf" else None
        if name:
            scope = name.rsplit(".", 1)[0] if "." in name else name
            if scope not in scopes:
                scopes.append(scope)
    return " + ".join(scopes)


def _walk(roots) -> list:
    """Functions reachable from ``roots``, inputs before consumers (iterative post-order DFS)."""
    order, seen = [], set()
    for root in roots:
        if root.creator is None:
            continue
        stack = [(root.creator, False)]
        while stack:
            f, expanded = stack.pop()
            if expanded:
                order.append(f)
                continue
            if id(f) in seen:
                continue
            if not hasattr(f, "inputs"):
                raise ValueError(
                    "graph export: this graph was released by backward(); export it before "
                    "calling backward, or call backward(retain_graph=True)")
            seen.add(id(f))
            stack.append((f, True))
            for kind, creator, _, _ in reversed(_input_edges(f)):
                if kind == "function" and id(creator) not in seen:
                    stack.append((creator, False))
    return order


def gradients(*outputs: Tensor, grad=None) -> dict:
    """d(output)/d(every tensor in the graph), without touching any ``.grad`` or the graph.

    Returns ``{("out", id(function), output index): array, ("leaf", id(tensor)): array}``.
    ``grad`` is the gradient arriving at the (single) output, ones by default. The walk is
    ``run_backward``'s: functions newest first (reverse topological order), each called once
    with the summed gradients of its outputs; but every intermediate gradient is kept and no
    function is released, so ``backward()`` can still be called afterwards.
    """
    if len(outputs) != 1:
        raise ValueError("gradients: pass exactly one output tensor (e.g. the loss)")
    (out,) = outputs
    xp = get_array_module(out.data)
    first = xp.ones(out.shape, out.dtype) if grad is None else xp.asarray(grad)
    if out.creator is None:
        return {("leaf", id(out)): first}
    grads = {("out", id(out.creator), getattr(out, "_output_index", 0)): first}
    for f in reversed(_walk([out])):
        gys = [grads.get(("out", id(f), i)) for i in range(len(f.output_specs))]
        gys = [g if g is not None else xp.zeros(shape, dtype)
               for g, (shape, dtype) in zip(gys, f.output_specs)]
        gxs = f.backward(*gys)
        gxs = gxs if isinstance(gxs, tuple) else (gxs,)
        for (kind, obj, index, _), g in zip(_input_edges(f), gxs):
            if g is None or kind == "constant":
                continue
            key = ("out", id(obj), index) if kind == "function" else ("leaf", id(obj))
            grads[key] = grads[key] + g if key in grads else g
    return grads


def _fmt(a) -> str:
    """A value for a label: the number itself when small, else its mean and largest magnitude."""
    a = np.asarray(to_numpy(a), dtype=np.float64)
    if a.size == 1:
        return f"{float(a.reshape(-1)[0]):.4g}"
    if a.size <= 3:
        return "[" + " ".join(f"{v:.3g}" for v in a.reshape(-1)) + "]"
    return f"mean {a.mean():.3g}, max|.| {np.abs(a).max():.3g}"


def build_graph(*tensors: Tensor, names=None, params: bool = True,
                intermediates: bool = False, values: dict | None = None) -> Graph:
    """The graph that computed ``tensors``, as nodes and edges (see the module docstring).

    ``names``: a ``Module`` (its parameters are labelled by their dotted names) or a dict
    ``{id(tensor): "conv1.weight"}``. ``params=False`` leaves parameter nodes out (the
    function boxes still say which module they belong to).

    An input that needs no gradient is not kept by the graph (only its shape is), so each
    use of it is a node of its own; create it with ``requires_grad=True`` to see one node.

    ``values``: ``{"name": tensor}`` of tensors to label with their name, value and gradient
    (computed by :func:`gradients` from the first output); it implies ``intermediates=True``.
    """
    roots = list(tensors)
    annotate = {}                       # node identity -> (name, value, gradient)
    if values:
        if not all(isinstance(t, Tensor) for t in values.values()):
            raise TypeError("graph export: values must map names to Tensors")
        intermediates = True
        grads = gradients(roots[0])
        for label, t in values.items():
            ident = (("out", id(t.creator), getattr(t, "_output_index", 0))
                     if t.creator is not None else ("leaf", id(t)))
            annotate[ident] = (label, t.numpy(), grads.get(ident))
    if not all(isinstance(t, Tensor) for t in roots):
        raise TypeError("graph export: pass the output Tensors (e.g. the loss or the logits)")
    names = _param_names(names)
    graph = Graph()
    keys: dict = {}    # ("leaf", id) / ("out", id(creator), index) / ("fn", id) -> node key

    def add(ident, kind, lines, op=""):
        key = f"n{len(graph.nodes)}"
        if ident in annotate:
            label, value, grad = annotate[ident]
            lines = [label, "data " + _fmt(value),
                     "grad " + ("-" if grad is None else _fmt(grad))]
        if ident is not None:
            keys[ident] = key
        graph.nodes.append(Node(key, kind, lines, op))
        return key

    def leaf(t: Tensor) -> str:
        ident = ("leaf", id(t))
        if ident in keys:
            return keys[ident]
        name = names.get(id(t)) or t.name
        if isinstance(t, Parameter):
            return add(ident, "parameter", [name or "parameter", _shape(t.shape)])
        if name:
            return add(ident, "input", [name, _shape(t.shape)])
        return add(ident, "input", ["leaf" if t.requires_grad else "input", _shape(t.shape)])

    def constant(t, shape) -> str:
        """An input wanting no gradient: a scalar (by value when known) or an array."""
        if t is not None and t.size > 1:
            return leaf(t)
        if t is not None:
            ident = ("leaf", id(t))
            return keys.get(ident) or add(ident, "constant",
                                          [f"{float(t.numpy().reshape(-1)[0]):g}"])
        if shape is None or int(np.prod(shape)) <= 1:
            return add(None, "constant", ["constant"])
        return add(None, "input", ["input", _shape(shape)])

    for f in _walk(roots):
        edges = _input_edges(f)
        sources = []
        # Nodes feeding f first, so that the node list stays topological.
        for kind, obj, index, shape in edges:
            if kind == "leaf":
                show = params or not isinstance(obj, Parameter)
                sources.append(leaf(obj) if show else None)
            elif kind == "constant":
                sources.append(constant(obj, shape))
            elif intermediates:
                ident = ("out", id(obj), index)
                if ident not in keys:
                    out_shape = obj.output_specs[index][0]
                    add(ident, "tensor", [_shape(out_shape)])
                    graph.edges.append((keys[("fn", id(obj))], keys[ident]))
                sources.append(keys[ident])
            else:
                sources.append(keys[("fn", id(obj))])
        outs = [_shape(spec[0]) for spec in f.output_specs]
        shapes = [e[3] for e in edges]
        scope, settings = _scope(edges, names), _settings(f, shapes)
        lines = ([scope] if scope else []) + [(_op_name(f) + " " + settings).strip()]
        if not annotate:                 # with values, the tensor nodes carry the shapes
            lines.append(" | ".join(outs))
        key = add(("fn", id(f)), "function", lines, type(f).__name__)
        graph.edges += [(src, key) for src in sources if src is not None]
    for t in roots:
        if t.creator is None:
            leaf(t)
            continue
        ident = ("out", id(t.creator), getattr(t, "_output_index", 0))
        if ident not in keys:
            add(ident, "output", [t.name or "output", _shape(t.shape)])
            graph.edges.append((keys[("fn", id(t.creator))], keys[ident]))
        else:
            graph.nodes[int(keys[ident][1:])].kind = "output"
    return graph


# ------------------------------------------------------------------------------ DOT
_DOT_STYLE = {
    "function": 'shape=box, style="rounded,filled", fillcolor="{fill}"',
    "input": 'shape=ellipse, style=filled, fillcolor="#ffffff"',
    "parameter": 'shape=ellipse, style=filled, fillcolor="#fff4c2"',
    "constant": 'shape=ellipse, style=filled, fillcolor="#eeeeee"',
    "output": 'shape=ellipse, style=filled, fillcolor="#d9f2d9"',
    "tensor": 'shape=ellipse, style=filled, fillcolor="#f7f7f7"',
}


def _fill(op: str) -> str:
    """One colour per family of op, shared by the DOT and the Pillow pictures."""
    for word, colour in (("Conv", "#cfe2f3"), ("Pool", "#d9ead3"), ("Concat", "#fce5cd"),
                         ("LRN", "#e6d9f2"), ("Linear", "#cfe2f3"), ("ReLU", "#f4cccc"),
                         ("Softmax", "#fff2cc"), ("Dropout", "#eeeeee")):
        if word in op:
            return colour
    return "#eeeeee"


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(*tensors: Tensor, name: str = "graph", names=None, params: bool = True,
           intermediates: bool = False, values: dict | None = None) -> str:
    """Graphviz DOT source of the graph that computed ``tensors`` (top to bottom).

    ``names``: a ``Module`` or ``{id(param): "conv1.weight"}`` to label parameters and to say
    which module each function belongs to. Raises ``ValueError`` if backward already released
    the graph. Render with :func:`render` or ``dot -Tpng graph.dot -o graph.png``.
    """
    graph = build_graph(*tensors, names=names, params=params, intermediates=intermediates,
                        values=values)
    lines = [f'digraph "{_quote(name)}" {{',
             "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=10];',
             '  edge [color="#555555", arrowsize=0.7];']
    for node in graph.nodes:
        style = _DOT_STYLE[node.kind].format(fill=_fill(node.op))
        label = "\\n".join(_quote(line) for line in node.lines if line)
        lines.append(f'  {node.key} [{style}, label="{label}"];')
    for a, b in graph.edges:
        lines.append(f"  {a} -> {b};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_source: str, png_path: str, timeout: float = 60.0) -> bool:
    """Write ``png_path`` with Graphviz's ``dot -Tpng``; True on success.

    Returns False, without raising, when ``dot`` is not on PATH or fails on the input.
    """
    dot = shutil.which("dot")
    if dot is None:
        return False
    os.makedirs(os.path.dirname(os.path.abspath(png_path)) or ".", exist_ok=True)
    try:
        done = subprocess.run([dot, "-Tpng", "-o", png_path], input=dot_source.encode(),
                              capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and os.path.exists(png_path)


# ----------------------------------------------------------------- Pillow drawing
def layout(graph: Graph):
    """Longest-path layering, with a dummy point on every layer a long edge crosses.

    Returns (rows: list of lists of keys, a dummy key being ("d", edge index, layer)),
    and for each edge the list of keys its polyline passes through.
    """
    index = {n.key: i for i, n in enumerate(graph.nodes)}
    layer = {n.key: 0 for n in graph.nodes}
    for a, b in sorted(graph.edges, key=lambda e: index[e[1]]):  # nodes are topological
        layer[b] = max(layer[b], layer[a] + 1)
    # Pull sources (inputs, parameters) down to just above their first consumer.
    for node in graph.nodes:
        outs = [layer[b] for a, b in graph.edges if a == node.key]
        ins = [a for a, b in graph.edges if b == node.key]
        if outs and not ins:
            layer[node.key] = min(outs) - 1
    rows = [[] for _ in range(max(layer.values(), default=0) + 1)]
    for node in graph.nodes:
        rows[layer[node.key]].append(node.key)
    paths = []
    for e, (a, b) in enumerate(graph.edges):
        path = [a]
        for level in range(layer[a] + 1, layer[b]):
            dummy = ("d", e, level)
            rows[level].append(dummy)
            path.append(dummy)
        paths.append(path + [b])
    # A few barycentre sweeps: each point moves towards the mean position of its neighbours
    # in the row above (then below); a stable sort keeps discovery order on ties.
    up, down = {}, {}
    for path in paths:
        for p, q in zip(path, path[1:]):
            down.setdefault(p, []).append(q)
            up.setdefault(q, []).append(p)
    for sweep in range(4):
        order = range(1, len(rows)) if sweep % 2 == 0 else range(len(rows) - 2, -1, -1)
        neighbours = up if sweep % 2 == 0 else down
        for level in order:
            ref = rows[level - 1] if sweep % 2 == 0 else rows[level + 1]
            pos = {k: i for i, k in enumerate(ref)}
            current = {k: i for i, k in enumerate(rows[level])}

            def centre(k, pos=pos, current=current):
                near = [pos[n] for n in neighbours.get(k, []) if n in pos]
                return sum(near) / len(near) if near else current[k]
            rows[level].sort(key=centre)
    return rows, paths


def draw_png(*tensors: Tensor, png_path: str, names=None, params: bool = False,
             title: str | None = None, values: dict | None = None) -> str:
    """Draw the graph with Pillow (boxes and arrows, top to bottom) into ``png_path``.

    A fallback for machines without Graphviz: no edge routing beyond straight segments, so it
    suits module-sized graphs (an Inception module, a few layers), not a whole network.
    Parameters are left out by default (``params=True`` draws them as ellipses).
    ``values={"a": a, ...}`` labels those tensors with their value and gradient.
    """
    from PIL import Image, ImageDraw, ImageFont   # Pillow is a dependency of the project

    graph = build_graph(*tensors, names=names, params=params or bool(values), values=values)
    nodes = {n.key: n for n in graph.nodes}
    rows, paths = layout(graph)

    def font(size):
        try:
            return ImageFont.load_default(size=size)
        except TypeError:             # Pillow without FreeType: a fixed bitmap font
            return ImageFont.load_default()

    text_font, title_font = font(15), font(18)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_box(text, f):
        left, top, right, bottom = probe.textbbox((0, 0), text, font=f)
        return right - left, bottom - top

    line_h = text_box("Ag", text_font)[1] + 5
    box_w = max(text_box(line, text_font)[0] for n in graph.nodes for line in n.lines) + 28
    box_h = max(len(n.lines) for n in graph.nodes) * line_h + 16
    gap_x, gap_y, margin = 26, 46, 24
    title_h = text_box(title, title_font)[1] + 16 if title else 0
    slots = max(len(r) for r in rows)
    width = margin * 2 + slots * box_w + (slots - 1) * gap_x
    if title:
        width = max(width, text_box(title, title_font)[0] + 2 * margin)
    height = margin * 2 + title_h + len(rows) * box_h + (len(rows) - 1) * gap_y

    centre = {}
    for level, row in enumerate(rows):
        row_w = len(row) * box_w + (len(row) - 1) * gap_x
        x0 = (width - row_w) / 2
        y = margin + title_h + level * (box_h + gap_y) + box_h / 2
        for i, key in enumerate(row):
            centre[key] = (x0 + i * (box_w + gap_x) + box_w / 2, y)

    img = Image.new("RGB", (int(width), int(height)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    if title:
        tw, _ = text_box(title, title_font)
        draw.text(((width - tw) / 2, margin / 2), title, font=title_font, fill=(0, 0, 0))

    def half_height(key):
        if isinstance(key, tuple):
            return 0
        n = nodes[key]
        return (len(n.lines) * line_h + 16) / 2

    # Where each edge leaves its source and enters its target: spread along the box's bottom
    # and top edges in the order of the far ends, so that parallel edges stay apart.
    def spread(ends):
        """{key: [(edge index, far x)]} -> {(edge index, key): x offset from the centre}."""
        offsets = {}
        for key, items in ends.items():
            items.sort(key=lambda item: (item[1], item[0]))
            n = len(items)
            for i, (e, _) in enumerate(items):
                offsets[(e, key)] = 0.0 if n == 1 else (i / (n - 1) - 0.5) * box_w * 0.6
        return offsets

    starts, stops = {}, {}
    for e, path in enumerate(paths):
        starts.setdefault(path[0], []).append((e, centre[path[1]][0]))
        stops.setdefault(path[-1], []).append((e, centre[path[-2]][0]))
    start_dx, stop_dx = spread(starts), spread(stops)

    def border(key, dx, side):
        """A point on the bottom (side=+1) or top (side=-1) border, dx from the centre."""
        x, y = centre[key]
        h = half_height(key)
        if nodes[key].kind != "function":          # an ellipse: follow its curve
            h *= max(0.0, 1 - (2 * dx / box_w) ** 2) ** 0.5
        return x + dx, y + side * (h + (0 if side > 0 else 2))

    # Edges first, so boxes sit on top of them.
    edge_colour = (90, 90, 90)
    for e, path in enumerate(paths):
        points = [border(path[0], start_dx[(e, path[0])], +1)]
        points += [centre[key] for key in path[1:-1]]
        points.append(border(path[-1], stop_dx[(e, path[-1])], -1))
        draw.line(points, fill=edge_colour, width=2, joint="curve")
        (x1, y1), (x2, y2) = points[-2], points[-1]
        length = max(1e-6, ((x2 - x1) ** 2 + (y2 - y1) ** 2) ** 0.5)
        ux, uy = (x2 - x1) / length, (y2 - y1) / length
        draw.polygon([(x2, y2), (x2 - 10 * ux + 5 * uy, y2 - 10 * uy - 5 * ux),
                      (x2 - 10 * ux - 5 * uy, y2 - 10 * uy + 5 * ux)], fill=edge_colour)

    for key, node in nodes.items():
        x, y = centre[key]
        h = half_height(key)
        w = box_w / 2
        outline = (60, 60, 60)
        if node.kind == "function":
            fill = tuple(int(_fill(node.op)[i:i + 2], 16) for i in (1, 3, 5))
            draw.rounded_rectangle((x - w, y - h, x + w, y + h), radius=8, fill=fill,
                                   outline=outline, width=2)
        else:
            fill = {"input": (255, 255, 255), "parameter": (255, 244, 194),
                    "output": (217, 242, 217)}.get(node.kind, (240, 240, 240))
            draw.ellipse((x - w, y - h, x + w, y + h), fill=fill, outline=outline, width=2)
        lines = [line for line in node.lines if line]
        top = y - len(lines) * line_h / 2
        for i, line in enumerate(lines):
            tw, _ = text_box(line, text_font)
            bold = node.kind == "function" and i == 0 and len(lines) == 3
            draw.text((x - tw / 2, top + i * line_h + 2), line, font=text_font,
                      fill=(0, 0, 90) if bold else (0, 0, 0))

    os.makedirs(os.path.dirname(os.path.abspath(png_path)) or ".", exist_ok=True)
    img.save(png_path, format="PNG")
    return png_path


# ------------------------------------------------------------- a whole network (matplotlib)
def draw_network(*tensors: Tensor, png_path: str, names=None, title: str | None = None,
                 row_height: float = 0.32, dpi: int = 60) -> str:
    """Draw a whole network's graph top to bottom with matplotlib, like the paper's Figure 3.

    One small coloured box per function (op and settings, no shapes), parameters left out,
    layered by longest path from the input (:func:`layout`), so parallel branches (an
    Inception module's four, an auxiliary head) sit side by side. Meant for networks of
    hundreds of ops, where :func:`draw_png`'s labelled boxes would not fit.
    """
    import matplotlib                         # imported here: only this picture needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    graph = build_graph(*tensors, names=names, params=False)
    rows, paths = layout(graph)
    nodes = {n.key: n for n in graph.nodes}
    width = max(len(r) for r in rows)
    pos = {}
    for level, row in enumerate(rows):
        for i, key in enumerate(row):
            pos[key] = (i - (len(row) - 1) / 2, -level)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * width), row_height * len(rows) + 1))
    for path in paths:
        xs, ys = zip(*(pos[k] for k in path))
        ax.plot(xs, ys, color="#777777", lw=0.6, zorder=1)
    for key, node in nodes.items():
        x, y = pos[key]
        text = node.lines[-2] if node.kind == "function" and len(node.lines) >= 2 else node.lines[0]
        colour = _fill(node.op) if node.kind == "function" else "#d9f2d9"
        ax.add_patch(FancyBboxPatch((x - 0.44, y - 0.3), 0.88, 0.6,
                                    boxstyle="round,pad=0.02", fc=colour, ec="#555555",
                                    lw=0.5, zorder=2))
        ax.text(x, y, text.replace("Function", ""), ha="center", va="center", fontsize=6,
                zorder=3)
    ax.set_xlim(-width / 2 - 0.2, width / 2 + 0.2)
    ax.set_ylim(-len(rows) + 0.4, 0.6)
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)) or ".", exist_ok=True)
    fig.savefig(png_path, dpi=dpi)
    plt.close(fig)
    return png_path
