"""The walk-through (docs/walkthrough/) runs end to end, and engine.graph exports graphs.

Every step is run as a separate process, exactly as a reader runs it, with its pictures
written to a temporary folder; a step that breaks, or stops writing a picture it promises,
fails here. The graph export is tested on small graphs whose nodes and edges are known.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import layers as L
from engine import Tensor, draw_graph, render_dot, to_dot
from engine.graph import build_graph
from models.googlenet import Inception

ROOT = Path(__file__).resolve().parents[1]
WALKTHROUGH = ROOT / "docs" / "walkthrough"
STEPS = sorted(WALKTHROUGH.glob("step[0-9][0-9]_*.py"))

# Pictures each step always writes (Pillow only), and those it renders when Graphviz is there.
PICTURES = {
    "step01_autograd.py": ["step01_graph.png"],
    "step05_inception.py": ["step05_inception.png", "step05_naive_inception.png"],
    "step07_training.py": ["step07_curves.png", "step07_conv1_filters.png",
                           "step07_feature_maps.png"],
}
DOT_PICTURES = {
    "step01_autograd.py": ["step01_graph_dot.png"],
    "step05_inception.py": ["step05_inception_dot.png", "step05_naive_inception_dot.png"],
}
TIMEOUT_S = {"step07_training.py": 300}   # the training run; every other step takes seconds
DEFAULT_TIMEOUT_S = 120
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG file"
    with Image.open(path) as img:
        img.verify()                                 # decodes the chunks, checks the CRCs
    with Image.open(path) as img:
        assert img.width >= 100 and img.height >= 100, f"{path.name} is only {img.size}"


def run_step(args, out_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["WALKTHROUGH_OUT"] = str(out_dir)
    # Multi-threaded BLAS spin-waits, and becomes many times slower when the machine's few
    # cores are shared with other jobs; one thread keeps every step's time predictable.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------------------ the steps
def test_the_walkthrough_has_eight_numbered_steps_and_a_readme_listing_them():
    assert [p.name[:6] for p in STEPS] == [f"step{i:02d}" for i in range(1, 9)], STEPS
    readme = (WALKTHROUGH / "README.md").read_text(encoding="utf-8")
    for step in STEPS:
        assert step.name in readme, f"docs/walkthrough/README.md does not mention {step.name}"
    top = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/walkthrough" in top, "the top-level README does not link to the walk-through"


@pytest.mark.parametrize("step", STEPS, ids=lambda p: p.stem)
def test_step_runs_and_writes_its_pictures(step, tmp_path):
    timeout = TIMEOUT_S.get(step.name, DEFAULT_TIMEOUT_S)
    done = run_step([str(step.relative_to(ROOT))], tmp_path, timeout)
    assert done.returncode == 0, (f"{step.name} exited with {done.returncode}\n"
                                  f"--- stdout (end) ---\n{done.stdout[-3000:]}\n"
                                  f"--- stderr (end) ---\n{done.stderr[-3000:]}")
    assert done.stdout.strip(), f"{step.name} printed nothing"
    for name in PICTURES.get(step.name, []):
        assert_png(tmp_path / name)
    for name in DOT_PICTURES.get(step.name, []):
        if shutil.which("dot"):
            assert_png(tmp_path / name)
        else:
            assert not (tmp_path / name).exists()


def test_a_step_also_runs_as_a_module(tmp_path):
    done = run_step(["-m", "docs.walkthrough.step01_autograd"], tmp_path, DEFAULT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_png(tmp_path / "step01_graph.png")


# ------------------------------------------------------------------------ engine.graph
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
    assert sum(src == kx for src, _ in edges) == 4        # the four branches read one node
    labels = [lines for _, lines in nodes.values()]
    assert ["conv_1x1.weight", "4x8x1x1"] in labels       # parameters named after the module
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
