"""What every engine shares: the adapter interface and how a configuration is launched.

An adapter knows one engine's command line, environment, readiness path and
version routes; nothing else here knows any engine's flags. Starting,
watching and stopping the process is ``lifecycle``'s.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from ..suite import EngineConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..http import ControlClient

LOCALHOST = "127.0.0.1"
PORT_PLACEHOLDER = "{port}"


@dataclass(frozen=True)
class Launch:
    """Where and how one configuration is launched (chosen at boot, or shown by --dry-run)."""

    host: str = LOCALHOST
    port: str = PORT_PLACEHOLDER
    model: str = ""  # what the engine loads: a hub id or a local path
    served_model_name: str | None = None  # None: the engine's own default
    chat_template: Path | None = None
    slowdown: float = 1.0  # the simulated engine only
    gpu_uuids: tuple[str, ...] = ()  # the checked GPUs the engine gets
    extra_ports: tuple[tuple[str, str], ...] = ()  # (flag, port): ports reserved for flags of port_flags()


@dataclass(frozen=True)
class ResetRoute:
    """A route that empties an engine's caches (POST), and how to read its answers."""

    path: str
    busy_statuses: frozenset[int] = frozenset()  # answers meaning "not idle yet": retried until the timeout
    missing_hint: str = ""  # the next step when the route answers 404


def launch_for(config: EngineConfig, adapter: "EngineAdapter", port: str = PORT_PLACEHOLDER,
               gpu_uuids: tuple[str, ...] = (), chat_template: Path | None = None, slowdown: float = 1.0) -> Launch:
    """How ``config`` is launched: the model it loads, the name it serves, the GPUs it gets."""
    served = config.served_name or config.option("served_model_name")
    return Launch(host=LOCALHOST, port=port, model=config.model_to_load,
                  served_model_name=served if adapter.takes_served_model_name else None,
                  chat_template=chat_template, slowdown=slowdown, gpu_uuids=gpu_uuids)


class EngineAdapter:
    """One engine: its command line, environment, readiness and version.

    Each engine's flags live in its own module; nothing here knows them.
    """

    name = "engine"
    ready_path = "/health"
    version_paths: tuple[str, ...] = ("/version",)
    uses_gpus = False  # the engine runs on the node's GPUs (gets CUDA_VISIBLE_DEVICES, is watched by NVML)
    boots = True  # False: the engine is already running somewhere (nothing to launch)
    startup_timeout_s = 600.0  # default wait for readiness (each engine's in STARTUP_TIMEOUT_S)
    takes_served_model_name = True  # the engine can serve under another name (or, external: already does)
    option_keys: frozenset[str] = frozenset()  # engine-specific keys a suite configuration may set
    # Top-level request fields the engine accepts, per endpoint path; None: any (the OpenAI fields the client sends).
    request_fields: Mapping[str, frozenset[str]] | None = None
    # What GET /metrics serves: "prometheus", "trtllm-json" (iteration stats, drained by each read) or None.
    metrics_format: str | None = None
    # Routes that reset the engine's caches between runs, tried in order until one exists; () when it has none.
    cache_reset_routes: tuple[ResetRoute, ...] = ()

    def argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        raise NotImplementedError

    def validate(self, config: EngineConfig) -> None:
        """Raise ValueError, naming the configuration, if it cannot be launched."""
        unknown = sorted(k for k, _ in config.options if k not in self.option_keys)
        if unknown:
            valid = ", ".join(sorted(self.option_keys)) or "none"
            raise ValueError(f"{config.id}: unknown keys {unknown} for engine {self.name}; valid engine keys: {valid}")

    # The flags gpus_needed reads: those taking a number, and switches (shown when a count disagrees).
    gpu_flags: tuple[str, ...] = ()
    gpu_switches: tuple[str, ...] = ()

    def gpus_needed(self, config: EngineConfig) -> int | None:
        """How many GPUs the configuration uses, read from its flags; None when this engine cannot say.

        ValueError, naming the configuration and the flag, when a flag's value is not an integer >= 1.
        """
        return None

    def gpus_said(self, config: EngineConfig, needed: int) -> str:
        """Where ``needed`` came from, for a message: ``its flags use 8 GPUs (--tp-size 8)``."""
        words = gpu_flag_words(config.args, self.gpu_flags, self.gpu_switches, self.flag_spelling)
        return f"its flags use {_gpus(needed)} ({' '.join(words) if words else 'no parallel flags: 1'})"

    @staticmethod
    def flag_spelling(flag: str) -> str:
        """A flag as written -> the spelling the adapter names it by (the engine's own parser may accept others)."""
        return flag

    def env(self, config: EngineConfig, launch: Launch) -> dict[str, str]:
        """Variables set on top of the current environment."""
        env = dict(config.env)
        if self.uses_gpus and launch.gpu_uuids:
            # NVML's index order ignores CUDA_VISIBLE_DEVICES; UUIDs name the checked GPUs exactly.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(launch.gpu_uuids)
        return env

    def port_flags(self, config: EngineConfig) -> tuple[str, ...]:
        """Flags of ``config``'s command line that take a TCP port the engine would otherwise bind at a fixed
        default (two such engines side by side would collide); each gets a port reserved with its GPU lease."""
        return ()

    def node_source(self) -> Any:
        """The node this engine runs on when it is not this machine's (the sim's simulated node), else None."""
        return None

    def notes(self, config: EngineConfig, launch: Launch) -> list[str]:
        """Things a user should know about how this configuration is launched."""
        return []

    def missing_executable(self, config: EngineConfig) -> str | None:
        """Why the engine's program cannot be started here, or None."""
        return None

    def display_argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        """The command line as stored with baselines: no port, no interpreter path."""
        argv = self.argv(config, replace(launch, host=LOCALHOST, port=PORT_PLACEHOLDER,
                                         extra_ports=tuple((f, PORT_PLACEHOLDER) for f, _ in launch.extra_ports)))
        return ["python" if a == sys.executable else a for a in argv]

    def version(self, client: "ControlClient") -> str:
        """The version the running engine reports, or ``unknown (why)``."""
        from ..http import HttpFailure

        why = "no version route answered"
        for path in self.version_paths:
            try:
                reply = client.get(path)
            except HttpFailure as exc:
                why = f"{path}: {exc.kind}"
                continue
            if reply.status != 200:
                why = f"{path} answered HTTP {reply.status}"
                continue
            try:
                version = reply.json().get("version")
            except (ValueError, AttributeError):
                why = f"{path} did not answer a JSON object"
                continue
            if version:
                return str(version)
            why = f"{path} has no 'version'"
        return f"unknown ({why})"


