"""Datasets: `build_dataset(spec, split, preprocess=..., limit=..., seed=...)` -> a Dataset of (x, label).

A spec is "name", "name:ARG" (e.g. imagefolder:PATH), and any of them may end in ":CLASSES" ("fashion_mnist:0-4",
"animal_mnist:0,2,5-9") to keep a class subset, renumbered 0..k-1 in the original order.

Every dataset also carries `classes`, `num_classes`, `kind` ("image"/"text"), `spec` and `labels` (int64 array of
all labels, in index order). Adding a dataset is one `@register(name, kind)` loader in any module imported below.
"""
from ..errors import ZestError
from ..registry import suggest
from .core import DATASETS, SPLITS, LabeledDataset, Preprocess, Request, default_val_limit, parse_classes, register
from . import folders, images, text  # noqa: F401  (modules register their datasets on import)

__all__ = ["DATASETS", "LabeledDataset", "Preprocess", "build_dataset", "dataset_choices", "default_val_limit", "register"]


def dataset_choices() -> list[str]:
    """Valid specs as a user types them, e.g. "imagefolder:PATH"; any of them takes a ":CLASSES" suffix."""
    return sorted(f"{name}:{fn.arg}" if fn.arg else name for name, fn in DATASETS.items())


def split_spec(spec: str) -> tuple[str, str | None, tuple[int, ...] | None]:
    """"name[:ARG][:CLASSES]" -> (name, ARG, class indices). CLASSES is "0-4" or "0,2,5-7"."""
    name, _, rest = spec.partition(":")
    if name not in DATASETS:
        raise ZestError(f"unknown dataset {name!r}{suggest(name, DATASETS)}; choose from: {', '.join(dataset_choices())}")
    loader = DATASETS[name]
    head, colon, tail = rest.rpartition(":") if loader.arg else ("", "", rest)
    classes = parse_classes(tail) if tail else None
    arg = (head if colon and classes is not None else rest) if loader.arg else None
    if loader.arg and not arg:
        raise ZestError(f"dataset {name!r} needs a {loader.arg}: {name}:{loader.arg}[:CLASSES]")
    if not loader.arg and rest and classes is None:
        raise ZestError(f"dataset {name!r} takes only a class subset after ':' (e.g. {name}:0-4), got {spec!r}")
    return name, arg, classes


def build_dataset(spec: str, split: str, *, preprocess: Preprocess, limit: int | None = None, seed: int = 0,
                  data_root: str | None = None) -> LabeledDataset:
    """Examples of `split` ("train"/"val") of `spec`; `limit` keeps a class-balanced subset picked by `seed`."""
    name, arg, classes = split_spec(spec)
    loader = DATASETS[name]
    if classes is not None and len(classes) < 2:
        raise ZestError(f"a class subset needs at least 2 classes, got {spec!r}")
    if split not in SPLITS:
        raise ZestError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and limit <= 0:
        raise ZestError(f"limit must be a positive number of examples, got {limit}")
    if preprocess.kind != loader.kind:
        raise ZestError(f"dataset {name!r} holds {loader.kind}s but the preprocessing is for {preprocess.kind}")
    if loader.kind == "text" and not preprocess.tokenizer_dir:
        raise ZestError(f"dataset {name!r} is text: it needs preprocess.tokenizer_dir (a HF tokenizer folder)")
    dataset = loader(Request(spec, arg, split, preprocess, limit, seed, data_root, classes))
    if classes is not None:
        dataset.keep_classes(classes)
    return dataset
