"""The one step loop (sim/steps.py): its schedule, idle and empty-plan rules, and both clocks."""

from __future__ import annotations

import asyncio

import pytest

from pytest_llmperf.sim.model import EngineModel, Profile
from pytest_llmperf.sim.steps import LoopClock, StepLimitExceeded, VirtualClock, run_steps, run_virtual

TINY = Profile(name="tiny", step_base_ms=10.0, decode_ms_per_seq=1.0, prefill_ms_per_token=0.1,
               max_running_requests=4, kv_capacity_tokens=4000, chunked_prefill_tokens=256, max_context_tokens=2000)


class LateClock(VirtualClock):
    """A virtual clock whose sleeps wake ``late_s`` after the time asked for, and whose pauses last ``pause_s``."""

    def __init__(self, late_s: float = 0.0, pause_s: float = 0.0, **kw):
        super().__init__(**kw)
        self.late_s, self.pause_s = late_s, pause_s
        self.pauses = 0

    async def sleep_until(self, t_s: float) -> None:
        await super().sleep_until(t_s + self.late_s)

    async def pause(self) -> None:
        self.pauses += 1
        self._now_s += self.pause_s


def step_ends(engine: EngineModel, clock, **kw) -> tuple[list[float], list[list[tuple[str, int]]]]:
    ends, tokens = [], []

    def on_step(end_s, plan, events):
        ends.append(end_s)
        tokens.append([(ev.request_id, ev.new_tokens) for ev in events])

    run_virtual(run_steps(engine, clock, on_step, **kw))
    return ends, tokens


def test_steps_follow_an_absolute_schedule_whatever_the_wake_up_lateness():
    # One request, prompt 300 (chunks of 256 + 44), 3 tokens: steps of 35.6, 14.4, 11 and 11 ms.
    def run(late_s: float) -> list[float]:
        engine = EngineModel(TINY)
        engine.add_request("a", 300, 3)
        ends, tokens = step_ends(engine, LateClock(late_s=late_s))
        assert tokens == [[], [("a", 1)], [("a", 1)], [("a", 1)]]
        return ends

    on_time = run(0.0)
    assert on_time == pytest.approx([0.0356, 0.05, 0.061, 0.072])
    assert run(0.004) == on_time  # a late wake-up does not push the next steps back


def test_an_idle_engine_waits_for_the_next_arrival_and_re_anchors_there():
    engine = EngineModel(TINY)
    arrivals = [(0.0, "a"), (5.0, "b")]

    def next_arrival_s():
        return arrivals[0][0] if arrivals else None

    def admit(now_s):
        while arrivals and arrivals[0][0] <= now_s:
            engine.add_request(arrivals.pop(0)[1], 10, 2)

    ends, tokens = step_ends(engine, LateClock(late_s=0.5, next_arrival_s=next_arrival_s), admit=admit)
    # a: prefill step (11 ms) then a decode (11 ms), on schedule; b: the same, anchored at its arrival, not at a's end.
    assert ends == pytest.approx([0.011, 0.022, 5.011, 5.022])
    assert [t[0][0] for t in tokens] == ["a", "a", "b", "b"]


def test_a_request_arriving_during_a_step_joins_when_it_ends():
    engine = EngineModel(TINY)
    pending = [(0.0, "a", 300), (0.001, "b", 10)]

    def admit(now_s):
        while pending and pending[0][0] <= now_s:
            _, rid, n = pending.pop(0)
            engine.add_request(rid, n, 1)

    ends, tokens = step_ends(engine, VirtualClock(lambda: pending[0][0] if pending else None), admit=admit)
    # b arrived 1 ms into a's first prefill chunk (35.6 ms): it is planned in the next step, beside a's last chunk.
    assert ends == pytest.approx([0.0356, 0.0356 + 0.0154])
    assert tokens == [[], [("a", 1), ("b", 1)]]


def test_an_empty_plan_pauses_instead_of_spinning_and_the_step_limit_holds():
    # A budget of one token cannot hold a decode with one draft token: after its first token the request is stuck.
    stuck = TINY.replace(name="stuck", chunked_prefill_tokens=1, spec_draft_tokens=1, max_context_tokens=1000,
                         kv_capacity_tokens=1000)
    engine = EngineModel(stuck)
    engine.add_request("a", 1, 5)
    clock = LateClock(pause_s=0.01)
    ends = []
    with pytest.raises(StepLimitExceeded, match="did not finish within 5 steps"):
        run_virtual(run_steps(engine, clock, lambda end_s, plan, events: ends.append(end_s), max_steps=5))
    assert ends == pytest.approx([0.0101])  # the one real step; the empty ones are not steps with tokens
    assert clock.pauses == 5 and engine.num_steps == 6
    assert clock.now_s() == pytest.approx(0.0101 + 5 * 0.01)


