"""The arrival schedule: absolute, seeded, gamma-distributed gaps."""

import math
import statistics

import pytest

from pytest_llmperf.loadgen.arrivals import send_offsets_s


def gaps(offsets):
    return [b - a for a, b in zip(offsets, offsets[1:])]


def test_infinite_rate_sends_everything_at_once():
    assert send_offsets_s(4) == [0.0] * 4
    assert send_offsets_s(0, 5.0) == []


def test_same_seed_same_schedule_other_seed_other_schedule():
    assert send_offsets_s(50, 10.0, 1.0, seed=42) == send_offsets_s(50, 10.0, 1.0, seed=42)
    assert send_offsets_s(50, 10.0, 1.0, seed=42) != send_offsets_s(50, 10.0, 1.0, seed=43)


def test_offsets_start_at_zero_and_never_go_back():
    offsets = send_offsets_s(1000, 20.0, 0.5, seed=1)
    assert offsets[0] == 0.0
    assert all(g >= 0 for g in gaps(offsets))


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 4.0])
def test_mean_gap_is_one_over_the_rate_and_burstiness_sets_the_spread(burstiness):
    g = gaps(send_offsets_s(40001, 8.0, burstiness, seed=7))
    assert statistics.fmean(g) == pytest.approx(1 / 8.0, rel=0.03)
    # gamma with shape k: coefficient of variation 1/sqrt(k) (1 for Poisson arrivals)
    cv = statistics.pstdev(g) / statistics.fmean(g)
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


@pytest.mark.parametrize("args, message", [
    ((3, 0.0), "request_rate"), ((3, -1.0), "request_rate"), ((3, float("nan")), "request_rate"),
    ((3, 1.0, 0.0), "burstiness"), ((3, 1.0, float("inf")), "burstiness"), ((-1,), "num_requests"),
])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        send_offsets_s(*args)
