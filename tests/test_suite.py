import pytest

from pytest_llmperf.settings import Settings
from pytest_llmperf.suite import SuiteError, load_builtin_suite, load_suite_file, parse_suite, resolve

MIN = {
    "model": "org/model",
    "workloads": {"w1": {"dataset": "random", "input_len": 10, "output_len": 5, "num_prompts": 3}},
    "configs": [{"engine": "sim", "name": "c1", "profile": "vllm-tp8"}],
}


def cases(suite, engines=("sim",), **settings):
    return list(resolve(Settings(engines=tuple(engines), **settings), suite).cases)


def test_builtin_sim_suite_has_the_seed_headline_configs():
    suite = load_builtin_suite(["sim"])
    ids = [c.id for c in cases(suite)]
    assert "sim/vllm-tp8/sharegpt" in ids and "sim/sglang-tp8-dp8-dpattn/medium" in ids
    assert len(suite.configs) >= 2 and len(suite.workloads) >= 3
    assert len(ids) == len(suite.configs) * len(suite.workloads)
    # cases are grouped by configuration
    assert [c.config.name for c in cases(suite)][: len(suite.workloads)] == ["vllm-tp8"] * len(suite.workloads)
    assert suite.gpus == "h200x8"


def test_parse_minimal_and_options(tmp_path):
    suite = parse_suite(MIN, "s.toml", tmp_path)
    (case,) = cases(suite)
    assert case.id == "sim/c1/w1"
    assert case.config.option("profile") == "vllm-tp8" and case.config.model == "org/model"
    assert case.workload.ignore_eos is True  # random datasets ask for exact lengths
    assert case.workload.params()["input_len"] == 10
    with pytest.raises(SuiteError, match="suite s.toml has no configurations for engine.s. vllm; it has: sim"):
        cases(suite, ["vllm"])


def test_config_workload_subset(tmp_path):
    data = {**MIN, "workloads": {**MIN["workloads"], "w2": {"dataset": "sharegpt", "num_prompts": 2}},
            "configs": [{"engine": "sim", "name": "c1", "profile": "vllm-tp8", "workloads": ["w2"]}]}
    suite = parse_suite(data, "s.toml", tmp_path)
    assert [c.id for c in cases(suite)] == ["sim/c1/w2"]
    assert suite.workloads[1].ignore_eos is False


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"model": ""}, "s.toml: model: expected the served model name"),
        ({"extra": 1}, "unknown top-level keys ['extra']"),
        ({"workloads": {"w": {"dataset": "csv", "num_prompts": 1}}}, "workloads.w.dataset: expected one of ['random', 'sharegpt']"),
        ({"workloads": {"w": {"dataset": "random", "num_prompts": 0, "input_len": 1, "output_len": 1}}}, "workloads.w.num_prompts: expected an integer >= 1"),
        ({"workloads": {"w": {"dataset": "random", "num_prompts": 1, "output_len": 1}}}, "workloads.w.input_len"),
        ({"workloads": {"w": {"dataset": "random", "num_prompts": 1, "input_len": 1, "output_len": 1, "rate": 3}}}, "unknown keys ['rate']"),
        ({"configs": [{"engine": "sim", "name": "a b"}]}, "configs[0].name"),
        ({"configs": [{"engine": "sim", "name": "a", "args": "--x"}]}, "configs[0].args: expected a list of strings"),
        ({"configs": [{"engine": "sim", "name": "a"}, {"engine": "sim", "name": "a"}]}, "sim/a is defined twice"),
        ({"configs": [{"engine": "sim", "name": "a", "workloads": ["nope"]}]}, "unknown workloads ['nope']"),
    ],
)
def test_errors_name_file_and_key(tmp_path, patch, message):
    with pytest.raises(SuiteError) as info:
        parse_suite({**MIN, **patch}, "s.toml", tmp_path)
    assert message in str(info.value)


