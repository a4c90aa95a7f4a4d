"""The one exception type for problems a user can fix; the CLI prints it as one line and exits 2."""


class ZestError(Exception):
    """A user-facing error: bad input, missing file, impossible request."""
