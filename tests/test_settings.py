from pathlib import Path

import pytest

from pytest_llmperf.settings import DEFAULT_GATES
from pytest_llmperf.settings import SettingsError, parse_gates, resolve

ROOT = Path("/repo")
CWD = Path("/cwd")


def make(cli=None, env=None, ini=None):
    return resolve(cli or {}, env or {}, ini or {}, ROOT, CWD)


def test_defaults():
    s = make()
    assert not s.active
    assert s.engines == () and s.gpus is None and s.num_prompts is None
    assert s.baseline_dir == ROOT / "baselines"
    assert s.sim_slowdown == 1.0 and dict(s.gates) == DEFAULT_GATES
    assert s.report_json is None and s.update_baselines is False


def test_engines_comma_list_dedup_and_case():
    assert make({"engine": "SIM, sim,vllm"}).engines == ("sim", "vllm")


def test_unknown_engine_lists_choices():
    with pytest.raises(SettingsError) as info:
        make({"engine": "tgi"})
    assert str(info.value) == "--engine: unknown engine 'tgi'; valid choices: sim, vllm, sglang, trtllm, external (from command line --engine)"


def test_precedence_cli_env_ini():
    ini = {"llmperf_gpus": "h100x8", "llmperf_baseline_dir": "bl"}
    assert str(make(ini=ini).gpus) == "h100x8"
    assert str(make(env={"LLMPERF_GPUS": "a100x8"}, ini=ini).gpus) == "a100x8"
    assert str(make({"gpus": "h200x1"}, {"LLMPERF_GPUS": "a100x8"}, ini).gpus) == "h200x1"
    # ini paths are relative to the rootdir, command-line paths to the invocation dir
    assert make(ini=ini).baseline_dir == ROOT / "bl"
    assert make({"baseline_dir": "x"}, ini=ini).baseline_dir == CWD / "x"


@pytest.mark.parametrize(
    "cli, env, message",
    [
        ({"num_prompts": "0"}, {}, "--num-prompts: expected a positive integer, got '0' (from command line --num-prompts)"),
        ({}, {"LLMPERF_NUM_PROMPTS": "many"}, "expected a positive integer, got 'many' (from environment LLMPERF_NUM_PROMPTS)"),
        ({"sim_slowdown": "-1"}, {}, "--sim-slowdown: expected a positive number, got '-1'"),
        ({"sim_slowdown": "nan"}, {}, "expected a positive number"),
        ({"gpus": "h200"}, {}, "--gpus: malformed GPU spec 'h200'"),
        ({"gate": "p99_ttft_ms"}, {}, "expected METRIC:PERCENT"),
        ({"gate": "total_input_tokens:5"}, {}, "cannot be gated"),
        ({"gate": "mean_tpot_ms:-2"}, {}, "must be >= 0"),
        ({"startup_timeout": "0"}, {}, "--startup-timeout: expected a positive number"),
        ({"colocated": "ignore"}, {}, "--colocated: expected one of gate, warn, got 'ignore' (from command line"),
        ({}, {"LLMPERF_COLOCATED": "x"}, "(from environment LLMPERF_COLOCATED)"),
    ],
)
def test_bad_values_name_option_and_source(cli, env, message):
    with pytest.raises(SettingsError) as info:
        make(cli, env)
    assert message in str(info.value)


def test_ini_source_named():
    with pytest.raises(SettingsError, match=r"\(from ini option llmperf_gate\)"):
        make(ini={"llmperf_gate": "nonsense"})


def test_gates_add_override_and_remove():
    gates = parse_gates("p99_ttft_ms:20, mean_tpot_ms:3,total_token_throughput:off")
    assert gates == {"mean_tpot_ms": 3.0, "p99_ttft_ms": 20.0, "failed": 0.0}
    with pytest.raises(ValueError, match="nothing would be compared"):
        parse_gates("total_token_throughput:off,mean_tpot_ms:off,failed:off")


def test_empty_command_line_value_is_an_error():
    with pytest.raises(SettingsError, match="--engine: expected a value, got an empty one"):
        make({"engine": ""})


def test_num_prompts_cannot_overwrite_baselines():
    with pytest.raises(SettingsError, match="--num-prompts cannot be combined with --update-baselines"):
        make({"engine": "sim", "num_prompts": "5", "update_baselines": True})


def test_request_timeout():
    assert make().request_timeout_s == 3600.0
    assert make({"request_timeout": "2.5"}).request_timeout_s == 2.5


