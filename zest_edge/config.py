"""YAML configs (yaml.safe_load only), checked against the keys a command accepts.

A config may start from another: `base: other.yaml` (a path relative to the config's folder) takes every setting of
that file, and the config's own settings replace those it names (e.g. a retest sweep: the first sweep's config with
another `train_seed`). Bases chain; a cycle is refused.
"""
from pathlib import Path

import yaml

from .errors import ZestError, first_line

BASE = "base"


def _read_mapping(path: Path) -> dict:
    if not path.is_file():
        raise ZestError(f"config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ZestError(f"{path} is not valid YAML ({first_line(e)})") from None
    if not isinstance(cfg, dict):
        raise ZestError(f"{path} must hold a mapping of settings")
    return cfg


def _resolve(path: Path, seen: tuple[Path, ...]) -> dict:
    """The settings of `path` on top of its base chain's."""
    cfg = _read_mapping(path)
    if BASE not in cfg:
        return cfg
    base = cfg.pop(BASE)
    if not isinstance(base, str) or not base:
        raise ZestError(f"{path}: `{BASE}` must name another config file")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ZestError(f"{path}: `{BASE}: {base}` makes a cycle of configs")
    return {**_resolve(base_path, seen + (base_path,)), **cfg}


def load_config(path, allowed: set[str] | None) -> dict:
    """A YAML mapping (its `base` chain merged); with `allowed`, unknown keys are refused (None: the caller checks
    them)."""
    path = Path(path)
    cfg = _resolve(path, (path.resolve(),))
    unknown = sorted(set(cfg) - allowed) if allowed is not None else []
    if unknown:
        raise ZestError(f"{path}: unknown setting {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    return cfg
