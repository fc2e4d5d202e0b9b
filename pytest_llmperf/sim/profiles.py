"""Sim profiles: TOML files under ``sim/profiles/`` (or any path) -> ``Profile``.

A profile file holds the fields of ``Profile`` at the top level; ``name``
defaults to the file's stem. Unknown keys are rejected. ``gpus`` (an integer
>= 1, default 8) is how many GPUs the configuration it stands in for uses:
the run's GPU count for a sim configuration, with no effect on its timing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .model import Profile

PROFILES_DIR: Path = Path(__file__).resolve().parent / "profiles"
_FIELDS = {f.name: f for f in dataclasses.fields(Profile)}


def list_profiles() -> list[str]:
    """Names of the built-in profiles, sorted."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    text = os.fspath(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or os.sep in text or (os.altsep and os.altsep in text):
        if not path.is_file():
            raise ValueError(f"sim profile file not found: expected a TOML file at {path}")
        return path
    builtin = PROFILES_DIR / f"{text}.toml"
    if not builtin.is_file():
        raise ValueError(f"unknown sim profile {text!r}: expected one of {', '.join(list_profiles())} "
                         f"or a path to a .toml file")
    return builtin


def profile_from_mapping(data: dict, name: str, source: str = "<mapping>") -> Profile:
    """Build a Profile from parsed TOML, rejecting unknown keys and wrong types."""
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(f"sim profile {source}: unknown key(s) {', '.join(unknown)}; "
                         f"expected keys among {', '.join(sorted(_FIELDS))}")
    values = {"name": name, **data}
    required = [n for n, f in _FIELDS.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in values]
    if required:
        raise ValueError(f"sim profile {source}: missing required key(s) {', '.join(required)}")
    for key, value in values.items():
        if isinstance(_FIELDS[key].default, str) or key in ("name", "scheduler"):
            if not isinstance(value, str):
                raise ValueError(f"sim profile {source}: {key} must be a string, got {value!r}")
    try:
        return Profile(**values)
    except ValueError as exc:
        raise ValueError(f"sim profile {source}: {exc}") from None


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """A built-in profile by name, or a profile file by path."""
    path = _resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"sim profile {path} is not valid TOML: {exc}") from None
    return profile_from_mapping(data, path.stem, str(path))
