"""The frozen prefix on a device: `prefix.onnx` runs once per example; its outputs are kept for the later epochs.

`TrainingInputs(artifacts, manifest, dataset, ...)` yields what the training model takes, `(inputs, labels)` per
batch: the raw examples when the export has no prefix, else the prefix's outputs (the boundary tensors), computed
with an ONNX Runtime InferenceSession the first time an example is seen and read from the cache afterwards.

The cache lives in memory while it fits `cache_mb`, beyond that in memory-mapped .npy files under `cache_dir`.
A file cache is trusted only once complete: its sidecar JSON records the prefix's sha256, a fingerprint of the
dataset and the sha256 of every array file, and a cache that does not match all of them is rebuilt, never read.
"""
import json
import os
from pathlib import Path

import numpy as np

from .errors import ZestError, first_line
from .io import atomic_write_bytes, reserve_space, sha256, writing

CACHE_FORMAT = "zest-edge/prefix-cache"


def default_cache_mb() -> int:
    """A quarter of physical memory, at most 4 GiB."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        total = 4 << 30
    return int(min(total // 4, 4 << 30) >> 20)


def as_numpy(x) -> np.ndarray:
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def labels_of(dataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.asarray(labels, dtype=np.int64)


class BoundaryStore:
    """Per-example boundary arrays, filled as examples are first seen; in RAM, or memory-mapped under `folder`."""

    def __init__(self, specs: list[dict], n: int, folder: Path | None, fingerprint: dict):
        self.specs, self.n, self.folder, self.fingerprint = specs, n, folder, fingerprint
        self.filled = np.zeros(n, dtype=bool)
        self.arrays = None
        if folder is not None and self._load():
            return
        self.arrays = []
        for i, spec in enumerate(specs):
            shape = (n, *spec["shape"][1:])
            if folder is None:
                self.arrays.append(np.empty(shape, dtype=spec["dtype"]))
            else:
                tmp = folder / f".{i}.npy.tmp"
                with writing(folder / f"{i}.npy", tmp):
                    folder.mkdir(parents=True, exist_ok=True)
                    self.arrays.append(np.lib.format.open_memmap(tmp, mode="w+", dtype=spec["dtype"], shape=shape))
                    reserve_space(tmp)

    def _sidecar(self) -> Path:
        return self.folder / "cache.json"

    def _load(self) -> bool:
        """Reuse a finished file cache that matches this prefix and dataset, checksums included."""
        try:
            meta = json.loads(self._sidecar().read_text())
            files = [self.folder / f"{i}.npy" for i in range(len(self.specs))]
            if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != self.fingerprint or \
                    meta.get("sha256") != [sha256(f) for f in files]:
                return False
            self.arrays = [np.load(f, mmap_mode="r") for f in files]
        except (OSError, ValueError, KeyError):
            return False
        self.filled[:] = True
        return True

    def complete(self) -> bool:
        return bool(self.filled.all())

    def put(self, idx: np.ndarray, outputs: list) -> None:
        for array, out in zip(self.arrays, outputs):
            array[idx] = out
        self.filled[idx] = True
        if self.folder is not None and self.complete():
            self._finish()

    def take(self, idx: np.ndarray) -> list:
        return [np.ascontiguousarray(a[idx]) for a in self.arrays]

    def _finish(self) -> None:
        """Flush, rename the array files into place, then commit the sidecar (the point from which it is trusted)."""
        for i, array in enumerate(self.arrays):
            array.flush()
            os.replace(self.folder / f".{i}.npy.tmp", self.folder / f"{i}.npy")
        files = [self.folder / f"{i}.npy" for i in range(len(self.specs))]
        self.arrays = [np.load(f, mmap_mode="r") for f in files]
        meta = {"format": CACHE_FORMAT, "version": 1, "fingerprint": self.fingerprint,
                "sha256": [sha256(f) for f in files]}
        atomic_write_bytes(self._sidecar(), (json.dumps(meta, indent=2) + "\n").encode())


class TrainingInputs:
    """Batches for the training (or eval) model of an export: raw examples, or the prefix's outputs (cached)."""

    def __init__(self, artifacts: Path, manifest: dict, dataset, *, which: str, cache_dir: Path | None,
                 budget: list, cache: bool, session_options=None, augment: bool = False, prefix_runner=None):
        """`prefix_runner(x) -> list of arrays` runs the prefix (default: prefix.onnx in an ORT InferenceSession)."""
        self.dataset, self.augment = dataset, augment
        self.labels = labels_of(dataset)
        self.dtype = np.int64 if manifest["input"]["dtype"] == "int64" else np.float32
        self.prefix, self.store = None, None
        prefix = manifest.get("prefix")
        if not prefix:
            return
        self.prefix = prefix_runner or ort_runner(artifacts / prefix["file"], session_options)
        if not cache or augment:
            return
        specs = prefix["boundary"]
        need_mb = len(dataset) * sum(int(np.prod(s["shape"][1:])) * np.dtype(s["dtype"]).itemsize for s in specs) / 2**20
        fingerprint = {"prefix_sha256": (manifest.get("sha256") or {}).get(prefix["file"]), "data": getattr(dataset, "spec", None),
                       "examples": len(dataset), "labels_sha256": _digest(self.labels), "preprocess": manifest["preprocess"]}
        on_disk = need_mb > budget[0]
        if on_disk and cache_dir is None:
            return
        if not on_disk:
            budget[0] -= need_mb
        self.store = BoundaryStore(specs, len(dataset), cache_dir / which if on_disk else None, fingerprint)
        self.where = f"{'memory-mapped files' if on_disk else 'memory'} ({need_mb:.0f} MB)"

    def describe(self) -> str:
        if self.prefix is None:
            return "no frozen prefix"
        if self.store is None:
            return "prefix recomputed every epoch" + (" (augmentation is on)" if self.augment else "")
        return f"prefix outputs cached in {self.where}"

    def raw(self, idx: np.ndarray, rng) -> np.ndarray:
        x = np.stack([as_numpy(self.dataset[int(i)][0]) for i in idx]).astype(self.dtype, copy=False)
        if self.augment and x.ndim == 4:
            flip = rng.random(len(x)) < 0.5
            x[flip] = x[flip][..., ::-1]
        return x

    def batches(self, order: np.ndarray, batch_size: int, rng=None):
        """(inputs: list of arrays in the training model's input order, labels) per batch of `order`."""
        for start in range(0, len(order), batch_size):
            idx = np.asarray(order[start:start + batch_size])
            y = self.labels[idx]
            if self.prefix is None:
                yield [self.raw(idx, rng)], y
            elif self.store is not None and self.store.filled[idx].all():
                yield self.store.take(idx), y
            else:
                outputs = self.prefix(self.raw(idx, rng))
                if self.store is not None:
                    self.store.put(idx, outputs)
                yield outputs, y


def ort_runner(path: Path, session_options=None):
    """prefix.onnx in an ONNX Runtime InferenceSession, as a callable x -> list of output arrays."""
    import onnxruntime as ort
    try:
        session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ZestError(f"cannot load {path}: {first_line(e)}") from None
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def _digest(array: np.ndarray) -> str:
    import hashlib
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
