"""The engine adapters: the seed's command lines, environments, options, versions."""

from __future__ import annotations

import http.server
import json
import sys
import threading

import pytest

from pytest_llmperf.engines import get_adapter
from pytest_llmperf.engines.base import Launch
from pytest_llmperf.http import normalize_endpoint
from pytest_llmperf.verdict import version_matches
from pytest_llmperf.suite import EngineConfig, load_builtin_suite

SEED = {c.id: c for c in load_builtin_suite(["vllm"]).configs}
TOKENIZER = ["--tokenizer-mode", "deepseek_v32", "--reasoning-parser", "deepseek_v3"]
MODEL = "deepseek-ai/DeepSeek-V3.2"

# The flags the seed ran, beyond the model, host and port (engines.md).
SEED_FLAGS = {
    "vllm/tp8": ["-tp", "8", *TOKENIZER],
    "vllm/dp8-ep": [*TOKENIZER, "-tp", "1", "-dp", "8", "--enable-expert-parallel", "--max-model-len", "81920"],
    "vllm/dcp8": ["-tp", "8", *TOKENIZER, "-dcp", "8"],
    "vllm/mtp1": ["-tp", "8", *TOKENIZER, "--speculative-config", '{"method":"mtp","num_speculative_tokens":1}'],
    "vllm/tp8-no-deepgemm": ["-tp", "8", *TOKENIZER],
    "sglang/tp8": ["--tp-size", "8"],
    "sglang/tp8-dpattn": ["--tp-size", "8", "--enable-dp-attention"],
    "sglang/tp8-dp8-dpattn": ["--tp-size", "8", "--dp-size", "8", "--enable-dp-attention"],
    "sglang/tp8-dp8-dpattn-ep8": ["--tp-size", "8", "--dp-size", "8", "--enable-dp-attention", "--ep-size", "8"],
    "sglang/mtp-eagle": ["--tp-size", "8", "--speculative-algorithm", "EAGLE", "--speculative-num-steps", "1",
                         "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "2"],
    "sglang/tp8-no-deepgemm": ["--tp-size", "8"],
    "trtllm/tp8": ["--tp_size", "8"],
    "trtllm/tp8-ep8": ["--tp_size", "8", "--ep_size", "8", "--pp_size", "1"],
    "trtllm/tp8-ep8-no-deepgemm": ["--tp_size", "8", "--ep_size", "8", "--pp_size", "1"],
}
SEED_ENV = {
    "vllm/tp8-no-deepgemm": {"VLLM_USE_DEEP_GEMM": "0"},
    "sglang/tp8-no-deepgemm": {"SGLANG_ENABLE_JIT_DEEPGEMM": "0"},
    "trtllm/tp8-ep8-no-deepgemm": {"TRTLLM_DG_ENABLED": "0"},
}
WITH_TEMPLATE = {"sglang/tp8", "sglang/tp8-dpattn", "sglang/tp8-dp8-dpattn", "sglang/tp8-dp8-dpattn-ep8", "sglang/tp8-no-deepgemm"}


def test_the_preset_holds_exactly_the_seed_configurations():
    assert sorted(SEED) == sorted(SEED_FLAGS)
    assert {c.engine_version for c in SEED.values() if c.engine == "vllm"} == {"0.13.0"}
    assert {c.engine_version for c in SEED.values() if c.engine == "sglang"} == {"0.5.6.post2"}
    assert {c.engine_version for c in SEED.values() if c.engine == "trtllm"} == {"1.2.0rc5"}
    failing = {cid: c.expected_failure for cid, c in SEED.items() if c.expected_failure}
    assert sorted(failing) == ["sglang/tp8-no-deepgemm", "vllm/dcp8"]
    assert "27544" in failing["vllm/dcp8"] and "DeepGEMM" in failing["sglang/tp8-no-deepgemm"]


@pytest.mark.parametrize("config_id", sorted(SEED_FLAGS))
def test_seed_command_lines_and_environment(config_id, tmp_path):
    config = SEED[config_id]
    adapter = get_adapter(config.engine)
    adapter.validate(config)
    template = tmp_path / "tool_chat_template_deepseekv32.jinja"
    template.write_text("{{ messages }}")
    launch = Launch(port="8123", model=MODEL, chat_template=template, gpu_uuids=("GPU-aaa", "GPU-bbb"))
    argv = adapter.argv(config, launch)
    host_port = ["--host", "127.0.0.1", "--port", "8123"]
    if config.engine == "vllm":
        assert argv == ["vllm", "serve", MODEL, *SEED_FLAGS[config_id], *host_port]
    elif config.engine == "trtllm":
        assert argv == ["trtllm-serve", MODEL, *SEED_FLAGS[config_id], *host_port]
    else:
        chat = ["--chat-template", str(template)] if config_id in WITH_TEMPLATE else []
        assert argv == [sys.executable, "-m", "sglang.launch_server", "--model-path", MODEL, *chat,
                        *SEED_FLAGS[config_id], *host_port, "--enable-metrics"]  # so that /metrics exists
    # every word is one argv item: the MTP JSON stays whole
    if config_id == "vllm/mtp1":
        assert json.loads(argv[argv.index("--speculative-config") + 1]) == {"method": "mtp", "num_speculative_tokens": 1}
    env = adapter.env(config, launch)
    dev_mode = {"VLLM_SERVER_DEV_MODE": "1"} if config.engine == "vllm" else {}  # for POST /reset_prefix_cache
    assert env == {**SEED_ENV.get(config_id, {}), **dev_mode, "CUDA_VISIBLE_DEVICES": "GPU-aaa,GPU-bbb"}


def test_engine_metrics_and_cache_reset_are_each_adapters_data():
    vllm, sglang = get_adapter("vllm"), get_adapter("sglang")
    # a configuration's own VLLM_SERVER_DEV_MODE wins over the default
    own = EngineConfig("vllm", "c", MODEL, env=(("VLLM_SERVER_DEV_MODE", "0"),))
    assert vllm.env(own, Launch())["VLLM_SERVER_DEV_MODE"] == "0"
    assert vllm.env(EngineConfig("vllm", "c", MODEL), Launch()) == {"VLLM_SERVER_DEV_MODE": "1"}
    # --enable-metrics once, whether or not the configuration has it
    for args in ((), ("--enable-metrics", "--tp-size", "8")):
        argv = sglang.argv(EngineConfig("sglang", "c", MODEL, args=args), Launch())
        assert argv.count("--enable-metrics") == 1
    formats = {name: get_adapter(name).metrics_format for name in ("vllm", "sglang", "trtllm", "sim", "external")}
    assert formats == {"vllm": "prometheus", "sglang": "prometheus", "trtllm": "trtllm-json", "sim": "prometheus",
                       "external": "prometheus"}
    routes = {name: [r.path for r in get_adapter(name).cache_reset_routes]
              for name in ("vllm", "sglang", "trtllm", "sim", "external")}
    assert routes == {"vllm": ["/reset_prefix_cache"], "sglang": ["/flush_cache"], "trtllm": [],
                      "sim": ["/reset_prefix_cache"], "external": ["/reset_prefix_cache", "/flush_cache"]}
    assert sglang.cache_reset_routes[0].busy_statuses == {400}


def test_sglang_without_a_template_leaves_the_flag_out_and_says_so():
    adapter = get_adapter("sglang")
    config = SEED["sglang/tp8-dp8-dpattn"]
    launch = Launch(model=MODEL)
    assert "--chat-template" not in adapter.argv(config, launch)
    (note,) = adapter.notes(config, launch)
    assert "without --chat-template" in note and "--chat-template PATH" in note
    assert adapter.notes(SEED["sglang/mtp-eagle"], launch) == []  # the seed ran it without one


def test_sglang_template_path_in_a_suite_is_relative_to_it(tmp_path):
    adapter = get_adapter("sglang")
    (tmp_path / "t.jinja").write_text("x")
    config = EngineConfig("sglang", "c", MODEL, options=(("chat_template", "t.jinja"),), source_dir=str(tmp_path))
    adapter.validate(config)
    assert adapter.argv(config, Launch())[5:7] == ["--chat-template", str(tmp_path / "t.jinja")]
    with pytest.raises(ValueError, match="chat template .*missing.jinja does not exist"):
        adapter.validate(EngineConfig("sglang", "c", MODEL, options=(("chat_template", "missing.jinja"),), source_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="chat_template must be true"):
        adapter.validate(EngineConfig("sglang", "c", MODEL, options=(("chat_template", 3),)))


def test_model_override_served_name_and_executables():
    vllm, sglang, trtllm = (get_adapter(n) for n in ("vllm", "sglang", "trtllm"))
    launch = Launch(model="/models/dsv32", served_model_name="dsv32")
    argv = vllm.argv(SEED["vllm/tp8"], launch)
    assert argv[2] == "/models/dsv32" and argv[-2:] == ["--served-model-name", "dsv32"]
    argv = sglang.argv(SEED["sglang/mtp-eagle"], launch)
    assert argv[argv.index("--model-path") + 1] == "/models/dsv32" and argv[-2:] == ["--served-model-name", "dsv32"]
    assert trtllm.argv(SEED["trtllm/tp8"], launch)[1] == "/models/dsv32"
    custom = EngineConfig("vllm", "c", MODEL, options=(("executable", "/opt/venv/bin/vllm"),))
    vllm.validate(custom)
    assert vllm.argv(custom, Launch())[0] == "/opt/venv/bin/vllm"
    assert vllm.missing_executable(custom) == "/opt/venv/bin/vllm is not an executable file"
    with pytest.raises(ValueError, match=r"unknown keys \['tp'\] for engine trtllm"):
        trtllm.validate(EngineConfig("trtllm", "c", MODEL, options=(("tp", 8),)))


def test_missing_engine_programs_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert get_adapter("vllm").missing_executable(SEED["vllm/tp8"]) == "vllm is not on PATH"
    assert get_adapter("trtllm").missing_executable(SEED["trtllm/tp8"]) == "trtllm-serve is not on PATH"
    python3 = EngineConfig("sglang", "c", MODEL, options=(("python", "python3"),))
    assert get_adapter("sglang").missing_executable(python3) == "python3 is not on PATH"


def test_trtllm_request_fields_cover_what_the_client_sends():
    from pytest_llmperf.loadgen.client import build_body
    from pytest_llmperf.loadgen.datasets import SampleRequest

    fields = get_adapter("trtllm").request_fields
    request = SampleRequest(prompt="hi", prompt_len=1, expected_output_len=4)
    for endpoint in ("/v1/chat/completions", "/v1/completions"):
        assert set(build_body(endpoint, "m", request, ignore_eos=True)) <= fields[endpoint]
    assert "max_completion_tokens" not in fields["/v1/completions"]
    assert get_adapter("vllm").request_fields is None


@pytest.mark.parametrize("url,expected", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
    ("https://llm.example/serve/v1/", "https://llm.example/serve"),
])
def test_endpoints_are_normalized(url, expected):
    assert normalize_endpoint(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host", "http://", "http://h:99999", "http://h/?x=1"])
def test_bad_endpoints_are_refused(url):
    with pytest.raises(ValueError):
        normalize_endpoint(url)


def test_external_needs_an_endpoint():
    adapter = get_adapter("external")
    with pytest.raises(ValueError, match="needs an endpoint"):
        adapter.validate(EngineConfig("external", "e", MODEL))
    config = EngineConfig("external", "e", MODEL, options=(("endpoint", "http://127.0.0.1:9/v1"),))
    adapter.validate(config)
    assert adapter.base_url(config) == "http://127.0.0.1:9" and not adapter.boots


def test_version_matching():
    assert version_matches("0.13.0", "0.13.0")
    assert version_matches("0.13.0", "0.13.0+cu129")
    assert not version_matches("0.13.0", "0.13.1")
    assert not version_matches("0.5.6.post2", "0.5.6")
    assert not version_matches("1.2.0rc5", "unknown (/version answered HTTP 404)")


class _Routes(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):
        status, body = self.routes.get(self.path, (404, {"detail": "Not Found"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def routes():
    handler = type("H", (_Routes,), {"routes": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler.routes, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_versions_are_read_where_each_engine_reports_them(routes):
    from pytest_llmperf.http import ControlClient

    table, url = routes
    table["/get_server_info"] = (200, {"version": "0.5.6.post2", "tp_size": 8})
    with ControlClient(url) as client:
        assert get_adapter("sglang").version(client) == "0.5.6.post2"
        assert get_adapter("vllm").version(client) == "unknown (/version answered HTTP 404)"
        table["/version"] = (200, {"version": "0.13.0"})
        assert get_adapter("vllm").version(client) == "0.13.0"
        assert get_adapter("external").version(client) == "0.13.0"
        table["/version"] = (200, {"build": "x"})
        assert get_adapter("trtllm").version(client) == "unknown (/version has no 'version')"


# -- how many GPUs a configuration uses ------------------------------------
@pytest.mark.parametrize("engine, args, gpus", [
    ("vllm", [], 1),
    ("vllm", ["-tp", "8"], 8),
    ("vllm", ["--tensor-parallel-size=8"], 8),
    ("vllm", ["--tensor_parallel_size", "4", "--pipeline_parallel_size=2"], 8),  # vLLM reads '_' as '-'
    ("vllm", ["-tp", "2", "-pp", "2"], 4),
    ("vllm", ["-tp", "1", "-dp", "8", "--enable-expert-parallel"], 8),
    ("vllm", ["-tp=2", "--data-parallel-size", "4"], 8),
    ("vllm", ["-tp", "8", "-dcp", "8"], 8),  # decode context parallelism reuses the TP ranks
    ("vllm", ["-tp", "2", "-pcp", "2"], 4),  # prefill context parallelism adds ranks
    ("vllm", ["-tp", "2", "-dp", "8", "--data-parallel-size-local", "2"], 4),  # the ranks on this node
    ("vllm", ["-tp", "2", "-dp", "8", "-dpn", "3"], 2),  # external load balancing: one rank per server
    ("vllm", ["-tp", "2", "--max-model-len", "4", "-tp", "4"], 4),  # the last one wins
    ("sglang", [], 1),
    ("sglang", ["--tp-size", "8"], 8),
    ("sglang", ["--tp", "4", "--dp", "2"], 8),  # plain DP: every replica is a whole TP group
    ("sglang", ["--tensor-parallel-size=2", "--data-parallel-size=2", "--pipeline-parallel-size=2"], 8),
    ("sglang", ["--tp-size", "8", "--enable-dp-attention"], 8),
    ("sglang", ["--tp-size", "8", "--dp-size", "8", "--enable-dp-attention"], 8),  # DP attention: DP inside TP
    ("sglang", ["--tp", "8", "--dp", "8", "--enable-dp-attention", "--ep-size", "8"], 8),
    ("sglang", ["--tp=4", "--pp=2", "--dp=2", "--enable-dp-attention"], 8),
    ("sglang", ["--tp-size", "8", "--attn-dp-size", "8"], 8),
    ("trtllm", [], 1),
    ("trtllm", ["--tp_size", "8"], 8),
    ("trtllm", ["--tp_size", "8", "--ep_size", "8", "--pp_size", "1"], 8),  # EP splits the TP ranks
    ("trtllm", ["--tp_size=4", "--pp_size=2"], 8),
    ("trtllm", ["--tp_size", "8", "--extra_llm_api_options", "extra.yaml"], None),  # the YAML may override
    ("external", [], None),
])
def test_gpus_needed_is_read_from_the_flags(engine, args, gpus):
    assert get_adapter(engine).gpus_needed(EngineConfig(engine, "c", MODEL, args=tuple(args))) == gpus


def test_every_seed_configuration_uses_the_eight_gpus_it_ran_on():
    for engine in ("vllm", "sglang", "trtllm", "sim"):
        for config in load_builtin_suite([engine]).configs:
            if config.engine == engine:
                assert get_adapter(engine).gpus_needed(config) == 8, config.id


@pytest.mark.parametrize("engine, args, message", [
    ("vllm", ["-tp", "0"], "vllm/c: -tp expects an integer >= 1, got '0'"),
    ("vllm", ["--data-parallel-size=two"], "vllm/c: --data-parallel-size expects an integer >= 1, got 'two'"),
    ("vllm", ["-tp", "8.0"], "vllm/c: -tp expects an integer >= 1, got '8.0'"),
    ("sglang", ["--dp-size", "-2"], "sglang/c: --dp-size expects an integer >= 1, got '-2'"),
    ("trtllm", ["--tp_size", "8", "--pp_size"], "trtllm/c: --pp_size expects an integer >= 1, got nothing"),
])
def test_a_bad_parallel_size_names_the_configuration_and_the_flag(engine, args, message):
    with pytest.raises(ValueError) as info:
        get_adapter(engine).gpus_needed(EngineConfig(engine, "c", MODEL, args=tuple(args)))
    assert str(info.value) == message


def test_the_sim_counts_its_profiles_gpus_never_its_args(tmp_path):
    adapter = get_adapter("sim")
    assert adapter.gpus_needed(EngineConfig("sim", "c", MODEL, options=(("profile", "vllm-tp8"),))) == 8
    profile = tmp_path / "four.toml"
    text = load_profile_path("vllm-tp8").read_text().replace("gpus = 8", "gpus = 4\nkv_capacity_tokens = 200000")
    profile.write_text(text.replace("attention_tp = 8", "attention_tp = 4"))
    config = EngineConfig("sim", "c", MODEL, args=("-tp", "8"), options=(("profile", "four.toml"),),
                          source_dir=str(tmp_path))
    assert adapter.gpus_needed(config) == 4


def load_profile_path(name):
    from pytest_llmperf.sim.profiles import PROFILES_DIR

    return PROFILES_DIR / f"{name}.toml"


def test_a_vllm_data_parallel_server_gets_its_rpc_port_reserved_unless_it_sets_one():
    from dataclasses import replace

    adapter = get_adapter("vllm")
    dp8 = EngineConfig("vllm", "dp8", "m", args=("-dp", "8", "--enable-expert-parallel"))
    assert adapter.port_flags(dp8) == ("--data-parallel-rpc-port",)
    assert adapter.port_flags(replace(dp8, args=(*dp8.args, "-dpp", "30001"))) == ()
    assert adapter.port_flags(replace(dp8, args=("--data-parallel-rpc-port=30001", "-dp", "8"))) == ()
    assert adapter.port_flags(EngineConfig("vllm", "tp8", "m", args=("-tp", "8"))) == ()
    launch = Launch(port="8123", extra_ports=(("--data-parallel-rpc-port", "40001"),))
    assert adapter.argv(dp8, launch)[-2:] == ["--data-parallel-rpc-port", "40001"]
    shown = adapter.display_argv(dp8, launch)  # as stored with baselines: no port of this run
    assert "40001" not in shown and shown[-2:] == ["--data-parallel-rpc-port", "{port}"]
    assert get_adapter("sglang").port_flags(dp8) == () and get_adapter("sim").port_flags(dp8) == ()
