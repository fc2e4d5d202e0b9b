"""The HTML report: one self-contained page with charts (pure, from the JSON report dict).

``html_report(report)`` turns the dict every report format reads into one
page that opens offline: plotly.js is embedded once in a ``<script>`` tag,
each chart follows as its figure's JSON (plain dicts, no network fetch of
anything). The page has a header (node, model, suite, engines, when,
plugin, notes), a status table of every case, then per configuration and
case:

- ``gates``: each gated metric against its baseline reference, with the
  tolerance applied drawn as a band (worse side red, better side green);
- ``trend``: each gated metric over the baseline's history, this run's
  value and its runs beside it, the reference line;
- ``latency``: CDFs of TTFT, TPOT and ITL, the baseline's median and p99
  (the median over its history) marked;
- ``timeline``: every request (queued/prefill to first token, then decode
  to its end; failures marked) and output tokens per second over time;
- ``gpu`` and ``engine``: GPU readings and the engine's gauges over time,
  where the run has them (otherwise one line says why not).

The charts near the viewport are drawn first, the rest one at a time after,
so a page of a large suite is usable at once.

Cases without a series (skipped, errored, not run) show their message and
no charts. Every string from the report is escaped. plotly is an optional
extra: without it, ``HtmlReportUnavailable`` says what to install.
"""

from __future__ import annotations

import functools
import html
import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..files import atomic_write_text

PLOTLY_MISSING = "--report-html needs plotly: pip install 'pytest-llmperf[html]'"
MAX_POINTS = 1500  # points per line in a chart over time; longer series are thinned evenly
LATENCIES = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"))
GPU_FIELDS = (("sm_clock_mhz", "SM clock", "MHz"), ("power_w", "power", "W"), ("temperature_c", "temperature", "°C"),
              ("utilization_pct", "utilisation", "%"), ("memory_used_mib", "memory used", "MiB"))
STATUS_COLOR = {"ok": "#1a7f37", "improved": "#0a7d6f", "updated": "#0969da", "regressed": "#cf222e",
                "failed": "#cf222e", "error": "#cf222e", "missing": "#bf8700", "inconclusive": "#bf8700",
                "not run": "#6e7781", "skipped": "#6e7781", "xfailed": "#6e7781"}
WORSE_FILL = "rgba(207,34,46,0.16)"
BETTER_FILL = "rgba(26,127,55,0.12)"
REFERENCE_COLOR = "#57606a"
RUN_COLOR = "#0969da"


class HtmlReportUnavailable(RuntimeError):
    """plotly is not installed: the message names the pip command."""


def require_plotly() -> None:
    """Raise HtmlReportUnavailable unless plotly can be imported (checked before a run measures anything)."""
    try:
        import plotly.offline  # noqa: F401
    except ImportError:
        raise HtmlReportUnavailable(PLOTLY_MISSING) from None


@functools.lru_cache(maxsize=1)
def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise HtmlReportUnavailable(PLOTLY_MISSING) from None
    return get_plotlyjs()


def write_html(path: Path, report: Mapping[str, Any]) -> None:
    """Write the page atomically; HtmlReportUnavailable without plotly, OSError when it cannot be written."""
    atomic_write_text(Path(path), html_report(report))


# ------------------------------------------------------------------ helpers
def _e(value: Any) -> str:
    """Text for the page (or a chart's label, which plotly reads as HTML too), escaped."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    """A finite float, or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _round(value: Any, digits: int = 5) -> float | None:
    """``value`` to ``digits`` significant digits (charts need no more; the page stays small)."""
    x = _num(value)
    if x is None or x == 0:
        return x
    return round(x, max(0, digits - 1 - int(math.floor(math.log10(abs(x))))))


def _rounded(values: Iterable[Any], digits: int = 5) -> list[float | None]:
    return [_round(v, digits) for v in values]


def _thin(n: int, limit: int = MAX_POINTS) -> list[int]:
    """Indices of at most ``limit`` points evenly over ``n``, first and last kept."""
    if n <= limit:
        return list(range(n))
    step = (n - 1) / (limit - 1)
    return sorted({round(i * step) for i in range(limit)})


def _fmt(value: Any, digits: int | None = None) -> str:
    x = _num(value)
    if x is None:
        return "–"
    if digits is None:
        digits = 0 if abs(x) >= 1000 else 1 if abs(x) >= 100 else 2
        if x.is_integer() and abs(x) < 1000:
            digits = 0
    return f"{x:,.{digits}f}"


def _change(verdict: Mapping[str, Any] | None) -> str:
    change = _num((verdict or {}).get("change_pct"))
    return "–" if change is None else f"{change:+.1f}%"


def _direction(metric: str) -> str | None:
    from ..metrics import metric_def

    found = metric_def(metric)
    return found.direction if found is not None else None


def _unit(units: Mapping[str, str], metric: str) -> str:
    unit = units.get(metric)
    if unit is None:
        from ..metrics import metric_def

        found = metric_def(metric)
        unit = found.unit if found is not None else ""
    return unit or ""


def _band(reference: float, tolerance_pct: float, direction: str | None) -> tuple[float, float]:
    """(worse edge, better edge) of the tolerance around ``reference``."""
    width = abs(reference) * tolerance_pct / 100.0
    if direction == "higher":
        return reference - width, reference + width
    return reference + width, reference - width


