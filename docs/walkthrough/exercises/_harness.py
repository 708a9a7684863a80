"""What the exercises share: the repository on sys.path, the checks, and the worked solutions.

Each exercise file has regions the learner fills in, between two marker lines

    # BEGIN YOUR CODE: name
    ...
    # END YOUR CODE: name

(``//`` instead of ``#`` in a .cu file). The file of the same name in ``solutions/`` holds the
same regions filled in. :func:`substitute` puts a solution's regions into a stub, which is how
``run_solution.py`` (and the tests) run every stub with its worked solution in place.

A check collects what is wrong in a :class:`Report`; ``finish()`` prints ``PASS`` or
``FAIL`` with one line per problem, and exits 0 or 1.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if (ROOT / "engine").is_dir() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine import Tensor, gradcheck  # noqa: E402

REGION = re.compile(r"^[ \t]*(?:#|//) BEGIN YOUR CODE: (\w+)[ \t]*\n(.*?)^[ \t]*(?:#|//) "
                    r"END YOUR CODE: \1[ \t]*$", re.S | re.M)


def regions(text: str) -> dict:
    """{name: body} of every marked region of a source text."""
    return {m.group(1): m.group(2) for m in REGION.finditer(text)}


def substitute(stub: str, solution: str) -> str:
    """The stub with every marked region replaced by the solution's region of that name."""
    filled = regions(solution)
    missing = set(regions(stub)) - set(filled)
    if missing:
        raise ValueError(f"the solution has no region(s) {sorted(missing)}")

    def fill(m):
        whole, start, end = m.group(0), m.start(2) - m.start(0), m.end(2) - m.start(0)
        return whole[:start] + filled[m.group(1)] + whole[end:]
    return REGION.sub(fill, stub)


class Report:
    """Collects failed checks; prints PASS or what is wrong."""

    def __init__(self, title: str):
        self.title, self.problems, self.passed = title, [], []

    def check(self, ok: bool, what: str, hint: str = "") -> bool:
        if ok:
            self.passed.append(what)
        else:
            self.problems.append(what + (f"\n      hint: {hint}" if hint else ""))
        return ok

    def attempt(self, what: str, fn):
        """Run ``fn()``; a NotImplementedError or any exception becomes a failed check."""
        try:
            return fn()
        except NotImplementedError as exc:
            self.check(False, f"{what}: not written yet ({exc or 'NotImplementedError'})")
        except Exception as exc:                          # noqa: BLE001
            self.check(False, f"{what}: raised {type(exc).__name__}: {exc}")
        return None

    def finish(self) -> None:
        print(f"{self.title}: {len(self.passed)} checks passed, {len(self.problems)} failed")
        if self.problems:
            print("FAIL")
            for p in self.problems:
                print("  - " + p)
            sys.exit(1)
        print("PASS")
        sys.exit(0)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def compare(report: Report, what: str, mine, ref, atol: float = 1e-10, hint: str = "") -> bool:
    """Shapes equal and every entry within ``atol`` (float64: only rounding may differ)."""
    if mine is None:
        return report.check(False, f"{what}: returned None", hint)
    mine, ref = np.asarray(mine), np.asarray(ref)
    if mine.shape != ref.shape:
        return report.check(False, f"{what}: shape {mine.shape}, expected {ref.shape}", hint)
    err = max_diff(mine, ref)
    bad = int((np.abs(mine - ref) > atol).sum())
    return report.check(err <= atol, f"{what}: max |difference| {err:.2e} "
                        f"({bad} of {ref.size} entries off by more than {atol:g})", hint)


def finite_differences(report: Report, what: str, fn, arrays, names, hint: str = "") -> bool:
    """``engine.gradcheck`` element by element in float64: backprop against central differences."""
    inputs = [Tensor(np.array(a, np.float64), requires_grad=True) for a in arrays]
    res = gradcheck(fn, inputs, mode="elementwise", raise_on_failure=False)
    wrong = {}
    for where, numeric, analytic in res.details:
        if abs(numeric - analytic) > 1e-6 + 1e-4 * abs(numeric):
            name = names[int(where.split()[1])]
            wrong[name] = wrong.get(name, 0) + 1
    counts = ", ".join(f"{k}: {v} entries" for k, v in wrong.items())
    return report.check(res.ok, f"{what}: finite differences vs backward, {res.checks} "
                        f"derivatives, worst |numeric - analytic| {res.worst_error:.2e}"
                        + (f" (wrong ones: {counts})" if wrong else ""), hint)


def against_library(report: Report, tag: str, mine, library, arrays, names, rng,
                    hint: str = "") -> bool:
    """Check ``mine(*tensors)``'s backward twice, on float64 copies of ``arrays``:

    * against ``library(*tensors)``'s backward, for one random upstream gradient;
    * against finite differences (:func:`finite_differences`).

    Returns False when the backward could not run (not written yet, or it raised).
    """
    ours = [Tensor(np.array(a, np.float64), requires_grad=True) for a in arrays]
    theirs = [Tensor(np.array(a, np.float64), requires_grad=True) for a in arrays]
    y = mine(*ours)
    gy = rng.standard_normal(y.shape)
    report.attempt(f"backward ({tag})", lambda: y.backward(gy))
    if any(t.grad is None for t in ours):
        return False
    library(*theirs).backward(gy)
    for name, a, b in zip(names, ours, theirs):
        compare(report, f"g{name} ({tag}) against the library's op", a.grad, b.grad, hint=hint)
    finite_differences(report, f"gradcheck ({tag})", mine, arrays, names, hint)
    return True
