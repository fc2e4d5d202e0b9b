"""What ``--dry-run`` prints: each configuration's launch, its workloads, the node verdicts.

``describe`` gathers a configuration's launch as plain values (it asks the
adapter, which looks for the engine's program, and masks secrets);
``plan_lines`` is pure formatting.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .secrets import redact_argv, redact_env
from .suite import EngineConfig, Workload


@dataclass(frozen=True)
class ConfigPlan:
    config_id: str
    description: str = ""
    argv: tuple[str, ...] = ()  # secrets masked; empty for an external endpoint
    env: Mapping[str, str] | None = None  # secrets masked
    endpoint: str | None = None  # an external endpoint: nothing is launched
    warning: str | None = None  # why the engine's program cannot be started here
    engine: str = ""
    engine_version: str = ""
    expected_failure: str = ""
    notes: tuple[str, ...] = ()
    workloads: tuple[Workload, ...] = ()
    gpus: int | None = None  # GPUs the launch uses (None: every GPU the node check picks)


def describe(config: EngineConfig, adapter: Any, launch: Any, workloads: Sequence[Workload]) -> ConfigPlan:
    """A configuration's launch as the dry run shows it."""
    boots = adapter.boots
    return ConfigPlan(
        config_id=config.id,
        description=config.description,
        argv=tuple(redact_argv(adapter.argv(config, launch))) if boots else (),
        env=redact_env(adapter.env(config, launch)) if boots else None,
        endpoint=None if boots else adapter.base_url(config),
        warning=adapter.missing_executable(config) if boots else None,
        engine=config.engine,
        engine_version=config.engine_version,
        expected_failure=config.expected_failure,
        notes=tuple(adapter.notes(config, launch)),
        workloads=tuple(workloads),
        gpus=config.gpus,
    )


def plan_lines(plans: Sequence[ConfigPlan], node_verdicts: Mapping[str, str]) -> list[str]:
    """Per configuration: command line, environment, workloads; then each engine's node verdict."""
    if not plans:
        return ["no configuration selected"]
    lines: list[str] = []
    for plan in plans:
        lines.append(plan.config_id + (f" -- {plan.description}" if plan.description else ""))
        if plan.endpoint is None:
            lines.append("  command: " + shlex.join(plan.argv))
            env = plan.env or {}
            lines.append("  environment: " + (" ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
                                              or "(inherited only)"))
            if plan.warning:
                lines.append(f"  warning: {plan.warning}")
            lines.append(f"  GPUs: {plan.gpus if plan.gpus is not None else 'all the node check picks'}")
        else:
            lines.append(f"  endpoint: {plan.endpoint} (already running; nothing is launched)")
        if plan.engine_version:
            lines.append(f"  written for: {plan.engine} {plan.engine_version}")
        if plan.expected_failure:
            lines.append(f"  expected to fail: {plan.expected_failure}")
        lines.extend(f"  note: {note}" for note in plan.notes)
        lines.append("  workloads: " + ", ".join(f"{w.name} ({describe_workload(w)})" for w in plan.workloads))
    lines.append("")
    for engine, verdict in sorted(node_verdicts.items()):
        lines.append(f"node check for {engine}: {verdict}")
    return lines


def describe_workload(workload: Workload) -> str:
    if workload.dataset == "random":
        text = f"random {workload.input_len}/{workload.output_len} x {workload.num_prompts}"
    else:
        source = Path(workload.dataset_path).name if workload.dataset_path else "bundled sample"
        text = f"{workload.dataset} x {workload.num_prompts} from {source}"
    if not math.isinf(workload.request_rate):
        text += f" at {workload.request_rate:g} req/s (burstiness {workload.burstiness:g})"
    if workload.max_concurrency:
        text += f", at most {workload.max_concurrency} in flight"
    if workload.warmup_requests:
        text += f", {workload.warmup_requests} warm-up"
    return text
