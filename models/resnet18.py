"""ResNet-18 under its own name, so that ``python -m models.resnet18 {summary,train,eval,predict}``
runs; the network lives in ``models/resnet.py``, the same code as ResNet-34."""
from models.resnet import ResNet18, make_spec

__all__ = ["ResNet18", "SPEC"]

SPEC = make_spec(18)

if __name__ == "__main__":
    from trainer.cli import main
    raise SystemExit(main(SPEC))