def flag_value(args: Iterable[str], names: Iterable[str],
               normalize: Callable[[str], str] = lambda flag: flag) -> tuple[str, str | None] | None:
    """The last of ``names`` in ``args`` (``--flag N`` or ``--flag=N``) as (flag as written, value), else None.

    The last one wins, as with the engines' own parsers; the value is None when the flag ends the line.
    ``normalize`` maps a flag as written to the spelling in ``names`` (vLLM takes ``--tensor_parallel_size``).
    """
    wanted = set(names)
    args = list(args)
    found = None
    for i, arg in enumerate(args):
        if not arg.startswith("-"):
            continue
        flag, eq, value = arg.partition("=")
        if normalize(flag) in wanted:
            found = (flag, value) if eq else (flag, args[i + 1] if i + 1 < len(args) else None)
    return found


def _gpus(count: int) -> str:
    return f"{count} GPU{'' if count == 1 else 's'}"


def gpu_flag_words(args: Iterable[str], flags: Iterable[str], switches: Iterable[str] = (),
                   normalize: Callable[[str], str] = lambda flag: flag) -> list[str]:
    """The words of ``args`` that are one of ``flags`` (with its value) or one of ``switches``."""
    flags, switches, args = set(flags), set(switches), list(args)
    words: list[str] = []
    for i, arg in enumerate(args):
        if not arg.startswith("-"):
            continue
        flag, eq, _ = arg.partition("=")
        if normalize(flag) in switches:
            words.append(arg)
        elif normalize(flag) in flags:
            words.extend([arg] if eq or i + 1 == len(args) else [arg, args[i + 1]])
    return words


def size_flag(config: EngineConfig, names: Iterable[str], default: int = 1,
              normalize: Callable[[str], str] = lambda flag: flag) -> int:
    """A parallel size from the configuration's flags (``default`` when absent); ValueError unless an integer >= 1."""
    found = flag_value(config.args, names, normalize)
    if found is None:
        return default
    flag, value = found
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        got = "nothing" if value is None else repr(value)
        raise ValueError(f"{config.id}: {flag} expects an integer >= 1, got {got}")
    return int(text)


def find_executable(program: str) -> str | None:
    """Why ``program`` cannot be run from here, or None when it can."""
    if os.sep in program:
        return None if os.access(program, os.X_OK) else f"{program} is not an executable file"
    return None if shutil.which(program) else f"{program} is not on PATH"


def python_module_missing(python: str, module: str) -> str | None:
    """Why ``python -m module`` cannot run, or None (checked only for this interpreter)."""
    if python != sys.executable:
        return find_executable(python)
    import importlib.util

    try:
        # The top-level package only: importing a real engine's package is slow and may need a GPU.
        found = importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"module {module} is not importable by {python}"


def free_port(host: str = LOCALHOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
