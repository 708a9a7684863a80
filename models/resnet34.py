"""ResNet-34 under its own name, so that ``python -m models.resnet34 {summary,train,eval,predict}``
runs; the network (and ResNet-18 from the same code) lives in ``models/resnet.py``."""
from models.resnet import ResNet, ResNet18, ResNet34, make_spec

__all__ = ["ResNet", "ResNet18", "ResNet34", "SPEC"]

SPEC = make_spec(34)

if __name__ == "__main__":
    from trainer.cli import main
    raise SystemExit(main(SPEC))
