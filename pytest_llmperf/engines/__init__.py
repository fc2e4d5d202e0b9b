"""Engine adapters, one module per engine; ``base`` is their interface, ``lifecycle`` runs the process.

Names are reserved here so that adding an engine only adds its module.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .base import EngineAdapter

ENGINE_NAMES: tuple[str, ...] = ("sim", "vllm", "sglang", "trtllm", "external")
# How long each engine may take to become ready by default (--startup-timeout overrides); the adapters and
# the option's help read it from here.
STARTUP_TIMEOUT_S: dict[str, float] = {
    "sim": 600.0,
    "vllm": 1800.0,  # weights of a large model, CUDA graphs, kernels
    "sglang": 3600.0,  # first boots compile DeepGEMM kernels; its own CI allows an hour on H200
    "trtllm": 3600.0,  # its own perf tests wait up to an hour
    "external": 600.0,  # it should be up already; one still warming up (503) is waited for
}

# Requests sent once after each boot, before any case (a configuration's warmup_requests and --warmup-requests
# override): real engines compile, capture graphs and fill allocators on their first requests; the simulated
# engine has nothing to warm, so a few requests keep the quick start fast while the path stays exercised; an
# external endpoint is already warm (and may be shared), so it gets none unless asked.
WARMUP_REQUESTS: dict[str, int] = {"sim": 4, "external": 0}  # a server we did not start: only when asked
DEFAULT_WARMUP_REQUESTS = 32


def default_warmup_requests(engine: str) -> int:
    return WARMUP_REQUESTS.get(engine, DEFAULT_WARMUP_REQUESTS)


class EngineUnavailable(LookupError):
    """The engine name is valid but has no adapter in this version."""


def get_adapter(name: str) -> "EngineAdapter":
    """The adapter for ``name``; EngineUnavailable for reserved names without one."""
    if name not in ENGINE_NAMES:
        raise EngineUnavailable(f"unknown engine {name!r}; valid choices: {', '.join(ENGINE_NAMES)}")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        from .. import __version__

        available = [n for n in ENGINE_NAMES if importlib.util.find_spec(f"{__name__}.{n}") is not None]
        raise EngineUnavailable(
            f"engine {name!r} is reserved but has no adapter in pytest-llmperf {__version__}; "
            f"available now: {', '.join(available)}"
        ) from None
    return module.ADAPTER
