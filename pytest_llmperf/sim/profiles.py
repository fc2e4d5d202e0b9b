"""Sim profiles: TOML files under ``sim/profiles/`` (or any path) -> ``Profile``.

A profile file holds the fields of ``Profile`` at the top level; ``name``
defaults to the file's stem. Unknown keys are rejected. With ``hardware =
"h200"`` the step costs come from ``sim/hardware.py`` and the profile sets
the engine's efficiencies; without it, from linear coefficients. ``base =
NAME`` starts from another profile's keys. ``gpus`` (an integer
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
LINEAR_KEYS = ("step_base_ms", "decode_ms_per_seq", "prefill_ms_per_token", "kv_capacity_tokens")
"""What a profile without ``hardware`` must set: its step cost is their linear sum."""
HARDWARE_KEYS = ("gemm_efficiency", "attention_efficiency", "memory_efficiency", "nvlink_efficiency",
                 "layer_latency_us", "cpu_ms_per_step", "cpu_us_per_seq")
"""What a profile with ``hardware`` must set: the engine's efficiencies on it."""
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
    required += [n for n in (HARDWARE_KEYS if values.get("hardware") else LINEAR_KEYS) if n not in values]
    if required:
        raise ValueError(f"sim profile {source}: missing required key(s) {', '.join(required)}")
    for key, value in values.items():
        if isinstance(_FIELDS[key].default, str) or key in ("name", "scheduler", "hardware"):
            if not isinstance(value, str):
                raise ValueError(f"sim profile {source}: {key} must be a string, got {value!r}")
    try:
        return Profile(**values)
    except ValueError as exc:
        raise ValueError(f"sim profile {source}: {exc}") from None


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"sim profile {path} is not valid TOML: {exc}") from None


def _with_base(data: dict, path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """``data`` over the keys of the profile its ``base`` names (a built-in name or a path next to it)."""
    if "base" not in data:
        return data
    base = data["base"]
    if not isinstance(base, str) or not base:
        raise ValueError(f"sim profile {path}: base must be a profile name or path, got {base!r}")
    relative = base.endswith(".toml") and not Path(base).is_absolute()
    base_path = _resolve(str(path.parent / base) if relative else base)
    if base_path.resolve() in seen or base_path.resolve() == path.resolve():
        raise ValueError(f"sim profile {path}: its base {base!r} leads back to itself")
    merged = dict(_with_base(_read(base_path), base_path, seen + (path.resolve(),)))
    for key in ("description", "stands_in_for"):
        merged.pop(key, None)  # a derived configuration says what it is itself
    merged.update({k: v for k, v in data.items() if k != "base"})
    return merged


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """A built-in profile by name, or a profile file by path.

    ``base = "NAME"`` takes every key of that profile (a built-in name, or a
    path relative to this file) and changes those the file sets.
    """
    path = _resolve(name_or_path)
    return profile_from_mapping(_with_base(_read(path), path), path.stem, str(path))
