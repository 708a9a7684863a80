"""The training application shared by every network of ``models/``.

``config.py`` (TrainConfig: a run's settings and their defaults), ``loop.py`` (``train``),
``evaluate.py`` (``eval`` and ``predict``, ensembles), ``checkpoint.py`` (the file format, a
run's state, weights files), ``logs.py`` (progress, metrics.csv, curves.png), ``summary.py``
(layer tables), ``export.py`` and ``onnx_export.py`` (``export``: ONNX, weights files),
``caffe_import.py`` (``import-caffe``), ``finetune.py`` (``train --weights``), ``cli.py``
(the command line, the only place that parses arguments).
"""
from .config import TrainConfig, UsageError


def train(config, spec=None):
    """``trainer.loop.train`` (imported on first use, so that importing the package is cheap)."""
    from .loop import train as _train
    return _train(config, spec)


__all__ = ["TrainConfig", "UsageError", "train"]
