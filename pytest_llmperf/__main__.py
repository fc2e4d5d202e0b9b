"""Reports on the command line: compare two sets of results.

    python -m pytest_llmperf compare A B [--gate METRIC:PCT[,...]] [--format text|markdown|json]

``compare`` exits 0 when no gated metric regressed, 1 when one did, 2 on bad
input, with one line on stderr naming the file and the cause. This module is
the edge: it reads the files; ``compare`` holds the logic.
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
    parser = argparse.ArgumentParser(prog=PROG, description="Compare pytest-llmperf results.")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # usage errors and --help
        return int(exc.code or 0)
    try:
        return _compare(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
    comparison = compare_sides(a, b, gates, history)
    if args.format == "json":
        sys.stdout.write(json.dumps(to_json(comparison), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_markdown(comparison) if args.format == "markdown" else render_text(comparison))
    return 1 if comparison.regressed else 0


if __name__ == "__main__":
    sys.exit(main())
