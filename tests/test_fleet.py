"""The scheduling of configurations over xdist workers, with stand-in workers (no processes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pytest_llmperf.fleet import case_id_of, config_id_of, crash_message, make_scheduler, not_run_message


def nodeid(case: str, group: bool = False) -> str:
    return f"llmperf::test_llmperf[{case}]" + (f"@{config_id_of(case)}" if group else "")


@pytest.mark.parametrize("text, expected", [
    (nodeid("sim/vllm-tp8/short"), "sim/vllm-tp8/short"),
    (nodeid("sim/vllm-tp8/short", group=True), "sim/vllm-tp8/short"),  # xdist's loadgroup suffix, once it works
    ("tests/test_x.py::test_y[a/b/c]", None),  # not a performance case
    ("llmperf::test_llmperf[odd]", None),
])
def test_case_ids_are_read_from_node_ids_with_or_without_the_group_suffix(text, expected):
    assert case_id_of(text) == expected


def test_messages_name_the_worker_the_case_and_the_configuration():
    assert crash_message("gw1", "sim/a/long").startswith("worker gw1 died while running sim/a/long")
    assert "the rest of sim/a's cases are not run" in crash_message("gw1", "sim/a/long")
    assert not_run_message("gw1", "sim/a/long", "sim/a/tiny") == (
        "not run: worker gw1 died while running sim/a/long, so sim/a is not booted again in this run")


class Worker:
    """A stand-in for xdist's WorkerController: records what it is sent."""

    def __init__(self, name: str):
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.sent: list[int] = []

    def send_runtest_some(self, indices):
        self.sent.extend(indices)

    def shutdown(self):
        self.shutting_down = True


COLLECTION = [nodeid(c) for c in ("sim/a/x", "sim/a/y", "sim/a/z", "sim/b/x", "sim/b/y", "sim/c/x", "sim/c/y")]


def scheduler(workers: int):
    config = SimpleNamespace(getvalue=lambda name: ["popen"] * workers,
                             option=SimpleNamespace(loadscopereorder=False))
    sched = make_scheduler(config, None)
    nodes = [Worker(f"gw{n}") for n in range(workers)]
    for node in nodes:
        sched.add_node(node)
    for node in nodes:
        sched.add_node_collection(node, COLLECTION)
    sched.schedule()
    return sched, nodes


def sent(node: Worker) -> list[str]:
    return [COLLECTION[i] for i in node.sent]


def configs(node: Worker) -> list[str]:
    return list(dict.fromkeys(config_id_of(case_id_of(n)) for n in sent(node)))


def test_each_configuration_goes_whole_to_one_worker_one_at_a_time():
    sched, (w0, w1) = scheduler(2)
    assert configs(w0) == ["sim/a"] and configs(w1) == ["sim/b"]  # one each; c waits for whoever frees first
    assert sent(w0) == COLLECTION[:3]
    sched.mark_test_complete(w1, COLLECTION.index(nodeid("sim/b/x")))  # b down to its last case: c is queued
    assert configs(w1) == ["sim/b", "sim/c"] and configs(w0) == ["sim/a"]
    for case in ("sim/a/x", "sim/a/y", "sim/a/z"):
        sched.mark_test_complete(w0, COLLECTION.index(nodeid(case)))
    assert configs(w0) == ["sim/a"] and w0.shutting_down  # nothing left to hand out
    for case in ("sim/b/y", "sim/c/x", "sim/c/y"):
        sched.mark_test_complete(w1, COLLECTION.index(nodeid(case)))
    assert sched.tests_finished


def test_a_crashed_worker_s_configuration_is_dropped_and_its_queued_one_handed_on():
    sched, (w0, w1) = scheduler(2)
    sched.mark_test_complete(w0, COLLECTION.index(nodeid("sim/a/x")))
    sched.mark_test_complete(w0, COLLECTION.index(nodeid("sim/a/y")))  # a on its last case: c queued on w0
    assert configs(w0) == ["sim/a", "sim/c"]
    crashed = sched.remove_node(w0)  # w0 dies while running sim/a/z
    assert crashed == nodeid("sim/a/z")
    assert sched.dropped == {nodeid("sim/a/z"): []}  # nothing of a is handed to another worker
    replacement = Worker("gw2")
    sched.add_node(replacement)
    sched.add_node_collection(replacement, COLLECTION)
    sched.schedule()
    assert configs(replacement) == ["sim/c"]  # c, which w0 never started, runs elsewhere
    assert all(config_id_of(case_id_of(n)) != "sim/a" for n in sent(replacement) + sent(w1)[3:])


def test_a_crash_before_a_configuration_s_later_cases_names_them_to_be_failed():
    sched, (w0, w1) = scheduler(2)
    crashed = sched.remove_node(w0)  # dies in sim/a/x: y and z are never run
    assert crashed == nodeid("sim/a/x")
    assert sched.dropped[crashed] == [nodeid("sim/a/y"), nodeid("sim/a/z")]
    for case in ("sim/b/x", "sim/b/y"):
        sched.mark_test_complete(w1, COLLECTION.index(nodeid(case)))
    assert configs(w1) == ["sim/b", "sim/c"]  # the survivor goes on with what is left, never with a
