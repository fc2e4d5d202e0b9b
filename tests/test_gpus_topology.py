import copy
import json

import pytest

from pytest_llmperf.gpus import parse_gpu_spec
from pytest_llmperf.topology import SIM_NODE_SNAPSHOT, check_node, load_snapshot


def test_parse_specs():
    spec = parse_gpu_spec("H200x8")
    assert str(spec) == "h200x8" and spec.count == 8 and spec.product.key == "h200"
    assert parse_gpu_spec("any").is_any
    assert str(parse_gpu_spec("h100x1")) == "h100x1"


@pytest.mark.parametrize("bad, words", [("h200", "malformed"), ("h200x0", "malformed"), ("x8", "malformed"),
                                        ("v100x8", "unknown GPU 'v100'"), ("", "malformed")])
def test_bad_specs_list_examples(bad, words):
    with pytest.raises(ValueError) as info:
        parse_gpu_spec(bad)
    assert words in str(info.value) and "h200x8" in str(info.value)


@pytest.fixture
def hgx():
    return load_snapshot(SIM_NODE_SNAPSHOT)


def test_sim_node_fits_h200x8(hgx):
    verdict = check_node(parse_gpu_spec("h200x8"), hgx, "sim")
    assert verdict.ok, verdict.problems
    assert verdict.gpu_indices == tuple(range(8))
    assert check_node(parse_gpu_spec("h200x4"), hgx, "sim").gpu_indices == (0, 1, 2, 3)


def test_each_problem_named(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][1]["mig_enabled"] = True
    node["gpus"][2]["ecc_uncorrected"] = 3
    node["gpus"][3]["processes"] = [{"pid": 4242, "used_memory_mib": 70000}]
    node["gpus"][4]["nvlink_peers"] = [0, 1, 2, 3]
    node["gpus"][5]["memory_total_mib"] = 81559
    node["gpus"][6]["fabric_state"] = "in_progress"
    problems = check_node(parse_gpu_spec("h200x8"), node, "test").problems
    text = "\n".join(problems)
    assert "GPU 1 has MIG enabled" in text
    assert "GPU 2 reports 3 volatile uncorrected ECC errors" in text
    assert "process 4242 holds 70000 MiB" in text
    assert "no NVLink P2P between GPU pairs 4-5, 4-6, 4-7" in text
    assert "GPU 5 has 81559 MiB" in text
    assert "GPU 6 fabric state is 'in_progress'" in text
    assert len(problems) == 6


def test_wrong_product_and_count(hgx):
    problems = check_node(parse_gpu_spec("h100x16"), hgx, "sim").problems
    assert problems[0] == "16 GPUs needed, 8 found"
    assert "GPU 0 is 'NVIDIA H200', expected 'NVIDIA H100 80GB HBM3'" in problems[1]


def test_bad_snapshot_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_snapshot(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_snapshot(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"gpus": [{"index": 0}]}))
    with pytest.raises(ValueError, match=r"gpus\[0\] lacks name, memory_total_mib"):
        load_snapshot(tmp_path / "b.json")
