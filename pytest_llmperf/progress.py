"""The live progress line of a running case, and its CI form.

``progress_text`` is pure. ``TerminalProgress`` is the edge: it draws the
line at the end of pytest's current terminal line, only on a terminal, only
once a case has run for a few seconds, and puts pytest's own line back
when the case ends, so the output reads as if the line had never been there.
Off a terminal nothing is drawn; under CI (``CI`` set, as CI services do)
``LogProgress`` writes one plain line per minute of a long case instead, so a
log shows the run is alive.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .loadgen.run import Progress

SHOW_AFTER_S = 3.0
RATE_WINDOW_S = 2.0  # the current tok/s is taken over this much recent time


def progress_text(case_id: str, progress: Progress, tokens_per_s: float | None) -> str:
    """``[sim/vllm-tp8/short 523/1000 done, 2 failed, 12,345 tok/s, 14 s]``."""
    rate = "-" if tokens_per_s is None else f"{tokens_per_s:,.0f}"
    failed = f", {progress.failed} failed" if progress.failed else ""
    return (f"[{case_id} {progress.done}/{progress.total} done{failed}, {rate} output tok/s, "
            f"{progress.elapsed_s:.0f} s]")


LOG_EVERY_S = 60.0  # under CI: one line per this much time of a case


def _rate_tracker() -> Callable[[Progress], float | None]:
    """Output tok/s over the last ``RATE_WINDOW_S`` of a case, from its successive progress counts."""
    history: list[Progress] = []

    def rate(progress: Progress) -> float | None:
        history.append(progress)
        while len(history) > 2 and progress.elapsed_s - history[1].elapsed_s >= RATE_WINDOW_S:
            history.pop(0)
        first = history[0]
        if progress.elapsed_s > first.elapsed_s:
            return (progress.output_tokens - first.output_tokens) / (progress.elapsed_s - first.elapsed_s)
        return None

    return rate


def under_ci(environ: Any) -> bool:
    """Whether this runs under a CI service (they set ``CI``; ``CI=false`` or ``0`` says no)."""
    value = str(environ.get("CI", "")).strip().lower()
    return bool(value) and value not in ("0", "false", "no")


class LogProgress:
    """Under CI: a plain line when ``every_s`` has passed since the last one (over all runs of all cases).

    The clock runs from the start of the session, so a case of several short
    runs still shows up once a minute; each line is written as a line of its
    own (``write_line``).
    """

    def __init__(self, write_line: Callable[[str], None], every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self._write_line = write_line
        self._every_s = every_s
        self._clock = clock
        self._last_s = clock()

    def for_case(self, case_id: str) -> Callable[[Progress], None]:
        rate = _rate_tracker()

        def update(progress: Progress) -> None:
            tokens_per_s = rate(progress)
            now_s = self._clock()
            if now_s - self._last_s >= self._every_s:
                self._last_s = now_s
                self._write_line("llmperf progress " + progress_text(case_id, progress, tokens_per_s))

        return update

    def clear(self) -> None:
        """Nothing to take back: its lines stay in the log."""


def progress_for(config: Any, environ: Any) -> "TerminalProgress | LogProgress | None":
    """The session's progress: a line a minute under CI (a CI log keeps every backspace), else a live line on a
    terminal, else none; ``-qq`` turns both off."""
    tr = config.pluginmanager.getplugin("terminalreporter")
    if tr is None or config.option.verbose < -1:
        return None
    if not under_ci(environ):
        return TerminalProgress.for_config(config)
    capman = config.pluginmanager.getplugin("capturemanager")

    def write_line(text: str) -> None:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                tr.write_line(text)
        else:
            tr.write_line(text)

    return LogProgress(write_line)


class TerminalProgress:
    """Draws one case's progress after pytest's current line; ``clear`` erases it.

    It reads only the terminal writer's public width figures and writes to
    the terminal itself (with capture suspended), never through pytest's
    writer, so pytest's idea of its current line is untouched: the text is
    drawn after that line and taken back with backspaces.
    """

    def __init__(self, writer: Any, out: Any, suspend_capture: Callable[[], Any], show_after_s: float = SHOW_AFTER_S):
        self._tw = writer  # for fullwidth and width_of_current_line only
        self._out = out  # where to write (called inside suspend_capture, so the real terminal)
        self._suspend = suspend_capture
        self._show_after_s = show_after_s
        self._drawn = 0

    @classmethod
    def for_config(cls, config: Any) -> "TerminalProgress | None":
        """A progress line for this session, or None when output is not an interactive terminal."""
        import sys

        capman = config.pluginmanager.getplugin("capturemanager")
        if capman is None or config.option.verbose < 0 or config.pluginmanager.getplugin("terminalreporter") is None:
            return None
        with capman.global_and_fixture_disabled():
            if not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty()):
                return None
        return cls(config.get_terminal_writer(), lambda: sys.stdout, capman.global_and_fixture_disabled)

    def for_case(self, case_id: str) -> Callable[[Progress], None]:
        rate = _rate_tracker()

        def update(progress: Progress) -> None:
            tokens_per_s = rate(progress)
            if progress.elapsed_s < self._show_after_s:
                return
            self._draw(progress_text(case_id, progress, tokens_per_s))

        return update

    def _draw(self, text: str) -> None:
        room = max(self._tw.fullwidth - self._tw.width_of_current_line - 2, 0)
        text = (" " + text)[:room]
        pad = max(self._drawn - len(text), 0)
        self._write("\b" * self._drawn + text + " " * pad + "\b" * pad)
        self._drawn = len(text)

    def clear(self) -> None:
        """Erase the progress text, leaving pytest's line as it was."""
        if not self._drawn:
            return
        n = self._drawn
        self._write("\b" * n + " " * n + "\b" * n)
        self._drawn = 0

    def _write(self, text: str) -> None:
        with self._suspend():
            out = self._out()
            out.write(text)
            out.flush()
