"""The suite as data: engine configurations x workloads.

A suite file is TOML::

    model = "deepseek-ai/DeepSeek-V3.2"   # served model (configs may override)
    gpus = "h200x8"                        # the node it was written for

    [workloads.sharegpt]
    dataset = "sharegpt"                   # or "random"
    num_prompts = 200

    [[configs]]
    engine = "sim"
    name = "vllm-tp8"
    profile = "vllm-tp8"                   # engine-specific keys go to options

The built-in presets live in ``presets/``; ``--suite FILE`` replaces them.
Pure: parsing and validation only; nothing here starts or reads a server.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

if TYPE_CHECKING:  # pragma: no cover
    from .settings import Settings

PRESETS_DIR = Path(__file__).parent / "presets"
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
DATASETS = ("random", "sharegpt")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SuiteError(ValueError):
    """A suite file says something invalid; the message names file and key."""


@dataclass(frozen=True)
class Workload:
    """One load pattern, run as one test item per engine configuration."""

    name: str
    dataset: str
    num_prompts: int
    input_len: int | None = None
    output_len: int | None = None
    range_ratio: float = 0.0
    seed: int = 42
    dataset_path: str | None = None
    endpoint: str = "chat"
    max_concurrency: int | None = None
    ignore_eos: bool = False
    request_rate: float = math.inf  # requests per second; inf sends every request at once
    burstiness: float = 1.0  # gamma shape of the arrival gaps; 1 = Poisson
    warmup_requests: int = 0  # sent before the measured requests, left out of the figures
    repeats: int = 1  # runs of the case on the same engine; its figures are their medians (not a parameter)

    @property
    def endpoint_path(self) -> str:
        return ENDPOINTS[self.endpoint]

    def params(self) -> dict[str, Any]:
        """The parameters that define the measurement (stored with baselines)."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "num_prompts": self.num_prompts,
            "seed": self.seed,
            "endpoint": self.endpoint_path,
            "ignore_eos": self.ignore_eos,
            "request_rate": "inf" if math.isinf(self.request_rate) else self.request_rate,
            "max_concurrency": self.max_concurrency,
        }
        if not math.isinf(self.request_rate):
            out["burstiness"] = self.burstiness
        if self.warmup_requests:
            out["warmup_requests"] = self.warmup_requests
        if self.dataset == "random":
            out.update(input_len=self.input_len, output_len=self.output_len, range_ratio=self.range_ratio)
        else:
            out.update(output_len=self.output_len, dataset_path=Path(self.dataset_path).name if self.dataset_path else "sharegpt_sample.json")
        return out


@dataclass(frozen=True)
class EngineConfig:
    """One way to launch one engine: booted once, runs every workload."""

    engine: str
    name: str
    model: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    workloads: tuple[str, ...] | None = None  # None: all of the suite's
    description: str = ""
    source_dir: str = ""  # the suite file's directory: relative paths in options are relative to it
    expected_failure: str = ""  # why this configuration is known not to run (empty: it should run)
    engine_version: str = ""  # the engine release the flags were written for (empty: unknown)
    load_model: str = ""  # what the engine loads when not ``model`` (--model: a local copy, say)
    served_name: str = ""  # the name it serves under, given on the command line (--served-model-name)
    warmup_requests: int | None = None  # requests sent once after boot, before any case (None: the engine's default)
    gpus: int | None = None  # GPUs the configuration uses (None: unknown; the run gives it every GPU the node check picked)

    @property
    def id(self) -> str:
        return f"{self.engine}/{self.name}"

    @property
    def model_to_load(self) -> str:
        return self.load_model or self.model

    def with_option(self, key: str, value: Any) -> "EngineConfig":
        return replace(self, options=tuple(sorted({**dict(self.options), key: value}.items())))

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class Case:
    """One test item: a configuration and a workload as they run, every override applied."""

    config: EngineConfig
    workload: Workload
    gpus: str = "any"  # the GPU spec naming the baseline tree

    @property
    def id(self) -> str:
        """``engine/config/workload``: stable, whatever pytest calls the item."""
        return f"{self.config.id}/{self.workload.name}"

    @property
    def baseline_key(self) -> tuple[str, str, str, str, str]:
        """Where the case's baseline lives: GPU spec, the suite's model, engine, configuration, workload."""
        return (self.gpus, self.config.model, self.config.engine, self.config.name, self.workload.name)


