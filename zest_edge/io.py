"""Atomic file output and durable append-only logs."""
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ZestError

FORMAT_PREFIX = "zest-edge/"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_json(path, kind: str | None = None) -> dict:
    """Read a JSON file; with `kind`, check its `format` field is zest-edge/<kind>."""
    path = Path(path)
    if not path.is_file():
        raise ZestError(f"file not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZestError(f"{path} is not valid JSON ({e})") from None
    if kind is not None and (not isinstance(obj, dict) or obj.get("format") != FORMAT_PREFIX + kind):
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ZestError(f"{path} is not a zest-edge {kind} file (format: {found!r})")
    return obj


def append_jsonl(path, row: dict) -> None:
    """Append one JSON row and fsync, so a kill never loses a finished row. A torn last line (a kill mid-write) is
    cut off first, so the new row starts on a line of its own."""
    with open(path, "a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(max(end - (1 << 16), 0))
            tail = f.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                if cut < 0 and end > len(tail):
                    raise ZestError(f"{path}: its last line is longer than 64 KiB and unfinished")
                f.truncate(end - len(tail) + cut + 1)
        f.write((json.dumps(row) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (killed mid-write) is ignored, a corrupt middle line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ZestError(f"{path}: line {i + 1} is corrupt") from None
    return rows


def sha256(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_dir(module: str, install: str) -> Path:
    """Folder of an installed package that ships data or weights, found without importing it."""
    import importlib.util
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ZestError(f"{module} is not installed: pip install {install}")
    return Path(spec.origin).parent


def refuse_nonempty(out, force: bool = False, hint: str = "use --force to replace it") -> None:
    """The one "output exists" check: a non-empty folder (or a file) at `out` is an error unless `force`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ZestError(f"output {out} exists and is not empty ({hint})")


@contextlib.contextmanager
def atomic_dir(out, force: bool = False):
    """Yield a temporary sibling folder; on success it replaces `out`, on failure it is removed."""
    out = Path(out)
    refuse_nonempty(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
