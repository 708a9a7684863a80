"""``export``: a checkpoint's weights as an ONNX graph or as a weights-only ``.npz``.

Both take the Polyak-averaged weights when the checkpoint has them (``--raw-weights`` for the
raw ones) and carry the class names and the preprocessing (``data.preprocessing``): ONNX as
``metadata_props`` (JSON values), the weights file in its metadata. A weights file holds one
set of weights and no optimiser state, so it is about a third of a training checkpoint (a
sixth without the auxiliary heads, ``--no-aux``).
"""
from __future__ import annotations

import os

from engine import backend
from trainer import checkpoint as ckpt
from trainer.config import UsageError
from trainer.logs import log


def _check_output(path: str, suffix: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{path}: no such directory {folder}")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory; name the {suffix} file to write")


def export_weights(path: str, out: str, prefer_average: bool = True, aux: bool = True) -> dict:
    """Write the weights file ``out`` from checkpoint ``path``; returns its metadata."""
    from trainer.evaluate import load_model
    model, spec, classes, size, which, prep = load_model(path, "cpu", prefer_average)
    _, meta, _ = ckpt.read_model_file(path, prefer_average)
    # state_dict: the parameters and the buffers (batch norm's running statistics).
    weights = {n: backend.to_numpy(a) for n, a in model.state_dict().items()
               if aux or not n.startswith("aux")}
    description = dict(meta["model"])
    description["aux_logits"] = bool(description.get("aux_logits")) and aux
    info = {"weights": which, "source": os.path.basename(path)}
    if isinstance(meta.get("config"), dict):
        info["config"] = meta["config"]      # what it trained on, for eval's default --data
    ckpt.save_weights_file(out, weights, description, classes, prep.to_meta(), **info)
    return {"classes": classes, "weights": which, "image_size": size}


def export_onnx(path: str, out: str, prefer_average: bool = True, image_size=None) -> dict:
    """Write the ONNX file ``out`` from checkpoint or weights file ``path``."""
    try:
        import onnx
    except ImportError:
        raise UsageError("--format onnx needs the onnx package: pip install "
                         "'googlenet-engine[onnx]' (or pip install onnx)") from None
    from trainer.evaluate import load_model
    from trainer.onnx_export import ExportError, to_onnx
    model, spec, classes, size, which, prep = load_model(path, "cpu", prefer_average)
    size = image_size or size
    try:
        spec.check_image_size(size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    metadata = {"network": spec.name, "classes": classes, "preprocessing": prep.to_meta(),
                "image_size": size, "weights": which, "source": os.path.basename(path)}
    try:
        proto = to_onnx(model, size, spec.in_channels, metadata, graph_name=spec.name)
    except ExportError as exc:
        raise UsageError(f"{path}: {exc}") from None
    from engine.io import atomic_write
    with atomic_write(out) as f:
        f.write(proto.SerializeToString())
    onnx.checker.check_model(out)
    return metadata


def run_export(args, spec) -> None:
    _check_output(args.output, args.format)
    if args.format == "npz":
        info = export_weights(args.checkpoint, args.output, not args.raw_weights,
                              aux=not args.no_aux)
    else:
        info = export_onnx(args.checkpoint, args.output, not args.raw_weights, args.image_size)
    size = os.path.getsize(args.output)
    log(f"wrote {args.output} ({size / 1e6:.1f} MB): {args.format}, {info['weights']} weights, "
        f"{len(info['classes'])} classes"
        + (f", input (batch, 3, {info['image_size']}, {info['image_size']})"
           if args.format == "onnx" else ""))


def onnx_metadata(path: str) -> dict:
    """The metadata of an exported ONNX file, JSON values decoded (classes, preprocessing...)."""
    import json

    import onnx
    proto = onnx.load(path, load_external_data=False)
    out = {}
    for entry in proto.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except ValueError:
            out[entry.key] = entry.value
    return out


__all__ = ["export_weights", "export_onnx", "run_export", "onnx_metadata"]
