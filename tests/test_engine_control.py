"""The engine control edge: metrics scrapes around a run and cache resets, against tiny local servers."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine_metrics_texts import trtllm_iteration, trtllm_text, vllm_text
from pytest_llmperf.engines import get_adapter
from pytest_llmperf.engines.base import ResetRoute
from pytest_llmperf.engines.control import EngineMetricsProbe, ResetOutcome, probe_for, reset_caches
from pytest_llmperf.http import HttpOptions


class Script:
    """Per (method, path): the answers to give in order (the last one repeats); records every request."""

    def __init__(self, answers):
        self.answers = {key: list(value) for key, value in answers.items()}
        self.requests = []
        self.lock = threading.Lock()

    def answer(self, method, path):
        with self.lock:
            self.requests.append((method, path))
            queue = self.answers.get((method, path))
            if not queue:
                return 404, '{"detail":"Not Found"}'
            return queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.fixture
def serve():
    servers = []

    def start(answers):
        script = Script(answers)

        class Handler(BaseHTTPRequestHandler):
            def _reply(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, body = script.answer(self.command, self.path)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _reply

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", script

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def refused_url():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now


HTTP = HttpOptions()


# ----------------------------------------------------------------- metrics probe
def test_probe_summarises_scrapes_before_during_and_after(serve):
    texts = [vllm_text(engines=2, preemptions=5, prefix_queries=100, prefix_hits=0),  # before
             vllm_text(engines=2, running=8, waiting=20, kv_usage=0.7, preemptions=5),
             vllm_text(engines=2, running=8, waiting=3, kv_usage=0.95, preemptions=40),
             vllm_text(engines=2, preemptions=45, prefix_queries=200, prefix_hits=50)]  # after
    url, script = serve({("GET", "/metrics"): [(200, t) for t in texts]})
    probe = EngineMetricsProbe(url, HTTP, fmt="prometheus", interval_s=3600)  # the thread never fires: we drive it
    probe.start()
    assert probe.sample_once() and probe.sample_once()
    summary = probe.stop()
    assert summary["available"] and summary["samples"] == 2
    assert summary["counters"]["preemptions"] == 80  # (45 - 5) x 2 engines
    assert summary["gauges"]["waiting"]["max"] == 40 and summary["gauges"]["kv_usage"]["max"] == 0.95
    assert summary["prefix_cache_hit_rate"] == 0.5
    assert summary["format"] == "prometheus" and summary["scrape_errors"] == 0
    assert script.requests == [("GET", "/metrics")] * 4
    assert probe.stop() is summary  # once


def test_probe_thread_samples_until_stopped(serve):
    url, _ = serve({("GET", "/metrics"): [(200, vllm_text(engines=1, waiting=2))]})
    probe = EngineMetricsProbe(url, HTTP, fmt="prometheus", interval_s=0.01).start()
    deadline = threading.Event()
    for _ in range(500):  # wait for the thread's first sample, however slow the machine
        if probe.samples:
            break
        deadline.wait(0.01)
    summary = probe.stop()
    assert summary["samples"] >= 1 and summary["gauges"]["waiting"]["max"] == 2
    assert not probe._thread.is_alive()


@pytest.mark.parametrize("answers, why", [
    ({}, "answered HTTP 404"),
    ({("GET", "/metrics"): [(200, "<html>metrics are elsewhere</html>")]}, "not Prometheus text"),
])
def test_probe_without_metrics_says_why_in_one_line(serve, answers, why):
    url, script = serve(answers)
    summary = EngineMetricsProbe(url, HTTP, fmt="prometheus").start().stop()
    assert summary["available"] is False and summary["note"].startswith("engine metrics unavailable: ")
    assert why in summary["note"] and "\n" not in summary["note"]
    assert len(script.requests) == 1  # no sampler runs against a route that is not there


def test_probe_on_a_refused_connection_and_on_an_engine_without_metrics():
    summary = EngineMetricsProbe(refused_url(), HTTP, fmt="prometheus").start().stop()
    assert summary["available"] is False and "connection refused" in summary["note"]
    none = EngineMetricsProbe(refused_url(), HTTP, fmt=None).start().stop()
    assert none["note"] == "engine metrics unavailable: this engine exposes no metrics route"


def test_probe_keeps_a_failed_sample_as_a_note_not_a_failure(serve):
    url, _ = serve({("GET", "/metrics"): [(200, vllm_text(engines=1, preemptions=1)), (500, "oops"),
                                          (200, vllm_text(engines=1, preemptions=4))]})
    probe = EngineMetricsProbe(url, HTTP, fmt="prometheus", interval_s=3600).start()
    assert probe.sample_once() is False
    summary = probe.stop()
    assert summary["counters"]["preemptions"] == 3 and summary["scrape_errors"] == 1
    assert "1 scrape(s) failed" in summary["note"] and "HTTP 500" in summary["note"]


def test_trtllm_probe_keeps_every_drained_iteration(serve):
    responses = [trtllm_text(trtllm_iteration(queued=50)),  # warm-up, drained by start()
                 trtllm_text(trtllm_iteration(queued=4, used_blocks=100), trtllm_iteration(queued=9, used_blocks=800)),
                 trtllm_text(),  # nothing new since the last read
                 trtllm_text(trtllm_iteration(queued=1, used_blocks=300))]  # drained by stop()
    url, _ = serve({("GET", "/metrics"): [(200, r) for r in responses]})
    probe = probe_for(get_adapter("trtllm"), url, HTTP, interval_s=3600).start()
    assert probe.sample_once() and probe.sample_once()
    summary = probe.stop()
    assert summary["samples"] == 3 and summary["drained_before"] == 1
    assert summary["gauges"]["waiting"] == {"max": 9, "mean": pytest.approx(4.6667)}  # warm-up's 50 left out
    assert summary["gauges"]["kv_usage"]["max"] == 0.8 and summary["counters"] == {}


# ----------------------------------------------------------------- cache reset
def test_vllm_reset_without_dev_mode_says_the_next_step(serve):
    url, script = serve({})
    outcome = reset_caches(url, HTTP, get_adapter("vllm"))
    assert outcome == ResetOutcome(False, None, "vllm answered 404 on /reset_prefix_cache: "
                                                "start it with VLLM_SERVER_DEV_MODE=1")
    assert script.requests == [("POST", "/reset_prefix_cache")]
    url, _ = serve({("POST", "/reset_prefix_cache"): [(200, "")]})
    assert reset_caches(url, HTTP, get_adapter("vllm")) == ResetOutcome(True, "/reset_prefix_cache",
                                                                        "vllm caches reset (/reset_prefix_cache)")


def test_sglang_flush_is_retried_while_busy(serve):
    busy = (400, "Cache not flushed. (When there are running or waiting requests, the operation will not be performed.)")
    url, script = serve({("POST", "/flush_cache"): [busy, busy, (200, "Cache flushed.")]})
    sleeps = []
    outcome = reset_caches(url, HTTP, get_adapter("sglang"), sleep=sleeps.append)
    assert outcome.done and outcome.route == "/flush_cache"
    assert sleeps == [0.2, 0.2] and len(script.requests) == 3


def test_sglang_flush_gives_up_at_the_timeout(serve):
    url, _ = serve({("POST", "/flush_cache"): [(400, "busy")]})
    now = [0.0]

    def sleep(s):
        now[0] += s

    outcome = reset_caches(url, HTTP, get_adapter("sglang"), timeout_s=1.0, sleep=sleep, clock=lambda: now[0])
    assert not outcome.done and outcome.route == "/flush_cache"
    assert "still busy after 1 s" in outcome.note and "\n" not in outcome.note


def test_external_falls_back_to_flush_cache_and_says_when_neither_exists(serve):
    url, script = serve({("POST", "/flush_cache"): [(200, "")]})
    outcome = reset_caches(url, HTTP, get_adapter("external"))
    assert outcome.done and outcome.route == "/flush_cache"
    assert script.requests == [("POST", "/reset_prefix_cache"), ("POST", "/flush_cache")]
    url, _ = serve({})
    outcome = reset_caches(url, HTTP, get_adapter("external"))
    assert outcome == ResetOutcome(False, None, "external answered 404 on /reset_prefix_cache and /flush_cache: "
                                                "no cache-reset route; caches not reset")


def test_reset_never_raises_for_http_trouble_and_trtllm_has_no_route():
    outcome = reset_caches(refused_url(), HTTP, get_adapter("vllm"))
    assert not outcome.done and "connection refused" in outcome.note
    outcome = reset_caches("http://127.0.0.1:9", HTTP, get_adapter("trtllm"))  # nothing is sent
    assert outcome == ResetOutcome(False, None, "trtllm has no cache-reset route: runs after the first may find "
                                                "caches warm")
    outcome = reset_caches(refused_url(), HTTP, (ResetRoute("/x"),), engine="mine")
    assert not outcome.done and outcome.note.startswith("cache reset on /x got no answer")
