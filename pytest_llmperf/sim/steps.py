"""The engine's step loop, once, with the clock injected.

``run_steps`` drives ``EngineModel``: plan a step, wait until the step's
scheduled end, commit it, hand its tokens on. Steps follow an absolute
timeline: each starts where the previous one was scheduled to end (a late
wake-up does not push the schedule back); when the engine is idle, or a plan
has nothing runnable, the timeline re-anchors to the clock's now.

The clock decides what waiting means:

- ``VirtualClock`` (the DES): sleeping jumps to the step's end, an idle
  engine jumps to the next scheduled arrival, and nothing ever waits.
  ``run_virtual`` runs the loop to completion without an event loop.
- ``LoopClock`` (the server): the event loop's clock, real sleeps, and a
  wake-up (``wake``) when a request arrives.

Requests join between steps: the server's handlers add them to the engine
directly (and wake the clock); the DES passes ``admit``, called with the
time before each plan, to add those due by then. A request arriving during a
step therefore joins when that step ends, in both.

``ScheduleTally`` (optional) measures how far the loop fell behind its own
schedule on the clock: a busy machine wakes the loop late, and the timeline
stretches.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Optional, Protocol, TypeVar

from .model import EngineModel, StepPlan, TokenEvent

T = TypeVar("T")

OnStep = Callable[[float, StepPlan, list[TokenEvent]], None]
"""Called after each committed step with its scheduled end (seconds on the clock), the plan and its tokens."""

PAUSE_S = 0.01
"""How long a real clock waits for a request when a plan has nothing runnable (no spinning)."""


class Clock(Protocol):
    """Time as the step loop sees it."""

    def now_s(self) -> float:
        """The current time in seconds (any origin; the loop only adds durations to it)."""

    async def sleep_until(self, t_s: float) -> None:
        """Return at ``t_s`` (at once when it is past)."""

    async def wait_for_arrival(self) -> bool:
        """The engine is idle: return once a request may have arrived; False when none ever will."""

    async def pause(self) -> None:
        """A plan had nothing runnable: give requests a moment to arrive (a virtual clock need not)."""


class VirtualClock:
    """Virtual time: waits jump, nothing sleeps.

    ``next_arrival_s`` tells when the next request not yet admitted arrives
    (None: no more); an idle engine jumps there.
    """

    def __init__(self, next_arrival_s: Callable[[], Optional[float]] = lambda: None, start_s: float = 0.0):
        self._next_arrival_s = next_arrival_s
        self._now_s = float(start_s)

    def now_s(self) -> float:
        return self._now_s

    async def sleep_until(self, t_s: float) -> None:
        self._now_s = max(self._now_s, t_s)

    async def wait_for_arrival(self) -> bool:
        t_s = self._next_arrival_s()
        if t_s is None:
            return False
        self._now_s = max(self._now_s, t_s)
        return True

    async def pause(self) -> None:
        return None


class LoopClock:
    """The running event loop's clock: real sleeps, and ``wake()`` when a request arrives.

    Create it inside the loop that runs the step loop.
    """

    def __init__(self, pause_s: float = PAUSE_S):
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self.pause_s = pause_s

    def wake(self) -> None:
        """A request arrived (call from the loop's thread)."""
        self._arrived.set()

    def now_s(self) -> float:
        return self._loop.time()

    async def sleep_until(self, t_s: float) -> None:
        delay_s = t_s - self._loop.time()
        # Behind schedule: still yield once, so that handlers run between steps.
        await asyncio.sleep(delay_s if delay_s > 0 else 0)

    async def wait_for_arrival(self) -> bool:
        self._arrived.clear()
        await self._arrived.wait()
        return True

    async def pause(self) -> None:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), self.pause_s)
        except asyncio.TimeoutError:
            pass


