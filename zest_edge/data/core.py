"""What every dataset shares: the preprocessing recipe, the registry, the split/limit rules and the base class.

Splits and subsets are index arithmetic on the label array, so they are cheap, deterministic and never touch images:
- a pooled source (one file for everything) is cut 80/20 per class with the fixed SPLIT_SEED, so "train" and
  "val" are disjoint whatever `seed` a caller passes; exact duplicates in the pool land on the same side;
- `limit=N` then keeps N examples of that split, as equal per class as possible, chosen by `seed`.
Kept indices stay in source order.
"""
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ZestError
from ..registry import Registry

DATASETS = Registry("dataset")
SPLITS = ("train", "val")
VAL_FRACTION = 0.2
SPLIT_SEED = 1234


@dataclass(frozen=True)
class Preprocess:
    kind: str = "image"                        # "image" or "text"
    resolution: int = 224                      # image side (square resize)
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    tokenizer_dir: str | None = None           # text: HF tokenizer folder (tokenizer.json / vocab.txt) or .gguf
    max_length: int = 64                       # text: pad/truncate to this many tokens

    def __post_init__(self):
        if self.kind not in ("image", "text"):
            raise ZestError(f"preprocess kind must be 'image' or 'text', got {self.kind!r}")
        if self.resolution <= 0 or self.max_length <= 0:
            raise ZestError(f"resolution and max_length must be positive, got {self.resolution} and {self.max_length}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ZestError(f"mean and std need 3 values each (std > 0), got {self.mean} and {self.std}")

    def example(self, batch_size: int = 1, seed: int | None = None) -> torch.Tensor:
        """A batch of the shape this preprocessing produces: zeros (token id 1 for text), or with `seed` random
        values (token ids in [1000, 2000), the last quarter of each row padding)."""
        if self.kind == "text":
            if seed is None:
                return torch.ones(batch_size, self.max_length, dtype=torch.long)
            ids = torch.randint(1000, 2000, (batch_size, self.max_length), generator=torch.Generator().manual_seed(seed))
            ids[:, self.max_length * 3 // 4:] = 0
            return ids
        shape = (batch_size, 3, self.resolution, self.resolution)
        return torch.zeros(shape) if seed is None else torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class Request:
    """One build_dataset call, as handed to a registered loader."""
    spec: str
    arg: str | None                            # the PATH of "imagefolder:PATH"
    split: str
    preprocess: Preprocess
    limit: int | None
    seed: int
    data_root: str | None
    classes: tuple[int, ...] | None = None     # a class subset ("fashion_mnist:0-4"), applied before `limit`

    def pick(self, labels: np.ndarray, pooled: bool, groups: np.ndarray | None = None) -> np.ndarray:
        """Indices into `labels` for this split (cut from the pool when `pooled`, keeping `groups` whole), class
        subset and limit."""
        idx = np.arange(len(labels))
        if pooled:
            idx = idx[stratified_split(labels, groups)[self.split]]
        if self.classes is not None:
            idx = idx[np.isin(labels[idx], self.classes)]
        if self.limit is not None:
            idx = idx[balanced_subset(labels[idx], self.limit, self.seed, self.spec)]
        return idx


def parse_classes(text: str) -> tuple[int, ...] | None:
    """"0-4" or "0,2,5-7" -> sorted class indices; None when `text` is no class list."""
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", text):
        return None
    picked = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if hi and int(hi) < int(lo):
            raise ZestError(f"class range {part!r} runs backwards")
        picked.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(picked))


def default_val_limit(limit: int | None, num_classes: int) -> int | None:
    """Validation examples kept when only a training `limit` is given: a quarter of it, at least 10 per class."""
    return None if limit is None else max(limit // 4, 10 * num_classes)


def register(name: str, kind: str, arg: str | None = None):
    """`@register("name", "image")` on `def loader(req: Request) -> LabeledDataset`; `arg` names a ':' suffix."""
    def wrap(fn):
        fn.kind, fn.arg = kind, arg
        return DATASETS.register(name)(fn)
    return wrap


def stratified_split(labels: np.ndarray, groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per class, a fixed-seed shuffle of its groups sends whole groups to "val" until it holds round(20%) of the
    class; the rest is "train". `groups` ids mark identical items (default: each item alone) so no twin straddles."""
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(SPLIT_SEED)
    is_val = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keys, sizes = np.unique(groups[members], return_counts=True)
        order = rng.permutation(len(keys))
        before = np.cumsum(sizes[order]) - sizes[order]        # items already in val when each group comes up
        is_val[members[np.isin(groups[members], keys[order][before < round(VAL_FRACTION * len(members))])]] = True
    return {"train": np.flatnonzero(~is_val), "val": np.flatnonzero(is_val)}


def balanced_subset(labels: np.ndarray, n: int, seed: int, spec: str) -> np.ndarray:
    """`n` indices spread as evenly over classes as their sizes allow (water-filling), picked by `seed`."""
    if n <= 0:
        raise ZestError(f"limit must be a positive number of examples, got {n}")
    if n > len(labels):
        raise ZestError(f"limit {n} is more than the {len(labels)} examples in this split of {spec!r}")
    classes, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((classes, counts))      # smallest classes first, so their shortfall moves to bigger ones
    rng = np.random.default_rng(seed)
    keep, left = [], n
    for i, j in enumerate(order):
        take = min(counts[j], left // (len(order) - i))
        keep.append(rng.permutation(np.flatnonzero(labels == classes[j]))[:take])
        left -= take
    return np.sort(np.concatenate(keep))


class LabeledDataset(torch.utils.data.Dataset):
    """`ds[i] -> (x, label)`; subclasses define `x_at(i)`. `labels` is every label in index order."""

    def __init__(self, spec: str, kind: str, classes: list[str], labels: np.ndarray):
        self.spec, self.kind, self.classes = spec, kind, list(classes)
        self.num_classes = len(self.classes)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self):
        return len(self.labels)

    def keep_classes(self, classes: tuple[int, ...]) -> None:
        """Renumber labels 0..k-1 after `Request.pick` kept only `classes` (in their original order)."""
        if classes[-1] >= self.num_classes:
            raise ZestError(f"{self.spec!r} names class {classes[-1]}, but the dataset has classes 0-{self.num_classes - 1}")
        new = np.full(self.num_classes, -1, dtype=np.int64)
        new[list(classes)] = np.arange(len(classes))
        self.labels = new[self.labels]
        self.classes = [self.classes[c] for c in classes]
        self.num_classes = len(classes)

    def __getitem__(self, i):
        return self.x_at(i), int(self.labels[i])

    def x_at(self, i) -> torch.Tensor:
        raise NotImplementedError
