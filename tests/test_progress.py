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
    """What TerminalProgress reads of pytest's TerminalWriter: its public width figures."""

    fullwidth = 80

    def __init__(self, line):
        self.width_of_current_line = len(line)


def screen(raw):
    """What a terminal shows for one line of output with backspaces."""
    cells, pos = [], 0
    for ch in raw:
        if ch == "\b":
            pos = max(pos - 1, 0)
            continue
        if pos < len(cells):
            cells[pos] = ch
        else:
            cells.append(ch)
        pos += 1
    return "".join(cells).rstrip()


def bar_for(line, show_after_s):
    out = io.StringIO()
    out.write(line)  # pytest's own line, already on the terminal
    return TerminalProgress(Writer(line), lambda: out, contextlib.nullcontext, show_after_s=show_after_s), out


def test_the_line_appears_after_a_while_and_leaves_pytest_line_as_it_was():
    bar, out = bar_for("llmperf ..", show_after_s=3.0)
    update = bar.for_case("sim/a/short")
    update(Progress(1, 0, 10, 10, 1.0))
    assert out.getvalue() == "llmperf .."  # quiet for short cases
    update(Progress(5, 0, 10, 50, 4.0))
    assert screen(out.getvalue()) == "llmperf .. [sim/a/short 5/10 done, 13 output tok/s, 4 s]"
    update(Progress(9, 1, 10, 90, 5.0))  # a shorter text replaces the longer one whole
    assert screen(out.getvalue()) == "llmperf .. [sim/a/short 9/10 done, 1 failed, 20 output tok/s, 5 s]"
    bar.clear()
    assert screen(out.getvalue()) == "llmperf .."
    out.write(" PASSED")  # pytest goes on where its own line ended
    assert screen(out.getvalue()) == "llmperf .. PASSED"


def test_the_line_is_cut_to_the_terminal_width():
    bar, out = bar_for("x" * 70, show_after_s=0)
    bar.for_case("a-long-case-id/with/parts")(Progress(5, 0, 10, 50, 4.0))
    assert len(screen(out.getvalue())) <= 80


def test_no_progress_line_when_output_is_not_a_terminal(pytester):
    pytester.makepyfile("""
from pytest_llmperf.progress import TerminalProgress
def test_x(request):
    assert TerminalProgress.for_config(request.config) is None
""")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_rate_is_taken_over_the_last_two_seconds():
    bar, out = bar_for("", show_after_s=0)
    update = bar.for_case("c")
    for i in range(9):  # 100 tokens per half second, then nothing for the last second
        update(Progress(0, 0, 1, min(i, 6) * 100, i * 0.5))
    assert "100 output tok/s" in screen(out.getvalue())  # 200 tokens over the last 2 s


def test_under_ci_a_line_a_minute_over_every_run_of_every_case():
    from pytest_llmperf.progress import LogProgress, under_ci

    now = [0.0]
    lines = []
    log = LogProgress(lines.append, every_s=60.0, clock=lambda: now[0])
    update = log.for_case("sim/a/long run 1")
    for t in range(0, 200, 5):
        now[0] = float(t)
        update(Progress(t, 0, 1000, t * 100, float(t)))
    log.clear()
    assert len(lines) == 3  # at 60, 120 and 180 s
    assert lines[0] == "llmperf progress [sim/a/long run 1 60/1000 done, 100 output tok/s, 60 s]"
    # runs of 30 s each: none is a minute long, yet the log hears from them once a minute
    for run in range(1, 5):
        step = log.for_case(f"sim/b/short run {run}")
        for t in range(0, 31, 10):
            now[0] = 200.0 + (run - 1) * 30 + t
            step(Progress(t, 0, 100, t, float(t)))
    assert [line.split("[")[1].split(" ")[0:3] for line in lines[3:]] == [
        ["sim/b/short", "run", "2"], ["sim/b/short", "run", "4"]]
    assert under_ci({"CI": "true"}) and under_ci({"CI": "1"})
    assert not under_ci({}) and not under_ci({"CI": "false"}) and not under_ci({"CI": "0"})


def test_the_session_gets_a_line_a_minute_only_under_ci_off_a_terminal():
    from pytest_llmperf.progress import LogProgress, progress_for

    class Writer:
        def __init__(self):
            self.lines = []

        def write_line(self, text):
            self.lines.append(text)

    class Plugins:
        def __init__(self, plugins):
            self.plugins = plugins

        def getplugin(self, name):
            return self.plugins.get(name)

    class Capman:
        def global_and_fixture_disabled(self):
            return contextlib.nullcontext()

    class Option:
        def __init__(self, verbose):
            self.verbose = verbose

    class Config:
        def __init__(self, tr, verbose=0):
            self.option = Option(verbose)
            self.pluginmanager = Plugins({"terminalreporter": tr, "capturemanager": Capman()})

    tr = Writer()
    stdout = io.StringIO()  # not a terminal
    with contextlib.redirect_stdout(stdout):
        assert progress_for(Config(tr), {}) is None
        assert progress_for(Config(tr, verbose=-2), {"CI": "true"}) is None  # -qq: quiet
        logged = progress_for(Config(tr), {"CI": "true"})
    assert isinstance(logged, LogProgress)
    logged._last_s -= 61.0  # a minute since the session started
    logged.for_case("c")(Progress(1, 0, 2, 5, 61.0))
    assert tr.lines == ["llmperf progress [c 1/2 done, - output tok/s, 61 s]"]
    assert stdout.getvalue() == ""  # nothing drawn off a terminal
