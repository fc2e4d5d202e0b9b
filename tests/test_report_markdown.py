"""The markdown summary, read back as a CI page renders it (markdown-it-py), and its size limit."""

from markdown_it import MarkdownIt

from pytest_llmperf.report.case import CaseResult
from pytest_llmperf.report.json import json_report
from pytest_llmperf.report.markdown import STEP_SUMMARY_LIMIT_BYTES, cell, code, cut_to, markdown_summary
from pytest_llmperf.verdict import UPDATED, Verdict, judge


def case(config, workload, outcome="passed", verdicts=(), **extra):
    r = CaseResult(f"sim/{config}/{workload}", "sim", config, workload, outcome=outcome)
    r.verdicts = list(verdicts)
    r.verdict_status = extra.pop("verdict_status", "")
    for key, value in extra.items():
        setattr(r, key, value)
    return r


def tables(text):
    """Each rendered table as rows of cell texts (header first)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)  # GitHub renders tables (GFM)
    out, rows, row, inside = [], None, None, False
    for t in tokens:
        if t.type == "table_open":
            rows = []
        elif t.type == "tr_open":
            row = []
        elif t.type == "inline" and row is not None:
            row.append("".join(child.content for child in t.children or []))  # the text as rendered
        elif t.type == "tr_close":
            rows.append(row)
            row = None
        elif t.type == "table_close":
            out.append(rows)
    return out


def report(*cases, env=None, updates=()):
    return json_report(cases, env or {"gpus": "h200x8", "model": "m", "notes": ["a | note"]}, updates)


def test_regressions_come_first_and_render_as_tables():
    ok = case("a", "short", verdicts=[judge("total_token_throughput", 1000.0, 1001.0, 5)], verdict_status="ok")
    bad = case("b", "long", outcome="failed", verdicts=[judge("total_token_throughput", 1000.0, 700.0, 5),
                                                        judge("mean_tpot_ms", 10.0, 10.0, 5)],
               verdict_status="regressed", message="sim/b/long regressed against x.json:\ntotal_token_throughput: ...")
    ok2 = case("b", "short", verdicts=[judge("total_token_throughput", 1000.0, 1000.0, 5)], verdict_status="ok")
    text = markdown_summary(report(ok, ok2, bad))
    assert text.startswith("## ❌ pytest-llmperf: 1 regressed, 2 ok")
    parsed = tables(text)
    assert len(parsed) == 2  # one table per configuration
    first = parsed[0]
    assert first[0] == ["case", "status", "metric", "baseline → current", "change", "tolerance", "spread"]
    assert first[1][:3] == ["long", "❌ regressed", "total_token_throughput"]
    assert first[1][4] == "-30.0%"
    assert [r[0] for r in first[1:]] == ["long", "", "short"]  # in its configuration, the regression first
    assert text.index("### sim/b") < text.index("### sim/a")  # the configuration with a regression first
    assert "### Why" in text and "sim/b/long" in text.split("### Why")[1]


def test_inconclusive_cases_say_their_cause():
    c = case("a", "short", outcome="failed", verdict_status="inconclusive",
             message="inconclusive: 3 of 3 runs distorted: the client was busy; nothing was compared")
    text = markdown_summary(report(c))
    assert "⚠️ inconclusive" in text
    assert "3 of 3 runs distorted: the client was busy" in text.split("### Why")[1]


def test_an_update_shows_old_to_new():
    v = Verdict("total_token_throughput", 1000.0, 1100.0, 10.0, 5, UPDATED, "higher")
    new = Verdict("mean_tpot_ms", None, 12.5, None, 5, UPDATED, "lower")
    c = case("a", "short", verdicts=[v, new], verdict_status="updated",
             metrics={"total_token_throughput": 1100.0, "mean_tpot_ms": 12.5})
    text = markdown_summary(report(c, updates=[{"case": c.id, "path": "baselines/x.json", "lines": []}]))
    section = text.split("### Baseline changes")[1]
    rows = tables(section)[0]
    assert rows[1][1:] == ["total_token_throughput", "1,000 → 1,100 tok/s", "+10.0%"]
    assert rows[2][1:] == ["mean_tpot_ms", "none → 12.50 ms", "–"]
    assert "`baselines/x.json`" in section


def test_cells_cannot_break_the_table():
    c = case("a|b", "x<y>\nz", outcome="error", message="boom | with a pipe\nsecond line")
    text = markdown_summary(report(c))
    (table,) = tables(text)
    assert len(table[1]) == 7  # the pipe did not add a column
    assert cell("a|b_c") == "a\\|b\\_c"


def test_a_summary_over_the_limit_is_cut_with_a_line_saying_so():
    text = "\n".join(f"line {i} " + "é" * 50 for i in range(5000))
    cut = cut_to(text, 20_000, "r.json")
    assert len(cut.encode()) <= 20_000
    assert "more lines of this summary were left out" in cut and "r.json" in cut
    assert cut_to("short\n", 20_000) == "short\n"
    assert STEP_SUMMARY_LIMIT_BYTES == 1024 * 1024


def test_a_cut_inside_the_folded_notes_closes_them_and_too_little_room_gives_nothing():
    text = "## head\n\n<details><summary>Notes</summary>\n\n" + "".join(f"- note {i}\n" for i in range(2000)) \
        + "\n</details>\n"
    cut = cut_to(text, 4000)
    assert len(cut.encode()) <= 4000
    assert cut.count("<details>") == cut.count("</details>") == 1
    assert cut.index("</details>") < cut.index("more lines of this summary were left out")
    assert "GitHub's 1 MiB step summary limit" in cut
    assert cut_to(text, 50) is None and cut_to(text, 0) is None and cut_to(text, -10) is None


def test_paths_and_model_names_show_exactly_in_code_spans():
    assert code("baselines/h200x8/org__model/sim/a.json") == "`baselines/h200x8/org__model/sim/a.json`"
    assert code("a`b") == "``a`b``" and code("`x") == "`` `x ``"
    c = case("a", "short", verdicts=[Verdict("mean_tpot_ms", 1.0, 2.0, 100.0, 5, UPDATED, "lower")],
             verdict_status="updated")
    path = "baselines/h200x8/deepseek-ai__DeepSeek-V3.2/sim/a.json"
    text = markdown_summary(report(c, env={"model": "deepseek-ai/DeepSeek_V3"},
                                   updates=[{"case": c.id, "path": path, "lines": []}]))
    rendered = MarkdownIt("commonmark").enable("table").render(text)
    assert f"<code>{path}</code>" in rendered and "<code>deepseek-ai/DeepSeek_V3</code>" in rendered