def test_endpoint_is_normalized_and_only_for_external():
    s = make({"engine": "external", "endpoint": "http://127.0.0.1:8000/v1/"})
    assert s.endpoint == "http://127.0.0.1:8000"
    with pytest.raises(SettingsError, match="--endpoint applies to --engine=external only; engines selected: sim"):
        make({"engine": "sim", "endpoint": "http://127.0.0.1:8000"})
    with pytest.raises(SettingsError, match=r"--endpoint: expected an http\(s\) URL .* \(from environment LLMPERF_ENDPOINT\)"):
        make({"engine": "external"}, {"LLMPERF_ENDPOINT": "localhost:8000"})


def test_files_must_exist(tmp_path):
    with pytest.raises(SettingsError, match="--chat-template: .*nope.jinja is not a file"):
        make({"chat_template": str(tmp_path / "nope.jinja")})
    with pytest.raises(SettingsError, match="--gpu-snapshot: .*node.json is not a file"):
        make({"gpu_snapshot": str(tmp_path / "node.json")})
    (tmp_path / "t.jinja").write_text("x")
    assert make({"chat_template": str(tmp_path / "t.jinja")}).chat_template == tmp_path / "t.jinja"


def test_dry_run_model_and_gpu_free_timeout():
    s = make({"engine": "vllm", "dry_run": True, "model": " /models/dsv32 ", "served_model_name": "dsv32",
              "gpu_free_timeout": "30"})
    assert s.dry_run and s.model == "/models/dsv32" and s.served_model_name == "dsv32" and s.gpu_free_timeout_s == 30
    assert make().gpu_free_timeout_s == 300
    with pytest.raises(SettingsError, match="--dry-run starts nothing"):
        make({"engine": "vllm", "dry_run": True, "update_baselines": True})
    with pytest.raises(SettingsError, match="--gpu-free-timeout: expected a positive number"):
        make({"gpu_free_timeout": "-1"})


def test_an_exported_endpoint_is_unused_by_other_engines_and_dry_run_needs_an_engine():
    assert make({"engine": "sim"}, {"LLMPERF_ENDPOINT": "http://127.0.0.1:8000"}).endpoint is None
    assert make({}, {"LLMPERF_ENDPOINT": "http://127.0.0.1:8000"}).endpoint is None
    with pytest.raises(SettingsError, match="--dry-run shows what --engine would run"):
        make({"dry_run": True})


def test_missing_files_name_their_source(tmp_path):
    with pytest.raises(SettingsError, match=r"--chat-template: .*t.jinja is not a file \(from environment LLMPERF_CHAT_TEMPLATE\)"):
        make({}, {"LLMPERF_CHAT_TEMPLATE": str(tmp_path / "t.jinja")})


def test_measurement_options(tmp_path):
    data = tmp_path / "sg.json"
    data.write_text("[]")
    s = make({"goodput": "ttft:2000 tpot:80", "percentiles": "50,90,99", "dataset_path": str(data),
              "client_processes": "3", "results_dir": "out", "save_requests": True})
    assert s.goodput_slos_ms == {"ttft": 2000.0, "tpot": 80.0}
    assert s.percentiles == (50.0, 90.0, 99.0)
    assert s.dataset_path == data and s.client_processes == 3
    assert s.results_dir == CWD / "out" and s.save_requests
    d = make()
    assert d.goodput_slos_ms is None and d.percentiles == (99.0,) and d.client_processes == 1
    assert d.results_dir is None and not d.save_requests and d.tokenizer_path is None
    assert make(env={"LLMPERF_PERCENTILES": "95"}).percentiles == (95.0,)
    assert make(ini={"llmperf_goodput": "e2el:500"}).goodput_slos_ms == {"e2el": 500.0}


@pytest.mark.parametrize("cli, env, message", [
    ({"goodput": "itl:4"}, {}, "--goodput: expected NAME:MS with NAME among ttft, tpot, e2el, got 'itl:4' (from command line --goodput)"),
    ({}, {"LLMPERF_PERCENTILES": "200"}, "--percentiles: a percentile must be within (0, 100], got '200' (from environment LLMPERF_PERCENTILES)"),
    ({"client_processes": "0"}, {}, "--client-processes: expected a positive integer"),
    ({"dataset_path": "/nope/sg.json"}, {}, "--dataset-path: /nope/sg.json is not a file"),
    ({"tokenizer": "/nope/tokenizer.json"}, {}, "--tokenizer: /nope/tokenizer.json does not exist (from command line --tokenizer)"),
    ({"save_requests": True}, {}, "--save-requests adds per-request records to the results: give --results-dir or --report-json"),
])
def test_bad_measurement_options_name_option_and_source(cli, env, message):
    with pytest.raises(SettingsError) as info:
        make(cli, env)
    assert message in str(info.value)


