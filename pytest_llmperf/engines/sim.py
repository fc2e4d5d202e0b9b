"""The simulated engine: ``python -m pytest_llmperf.sim serve`` on a profile."""

from __future__ import annotations

import sys
from pathlib import Path

from ..suite import EngineConfig
from ..node.sources import SimulatedNode
from . import STARTUP_TIMEOUT_S
from .base import EngineAdapter, Launch
from .vllm import RESET_PREFIX_CACHE


def _profile(config: EngineConfig) -> str:
    """The config's profile: a built-in name, or a TOML path (relative to the suite file)."""
    profile = config.option("profile")
    if not isinstance(profile, str) or not profile:
        raise ValueError(f"sim configuration {config.id} needs a 'profile' (a sim profile name or TOML path)")
    if profile.endswith(".toml") and not Path(profile).is_absolute() and config.source_dir:
        return str(Path(config.source_dir) / profile)
    return profile


class SimAdapter(EngineAdapter):
    name = "sim"
    startup_timeout_s = STARTUP_TIMEOUT_S["sim"]
    option_keys = frozenset({"profile"})
    metrics_format = "prometheus"
    cache_reset_routes = (RESET_PREFIX_CACHE,)  # the sim answers vLLM's route

    def validate(self, config: EngineConfig) -> None:
        from ..sim.profiles import load_profile

        super().validate(config)
        try:
            load_profile(_profile(config))
        except ValueError as exc:
            raise ValueError(f"sim configuration {config.id}: {exc}") from None

    def gpus_needed(self, config: EngineConfig) -> int:
        """The profile's ``gpus`` (8 unless it says): the GPUs of the configuration it stands in for.

        Never from ``args``: the sim's count is the profile's, or the suite's ``gpus = N``.
        """
        from ..sim.profiles import load_profile

        profile = _profile(config)
        try:
            return load_profile(profile).gpus
        except ValueError as exc:
            raise ValueError(f"sim configuration {config.id}: {exc}") from None

    def gpus_said(self, config: EngineConfig, needed: int) -> str:
        return f"its sim profile {config.option('profile')} stands in for {needed} GPU{'' if needed == 1 else 's'}"

    def argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        return [
            sys.executable, "-m", "pytest_llmperf.sim", "serve",
            "--host", launch.host, "--port", launch.port,
            "--profile", _profile(config),
            "--served-model-name", launch.served_model_name or config.model,
            "--slowdown", repr(float(launch.slowdown)),
            *config.args,
        ]

    def node_source(self) -> SimulatedNode:
        """The simulated node: a recorded 8x H200 HGX snapshot, or the file LLMPERF_SIM_NODE names."""
        return SimulatedNode.from_environment()


ADAPTER = SimAdapter()
