"""viz.graph: the graph behind a result as DOT, as a Pillow picture, with values and gradients.

Tested on small graphs whose nodes, edges, values and gradients are known by hand.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import layers as L
from engine import Tensor
from models.googlenet import Inception
from viz import build_graph, draw_graph, gradients, render_dot, to_dot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG file"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.width >= 100 and img.height >= 100, f"{path.name} is only {img.size}"


NODE = re.compile(r'^\s*(n\d+) \[(.*), label="((?:[^"\\]|\\.)*)"\];$')
EDGE = re.compile(r"^\s*(n\d+) -> (n\d+);$")


def parse_dot(source: str):
    """{key: (attributes, label lines)} and [(source, target)] from to_dot's output."""
    nodes, edges = {}, []
    for line in source.splitlines():
        if m := NODE.match(line):
            nodes[m.group(1)] = (m.group(2), m.group(3).split("\\n"))
        elif m := EDGE.match(line):
            edges.append((m.group(1), m.group(2)))
    return nodes, edges


def keys_where(nodes, first_line):
    return [k for k, (_, lines) in nodes.items() if lines[0] == first_line]


def tiny_graph():
    """e = (a*b + a) * (a*b + a) with named leaves a (2,) and b (2,)."""
    a = Tensor(np.array([2.0, 1.0]), requires_grad=True, name="a")
    b = Tensor(np.array([3.0, 4.0]), requires_grad=True, name="b")
    c = a * b
    d = c + a
    return a, b, d * d


def test_to_dot_of_a_tiny_graph_has_its_nodes_and_edges():
    a, b, e = tiny_graph()
    source = to_dot(e, name="tiny")
    assert source.startswith('digraph "tiny" {') and source.rstrip().endswith("}")
    nodes, edges = parse_dot(source)
    (ka,), (kb,) = keys_where(nodes, "a"), keys_where(nodes, "b")
    muls, (add,) = keys_where(nodes, "Mul"), keys_where(nodes, "Add")
    (out,) = keys_where(nodes, "output")
    assert len(muls) == 2 and len(nodes) == 6
    first, last = sorted(muls, key=lambda k: int(k[1:]))
    assert "shape=ellipse" in nodes[ka][0] and "shape=box" in nodes[add][0]
    assert nodes[ka][1] == ["a", "2"] and nodes[first][1] == ["Mul", "2"]   # op and output shape
    assert sorted(edges) == sorted([(ka, first), (kb, first), (first, add), (ka, add),
                                    (add, last), (add, last), (last, out)])


def test_shared_inputs_appear_once():
    x = Tensor(np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32),
               requires_grad=True, name="x")
    block = Inception(8, 4, 4, 6, 2, 3, 3)
    nodes, edges = parse_dot(to_dot(block(x), names=block))
    (kx,) = keys_where(nodes, "x")
    # The branches read one node: the three 1x1 convolutions as one op, and the pool.
    assert sum(src == kx for src, _ in edges) == 2
    labels = [lines for _, lines in nodes.values()]
    assert ["conv_1x1.weight", "4x8x1x1"] in labels       # parameters named after the module
    assert ["conv_1x1 + conv_3x3_reduce + conv_5x5_reduce", "StackedConv1x1 3 x 1x1/1 +ReLU",
            "1x4x6x6 | 1x4x6x6 | 1x2x6x6"] in labels
    assert ["conv_3x3", "Conv2d 3x3/1 pad 1 +ReLU", "1x6x6x6"] in labels
    assert ["Concat", "1x16x6x6"] in labels
    without, _ = parse_dot(to_dot(block(x), names=block, params=False))
    assert len(without) == len(nodes) - 12                # six convolutions, weight + bias each


def test_graph_nodes_are_topological_and_intermediates_can_be_shown():
    a, b, e = tiny_graph()
    graph = build_graph(e, intermediates=True)
    order = {node.key: i for i, node in enumerate(graph.nodes)}
    assert all(order[src] < order[dst] for src, dst in graph.edges)
    assert sum(node.kind == "tensor" for node in graph.nodes) == 2   # c and d; e is the output