def test_save_requests_with_a_report_only():
    assert make({"save_requests": True, "report_json": "r.json"}).save_requests


# ----------------------------------------------------------------- the HTTP edge
def test_headers_and_the_api_key_are_resolved_once_and_never_shown():
    s = make({"header": ["X-Tenant: a", "X-Trace:  b c "]}, {"OPENAI_API_KEY": "sk-from-env"})
    assert s.http.headers == (("X-Tenant", "a"), ("X-Trace", "b c"))
    assert s.http.request_headers()["Authorization"] == "Bearer sk-from-env"
    assert s.http.api_key_source == "OPENAI_API_KEY"
    assert "sk-from-env" not in repr(s) and "sk-from-env" not in str(s.http.describe())
    assert make(ini={"llmperf_headers": ["X-Ini: 1", ""]}).http.headers == (("X-Ini", "1"),)
    # the command line replaces the ini's list, as for every other option
    assert make({"header": ["X-Cli: 2"]}, ini={"llmperf_headers": ["X-Ini: 1"]}).http.headers == (("X-Cli", "2"),)
    other = make({"api_key_env": "MY_KEY"}, {"MY_KEY": "k-2", "OPENAI_API_KEY": "k-1"})
    assert other.http.api_key == "k-2" and other.http.api_key_source == "MY_KEY"
    assert make().http.api_key is None and make().http.request_headers() == {}


@pytest.mark.parametrize("cli, env, message", [
    ({"header": ["Authorization Bearer sk-secret-1"]}, {},
     "--header: expected \"Name: value\", got text without a name before ':' (from command line --header)"),
    ({"engine": "external", "endpoint": "http://me:pw@127.0.0.1:8000"}, {},
     "--endpoint: credentials in the endpoint URL are not used; give the API key with OPENAI_API_KEY"),
    ({"header": ["Bad Name: x"]}, {}, "'Bad Name' is not a valid header name"),
    ({"header": ["X-A: 1", "x-a: 2"]}, {}, "--header: x-a is given more than once"),
    ({"api_key_env": "1BAD"}, {}, "--api-key-env: expected an environment variable name, got '1BAD'"),
    ({"api_key_env": "UNSET_KEY"}, {}, "--api-key-env: the environment variable UNSET_KEY is not set (or empty)"),
])
def test_bad_http_options_say_which_and_why(cli, env, message):
    with pytest.raises(SettingsError) as info:
        make(cli, env)
    assert message in str(info.value)
    assert "sk-secret" not in str(info.value) and "pw@" not in str(info.value)


def test_ca_bundle_must_be_certificates_and_excludes_insecure(tmp_path):
    from tls_certs import make_certs

    certs = make_certs(tmp_path)
    s = make({"ca_bundle": str(certs.ca_path)})
    assert s.http.ca_bundle == certs.ca_path and s.http.ssl_context().verify_mode.name == "CERT_REQUIRED"
    assert make({"insecure": True}).http.ssl_context().verify_mode.name == "CERT_NONE"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(SettingsError, match=f"--ca-bundle: {junk} is not a PEM file of certificates"):
        make({"ca_bundle": str(junk)})
    with pytest.raises(SettingsError, match="--insecure skips certificate checks, so --ca-bundle would do nothing"):
        make({"ca_bundle": str(certs.ca_path), "insecure": True})


def test_the_startup_timeout_help_says_each_engines_own_default():
    from pytest_llmperf.engines import STARTUP_TIMEOUT_S, get_adapter
    from pytest_llmperf.settings import OPTIONS

    (spec,) = [o for o in OPTIONS if o.dest == "startup_timeout"]
    for engine, timeout_s in STARTUP_TIMEOUT_S.items():
        assert get_adapter(engine).startup_timeout_s == timeout_s
        assert f"{engine} {timeout_s:g}" in spec.help
    assert STARTUP_TIMEOUT_S["external"] == 600


def test_colocated_and_the_gpu_lock_dir(tmp_path):
    settings = make({"engine": "sim"})
    assert settings.colocated == "gate" and settings.gpu_lock_dir is None
    settings = make({"engine": "sim", "colocated": "WARN"}, {"LLMPERF_GPU_LOCK_DIR": "locks"})
    assert settings.colocated == "warn" and settings.gpu_lock_dir.name == "locks" and settings.gpu_lock_dir.is_absolute()