@dataclass
class ScheduleTally:
    """How the step loop kept to its schedule on the clock.

    A busy period runs from a re-anchor of the timeline (start, end of an idle
    wait, or after a pause) to the last step committed before the engine goes
    idle. ``scheduled_s`` sums the scheduled durations of committed steps;
    ``actual_s`` sums, per busy period, the clock's time at its last commit
    minus its anchor (the current period up to its last commit). Over a run
    that starts and ends idle, ``stretch`` (``actual_s / scheduled_s - 1``) is
    the fraction by which the timeline stretched; on a virtual clock it is 0.
    ``max_late_s``: the most a commit came after its scheduled end.
    """

    scheduled_s: float = 0.0
    max_late_s: float = 0.0
    steps: int = 0
    _closed_s: float = 0.0  # actual_s of the busy periods already ended
    _anchor_s: float | None = None
    _last_commit_s: float | None = None  # clock time of the current period's last commit

    @property
    def actual_s(self) -> float:
        current = 0.0
        if self._anchor_s is not None and self._last_commit_s is not None:
            current = self._last_commit_s - self._anchor_s
        return self._closed_s + current

    @property
    def stretch(self) -> float:
        """``actual_s / scheduled_s - 1`` (0 before any step)."""
        return self.actual_s / self.scheduled_s - 1.0 if self.scheduled_s > 0 else 0.0

    def anchor(self, now_s: float) -> None:
        """The timeline re-anchored at ``now_s``: the current busy period (if any) ends, a new one begins."""
        self._closed_s = self.actual_s
        self._anchor_s = now_s
        self._last_commit_s = None

    def commit(self, duration_s: float, scheduled_end_s: float, now_s: float) -> None:
        """A step of ``duration_s`` scheduled to end at ``scheduled_end_s`` was committed at ``now_s``."""
        self.scheduled_s += duration_s
        self.steps += 1
        self._last_commit_s = now_s
        late_s = now_s - scheduled_end_s
        if late_s > self.max_late_s:
            self.max_late_s = late_s


class StepLimitExceeded(RuntimeError):
    """The loop ran more steps than it was allowed."""


async def run_steps(engine: EngineModel, clock: Clock, on_step: OnStep, *,
                    admit: Callable[[float], None] | None = None, max_steps: int | None = None,
                    tally: ScheduleTally | None = None) -> int:
    """Step ``engine`` on ``clock`` until the clock says no request will come; returns the steps run.

    ``admit(now_s)``: called before each plan, to add the requests due by then
    (the server adds them from its handlers instead). ``max_steps``: raise
    ``StepLimitExceeded`` once more steps than this have run (empty ones count).
    ``tally``: kept up to date with how the loop kept to its schedule (see
    ``ScheduleTally``). A server's loop ends only when cancelled.
    """
    step_start_s = clock.now_s()
    if tally is not None:
        tally.anchor(step_start_s)
    steps = 0
    while True:
        if admit is not None:
            admit(clock.now_s())
        if not engine.has_work():
            if not await clock.wait_for_arrival():
                return steps
            step_start_s = clock.now_s()  # idle: re-anchor the timeline to now
            if tally is not None:
                tally.anchor(step_start_s)
            continue
        plan = engine.plan_step()
        if plan.empty:  # nothing runnable (e.g. everything just aborted): do not spin
            engine.commit_step(plan)
            await clock.pause()
            step_start_s = clock.now_s()
            if tally is not None:
                tally.anchor(step_start_s)
        else:
            duration_s = engine.step_duration_s(plan)
            step_end_s = step_start_s + duration_s
            await clock.sleep_until(step_end_s)
            events = engine.commit_step(plan)
            if tally is not None:
                tally.commit(duration_s, step_end_s, clock.now_s())
            step_start_s = step_end_s
            on_step(step_end_s, plan, events)
        steps += 1
        if max_steps is not None and steps > max_steps:
            raise StepLimitExceeded(f"the engine did not finish within {max_steps} steps; raise max_steps, or check "
                                    f"that the profile can schedule every request")


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never really waits (a ``VirtualClock`` loop) to its end, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a virtual-time run waited on something outside virtual time (a real clock or IO?)")
