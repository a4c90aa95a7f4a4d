"""The one exception type for problems a user can fix; the CLI prints it as one line and exits 2."""


class ZestError(Exception):
    """A user-facing error: bad input, missing file, impossible request."""


class Diverged(ZestError):
    """Training stopped because the loss became NaN or infinite (a learning rate too high for the run)."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of a foreign exception, without the native source prefixes ONNX Runtime adds
    (`/path/file.cc:123 Class::method(args...) ` and `[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : `)."""
    import re
    text = str(e).strip() or type(e).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    line = line.split("] : ", 1)[-1] if "] : " in line else line
    line = re.sub(r"^\d+ : [A-Z_]+ : ", "", line)
    m = re.match(r"^\S+\.(?:cc|cpp|h):\d+ .*?\)\s+(\S.*)$", line)
    return m.group(1) if m else line
