"""Command line: ``pipeline init``, ``study``, ``compare``, ``promote``, ``compare-settings``.

Exit codes: 0 success, 1 runtime failure, 2 bad input, 3 promotion refused.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import optuna
from rich.console import Console
from rich.text import Text
from rich.progress import Progress, TaskID
from rich.table import Table

from pipeline.render.plots import baseline_rows, plot_fronts, plot_fronts_html
from pipeline.search.fronts import SETTINGS
from pipeline.search.compare import compare, load_fronts
from pipeline.engines.registry import BACKENDS
from pipeline.search.config import SAMPLERS, StudyConfig, load_config, load_settings
from pipeline.errors import ConfigError, InputError, PipelineError, redact_url
from pipeline.tracking.locations import resolve_stores
from pipeline.search.prepare import PreparedStudy, prepare_study
from pipeline.promote.compare_settings import compare_settings
from pipeline.measure.gain import Gain, slower
from pipeline.promote.promotion import CHAMPION, PromotionPolicy, PromotionRefused, promote
from pipeline.job.scaffold import scaffold
from pipeline.search.storage import open_storage
from pipeline.search.study import run_study
from pipeline.tracking.runs import log_comparison

__all__ = ["main"]

SETTING_COLUMNS = SETTINGS
# After the settings, a front table shows the study's objectives, then these where they were measured.
METRIC_COLUMNS = ("field_accuracy", "exact_match_rate", "label_accuracy", "schema_valid_rate", "latency_p50_ms",
                  "latency_p95_ms", "ttft_p50_ms", "decode_tokens_per_s")


HEADERS = {"num_ctx": "ctx", "num_predict": "predict", "temperature": "temp", "few_shot": "shots",
           "prompt_variant": "prompt", "example_selection": "examples", "schema_valid_rate": "valid",
           "field_accuracy": "fields", "label_accuracy": "label", "exact_match_rate": "exact",
           "latency_p50_ms": "p50 ms", "latency_p95_ms": "p95 ms", "ttft_p50_ms": "ttft ms",
           "decode_tokens_per_s": "tok/s", "requests_measured": "requests"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _whole_number(text: str) -> int:
    # MLproject passes numbers through as given; accept "3" and "3.0", not "3.5".
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("configs/task_api.yaml"), help="study config YAML")
    parser.add_argument("--backend", type=_optional(_choice(BACKENDS)),
                        help=f"inference backend: {', '.join(BACKENDS)} (default: the config's)")
    parser.add_argument("--model", help="the model: an Ollama model name (ollama, auto), a GGUF file (embedded, "
                                        "llama-server; default: the bundled SmolLM2-135M-Instruct) or the model id "
                                        "an OpenAI-compatible server serves (openai; default: its only one)")
    parser.add_argument("--host", help="server URL: Ollama's (default: $OLLAMA_HOST or http://127.0.0.1:11434) or "
                                       "an OpenAI-compatible one, with /v1 (openai)")
    parser.add_argument("--pull", action="store_true", default=None,
                        help="pull the Ollama model when the server does not have it")
    parser.add_argument("--threads", type=_optional(_positive_int),
                        help="CPU threads of the engine (default: the config's, else every core); workers sharing "
                             "one machine should split its cores")


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite optuna.db next to mlflow.db)")
    parser.add_argument("--tracking-uri",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--experiment-name", help="MLflow experiment name")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    study = commands.add_parser("study", help="run (or extend) a multi-objective study")
    _engine_options(study)
    _store_options(study)
    study.add_argument("--trials", type=_optional(_positive_int),
                       help="trials to add in this run (default: the config's)")
    study.add_argument("--study-name", help="Optuna study name, also the MLflow parent run name")
    study.add_argument("--sampler", type=_optional(_choice(SAMPLERS)),
                       help=f"Optuna sampler: {', '.join(SAMPLERS)} (default: the config's)")
    study.add_argument("--seed", type=_optional(_whole_number), help="seed of the sampler and the engine "
                                                                     "(default: the config's)")
    study.add_argument("--limit", type=_positive_int, help="requests per trial, taken in turn from each label")
    study.add_argument("--refine", type=_optional(_whole_number),
                       help="requests to spend topping up the front and the points tied with it, until their order "
                            "is decided (alone: no new trials; default: the config's evaluation.refine_requests)")

    init = commands.add_parser("init", help="write a new job's files: experiment, prompts and config")
    init.add_argument("name", help="the job's name: experiments/NAME, prompts/NAME, configs/NAME.yaml")
    init.add_argument("--root", type=Path, default=Path("."), help="the project folder (default: here)")

    compare = commands.add_parser("compare", help="compare the Pareto fronts of studies")
    compare.add_argument("studies", nargs="+", help="study names (or one comma-separated list)")
    _store_options(compare)

    promote = commands.add_parser("promote", help="re-check a front point on held-out data and write a Modelfile")
    promote.add_argument("study", help="the study to promote from")
    _engine_options(promote)
    _store_options(promote)
    promote.add_argument("--policy", choices=("knee", "sla", "trial"), default="knee",
                         help="knee of the front, best accuracy within --sla-p95-ms, or --trial N")
    promote.add_argument("--sla-p95-ms", type=_optional(_positive_float),
                         help="latency limit of the sla policy (also checked on held-out data)")
    promote.add_argument("--trial", type=_optional(_whole_number), help="trial number for --policy trial")
    promote.add_argument("--tolerance", type=_share, default=0.05,
                         help="largest drop of held-out accuracy below dev accuracy that is accepted")
    promote.add_argument("--repetitions", type=_positive_int, default=2, help="passes over the held-out split")
    promote.add_argument("--registered-model", help="MLflow registered model name (default: the study name)")
    promote.add_argument("--ollama-name", help="name of the model to create on the Ollama server "
                                               "(default: the registered model name)")
    promote.add_argument("--output", type=Path, default=Path("promoted"), help="folder for Modelfile and sidecar")

    side = commands.add_parser("compare-settings", help="measure two settings side by side, interleaved")
    side.add_argument("first", type=Path, help="settings file (YAML: every setting) of the reference, e.g. today's")
    side.add_argument("second", type=Path, help="settings file of the setting to compare with it")
    _engine_options(side)
    _store_options(side)
    side.add_argument("--split", choices=("dev", "holdout"), default="holdout", help="requests to measure on")
    side.add_argument("--limit", type=_positive_int, help="requests, taken in turn from each label (default: all)")
    side.add_argument("--repetitions", type=_positive_int, default=1, help="passes over the requests")
    return parser


def _optional(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An empty value (an MLproject parameter left at its default "") means the option was not given."""
    def parse_or_none(text: str) -> object:
        return None if text == "" else parse(text)

    parse_or_none.__name__ = parse.__name__  # argparse names the type in its error messages
    return parse_or_none


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    """One of ``options`` (argparse's ``choices`` would refuse the empty value an MLproject default passes)."""
    def choice(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(options)}")
        return text

    return choice


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def _share(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    for name in ("mlflow", "alembic"):  # store migrations and the like; our own output says what matters
        logging.getLogger(name).setLevel(logging.WARNING)
    command = {"init": _init, "study": _study, "compare": _compare, "promote": _promote,
               "compare-settings": _compare_settings}[args.command]
    try:
        return command(args, console)
    except KeyboardInterrupt:
        return _interrupted(console)
    except Exception as exc:
        # Ctrl-C inside a library (a store migrating its schema, a database call) can come out as that library's
        # error about the half-done work: still an interruption, not a failure.
        if _interruption(exc):
            return _interrupted(console)
        if not isinstance(exc, PipelineError):
            raise
        console.print(Text("error: ", style="red") + Text(str(exc)), highlight=False, soft_wrap=True)
        return exc.exit_code


def _interruption(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the exceptions this one was raised from or while handling."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _interrupted(console: Console) -> int:
    console.print("interrupted: a trial that was running is marked FAIL in Optuna and FAILED in MLflow; completed "
                  "trials stay recorded", highlight=False)
    return 130


def _config(args: argparse.Namespace, **sections: dict) -> StudyConfig:
    config = load_config(args.config)
    backend = args.backend or config.engine.backend
    model_key = {"embedded": "gguf", "llama-server": "gguf", "openai": "served_model"}.get(backend, "ollama_model")
    return config.with_overrides(
        # empty values (an MLproject parameter left at its default) mean "not given"
        engine={"backend": args.backend, model_key: args.model or None, "host": args.host or None,
                "pull": args.pull, "threads": args.threads},
        study={"storage": args.storage or None, **sections.pop("study", {})},
        tracking={"experiment_name": args.experiment_name or None},
        **sections,
    )


def _prepare(args: argparse.Namespace, config: StudyConfig, console: Console) -> PreparedStudy:
    with Progress(console=console, transient=True) as pulls:
        prepared = prepare_study(config, tracking_uri=args.tracking_uri or None, on_pull=_pull_progress(pulls))
    console.print(f"backend: {prepared.backend_choice}", highlight=False, soft_wrap=True)
    return prepared


def _init(args: argparse.Namespace, console: Console) -> int:
    written = scaffold(args.name, args.root)
    out = _stdout()
    for path in written:
        out.print(f"wrote {path}", markup=False, highlight=False)
    config = next(p for p in written if p.suffix == ".yaml" and p.parent.name == "configs")
    out.print(f"Write your schema, labelled requests and prompts, then run: python -m pipeline study --config "
              f"{config}", markup=False, highlight=False)
    return 0


def _study(args: argparse.Namespace, console: Console) -> int:
    config = _config(args, study={"name": args.study_name, "sampler": args.sampler, "seed": args.seed},
                     evaluation={"limit": args.limit})
    prepared = _prepare(args, config, console)
    try:
        trials = args.trials or (0 if args.refine is not None else config.study.trials)
        report = run_study(prepared, trials=trials, console=console, refine=args.refine)
    finally:
        prepared.backend.close()
    out = _stdout()
    out.print(front_table(report.front, f"Pareto front of study {report.study_name!r} "
                                        f"({len(report.front)} of {len(report.trials)} completed trials)",
                          objectives=[o.metric for o in prepared.config.objectives], trials=report.trials))
    out.print(f"Added {report.new_trials} trials. Optuna storage: {redact_url(report.storage_url)}",
              markup=False)
    out.print(f"MLflow parent run {report.parent_run_id} in {redact_url(report.tracking_uri)}", markup=False)
    out.print(f"Browse it: mlflow ui --backend-store-uri {redact_url(report.tracking_uri)}   then open "
              f"{report.run_url}", markup=False)
    return 0


def _compare(args: argparse.Namespace, console: Console) -> int:
    names = [n for text in args.studies for n in text.split(",") if n]
    if not names:
        raise ConfigError("name at least one study to compare")
    tracking_uri, storage = resolve_stores(args.tracking_uri or None, None, args.storage or None,
                                           configured_in=None, storage_where="--storage", existing=True)
    fronts = load_fronts(names, storage)
    comparison = compare(fronts)
    title = "Pareto fronts: " + " vs ".join(names)
    with tempfile.TemporaryDirectory() as folder:
        frames = {f.name: f.trials for f in fronts}
        plots = [p for p in (plot_fronts(frames, comparison.objectives, Path(folder) / "fronts.png",
                                                title=title),
                             plot_fronts_html(frames, comparison.objectives, Path(folder) / "fronts.html",
                                                     title=title, settings=SETTINGS)) if p is not None]
        table = pd.concat([f.front.assign(study=f.name) for f in fronts], ignore_index=True)
        run_id, url = log_comparison(tracking_uri=tracking_uri, experiment_name=args.experiment_name or "compare",
                                     comparison=comparison, fronts=table, artifacts=plots)
    out = _stdout()
    for front in fronts:
        out.print(front_table(front.front, f"front of {front.name!r} ({len(front.front)} of "
                                           f"{len(front.trials)} completed trials)",
                              objectives=[o.metric for o in front.objectives], trials=front.trials))
    summary = Table(title="hypervolume against one shared reference point (0..1, larger is better)")
    for column in ("study", "trials", "feasible", "front", "hypervolume"):
        summary.add_column(column, justify="right")
    for row in comparison.summary.itertuples():
        summary.add_row(row.study, str(row.trials), str(row.feasible), str(row.front_size), f"{row.hypervolume:.4f}")
    out.print(summary)
    cover = Table(title="coverage: share of the column study's front dominated by the row study's front")
    cover.add_column("")
    for name in names:
        cover.add_column(name, justify="right")
    for a in names:
        cover.add_row(a, *("-" if a == b else f"{comparison.coverage.loc[a, b]:.2f}" for b in names))
    out.print(cover)
    reference = ", ".join(f"{m}={v:.4g}" for m, v in comparison.reference.items())
    out.print(f"reference point: {reference}")
    for note in comparison.notes:
        out.print(f"note: {note}", markup=False)
    out.print(f"comparison run {run_id}: {url}")
    return 0


def _promote(args: argparse.Namespace, console: Console) -> int:
    policy = PromotionPolicy(policy=args.policy, sla_p95_ms=args.sla_p95_ms, trial=args.trial,
                             tolerance=args.tolerance, repetitions=args.repetitions,
                             registered_model=args.registered_model or None, ollama_name=args.ollama_name or None,
                             output=args.output)
    if policy.policy == "trial" and policy.trial is None:
        raise ConfigError("--policy trial needs --trial N")
    if policy.policy == "sla" and policy.sla_p95_ms is None:
        raise ConfigError("--policy sla needs --sla-p95-ms X")
    config = _config(args)
    _, storage = resolve_stores(args.tracking_uri or None, config.tracking.tracking_uri, config.study.storage,
                                configured_in=str(config.path), storage_where="--storage", existing=True)
    if args.study not in optuna.get_all_study_names(open_storage(storage)):
        raise InputError(f"no study {args.study!r} in {redact_url(storage)}: run `pipeline study` first or pass "
                         "the --storage it used")
    prepared = _prepare(args, config, console)
    out = _stdout()
    try:
        report = promote(prepared, args.study, policy)
    except PromotionRefused as refused:
        if refused.report is not None and refused.report.gains:
            out.print(gain_table(refused.report.gains, "the candidate against the baseline (held-out, side by side)"))
        raise
    finally:
        prepared.backend.close()
    if report.choice:
        out.print(report.choice, markup=False)
    if report.gains:
        out.print(gain_table(report.gains, "the candidate against the baseline (held-out, side by side)"))
        out.print(slower(report.gains) or "the candidate is not slower than the baseline", markup=False)
    out.print(f"promoted trial {report.trial} of {report.study!r} as {policy.registered_model or report.study!r} "
              f"version {report.model_version} (alias {CHAMPION})")
    shown = dict.fromkeys([*(o.metric for o in config.objectives), *(c.metric for c in config.constraints),
                           "schema_valid_rate", "latency_p95_ms"])
    for metric in (m for m in shown if m in report.holdout and m in report.dev):
        out.print(f"  {metric}: dev {report.dev[metric]:.4g}, held-out {report.holdout[metric]:.4g}", markup=False)
    for note in report.notes:
        out.print(f"  note: {note}")
    out.print(f"Modelfile: {report.modelfile}   sidecar: {report.sidecar}")
    out.print(f"  ollama create {policy.registered_model or report.study} -f {report.modelfile}")
    if report.launch is not None:
        out.print(f"llama-server launch command (port 8080): {report.launch}   request defaults: in the sidecar",
                  markup=False)
    return 0


def _compare_settings(args: argparse.Namespace, console: Console) -> int:
    config = _config(args)
    first, second = ((path.stem, load_settings(path)) for path in (args.first, args.second))
    if first[0] == second[0]:
        first, second = (str(args.first), first[1]), (str(args.second), second[1])
    prepared = _prepare(args, config, console)
    try:
        result = compare_settings(prepared, first, second, split=args.split, limit=args.limit,
                                  repetitions=args.repetitions,
                                  experiment_name=args.experiment_name or "compare-settings")
    finally:
        prepared.backend.close()
    out = _stdout()
    a, b = result.names
    out.print(gain_table(result.gains, f"{b} against {a} ({result.requests} {args.split} requests each, "
                                       "interleaved)", names=(a, b)))
    out.print(result.slower or f"{b} is not slower than {a}", markup=False)
    out.print(f"comparison run {result.run_id} in {redact_url(prepared.tracking_uri)}", markup=False)
    return 0


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


def _stdout() -> Console:
    return Console(width=None if sys.stdout.isatty() else 200)


def _pull_progress(progress: Progress) -> Callable[[str, int | None, int | None], None]:
    tasks: dict[str, TaskID] = {}

    def update(status: str, completed: int | None, total: int | None) -> None:
        if status not in tasks:
            tasks[status] = progress.add_task(f"ollama pull: {status}", total=total)
        progress.update(tasks[status], completed=completed or 0, total=total)

    return update


def front_table(front: pd.DataFrame, title: str, *, objectives: Sequence[str] = (),
                trials: pd.DataFrame | None = None) -> Table:
    """A table of front trials: the settings that differ between ``trials`` (all, without them), the objectives
    and the headline metrics, with the 95% interval where measured. The baseline trial (the settings served
    today) is its own last row when it is not on the front, and marked where it is. Front points that the
    measurements cannot tell apart (``racing.ties``) say which others they are tied with, and the requests each
    point was measured on are shown when they differ (racing, topping up)."""
    caption = r"value \[low, high]: 95% bootstrap interval over the trial's requests"
    tied = "tied_with" in front.columns and bool(front["tied_with"].astype(bool).any())
    if tied:
        caption += "; tied: the front points whose intervals overlap this one's on every objective"
    table = Table(title=title, caption=caption)
    table.add_column("trial", justify="right")
    if tied:
        table.add_column("tied with", justify="right")
    settings = [c for c in SETTING_COLUMNS if c in front.columns]
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


if __name__ == "__main__":
    raise SystemExit(main())
