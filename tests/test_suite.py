import pytest

from pytest_llmperf.suite import SuiteError, load_builtin_suite, load_suite_file, parse_suite

MIN = {
    "model": "org/model",
    "workloads": {"w1": {"dataset": "random", "input_len": 10, "output_len": 5, "num_prompts": 3}},
    "configs": [{"engine": "sim", "name": "c1", "profile": "p"}],
}


def test_builtin_sim_suite_has_the_seed_headline_configs():
    suite = load_builtin_suite(["sim"])
    ids = [c.id for c in suite.cases(["sim"])]
    assert "sim/vllm-tp8/sharegpt" in ids and "sim/sglang-tp8-dp8-dpattn/medium" in ids
    assert len(suite.configs) >= 2 and len(suite.workloads) >= 3
    assert len(ids) == len(suite.configs) * len(suite.workloads)
    # cases are grouped by configuration
    assert [c.config.name for c in suite.cases(["sim"])][: len(suite.workloads)] == ["vllm-tp8"] * len(suite.workloads)
    assert suite.gpus == "h200x8"


def test_parse_minimal_and_options(tmp_path):
    suite = parse_suite(MIN, "s.toml", tmp_path)
    (case,) = suite.cases(["sim"])
    assert case.id == "sim/c1/w1"
    assert case.config.option("profile") == "p" and case.config.model == "org/model"
    assert case.workload.ignore_eos is True  # random datasets ask for exact lengths
    assert case.workload.params()["input_len"] == 10
    assert suite.cases(["vllm"]) == []
    assert suite.with_num_prompts(7).workloads[0].num_prompts == 7


def test_config_workload_subset(tmp_path):
    data = {**MIN, "workloads": {**MIN["workloads"], "w2": {"dataset": "sharegpt", "num_prompts": 2}},
            "configs": [{"engine": "sim", "name": "c1", "workloads": ["w2"]}]}
    suite = parse_suite(data, "s.toml", tmp_path)
    assert [c.id for c in suite.cases(["sim"])] == ["sim/c1/w2"]
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
