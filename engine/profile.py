"""Where the time goes: per-module, per-op forward and backward records.

``with Profiler(model) as prof:`` makes every ``Module`` call push its name
(``inception_3a.conv_3x3``) and every ``Function`` record its op, phase, time,
shapes and multiply-adds under that name, in forward and in backward. Outside
such a block the cost is one global check per call. On CuPy the device is
synchronised around each op so the times are the op's own.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

_active = None  # the Profiler in force, if any


def active():
    return _active


@dataclass
class Record:
    scope: str          # dotted module path, "" outside any module
    op: str             # Function class name
    phase: str          # "forward" or "backward"
    seconds: float
    out_shapes: tuple
    macs: int


class Profiler:
    def __init__(self, model=None):
        self.names = {id(m): n for n, m in model.named_modules()} if model is not None else {}
        self.stack: list[str] = []
        self.records: list[Record] = []

    def __enter__(self):
        global _active
        if _active is not None:
            raise RuntimeError("Profiler: another profiler is already active")
        _active = self
        return self

    def __exit__(self, *exc):
        global _active
        _active = None
        return False

    # --- hooks called by Module and Function
    def enter_module(self, module) -> None:
        self.stack.append(self.names.get(id(module), type(module).__name__))

    def exit_module(self) -> None:
        self.stack.pop()

    @property
    def scope(self) -> str:
        return self.stack[-1] if self.stack else ""

    def time_call(self, fn, sync_like):
        """Run ``fn()`` and return (result, seconds), synchronising a GPU around it."""
        sync = _sync_for(sync_like)
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t0

    def record(self, scope, op, phase, seconds, outs, macs) -> None:
        shapes = tuple(tuple(o.shape) for o in outs if o is not None)
        self.records.append(Record(scope, op, phase, seconds, shapes, int(macs)))

    # --- reports
    def by_scope(self, depth: int = 1) -> dict:
        """{scope truncated to ``depth`` parts: {"forward": s, "backward": s, "macs": n}}, in
        first-seen order."""
        table: dict = defaultdict(lambda: {"forward": 0.0, "backward": 0.0, "macs": 0})
        for r in self.records:
            key = ".".join(r.scope.split(".")[:depth]) if r.scope else "(top)"
            table[key][r.phase] += r.seconds
            if r.phase == "forward":
                table[key]["macs"] += r.macs
        return dict(table)

    def table(self, depth: int = 1) -> str:
        rows = self.by_scope(depth)
        total_f = sum(v["forward"] for v in rows.values()) or 1e-12
        total_b = sum(v["backward"] for v in rows.values()) or 1e-12
        lines = [f"{'layer':<28}{'forward ms':>12}{'backward ms':>13}{'share':>8}{'MACs':>12}"]
        for name, v in rows.items():
            share = (v["forward"] + v["backward"]) / (total_f + total_b)
            lines.append(f"{name:<28}{v['forward'] * 1e3:>12.2f}{v['backward'] * 1e3:>13.2f}"
                         f"{share:>7.1%}{v['macs'] / 1e6:>11.1f}M")
        lines.append(f"{'total':<28}{total_f * 1e3:>12.2f}{total_b * 1e3:>13.2f}{'100%':>8}"
                     f"{sum(v['macs'] for v in rows.values()) / 1e6:>11.1f}M")
        return "\n".join(lines)


def _sync_for(array):
    from .backend import is_cupy_array
    if is_cupy_array(array):
        import cupy
        return cupy.cuda.get_current_stream().synchronize
    return _no_sync


def _no_sync():
    return None
