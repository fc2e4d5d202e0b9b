"""check_node on typed snapshots: every problem alone and together, and which GPUs an engine gets. Pure."""

import copy
import json

import pytest

from pytest_llmperf.gpus import GpuSpec, parse_gpu_spec
from pytest_llmperf.node.check import FOREIGN_PROCESS_LIMIT_MIB, NodeVerdict, check_node
from pytest_llmperf.node.snapshot import NODES_DIR, SIM_NODE_SNAPSHOT, NodeSnapshot

H200X8 = parse_gpu_spec("h200x8")
VM_SNAPSHOT = NODES_DIR / "h200x1-vm.json"


def snap(data):
    """A snapshot from JSON data (the tests change nodes as JSON, then check them typed)."""
    return NodeSnapshot.from_json(data, "test")


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
    return json.loads(SIM_NODE_SNAPSHOT.read_text())


def test_sim_node_fits_h200x8(hgx):
    verdict = check_node(parse_gpu_spec("h200x8"), snap(hgx), "sim")
    assert verdict.ok, verdict.problems
    assert verdict.gpu_indices == tuple(range(8))
    assert check_node(parse_gpu_spec("h200x4"), snap(hgx), "sim").gpu_indices == (0, 1, 2, 3)


def test_each_problem_named(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][1]["mig_enabled"] = True
    node["gpus"][2]["ecc_uncorrected"] = 3
    node["gpus"][3]["processes"] = [{"pid": 4242, "used_memory_mib": 70000}]
    node["gpus"][4]["nvlink_peers"] = [0, 1, 2, 3]
    node["gpus"][5]["memory_total_mib"] = 81559
    node["gpus"][6]["fabric_state"] = "in_progress"
    problems = check_node(parse_gpu_spec("h200x8"), snap(node), "test").problems
    text = "\n".join(problems)
    assert "GPU 1 has MIG enabled" in text
    assert "GPU 2 reports 3 volatile uncorrected ECC errors" in text
    assert "process 4242 holds 70000 MiB" in text
    assert "no NVLink P2P between GPU pairs 4-5, 4-6, 4-7" in text
    assert "GPU 5 has 81559 MiB" in text
    assert "GPU 6 fabric state is 'in_progress'" in text
    assert len(problems) == 6


def test_wrong_product_and_count(hgx):
    problems = check_node(parse_gpu_spec("h100x16"), snap(hgx), "sim").problems
    assert problems[0] == "16 GPUs needed, 8 found"
    assert "GPU 0 is 'NVIDIA H200', expected 'NVIDIA H100 80GB HBM3'" in problems[1]


# ----------------------------------------------------------------- each check alone


def _drop_gpus(node):
    node["gpus"] = node["gpus"][:6]


def _peers(gpu_index, peers):
    def change(node):
        node["gpus"][gpu_index]["nvlink_peers"] = peers
    return change


def _set(gpu_index, **values):
    def change(node):
        node["gpus"][gpu_index].update(values)
    return change


SINGLE_PROBLEMS = [
    ("too few GPUs", _drop_gpus, "8 GPUs needed, 6 found"),
    ("wrong product", _set(3, name="NVIDIA H100 80GB HBM3"), "GPU 3 is 'NVIDIA H100 80GB HBM3', expected 'NVIDIA H200'"),
    ("wrong memory", _set(2, memory_total_mib=97871), "GPU 2 has 97871 MiB, expected about 143771 MiB for h200"),
    ("MIG on", _set(7, mig_enabled=True), "GPU 7 has MIG enabled; disable it (nvidia-smi -i 7 -mig 0)"),
    ("ECC errors", _set(0, ecc_uncorrected=2), "GPU 0 reports 2 volatile uncorrected ECC errors"),
    ("foreign process", _set(5, processes=[{"pid": 31337, "used_memory_mib": 2048}]),
     f"GPU 5: process 31337 holds 2048 MiB (limit {FOREIGN_PROCESS_LIMIT_MIB} MiB); stop it first"),
    ("missing NVLink pair", lambda n: (_peers(1, [0, 2, 3, 4, 5, 6])(n), _peers(7, [0, 2, 3, 4, 5, 6])(n)),
     "no NVLink P2P between GPU pairs 1-7"),
    ("fabric not completed", _set(4, fabric_state="not_started"), "GPU 4 fabric state is 'not_started'"),
    ("fabric registration failed", _set(6, fabric_status=15), "GPU 6 fabric registration failed (NVML status 15)"),
    ("memory held by an invisible process", _set(1, memory_used_mib=60000),
     "GPU 1 has 60000 MiB in use, 60000 MiB of it by no process NVML lists"),
]


@pytest.mark.parametrize("change, expected", [(c, e) for _, c, e in SINGLE_PROBLEMS], ids=[i for i, _, _ in SINGLE_PROBLEMS])
def test_each_check_fails_alone(hgx, change, expected):
    node = copy.deepcopy(hgx)
    change(node)
    verdict = check_node(H200X8, snap(node), "test")
    assert not verdict.ok
    assert len(verdict.problems) == 1, verdict.problems
    assert expected in verdict.problems[0]
    assert verdict.gpu_indices == () and verdict.gpu_uuids == ()
    assert verdict.describe().startswith("node does not fit h200x8 (test):\n  - ")


def test_all_checks_fail_together_and_are_all_reported(hgx):
    node = copy.deepcopy(hgx)
    for _, change, _ in SINGLE_PROBLEMS[1:]:
        change(node)
    problems = check_node(H200X8, snap(node), "test").problems
    text = "\n".join(problems)
    for _, _, expected in SINGLE_PROBLEMS[1:]:
        assert expected in text
    assert len(problems) == len(SINGLE_PROBLEMS) - 1
    # with too few GPUs as well, the count comes first and the rest still shows
    _drop_gpus(node)
    problems = check_node(H200X8, snap(node), "test").problems
    assert problems[0] == "8 GPUs needed, 6 found"
    assert any("GPU 3 is 'NVIDIA H100 80GB HBM3'" in p for p in problems[1:])


