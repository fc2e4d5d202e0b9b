"""The live progress line: its text, and that pytest's own line comes back intact."""

import contextlib
import io

from pytest_llmperf.loadgen.run import Progress
from pytest_llmperf.progress import TerminalProgress, progress_text


def test_progress_text():
    p = Progress(done=523, failed=2, total=1000, output_tokens=9000, elapsed_s=14.2)
    assert progress_text("sim/vllm-tp8/short", p, 12345.6) == \
        "[sim/vllm-tp8/short 523/1000 done, 2 failed, 12,346 output tok/s, 14 s]"
    assert progress_text("c", Progress(0, 0, 5, 0, 1.0), None) == "[c 0/5 done, - output tok/s, 1 s]"


class Writer:
    """Just what TerminalProgress uses of pytest's TerminalWriter."""

    fullwidth = 80

    def __init__(self, line):
        self._current_line = line
        self._file = io.StringIO()

    def write(self, text, flush=False):
        self._file.write(text)
        self._current_line += text.rsplit("\r", 1)[-1]


def screen(raw):
    """What a terminal shows for one line of output with carriage returns."""
    shown = ""
    for part in raw.split("\r"):
        shown = part + shown[len(part):]
    return shown.rstrip()


def test_the_line_appears_after_a_while_and_leaves_pytest_line_as_it_was():
    tw = Writer("llmperf ..")
    bar = TerminalProgress(tw, contextlib.nullcontext, show_after_s=3.0)
    update = bar.for_case("sim/a/short")
    update(Progress(1, 0, 10, 10, 1.0))
    assert tw._file.getvalue() == ""  # quiet for short cases
    update(Progress(5, 0, 10, 50, 4.0))
    assert screen(tw._file.getvalue()) == "llmperf .. [sim/a/short 5/10 done, 13 output tok/s, 4 s]"
    assert tw._current_line == "llmperf .."  # pytest still counts only its own text
    bar.clear()
    assert screen(tw._file.getvalue()) == "llmperf .."
    assert tw._current_line == "llmperf .."


def test_the_line_is_cut_to_the_terminal_width():
    tw = Writer("x" * 70)
    bar = TerminalProgress(tw, contextlib.nullcontext, show_after_s=0)
    bar.for_case("a-long-case-id/with/parts")(Progress(5, 0, 10, 50, 4.0))
    assert len(screen(tw._file.getvalue())) <= 80


def test_no_progress_line_when_output_is_not_a_terminal(pytester):
    pytester.makepyfile("""
from pytest_llmperf.progress import TerminalProgress
def test_x(request):
    assert TerminalProgress.for_config(request.config) is None
""")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_rate_is_taken_over_the_last_two_seconds():
    tw = Writer("")
    bar = TerminalProgress(tw, contextlib.nullcontext, show_after_s=0)
    update = bar.for_case("c")
    for i in range(9):  # 100 tokens per half second, then nothing for the last second
        update(Progress(0, 0, 1, min(i, 6) * 100, i * 0.5))
    assert "100 output tok/s" in screen(tw._file.getvalue())  # 200 tokens over the last 2 s
