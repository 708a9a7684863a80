"""``summary``: GoogLeNet layer by layer (output shape, parameters, multiply-adds),
as the paper's Table 1 lists it, measured by running one image through the model."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from engine import Profiler, no_grad
from models.googlenet import GoogLeNet


def summarize(image_size: int = 224, num_classes: int = 1000, aux_logits: bool = True):
    """Rows (name, output shape, params, MACs) and totals with and without the aux heads."""
    model = GoogLeNet(num_classes=num_classes, aux_logits=aux_logits, seed=0)
    model.train()  # the aux heads run in training mode only
    x = np.zeros((1, 3, image_size, image_size), model.dtype)
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
        rows[name.split(".")[0]]["params"] += p.size
    main = [v for k, v in rows.items() if not k.startswith("aux")]
    totals = {"params": sum(v["params"] for v in main), "macs": sum(v["macs"] for v in main),
              "params_with_aux": sum(v["params"] for v in rows.values()),
              "macs_with_aux": sum(v["macs"] for v in rows.values())}
    return rows, totals


def format_summary(rows, totals) -> str:
    lines = [f"{'layer':<16}{'output':>18}{'params':>12}{'MACs':>12}"]
    for name, v in rows.items():
        shape = "x".join(str(s) for s in v["shape"]) if v["shape"] else "-"
        lines.append(f"{name:<16}{shape:>18}{v['params']:>12,}{v['macs'] / 1e6:>11.1f}M")
    lines.append("-" * 58)
    lines.append(f"{'total (main path)':<34}{totals['params']:>12,}{totals['macs'] / 1e9:>11.3f}G")
    lines.append(f"{'total with aux heads':<34}{totals['params_with_aux']:>12,}"
                 f"{totals['macs_with_aux'] / 1e9:>11.3f}G")
    lines.append("paper (Table 1): about 1.5-1.58 G multiply-adds, 7.0 M parameters without the "
                 "auxiliary heads (13.4 M with)")
    return "\n".join(lines)
