"""A stand-in engine process for lifecycle tests (stdlib only).

usage: fake_engine.py PORT [--delay S] [--exit-early CODE] [--child] [--ignore-term] [--pidfile F] [--api-key K]
"""

import argparse
import http.server
import os
import signal
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("--delay", type=float, default=0.0)
parser.add_argument("--exit-early", type=int)
parser.add_argument("--child", action="store_true")
parser.add_argument("--setsid-child", action="store_true", help="the child leaves the process group")
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--pidfile")
parser.add_argument("--api-key", help="printed among its arguments at start, as some engines do")
args = parser.parse_args()

print("fake engine starting", flush=True)
if args.api_key:
    print(f"non-default args: {{'api_key': {args.api_key!r}}}", flush=True)
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if args.child:
    child = subprocess.Popen([sys.executable, "-c", "import time, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                             start_new_session=args.setsid_child)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()} {child.pid}\n")
for i in range(60):
    print(f"loading shard {i}", flush=True)
if args.exit_early is not None:
    print("fatal: out of memory", flush=True)
    sys.exit(args.exit_early)
time.sleep(args.delay)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"version": "9.9-fake"}' if self.path == "/version" else b"{}"
        self.send_response(200 if self.path in ("/health", "/version") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


http.server.HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
