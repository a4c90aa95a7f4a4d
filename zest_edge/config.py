"""YAML configs (yaml.safe_load only), checked against the keys a command accepts."""
from pathlib import Path

import yaml

from .errors import ZestError, first_line


def load_config(path, allowed: set[str] | None) -> dict:
    """A YAML mapping; with `allowed`, unknown keys are refused (None: the caller checks them)."""
    path = Path(path)
    if not path.is_file():
        raise ZestError(f"config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ZestError(f"{path} is not valid YAML ({first_line(e)})") from None
    if not isinstance(cfg, dict):
        raise ZestError(f"{path} must hold a mapping of settings")
    unknown = sorted(set(cfg) - allowed) if allowed is not None else []
    if unknown:
        raise ZestError(f"{path}: unknown setting {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    return cfg
