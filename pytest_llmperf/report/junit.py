"""A case's figures as JUnit XML properties (pure).

pytest writes an item's ``user_properties`` into ``--junitxml`` as
``<property name=... value=...>`` (the route ``record_property`` takes, which
survives pytest-xdist). For every gated metric ``M``: ``M`` (this run's
value), ``M.baseline`` (the reference it was judged against), ``M.change_pct``,
``M.tolerance_pct`` (the tolerance applied) and ``M.status``; for the case:
``llmperf.status``, ``llmperf.engine_version``, ``llmperf.baseline_file``.
A value that does not exist is an empty string.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

PREFIX = "llmperf."


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def case_status(verdict_status: str, outcome: str) -> str:
    """What to call the case: the verdict when it was judged, else what happened to the item."""
    if verdict_status:
        return verdict_status
    return {"passed": "ok", "failed": "failed", "error": "error", "skipped": "skipped",
            "xfailed": "xfailed"}.get(outcome, outcome or "not run")


def junit_properties(verdicts: Sequence[Mapping[str, Any]], status: str, engine_version: str | None,
                     baseline_file: str | None, colocated_with: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(name, value) pairs for one case; ``verdicts`` as ``Verdict.to_json`` gives them."""
    out: list[tuple[str, str]] = []
    for v in verdicts:
        metric = v["metric"]
        out += [(metric, _text(v.get("current"))),
                (f"{metric}.baseline", _text(v.get("reference", v.get("baseline")))),
                (f"{metric}.change_pct", _text(v.get("change_pct"))),
                (f"{metric}.tolerance_pct", _text(v.get("tolerance_pct"))),
                (f"{metric}.status", _text(v.get("status")))]
    out += [(f"{PREFIX}status", status), (f"{PREFIX}engine_version", _text(engine_version)),
            (f"{PREFIX}baseline_file", _text(baseline_file))]
    if colocated_with:  # it ran beside other engines on the node: its figures may carry their noise
        out.append((f"{PREFIX}colocated_with", ", ".join(colocated_with)))
    return out
