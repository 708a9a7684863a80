"""The data pipeline: image folders on disk, transforms, a multi-process loader, and the
generated built-in dataset.

Read ``folder.py`` (what a dataset is), ``transforms.py`` (the paper's augmentation and the
multi-crop test transforms), ``loader.py`` (batches, workers, determinism), ``builtin.py``
(the dataset that ``train`` uses when no ``--data`` is given).
"""
from .folder import IMG_EXTENSIONS, ImageFolder, SplitError, UnreadableImageError, load_image
from .loader import DataLoader, default_workers

__all__ = ["IMG_EXTENSIONS", "ImageFolder", "SplitError", "UnreadableImageError", "load_image",
           "DataLoader", "default_workers"]