def test_small_processes_and_unsupported_fabric_are_fine(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][0]["processes"] = [{"pid": 7, "used_memory_mib": FOREIGN_PROCESS_LIMIT_MIB}]
    node["gpus"][0]["memory_used_mib"] = FOREIGN_PROCESS_LIMIT_MIB + 500  # reserved memory: under 5 %
    node["gpus"][1]["fabric_state"] = "not_supported"
    del node["gpus"][2]["fabric_state"]
    assert check_node(H200X8, snap(node), "t").ok


def test_fit_verdict_names_gpus_by_index_and_uuid(hgx):
    verdict = check_node(H200X8, snap(hgx), "sim")
    assert verdict.gpu_uuids == tuple(g["uuid"] for g in hgx["gpus"])
    assert verdict.notes == ()
    assert verdict.describe() == "node fits h200x8 (sim; GPUs 0,1,2,3,4,5,6,7)"


def test_more_gpus_than_needed_picks_the_lowest_fit_ones(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][0]["mig_enabled"] = True
    node["gpus"][2]["processes"] = [{"pid": 4242, "used_memory_mib": 9000}]
    verdict = check_node(parse_gpu_spec("h200x4"), snap(node), "t")
    assert verdict.ok and verdict.gpu_indices == (1, 3, 4, 5)
    assert verdict.gpu_uuids == tuple(node["gpus"][i]["uuid"] for i in (1, 3, 4, 5))
    text = verdict.describe()
    assert "GPUs 1,3,4,5" in text and "GPU 0 passed over: GPU 0 has MIG enabled" in text
    assert "GPU 2 passed over: GPU 2: process 4242 holds 9000 MiB" in text
    one = check_node(parse_gpu_spec("h200x1"), snap(node), "t")
    assert one.gpu_indices == (1,) and one.gpu_uuids == (node["gpus"][1]["uuid"],)


def test_selection_needs_gpus_nvlinked_to_each_other(hgx):
    node = copy.deepcopy(hgx)
    # GPU 1 is linked only to 0: {0,1} is no part of any 3-GPU clique; the first one is 0,2,3
    node["gpus"][1]["nvlink_peers"] = [0]
    for g in node["gpus"]:
        if g["index"] not in (0, 1):
            g["nvlink_peers"] = [p for p in g["nvlink_peers"] if p != 1]
    verdict = check_node(parse_gpu_spec("h200x3"), snap(node), "t")
    assert verdict.gpu_indices == (0, 2, 3)
    assert "GPU 1 passed over: no NVLink P2P to GPU 2, 3" in verdict.describe()
    # the first GPUs being unfit and no clique among the rest: the first count GPUs' problems
    for g in node["gpus"]:
        g["nvlink_peers"] = []
    node["gpus"][0]["ecc_uncorrected"] = 1
    problems = check_node(parse_gpu_spec("h200x2"), snap(node), "t").problems
    assert problems == ("GPU 0 reports 1 volatile uncorrected ECC errors", "no NVLink P2P between GPU pairs 0-1")


def test_not_enough_fit_gpus_reports_the_first_count(hgx):
    node = copy.deepcopy(hgx)
    for i in (1, 6):
        node["gpus"][i]["mig_enabled"] = True
    problems = check_node(parse_gpu_spec("h200x7"), snap(node), "t").problems
    assert problems == ("GPU 1 has MIG enabled; disable it (nvidia-smi -i 1 -mig 0)",
                        "GPU 6 has MIG enabled; disable it (nvidia-smi -i 6 -mig 0)")


def test_nvlink_pairs_are_listed_up_to_eight(hgx):
    node = copy.deepcopy(hgx)
    for g in node["gpus"]:
        g["nvlink_peers"] = []
    (problem,) = check_node(H200X8, snap(node), "t").problems
    assert problem.startswith("no NVLink P2P between GPU pairs 0-1, 0-2") and problem.endswith("and 20 more")


def test_any_takes_every_gpu_without_checks(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][3]["mig_enabled"] = True
    verdict = check_node(parse_gpu_spec("any"), snap(node), "t")
    assert verdict.ok and verdict.gpu_indices == tuple(range(8)) and len(verdict.gpu_uuids) == 8
    assert check_node(GpuSpec(None, 0), NodeSnapshot(None, None, ()), "t").ok


def test_snapshots_without_uuids_give_no_uuids(hgx):
    node = copy.deepcopy(hgx)
    del node["gpus"][0]["uuid"]
    verdict = check_node(parse_gpu_spec("h200x2"), snap(node), "t")
    assert verdict.ok and verdict.gpu_indices == (0, 1) and verdict.gpu_uuids == ()


def test_gpu_order_in_the_snapshot_does_not_matter(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"].reverse()
    node["gpus"][0]["mig_enabled"] = True  # GPU 7
    assert check_node(H200X8, snap(node), "t").problems == ("GPU 7 has MIG enabled; disable it (nvidia-smi -i 7 -mig 0)",)
    assert check_node(parse_gpu_spec("h200x3"), snap(node), "t").gpu_indices == (0, 1, 2)


def test_node_verdict_keeps_its_positional_shape():
    verdict = NodeVerdict("h200x8", "live NVML", ("no NVIDIA driver on this machine",))
    assert not verdict.ok and verdict.gpu_indices == () and verdict.gpu_uuids == ()
    assert "no NVIDIA driver" in verdict.describe()
