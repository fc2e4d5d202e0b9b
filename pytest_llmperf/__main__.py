"""Reports on the command line: compare two sets of results, merge several runs into one report.

    python -m pytest_llmperf compare A B [--gate METRIC:PCT[,...]] [--format text|markdown|json]
    python -m pytest_llmperf merge R1.json R2.json ... -o ALL.json [--report-md PATH] [--report-html PATH]
                                   [--update-baselines --baseline-dir DIR] [--baseline-history K] [--gate-exit]

``compare`` exits 0 when no gated metric regressed, 1 when one did. ``merge``
exits 0 once the merged report is written (1 with ``--gate-exit`` when a
merged case regressed). Both exit 2 on bad input, with one line on stderr
naming the file and the cause. This module is the edge: it reads and writes
the files; ``compare`` and ``merge`` hold the logic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from .compare import InputError, is_baseline_file, report_problem

PROG = "python -m pytest_llmperf"
FORMATS = ("text", "markdown", "json")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Compare or merge pytest-llmperf results.")
    sub = parser.add_subparsers(dest="command", required=True)
    compare = sub.add_parser(
        "compare", help="compare B (after) with A (before); exit 0 no regression, 1 regressed, 2 bad input",
        description="Compare two sets of results case by case, with the plugin's gate: each a JSON report "
                    "(--report-json) or a baseline tree (a directory of baseline files, or one file). Exit 0 when "
                    "no gated metric regressed, 1 when one did, 2 on bad input.")
    compare.add_argument("a", metavar="A", help="the reference (before): a JSON report or a baseline tree")
    compare.add_argument("b", metavar="B", help="the results judged (after): a JSON report or a baseline tree")
    compare.add_argument("--gate", metavar="METRIC:PCT[,...]",
                         help="gated metrics and tolerances on top of the defaults, as the plugin's --gate "
                              "(METRIC:off drops one); a baseline tree's own tolerances apply on top")
    compare.add_argument("--format", choices=FORMATS, default="text", help="output format (default text)")
    compare.add_argument("--baseline-history", metavar="K", default="5",
                         help="a baseline tree's last K results make its reference (default 5)")
    merge = sub.add_parser(
        "merge", help="merge JSON reports of one suite into one; exit 0 written, 2 bad input",
        description="Merge JSON reports of one suite (one per node of a CI matrix, or per array job) into one. "
                    "A case measured in several reports has its runs pooled and is judged again against its "
                    "baseline. Exit 0 once written (also when cases regressed, unless --gate-exit), 2 on bad input.")
    merge.add_argument("reports", metavar="REPORT", nargs="+", help="JSON reports written by --report-json")
    merge.add_argument("-o", "--output", metavar="ALL.json", required=True, help="the merged JSON report")
    merge.add_argument("--report-md", metavar="PATH", help="also write the merged report's markdown summary")
    merge.add_argument("--report-html", metavar="PATH", help="also write the merged report as HTML")
    merge.add_argument("--update-baselines", action="store_true",
                       help="record each measured case in the baseline tree of --baseline-dir (not the "
                            "inconclusive, the distorted or the failed)")
    merge.add_argument("--baseline-dir", metavar="DIR",
                       help="the baseline tree cases are judged against (default: each case's recorded "
                            "baseline_file) and --update-baselines writes")
    merge.add_argument("--baseline-history", metavar="K", default="5",
                       help="results kept per case (and judged against) in a baseline file (default 5)")
    merge.add_argument("--gate-exit", action="store_true", help="exit 1 when a merged case regressed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a report's text on a terminal of another encoding is never a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # usage errors and --help
        return int(exc.code or 0)
    try:
        return _compare(args) if args.command == "compare" else _merge(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:  # content no check foresaw
        files = " ".join([args.a, args.b] if args.command == "compare" else args.reports)
        print(f"error: {files}: content this version cannot read ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2


def _history(text: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"--baseline-history: expected a positive integer, got {text!r}")
    return value


# ----------------------------------------------------------------- reading inputs
def read_json(path: Path) -> Any:
    """The JSON content of a file; InputError naming the file when it is missing, unreadable or not JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a JSON report") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None


def read_report(path: str) -> Mapping[str, Any]:
    data = read_json(Path(path))
    problem = report_problem(data)
    if problem and is_baseline_file(data):
        raise InputError(f"{path}: a baseline file, not a JSON report (merge reads the reports --report-json writes)")
    if problem:
        raise InputError(f"{path}: {problem}")
    return data


