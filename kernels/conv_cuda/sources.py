"""The kernel sources as compilers see them, their fingerprint, and compile checks without a GPU.

``kernels/cuda/*.cu`` include shared headers (``#include "tile_fma.cuh"``). NVRTC gets
:func:`source_text`, with those includes already inlined: the text it compiles is then
self-contained, and CuPy's on-disk kernel cache, which keys on that text, can never serve a
module built from an older header. nvcc and the CPU emulation compile the files themselves.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .planning import all_instances

KERNEL_DIR = Path(__file__).resolve().parent.parent / "cuda"
PACKAGE_DIR = Path(__file__).resolve().parent
COMPILE_OPTIONS = ("-std=c++17",)
# Python files whose content changes which kernels run, with which launch parameters: a change
# to any of them invalidates autotuned choices (see ``sources_tag``).
PLAN_FILES = ("tables.py", "planning.py", "launcher.py")

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


def source_text(source: str, kernel_dir: Path = KERNEL_DIR) -> str:
    """The text of ``kernels/cuda/<source>`` with its local ``#include "..."`` inlined (once each)."""
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return f"// {name}: already included above\n"
        seen.add(name)
        path = kernel_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"kernel source {path} not found (included from {source})")
        text = path.read_text()
        text = re.sub(r"^\s*#\s*pragma\s+once\s*$", "", text, flags=re.MULTILINE)
        return _INCLUDE.sub(lambda m: f"// begin {m.group(1)}\n{expand(m.group(1))}// end {m.group(1)}",
                            text)

    return expand(source)


def sources_tag(kernel_dir: Path = KERNEL_DIR, package_dir: Path = PACKAGE_DIR) -> str:
    """Short hash of every kernel source and header and of the launch-plan code: any edit that
    can change which config is fastest (or correct) gets fresh tuning."""
    h = hashlib.sha256()
    files = sorted(kernel_dir.glob("*.cu")) + sorted(kernel_dir.glob("*.cuh"))
    files += [package_dir / name for name in PLAN_FILES]
    for path in files:
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def write_instantiations(out_dir: Path) -> list[Path]:
    """One .cu per source that forces every instance plans can launch (for nvcc checks)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for source, names in all_instances().items():
        lines = [f'#include "{(KERNEL_DIR / source).resolve()}"', "",
                 "// Taking each instance's address makes nvcc compile it.",
                 "void* instances_for_compile_check[] = {"]
        lines += [f"    (void*)&{name}," for name in names]
        lines += ["};", ""]
        path = out_dir / f"inst_{Path(source).stem}.cu"
        path.write_text("\n".join(lines))
        paths.append(path)
    return paths


def nvrtc_check(archs=("compute_80", "compute_90")) -> int:
    """Compile every instance with NVRTC (CuPy's compiler) for ``archs``; no GPU needed.

    Uses the NVRTC library directly (CuPy's helpers ask the device for its architecture), on
    exactly the text the launcher compiles. Raises RuntimeError with NVRTC's log on failure;
    returns the number of instances compiled.
    """
    from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415

    count = 0
    for source, names in all_instances().items():
        code = source_text(source)
        for arch in archs:
            prog = nvrtc.createProgram(code, source, (), ())
            try:
                for name in names:
                    nvrtc.addNameExpression(prog, name)
                try:
                    nvrtc.compileProgram(prog, (*COMPILE_OPTIONS, f"-arch={arch}"))
                except nvrtc.NVRTCError as exc:
                    raise RuntimeError(f"NVRTC failed on {source} for {arch}:\n"
                                       f"{nvrtc.getProgramLog(prog)}") from exc
                for name in names:
                    nvrtc.getLoweredName(prog, name)  # every name expression resolved
            finally:
                nvrtc.destroyProgram(prog)
        count += len(names)
    return count
