"""Run an exercise with its worked solution substituted into the stub.

    python docs/walkthrough/exercises/run_solution.py ex1_conv_backward

Copies the stub (and its .cu file, if any) into a temporary folder with every
``BEGIN YOUR CODE`` region replaced from ``solutions/``, runs it, and exits with its status.
Read the solution after trying: ``solutions/<name>.py`` (and ``.cu``) explain each step.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import ROOT, regions, substitute  # noqa: E402


def prepare(name: str, folder: Path) -> Path:
    """Write the stub ``name`` with its solution substituted (and its .cu siblings) to ``folder``."""
    stub = HERE / f"{name}.py"
    if not stub.is_file():
        known = sorted(p.stem for p in HERE.glob("ex*.py"))
        raise SystemExit(f"run_solution: no exercise {name!r}; known: {', '.join(known)}")
    for path in [stub, *sorted(HERE.glob(f"{name}*.cu"))]:
        solution = HERE / "solutions" / path.name
        text = path.read_text()              # a driver with nothing to fill in is copied as is
        if regions(text):
            text = substitute(text, solution.read_text())
        (folder / path.name).write_text(text)
    return folder / stub.name


def run(script: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an exercise script with the repository and the harness importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(HERE), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=timeout)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python docs/walkthrough/exercises/run_solution.py <exercise name>")
    with tempfile.TemporaryDirectory() as tmp:
        done = run(prepare(sys.argv[1].removesuffix(".py"), Path(tmp)))
    print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    sys.exit(done.returncode)
