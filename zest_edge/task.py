"""A task: a registered model with its head sized to a dataset, and that dataset's train/val splits."""
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.data import Dataset

from .data import Preprocess, build_dataset, default_val_limit
from .errors import ZestError
from .models import attach_spec, build_model, model_preprocess


@dataclass
class Task:
    model_name: str
    data_spec: str
    model: nn.Module
    train: Dataset
    val: Dataset
    preprocess: Preprocess
    seed: int
    load_args: dict            # the load_task arguments, to rebuild the task elsewhere (e.g. a Ray worker)

    def describe(self) -> dict:
        size = {"max_length": self.preprocess.max_length} if self.preprocess.kind == "text" else {
            "resolution": self.preprocess.resolution}
        return {"model": self.model_name, "data": self.data_spec, **size,
                "num_classes": self.train.num_classes, "train_examples": len(self.train),
                "val_examples": len(self.val), "seed": self.seed, "weights": self.model.zest_spec.weights}


def load_task(model: str, data: str, *, weights: str | None = None, resolution: int | None = None,
              limit: int | None = None, val_limit: int | None = None, seed: int = 0,
              data_root: str | None = None, max_length: int | None = None) -> Task:
    """Build the datasets first (they fix the class count), then the model with a matching head.

    `val_limit` defaults to a quarter of `limit` (at least 10 per class) when `limit` is given."""
    preprocess = model_preprocess(model)
    if resolution is not None:
        if preprocess.kind == "text":
            raise ZestError(f"--resolution does not apply to the text model {model}")
        if not 16 <= resolution <= 1024:
            raise ZestError(f"--resolution must be between 16 and 1024, got {resolution}")
        preprocess = replace(preprocess, resolution=resolution)
    if max_length is not None:
        if preprocess.kind != "text":
            raise ZestError(f"--max-length applies to text models only, not {model}")
        if not 4 <= max_length <= 512:
            raise ZestError(f"--max-length must be between 4 and 512 tokens, got {max_length}")
        preprocess = replace(preprocess, max_length=max_length)
    train = build_dataset(data, "train", preprocess=preprocess, limit=limit, seed=seed, data_root=data_root)
    if val_limit is None:
        val_limit = default_val_limit(limit, train.num_classes)
    val = build_dataset(data, "val", preprocess=preprocess, limit=val_limit, seed=seed, data_root=data_root)
    with torch.random.fork_rng():          # the new head (and any random init) is fixed by the seed
        torch.manual_seed(seed)
        net = build_model(model, num_classes=train.num_classes, weights=weights)
    attach_spec(net, replace(net.zest_spec, preprocess=preprocess))   # dummy inputs and exports use the task's size
    args = dict(weights=weights, resolution=resolution, limit=limit, val_limit=val_limit, seed=seed, data_root=data_root,
                max_length=max_length)
    return Task(model, data, net, train, val, preprocess, seed, {"model": model, "data": data, **args})


def sample_batch(dataset: Dataset, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` examples drawn without replacement, fixed by `seed`."""
    if not 1 <= batch_size <= len(dataset):
        raise ZestError(f"--batch-size must be between 1 and the dataset size ({len(dataset)}), got {batch_size}")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:batch_size]
    xs, ys = zip(*(dataset[int(i)] for i in idx))
    return torch.stack(xs), torch.tensor(ys)