def test_suite_file_errors(tmp_path):
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite_file(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("model = ")
    with pytest.raises(SuiteError, match="not valid TOML"):
        load_suite_file(bad)


def test_relative_dataset_path_is_relative_to_the_suite_file(tmp_path):
    f = tmp_path / "suite.toml"
    f.write_text('model = "m"\n[workloads.s]\ndataset = "sharegpt"\nnum_prompts = 5\ndataset_path = "data/sg.json"\n'
                 '[[configs]]\nengine = "sim"\nname = "c"\n')
    assert load_suite_file(f).workloads[0].dataset_path == str(tmp_path / "data/sg.json")


def test_the_seed_workloads_ship_as_named_presets():
    from pytest_llmperf.suite import workload_presets

    presets = workload_presets()
    shapes = {n: (p["dataset"], p.get("input_len"), p.get("output_len"), p["num_prompts"], p["seed"])
              for n, p in presets.items()}
    assert shapes == {
        "sharegpt": ("sharegpt", None, None, 1000, 42),
        "short": ("random", 128, 4, 1000, 42),
        "medium": ("random", 2000, 100, 500, 42),
        "long": ("random", 4000, 200, 500, 42),
        "very-long": ("random", 32000, 100, 100, 42),
        "ultra-long": ("random", 128000, 100, 100, 42),
        "gen-heavy": ("random", 1000, 2000, 100, 42),
    }


def test_a_workload_takes_a_preset_and_overrides_its_keys(tmp_path):
    suite = parse_suite({**MIN, "workloads": {"w": {"preset": "long", "num_prompts": 20, "request_rate": 4,
                                                    "burstiness": 0.5, "warmup_requests": 3}}}, "s.toml", tmp_path)
    w = suite.workloads[0]
    assert (w.dataset, w.input_len, w.output_len, w.num_prompts, w.seed) == ("random", 4000, 200, 20, 42)
    assert (w.request_rate, w.burstiness, w.warmup_requests, w.ignore_eos) == (4.0, 0.5, 3, True)
    assert w.params()["request_rate"] == 4.0 and w.params()["burstiness"] == 0.5
    assert w.params()["warmup_requests"] == 3


def test_default_arrivals_keep_the_stored_workload_parameters_unchanged(tmp_path):
    suite = parse_suite({**MIN, "workloads": {"w": {"preset": "short"}}}, "s.toml", tmp_path)
    params = suite.workloads[0].params()
    assert params["request_rate"] == "inf" and "burstiness" not in params and "warmup_requests" not in params


@pytest.mark.parametrize("table, message", [
    ({"preset": "huge"}, "workloads.w.preset: unknown preset 'huge'; valid: sharegpt, short"),
    ({"preset": "short", "request_rate": 0}, "workloads.w.request_rate: expected requests per second > 0"),
    ({"preset": "short", "request_rate": "fast"}, "workloads.w.request_rate"),
    ({"preset": "short", "request_rate": 2, "burstiness": 0}, "workloads.w.burstiness"),
    ({"preset": "short", "burstiness": 2}, "only applies with a finite request_rate"),
    ({"preset": "short", "warmup_requests": -1}, "workloads.w.warmup_requests"),
])
def test_bad_arrival_keys_name_the_key(tmp_path, table, message):
    with pytest.raises(SuiteError) as info:
        parse_suite({**MIN, "workloads": {"w": table}}, "s.toml", tmp_path)
    assert message in str(info.value)


def test_dry_runs_describe_the_arrivals(tmp_path):
    from pytest_llmperf.plan import describe_workload as _describe_workload

    suite = parse_suite({**MIN, "workloads": {
        "a": {"preset": "long"},
        "b": {"preset": "sharegpt", "request_rate": 2.5, "burstiness": 0.5, "max_concurrency": 16, "warmup_requests": 4},
    }}, "s.toml", tmp_path)
    a, b = suite.workloads
    assert _describe_workload(a) == "random 4000/200 x 500"
    assert _describe_workload(b) == ("sharegpt x 1000 from bundled sample at 2.5 req/s (burstiness 0.5), "
                                     "at most 16 in flight, 4 warm-up")


def test_every_override_is_applied_once_and_the_case_keys_do_not_move(tmp_path):
    from pathlib import Path

    from pytest_llmperf.gpus import parse_gpu_spec

    data = {**MIN, "workloads": {**MIN["workloads"], "chat": {"dataset": "sharegpt", "num_prompts": 2}},
            "configs": [{"engine": "sim", "name": "c1", "profile": "vllm-tp8"},
                        {"engine": "external", "name": "there", "endpoint": "http://127.0.0.1:9"}]}
    suite = parse_suite(data, "s.toml", tmp_path)
    got = resolve(Settings(engines=("sim", "external"), num_prompts=7, dataset_path=Path("/data/sg.json"),
                           model="/models/local-copy", served_model_name="served", endpoint="http://127.0.0.1:8000",
                           gpus=parse_gpu_spec("h100x4")), suite)
    by_id = {c.id: c for c in got.cases}
    assert list(by_id) == ["sim/c1/w1", "sim/c1/chat", "external/there/w1", "external/there/chat"]
    assert {c.workload.num_prompts for c in got.cases} == {7}
    assert by_id["sim/c1/chat"].workload.dataset_path == "/data/sg.json" and by_id["sim/c1/w1"].workload.dataset_path is None
    sim = by_id["sim/c1/w1"].config
    assert sim.model_to_load == "/models/local-copy" and sim.model == "org/model"  # baselines stay keyed by the suite's
    assert by_id["external/there/w1"].config.option("endpoint") == "http://127.0.0.1:8000"
    assert by_id["external/there/w1"].config.served_name == "served" and sim.served_name == "served"
    assert by_id["sim/c1/w1"].baseline_key == ("h100x4", "org/model", "sim", "c1", "w1")
    assert got.notes == ()
    trt = parse_suite({**MIN, "configs": [{"engine": "trtllm", "name": "t"}]}, "s.toml", tmp_path)
    noted = resolve(Settings(engines=("trtllm",), served_model_name="served"), trt)
    assert noted.cases[0].config.served_name == ""  # TensorRT-LLM serves the model's own name: said once
    assert noted.notes == ("trtllm/t: trtllm takes no served model name; requests carry the name it lists in "
                           "/v1/models",)


def test_a_suite_that_selects_no_case_is_refused_in_one_line(tmp_path):
    parked = parse_suite({**MIN, "configs": [{"engine": "sim", "name": "c1", "profile": "vllm-tp8",
                                               "workloads": []}]}, "s.toml", tmp_path)
    with pytest.raises(SuiteError, match="suite s.toml selects no case for engine.s. sim: its configurations list "
                                         "no workloads"):
        cases(parked)


def test_external_alone_gets_an_endpoint_configuration_and_the_seed_workloads():
    got = resolve(Settings(engines=("external",), endpoint="http://127.0.0.1:8000"))
    assert {c.config.id for c in got.cases} == {"external/endpoint"}
    assert [c.workload.name for c in got.cases][:2] == ["sharegpt", "short"]
    with pytest.raises(SuiteError, match="--engine=external needs --endpoint URL"):
        resolve(Settings(engines=("external",)))


# -- how many GPUs each configuration uses ---------------------------------
def one_config(tmp_path, **config):
    return parse_suite({**MIN, "configs": [config]}, "s.toml", tmp_path)


def test_a_configurations_gpus_come_from_its_flags_or_its_suite_key(tmp_path):
    (case,) = cases(one_config(tmp_path, engine="sim", name="c1", profile="vllm-tp8"))
    assert case.config.gpus == 8  # the profile's
    (case,) = cases(one_config(tmp_path, engine="sim", name="c1", profile="vllm-tp8", gpus=8))
    assert case.config.gpus == 8 and "gpus" not in dict(case.config.options)
    (case,) = cases(one_config(tmp_path, engine="vllm", name="tp4", args=["-tp", "4"]), ["vllm"])
    assert case.config.gpus == 4
    # flags that cannot say (a TRT-LLM YAML may override them): the suite's key, else unknown
    yaml_args = ["--tp_size", "8", "--extra_llm_api_options", "extra.yaml"]
    (case,) = cases(one_config(tmp_path, engine="trtllm", name="y", args=yaml_args, gpus=4), ["trtllm"])
    assert case.config.gpus == 4
    (case,) = cases(one_config(tmp_path, engine="trtllm", name="y", args=yaml_args), ["trtllm"])
    assert case.config.gpus is None
    (case,) = cases(one_config(tmp_path, engine="external", name="e", endpoint="http://h:1"), ["external"])
    assert case.config.gpus is None


def test_a_gpus_key_that_disagrees_with_the_flags_is_refused_in_one_line(tmp_path):
    suite = one_config(tmp_path, engine="sglang", name="tp8", args=["--tp-size", "8"], gpus=4)
    with pytest.raises(SuiteError) as info:
        cases(suite, ["sglang"])
    assert str(info.value) == ("s.toml: configs[0].gpus: sglang/tp8 says gpus = 4 but its flags use 8 GPUs "
                               "(--tp-size 8); make them agree")
    suite = one_config(tmp_path, engine="vllm", name="d", args=["-tp=1", "-dp", "2", "--max-model-len", "9"], gpus=8)
    with pytest.raises(SuiteError, match=r"configs\[0\].gpus: vllm/d says gpus = 8 but its flags use 2 GPUs "
                                         r"\(-tp=1 -dp 2\); make them agree$"):
        cases(suite, ["vllm"])
    suite = one_config(tmp_path, engine="vllm", name="one", gpus=2)
    with pytest.raises(SuiteError, match=r"its flags use 1 GPU \(no parallel flags: 1\)"):
        cases(suite, ["vllm"])
    suite = one_config(tmp_path, engine="sim", name="c1", profile="vllm-tp8", gpus=4)
    with pytest.raises(SuiteError, match=r"sim/c1 says gpus = 4 but its sim profile vllm-tp8 stands in for 8 GPUs"):
        cases(suite)


@pytest.mark.parametrize("value", [0, -1, "8", True, 2.5])
def test_a_bad_gpus_key_names_file_and_key(tmp_path, value):
    with pytest.raises(SuiteError) as info:
        one_config(tmp_path, engine="sim", name="c1", profile="vllm-tp8", gpus=value)
    assert str(info.value) == f"s.toml: configs[0].gpus: expected an integer >= 1, got {value!r}"


def test_a_bad_parallel_flag_is_one_line_naming_the_configuration(tmp_path):
    with pytest.raises(SuiteError) as info:
        cases(one_config(tmp_path, engine="vllm", name="x", args=["-tp", "zero"]), ["vllm"])
    assert str(info.value) == "vllm/x: -tp expects an integer >= 1, got 'zero'"


def test_gpu_counts_move_no_baseline_key_and_no_workload_parameter(tmp_path):
    plain = cases(one_config(tmp_path, engine="vllm", name="tp8", args=["-tp", "8"]), ["vllm"])
    said = cases(one_config(tmp_path, engine="vllm", name="tp8", args=["-tp", "8"], gpus=8), ["vllm"])
    assert [c.baseline_key for c in plain] == [c.baseline_key for c in said] == [("any", "org/model", "vllm", "tp8", "w1")]
    assert [c.workload.params() for c in plain] == [c.workload.params() for c in said]
    assert [c.id for c in plain] == [c.id for c in said] == ["vllm/tp8/w1"]
