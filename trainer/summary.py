"""``summary``: a network layer by layer (output shape, parameters, multiply-adds), measured by
running one image through it with the engine's Profiler, beside the published counts."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from engine import Profiler, no_grad


def summarize(spec, image_size: int, num_classes: int = 1000, aux_logits: bool = True):
    """Rows {top-level module: {shape, params, macs}} and totals, with and without the
    auxiliary heads (modules whose name starts with 'aux')."""
    model = spec.build(num_classes, aux_logits=aux_logits and spec.aux_heads > 0,
                       dtype="float32", seed=0, init=spec.inits[0], image_size=image_size)
    model.train()  # auxiliary heads run in training mode only
    x = np.zeros((1, spec.in_channels, image_size, image_size), model.dtype)
    with no_grad(), Profiler(model) as prof:
        model(x)
    rows = OrderedDict()
    for r in prof.records:
        if r.phase != "forward" or not r.scope:
            continue
        top = r.scope.split(".")[0]
        row = rows.setdefault(top, {"shape": None, "params": 0, "macs": 0})
        row["shape"] = r.out_shapes[0][1:] if r.out_shapes else row["shape"]
        row["macs"] += r.macs
    for name, p in model.named_parameters():
        rows.setdefault(name.split(".")[0], {"shape": None, "params": 0, "macs": 0})
        rows[name.split(".")[0]]["params"] += p.size
    main = [v for k, v in rows.items() if not k.startswith("aux")]
    totals = {"params": sum(v["params"] for v in main), "macs": sum(v["macs"] for v in main),
              "params_with_aux": sum(v["params"] for v in rows.values()),
              "macs_with_aux": sum(v["macs"] for v in rows.values())}
    return rows, totals


def format_summary(spec, rows, totals, image_size: int) -> str:
    lines = [f"{spec.title}, one {spec.in_channels}x{image_size}x{image_size} image",
             f"{'layer':<16}{'output':>18}{'params':>12}{'MACs':>16}"]
    for name, v in rows.items():
        shape = "x".join(str(s) for s in v["shape"]) if v["shape"] else "-"
        lines.append(f"{name:<16}{shape:>18}{v['params']:>12,}{v['macs']:>16,}")
    lines.append("-" * 62)
    aux = totals["params_with_aux"] != totals["params"]
    lines.append(f"{'total' + (' (main path)' if aux else ''):<34}{totals['params']:>12,}"
                 f"{totals['macs'] / 1e9:>11.3f}G ({totals['macs']:,})")
    if aux:
        lines.append(f"{'total with aux heads':<34}{totals['params_with_aux']:>12,}"
                     f"{totals['macs_with_aux'] / 1e9:>11.3f}G ({totals['macs_with_aux']:,})")
    if spec.published.get("note"):
        lines.append(f"published: {spec.published['note']}")
    return "\n".join(lines)
