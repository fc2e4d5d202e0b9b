"""``python -m pytest_llmperf.sim``: serve a simulated engine, or list its profiles.

    python -m pytest_llmperf.sim serve --port 8000 --profile vllm-tp8 [--host 127.0.0.1]
        [--slowdown FACTOR] [--served-model-name NAME] [--log-level info]
        [--api-key KEY] [--ssl-certfile FILE --ssl-keyfile FILE]
    python -m pytest_llmperf.sim profiles
    python -m pytest_llmperf.sim predict --profile P [--workload W ... | --suite FILE] [--num-prompts N] [--json]
    python -m pytest_llmperf.sim calibrate [--profile P ...] [--workload W ...]

``predict`` prints the twin's figures in virtual time (the load generator's
metric names); ``calibrate`` prints sim vs seed on every figure the seed
study published, the tolerances the twin is held to, the seed's ranking and
claims, and exits 1 when one is not met. Both are deterministic.

The API key may come from the environment instead (``LLMPERF_SIM_API_KEY``),
so that it need not sit on a command line; it is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from .access import ENV_API_KEY

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pytest_llmperf.sim", description="The simulated LLM engine.")
    sub = ap.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve an OpenAI-compatible streaming API with modelled timing")
    serve.add_argument("--port", type=_port, required=True, help="TCP port (0: any free port)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--profile", required=True, help="a built-in profile name or a path to a profile .toml")
    serve.add_argument("--slowdown", type=_positive_float, default=1.0, help="multiply every step's duration")
    serve.add_argument("--stall-ms-per-step", type=_non_negative_float, default=0.0, metavar="MS",
                       help="block the server's event loop this long after every step, so that it falls behind its "
                            "own schedule as on a busy machine (fault injection for the gate's own checks)")
    serve.add_argument("--served-model-name", default=None, help="model name the API answers to (default: the profile's)")
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    serve.add_argument("--api-key", metavar="KEY", default=None,
                       help=f"require 'Authorization: Bearer KEY' on /v1 routes (default: ${ENV_API_KEY}, if set)")
    serve.add_argument("--ssl-certfile", metavar="FILE", default=None, help="serve HTTPS with this PEM certificate")
    serve.add_argument("--ssl-keyfile", metavar="FILE", default=None,
                       help="the certificate's PEM private key (unless the certificate file holds it)")
    sub.add_parser("profiles", help="list the built-in profiles")
    pr = sub.add_parser("predict", help="the twin's figures for workloads, in virtual time")
    pr.add_argument("--profile", action="append", help="a built-in profile name or a path to a profile .toml "
                                                        "(repeatable; with --suite: default, the suite's sim configurations)")
    which = pr.add_mutually_exclusive_group()
    which.add_argument("--workload", action="append", metavar="W",
                       help="a workload preset (repeatable; default: every preset)")
    which.add_argument("--suite", metavar="FILE", help="the workloads of a suite file")
    pr.add_argument("--num-prompts", type=_positive_int, default=None, help="override every workload's prompt count")
    pr.add_argument("--json", action="store_true", help="print every figure as JSON")
    ca = sub.add_parser("calibrate", help="sim vs seed on every figure the seed published")
    ca.add_argument("--profile", action="append", help="limit to profiles (repeatable; default: every profile "
                                                        "the seed has figures for)")
    ca.add_argument("--workload", action="append", metavar="W", help="limit to workloads (repeatable)")
    return ap


def _ssl_context(args: argparse.Namespace):
    """The TLS context the flags ask for, or None; ValueError (one line) when the files do not serve."""
    if args.ssl_certfile is None:
        if args.ssl_keyfile is not None:
            raise ValueError("--ssl-keyfile needs --ssl-certfile: give the certificate too, or neither for plain HTTP")
        return None
    from .access import server_ssl_context

    return server_ssl_context(args.ssl_certfile, args.ssl_keyfile)


async def _serve(args: argparse.Namespace) -> int:
    from .profiles import load_profile
    from .server import SimServer

    try:
        profile = load_profile(args.profile)
        ssl_context = _ssl_context(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    api_key = args.api_key if args.api_key is not None else os.environ.get(ENV_API_KEY)
    server = SimServer(profile, args.served_model_name, args.slowdown, api_keys=api_key, ssl_context=ssl_context,
                       stall_s_per_step=args.stall_ms_per_step / 1000.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await server.start(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr, flush=True)
        return 1
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    key_note = ", API key required" if server.requires_api_key else ""
    print(f"sim engine ready on {server.scheme}://{shown_host}:{port} (profile {profile.name}, "
          f"model {server.model_name}, slowdown {args.slowdown:g}{key_note})", flush=True)
    await stop.wait()
    logging.getLogger("pytest_llmperf.sim").info("stopping")
    await server.stop()
    print("sim engine stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "profiles":
        from .profiles import list_profiles, load_profile

        for name in list_profiles():
            p = load_profile(name)
            print(f"{name}: {p.stands_in_for or p.description}")
        return 0
    if args.command in ("predict", "calibrate"):
        from .twin_cli import calibrate_main, predict_main

        try:
            return predict_main(args) if args.command == "predict" else calibrate_main(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
        except OSError as exc:  # a dataset or suite file that cannot be read
            print(f"error: cannot read {exc.filename or 'a file'}: {exc.strerror or exc}", file=sys.stderr, flush=True)
            return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
