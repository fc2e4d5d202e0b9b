"""A sim server for tests of the HTTP edge: it notes every request it gets, and can fail /tokenize.

usage: recording_sim.py --port P --record FILE [--profile vllm-tp8] [--served-model-name M]
           [--ssl-certfile F --ssl-keyfile F] [--tokenize-status 500]

The API key comes from LLMPERF_SIM_API_KEY, as for the sim itself. Each
request is one JSON line in FILE: method, path, whether it carried the right
key, and its X-Tenant header. The key itself is never written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402

from pytest_llmperf.sim.access import ENV_API_KEY, ApiKeys, server_ssl_context  # noqa: E402
from pytest_llmperf.sim.profiles import load_profile  # noqa: E402
from pytest_llmperf.sim.server import SimServer  # noqa: E402


class RecordingSim(SimServer):
    def __init__(self, *args, record: Path, tokenize_status: int = 200, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = record
        self.tokenize_status = tokenize_status
        self.key_check = ApiKeys(kwargs.get("api_keys"))

    def make_app(self) -> web.Application:
        app = super().make_app()
        app.middlewares.insert(0, self._note)
        return app

    @web.middleware
    async def _note(self, request: web.Request, handler):
        authorized = self.key_check.allows(request.method, "/v1" + request.path, request.headers.get("Authorization"))
        with open(self.record, "a") as f:
            f.write(json.dumps({"method": request.method, "path": request.path, "authorized": authorized,
                                "tenant": request.headers.get("X-Tenant")}) + "\n")
        if request.path == "/tokenize" and self.tokenize_status != 200:
            return web.json_response({"error": "tokenizer crashed"}, status=self.tokenize_status)
        return await handler(request)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--profile", default="vllm-tp8")
    parser.add_argument("--served-model-name")
    parser.add_argument("--ssl-certfile")
    parser.add_argument("--ssl-keyfile")
    parser.add_argument("--tokenize-status", type=int, default=200)
    args = parser.parse_args()
    ssl_context = server_ssl_context(args.ssl_certfile, args.ssl_keyfile) if args.ssl_certfile else None
    server = RecordingSim(load_profile(args.profile), args.served_model_name, api_keys=os.environ.get(ENV_API_KEY),
                          ssl_context=ssl_context, record=args.record, tokenize_status=args.tokenize_status)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await server.start("127.0.0.1", args.port)
    print("ready", flush=True)
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
