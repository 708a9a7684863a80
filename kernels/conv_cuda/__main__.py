"""python -m kernels.conv_cuda: list kernel instances, write nvcc units, or check with NVRTC."""
from __future__ import annotations

import argparse
from pathlib import Path

from .planning import all_instances
from .sources import nvrtc_check, write_instantiations


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.conv_cuda", description=(
        "List kernel versions and instances, write instantiation units for nvcc checks, "
        "or compile every instance with NVRTC."))
    ap.add_argument("--instantiate", metavar="DIR", help="write inst_<source>.cu files into DIR")
    ap.add_argument("--list", action="store_true", help="print every template instance by source")
    ap.add_argument("--nvrtc-check", action="store_true",
                    help="compile every instance with NVRTC for compute_80 and compute_90 "
                         "(needs CuPy and the NVRTC library, not a GPU)")
    args = ap.parse_args(argv)
    if args.instantiate:
        for p in write_instantiations(Path(args.instantiate)):
            print(p)
    if args.nvrtc_check:
        n = nvrtc_check()
        print(f"NVRTC: {n} instances compiled for compute_80 and compute_90")
    if args.list or not (args.instantiate or args.nvrtc_check):
        for source, names in all_instances().items():
            print(f"{source}: {len(names)} instances")
            for name in names:
                print(f"    {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
