import json
import threading

import pytest

from pytest_llmperf import baselines as bl


def test_path_layout(tmp_path):
    p = bl.baseline_path(tmp_path, "h200x8", "deepseek-ai/DeepSeek-V3.2", "sim", "vllm-tp8")
    assert p == tmp_path / "h200x8" / "deepseek-ai__DeepSeek-V3.2" / "sim" / "vllm-tp8.json"


def rec(m, workload=None, **extra):
    """A new record of one metric ``m`` for ``update_cases``."""
    return {"workload": workload or {}, "record": {"metrics": {"m": m, **extra}}}


def test_update_keeps_other_cases_and_overrides(tmp_path):
    path = tmp_path / "x" / "c.json"
    header = {"engine": "sim", "config": "c"}
    bl.update_cases(path, header, {"a": rec(1.0)})
    bl.update_cases(path, header, {"b": rec(2.0)})
    data = json.loads(path.read_text())
    data["tolerances_pct"] = {"mean_tpot_ms": 9}
    data["cases"]["a"]["tolerances_pct"] = {"mean_tpot_ms": 1}
    path.write_text(bl.dumps(data))
    bl.update_cases(path, header, {"a": rec(3.0, bad=float("nan"))})
    data = bl.read_baseline(path)
    assert data["cases"]["a"] == {"workload": {}, "tolerances_pct": {"mean_tpot_ms": 1},
                                  "history": [{"metrics": {"m": 1.0}, "runs": []}, {"metrics": {"m": 3.0}, "runs": []}]}
    assert data["cases"]["b"]["history"][0]["metrics"] == {"m": 2.0}
    assert data["tolerances_pct"] == {"mean_tpot_ms": 9} and data["schema"] == 2
    text = path.read_text()
    assert text.endswith("}\n") and text == bl.dumps(json.loads(text))  # sorted, stable
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.json"]  # no temporary file, no lock file


