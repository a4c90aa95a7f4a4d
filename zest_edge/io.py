"""Atomic file output and durable append-only logs."""
import contextlib
import errno
import glob
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import ZestError, first_line

FORMAT_PREFIX = "zest-edge/"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(path, tmp=None, *, native: bool = False):
    """The one wrapper around every write: `tmp` (a temporary file or folder) is removed on any failure, and an OS
    error (disk full, read-only, no permission) becomes one ZestError naming `path` and the cause. `native`: the
    writer is a native library that reports a failed write as another exception type; any error counts."""
    try:
        yield
    except BaseException as e:
        if tmp is not None:
            _remove(tmp)
        if isinstance(e, ZestError) or not isinstance(e, OSError if not native else Exception):
            raise
        cause = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise ZestError(f"cannot write {path}: {cause}") from None


def write_all(f, data: bytes) -> None:
    """Write `data` to the open file `f`, flush and fsync it (the one low-level write every atomic file goes through)."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def reserve_space(path) -> None:
    """Allocate the blocks of a (sparse) file now, so a full disk is an OSError here rather than a SIGBUS when a
    memory map of it is written later; filesystems without fallocate are left as they are."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename into place; a failure leaves neither half a file nor the
    temporary one (OS errors: one ZestError naming `path`)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        with writing(path, tmp):
            with open(tmp, "wb") as f:
                write_all(f, data)
            os.chmod(tmp, 0o666 & ~_umask())          # mkstemp creates 0600; give the file normal permissions
            os.replace(tmp, path)


def _nonfinite(obj, where: str = ""):
    """The JSON path of the first NaN/inf float in `obj`, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "the value"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _nonfinite(value, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]")
        if found:
            return found
    return None


def to_json(obj, path, indent: int | None = 2) -> str:
    """Strict JSON (NaN and inf are not JSON): a non-finite number is a ZestError naming the field."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        where = _nonfinite(obj)
        if where is None:
            raise
        raise ZestError(f"refusing to write {path}: {where.lstrip('.')} is not a finite number") from None


def write_json(path, obj) -> None:
    atomic_write_bytes(path, (to_json(obj, path) + "\n").encode())


def write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_report(out, name: str, record: dict, text: str) -> None:
    """A report as files: out/<name>.json (the data), then out/<name>.md (its Markdown view), each atomic."""
    write_json(Path(out) / f"{name}.json", record)
    write_text(Path(out) / f"{name}.md", text)


def report_main(out, name: str, build, *, show: bool = True) -> int:
    """A report tool's main(): build() -> (record, markdown), written as write_report does, then the Markdown printed
    (show=False: one "wrote" line). A ZestError is one line on stderr, exit status 1, and nothing written."""
    try:
        record, text = build()
        write_report(out, name, record, text)
    except ZestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text if show else f"wrote {out}/{name}.json and {name}.md\n", end="")
    return 0


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


def cut_torn_line(f, path) -> None:
    """Cut a torn last line (a kill mid-write) off the JSONL file open as `f` ("a+b"), with a one-line warning on
    stderr naming the file."""
    end = f.seek(0, os.SEEK_END)
    if end:
        f.seek(max(end - (1 << 16), 0))
        tail = f.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            if cut < 0 and end > len(tail):
                raise ZestError(f"{path}: its last line is longer than 64 KiB and unfinished")
            f.truncate(end - len(tail) + cut + 1)
            print(f"warning: {path}: cut off a torn last line ({len(tail) - cut - 1} bytes left by an interrupted "
                  "write)", file=sys.stderr, flush=True)


def repair_jsonl(path) -> None:
    """Cut a torn last line off an existing JSONL file now (as the next append would), so the warning comes first."""
    if Path(path).exists():
        with writing(path), open(path, "a+b") as f:
            cut_torn_line(f, path)


def append_jsonl(path, row: dict) -> None:
    """Append one strict-JSON row and fsync, so a kill never loses a finished row. A torn last line is cut off first
    (cut_torn_line), so the new row starts on a line of its own."""
    line = (to_json(row, path, indent=None) + "\n").encode()
    with writing(path), open(path, "a+b") as f:
        cut_torn_line(f, path)
        write_all(f, line)


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
def atomic_dir(out, force: bool = False, keep=None):
    """Yield a temporary sibling folder; on success it replaces `out`, on failure it is removed. Until the swap
    `out` is untouched, so a failure or a kill mid-way leaves it as it was (what a kill left beside it is cleaned up
    by the next atomic_dir for `out`). `keep(entry)`: entries of the old `out` to move into the new one."""
    out = Path(out)
    old = out.with_name(f".{out.name}.old")
    with writing(out):
        if old.exists() and not out.exists():       # a kill between the two renames of a swap: put it back
            os.replace(old, out)
        refuse_nonempty(out, force)
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
            _remove(stale)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    with writing(out, tmp):
        if out.exists():
            for entry in out.iterdir() if keep is not None else ():
                if keep(entry) and not (tmp / entry.name).exists():
                    os.replace(entry, tmp / entry.name)
            _remove(old)
            os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.replace(tmp, out)


@contextlib.contextmanager
def output_dir(out, *, replace: bool, keep=None, resumable=None):
    """The folder a run writes into: with `replace` (a --force over a non-empty `out`) a temporary sibling that
    replaces `out` only once the run has succeeded (atomic_dir); otherwise `out` itself, created on entry (a killed
    run there stays resumable). A run that fails in a folder it created, before `resumable(out)` holds, removes it."""
    out = Path(out)
    if replace and out.exists() and any(out.iterdir()):
        with atomic_dir(out, force=True, keep=keep) as tmp:
            yield tmp
        return
    created = not out.exists()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if created and resumable is not None and not resumable(out):
            _remove(out)
        raise
