"""Tables a person reads in the terminal: a study's front and the gain of one setting over another."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from pipeline.measure.gain import Gain
from pipeline.measure.registry import REGISTRY
from pipeline.render.plots import baseline_rows

__all__ = ["front_summary", "front_table", "gain_table", "setting_text"]

# After the settings, a front table shows the study's objectives, then these where they were measured.
METRIC_COLUMNS = ("field_accuracy", "exact_match_rate", "label_accuracy", "schema_valid_rate", "latency_p50_ms",
                  "latency_p95_ms", "ttft_p50_ms", "decode_tokens_per_s")


# Short headers of the settings; a metric's is declared with it (pipeline.measure.registry).
HEADERS = {"num_ctx": "ctx", "num_predict": "predict", "temperature": "temp", "few_shot": "shots",
           "prompt_variant": "prompt", "example_selection": "examples",
           **{name: m.header for name, m in REGISTRY.items() if m.header}}


def gain_table(gains: list[Gain], title: str, *, names: tuple[str, str] = ("baseline", "candidate")) -> Table:
    """Both settings' values and the change, with its 95% paired-bootstrap interval: a ratio for latencies
    (below 1: faster), a difference for accuracies (above 0: more accurate)."""
    table = Table(title=title, caption=r"change \[low, high]: 95% paired bootstrap over the requests")
    for column in ("metric", names[0], names[1], "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for g in gains:
        change = (f"×{g.change:.3g} [{g.low:.3g}, {g.high:.3g}]" if g.kind == "ratio"
                  else f"{g.change:+.3g} [{g.low:+.3g}, {g.high:+.3g}]")
        table.add_row(g.metric, _cell(g.baseline), _cell(g.candidate), change)
    return table


def front_table(front: pd.DataFrame, title: str, *, settings: Sequence[str], objectives: Sequence[str] = (),
                trials: pd.DataFrame | None = None) -> Table:
    """A table of front trials: the ``settings`` (column names) that differ between ``trials`` (all, without
    them), the objectives and the headline metrics, with the 95% interval where measured. The baseline trial
    (the settings served today) is its own last row when it is not on the front, and marked where it is. Front
    points that the measurements cannot tell apart (``racing.ties``) say which others they are tied with, and the
    requests each point was measured on are shown when they differ (racing, topping up)."""
    caption = r"value \[low, high]: 95% bootstrap interval over the trial's requests"
    tied = "tied_with" in front.columns and bool(front["tied_with"].astype(bool).any())
    if tied:
        caption += "; tied: the front points whose intervals overlap this one's on every objective"
    table = Table(title=title, caption=caption)
    table.add_column("trial", justify="right")
    if tied:
        table.add_column("tied with", justify="right")
    settings = [c for c in settings if c in front.columns]
    varying = [c for c in settings if trials is not None and c in trials.columns and trials[c].nunique() > 1]
    settings = varying or settings
    served = baseline_rows(trials) if trials is not None else front.iloc[0:0]
    rows = pd.concat([front, served[~served["number"].isin(front["number"])]]) if not served.empty else front
    metrics = list(dict.fromkeys([*objectives, *METRIC_COLUMNS]))
    if "requests_measured" in rows.columns and rows["requests_measured"].nunique() > 1:
        metrics.append("requests_measured")
    columns = settings + [c for c in metrics if c in rows.columns and not rows[c].isna().all()]
    for column in columns:
        table.add_column(HEADERS.get(column, column), justify="right")
    for _, row in front.iterrows():
        label = f"{row['number']} baseline" if bool(row.get("baseline", False)) else str(row["number"])
        table.add_row(label, *([row["tied_with"] or ""] if tied else []), *(_with_interval(row, c) for c in columns))
    for _, row in served[~served["number"].isin(front["number"])].iterrows():
        table.add_section()
        table.add_row(f"{row['number']} baseline, off the front", *([""] if tied else []),
                      *(_with_interval(row, c) for c in columns))
    return table


def _with_interval(row: pd.Series, column: str) -> str:
    low, high = row.get(f"{column}_ci95_low"), row.get(f"{column}_ci95_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return _cell(row[column])
    return f"{_cell(row[column])} [{_cell(low)}, {_cell(high)}]"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)



# How a setting is written in a front summary's one `setting` column (the others: name=value).
_SHORT = {"num_ctx": "ctx", "num_predict": "np", "temperature": "t", "top_p": "p", "top_k": "k"}
_SHOTS = ("few_shot", "example_selection")


def setting_text(row: pd.Series, varying: Sequence[str]) -> str:
    """The ``varying`` settings of one trial in one short line: ``ctx=4096 np=96 t=0.26 3×static minimal
    fmt=schema`` (the few-shot count with its selection, the prompt variant by its name)."""
    parts = []
    for name in varying:
        value = row.get(name)
        if name == "example_selection" and "few_shot" in varying:
            continue
        if name in _SHOTS:
            shots = int(row.get("few_shot", 0) or 0)
            parts.append(f"{shots}×{row.get('example_selection', '')}" if shots else "0-shot")
        elif name == "prompt_variant":
            parts.append(str(value))
        elif name == "format":
            parts.append(f"fmt={value}")
        elif isinstance(value, float):
            parts.append(f"{_SHORT.get(name, name)}={value:.2f}")
        else:
            parts.append(f"{_SHORT.get(name, name)}={value}")
    return " ".join(parts)


def _with_range(row: pd.Series, column: str) -> str:
    """``0.41 [0.29, 0.53]``: the value and its 95% interval, which a latency percentile's often is not centred
    on (the value alone where it has none)."""
    return "-" if pd.isna(row.get(column)) else _with_interval(row, column)


def front_summary(front: pd.DataFrame, title: str, *, settings: Sequence[str], objectives: Sequence[str] = (),
                  trials: pd.DataFrame | None = None) -> Group:
    """The front as a terminal shows it in 80 to 100 columns: one table of each point's objectives as
    ``value [low, high]`` (and schema validity when it is no objective), then each point's settings that vary
    between ``trials`` on one line. A point tied with others says ``=n``; the baseline (the settings served today)
    is marked ``base``, below a line when it is off the front. The full table is :func:`front_table`
    (``--wide``), and every column is on the MLflow run.

    Returns:
        The two tables, to print together.
    """
    tied = "tied_with" in front.columns and bool(front["tied_with"].astype(bool).any())
    names = [c for c in settings if c in front.columns]
    varying = [c for c in names if trials is not None and c in trials.columns and trials[c].nunique() > 1] or names
    served = baseline_rows(trials) if trials is not None else front.iloc[0:0]
    extra = served[~served["number"].isin(front["number"])] if not served.empty else served
    rows = pd.concat([front, extra]) if not extra.empty else front
    metrics = [m for m in dict.fromkeys([*objectives, "schema_valid_rate"])
               if m in rows.columns and not rows[m].isna().all()]
    legend = Text("[low, high]: the 95% interval over the trial's requests"
                  + ("; =n: tied with trial n (their intervals overlap on every objective)" if tied else "")
                  + ("; base: the baseline, the settings served today" if not served.empty else "")
                  + "; --wide: every setting and metric as a column", style="dim")
    values = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    lines = Table(box=None, pad_edge=False, show_header=False)
    values.add_column("trial", justify="right", no_wrap=True)
    for metric in metrics:
        values.add_column(HEADERS.get(metric, metric), justify="right", no_wrap=True)
    lines.add_column("trial", justify="right", no_wrap=True)
    lines.add_column("setting")
    on_front = set(front["number"])
    for _, row in rows.iterrows():
        label = str(row["number"])
        if tied and row.get("tied_with"):
            label += "=" + ",".join(n.strip() for n in str(row["tied_with"]).split(","))
        if bool(row.get("baseline", False)):
            label += " base"
            if row["number"] not in on_front:
                values.add_section()
        values.add_row(label, *(_with_range(row, m) for m in metrics))
        lines.add_row(f"{label}:", setting_text(row, varying))
    return Group(values, lines, legend)
