"""Settings: every option resolved once, validated, with its source named.

Precedence: command line > environment > ini (``[tool.pytest.ini_options]``)
> default. A bad value is rejected with the place it came from.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .engines import ENGINE_NAMES, STARTUP_TIMEOUT_S
from .gpus import GpuSpec, parse_gpu_spec
from .http import HttpOptions, normalize_endpoint, parse_header
from .metrics import metric_direction

DEFAULT_GATES: dict[str, float] = {"total_token_throughput": 5.0, "mean_tpot_ms": 5.0, "failed": 0.0}
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_BASELINE_HISTORY = 5
DEFAULT_CONFIRM = 2
INCONCLUSIVE_ACTIONS = ("fail", "skip")
COLOCATED_ACTIONS = ("gate", "warn")


class SettingsError(ValueError):
    """A bad option value; the message names the option and its source."""


@dataclass(frozen=True)
class OptionSpec:
    """One setting: its flag, environment variable and ini key (if any)."""

    dest: str
    flag: str
    help: str
    env: str | None = None
    ini: str | None = None
    metavar: str | None = None
    is_flag: bool = False
    repeatable: bool = False  # may be given several times (a list); its ini key is a list of lines


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("engine", "--engine", "engines whose configurations to run (comma list): "
               + ", ".join(ENGINE_NAMES) + ". Without it no performance case runs.", metavar="NAME[,NAME]"),
    OptionSpec("gpus", "--gpus", "the node the suite is meant for, e.g. h200x8 or any; selects the baseline "
               "tree and is checked before any engine boots (default: the suite's)", env="LLMPERF_GPUS",
               ini="llmperf_gpus", metavar="SPEC"),
    OptionSpec("update_baselines", "--update-baselines", "run, then write the measured figures as the new "
               "baselines (other cases are kept)", is_flag=True),
    OptionSpec("baseline_dir", "--baseline-dir", "baseline tree (default: baselines/ under the rootdir)",
               env="LLMPERF_BASELINE_DIR", ini="llmperf_baseline_dir", metavar="DIR"),
    OptionSpec("report_json", "--report-json", "write a machine-readable report here",
               env="LLMPERF_REPORT_JSON", ini="llmperf_report_json", metavar="PATH"),
    OptionSpec("report_html", "--report-html", "write an HTML report with charts here (one file that opens offline; "
               "needs the html extra: pip install 'pytest-llmperf[html]')", env="LLMPERF_REPORT_HTML",
               ini="llmperf_report_html", metavar="PATH"),
    OptionSpec("report_md", "--report-md", "write a markdown summary here (also appended to $GITHUB_STEP_SUMMARY "
               "when that is set)", env="LLMPERF_REPORT_MD", ini="llmperf_report_md", metavar="PATH"),
    OptionSpec("num_prompts", "--num-prompts", "override the prompt count of every selected workload (quick runs)",
               env="LLMPERF_NUM_PROMPTS", metavar="N"),
    OptionSpec("sim_slowdown", "--sim-slowdown", "make every step of the simulated engine FACTOR times slower "
               "(fault injection for the gate itself; default 1)", env="LLMPERF_SIM_SLOWDOWN", metavar="FACTOR"),
    OptionSpec("suite", "--suite", "a suite file (TOML) replacing the built-in presets",
               env="LLMPERF_SUITE", ini="llmperf_suite", metavar="FILE"),
    OptionSpec("gate", "--gate", "gated metrics with tolerance in percent, added to or overriding the defaults "
               "(total_token_throughput:5,mean_tpot_ms:5,failed:0); METRIC:off removes one",
               env="LLMPERF_GATE", ini="llmperf_gate", metavar="METRIC:PCT[,...]"),
    OptionSpec("startup_timeout", "--startup-timeout", "seconds an engine may take to become ready (default: the "
               "engine's own: " + ", ".join(f"{e} {t:g}" for e, t in STARTUP_TIMEOUT_S.items()) + ")",
               env="LLMPERF_STARTUP_TIMEOUT", ini="llmperf_startup_timeout", metavar="SECONDS"),
    OptionSpec("request_timeout", "--request-timeout", "seconds one request may take before it counts as failed "
               "(default 3600)", env="LLMPERF_REQUEST_TIMEOUT", ini="llmperf_request_timeout", metavar="SECONDS"),
    OptionSpec("endpoint", "--endpoint", "base URL of an already-running OpenAI-compatible server, for "
               "--engine=external (e.g. http://127.0.0.1:8000)", env="LLMPERF_ENDPOINT", metavar="URL"),
    OptionSpec("model", "--model", "the model the engines load: a hub id or a local path (default: the suite's "
               "model; baselines stay keyed by the suite's model)", env="LLMPERF_MODEL", metavar="MODEL"),
    OptionSpec("served_model_name", "--served-model-name", "the model name engines serve under and requests "
               "carry (default: what the engine reports in /v1/models)", env="LLMPERF_SERVED_MODEL_NAME",
               metavar="NAME"),
    OptionSpec("chat_template", "--chat-template", "chat template file for configurations written for one "
               "(the SGLang presets); without it they launch without the flag", env="LLMPERF_CHAT_TEMPLATE",
               ini="llmperf_chat_template", metavar="PATH"),
    OptionSpec("dry_run", "--dry-run", "print each selected configuration's command line, environment, "
               "workloads and the node verdict; start nothing", is_flag=True),
    OptionSpec("gpu_snapshot", "--gpu-snapshot", "check the node against this JSON snapshot (python -m "
               "pytest_llmperf.topology snapshot) instead of live NVML", env="LLMPERF_GPU_SNAPSHOT", metavar="FILE"),
    OptionSpec("gpu_free_timeout", "--gpu-free-timeout", "seconds to wait, after an engine stops, until NVML shows "
               "its GPUs freed (default 300)", env="LLMPERF_GPU_FREE_TIMEOUT", ini="llmperf_gpu_free_timeout",
               metavar="SECONDS"),
    OptionSpec("goodput", "--goodput", "count requests meeting every service-level limit, in ms, as request_goodput "
               "(e.g. \"ttft:2000 tpot:80\"; names: ttft, tpot, e2el)", env="LLMPERF_GOODPUT", ini="llmperf_goodput",
               metavar="NAME:MS[ ...]"),
    OptionSpec("percentiles", "--percentiles", "latency percentiles to report for TTFT, TPOT, ITL and E2E latency "
               "(default 99)", env="LLMPERF_PERCENTILES", ini="llmperf_percentiles", metavar="P[,P...]"),
    OptionSpec("dataset_path", "--dataset-path", "a ShareGPT-format JSON file for every sharegpt workload (default: "
               "the workload's dataset_path, else the small bundled sample)", env="LLMPERF_DATASET_PATH",
               ini="llmperf_dataset_path", metavar="FILE"),
    OptionSpec("tokenizer", "--tokenizer", "the model's tokenizer.json (or its directory) to build random prompts of "
               "exact token lengths and count output text (needs the tokenizers package); without it prompts are "
               "aligned through the server's /tokenize when it has one", env="LLMPERF_TOKENIZER",
               ini="llmperf_tokenizer", metavar="PATH"),
    OptionSpec("results_dir", "--results-dir", "write each case's result as JSON in the reference benchmark's "
               "--save-result layout, one file per case", env="LLMPERF_RESULTS_DIR", ini="llmperf_results_dir",
               metavar="DIR"),
    OptionSpec("save_requests", "--save-requests", "add every request's record (start, TTFT, ITLs, tokens, error) "
               "to the results files and the JSON report", is_flag=True),
    OptionSpec("client_processes", "--client-processes", "spread each case's streams over N client processes "
               "(default 1; for loads one event loop cannot keep up with)", env="LLMPERF_CLIENT_PROCESSES",
               ini="llmperf_client_processes", metavar="N"),
    OptionSpec("log_dir", "--log-dir", "directory for engine logs (default: a directory under pytest's basetemp)",
               env="LLMPERF_LOG_DIR", ini="llmperf_log_dir", metavar="DIR"),
    OptionSpec("header", "--header", "a header sent on every request to the engines, e.g. \"X-Tenant: a\" "
               "(repeatable; its value is never printed or written)", ini="llmperf_headers", metavar="\"NAME: VALUE\"",
               repeatable=True),
    OptionSpec("api_key_env", "--api-key-env", f"the environment variable holding the API key, sent as "
               f"\"Authorization: Bearer KEY\" (default {DEFAULT_API_KEY_ENV}, when set); the key is never printed "
               "or written", env="LLMPERF_API_KEY_ENV", ini="llmperf_api_key_env", metavar="NAME"),
    OptionSpec("ca_bundle", "--ca-bundle", "PEM file of the CAs to trust for https endpoints instead of the system "
               "trust store", env="LLMPERF_CA_BUNDLE", ini="llmperf_ca_bundle", metavar="FILE"),
    OptionSpec("insecure", "--insecure", "do not verify https certificates (prefer --ca-bundle)", is_flag=True),
    OptionSpec("repeats", "--repeats", "run each case N times on the same engine (caches reset between runs); its "
               "figures are the medians (default: the workload's repeats, else 1)", env="LLMPERF_REPEATS",
               ini="llmperf_repeats", metavar="N"),
    OptionSpec("warmup_requests", "--warmup-requests", "requests sent once after each engine boots, shaped as its "
               "first workload, left out of every figure (0: none; default: the configuration's warmup_requests, "
               "else the engine's own default)", env="LLMPERF_WARMUP_REQUESTS", ini="llmperf_warmup_requests",
               metavar="N"),
    OptionSpec("baseline_history", "--baseline-history", "results kept per case in a baseline file; the reference "
               f"is their median and their spread the noise band (default {DEFAULT_BASELINE_HISTORY})", env="LLMPERF_BASELINE_HISTORY",
               ini="llmperf_baseline_history", metavar="K"),
    OptionSpec("confirm", "--confirm", "re-run a case that regressed, improved or was measured distorted up to N "
               "times; it fails only if the verdict holds on all its runs pooled (default 2; 0: never)",
               env="LLMPERF_CONFIRM", ini="llmperf_confirm", metavar="N"),
    OptionSpec("inconclusive", "--inconclusive", "what a case whose measurement stayed distorted (a busy machine, a "
               "saturated client, throttled GPUs) does: fail (default) or skip", env="LLMPERF_INCONCLUSIVE",
               ini="llmperf_inconclusive", metavar="fail|skip"),
    OptionSpec("gpu_lock_dir", "--gpu-lock-dir", "node-local directory of the GPU lease locks (one per GPU UUID) "
               "that keep configurations run side by side (pytest-xdist, or several pytest runs) on disjoint GPUs "
               "(default: pytest-llmperf-gpu-locks under the system temp dir)", env="LLMPERF_GPU_LOCK_DIR",
               ini="llmperf_gpu_lock_dir", metavar="DIR"),
    OptionSpec("colocated", "--colocated", "what a regression of a case that ran while another engine ran on the "
               "same node does: gate (default: it fails; leases keep GPU sets disjoint) or warn (said, not failed; "
               "for nodes where neighbours disturb each other)", env="LLMPERF_COLOCATED", ini="llmperf_colocated",
               metavar="gate|warn"),
)

DEFAULT_REQUEST_TIMEOUT_S = 3600.0
DEFAULT_GPU_FREE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Settings:
    engines: tuple[str, ...] = ()
    gpus: GpuSpec | None = None  # None: the suite's own spec
    update_baselines: bool = False
    baseline_dir: Path = Path("baselines")
    report_json: Path | None = None
    report_html: Path | None = None
    report_md: Path | None = None
    num_prompts: int | None = None
    sim_slowdown: float = 1.0
    suite_file: Path | None = None
    gates: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_GATES))
    startup_timeout_s: float | None = None  # None: each engine's own default
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    log_dir: Path | None = None
    endpoint: str | None = None
    model: str | None = None
    served_model_name: str | None = None
    chat_template: Path | None = None
    dry_run: bool = False
    gpu_snapshot: Path | None = None
    gpu_free_timeout_s: float = DEFAULT_GPU_FREE_TIMEOUT_S
    goodput_slos_ms: Mapping[str, float] | None = None
    percentiles: tuple[float, ...] = (99.0,)
    dataset_path: Path | None = None
    tokenizer_path: Path | None = None
    results_dir: Path | None = None
    save_requests: bool = False
    client_processes: int = 1
    http: HttpOptions = field(default_factory=HttpOptions)  # headers, API key, TLS trust: every request
    repeats: int | None = None  # None: each workload's own
    warmup_requests: int | None = None  # None: each configuration's (or engine's) own
    baseline_history: int = DEFAULT_BASELINE_HISTORY
    confirm: int = DEFAULT_CONFIRM
    inconclusive: str = "fail"
    gpu_lock_dir: Path | None = None  # None: the default under the system temp dir (node/leases.py)
    colocated: str = "gate"

    @property
    def active(self) -> bool:
        """Whether performance cases run at all."""
        return bool(self.engines)


def _engines(text: str) -> tuple[str, ...]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"expected one or more of {', '.join(ENGINE_NAMES)}")
    bad = [n for n in names if n not in ENGINE_NAMES]
    if bad:
        raise ValueError(f"unknown engine {bad[0]!r}; valid choices: {', '.join(ENGINE_NAMES)}")
    return tuple(dict.fromkeys(names))


def _integer(text: str, minimum: int) -> int:
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"expected {what}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1)


def _positive_float(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected a positive number, got {text!r}")
    return value


def _count(text: str) -> int:
    return _integer(text, 0)


def _inconclusive(text: str) -> str:
    value = str(text).strip().lower()
    if value not in INCONCLUSIVE_ACTIONS:
        raise ValueError(f"expected one of {', '.join(INCONCLUSIVE_ACTIONS)}, got {text!r}")
    return value


def _colocated(text: str) -> str:
    value = str(text).strip().lower()
    if value not in COLOCATED_ACTIONS:
        raise ValueError(f"expected one of {', '.join(COLOCATED_ACTIONS)}, got {text!r}")
    return value


def _text(text: str) -> str:
    value = str(text).strip()
    if not value:
        raise ValueError("expected a value, got an empty one")
    return value


def parse_gates(text: str, base: Mapping[str, float] = DEFAULT_GATES) -> dict[str, float]:
    """``metric:pct,...`` on top of ``base``; ``metric:off`` drops one."""
    gates = dict(base)
    for item in text.replace(" ", ",").split(","):
        item = item.strip()
        if not item:
            continue
        metric, sep, tol = item.partition(":")
        if not sep:
            raise ValueError(f"expected METRIC:PERCENT (e.g. p99_ttft_ms:20), got {item!r}")
        metric_direction(metric)  # raises for metrics that cannot be gated
        if tol.strip().lower() == "off":
            gates.pop(metric, None)
            continue
        try:
            pct = float(tol)
        except ValueError:
            raise ValueError(f"tolerance of {metric} must be a percentage, got {tol!r}") from None
        if not math.isfinite(pct) or pct < 0:
            raise ValueError(f"tolerance of {metric} must be >= 0, got {tol!r}")
        gates[metric] = pct
    if not gates:
        raise ValueError("every gate was turned off: nothing would be compared")
    return gates


def resolve(
    cli: Mapping[str, Any],
    env: Mapping[str, str],
    ini: Mapping[str, Any],
    rootdir: Path,
    invocation_dir: Path,
) -> Settings:
    """Resolve every option; SettingsError names the option and the source."""

    def pick(spec: OptionSpec) -> tuple[Any, str, Path] | None:
        value = cli.get(spec.dest)
        if spec.repeatable:
            if value:
                return list(value), f"command line {spec.flag}", invocation_dir
            lines = ini.get(spec.ini) if spec.ini else None
            if lines:
                return [line for line in lines if str(line).strip()], f"ini option {spec.ini}", rootdir
            return None
        if value == "":
            raise SettingsError(f"{spec.flag}: expected a value, got an empty one (from command line {spec.flag})")
        if value not in (None, False):
            return value, f"command line {spec.flag}", invocation_dir
        if spec.env and env.get(spec.env, "").strip():
            return env[spec.env], f"environment {spec.env}", invocation_dir
        if spec.ini and ini.get(spec.ini) not in (None, ""):
            return ini[spec.ini], f"ini option {spec.ini}", rootdir
        return None

    def convert(dest: str, fn: Callable[[Any], Any], path_base: bool = False) -> Any:
        spec = next(s for s in OPTIONS if s.dest == dest)
        picked = pick(spec)
        if picked is None:
            return None
        value, source, base = picked
        try:
            if path_base:
                p = Path(os.path.expanduser(str(value)))
                return p if p.is_absolute() else base / p
            return fn(value)
        except ValueError as exc:
            raise SettingsError(f"{spec.flag}: {exc} (from {source})") from None

    engines = convert("engine", _engines) or ()
    gpus = convert("gpus", parse_gpu_spec)
    num_prompts = convert("num_prompts", _positive_int)
    slowdown = convert("sim_slowdown", _positive_float)
    gates = convert("gate", parse_gates)
    timeout = convert("startup_timeout", _positive_float)
    request_timeout = convert("request_timeout", _positive_float)
    gpu_free_timeout = convert("gpu_free_timeout", _positive_float)
    from .metrics import parse_goodput, parse_percentiles

    goodput = convert("goodput", parse_goodput)
    percentiles = convert("percentiles", parse_percentiles)
    client_processes = convert("client_processes", _positive_int)
    repeats = convert("repeats", _positive_int)
    warmup_requests = convert("warmup_requests", _count)
    baseline_history = convert("baseline_history", _positive_int)
    confirm = convert("confirm", _count)
    inconclusive = convert("inconclusive", _inconclusive)
    colocated = convert("colocated", _colocated)
    endpoint = None
    if "external" in engines:
        endpoint = convert("endpoint", normalize_endpoint)
    elif cli.get("endpoint"):  # an exported LLMPERF_ENDPOINT is simply unused by other engines
        raise SettingsError(f"--endpoint applies to --engine=external only; engines selected: {', '.join(engines) or 'none'}")

    def existing_file(dest: str) -> Path | None:
        path = convert(dest, str, path_base=True)
        if path is not None and not path.is_file():
            spec = next(s for s in OPTIONS if s.dest == dest)
            _, source, _ = pick(spec)  # type: ignore[misc]
            raise SettingsError(f"{spec.flag}: {path} is not a file (from {source})")
        return path

    chat_template = existing_file("chat_template")
    gpu_snapshot = existing_file("gpu_snapshot")
    dataset_path = existing_file("dataset_path")
    tokenizer_path = convert("tokenizer", str, path_base=True)
    if tokenizer_path is not None and not tokenizer_path.exists():
        raise SettingsError(f"--tokenizer: {tokenizer_path} does not exist (from {pick(_spec('tokenizer'))[1]})")  # type: ignore[index]
    http = _http_options(cli, env, convert, existing_file)
    results_dir = convert("results_dir", str, path_base=True)
    if cli.get("save_requests") and results_dir is None and convert("report_json", str, path_base=True) is None:
        raise SettingsError("--save-requests adds per-request records to the results: give --results-dir or --report-json")
    if cli.get("dry_run") and not engines:
        raise SettingsError("--dry-run shows what --engine would run: give --engine too")
    if cli.get("dry_run") and cli.get("update_baselines"):
        raise SettingsError("--dry-run starts nothing, so it cannot --update-baselines")
    if num_prompts is not None and cli.get("update_baselines"):
        raise SettingsError(
            "--num-prompts cannot be combined with --update-baselines: the quick run's figures would replace "
            "baselines of the full workloads; set num_prompts in a suite file (--suite) to record smaller cases"
        )
    return Settings(
        engines=engines,
        gpus=gpus,
        update_baselines=bool(cli.get("update_baselines")),
        baseline_dir=convert("baseline_dir", str, path_base=True) or rootdir / "baselines",
        report_json=convert("report_json", str, path_base=True),
        report_html=convert("report_html", str, path_base=True),
        report_md=convert("report_md", str, path_base=True),
        num_prompts=num_prompts,
        sim_slowdown=slowdown if slowdown is not None else 1.0,
        suite_file=convert("suite", str, path_base=True),
        gates=gates if gates is not None else dict(DEFAULT_GATES),
        startup_timeout_s=timeout,
        request_timeout_s=request_timeout if request_timeout is not None else DEFAULT_REQUEST_TIMEOUT_S,
        log_dir=convert("log_dir", str, path_base=True),
        endpoint=endpoint,
        model=convert("model", _text),
        served_model_name=convert("served_model_name", _text),
        chat_template=chat_template,
        dry_run=bool(cli.get("dry_run")),
        gpu_snapshot=gpu_snapshot,
        gpu_free_timeout_s=gpu_free_timeout if gpu_free_timeout is not None else DEFAULT_GPU_FREE_TIMEOUT_S,
        goodput_slos_ms=goodput,
        percentiles=percentiles if percentiles is not None else (99.0,),
        dataset_path=dataset_path,
        tokenizer_path=tokenizer_path,
        results_dir=results_dir,
        save_requests=bool(cli.get("save_requests")),
        client_processes=client_processes if client_processes is not None else 1,
        http=http,
        repeats=repeats,
        warmup_requests=warmup_requests,
        baseline_history=baseline_history if baseline_history is not None else DEFAULT_BASELINE_HISTORY,
        confirm=confirm if confirm is not None else DEFAULT_CONFIRM,
        inconclusive=inconclusive or "fail",
        gpu_lock_dir=convert("gpu_lock_dir", str, path_base=True),
        colocated=colocated or "gate",
    )


def _http_options(cli: Mapping[str, Any], env: Mapping[str, str], convert: Callable[..., Any],
                  existing_file: Callable[[str], Path | None]) -> HttpOptions:
    """Headers, the API key (read from its variable now, kept out of every repr) and TLS trust."""
    headers = convert("header", lambda values: tuple(parse_header(v) for v in values)) or ()
    names = [name.lower() for name, _ in headers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SettingsError(f"--header: {twice[0]} is given more than once")
    key_env = convert("api_key_env", _env_name)
    if key_env is not None and not env.get(key_env):
        raise SettingsError(f"--api-key-env: the environment variable {key_env} is not set (or empty)")
    key_env = key_env or DEFAULT_API_KEY_ENV
    insecure = bool(cli.get("insecure"))
    ca_bundle = existing_file("ca_bundle")
    if insecure and ca_bundle is not None:
        raise SettingsError("--insecure skips certificate checks, so --ca-bundle would do nothing: give one of them")
    if ca_bundle is not None:
        import ssl

        try:
            ssl.create_default_context(cafile=str(ca_bundle))
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(f"--ca-bundle: {ca_bundle} is not a PEM file of certificates ({exc})") from None
    key = env.get(key_env) or None
    return HttpOptions(headers=headers, api_key=key, api_key_source=key_env if key else "", ca_bundle=ca_bundle,
                       insecure=insecure)


def _env_name(text: str) -> str:
    name = str(text).strip()
    if not name or not all(c.isalnum() or c == "_" for c in name) or name[0].isdigit():
        raise ValueError(f"expected an environment variable name, got {text!r}")
    return name


def _spec(dest: str) -> OptionSpec:
    return next(s for s in OPTIONS if s.dest == dest)
