"""Configurations side by side under pytest-xdist: which worker runs what, and what a crash ends.

Each engine configuration is one group: all its cases run on one worker, so
it boots once in the whole run. xdist's own ``--dist loadgroup`` cannot be
relied on for that (on pytest 9.2 with pytest-xdist 3.8 the ``@group``
suffix it puts on node ids no longer takes effect), so under ``--dist
loadgroup`` the plugin hands xdist a scheduler of its own that groups by
configuration. A worker holds one configuration at a time (and the next one
queued once the current one is on its last case), so GPUs are leased only by
configurations that run. When a worker dies during a case, the rest of that
configuration's cases are not handed to another worker (it would boot the
configuration again on a node it just crashed): they fail, naming the crash.

The helpers here are pure; ``make_scheduler`` imports xdist.
"""

from __future__ import annotations

from typing import Any


def case_id_of(nodeid: str) -> str | None:
    """The case id in a performance item's node id (``llmperf::test_llmperf[sim/a/short]@sim/a``), or None."""
    head, bracket, rest = nodeid.partition("[")
    if not bracket or not head.endswith("test_llmperf"):
        return None
    inner, closing, _ = rest.rpartition("]")
    return inner if closing and inner.count("/") >= 2 else None


def config_id_of(case_id: str) -> str:
    """``sim/vllm-tp8/short`` -> ``sim/vllm-tp8`` (names hold no ``/``)."""
    return case_id.rsplit("/", 1)[0]


def crash_message(worker: str, case_id: str, log_path: str | None = None) -> str:
    """What the case a worker died in says (with its engine's log, when the worker said where it was)."""
    log = f"; the engine's log: {log_path}" if log_path else ""
    return (f"worker {worker} died while running {case_id} (killed, or out of memory?): the configuration's engine "
            f"stopped with it and its GPU lease was released; the rest of {config_id_of(case_id)}'s cases are not "
            f"run{log}")


def not_run_message(worker: str, crashed_case: str, case_id: str) -> str:
    """What each later case of a crashed configuration says."""
    return (f"not run: worker {worker} died while running {crashed_case}, so {config_id_of(case_id)} is not booted "
            f"again in this run")


def make_scheduler(config: Any, log: Any) -> Any:
    """The scheduler for ``--dist loadgroup`` with performance cases: one configuration per work unit."""
    from xdist.scheduler.loadscope import LoadScopeScheduling

    class ConfigScheduling(LoadScopeScheduling):  # type: ignore[misc, valid-type]
        """LoadScope with one configuration per scope, one held per worker, and no second boot after a crash."""

        def __init__(self, config: Any, log: Any = None) -> None:
            super().__init__(config, log)
            self.dropped: dict[str, list[str]] = {}  # crashed item -> its configuration's items not run

        def _split_scope(self, nodeid: str) -> str:
            case_id = case_id_of(nodeid)
            return config_id_of(case_id) if case_id else nodeid

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            # A worker runs an item only once it holds the next one: queue the next configuration when the
            # current one is down to its last case, not before (it would lease nothing, but wait idle).
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

        def remove_node(self, node: Any) -> str | None:
            workload = self.assigned_work.get(node, {})
            for scope, unit in list(workload.items()):
                pending = [nodeid for nodeid, done in unit.items() if not done]
                if pending:
                    crashitem = pending[0]
                    del workload[scope]  # never handed to another worker
                    self.dropped[crashitem] = pending[1:]
                    super().remove_node(node)  # the worker's other queued configurations go back in the queue
                    return crashitem
            return super().remove_node(node)

    return ConfigScheduling(config, log)
