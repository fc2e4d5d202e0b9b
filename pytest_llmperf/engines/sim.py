"""The simulated engine: ``python -m pytest_llmperf.sim serve`` on a profile."""

from __future__ import annotations

import sys
from typing import Any, Mapping

from ..suite import EngineConfig
from ..topology import SIM_NODE_SNAPSHOT, load_snapshot
from .base import EngineAdapter


class SimAdapter(EngineAdapter):
    name = "sim"

    def argv(self, config: EngineConfig, host: str, port: str, slowdown: float) -> list[str]:
        profile = config.option("profile")
        if not isinstance(profile, str) or not profile:
            raise ValueError(f"sim configuration {config.id} needs a 'profile' (a sim profile name or TOML path)")
        return [
            sys.executable, "-m", "pytest_llmperf.sim", "serve",
            "--host", host, "--port", port,
            "--profile", profile,
            "--served-model-name", config.model,
            "--slowdown", repr(float(slowdown)),
            *config.args,
        ]

    def node_snapshot(self) -> tuple[Mapping[str, Any], str]:
        return load_snapshot(SIM_NODE_SNAPSHOT), f"simulated node {SIM_NODE_SNAPSHOT.name}"


ADAPTER = SimAdapter()
