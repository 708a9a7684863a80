"""The walk-through (docs/walkthrough/) runs end to end.

Every step is run as a separate process, exactly as a reader runs it, with its pictures
written to a temporary folder; a step that breaks, or stops writing a picture it promises,
fails here. The graph export is tested on small graphs whose nodes and edges are known.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
WALKTHROUGH = ROOT / "docs" / "walkthrough"
STEPS = sorted(WALKTHROUGH.glob("step[0-9][0-9]_*.py"))

# Pictures each step always writes (Pillow only), and those it renders when Graphviz is there.
PICTURES = {
    "step01_autograd.py": ["step01_graph.png"],
    "step02_convolution.py": ["step02_im2col.png"],
    "step03_conv_backward.py": ["step03_gradcheck_h.png"],
    "step05_inception.py": ["step05_inception.png", "step05_naive_inception.png"],
    "step06_googlenet.py": ["step06_googlenet.png"],
    "step07_training.py": ["step07_curves.png", "step07_conv1_filters.png",
                           "step07_feature_maps.png"],
    "step08_profile_and_kernels.py": ["step08_roofline.png"],
    "step09_lineage.py": ["step09_lineage.png"],
}
DOT_PICTURES = {
    "step01_autograd.py": ["step01_graph_dot.png"],
    "step05_inception.py": ["step05_inception_dot.png", "step05_naive_inception_dot.png"],
}
DEFAULT_TIMEOUT_S = 120    # every step takes seconds; this leaves room for a busy machine
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
def test_the_walkthrough_has_numbered_steps_and_a_readme_listing_them():
    assert len(STEPS) >= 9, STEPS
    assert [p.name[:6] for p in STEPS] == [f"step{i:02d}" for i in range(1, len(STEPS) + 1)], STEPS
    readme = (WALKTHROUGH / "README.md").read_text(encoding="utf-8")
    for step in STEPS:
        assert step.name in readme, f"docs/walkthrough/README.md does not mention {step.name}"
    top = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/walkthrough" in top, "the top-level README does not link to the walk-through"


@pytest.mark.parametrize("step", STEPS, ids=lambda p: p.stem)
def test_step_runs_and_writes_its_pictures(step, tmp_path):
    done = run_step([str(step.relative_to(ROOT))], tmp_path, DEFAULT_TIMEOUT_S)
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