def _baseline_files(files: Sequence[Path]) -> list[tuple[str, Mapping[str, Any]]]:
    from .baselines import read_baseline

    out = []
    for path in files:
        try:
            data = read_baseline(path)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        except OSError as exc:
            raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        out.append((str(path), data or {}))
    return out


def read_side(path: str, history_limit: int) -> Any:
    """A compare input: a JSON report, a baseline file, or a directory searched for baseline files."""
    from .compare import side_of_report, side_of_tree

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.json") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise InputError(f"{path}: no *.json files under it: neither a JSON report nor a baseline tree")
        return side_of_tree(path, _baseline_files(files), history_limit)
    if not p.exists():
        raise InputError(f"{path}: no such file or directory")
    data = read_json(p)
    if not report_problem(data):
        return side_of_report(path, data)
    if is_baseline_file(data):
        return side_of_tree(path, _baseline_files([p]), history_limit)
    if isinstance(data, dict) and ("environment" in data or isinstance(data.get("cases"), list)):
        raise InputError(f"{path}: {report_problem(data)}")
    raise InputError(f"{path}: neither a JSON report (--report-json) nor a baseline file or tree")


# ----------------------------------------------------------------- compare
def _compare(args: argparse.Namespace) -> int:
    from .compare import compare_sides, render_markdown, render_text, to_json
    from .settings import DEFAULT_GATES, parse_gates

    try:
        gates = parse_gates(args.gate) if args.gate else dict(DEFAULT_GATES)
    except ValueError as exc:
        raise InputError(f"--gate: {exc}") from None
    history = _history(args.baseline_history)
    a, b = read_side(args.a, history), read_side(args.b, history)
    named = frozenset(item.partition(":")[0].strip() for item in (args.gate or "").replace(" ", ",").split(",")
                      if item.strip())
    comparison = compare_sides(a, b, gates, history, named)
    if args.format == "json":
        sys.stdout.write(json.dumps(to_json(comparison), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_markdown(comparison) if args.format == "markdown" else render_text(comparison))
    return 1 if comparison.regressed else 0


# ----------------------------------------------------------------- merge
def _writer(option: str, module: str, name: str, check: str = "") -> Any:
    """The report writer ``module.name`` for ``option``, imported now (and its ``check`` run: what it needs is there).

    InputError when this version has no such writer, or what it needs is missing.
    """
    import importlib

    try:
        found = importlib.import_module(module)
        writer = getattr(found, name)
    except (ImportError, AttributeError):
        raise InputError(f"{option}: this version of pytest-llmperf cannot write it ({module}.{name} is not "
                         f"available); upgrade pytest-llmperf or leave {option} out") from None
    if check and hasattr(found, check):
        try:
            getattr(found, check)()
        except (ImportError, RuntimeError) as exc:
            raise InputError(str(exc) if str(exc).startswith(option) else f"{option}: {exc}") from None
    return writer


def _merge(args: argparse.Namespace) -> int:
    from .baselines import baseline_path, read_for
    from .merge import baseline_key_of, merge_reports

    history = _history(args.baseline_history)
    if args.update_baselines and not args.baseline_dir:
        raise InputError("--update-baselines needs --baseline-dir DIR: the baseline tree to record the cases in")
    seen: dict[Path, str] = {}
    for label in args.reports:
        resolved = Path(label).resolve()
        if resolved in seen:
            raise InputError(f"{label}: given twice (also as {seen[resolved]}): its runs would count twice")
        seen[resolved] = label
    markdown = _writer("--report-md", "pytest_llmperf.report.markdown", "markdown_summary") if args.report_md else None
    html = (_writer("--report-html", "pytest_llmperf.report.html", "write_html", check="require_plotly")
            if args.report_html else None)
    reports = [(label, read_report(label)) for label in args.reports]
    bdir = Path(args.baseline_dir) if args.baseline_dir else None

    def where(case: Mapping[str, Any]) -> Path | None:
        if bdir is not None:
            key = baseline_key_of(case, reports[0][1]["environment"])
            if all(key[k] for k in ("gpus", "model", "engine", "config")):
                return baseline_path(bdir, key["gpus"], key["model"], key["engine"], key["config"])
        return Path(case["baseline_file"]) if case.get("baseline_file") else None

    def read_baseline(case: Mapping[str, Any]) -> Any:
        path = where(case)
        return read_for(path) if path is not None else None

    if args.update_baselines:  # checked before anything is judged or written, as the plugin does
        problem = _unwritable(reports, bdir)
        if problem:
            raise InputError(f"--update-baselines: {problem}")
    merged = merge_reports(reports, read_baseline, history, args.update_baselines,
                           str(bdir) if bdir is not None else None)
    report = merged.report
    problems, written = _write_updates(merged, bdir, history) if args.update_baselines else ([], [])
    lines = [_headline(args.output, merged)] + [f"  {n}" for n in merged.notes]
    lines += [f"baseline updated: {u['case']} -> {u['path']}" for u in written]
    lines += [f"not recorded: {r}" for r in merged.refused]
    from .files import atomic_write_text
    from .report.json import write_json

    outputs = [(args.output, "the merged report", lambda path: write_json(path, report), "")]
    if markdown is not None:
        outputs.append((args.report_md, "the markdown summary",
                        lambda path: atomic_write_text(path, markdown(report)), "markdown summary written to"))
    if html is not None:
        outputs.append((args.report_html, "the HTML report", lambda path: html(path, report), "HTML report written to"))
    for path, what, write, done in outputs:
        try:
            write(Path(path))
        except (OSError, RuntimeError) as exc:  # RuntimeError: what a writer needs went missing since its check
            problems.append(f"{path}: cannot write {what} ({getattr(exc, 'strerror', None) or exc})")
            continue
        if done:
            lines.append(f"{done} {path}")
    print("\n".join(lines))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    return 1 if args.gate_exit and merged.regressed else 0


def _headline(output: str, merged: Any) -> str:
    cases = merged.report["cases"]
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.get("status") or "?"] = counts.get(case.get("status") or "?", 0) + 1
    sources = merged.report["environment"]["merged_from"]
    pooled = f", {len(merged.pooled)} measured in several and pooled" if merged.pooled else ""
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    reports = "1 report" if len(sources) == 1 else f"{len(sources)} reports"
    return (f"merged {reports} into {output}: {len(cases)} case{'' if len(cases) == 1 else 's'}{pooled}"
            + (f" ({statuses})" if statuses else ""))