@dataclass(frozen=True)
class Suite:
    source: str
    model: str
    gpus: str | None
    workloads: tuple[Workload, ...]
    configs: tuple[EngineConfig, ...]

    def engines(self) -> list[str]:
        return sorted({c.engine for c in self.configs})


_WORKLOAD_KEYS = {f for f in Workload.__dataclass_fields__ if f != "name"} | {"preset"}
WORKLOAD_PRESETS_FILE = PRESETS_DIR / "workloads.toml"


def workload_presets() -> dict[str, dict[str, Any]]:
    """The named workloads of the seed study (``presets/workloads.toml``), usable as ``preset = NAME``."""
    data = tomllib.loads(WORKLOAD_PRESETS_FILE.read_text())
    return {name: dict(table) for name, table in data.get("workloads", {}).items()}
_CONFIG_KEYS = {"engine", "name", "model", "args", "env", "workloads", "description", "expected_failure", "engine_version",
                "warmup_requests", "gpus"}


def _where(source: str, key: str) -> str:
    return f"{source}: {key}"


def _int(source: str, key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SuiteError(f"{_where(source, key)}: expected an integer >= {minimum}, got {value!r}")
    return value


def _parse_workload(source: str, name: str, table: Mapping[str, Any], base_dir: Path) -> Workload:
    key = f"workloads.{name}"
    if not _NAME_RE.match(name):
        raise SuiteError(f"{_where(source, key)}: invalid name (letters, digits, '.', '_', '-')")
    if "preset" in table:
        presets = workload_presets()
        preset = table["preset"]
        if preset not in presets:
            raise SuiteError(f"{_where(source, key + '.preset')}: unknown preset {preset!r}; "
                             f"valid: {', '.join(presets)}")
        table = {**presets[preset], **{k: v for k, v in table.items() if k != "preset"}}
    unknown = set(table) - _WORKLOAD_KEYS
    if unknown:
        raise SuiteError(f"{_where(source, key)}: unknown keys {sorted(unknown)}; valid: {sorted(_WORKLOAD_KEYS)}")
    dataset = table.get("dataset")
    if dataset not in DATASETS:
        raise SuiteError(f"{_where(source, key + '.dataset')}: expected one of {list(DATASETS)}, got {dataset!r}")
    endpoint = table.get("endpoint", "chat")
    if endpoint not in ENDPOINTS:
        raise SuiteError(f"{_where(source, key + '.endpoint')}: expected one of {list(ENDPOINTS)}, got {endpoint!r}")
    num_prompts = _int(source, key + ".num_prompts", table.get("num_prompts"))
    input_len = table.get("input_len")
    output_len = table.get("output_len")
    if dataset == "random":
        input_len = _int(source, key + ".input_len", input_len)
        output_len = _int(source, key + ".output_len", output_len)
    elif output_len is not None:
        output_len = _int(source, key + ".output_len", output_len)
    range_ratio = table.get("range_ratio", 0.0)
    if not isinstance(range_ratio, (int, float)) or isinstance(range_ratio, bool) or not 0 <= range_ratio < 1:
        raise SuiteError(f"{_where(source, key + '.range_ratio')}: expected a number in [0, 1), got {range_ratio!r}")
    seed = _int(source, key + ".seed", table.get("seed", 42), minimum=0)
    max_concurrency = table.get("max_concurrency")
    if max_concurrency is not None:
        max_concurrency = _int(source, key + ".max_concurrency", max_concurrency)
    dataset_path = table.get("dataset_path")
    if dataset_path is not None:
        if dataset != "sharegpt":
            raise SuiteError(f"{_where(source, key + '.dataset_path')}: only the sharegpt dataset reads a file")
        path = Path(dataset_path)
        dataset_path = str(path if path.is_absolute() else base_dir / path)
    request_rate = table.get("request_rate", "inf")
    if request_rate == "inf":
        request_rate = math.inf
    if isinstance(request_rate, bool) or not isinstance(request_rate, (int, float)) or not request_rate > 0:
        raise SuiteError(f"{_where(source, key + '.request_rate')}: expected requests per second > 0 or \"inf\", "
                         f"got {table.get('request_rate')!r}")
    burstiness = table.get("burstiness", 1.0)
    if isinstance(burstiness, bool) or not isinstance(burstiness, (int, float)) or not 0 < burstiness < math.inf:
        raise SuiteError(f"{_where(source, key + '.burstiness')}: expected a number > 0 (1 = Poisson), got {burstiness!r}")
    if "burstiness" in table and math.isinf(request_rate):
        raise SuiteError(f"{_where(source, key + '.burstiness')}: only applies with a finite request_rate")
    warmup_requests = _int(source, key + ".warmup_requests", table.get("warmup_requests", 0), minimum=0)
    repeats = _int(source, key + ".repeats", table.get("repeats", 1))
    ignore_eos = table.get("ignore_eos", dataset == "random")
    if not isinstance(ignore_eos, bool):
        raise SuiteError(f"{_where(source, key + '.ignore_eos')}: expected true or false, got {ignore_eos!r}")
    return Workload(
        name=name,
        dataset=dataset,
        num_prompts=num_prompts,
        input_len=input_len,
        output_len=output_len,
        range_ratio=float(range_ratio),
        seed=seed,
        dataset_path=dataset_path,
        endpoint=endpoint,
        max_concurrency=max_concurrency,
        ignore_eos=ignore_eos,
        request_rate=float(request_rate),
        burstiness=float(burstiness),
        warmup_requests=warmup_requests,
        repeats=repeats,
    )


def _parse_config(
    source: str, index: int, table: Mapping[str, Any], model: str, workload_names: set[str], base_dir: Path
) -> EngineConfig:
    key = f"configs[{index}]"
    engine, name = table.get("engine"), table.get("name")
    if not isinstance(engine, str) or not engine:
        raise SuiteError(f"{_where(source, key + '.engine')}: expected an engine name, got {engine!r}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SuiteError(f"{_where(source, key + '.name')}: expected a name of letters, digits, '.', '_', '-', got {name!r}")
    args = table.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise SuiteError(f"{_where(source, key + '.args')}: expected a list of strings (one argv word each)")
    env = table.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise SuiteError(f"{_where(source, key + '.env')}: expected a table of string values")
    workloads = table.get("workloads")
    if workloads is not None:
        if not isinstance(workloads, list) or not all(isinstance(w, str) for w in workloads):
            raise SuiteError(f"{_where(source, key + '.workloads')}: expected a list of workload names")
        unknown = [w for w in workloads if w not in workload_names]
        if unknown:
            raise SuiteError(f"{_where(source, key + '.workloads')}: unknown workloads {unknown}; defined: {sorted(workload_names)}")
        workloads = tuple(workloads)
    for text_key in ("description", "expected_failure", "engine_version"):
        if not isinstance(table.get(text_key, ""), str):
            raise SuiteError(f"{_where(source, key + '.' + text_key)}: expected a string, got {table[text_key]!r}")
    options = tuple(sorted((k, v) for k, v in table.items() if k not in _CONFIG_KEYS))
    warmup = table.get("warmup_requests")
    if warmup is not None:
        warmup = _int(source, key + ".warmup_requests", warmup, minimum=0)
    gpus = table.get("gpus")
    if gpus is not None:
        gpus = _int(source, key + ".gpus", gpus)
    return EngineConfig(
        engine=engine,
        name=name,
        model=str(table.get("model", model)),
        args=tuple(args),
        env=tuple(sorted(env.items())),
        options=options,
        workloads=workloads,
        description=table.get("description", ""),
        source_dir=str(base_dir),
        expected_failure=table.get("expected_failure", ""),
        engine_version=table.get("engine_version", ""),
        warmup_requests=warmup,
        gpus=gpus,
    )


def parse_suite(data: Mapping[str, Any], source: str, base_dir: Path) -> Suite:
    unknown = set(data) - {"model", "gpus", "workloads", "configs", "description"}
    if unknown:
        raise SuiteError(f"{source}: unknown top-level keys {sorted(unknown)}; valid: configs, description, gpus, model, workloads")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise SuiteError(f"{_where(source, 'model')}: expected the served model name")
    gpus = data.get("gpus")
    if gpus is not None and not isinstance(gpus, str):
        raise SuiteError(f"{_where(source, 'gpus')}: expected a GPU spec string such as 'h200x8'")
    if gpus is not None:
        from .gpus import parse_gpu_spec

        try:
            gpus = str(parse_gpu_spec(gpus))
        except ValueError as exc:
            raise SuiteError(f"{_where(source, 'gpus')}: {exc}") from None
    raw_workloads = data.get("workloads", {})
    if not isinstance(raw_workloads, dict) or not raw_workloads:
        raise SuiteError(f"{source}: expected at least one [workloads.NAME] table")
    workloads = tuple(_parse_workload(source, n, t, base_dir) for n, t in raw_workloads.items())
    raw_configs = data.get("configs", [])
    if not isinstance(raw_configs, list) or not raw_configs:
        raise SuiteError(f"{source}: expected at least one [[configs]] entry")
    names = {w.name for w in workloads}
    configs = tuple(_parse_config(source, i, t, model, names, base_dir) for i, t in enumerate(raw_configs))
    seen: set[str] = set()
    for c in configs:
        if c.id in seen:
            raise SuiteError(f"{source}: configuration {c.id} is defined twice")
        seen.add(c.id)
    return Suite(source=source, model=model, gpus=gpus, workloads=workloads, configs=configs)


def load_suite_file(path: Path) -> Suite:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SuiteError(f"suite file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite file {path} is not valid TOML: {exc}") from None
    return parse_suite(data, str(path), path.parent)


def preset_paths() -> list[Path]:
    return sorted(p for p in PRESETS_DIR.glob("*.toml") if p != WORKLOAD_PRESETS_FILE)


def load_builtin_suite(engines: Iterable[str]) -> Suite:
    """The built-in preset that holds configurations of the given engines."""
    wanted = set(engines)
    found = [s for s in (load_suite_file(p) for p in preset_paths()) if wanted & set(s.engines())]
    if not found:
        raise SuiteError(f"no built-in preset has configurations for {sorted(wanted)}")
    if len(found) > 1:
        sources = ", ".join(s.source for s in found)
        raise SuiteError(f"engines {sorted(wanted)} span several presets ({sources}); run them separately or give --suite")
    return found[0]


# ----------------------------------------------------------------- the suite as it runs
@dataclass(frozen=True)
class ResolvedSuite:
    """The cases of a run, every command-line override applied, in the suite's order."""

    suite: Suite
    cases: tuple[Case, ...]
    gpus: str  # the spec naming the baseline tree
    notes: tuple[str, ...] = ()  # overrides that could not apply, said in the summary

    def configs(self) -> list[EngineConfig]:
        return list(dict.fromkeys(c.config for c in self.cases))


def resolve(settings: "Settings", suite: Suite | None = None) -> ResolvedSuite:
    """The suite file (or the built-in preset of the engines) with every override applied once.

    ``--num-prompts`` and ``--dataset-path`` change the workloads; ``--model``
    what the engines load (baselines stay keyed by the suite's model);
    ``--served-model-name`` the name engines serve under; ``--endpoint`` the
    external configuration's server. Engine keys are checked by each engine's
    adapter. ``suite``: one already loaded (else the settings say which).
    SuiteError (one line) for anything that cannot run.
    """
    from .engines import EngineUnavailable, get_adapter

    suite = _with_endpoint(suite if suite is not None else _load(settings), settings)
    missing = [e for e in settings.engines if e not in suite.engines()]
    if missing:
        raise SuiteError(f"suite {suite.source} has no configurations for engine(s) {', '.join(missing)}; "
                         f"it has: {', '.join(suite.engines())}")
    notes: list[str] = []
    configs = []
    for index, config in enumerate(suite.configs):
        if config.engine not in settings.engines:
            continue
        try:
            adapter = get_adapter(config.engine)
        except EngineUnavailable as exc:
            raise SuiteError(str(exc)) from None
        if settings.model:
            config = replace(config, load_model=settings.model)
        if settings.warmup_requests is not None:
            config = replace(config, warmup_requests=settings.warmup_requests)
        if settings.served_model_name:
            if adapter.takes_served_model_name:
                config = replace(config, served_name=settings.served_model_name)
            else:
                notes.append(f"{config.id}: {config.engine} takes no served model name; requests carry the name "
                             f"it lists in /v1/models")
        try:
            adapter.validate(config)
            needed = adapter.gpus_needed(config)
        except ValueError as exc:
            raise SuiteError(str(exc)) from None
        if config.gpus is not None and needed is not None and config.gpus != needed:
            raise SuiteError(f"{suite.source}: configs[{index}].gpus: {config.id} says gpus = {config.gpus} but "
                             f"{adapter.gpus_said(config, needed)}; make them agree")
        config = replace(config, gpus=config.gpus or needed)
        configs.append(config)
    workloads = {w.name: _override_workload(w, settings) for w in suite.workloads}
    gpus = str(settings.gpus) if settings.gpus is not None else (suite.gpus or "any")
    cases = []
    for config in configs:
        names = config.workloads if config.workloads is not None else tuple(workloads)
        cases.extend(Case(config, workloads[n], gpus) for n in names)
    if not cases:
        raise SuiteError(f"suite {suite.source} selects no case for engine(s) {', '.join(settings.engines)}: "
                         f"its configurations list no workloads")
    return ResolvedSuite(suite, tuple(cases), gpus, tuple(notes))


def _override_workload(workload: Workload, settings: "Settings") -> Workload:
    if settings.num_prompts:
        workload = replace(workload, num_prompts=settings.num_prompts)
    if settings.repeats:
        workload = replace(workload, repeats=settings.repeats)
    if settings.dataset_path is not None and workload.dataset == "sharegpt":
        workload = replace(workload, dataset_path=str(settings.dataset_path))
    return workload


def _load(settings: "Settings") -> Suite:
    """The suite file, or the built-in preset of the selected engines."""
    if settings.suite_file:
        return load_suite_file(settings.suite_file)
    booted = [e for e in settings.engines if e != "external"]
    # An external endpoint alone runs the seed's workloads (the preset of the real engines).
    suite = load_builtin_suite(booted or ["vllm"])
    return suite if booted else replace(suite, configs=())


def _with_endpoint(suite: Suite, settings: "Settings") -> Suite:
    """``--endpoint`` for the external configurations (one is made when the suite has none)."""
    if "external" not in settings.engines:
        return suite
    external = [c for c in suite.configs if c.engine == "external"]
    if settings.endpoint is not None:
        configs = [c.with_option("endpoint", settings.endpoint) if c.engine == "external" else c for c in suite.configs]
        if not external:
            configs.append(EngineConfig("external", "endpoint", suite.model, options=(("endpoint", settings.endpoint),),
                                        description=f"the server at {settings.endpoint}"))
        return replace(suite, configs=tuple(configs))
    if not external:
        raise SuiteError("--engine=external needs --endpoint URL (the base URL of a running OpenAI-compatible server)")
    return suite
