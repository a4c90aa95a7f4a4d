"""The frozen prefix on a device: its outputs computed once and reused (in memory or memory-mapped) train exactly
as recomputing them every epoch; a file cache that does not match its prefix, data or checksums is rebuilt, never
read; augmentation turns the cache off."""
import numpy as np
import pytest

from cli_helpers import export_cli
from zest_edge.data import Preprocess, build_dataset
from zest_edge.device import device_train
from zest_edge.prefix_cache import BoundaryStore

RES = 32


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """Split artifacts: mobilenet_v2 at 32 px, two late layers, so prefix.onnx holds features 0-15."""
    return export_cli(tmp_path_factory.mktemp("exp") / "art", "--resolution", str(RES), "--layers",
                      "features.16.conv.0.0,features.16.conv.1.0")


@pytest.fixture(scope="module")
def data():
    pre = Preprocess(resolution=RES)
    return (build_dataset("fashion_mnist", "train", preprocess=pre, limit=40, seed=0),
            build_dataset("fashion_mnist", "val", preprocess=pre, limit=20, seed=0))


def run(art, data, out, **kw):
    return device_train(art, *data, epochs=2, batch_size=8, out_dir=out, progress_bar=False, echo=lambda *a: None, **kw)


def test_cached_prefix_outputs_train_exactly_as_recomputed_ones(art, data, tmp_path):
    recomputed = run(art, data, tmp_path / "none", cache=False)
    in_memory = run(art, data, tmp_path / "ram")
    on_disk = run(art, data, tmp_path / "disk", cache_mb=0)
    assert [r["prefix"] for r in recomputed["epochs"]] == ["computed", "computed"]
    assert [r["prefix"] for r in in_memory["epochs"]] == ["computed", "cached"]
    assert [r["prefix"] for r in on_disk["epochs"]] == ["computed", "cached"]
    assert "memory-mapped" in on_disk["prefix"] and "memory (" in in_memory["prefix"]
    for run_ in (in_memory, on_disk):
        assert run_["train_loss"] == recomputed["train_loss"] and run_["val_accuracy"] == recomputed["val_accuracy"]
    files = sorted(p.name for p in (tmp_path / "disk" / ".prefix-cache" / "train").iterdir())
    assert files == ["0.npy", "cache.json"]


def test_augmentation_recomputes_the_prefix_every_epoch(art, data, tmp_path):
    said = []
    m = device_train(art, *data, epochs=2, batch_size=8, out_dir=tmp_path / "aug", progress_bar=False, augment=True,
                     echo=said.append)
    assert [r["prefix"] for r in m["epochs"]] == ["computed", "computed"]
    assert "augmentation" in m["prefix"] and any("no cache" in s for s in said)


def fill(store, rng):
    for start in range(0, store.n, 4):
        idx = np.arange(start, min(start + 4, store.n))
        store.put(idx, [rng.standard_normal((len(idx), 3, 2, 2)).astype(np.float32)])


def test_a_file_cache_is_reused_only_when_everything_matches(tmp_path):
    specs = [{"name": "boundary", "shape": ["batch", 3, 2, 2], "dtype": "float32"}]
    fp = {"prefix_sha256": "abc", "examples": 10}
    first = BoundaryStore(specs, 10, tmp_path, fp)
    assert not first.complete()
    fill(first, np.random.default_rng(0))
    assert first.complete() and (tmp_path / "cache.json").exists()
    kept = first.take(np.arange(10))[0]

    again = BoundaryStore(specs, 10, tmp_path, fp)
    assert again.complete() and np.array_equal(again.take(np.arange(10))[0], kept)
    assert not BoundaryStore(specs, 10, tmp_path, {**fp, "prefix_sha256": "other"}).complete()


def test_a_damaged_or_unfinished_file_cache_is_rebuilt(tmp_path):
    specs = [{"name": "boundary", "shape": ["batch", 3, 2, 2], "dtype": "float32"}]
    fp = {"prefix_sha256": "abc", "examples": 10}
    fill(BoundaryStore(specs, 10, tmp_path, fp), np.random.default_rng(0))
    raw = bytearray((tmp_path / "0.npy").read_bytes())
    raw[-3] ^= 0xFF                                     # one flipped byte: the recorded sha256 no longer matches
    (tmp_path / "0.npy").write_bytes(bytes(raw))
    assert not BoundaryStore(specs, 10, tmp_path, fp).complete()
    (tmp_path / "cache.json").write_text('{"format": "zest-edge/prefix-ca')      # torn sidecar
    assert not BoundaryStore(specs, 10, tmp_path, fp).complete()
    partial = BoundaryStore(specs, 10, tmp_path / "p", fp)          # killed before the last batch: no sidecar
    partial.put(np.arange(4), [np.zeros((4, 3, 2, 2), np.float32)])
    assert not (tmp_path / "p" / "cache.json").exists()
    assert not BoundaryStore(specs, 10, tmp_path / "p", fp).complete()