def _unwritable(reports: Sequence[tuple[str, Mapping[str, Any]]], bdir: Path | None) -> str | None:
    """Why the baseline files of the reports' cases could not be written under ``bdir`` (None: they can)."""
    from .baselines import baseline_path, unwritable
    from .merge import baseline_key_of

    assert bdir is not None
    paths = []
    for _, data in reports:
        for case in data["cases"]:
            key = baseline_key_of(case, data["environment"])
            if all(key[k] for k in ("gpus", "model", "engine", "config")):
                paths.append(baseline_path(bdir, key["gpus"], key["model"], key["engine"], key["config"]))
    return unwritable(paths)


def _write_updates(merged: Any, bdir: Path | None, history: int) -> tuple[list[str], list[dict[str, Any]]]:
    """Record the merged cases in the baseline tree (checked writable first).

    The files that could not be written, one line each, and the updates
    written (also added to the report's ``baseline_updates``).
    """
    from .baselines import PendingUpdates, baseline_path

    assert bdir is not None
    paths = {u.case_id: baseline_path(bdir, u.key["gpus"], u.key["model"], u.key["engine"], u.key["config"])
             for u in merged.updates}
    pending = PendingUpdates(history)
    for u in merged.updates:
        header = {k: u.key[k] for k in ("engine", "config", "gpus", "model")}
        pending.add(paths[u.case_id], header, u.key["workload"], u.workload, u.record)
    failed = pending.write()
    cases = {c["id"]: c for c in merged.report["cases"]}
    written = []
    for u in merged.updates:
        path = paths[u.case_id]
        if path in failed:
            cases[u.case_id].update(outcome="failed", message=f"its baseline update was not written: {failed[path]}")
            continue
        written.append({"case": u.case_id, "path": str(path), "lines": list(u.lines)})
    merged.report["baseline_updates"].extend(written)
    return list(dict.fromkeys(failed.values())), written


if __name__ == "__main__":
    sys.exit(main())
