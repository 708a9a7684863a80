"""What the training application needs to know about a network: ``NetworkSpec``.

Each network module (``models/googlenet.py``, ...) defines the network as a ``Module`` and one
``SPEC = NetworkSpec(...)``, then hands the spec to the shared command line:

    if __name__ == "__main__":
        from trainer.cli import main
        raise SystemExit(main(SPEC))

so ``python -m models.<module> {summary,train,eval,predict}`` works for every network, with one
training application behind all of them. Models never import the trainer at module level.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import layers as L


def classification_loss(outputs, labels, aux_weight: float = 0.0):
    """Softmax cross-entropy of the main logits, plus ``aux_weight`` times that of each
    auxiliary head when the network returns ``(logits, aux1, aux2, ...)``.

    Returns ``(total, main, [aux losses])`` as Tensors: the optimiser minimises ``total``;
    the log reports ``main`` and the auxiliary losses apart.
    """
    if not isinstance(outputs, tuple):
        main = L.softmax_cross_entropy(outputs, labels)
        return main, main, []
    main = L.softmax_cross_entropy(outputs[0], labels)
    aux = [L.softmax_cross_entropy(a, labels) for a in outputs[1:]]
    total = main
    for a in aux:
        total = total + aux_weight * a
    return total, main, aux


@dataclass(frozen=True)
class NetworkSpec:
    """A network as the training application sees it.

    build: ``build(num_classes, *, aux_logits, dtype, seed, init, image_size) -> Module``
        (``image_size``: the input side it will see); ``forward(x)``
        takes (N, in_channels, S, S) and returns logits (N, classes), or in training mode with
        auxiliary heads ``(logits, aux1, ...)``.
    name: the module name, as in ``python -m models.<name>``; also stored in checkpoints.
    title: for help texts and logs.
    in_channels: 3 (RGB) or 1 (grayscale).
    min_image_size / max_image_size: the input sides the network accepts.
    aux_heads: number of auxiliary classifiers (0 for most networks).
    inits: the accepted ``init`` names; the first is the paper's.
    recipe: training defaults for ``--data`` runs (the paper's), keyed by ``TrainConfig``
        field names.
    builtin: overrides of ``recipe`` for the built-in data run.
    builtin_data: which built-in dataset that run uses ("shapes" or "digits").
    published: the paper's counts for ``summary``: {"params": ..., "macs": ..., "note": ...,
        "num_classes": the classes they are counted for (default 1000)}.
    """
    name: str
    title: str
    build: Callable
    in_channels: int = 3
    min_image_size: int = 1
    max_image_size: int = 1024
    aux_heads: int = 0
    inits: tuple = ("default",)
    recipe: dict = field(default_factory=dict)
    builtin: dict = field(default_factory=dict)
    builtin_data: str = "shapes"
    published: dict = field(default_factory=dict)
    loss: Callable = classification_loss

    def check_image_size(self, size: int, flag: str = "--image-size") -> None:
        if not self.min_image_size <= size <= self.max_image_size:
            raise ValueError(f"{flag} {size}: {self.title} takes inputs from "
                             f"{self.min_image_size} to {self.max_image_size} pixels a side")


def get_spec(name: str) -> NetworkSpec:
    """The spec of ``models.<name>`` (imported on demand), e.g. for a checkpoint's network."""
    import importlib
    try:
        module = importlib.import_module(f"models.{name}")
    except ModuleNotFoundError as exc:
        raise ValueError(f"unknown network {name!r} (no module models.{name})") from exc
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, NetworkSpec):
        raise ValueError(f"models.{name} defines no network SPEC")
    return spec
