"""The node gate: which source each engine's node is read from, verdicts once per run, a node left dirty."""


from pytest_llmperf.gpus import parse_gpu_spec
from pytest_llmperf.node.gate import EngineNeeds, NodeGate
from pytest_llmperf.node.snapshot import NODES_DIR, SIM_NODE_SNAPSHOT
from pytest_llmperf.node.sources import SimulatedNode

H200X8 = parse_gpu_spec("h200x8")
SIM, REAL, EXTERNAL = EngineNeeds(False, SimulatedNode()), EngineNeeds(True), EngineNeeds(False)


def test_the_sim_meets_its_simulated_node_and_an_external_endpoint_is_checked_only_with_gpus():
    gate = NodeGate(H200X8, {"sim": SIM, "external": EXTERNAL})
    assert gate.unfit("sim") is None
    assert gate.node("sim").verdict.source == f"simulated node {SIM_NODE_SNAPSHOT.name}"
    assert len(gate.node("sim").gpu_uuids) == 8 and not gate.node("sim").live
    assert gate.node("external").verdict.source.startswith("not checked")
    assert gate.unfit("external") is None and gate.node("external").gpu_uuids == ()
    assert gate.gpu_release("sim", gate.node("sim").gpu_uuids, "sim/x") is None  # nothing to wait for: not live


def test_a_recorded_file_stands_for_every_engine_and_a_misfit_says_why(tmp_path):
    single = sorted(NODES_DIR.glob("*.json"))
    small = next(p for p in single if p != SIM_NODE_SNAPSHOT)
    gate = NodeGate(H200X8, {"sim": SIM, "vllm": REAL}, spec_given=True, recorded=small)
    for engine in ("sim", "vllm"):
        assert gate.node(engine).verdict.source == f"snapshot {small}"
        assert gate.unfit(engine).startswith("node does not fit h200x8")
    assert set(gate.to_json()) == {"sim", "vllm"} and gate.to_json()["vllm"]["ok"] is False


def test_a_dirty_node_refuses_every_later_boot_and_keeps_the_first_reason():
    gate = NodeGate(H200X8, {"sim": SIM})
    gate.mark_dirty("after sim/a stopped, its GPUs were not freed")
    gate.mark_dirty("a later reason")
    assert gate.unfit("sim") == "after sim/a stopped, its GPUs were not freed"


def test_the_check_holds_the_largest_configuration_and_the_whole_spec_still_must_fit():
    import json

    from pytest_llmperf.node.gate import fit_largest
    from pytest_llmperf.node.snapshot import NodeSnapshot

    data = json.loads(SIM_NODE_SNAPSHOT.read_text())
    node = NodeSnapshot.from_json(data, "test")
    assert fit_largest(H200X8, node, "sim", 4).gpu_indices == tuple(range(8))  # all 8 picked: two 4s side by side
    too_big = fit_largest(H200X8, node, "sim", 16)
    assert too_big.problems == ("its largest configuration needs 16 GPUs, more than h200x8",)
    data["gpus"][5]["processes"] = [{"pid": 99, "used_memory_mib": 80000}]  # another job on the node
    busy = NodeSnapshot.from_json(data, "test")
    assert not fit_largest(H200X8, busy, "sim", 4).ok  # small configurations do not make a shared node fit
    assert fit_largest(parse_gpu_spec("any"), node, "sim", 9).problems == (
        "its largest configuration needs 9 GPUs, more than the node's 8 GPUs",)


def test_a_simulated_node_named_in_the_environment_and_one_that_cannot_be_read(tmp_path):
    small = NODES_DIR / "h200x1-vm.json"
    assert SimulatedNode.from_environment({"LLMPERF_SIM_NODE": str(small)}).read().snapshot is not None
    assert SimulatedNode.from_environment({}).path == SIM_NODE_SNAPSHOT
    missing = SimulatedNode.from_environment({"LLMPERF_SIM_NODE": str(tmp_path / "none.json")}).read()
    assert missing.snapshot is None and "(LLMPERF_SIM_NODE)" in missing.error and "does not exist" in missing.error
    gate = NodeGate(H200X8, {"sim": EngineNeeds(False, SimulatedNode(tmp_path / "none.json"))})
    assert "cannot read the simulated node" in gate.unfit("sim")


def test_processes_on_gpus_leased_to_other_engines_are_not_foreign_to_the_check():
    import json
    from dataclasses import dataclass

    from pytest_llmperf.node.snapshot import NodeSnapshot
    from pytest_llmperf.node.sources import NodeReading

    data = json.loads(SIM_NODE_SNAPSHOT.read_text())
    for gpu in data["gpus"][:4]:  # another worker's engine runs on GPUs 0-3
        gpu["processes"] = [{"pid": 777, "used_memory_mib": 120000}]
        gpu["memory_used_mib"] = 120000
    data["gpus"][6]["processes"] = [{"pid": 55, "used_memory_mib": 100}]  # something small, there before
    node = NodeSnapshot.from_json(data, "test")
    leased = [g["uuid"] for g in data["gpus"][:4]]

    @dataclass(frozen=True)
    class Live:
        live = True

        def read(self):
            return NodeReading("live NVML", True, node)

    needs = {"vllm": EngineNeeds(True, Live(), 4)}
    assert NodeGate(H200X8, needs).unfit("vllm").startswith("node does not fit h200x8")  # no leases known: foreign
    gate = NodeGate(H200X8, needs, leased_now=lambda: set(leased))
    assert gate.unfit("vllm") is None
    assert gate.node("vllm").verdict.source == "live NVML"  # the same for every worker, whatever is leased
    assert gate.node("vllm").pids_at_check == frozenset({55})  # accepted, never waited for; 777 is not among them
