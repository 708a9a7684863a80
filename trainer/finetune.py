"""``train --weights FILE``: start a run from trained weights (fine-tuning).

FILE is a training checkpoint (its averaged weights when it has them) or a weights file
(``export --format npz``, ``import-caffe``). Every parameter of the new model is copied from
it, except:

* the output layers when the class lists differ (other names, order or count): they are
  left as initialised and the log names them. The output layers are found by following
  each of the network's outputs (the logits, and in training mode the auxiliary logits)
  back to the last operation that has parameters, so this holds for any network;
* parameters the file does not have (e.g. auxiliary heads left out of a weights file):
  left as initialised, and logged.

The run also takes the file's preprocessing (Caffe's BGR 0-255 for imported weights), since
the weights were trained to expect it.
"""
from __future__ import annotations

import numpy as np

from engine import Tensor, no_grad
from engine.module import Parameter
from trainer import checkpoint as ckpt
from trainer.config import UsageError
from trainer.logs import log


def output_layer_parameters(model, in_channels: int, size: int) -> list:
    """Names of the parameters of the last parameterised op behind each of the model's
    outputs in training mode (GoogLeNet: ``classifier.*``, ``aux1.classifier.*``, ...)."""
    from trainer.onnx_export import record_ops
    names = {id(p): n for n, p in model.named_parameters()}
    was_training = model.training
    model.train()
    x = Tensor(np.zeros((1, in_channels, size, size), dtype=model.dtype))
    try:
        with no_grad(), record_ops() as calls:
            outs = model(x)
    finally:
        model.train(was_training)
    made_by = {id(t): (f, inputs) for f, inputs, outputs in calls for t in outputs}
    found = []
    for out in outs if isinstance(outs, tuple) else (outs,):
        t = out
        while id(t) in made_by:
            f, inputs = made_by[id(t)]
            params = [names[id(v)] for v in inputs if isinstance(v, Parameter) and id(v) in names]
            if params:
                found += [p for p in params if p not in found]
                break
            t = next((v for v in inputs if isinstance(v, Tensor) and not isinstance(v, Parameter)),
                     None)
    return found


def load_initial_weights(model, path: str, classes: list, spec, image_size: int) -> dict:
    """Copy FILE's weights into ``model`` (built for ``classes``); returns the file's
    preprocessing (meta dict). UsageError/CheckpointError when the file does not fit."""
    weights, meta, which = ckpt.read_model_file(path)
    network = meta["model"].get("network", "googlenet")
    if network != spec.name:
        raise UsageError(f"--weights {path}: holds {network} weights, not {spec.name}'s")
    own = dict(model.named_parameters())
    own.update(model.named_buffers())        # batch norm's running statistics come along
    same = list(meta["classes"]) == list(classes)
    heads = [] if same else output_layer_parameters(model, spec.in_channels, image_size)
    state, missing = {}, []
    for name, p in own.items():
        if name in heads:
            continue
        if name not in weights:
            missing.append(name)
            continue
        if tuple(weights[name].shape) != tuple(p.shape):
            raise ckpt.CheckpointError(f"--weights {path}: {name} has shape "
                                       f"{tuple(weights[name].shape)}, the model's is "
                                       f"{tuple(p.shape)}")
        state[name] = weights[name]
    model.load_state_dict(state, strict=False)     # names and shapes checked above
    log(f"fine-tuning from {path} ({which} weights): {len(state)} of {len(own)} tensors loaded")
    if heads:
        log(f"the classes differ ({len(meta['classes'])} in {path}, {len(classes)} here): "
            f"re-initialised {', '.join(heads)}")
    if missing:
        log(f"not in {path}, left as initialised: {', '.join(missing)}")
    return meta.get("preprocessing") or {}
