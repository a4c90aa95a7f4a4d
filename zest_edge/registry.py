"""A name → object registry that refuses duplicates and lists valid choices on a miss."""
import difflib

from .errors import ZestError


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str):
        """Decorator: `@REG.register("name")`."""
        def wrap(obj):
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = obj
            return obj
        return wrap

    def get_or_fail(self, name: str):
        if name not in self:
            raise ZestError(f"unknown {self.kind} {name!r}{suggest(name, self)}; choose from: {', '.join(sorted(self))}")
        return self[name]


def suggest(name: str, choices) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""
