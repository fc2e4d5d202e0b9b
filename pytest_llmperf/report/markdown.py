"""The markdown summary: what a reviewer reads on a CI page (pure, from the JSON report dict).

Sections: a headline with the count of each status, the node and engines,
one table per configuration with the worst cases first, inconclusive and
failed cases with their cause, the baseline changes of an update (old ->
new, ready for a pull request), and the run's notes. ``cut_to`` keeps it
under a size limit (GitHub's step summary takes 1 MiB per step), ending
with a line that says what was left out.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

STEP_SUMMARY_LIMIT_BYTES = 1024 * 1024  # GitHub refuses a larger step summary
# The order a reviewer needs: what failed first, what passed last.
STATUS_ORDER = ("regressed", "failed", "error", "missing", "inconclusive", "not run", "improved", "updated", "xfailed",
                "ok", "skipped")
STATUS_MARK = {"regressed": "❌", "failed": "❌", "error": "❌", "missing": "⚠️", "inconclusive": "⚠️",
               "not run": "⚠️", "improved": "🟢", "updated": "📝", "ok": "✅", "xfailed": "➖", "skipped": "➖"}


def cell(value: Any) -> str:
    """Text safe inside a table cell: one line, pipes and markup characters escaped."""
    text = " ".join(str(value).split())
    for ch in ("\\", "|", "<", ">", "*", "_", "`", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text


# Gated metrics in the order a reader looks for them; others follow by name, the failed count last.
METRIC_ORDER = ("total_token_throughput", "mean_tpot_ms", "output_throughput", "request_throughput", "mean_ttft_ms")


def code(value: Any) -> str:
    """``value`` as an inline code span, shown exactly (no escapes inside; a fence longer than any run of backticks)."""
    text = " ".join(str(value).split())
    longest = 0
    current = 0
    for ch in text:
        current = current + 1 if ch == "`" else 0
        longest = max(longest, current)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _num(value: Any) -> str:
    if value is None:
        return "–"
    value = float(value)
    if value.is_integer() and abs(value) < 1000:
        return f"{value:.0f}"
    digits = 0 if abs(value) >= 1000 else 1 if abs(value) >= 100 else 2
    return f"{value:,.{digits}f}"


def _pct(value: float) -> str:
    return f"{round(float(value), 1):g}%"


def _metric_rank(metric: str) -> tuple[int, str]:
    if metric in METRIC_ORDER:
        return METRIC_ORDER.index(metric), metric
    return (len(METRIC_ORDER) + (1 if metric == "failed" else 0)), metric


def _unit(units: Mapping[str, str], metric: str) -> str:
    unit = units.get(metric)
    return f" {unit}" if unit else ""


def _rank(status: str) -> int:
    return STATUS_ORDER.index(status) if status in STATUS_ORDER else len(STATUS_ORDER)


def _spread(case: Mapping[str, Any], metric: str) -> str:
    spread = (case.get("spread") or {}).get(metric)
    if not spread or int(spread.get("n", 0)) < 2:
        return "–"
    return f"{int(spread['n'])} runs, cv {float(spread.get('cv_pct', 0.0)):.1f}%"


def _tolerance(verdict: Mapping[str, Any]) -> str:
    applied = verdict.get("tolerance_pct")
    if applied is None:
        return "–"
    if verdict.get("tolerance_from") == "noise band":
        return f"±{_pct(applied)} (noise band; configured {_pct(verdict.get('configured_pct', applied))})"
    return f"±{_pct(applied)}"


def _change(verdict: Mapping[str, Any]) -> str:
    change = verdict.get("change_pct")
    return "–" if change is None else f"{change:+.1f}%"


def _headline(cases: Sequence[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.get("status", "?")] = counts.get(case.get("status", "?"), 0) + 1
    if not counts:
        return "## pytest-llmperf: no case ran"
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=_rank)]
    worst = min(counts, key=_rank)
    return f"## {STATUS_MARK.get(worst, '')} pytest-llmperf: " + ", ".join(parts)


def _node_lines(env: Mapping[str, Any]) -> list[str]:
    out = []
    facts = []
    if env.get("gpus"):
        facts.append(f"GPUs **{cell(env['gpus'])}**")
    names = {(n.get("gpu_name"), n.get("driver_version"), n.get("source"))
             for n in (env.get("node") or {}).values() if isinstance(n, Mapping)}
    for name, driver, source in sorted(names, key=str):
        what = " ".join(x for x in (name, f"driver {driver}" if driver else None) if x)
        if what or source:
            facts.append(cell(what + (f" ({source})" if source else "")))
    if env.get("model"):
        facts.append(f"model {code(env['model'])}")
    if env.get("suite"):
        facts.append(f"suite {cell(env['suite'])}")
    if env.get("plugin_version"):
        facts.append(f"pytest-llmperf {cell(env['plugin_version'])}")
    if env.get("started_at"):
        facts.append(f"started {cell(env['started_at'])}")
    if env.get("sim_slowdown") not in (None, 1, 1.0):
        facts.append(f"sim slowdown ×{env['sim_slowdown']:g}")
    if env.get("merged_from"):
        facts.append(f"merged from {len(env['merged_from'])} reports")
    if facts:
        out.append("**Node:** " + " · ".join(facts))
    engines = []
    for boot in env.get("engines_booted") or []:
        if isinstance(boot, Mapping) and boot.get("config"):
            engines.append(f"{cell(boot['config'])} ({cell(boot.get('version') or 'version unknown')})")
    if engines:
        out.append("**Engines:** " + ", ".join(engines))
    return out


def _config_table(cases: Sequence[Mapping[str, Any]], units: Mapping[str, str]) -> list[str]:
    rows = ["| case | status | metric | baseline → current | change | tolerance | spread |",
            "|---|---|---|---|---|---|---|"]
    for case in sorted(cases, key=lambda c: _rank(c.get("status", ""))):
        status = case.get("status", "")
        label = f"{STATUS_MARK.get(status, '')} {cell(status)}".strip() + (" (colocated)" if case.get("colocated") else "")
        verdicts = sorted(case.get("verdicts") or [], key=lambda v: (_rank(v.get("status", "")), _metric_rank(v.get("metric", ""))))
        if not verdicts:
            rows.append(f"| {cell(case.get('workload', case.get('id')))} | {label} | – | – | – | – | – |")
            continue
        for n, v in enumerate(verdicts):
            metric = v.get("metric", "")
            base = v.get("reference", v.get("baseline"))
            values = f"{_num(base)} → {_num(v.get('current'))}{_unit(units, metric)}"
            if v.get("history_n", 1) > 1 and base is not None:
                values += f" (median of {v['history_n']})"
            metric_status = v.get("status", "")
            first = n == 0
            rows.append(
                f"| {cell(case.get('workload', case.get('id'))) if first else ''} | {label if first else ''} | "
                f"{cell(metric)}{'' if metric_status == status or metric_status == 'ok' else ' (' + cell(metric_status) + ')'} | "
                f"{cell(values)} | {_change(v)} | {cell(_tolerance(v))} | {cell(_spread(case, metric))} |")
    return rows


def _problem_lines(cases: Sequence[Mapping[str, Any]]) -> list[str]:
    """Cases that did not pass, with their message (inconclusive first: its cause is what to act on)."""
    out = []
    for case in sorted(cases, key=lambda c: _rank(c.get("status", ""))):
        status = case.get("status", "")
        message = case.get("message") or ""
        if status in ("ok", "improved", "updated") or not message:
            continue
        first, *rest = message.strip().splitlines() or [""]
        line = f"- **{cell(case.get('id'))}** ({cell(status)}): {cell(first)}"
        out.append(line)
        out += [f"  - {cell(r)}" for r in rest if r.strip()]
    return out


def _update_lines(report: Mapping[str, Any], units: Mapping[str, str]) -> list[str]:
    updated = [c for c in report.get("cases", []) if c.get("status") == "updated"]
    if not updated:
        return []
    rows = ["| case | metric | old → new | change |", "|---|---|---|---|"]
    for case in updated:
        for n, v in enumerate(case.get("verdicts") or []):
            metric = v.get("metric", "")
            old = v.get("reference", v.get("baseline"))
            old_text = "none" if old is None else _num(old)
            rows.append(f"| {cell(case.get('id')) if n == 0 else ''} | {cell(metric)} | "
                        f"{cell(old_text + ' → ' + _num(v.get('current')) + _unit(units, metric))} | {_change(v)} |")
    files = sorted({u.get("path") for u in report.get("baseline_updates", []) if u.get("path")})
    out = ["### Baseline changes", "", *rows, ""]
    if files:
        out += ["Files written: " + ", ".join(code(f) for f in files), ""]
    return out


def markdown_summary(report: Mapping[str, Any]) -> str:
    """The whole summary of a JSON report dict, as markdown."""
    cases = list(report.get("cases", []))
    env = report.get("environment") or {}
    units = report.get("metric_units") or {}
    out = [_headline(cases), ""]
    node = _node_lines(env)
    if node:
        out += ["  \n".join(node), ""]
    by_config: dict[str, list[Mapping[str, Any]]] = {}
    for case in cases:
        by_config.setdefault(f"{case.get('engine')}/{case.get('config')}", []).append(case)
    for config, rows in sorted(by_config.items(), key=lambda kv: min(_rank(c.get("status", "")) for c in kv[1])):
        version = next((c.get("engine_version") for c in rows if c.get("engine_version")), None)
        node = next((c.get("node") for c in rows if (c.get("node") or {}).get("worker", "main") != "main"), None)
        where = (f" on {cell(node.get('host'))} ({cell(node.get('worker'))}, {cell(node.get('source'))})"
                 if node else "")
        out += [f"### {cell(config)}" + (f" (engine {cell(version)})" if version else "") + where, ""]
        out += _config_table(rows, units)
        out.append("")
    problems = _problem_lines(cases)
    if problems:
        out += ["### Why", "", *problems, ""]
    out += _update_lines(report, units)
    notes = env.get("notes") or []
    if notes:
        out += ["<details><summary>Notes (" + str(len(notes)) + ")</summary>", ""]
        out += [f"- {cell(n)}" for n in notes]
        out += ["", "</details>", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def cut_to(text: str, limit_bytes: int, where: str = "") -> str | None:
    """``text`` whole if it fits in ``limit_bytes`` (UTF-8); else its first lines and a closing line saying what
    was left out; None when not even that closing line fits."""
    if len(text.encode("utf-8")) <= limit_bytes:
        return text
    lines = text.splitlines(keepends=True)

    def closing(left: int, folded: bool) -> str:
        return (("\n</details>\n" if folded else "")
                + f"\n\n**{left} more lines of this summary were left out** to stay under GitHub's 1 MiB step "
                f"summary limit" + (f"; the full report is in {code(where)}" if where else "") + ".\n")

    kept: list[str] = []
    used = 0
    folded = False
    for line in lines:
        size = len(line.encode("utf-8"))
        now_folded = (folded or line.startswith("<details>")) and not line.startswith("</details>")
        if used + size + len(closing(len(lines), now_folded).encode("utf-8")) > limit_bytes:
            break
        kept.append(line)
        used += size
        folded = now_folded
    tail = closing(len(lines) - len(kept), folded)
    if used + len(tail.encode("utf-8")) > limit_bytes:
        return None
    return "".join(kept) + tail
