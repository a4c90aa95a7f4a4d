"""One way to check what is read back: a dataclass per file format or config, whose field types are checked on load.

    @dataclass
    class RankedLayer:
        name: str
        rank: int

    @dataclass
    class RankingFile:
        KIND: ClassVar[str] = "ranking"         # read_record checks the file's `format` is zest-edge/ranking
        model: str
        layers: list[RankedLayer]

    parse(RankingFile, mapping, "ranking.json")   # or read_record("ranking.json", RankingFile)

A missing required field, a value of the wrong type (nested dataclasses and list items included) or, with
`unknown="refuse"`, a key the dataclass lacks is one ZestError naming the file, the field and the expected type.
Supported annotations: str, int, float (an int is accepted), bool, list, list[T], dict, Any, T | None, dataclasses.
"""
import dataclasses
import types
import typing

from .errors import ZestError


def type_name(t) -> str:
    """How an annotation reads in an error message."""
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if typing.get_origin(t) is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if dataclasses.is_dataclass(t):
        return f"a mapping with {', '.join(f.name for f in dataclasses.fields(t) if _required(f))}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a mapping",
            list: "a list", type(None): "null"}.get(t, getattr(t, "__name__", str(t)))


def _plural(t) -> str:
    if dataclasses.is_dataclass(t):
        return type_name(t).replace("a mapping", "mappings", 1)
    return {str: "strings", int: "integers", float: "numbers", bool: "booleans", dict: "mappings"}.get(t, type_name(t))


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _fits(value, t) -> bool:
    """Whether `value` has type `t` at its top level (items and nested fields are checked by `_check`)."""
    if t is typing.Any:
        return True
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(t))
    if dataclasses.is_dataclass(t) or t is dict or origin is dict:
        return isinstance(value, dict)
    if t is list or origin is list:
        return isinstance(value, list)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is type(None):
        return value is None
    return isinstance(value, t)


def _check(value, t, where: str, field: str):
    """`value` checked against `t` (recursively); dataclass-typed values come back as instances."""
    if not _fits(value, t):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ZestError(f"{where}: {field} must be {type_name(t)}, got {shown}")
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        arm = next(a for a in typing.get_args(t) if _fits(value, a))
        return _check(value, arm, where, field)
    if dataclasses.is_dataclass(t):
        return _parse(t, value, where, field + ".", "ignore")
    if origin is list and typing.get_args(t):
        return [_check(v, typing.get_args(t)[0], where, f"{field}[{i}]") for i, v in enumerate(value)]
    return value


def _parse(cls, obj: dict, where: str, prefix: str, unknown: str):
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    if unknown == "refuse":
        extra = sorted(set(obj) - set(known))
        if extra:
            raise ZestError(f"{where}: unknown setting {prefix}{extra[0]!r}; allowed: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        if name not in obj:
            if _required(f):
                raise ZestError(f"{where}: {prefix}{name} is missing (expected {type_name(hints[name])})")
            continue
        values[name] = _check(obj[name], hints[name], where, prefix + name)
    return cls(**values)


def parse(cls, obj, where: str, *, unknown: str = "ignore", field: str = ""):
    """An instance of the dataclass `cls` from the mapping `obj` (read from `where`, at `field` inside it), every
    field's type checked; `unknown="refuse"` also refuses keys `cls` has no field for (configs), "ignore" skips them
    (file formats)."""
    if not isinstance(obj, dict):
        raise ZestError(f"{where}{': ' + field if field else ''} must hold a mapping, got {type(obj).__name__}")
    return _parse(cls, obj, where, f"{field}." if field else "", unknown)


def read_record(path, cls) -> tuple[dict, object]:
    """(the mapping, its checked `cls` instance) of a zest-edge JSON file whose format is `cls.KIND`."""
    from .io import read_json
    obj = read_json(path, cls.KIND)
    return obj, parse(cls, obj, str(path))