def test_the_virtual_loop_ends_when_no_request_is_left_to_come():
    engine = EngineModel(TINY)
    assert run_virtual(run_steps(engine, VirtualClock(), lambda *a: None)) == 0
    engine.add_request("a", 10, 3)
    assert run_virtual(run_steps(engine, VirtualClock(), lambda *a: None)) == 3
    assert not engine.has_work()


def test_run_virtual_refuses_a_coroutine_that_really_waits():
    async def sleeps():
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="outside virtual time"):
        run_virtual(sleeps())


def test_the_loop_clock_wakes_on_arrival_and_pauses_at_most_its_pause():
    async def woken(clock: LoopClock, wait):
        waiter = asyncio.ensure_future(wait)
        await asyncio.sleep(0)  # the waiter is waiting now
        clock.wake()
        return await asyncio.wait_for(waiter, 30)

    async def scenario():
        clock = LoopClock(pause_s=60.0)
        assert await woken(clock, clock.wait_for_arrival()) is True
        await woken(clock, clock.pause())  # a request arrived: the pause ends long before its 60 s
        clock.pause_s = 0.0
        await asyncio.wait_for(clock.pause(), 30)  # nobody came: it ends after pause_s
        t0 = clock.now_s()
        await asyncio.wait_for(clock.sleep_until(t0 - 1.0), 30)  # behind schedule: returns at once
        assert clock.now_s() >= t0

    asyncio.run(scenario())


def test_the_server_loop_runs_on_the_loop_clock_until_cancelled():
    async def scenario():
        engine = EngineModel(TINY.replace(name="fast", step_base_ms=0.0, decode_ms_per_seq=0.0,
                                          prefill_ms_per_token=0.0))
        clock = LoopClock()
        got = []
        task = asyncio.create_task(run_steps(engine, clock, lambda end_s, plan, events: got.extend(events)))
        for rid in ("a", "b"):
            engine.add_request(rid, 5, 3)
            clock.wake()
            while engine.has_work():
                await asyncio.sleep(0.001)
        assert not task.done()  # idle, waiting for the next request
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got

    got = asyncio.run(scenario())
    assert [(e.request_id, e.new_tokens, e.finished) for e in got] == [
        ("a", 1, False), ("a", 1, False), ("a", 1, True), ("b", 1, False), ("b", 1, False), ("b", 1, True)]


# ----------------------------------------------------------------- schedule tally
def test_the_tally_measures_how_far_a_late_waking_loop_fell_behind():
    from pytest_llmperf.sim.steps import ScheduleTally

    arrivals = [(0.0, "a"), (5.0, "b")]

    def run(late_s: float) -> ScheduleTally:
        engine = EngineModel(TINY)
        pending = list(arrivals)

        def admit(now_s):
            while pending and pending[0][0] <= now_s:
                engine.add_request(pending.pop(0)[1], 10, 2)

        tally = ScheduleTally()
        step_ends(engine, LateClock(late_s=late_s, next_arrival_s=lambda: pending[0][0] if pending else None),
                  admit=admit, tally=tally)
        return tally

    on_time = run(0.0)
    # two busy periods of two 11 ms steps each
    assert on_time.steps == 4 and on_time.scheduled_s == pytest.approx(0.044)
    assert on_time.actual_s == pytest.approx(0.044) and on_time.max_late_s == 0.0 and on_time.stretch == pytest.approx(0)
    late = run(0.004)
    # every wake-up 4 ms late; the schedule is absolute, so each period ends 4 ms after its scheduled end
    assert late.scheduled_s == pytest.approx(0.044)
    assert late.actual_s == pytest.approx(2 * (0.022 + 0.004))
    assert late.max_late_s == pytest.approx(0.004)
    assert late.stretch == pytest.approx(0.008 / 0.044)


def test_the_tally_counts_the_current_busy_period_up_to_its_last_commit():
    from pytest_llmperf.sim.steps import ScheduleTally

    tally = ScheduleTally()
    tally.anchor(10.0)
    assert tally.actual_s == 0.0 and tally.stretch == 0.0
    tally.commit(0.5, 10.5, 10.7)
    tally.commit(0.5, 11.0, 11.2)
    assert tally.actual_s == pytest.approx(1.2) and tally.scheduled_s == 1.0 and tally.max_late_s == pytest.approx(0.2)
    tally.anchor(20.0)  # idle, then a new period: the idle time is not counted
    assert tally.actual_s == pytest.approx(1.2)
    tally.commit(1.0, 21.0, 21.0)
    assert tally.actual_s == pytest.approx(2.2) and tally.stretch == pytest.approx(0.1)
