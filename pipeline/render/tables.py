"""Tables a person reads in the terminal: a study's front, a comparison of studies and the gain of one setting
over another, each legible in 80 to 100 columns with no value cut short and no row wrapped."""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

import pandas as pd
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from pipeline.measure.gain import Gain
from pipeline.measure.registry import REGISTRY
from pipeline.render.plots import baseline_rows

__all__ = ["coverage_table", "front_summary", "front_table", "gain_table", "hypervolume_table", "setting_text"]

# After the settings, a front table shows the study's objectives, then these where they were measured.
METRIC_COLUMNS = ("field_accuracy", "exact_match_rate", "label_accuracy", "schema_valid_rate", "latency_p50_ms",
                  "latency_p95_ms", "cache_hit_rate", "ttft_p50_ms", "decode_tokens_per_s")


# Short headers of the settings; a metric's is declared with it (pipeline.measure.registry).
HEADERS = {"num_ctx": "ctx", "num_predict": "predict", "temperature": "temp", "few_shot": "shots",
           "prompt_variant": "prompt", "example_selection": "examples",
           **{name: m.header for name, m in REGISTRY.items() if m.header}}


def gain_table(gains: list[Gain], title: str, *, names: tuple[str, str] = ("baseline", "candidate")) -> Group:
    """Both settings' values and the change, with its 95% paired-bootstrap interval: a ratio for latencies
    (below 1: faster), a difference for accuracies (above 0: more accurate). The settings' ``names`` head their
    columns, or ``A`` and ``B`` (named in the legend) when the names are too long for the terminal's width; the
    title and the legend are lines of prose above and below the table.

    Returns:
        The title, the table and its legend, to print together.
    """
    legend = ("change: × a ratio of latencies (below 1: faster), + a difference of accuracies (above 0: more "
              "accurate); [low, high]: its 95% paired bootstrap interval over the requests")
    rows = [(g.metric, _cell(g.baseline), _cell(g.candidate),
             f"×{g.change:.3g} [{g.low:.3g}, {g.high:.3g}]" if g.kind == "ratio"
             else f"{g.change:+.3g} [{g.low:+.3g}, {g.high:+.3g}]") for g in gains]

    def table(headers: tuple[str, str]) -> Table:
        shown = _compact()
        for column in ("metric", *headers, "change"):
            shown.add_column(column, justify="left" if column == "metric" else "right", no_wrap=True)
        for row in rows:
            shown.add_row(*row)
        return shown

    return Group(_title(title),
                 _FirstThatFits((table(names), _legend(legend)),
                                (table(("A", "B")), _legend(f"A: {names[0]}\nB: {names[1]}\n{legend}"))))


