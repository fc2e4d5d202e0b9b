"""The node on the command line: record it as a JSON snapshot, or check it against a GPU spec.

    python -m pytest_llmperf.topology snapshot [--output FILE]
    python -m pytest_llmperf.topology check --gpus SPEC [--gpu-snapshot FILE]

``check`` exits 0 when the node fits, 1 when it does not, 2 on an error (no
driver, a bad spec or file). Live NVML here means every GPU of the machine:
CUDA_VISIBLE_DEVICES is not applied, and the GPUs that fit are printed as a
CUDA_VISIBLE_DEVICES line to use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ..gpus import parse_gpu_spec
from .check import check_node
from .nvml import NoGpuDriver, probe_node
from .sources import LiveNvml, RecordedFile, SnapshotSource

PROG = "python -m pytest_llmperf.topology"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Record this node's GPUs as a JSON snapshot, or check a node against a GPU spec.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot", help="print this node (live NVML) as a JSON snapshot")
    snap.add_argument("--output", "-o", metavar="FILE", help="write the snapshot to FILE instead of printing it")
    check = sub.add_parser("check", help="check a node against a GPU spec; exit 0 fit, 1 unfit, 2 error")
    check.add_argument("--gpus", required=True, metavar="SPEC", help="e.g. h200x8, h200x1, any")
    check.add_argument("--gpu-snapshot", metavar="FILE", help="check this recorded snapshot instead of live NVML")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # usage errors and --help
        return int(exc.code or 0)

    try:
        if args.command == "snapshot":
            text = json.dumps(probe_node().to_json(), indent=2, sort_keys=True) + "\n"
            if args.output:
                Path(args.output).write_text(text)
                print(f"wrote {args.output}", file=sys.stderr)
            else:
                sys.stdout.write(text)
            return 0
        spec = parse_gpu_spec(args.gpus)
        source: SnapshotSource = RecordedFile(args.gpu_snapshot) if args.gpu_snapshot else LiveNvml()
        reading = source.read()
    except (NoGpuDriver, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if reading.snapshot is None:
        print(f"error: {reading.error}", file=sys.stderr)
        return 2
    verdict = check_node(spec, reading.snapshot, reading.source)
    print(verdict.describe())
    if verdict.ok and verdict.gpu_uuids:
        print("CUDA_VISIBLE_DEVICES=" + ",".join(verdict.gpu_uuids))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