def test_concurrent_updates_lose_nothing(tmp_path):
    path = tmp_path / "c.json"
    threads = [threading.Thread(target=bl.update_cases, args=(path, {}, {f"case{i}": rec(float(i))}))
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(bl.read_baseline(path)["cases"]) == sorted(f"case{i}" for i in range(16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]
    assert bl.lock_path(path).exists() and tmp_path not in bl.lock_path(path).parents


def test_pending_updates_write_one_file_each_and_report_what_they_could_not(tmp_path):
    pending = bl.PendingUpdates()
    good, corrupt = tmp_path / "a" / "c.json", tmp_path / "b" / "c.json"
    corrupt.parent.mkdir()
    corrupt.write_text("{oops")
    pending.add(good, {"engine": "sim"}, "w1", {}, {"metrics": {"m": 1.0}})
    pending.add(good, {"engine": "sim"}, "w2", {}, {"metrics": {"m": 2.0}})
    pending.add(corrupt, {"engine": "sim"}, "w1", {}, {"metrics": {"m": 1.0}})
    problems = pending.write()
    assert sorted(bl.read_baseline(good)["cases"]) == ["w1", "w2"]
    assert list(problems) == [corrupt] and problems[corrupt].startswith(f"baseline file {corrupt} is not valid JSON")
    assert corrupt.read_text() == "{oops"  # never overwritten


def test_read_for_turns_a_bad_file_into_a_value(tmp_path):
    assert bl.read_for(tmp_path / "none.json").data is None
    (tmp_path / "a.json").write_text("{oops")
    read = bl.read_for(tmp_path / "a.json")
    assert read.data is None and read.error.startswith(f"baseline file {tmp_path / 'a.json'} is not valid JSON")


def test_an_unwritable_baseline_directory_is_found_before_anything_runs(tmp_path):
    import os

    assert bl.unwritable([tmp_path / "new" / "deeper" / "c.json"]) is None  # made when written
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who may write anywhere")
        problem = bl.unwritable([locked / "h200x8" / "m" / "sim" / "c.json"])
        assert problem == (f"cannot write baselines: the directory {locked} is not writable; fix its permissions "
                           f"or give another --baseline-dir")
    finally:
        locked.chmod(0o755)
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "is not a directory" in bl.unwritable([afile / "c.json"])


def test_read_errors(tmp_path):
    assert bl.read_baseline(tmp_path / "none.json") is None
    (tmp_path / "a.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        bl.read_baseline(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"schema": 99, "cases": {}}')
    with pytest.raises(ValueError, match="schema 99 is newer"):
        bl.read_baseline(tmp_path / "b.json")


@pytest.mark.parametrize("content, message", [
    ('[]', "expected a JSON object"),
    ('{"schema": "1"}', "schema: expected an integer"),
    ('{"cases": []}', "cases: expected an object"),
    ('{"cases": {"a": []}}', "cases.a: expected an object"),
    ('{"cases": {"a": {"metrics": {"x": "1"}}}}', "cases.a.metrics: expected an object of metric name -> number"),
    ('{"schema": 2, "cases": {"a": {"history": {}}}}', "cases.a.history: expected a list of recorded results"),
    ('{"schema": 2, "cases": {"a": {"history": [{"metrics": {"x": true}}]}}}',
     "cases.a.history[0].metrics: expected an object of metric name -> number"),
    ('{"schema": 2, "cases": {"a": {"history": [{"metrics": {}, "runs": [{"x": "1"}]}]}}}',
     "cases.a.history[0].runs: expected a list of objects"),
    ('{"tolerances_pct": {"mean_tpot_ms": "10"}}', "tolerances_pct.mean_tpot_ms: expected a percentage >= 0, got '10'"),
    ('{"cases": {"a": {"tolerances_pct": {"bogus_ms": 5}}}}', "cases.a.tolerances_pct.bogus_ms: metric 'bogus_ms' cannot be gated"),
])
def test_invalid_files_name_file_and_key(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        bl.read_baseline(path)
    assert str(info.value).startswith(f"baseline file {path}: ") and message in str(info.value)


def test_written_files_are_readable_by_others(tmp_path):
    import os
    import stat

    path = tmp_path / "c.json"
    bl.update_cases(path, {}, {"a": rec(1.0)})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]  # no lock, no temp left


def test_the_lock_directory_must_be_this_users_own(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    target = tmp_path / "elsewhere"
    target.mkdir()
    bl.lock_path(tmp_path / "c.json").parent.symlink_to(target)  # someone put a link where the lock goes
    with pytest.raises(OSError, match="is not this user's own directory; remove it"):
        bl.update_cases(tmp_path / "c.json", {}, {"a": rec(1.0)})
    assert not (tmp_path / "c.json").exists() and list(target.iterdir()) == []


SCHEMA_ONE = {
    "schema": 1, "engine": "sim", "config": "c", "gpus": "h200x8", "model": "m",
    "tolerances_pct": {"mean_tpot_ms": 7},
    "cases": {
        "a": {"workload": {"num_prompts": 10}, "command": ["sim", "--x"], "metrics": {"m": 1.0, "n": 2},
              "provenance": {"date": "2026-01-01", "engine_version": "1"}, "tolerances_pct": {"p99_ttft_ms": 3}},
        "b": {"workload": {"num_prompts": 20}, "command": ["sim"], "metrics": {"m": 5.0},
              "provenance": {"date": "2026-01-02"}},
    },
}


def test_a_schema_one_file_is_read_as_a_history_of_one_and_rewritten_losing_nothing(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(SCHEMA_ONE))
    data = bl.read_baseline(path)
    assert data["schema"] == 2
    assert data["cases"]["a"] == {"workload": {"num_prompts": 10}, "tolerances_pct": {"p99_ttft_ms": 3}, "history": [
        {"metrics": {"m": 1.0, "n": 2}, "command": ["sim", "--x"],
         "provenance": {"date": "2026-01-01", "engine_version": "1"}}]}
    bl.update_cases(path, {"engine": "sim"}, {"a": rec(1.5, {"num_prompts": 10})})
    written = json.loads(path.read_text())
    assert written["schema"] == 2 and written["tolerances_pct"] == {"mean_tpot_ms": 7}
    a = written["cases"]["a"]
    assert [r["metrics"]["m"] for r in a["history"]] == [1.0, 1.5]
    assert a["history"][0]["command"] == ["sim", "--x"] and a["history"][0]["provenance"]["engine_version"] == "1"
    assert a["tolerances_pct"] == {"p99_ttft_ms": 3}
    b = written["cases"]["b"]  # not measured: kept, in the new schema
    assert b == {"workload": {"num_prompts": 20}, "history": [
        {"metrics": {"m": 5.0}, "command": ["sim"], "provenance": {"date": "2026-01-02"}}]}


def test_a_history_keeps_the_last_k_results_and_restarts_when_the_workload_changes(tmp_path):
    path = tmp_path / "c.json"
    for n in range(1, 8):
        bl.update_cases(path, {}, {"a": rec(float(n), {"num_prompts": 10})}, history_limit=3)
    assert [r["metrics"]["m"] for r in bl.read_baseline(path)["cases"]["a"]["history"]] == [5.0, 6.0, 7.0]
    bl.update_cases(path, {}, {"a": rec(9.0, {"num_prompts": 99})}, history_limit=3)
    entry = bl.read_baseline(path)["cases"]["a"]
    assert entry["workload"] == {"num_prompts": 99} and [r["metrics"]["m"] for r in entry["history"]] == [9.0]


def test_runs_are_kept_with_their_record(tmp_path):
    path = tmp_path / "c.json"
    record = bl.new_record({"m": 2.0}, [{"m": 1.0}, {"m": 2.0}, {"m": float("inf")}], ["sim"], {"date": "d"},
                           {"preemptions": 0})
    bl.update_cases(path, {}, {"a": {"workload": {}, "record": record}})
    kept = bl.read_baseline(path)["cases"]["a"]["history"][0]
    assert kept == {"metrics": {"m": 2.0}, "runs": [{"m": 1.0}, {"m": 2.0}, {}], "command": ["sim"],
                    "provenance": {"date": "d"}, "engine_metrics": {"preemptions": 0}}