def hypervolume_table(summary: pd.DataFrame, reference: dict[str, float] | None = None) -> Group:
    """Each study of a comparison: its trials, feasible trials, front size and hypervolume, from ``summary``
    (columns ``study``, ``trials``, ``feasible``, ``front_size``, ``hypervolume``), and what the hypervolume is
    measured against (the shared ``reference`` point, by objective) as a line under the table.

    Returns:
        The title, the table and its legend, to print together.
    """
    table = _compact()
    table.add_column("study", overflow="fold")  # a name too long for the terminal folds: never cut
    for column in ("trials", "feasible", "front", "hypervolume"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in summary.itertuples():
        table.add_row(str(row.study), str(row.trials), str(row.feasible), str(row.front_size),
                      f"{row.hypervolume:.4f}")
    point = ", ".join(f"{m}={v:.4g}" for m, v in (reference or {}).items())
    return Group(_title("hypervolume (0..1, larger is better)"), table,
                 _legend("hypervolume: the share of one box that the study's front dominates, from the best value of "
                         "each objective over these studies' feasible trials to one shared reference point"
                         + (f": {point}" if point else "")))


def coverage_table(coverage: pd.DataFrame) -> Group:
    """The pairwise coverage of a comparison's fronts: ``coverage.loc[a, b]``, the share of study ``b``'s front
    that study ``a``'s front weakly dominates, in row ``a`` and column ``b``; ``-`` on the diagonal and where a
    front is empty (NaN). The columns are headed by the studies' names when they fit the terminal's width, else
    by a letter, the one each row's study is given (and when even that is too wide, the rows too, with the
    names in the legend: 15 studies fit 80 columns).

    Returns:
        The title, the table and its legend, to print together.
    """
    names = [str(n) for n in coverage.index]
    letters = [_letter(i) for i in range(len(names))]
    cells = [["-" if a == b or pd.isna(coverage.loc[a, b]) else f"{coverage.loc[a, b]:.2f}"
              for b in coverage.columns] for a in coverage.index]
    legend = ("coverage: the share of the column study's front that the row study's front weakly dominates "
              "(1: everywhere at least as good); -: the study itself, or an empty front")

    def table(rows: list[str], columns: list[str], padding: int = 1) -> Table:
        shown = _compact(padding)
        shown.add_column("", overflow="fold")
        for column in columns:
            shown.add_column(column, justify="right", no_wrap=True)
        for row, values in zip(rows, cells):
            shown.add_row(row, *values)
        return shown

    return Group(_title("coverage (row over column)"), _FirstThatFits(
        (table(names, names), _legend(legend)),
        (table([f"{letter} {name}" for letter, name in zip(letters, names)], letters),
         _legend(f"{legend}; the columns are the studies by their rows' letters")),
        (table(letters, letters, padding=0),  # the box's column separator alone between columns
         _legend("".join(f"{letter}: {name}\n" for letter, name in zip(letters, names)) + legend))))


def _letter(index: int) -> str:
    """A, B, … Z, then A2, B2, …: a study's short name in a table too narrow for its name."""
    return string.ascii_uppercase[index % 26] + (str(index // 26 + 1) if index >= 26 else "")


def _compact(padding: int = 1) -> Table:
    """A table as the reports show them: a rule under the header, no frame. Its title is a line of its own above
    it (:func:`_title`: a table's own title wraps at the table's width, often narrower than the title)."""
    return Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold", padding=(0, padding))


def _title(text: str) -> Text:
    """A table's title, on a line of its own above it: as wide as the terminal, not the table."""
    return Text(text, style="table.title")


def _legend(text: str) -> Text:
    """A table's explanation, printed under it: lines of prose, each wrapped at the terminal's width."""
    return Text(text, style="dim")


class _FirstThatFits:
    """The first of some ``(table, legend)`` renderings whose table fits the console's width with no cell cut or
    wrapped, else the last one; its legend is printed under it."""

    def __init__(self, *choices: tuple[Table, Text]) -> None:
        self.choices = choices

    def chosen(self, console: Console, options: ConsoleOptions) -> tuple[Table, Text]:
        unbounded = options.update_width(10_000)
        for table, legend in self.choices[:-1]:
            if Measurement.get(console, unbounded, table).maximum <= options.max_width:
                return table, legend
        return self.choices[-1]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.chosen(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.chosen(console, options)[0])


def front_table(front: pd.DataFrame, title: str, *, settings: Sequence[str], objectives: Sequence[str] = (),
                trials: pd.DataFrame | None = None) -> Table:
    """A table of front trials: the ``settings`` (column names) that differ between ``trials`` (all, without
    them), the objectives and the headline metrics, with the 95% interval where measured. The baseline trial
    (the settings served today) is its own last row when it is not on the front, and marked where it is. Front
    points that the measurements cannot tell apart (``racing.tied_points``) say which others they are tied with
    and how that was judged, and the requests each point was measured on are shown when they differ (racing,
    topping up)."""
    caption = r"value \[low, high]: 95% bootstrap interval over the trial's requests"
    tied = "tied_with" in front.columns and bool(front["tied_with"].astype(bool).any())
    if tied:
        caption += f"; tied: the front points this one cannot be told from ({_ties_judged(front)})"
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


def _ties_judged(front: pd.DataFrame) -> str:
    """How the front's ties were judged (``trials_frame``'s ``ties`` column; a table without it: unpaired)."""
    said = [str(v) for v in front.get("ties", pd.Series(dtype=object)).dropna().unique() if v]
    return "; ".join(said) or "unpaired: their intervals overlap on every objective"


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
    ``value [low, high]`` (and schema validity when it is no objective, the cache's hit rate where a point has a
    cache), then each point's settings that vary
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
    metrics = [m for m in dict.fromkeys([*objectives, "schema_valid_rate", "cache_hit_rate"])
               if m in rows.columns and not rows[m].isna().all()]
    legend = Text("[low, high]: the 95% interval over the trial's requests"
                  + (f"; =n: tied with trial n ({_ties_judged(front)})" if tied else "")
                  + ("; base: the baseline, the settings served today" if not served.empty else "")
                  + "; --wide: every setting and metric as a column", style="dim")
    values = _compact()
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
    bound = [(str(row["number"]) + (" base" if bool(row.get("baseline", False)) else ""), str(row.get("bottleneck")))
             for _, row in rows.iterrows() if row.get("bottleneck") not in (None, "unknown")]
    where = Text("where the time goes: " + ", ".join(f"{label} {kind}" + ("-bound" if kind != "mixed" else "")
                                                     for label, kind in bound)
                 + " (the sentence with its levers: each trial's bottleneck tag)", style="dim")
    return Group(_title(title), values, lines, *([where] if bound else []), legend)
