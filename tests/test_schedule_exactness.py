"""Measured TTFT, TPOT and ITL against a server that keeps a known schedule.

The paced server logs when it really wrote each chunk, on the clock the
client reads too, so every check compares the client with the server's
truth (not with the nominal schedule, which a loaded machine may miss).
Counts are exact; times get bounds that hold on a busy shared machine.
"""

import statistics

import pytest

from paced_server import PacedServer
from pytest_llmperf.loadgen.datasets import SampleRequest
from pytest_llmperf.loadgen.run import LoadSpec, run_load
from pytest_llmperf.metrics import compute_metrics


def load(server, n=8, tokens=25, endpoint="/v1/chat/completions", **kw):
    reqs = [SampleRequest(f"p{i} alpha beta", 3, tokens) for i in range(n)]
    result = run_load(LoadSpec(base_url=server.base_url, model="m", requests=reqs, endpoint=endpoint, **kw))
    log = server.get("/log")
    return reqs, result, [log[r.prompt] for r in reqs]


def check_against_server(reqs, result, truth, tokens_per_chunk=1):
    tpot_errors = []
    for req, rec, t in zip(reqs, result.records, truth):
        assert rec.success, rec.error
        sent = t["sent_s"]
        chunks = len(sent)
        assert chunks == -(-req.expected_output_len // tokens_per_chunk)
        assert len(rec.itl_s) == chunks - 1  # one gap per chunk, whatever it carries
        assert rec.output_tokens == req.expected_output_len
        seen = [rec.start_s + rec.ttft_s]
        for gap in rec.itl_s:
            seen.append(seen[-1] + gap)
        # nothing is seen before it was sent; the request went out before the server got it
        assert all(c >= s for c, s in zip(seen, sent))
        assert rec.start_s <= t["arrived_s"]
        server_tpot = (sent[-1] - sent[0]) / (req.expected_output_len - 1)
        tpot_errors.append(abs(rec.tpot_s - server_tpot) / server_tpot)
    return tpot_errors


@pytest.fixture(scope="module")
def server():
    with PacedServer("--ttft-ms", "60", "--gap-ms", "20") as s:
        yield s


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/completions"])
def test_times_match_what_the_server_did(server, endpoint):
    reqs, result, truth = load(server, endpoint=endpoint)
    errors = check_against_server(reqs, result, truth)
    assert statistics.median(errors) < 0.02  # TPOT within 2% of the server's actual pace
    m = compute_metrics(result.records, result.duration_s)
    assert m["mean_ttft_ms"] >= 60.0  # the server's first chunk was due 60 ms after arrival
    assert m["median_itl_ms"] == pytest.approx(20.0, abs=5.0)
    assert m["completed"] == 8 and m["total_output_tokens"] == 8 * 25


def test_multi_token_chunks_count_tokens_from_usage_and_gaps_per_chunk():
    with PacedServer("--ttft-ms", "20", "--gap-ms", "30", "--tokens-per-chunk", "3") as server:
        reqs, result, truth = load(server, n=4, tokens=31)
        errors = check_against_server(reqs, result, truth, tokens_per_chunk=3)
    assert statistics.median(errors) < 0.02
    rec = result.records[0]
    # 11 chunks (10 of 3 tokens, one of 1); TPOT spreads 10 gaps of 30 ms over 30 tokens after the first
    assert len(rec.itl_s) == 10 and rec.output_tokens == 31
    assert rec.tpot_s == pytest.approx(0.010, rel=0.2)


def test_without_usage_the_text_is_counted():
    with PacedServer("--ttft-ms", "10", "--gap-ms", "10", "--no-usage") as server:
        reqs, result, truth = load(server, n=3, tokens=12)
        check_against_server(reqs, result, truth)
    assert [r.input_tokens for r in result.records] == [None] * 3


def test_a_finite_rate_is_sent_on_schedule(server):
    reqs, result, truth = load(server, n=10, tokens=3, request_rate=25.0, seed=5)
    for rec, t in zip(result.records, truth):
        assert rec.scheduled_s <= rec.start_s <= t["arrived_s"]
    # the server saw the schedule's spacing (to within the client's send delay)
    delays = [t["arrived_s"] - r.scheduled_s for r, t in zip(result.records, truth)]
    assert statistics.median(delays) < 0.05
    m = compute_metrics(result.records, result.duration_s, from_schedule=True)
    assert m["mean_ttft_from_schedule_ms"] >= m["mean_ttft_ms"]
