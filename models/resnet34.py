"""ResNet-34 under its own name, so that ``python -m models.resnet34`` runs; the network
(and ResNet-18 from the same code) lives in ``models/resnet.py``."""
from models.resnet import ResNet, ResNet18, ResNet34

__all__ = ["ResNet", "ResNet18", "ResNet34"]
