"""The walk-through's exercises: an unfilled stub fails its check, the worked solution
substituted into the stub passes it, and a plausible mistake is caught.

Each exercise runs as a separate process, as a learner runs it, from a temporary copy
made by ``run_solution.prepare`` (the stub with the regions of ``solutions/`` put in).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "docs" / "walkthrough" / "exercises"
sys.path.insert(0, str(EXERCISES))
from _harness import regions, substitute  # noqa: E402
from run_solution import prepare, run  # noqa: E402

NAMES = sorted(p.stem for p in EXERCISES.glob("ex*.py"))
NEEDS_GXX = {"ex4_tiled_conv"}
# A plausible wrong answer per exercise: (file, text in the solution, what replaces it).
MISTAKES = {
    "ex1_conv_backward": ("ex1_conv_backward.py", "stride] += taps", "stride] = taps"),
    "ex2_maxpool_backward": ("ex2_maxpool_backward.py",
                             "np.add.at(gxpad, (nn, cc, self.win_row, self.win_col), gy)",
                             "gxpad[nn, cc, self.win_row, self.win_col] += gy"),
    "ex3_lrn_backward": ("ex3_lrn_backward.py", "self.beta / self.n)", "self.beta)"),
    "ex4_tiled_conv": ("ex4_tiled_conv.cu", "((k * C + c) * KS + r) * KS + s]",
                       "((k * C + c) * KS + s) * KS + r]"),
    "ex4b_tiled_conv_numba": ("ex4b_tiled_conv_numba.py", "acc[:tk] = 0.0", "pass"),
}


def skip_without_gxx(name):
    if name in NEEDS_GXX and shutil.which("g++") is None:
        pytest.skip("the CPU emulation of CUDA kernels needs g++")


def test_every_exercise_has_a_solution_and_a_known_mistake():
    assert NAMES == ["ex1_conv_backward", "ex2_maxpool_backward", "ex3_lrn_backward",
                     "ex4_tiled_conv", "ex4b_tiled_conv_numba"], NAMES
    for path in [*EXERCISES.glob("ex*.py"), *EXERCISES.glob("ex*.cu")]:
        stub = regions(path.read_text())
        if stub:
            solution = regions((EXERCISES / "solutions" / path.name).read_text())
            assert set(stub) <= set(solution), path.name
            assert all("raise NotImplementedError" in body or not body.strip()
                       for body in stub.values()), f"{path.name}: a stub region is filled in"
    assert set(MISTAKES) == set(NAMES)


def test_substitute_replaces_named_regions_and_says_what_is_missing():
    stub = "a\n# BEGIN YOUR CODE: f\n    todo\n# END YOUR CODE: f\nb\n"
    sol = "x\n# BEGIN YOUR CODE: f\n    done = 1\n# END YOUR CODE: f\n"
    assert substitute(stub, sol) == "a\n# BEGIN YOUR CODE: f\n    done = 1\n# END YOUR CODE: f\nb\n"
    with pytest.raises(ValueError, match=r"no region\(s\) \['f'\]"):
        substitute(stub, "nothing here")


@pytest.mark.parametrize("name", NAMES)
def test_the_unfilled_stub_fails_its_check(name):
    skip_without_gxx(name)
    done = run(EXERCISES / f"{name}.py")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "FAIL" in out and ("not written yet" in out or "never written" in out), out[-2000:]


@pytest.mark.parametrize("name", NAMES)
def test_the_stub_with_the_worked_solution_passes(name, tmp_path):
    skip_without_gxx(name)
    done = run(prepare(name, tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("PASS"), done.stdout[-2000:]
    assert "FAIL" not in done.stdout


@pytest.mark.parametrize("name", NAMES)
def test_a_plausible_mistake_fails_the_check(name, tmp_path):
    skip_without_gxx(name)
    script = prepare(name, tmp_path)
    file, right, wrong = MISTAKES[name]
    stub = (EXERCISES / file).read_text()
    solution = (EXERCISES / "solutions" / file).read_text()
    assert right in solution, f"{file}: the solution no longer contains {right!r}"
    (tmp_path / file).write_text(substitute(stub, solution.replace(right, wrong)))
    done = run(script)
    assert done.returncode == 1 and "FAIL" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