def _ax(k: int) -> str:
    """Plotly's axis suffix of subplot ``k`` (1-based): '', '2', '3' ..."""
    return "" if k == 1 else str(k)


def _columns(n: int, gap: float = 0.07) -> list[tuple[float, float]]:
    width = (1.0 - gap * (n - 1)) / n
    return [(round(i * (width + gap), 4), round(i * (width + gap) + width, 4)) for i in range(n)]


def _rows(n: int, gap: float) -> list[tuple[float, float]]:
    """Domains of ``n`` rows, top first."""
    height = (1.0 - gap * (n - 1)) / n
    return [(round(max(0.0, 1.0 - i * (height + gap) - height), 4), round(1.0 - i * (height + gap), 4))
            for i in range(n)]


def _subtitle(k: int, text: str) -> dict[str, Any]:
    return {"text": text, "xref": f"x{_ax(k)} domain", "yref": f"y{_ax(k)} domain", "x": 0.5, "y": 1.0,
            "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 12}}


def _layout(title: str, height: int, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {"title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
                              "height": height, "margin": {"l": 60, "r": 20, "t": 60, "b": 45},
                              "font": {"size": 11}, "hovermode": "closest", "showlegend": True,
                              "legend": {"orientation": "h", "y": -0.12, "x": 0}}
    layout.update(extra)
    return layout


def _median(values: Iterable[Any]) -> float | None:
    found = [x for v in values if (x := _num(v)) is not None]
    return statistics.median(found) if found else None


def _history_label(i: int, entry: Mapping[str, Any]) -> str:
    date = str(entry.get("date") or "")
    if not date:
        return f"#{i + 1}"
    return _e(date[:10]) + ("<br>" + _e(date[11:16]) if date[11:16] else "")


# ------------------------------------------------------------------ charts
def gate_figure(case: Mapping[str, Any], units: Mapping[str, str]) -> dict[str, Any] | None:
    """Each gated metric that has a reference: the band reference ± tolerance, this run and its runs; None if none."""
    verdicts = [v for v in case.get("verdicts") or []
                if _num(v.get("reference", v.get("baseline"))) is not None and _num(v.get("current")) is not None]
    if not verdicts:
        return None
    rows = _rows(len(verdicts), 0.55 / len(verdicts) if len(verdicts) > 1 else 0.0)
    data: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    layout: dict[str, Any] = {}
    runs = case.get("runs") or []
    for k, (v, domain) in enumerate(zip(verdicts, rows), 1):
        metric = str(v.get("metric"))
        reference = float(_num(v.get("reference", v.get("baseline"))))  # type: ignore[arg-type]
        current = float(_num(v.get("current")))  # type: ignore[arg-type]
        tolerance = _num(v.get("tolerance_pct")) or 0.0
        worse, better = _band(reference, tolerance, _direction(metric))
        status = str(v.get("status", ""))
        x, y = f"x{_ax(k)}", f"y{_ax(k)}"
        for lo, hi, fill in ((reference, worse, WORSE_FILL), (reference, better, BETTER_FILL)):
            shapes.append({"type": "rect", "xref": x, "yref": f"{y} domain", "x0": _round(min(lo, hi)),
                           "x1": _round(max(lo, hi)), "y0": 0, "y1": 1, "fillcolor": fill, "line": {"width": 0},
                           "layer": "below"})
        shapes.append({"type": "line", "xref": x, "yref": f"{y} domain", "x0": _round(reference),
                       "x1": _round(reference), "y0": 0, "y1": 1, "line": {"color": REFERENCE_COLOR, "width": 2}})
        values = [(r.get("run"), _num((r.get("metrics") or {}).get(metric)), bool(r.get("distorted")))
                  for r in runs]
        values = [(n, val, d) for n, val, d in values if val is not None]
        if values:
            data.append({"type": "scatter", "mode": "markers", "xaxis": x, "yaxis": y, "name": "each run",
                         "legendgroup": "runs", "showlegend": k == 1,
                         "x": _rounded(val for _, val, _ in values), "y": [0.5] * len(values),
                         "text": [f"run {_e(n)}" + (" (distorted, not counted)" if d else "") for n, _, d in values],
                         "hovertemplate": "%{text}: %{x}<extra></extra>",
                         "marker": {"size": 8, "color": "rgba(9,105,218,0.45)",
                                    "symbol": ["x-open" if d else "circle" for _, _, d in values]}})
        data.append({"type": "scatter", "mode": "markers", "xaxis": x, "yaxis": y, "name": "this run (median)",
                     "legendgroup": "current", "showlegend": k == 1, "x": [_round(current)], "y": [0.5],
                     "hovertemplate": f"this run: %{{x}} ({_e(_change(v))})<extra></extra>",
                     "marker": {"size": 16, "symbol": "diamond", "color": STATUS_COLOR.get(status, RUN_COLOR),
                                "line": {"width": 1, "color": "#24292f"}}})
        data.append({"type": "scatter", "mode": "markers", "xaxis": x, "yaxis": y, "name": "reference",
                     "legendgroup": "reference", "showlegend": k == 1, "x": [_round(reference)], "y": [0.5],
                     "hovertemplate": "reference: %{x}<extra></extra>",
                     "marker": {"size": 10, "symbol": "line-ns-open", "color": REFERENCE_COLOR}})
        points = [reference, current, worse, better, *(val for _, val, _ in values)]
        lo, hi = min(points), max(points)
        pad = (hi - lo) * 0.12 or abs(reference) * 0.05 or 1.0
        unit = _unit(units, metric)
        layout[f"xaxis{_ax(k)}"] = {"anchor": y, "range": [_round(lo - pad), _round(hi + pad)],
                                    "title": {"text": _e(unit), "standoff": 2}, "zeroline": False}
        layout[f"yaxis{_ax(k)}"] = {"anchor": x, "domain": list(domain), "range": [0, 1], "visible": False,
                                    "fixedrange": True}
        where = "noise band" if v.get("tolerance_from") == "noise band" else "tolerance"
        history = v.get("history_n")
        annotations.append(_subtitle(k, (
            f"<b>{_e(metric)}</b>: {_e(status)}, {_e(_fmt(current))} vs reference {_e(_fmt(reference))} "
            f"({_e(_change(v))}; {where} ±{_e(_fmt(tolerance, 1))}%"
            + (f", history of {_e(history)}" if history else "") + ")")))
    layout = _layout(f"Gates against the baseline: {_e(case.get('status', ''))}", 70 + 125 * len(verdicts),
                     shapes=shapes, annotations=annotations, **layout)
    layout["margin"] = {"l": 20, "r": 20, "t": 70, "b": 60}
    layout["legend"]["y"] = -0.6 / len(verdicts)
    return {"data": data, "layout": layout}


def _trend_metrics(case: Mapping[str, Any], gates: Mapping[str, Any]) -> list[str]:
    """The case's gated metrics (its verdicts'; else the run's gates that it measured)."""
    names = [str(v.get("metric")) for v in case.get("verdicts") or []]
    if not names:
        metrics = case.get("metrics") or {}
        names = [m for m in gates if m in metrics]
    return list(dict.fromkeys(names))


def trend_figure(case: Mapping[str, Any], units: Mapping[str, str], gates: Mapping[str, Any]) -> dict[str, Any] | None:
    """Each gated metric over the baseline's history, then this run (its median and every run), the reference."""
    metrics = _trend_metrics(case, gates)
    if not metrics:
        return None
    history = list(case.get("baseline_history") or [])
    runs = case.get("runs") or []
    verdicts = {str(v.get("metric")): v for v in case.get("verdicts") or []}
    ncols = min(len(metrics), 3)
    nrows = math.ceil(len(metrics) / ncols)
    cols = _columns(ncols)
    rows = _rows(nrows, 0.25 / nrows if nrows > 1 else 0.0)
    here = len(history)
    ticks = [_history_label(i, h) for i, h in enumerate(history)] + ["this run"]
    data: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    layout: dict[str, Any] = {}
    for k, metric in enumerate(metrics, 1):
        x, y = f"x{_ax(k)}", f"y{_ax(k)}"
        first = k == 1
        past = [(i, _num((h.get("metrics") or {}).get(metric))) for i, h in enumerate(history)]
        past = [(i, val) for i, val in past if val is not None]
        if past:
            data.append({"type": "scatter", "mode": "lines+markers", "xaxis": x, "yaxis": y, "name": "baseline history",
                         "legendgroup": "history", "showlegend": first, "x": [i for i, _ in past],
                         "y": _rounded(val for _, val in past), "line": {"color": REFERENCE_COLOR},
                         "marker": {"size": 7}, "hovertemplate": "%{y}<extra>baseline</extra>"})
        values = [(r.get("run"), _num((r.get("metrics") or {}).get(metric)), bool(r.get("distorted")),
                   bool(r.get("confirming"))) for r in runs]
        values = [item for item in values if item[1] is not None]
        if values:
            spread = 0.25 / max(len(values) - 1, 1)
            data.append({"type": "scatter", "mode": "markers", "xaxis": x, "yaxis": y, "name": "each run",
                         "legendgroup": "runs", "showlegend": first,
                         "x": [round(here + 0.12 + i * spread, 3) for i in range(len(values))],
                         "y": _rounded(val for _, val, _, _ in values),
                         "text": [f"run {_e(n)}" + (" (confirming)" if c else "") + (" (distorted)" if d else "")
                                  for n, _, d, c in values],
                         "hovertemplate": "%{text}: %{y}<extra></extra>",
                         "marker": {"size": 7, "color": "rgba(9,105,218,0.5)",
                                    "symbol": ["x-open" if d else "circle" for _, _, d, _ in values]}})
        verdict = verdicts.get(metric)
        current = _num(verdict.get("current")) if verdict else None
        if current is None:
            current = _num((case.get("metrics") or {}).get(metric))
        status = str((verdict or {}).get("status", case.get("status", "")))
        if current is not None:
            data.append({"type": "scatter", "mode": "markers", "xaxis": x, "yaxis": y, "name": "this run (median)",
                         "legendgroup": "current", "showlegend": first, "x": [here], "y": [_round(current)],
                         "hovertemplate": "this run: %{y}<extra></extra>",
                         "marker": {"size": 14, "symbol": "diamond", "color": STATUS_COLOR.get(status, RUN_COLOR),
                                    "line": {"width": 1, "color": "#24292f"}}})
        reference = _num(verdict.get("reference", verdict.get("baseline"))) if verdict else None
        if reference is not None:
            tolerance = _num(verdict.get("tolerance_pct")) or 0.0  # type: ignore[union-attr]
            worse, better = _band(reference, tolerance, _direction(metric))
            for lo, hi, fill in ((reference, worse, WORSE_FILL), (reference, better, BETTER_FILL)):
                shapes.append({"type": "rect", "xref": f"{x} domain", "yref": y, "x0": 0, "x1": 1,
                               "y0": _round(min(lo, hi)), "y1": _round(max(lo, hi)), "fillcolor": fill,
                               "line": {"width": 0}, "layer": "below"})
            data.append({"type": "scatter", "mode": "lines", "xaxis": x, "yaxis": y, "name": "reference",
                         "legendgroup": "reference", "showlegend": first, "x": [-0.4, here + 0.4],
                         "y": [_round(reference)] * 2, "hovertemplate": "reference: %{y}<extra></extra>",
                         "line": {"color": REFERENCE_COLOR, "dash": "dash", "width": 1.5}})
        row, col = divmod(k - 1, ncols)
        layout[f"xaxis{_ax(k)}"] = {"anchor": y, "domain": list(cols[col]), "tickmode": "array",
                                    "tickvals": list(range(here + 1)), "ticktext": ticks,
                                    "range": [-0.5, here + 0.6], "zeroline": False}
        unit = _unit(units, metric)
        layout[f"yaxis{_ax(k)}"] = {"anchor": x, "domain": list(rows[row]), "title": {"text": _e(unit)},
                                    "rangemode": "tozero" if metric == "failed" else "normal"}
        annotations.append(_subtitle(k, f"<b>{_e(metric)}</b>"))
    title = (f"Trend: the baseline's history ({len(history)} record{'s' if len(history) != 1 else ''}) and this run"
             if history else "Trend: no baseline history; this run only")
    layout = _layout(title, 90 + 270 * nrows, shapes=shapes, annotations=annotations, **layout)
    layout["margin"]["b"] = 70
    layout["legend"]["y"] = -0.25 / nrows
    return {"data": data, "layout": layout}


def baseline_percentiles(case: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """The baseline's median and p99 of each latency (the median over its history records), where it has them."""
    history = case.get("baseline_history") or []
    out: dict[str, dict[int, float]] = {}
    for key, _ in LATENCIES:
        family = key[: -len("_ms")]
        for pct, stat in ((50, "median"), (99, "p99")):
            value = _median((h.get("metrics") or {}).get(f"{stat}_{family}_ms") for h in history)
            if value is not None:
                out.setdefault(key, {})[pct] = value
    return out


def _percentiles(n: int) -> list[float]:
    """The percentile of each of ``n`` quantiles spread over 0..100 (the contract's 101: 0, 1, ... 100)."""
    if n == 101:
        return list(range(101))
    return [round(i * 100 / (n - 1), 3) for i in range(n)] if n > 1 else [100.0] * n


def latency_figure(case: Mapping[str, Any]) -> dict[str, Any]:
    """CDFs of TTFT, TPOT and ITL of the representative run (x: ms, y: percentile), the baseline's marked."""
    quantiles = (case.get("series") or {}).get("quantiles") or {}
    marks = baseline_percentiles(case)
    n_history = len(case.get("baseline_history") or [])
    cols = _columns(len(LATENCIES), 0.06)
    data: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    layout: dict[str, Any] = {}
    marked = False  # the baseline's marks have their legend entry
    for k, ((key, label), domain) in enumerate(zip(LATENCIES, cols), 1):
        x, y = f"x{_ax(k)}", f"y{_ax(k)}"
        values = list(quantiles.get(key) or [])
        if values:
            data.append({"type": "scatter", "mode": "lines", "xaxis": x, "yaxis": y, "name": "this run",
                         "legendgroup": "run", "showlegend": k == 1, "x": _rounded(values),
                         "y": _percentiles(len(values)),
                         "line": {"color": RUN_COLOR, "width": 2},
                         "hovertemplate": f"{label} p%{{y}}: %{{x}} ms<extra></extra>"})
        else:
            annotations.append({"text": f"no {label} values", "xref": f"{x} domain", "yref": f"{y} domain",
                                "x": 0.5, "y": 0.5, "showarrow": False})
        if key in marks:
            pcts = sorted(marks[key])
            data.append({"type": "scatter", "mode": "markers", "xaxis": x, "yaxis": y,
                         "name": f"baseline median / p99 (over {n_history} record{'s' if n_history != 1 else ''})",
                         "legendgroup": "baseline", "showlegend": not marked,
                         "x": [_round(marks[key][p]) for p in pcts], "y": pcts,
                         "hovertemplate": f"baseline {label} p%{{y}}: %{{x}} ms<extra></extra>",
                         "marker": {"size": 11, "symbol": "x", "color": "#cf222e"}})
            marked = True
        layout[f"xaxis{_ax(k)}"] = {"anchor": y, "domain": list(domain), "title": {"text": f"{label} ms"}}
        layout[f"yaxis{_ax(k)}"] = {"anchor": x, "range": [0, 101],
                                    "title": {"text": "percentile" if k == 1 else ""}}
        annotations.append(_subtitle(k, f"<b>{label}</b>"))
    run = (case.get("series") or {}).get("run")
    layout = _layout(f"Latency distributions (run {_e(run)})", 340, annotations=annotations, **layout)
    layout["legend"]["y"] = -0.22
    layout["margin"]["b"] = 70
    return {"data": data, "layout": layout}


def timeline_figure(case: Mapping[str, Any]) -> dict[str, Any]:
    """Every request (start to first token, first token to end, failures marked), output tok/s below."""
    series = case.get("series") or {}
    requests = series.get("requests") or {}
    starts = list(requests.get("start_s") or [])
    ttfts = list(requests.get("ttft_s") or [])
    latencies = list(requests.get("latency_s") or [])
    success = list(requests.get("success") or [True] * len(starts))
    wait_x: list[float | None] = []
    wait_y: list[int | None] = []
    gen_x: list[float | None] = []
    gen_y: list[int | None] = []
    failed_x: list[float | None] = []
    failed_y: list[int] = []
    for i, start in enumerate(starts):
        s = _num(start)
        if s is None:
            continue
        ttft = _num(ttfts[i]) if i < len(ttfts) else None
        latency = _num(latencies[i]) if i < len(latencies) else None
        ok = bool(success[i]) if i < len(success) else True
        if not ok or ttft is None:
            failed_x.append(_round(s))
            failed_y.append(i)
            continue
        wait_x += [_round(s), _round(s + ttft), None]
        wait_y += [i, i, None]
        if latency is not None:
            gen_x += [_round(s + ttft), _round(s + latency), None]
            gen_y += [i, i, None]
    data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "lines", "name": "to first token", "x": wait_x, "y": wait_y,
         "line": {"color": "#bf8700", "width": 1.5}, "hoverinfo": "skip"},
        {"type": "scatter", "mode": "lines", "name": "first token to end", "x": gen_x, "y": gen_y,
         "line": {"color": RUN_COLOR, "width": 1.5}, "hoverinfo": "skip"},
    ]
    if failed_x:
        data.append({"type": "scatter", "mode": "markers", "name": "failed", "x": failed_x, "y": failed_y,
                     "marker": {"symbol": "x", "size": 8, "color": "#cf222e"},
                     "hovertemplate": "request %{y} failed (sent at %{x} s)<extra></extra>"})
    rate = series.get("output_tok_s") or {}
    t, tok = list(rate.get("t_s") or []), list(rate.get("tok_s") or [])
    keep = _thin(min(len(t), len(tok)))
    data.append({"type": "scatter", "mode": "lines", "name": "output tok/s", "xaxis": "x2", "yaxis": "y2",
                 "x": _rounded(t[i] for i in keep), "y": _rounded(tok[i] for i in keep),
                 "line": {"color": "#8250df", "width": 1.5}, "fill": "tozeroy",
                 "hovertemplate": "%{x} s: %{y} tok/s<extra></extra>"})
    total = requests.get("sampled_from", len(starts))
    shown = f"{len(starts)} requests" if total == len(starts) else f"{len(starts)} of {_e(total)} requests, evenly sampled"
    layout = _layout(f"Requests over time (run {_e(series.get('run'))}; {shown})", 520,
                     xaxis={"anchor": "y", "matches": "x2", "showticklabels": False},
                     yaxis={"domain": [0.42, 1.0], "title": {"text": "request (by start)"}, "autorange": "reversed"},
                     xaxis2={"anchor": "y2", "title": {"text": "s since the first request"}},
                     yaxis2={"domain": [0.0, 0.32], "title": {"text": "output tok/s"}, "rangemode": "tozero"})
    layout["legend"]["y"] = -0.16
    layout["margin"]["b"] = 70
    return {"data": data, "layout": layout}


def gpu_figure(case: Mapping[str, Any]) -> dict[str, Any] | None:
    """GPU readings over time (mean over the GPUs in each sampling round); None without them."""
    gpu = (case.get("series") or {}).get("gpu") or {}
    t = list(gpu.get("t_s") or [])
    fields = [(key, label, unit) for key, label, unit in GPU_FIELDS
              if any(_num(v) is not None for v in gpu.get(key) or [])]
    if not t or not fields:
        return None
    keep = _thin(len(t))
    rows = _rows(len(fields), 0.04)
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {}
    for k, ((key, label, unit), domain) in enumerate(zip(fields, rows), 1):
        values = list(gpu.get(key) or [])
        data.append({"type": "scatter", "mode": "lines", "name": f"{label} {unit}", "xaxis": f"x{_ax(k)}",
                     "yaxis": f"y{_ax(k)}", "x": _rounded(t[i] for i in keep),
                     "y": _rounded(values[i] if i < len(values) else None for i in keep),
                     "hovertemplate": f"%{{x}} s: %{{y}} {unit}<extra>{label}</extra>"})
        last = k == len(fields)
        layout[f"xaxis{_ax(k)}"] = {"anchor": f"y{_ax(k)}", "showticklabels": last,
                                    **({"matches": "x"} if k > 1 else {}),
                                    **({"title": {"text": "s since the first request"}} if last else {})}
        layout[f"yaxis{_ax(k)}"] = {"anchor": f"x{_ax(k)}", "domain": list(domain),
                                    "title": {"text": _e(unit), "standoff": 4}}
    layout = _layout("GPU readings over time (mean over the engine's GPUs)", 80 + 110 * len(fields), **layout)
    layout["showlegend"] = True
    layout["legend"] = {"orientation": "v", "x": 1.01, "y": 1}
    layout["margin"]["r"] = 150
    return {"data": data, "layout": layout}


def engine_figure(case: Mapping[str, Any]) -> dict[str, Any] | None:
    """The engine's scraped gauges over time: requests running and waiting, KV cache usage (%); None without them."""
    engine = (case.get("series") or {}).get("engine") or {}
    t = list(engine.get("t_s") or [])
    if not t:
        return None
    keep = _thin(len(t))
    data: list[dict[str, Any]] = []
    for key, values in engine.items():
        if key == "t_s" or not isinstance(values, list) or not any(_num(v) is not None for v in values):
            continue
        fraction = key in ("kv_usage", "cache_hit_rate")
        ys = [values[i] if i < len(values) else None for i in keep]
        if fraction:
            ys = [None if _num(v) is None else float(v) * 100.0 for v in ys]
        data.append({"type": "scatter", "mode": "lines", "name": _e(key + (" %" if fraction else "")),
                     "x": _rounded(t[i] for i in keep), "y": _rounded(ys),
                     "yaxis": "y2" if fraction else "y", "line": {"dash": "dot" if fraction else "solid"},
                     "hovertemplate": "%{x} s: %{y}<extra>" + _e(key) + "</extra>"})
    if not data:
        return None
    layout = _layout("The engine's metrics over time", 300,
                     xaxis={"title": {"text": "s since the first request"}},
                     yaxis={"title": {"text": "requests"}, "rangemode": "tozero"},
                     yaxis2={"title": {"text": "%"}, "overlaying": "y", "side": "right", "range": [0, 100],
                             "tickmode": "linear", "tick0": 0, "dtick": 25, "showgrid": False})
    layout["legend"]["y"] = -0.3
    layout["margin"]["r"] = 50
    return {"data": data, "layout": layout}


def no_gpu_reason(case: Mapping[str, Any]) -> str:
    """Why a case has no GPU readings, in one line."""
    engine = case.get("engine")
    if engine == "sim":
        return "No GPU telemetry: the simulated engine runs on no GPU."
    if engine == "external":
        return "No GPU telemetry: an external endpoint's GPUs are not sampled."
    return "No GPU telemetry was recorded for this run (NVML was not available)."


def case_figures(case: Mapping[str, Any], units: Mapping[str, str],
                 gates: Mapping[str, Any]) -> list[tuple[str, dict[str, Any] | str]]:
    """The case's charts in page order: (kind, figure) or (kind, one line saying why there is none)."""
    if not case.get("series"):
        return []
    out: list[tuple[str, dict[str, Any] | str]] = []
    gate = gate_figure(case, units)
    out.append(("gates", gate if gate is not None else
                "No baseline reference to compare with" + (f" (status: {case.get('status')})." if case.get("status")
                                                           else ".")))
    trend = trend_figure(case, units, gates)
    if trend is not None:
        out.append(("trend", trend))
    out.append(("latency", latency_figure(case)))
    out.append(("timeline", timeline_figure(case)))
    gpu = gpu_figure(case)
    out.append(("gpu", gpu if gpu is not None else no_gpu_reason(case)))
    engine = engine_figure(case)
    out.append(("engine", engine if engine is not None else
                "No engine metrics over time: the engine's /metrics was not scraped during the run."))
    return out


# ------------------------------------------------------------------ the page
STYLE = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1400px;padding:16px 24px;
color:#24292f;background:#fff}
h1{font-size:22px;margin:4px 0 12px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:24px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 12px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.meta th{width:140px}
.status{display:inline-block;border-radius:10px;padding:0 8px;color:#fff;font-size:12px;font-weight:600}
.note{color:#57606a;font-size:13px;margin:4px 0}
pre.message{white-space:pre-wrap;background:#f6f8fa;border:1px solid #d0d7de;padding:8px;font-size:12px;margin:6px 0}
.figure{margin:8px 0 4px;min-height:100px}
ul{margin:4px 0 8px 18px;padding:0;font-size:13px}
.case{border-top:1px dashed #d0d7de;margin-top:20px}
"""

# Charts near the viewport are drawn first (as it scrolls), the rest one per tick after, so a page of hundreds
# of charts is usable at once; <body data-charts-drawn="all"> says every one is drawn.
RENDER = """
(function(){
  var config={displaylogo:false,responsive:true};
  var blocks=document.querySelectorAll('script[type="application/json"][data-figure]');
  var pending={}, order=[], drawn=0, next=0;
  for(var i=0;i<blocks.length;i++){var id=blocks[i].getAttribute('data-figure');pending[id]=blocks[i];order.push(id);}
  function done(){if(drawn===order.length){document.body.setAttribute('data-charts-drawn','all');}}
  function draw(id){
    var block=pending[id];
    if(!block){return;}
    delete pending[id];
    var div=document.getElementById(id);
    try{var fig=JSON.parse(block.textContent);Plotly.newPlot(div,fig.data,fig.layout,config);}
    catch(err){div.textContent='This chart could not be drawn: '+err;console.error('llmperf chart',id,err);}
    drawn++;
    done();
  }
  function step(){
    while(next<order.length && !pending[order[next]]){next++;}
    if(next<order.length){draw(order[next]);setTimeout(step,0);}
  }
  if('IntersectionObserver' in window){
    var seen=new IntersectionObserver(function(entries){
      entries.forEach(function(e){if(e.isIntersecting){seen.unobserve(e.target);draw(e.target.id);}});
    },{rootMargin:'800px 0px'});
    order.forEach(function(id){seen.observe(document.getElementById(id));});
  }
  done();
  setTimeout(step,0);
})();
"""


def _status(status: Any) -> str:
    color = STATUS_COLOR.get(str(status), "#6e7781")
    return f'<span class="status" style="background:{color}">{_e(status)}</span>'


def _anchor(case_id: Any) -> str:
    return "case-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in str(case_id))


def _json_for_script(data: Any) -> str:
    """JSON safe inside a <script> block: nothing in it can close the tag or start markup."""
    text = json.dumps(_finite(data), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {str(k): _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def _header(report: Mapping[str, Any]) -> list[str]:
    env = report.get("environment") or {}
    rows: list[tuple[str, str]] = []
    nodes = env.get("node") or {}
    node_bits = []
    for engine, node in nodes.items() if isinstance(nodes, Mapping) else ():
        node = node or {}
        gpus = ",".join(str(i) for i in node.get("gpu_indices") or [])
        node_bits.append(f"{engine}: " + ", ".join(str(x) for x in (
            node.get("gpu_name"), f"driver {node['driver_version']}" if node.get("driver_version") else None,
            f"GPUs {gpus}" if gpus else None, node.get("source"),
            "live" if node.get("live") else None) if x))
    rows.append(("node", _e(env.get("gpus") or "–") + "".join(f"<br>{_e(b)}" for b in node_bits)))
    rows.append(("model", _e(env.get("model") or "–")
                 + (f" (loaded as {_e(env['model_override'])})" if env.get("model_override") else "")))
    rows.append(("suite", _e(env.get("suite") or "–")))
    booted = env.get("engines_booted") or []
    engines = [f"{b.get('config')}: {b.get('version') or 'version unknown'}"
               + (f" (written for {b['version_expected']})" if b.get("version_expected") else "")
               + (f" at {b['endpoint']}" if b.get("endpoint") else "") for b in booted if isinstance(b, Mapping)]
    rows.append(("engines", "<br>".join(_e(x) for x in engines) or _e(", ".join(env.get("engines") or []) or "–")))
    rows.append(("when", _e(env.get("started_at") or "–")))
    rows.append(("plugin", _e(f"pytest-llmperf {env.get('plugin_version', '?')}")
                 + (_e(f"; Python {env['python']}") if env.get("python") else "")
                 + (_e(f" on {env['platform']}") if env.get("platform") else "")))
    gates = env.get("gates_pct") or {}
    if gates:
        rows.append(("gates", _e(", ".join(f"{m} ±{_fmt(p, 1)}%" for m, p in gates.items()))))
    if env.get("baseline_dir"):
        rows.append(("baselines", _e(env["baseline_dir"]) + (" (updated by this run)" if env.get("update_baselines")
                                                            else "")))
    slowdown = _num(env.get("sim_slowdown"))
    if slowdown is not None and slowdown != 1.0:
        rows.append(("sim slowdown", _e(f"{slowdown:g}x (fault injected)")))
    if env.get("num_prompts_override"):
        rows.append(("prompts", _e(f"--num-prompts {env['num_prompts_override']} (a quick run)")))
    out = ['<table class="meta">'] + [f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows] + ["</table>"]
    notes = env.get("notes") or []
    if notes:
        out.append("<h3>Notes</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    return out


def _overview(cases: Sequence[Mapping[str, Any]], units: Mapping[str, str]) -> list[str]:
    counts: dict[str, int] = {}
    for case in cases:
        counts[str(case.get("status", ""))] = counts.get(str(case.get("status", "")), 0) + 1
    out = ['<h2 id="overview">Status</h2>',
           '<p class="note">' + ", ".join(f"{_status(s)} {n}" for s, n in counts.items()) + "</p>",
           "<table><tr><th>case</th><th>status</th>"
           f"<th>total throughput {_e(_unit(units, 'total_token_throughput'))}</th><th>change</th>"
           f"<th>mean TPOT {_e(_unit(units, 'mean_tpot_ms'))}</th><th>change</th>"
           f"<th>mean TTFT {_e(_unit(units, 'mean_ttft_ms'))}</th><th>failed</th></tr>"]
    for case in cases:
        metrics = case.get("metrics") or {}
        verdicts = {v.get("metric"): v for v in case.get("verdicts") or []}
        out.append(
            f'<tr><td><a href="#{_anchor(case.get("id"))}">{_e(case.get("id"))}</a></td>'
            f"<td>{_status(case.get('status', ''))}{' colocated' if case.get('colocated') else ''}</td>"
            f'<td class="num">{_e(_fmt(metrics.get("total_token_throughput"), 1))}</td>'
            f'<td class="num">{_e(_change(verdicts.get("total_token_throughput")))}</td>'
            f'<td class="num">{_e(_fmt(metrics.get("mean_tpot_ms"), 2))}</td>'
            f'<td class="num">{_e(_change(verdicts.get("mean_tpot_ms")))}</td>'
            f'<td class="num">{_e(_fmt(metrics.get("mean_ttft_ms"), 1))}</td>'
            f'<td class="num">{_e(_fmt(metrics.get("failed"), 0))}</td></tr>')
    out.append("</table>")
    return out


def _case_text(case: Mapping[str, Any]) -> list[str]:
    out = [f'<p>{_status(case.get("status", ""))} <span class="note">outcome: {_e(case.get("outcome", ""))}'
           + (f"; {_e(case['confirm_runs'])} confirming run(s)" if case.get("confirm_runs") else "")
           + (f"; baseline: {_e(case['baseline_file'])}" if case.get("baseline_file") else "") + "</span></p>"]
    if case.get("message"):
        out.append(f'<pre class="message">{_e(case["message"])}</pre>')
    items = [f"requests failed: {r}" for r in case.get("failure_reasons") or []]
    items += [f"changed since the baseline: {c}" for c in case.get("changes") or []]
    items += [f"the engine says: {c}" for c in case.get("engine_evidence") or []]
    apparatus = case.get("apparatus") or {}
    if apparatus.get("runs_distorted"):
        items.append(f"{apparatus['runs_distorted']} of {apparatus.get('runs', '?')} runs left out as distorted: "
                     + "; ".join(str(c) for c in apparatus.get("causes") or []))
    if case.get("suspect"):
        items.append(f"suspect: {case['suspect']}")
    if case.get("colocated_with"):
        items.append("ran while other engines ran on the same node (colocated): "
                     + ", ".join(str(c) for c in case["colocated_with"]))
    node = case.get("node") or {}
    if node.get("worker", "main") != "main" or case.get("gpu_uuids"):
        items.append(f"ran on {node.get('host', '?')} ({node.get('worker', 'main')}, {node.get('source', '?')}), "
                     f"GPUs {', '.join(case.get('gpu_uuids') or []) or 'not leased'}")
    if items:
        out.append("<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>")
    return out


def html_report(report: Mapping[str, Any]) -> str:
    """The whole page (see the module's doc); HtmlReportUnavailable without plotly."""
    plotly_js = _plotly_js()
    env = report.get("environment") or {}
    units = dict(report.get("metric_units") or {})
    gates = dict(env.get("gates_pct") or {})
    cases = [c for c in report.get("cases") or [] if isinstance(c, Mapping)]
    body: list[str] = ["<h1>pytest-llmperf report</h1>", *_header(report), *_overview(cases, units)]
    updates = report.get("baseline_updates") or []
    if updates:
        body.append("<h2>Baseline updates</h2><ul>")
        for u in updates:
            lines = "".join(f"<br><code>{_e(line)}</code>" for line in u.get("lines") or [])
            body.append(f"<li>{_e(u.get('case'))} &rarr; {_e(u.get('path'))}{lines}</li>")
        body.append("</ul>")
    figures: list[tuple[str, dict[str, Any]]] = []
    by_config: dict[str, list[Mapping[str, Any]]] = {}
    for case in cases:
        by_config.setdefault(f"{case.get('engine')}/{case.get('config')}", []).append(case)
    for config_id, members in by_config.items():
        version = next((c.get("engine_version") for c in members if c.get("engine_version")), None)
        body.append(f"<h2>{_e(config_id)}" + (f" <small>(engine {_e(version)})</small>" if version else "") + "</h2>")
        for case in members:
            anchor = _anchor(case.get("id"))
            body.append(f'<section class="case" id="{anchor}"><h3>{_e(case.get("id"))}</h3>')
            body += _case_text(case)
            charts = case_figures(case, units, gates)
            if not charts:
                body.append('<p class="note">No charts: nothing was measured for this case.</p>')
            for kind, figure in charts:
                if isinstance(figure, str):
                    body.append(f'<p class="note" data-kind="{kind}">{_e(figure)}</p>')
                    continue
                div = f"fig-{len(figures) + 1}"
                figures.append((div, figure))
                height = int(figure.get("layout", {}).get("height") or 300)
                body.append(f'<div class="figure" id="{div}" data-kind="{kind}" style="height:{height}px"></div>')
            body.append("</section>")
    scripts = [f'<script type="application/json" data-figure="{div}">{_json_for_script(fig)}</script>'
               for div, fig in figures]
    title = f"pytest-llmperf report: {env.get('gpus') or ''} {env.get('model') or ''}".strip()
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="pytest-llmperf {_e(env.get("plugin_version", ""))}">',
        f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style>",
        f"<script>{plotly_js}</script>",
        "</head><body>",
        *body,
        *scripts,
        f"<script>{RENDER}</script>",
        "</body></html>",
        "",
    ])