def test_dot_labels_are_escaped_and_scalar_constants_are_nodes():
    x = Tensor(np.ones(3), requires_grad=True, name='say "hi" \\ bye')
    source = to_dot(x * 0.5, name='a "quoted" name')
    assert 'digraph "a \\"quoted\\" name" {' in source
    assert 'label="say \\"hi\\" \\\\ bye\\n3"' in source
    nodes, edges = parse_dot(source)
    assert len(nodes) == 4 and len(edges) == 3            # x, 0.5, Mul, output


def test_export_after_backward_says_the_graph_is_gone():
    a, b, e = tiny_graph()
    e.sum().backward()
    with pytest.raises(ValueError, match="released by backward"):
        to_dot(e)


def test_a_leaf_alone_is_one_node():
    nodes, edges = parse_dot(to_dot(Tensor(np.zeros((2, 3)), name="w")))
    assert [lines for _, lines in nodes.values()] == [["w", "2x3"]] and edges == []


def test_render_returns_false_without_dot(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    png = tmp_path / "g.png"
    assert render_dot(to_dot(tiny_graph()[2]), str(png)) is False
    assert not png.exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_render_writes_a_png_with_dot(tmp_path):
    png = tmp_path / "g.png"
    assert render_dot(to_dot(tiny_graph()[2]), str(png)) is True
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert render_dot("this is not DOT", str(tmp_path / "bad.png")) is False


def test_draw_png_writes_a_picture(tmp_path):
    x = Tensor(np.ones((1, 4, 5, 5), np.float32), requires_grad=True, name="x")
    w = Tensor(np.ones((3, 4, 3, 3), np.float32), requires_grad=True, name="w")
    y = L.concat([L.conv2d(x, w, pad=1, relu=True), L.max_pool2d(x, 3, 1, 1)])
    path = draw_graph(y, png_path=str(tmp_path / "sub" / "g.png"), title="conv and pool")
    assert_png(Path(path))


def test_values_and_gradients_on_the_nodes_match_the_chain_rule_by_hand():
    a = Tensor(np.array([2.0]), requires_grad=True, name="a")
    b = Tensor(np.array([3.0]), requires_grad=True, name="b")
    c = a * b
    d = c + a
    e = d * d          # c = 6, d = 8, e = 64; de/dd = 16 = de/dc, de/da = 16 * 4, de/db = 32
    nodes, edges = parse_dot(to_dot(e, values={"a": a, "b": b, "c": c, "d": d, "e": e}))
    labels = {lines[0]: lines[1:] for _, lines in nodes.values()}
    assert labels["a"] == ["data 2", "grad 64"] and labels["b"] == ["data 3", "grad 32"]
    assert labels["c"] == ["data 6", "grad 16"] and labels["d"] == ["data 8", "grad 16"]
    assert labels["e"] == ["data 64", "grad 1"]
    assert labels["Mul"] == [] and labels["Add"] == []     # op boxes carry no shape line
    assert len(nodes) == 8 and len(edges) == 9
    e.backward()                                          # the picture left the graph intact
    assert a.grad[0] == 64 and b.grad[0] == 32


def test_gradients_of_an_array_graph_match_finite_differences():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((1, 2, 5, 5)), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    h = L.conv2d(x, w, pad=1, relu=True)
    y = L.max_pool2d(h, 3, 2).sum()
    g = gradients(y)
    gh = g[("out", id(h.creator), 0)]
    eps, idx = 1e-6, (0, 1, 2, 3)

    def total(xd):
        return L.max_pool2d(L.conv2d(xd, w.data, pad=1, relu=True), 3, 2).sum().item()

    bump = np.zeros_like(x.data)
    bump[idx] = eps
    numeric = (total(x.data + bump) - total(x.data - bump)) / (2 * eps)
    assert abs(g[("leaf", id(x))][idx] - numeric) < 1e-6
    assert gh.shape == h.shape and np.all(gh >= 0)        # pool sends ones to winners only


def test_draw_graph_with_values_writes_a_picture(tmp_path):
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True, name="a")
    out = (a * a).sum()
    path = draw_graph(out, png_path=str(tmp_path / "v.png"), values={"a": a, "out": out},
                      title="a long title that is wider than the two nodes below it")
    assert_png(Path(path))
    with pytest.raises(TypeError, match="values must map names to Tensors"):
        to_dot(out, values={"a": a.data})
