"""Image datasets on disk, read through torchvision: any `imagefolder:PATH`, and named torchvision datasets that
must already sit under `data_root` (nothing is downloaded). Only file names are scanned up front.
"""
from pathlib import Path

import numpy as np

from ..errors import ZestError, first_line
from .core import Request, register
from .images import PILImages, open_image


@register("imagefolder", "image", arg="PATH")
def imagefolder(req: Request):
    """PATH/<class>/<image>; classes are the sorted sub-folder names; stratified 80/20 split."""
    from torchvision.datasets import ImageFolder
    path = Path(req.arg).expanduser()
    if not path.is_dir():
        raise ZestError(f"dataset path {path} does not exist (or is not a folder)")
    try:
        base = ImageFolder(str(path), loader=open_image)
    except FileNotFoundError as e:                 # no class folders, or a class folder without images
        raise ZestError(f"no images in {path}: expected PATH/<class>/<image> ({first_line(e)})") from None
    labels = np.asarray(base.targets, dtype=np.int64)
    idx = req.pick(labels, pooled=True)
    return PILImages(req, base.classes, base, idx, labels[idx], files=[base.samples[i][0] for i in idx])


def torchvision_dataset(name: str, cls: str, train: dict, val: dict):
    """Register torchvision.datasets.<cls> as `name`; `train`/`val` are its constructor's split arguments."""
    @register(name, "image")
    def load(req: Request):
        import torchvision.datasets
        if req.data_root is None:
            raise ZestError(f"dataset {name!r} needs --data-root: a folder holding torchvision's {cls} files")
        try:
            base = getattr(torchvision.datasets, cls)(req.data_root, download=False,
                                                      **(train if req.split == "train" else val))
        except (RuntimeError, OSError):
            raise ZestError(f"dataset {name!r} not found in {req.data_root}: put torchvision's {cls} files there "
                            "(nothing is downloaded)") from None
        labels = np.asarray(getattr(base, "targets", None) or getattr(base, "_labels", None)
                            or [target for _, target in base._samples], dtype=np.int64)
        idx = req.pick(labels, pooled=False)
        return PILImages(req, base.classes, base, idx, labels[idx])
    return load


# Our "val" is the official test split; "train" is the official train (+val where torchvision offers trainval).
torchvision_dataset("cifar10", "CIFAR10", dict(train=True), dict(train=False))
torchvision_dataset("cifar100", "CIFAR100", dict(train=True), dict(train=False))
torchvision_dataset("flowers102", "Flowers102", dict(split="train"), dict(split="test"))
torchvision_dataset("oxford_pets", "OxfordIIITPet", dict(split="trainval"), dict(split="test"))
torchvision_dataset("stanford_cars", "StanfordCars", dict(split="train"), dict(split="test"))
torchvision_dataset("fgvc_aircraft", "FGVCAircraft", dict(split="trainval"), dict(split="test"))
torchvision_dataset("food101", "Food101", dict(split="train"), dict(split="test"))
