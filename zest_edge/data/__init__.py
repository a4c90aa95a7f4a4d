"""Datasets: `build_dataset(spec, split, preprocess=..., limit=..., seed=...)` -> a Dataset of (x, label).

Every dataset also carries `classes`, `num_classes`, `kind` ("image"/"text"), `spec` and `labels` (int64 array of
all labels, in index order). Adding a dataset is one `@register(name, kind)` loader in any module imported below.
"""
from ..errors import ZestError
from ..registry import suggest
from .core import DATASETS, SPLITS, LabeledDataset, Preprocess, Request, register
from . import folders, images, text  # noqa: F401  (modules register their datasets on import)

__all__ = ["DATASETS", "LabeledDataset", "Preprocess", "build_dataset", "dataset_choices", "register"]


def dataset_choices() -> list[str]:
    """Valid specs as a user types them, e.g. "imagefolder:PATH"."""
    return sorted(f"{name}:{fn.arg}" if fn.arg else name for name, fn in DATASETS.items())


def build_dataset(spec: str, split: str, *, preprocess: Preprocess, limit: int | None = None, seed: int = 0,
                  data_root: str | None = None) -> LabeledDataset:
    """Examples of `split` ("train"/"val") of `spec`; `limit` keeps a class-balanced subset picked by `seed`."""
    name, colon, arg = spec.partition(":")
    if name not in DATASETS:
        choices = ", ".join(dataset_choices())
        raise ZestError(f"unknown dataset {name!r}{suggest(name, DATASETS)}; choose from: {choices}")
    loader = DATASETS[name]
    if loader.arg and not arg:
        raise ZestError(f"dataset {name!r} needs a {loader.arg}: {name}:{loader.arg}")
    if colon and not loader.arg:
        raise ZestError(f"dataset {name!r} takes no ':' suffix, got {spec!r}")
    if split not in SPLITS:
        raise ZestError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and limit <= 0:
        raise ZestError(f"limit must be a positive number of examples, got {limit}")
    if preprocess.kind != loader.kind:
        raise ZestError(f"dataset {name!r} holds {loader.kind}s but the preprocessing is for {preprocess.kind}")
    if loader.kind == "text" and not preprocess.tokenizer_dir:
        raise ZestError(f"dataset {name!r} is text: it needs preprocess.tokenizer_dir (a HF tokenizer folder)")
    return loader(Request(spec, arg or None, split, preprocess, limit, seed, data_root))
