"""A study: Optuna's ask → evaluate → tell loop over inference settings, tracked in MLflow.

Everything that can be wrong with the input is checked before the Optuna storage or MLflow is touched;
after that, each trial is a nested MLflow run and an Optuna trial, and the front is attached to the parent.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

import pipeline
from pipeline import pareto
from pipeline.backends.base import Backend
from pipeline.backends import make_backend
from pipeline.config import StudyConfig, check_storage_url, check_tracking_uri
from pipeline.errors import BackendError, ConfigError, DataError, PipelineError, redact_url
from pipeline.experiment import Example, Experiment, load_experiment
from pipeline.prompts import PromptLibrary, load_prompts
from pipeline.runner import TrialOutcome, run_trial
from pipeline.scoring import SERVER_METRICS, RequestRecord, confidence_intervals, summarize
from pipeline.space import InferenceSettings, suggest
from pipeline.storage import WORKER, heartbeat, open_storage, recover_dead_trials, study_lock
from pipeline.tracking import ArtifactWriteError, StudyTracker, resolve_tracking_uri, sqlite_folder

__all__ = ["REUSE_LIMIT", "PreparedStudy", "StudyReport", "check_definition", "cpu_model", "default_storage",
           "definition_of", "git_commit", "make_sampler", "prepare_study", "requests_frame", "resolve_stores",
           "reuse_measurement", "run_study", "trial_values"]

CONTEXT_FIT = "context_fit"


@dataclass
class PreparedStudy:
    """A checked config with everything loaded: nothing has been written yet."""

    config: StudyConfig
    experiment: Experiment
    prompts: PromptLibrary
    examples: list[Example]
    backend: Backend
    backend_choice: str
    tracking_uri: str
    storage_url: str


@dataclass
class StudyReport:
    study_name: str
    storage_url: str
    tracking_uri: str
    parent_run_id: str
    run_url: str
    trials: pd.DataFrame
    front: pd.DataFrame
    new_trials: int


def prepare_study(config: StudyConfig, *, tracking_uri: str | None = None,
                  on_pull: Callable[[str, int | None, int | None], None] | None = None) -> PreparedStudy:
    """Load and cross-check the experiment, prompts, search space and model.

    Raises:
        InputError: anything in the input is wrong; nothing has been recorded.
    """
    experiment = load_experiment(config.experiment)
    prompts = load_prompts(config.prompts, experiment.validator())
    space = config.search_space
    for variant in space["prompt_variant"].choices:
        prompts.check_variant(variant, f"{config.path} (search_space.prompt_variant)")
    few_shot = space["few_shot"]
    most = max(few_shot.choices) if few_shot.choices else few_shot.high
    if most > len(prompts.examples):
        raise ConfigError(f"{config.path} (search_space.few_shot): asks for up to {most} examples but "
                          f"{prompts.folder / 'examples.jsonl'} has {len(prompts.examples)}; lower it or add examples")
    examples = experiment.split(config.evaluation.split, config.evaluation.limit)
    if not examples:
        raise DataError(f"{experiment.dataset_path}: no examples in split {config.evaluation.split!r}; "
                        "label some or choose another split")
    uri, storage = resolve_stores(tracking_uri, config.tracking.tracking_uri, config.study.storage,
                                  configured_in=str(config.path), storage_where="Optuna storage")
    backend, choice = make_backend(config.engine, on_pull=on_pull)
    server_metrics = [m for m in [o.metric for o in config.objectives] + [c.metric for c in config.constraints]
                      if m in SERVER_METRICS]
    if server_metrics and backend.name != "ollama":
        backend.close()
        raise ConfigError(f"{config.path}: {server_metrics[0]} is measured only against a server; "
                          f"the {backend.name} backend was chosen ({choice})")
    return PreparedStudy(config, experiment, prompts, examples, backend, choice, uri, storage)


def resolve_stores(explicit_uri: str | None, configured_uri: str | None, storage: str | None, *,
                   configured_in: str | None, storage_where: str, existing: bool = False) -> tuple[str, str]:
    """The MLflow tracking URI and the Optuna storage URL a command uses, checked without opening either.

    Returns:
        The tracking URI (command line, ``MLFLOW_TRACKING_URI``, config, default) and the storage URL (given, else
        :func:`default_storage`).

    Raises:
        ConfigError: either is unusable (``existing``: the storage file must already be there).
    """
    uri = resolve_tracking_uri(explicit_uri, configured_uri)
    if explicit_uri:
        source = "--tracking-uri"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        source = "MLFLOW_TRACKING_URI"
    else:
        source = f"{configured_in} (tracking)" if configured_uri and configured_in else "default"
    check_tracking_uri(uri, source)
    storage = storage or default_storage(uri)
    check_storage_url(storage, storage_where, existing=existing)
    return uri, storage


def default_storage(tracking_uri: str) -> str:
    """The Optuna storage next to a sqlite MLflow store (else in the current folder)."""
    folder = sqlite_folder(tracking_uri) or Path.cwd()
    return f"sqlite:///{folder / 'optuna.db'}"


def definition_of(prepared: PreparedStudy) -> dict[str, str]:
    """What makes two invocations the same study; an existing study must match it to be extended."""
    config, backend = prepared.config, prepared.backend
    description = backend.describe()
    return {
        "objectives": ",".join(f"{o.metric}:{o.direction}" for o in config.objectives),
        "constraints": ",".join(c.describe() for c in config.constraints) or "none",
        "search_space": json.dumps({n: {k: v for k, v in asdict(s).items() if v not in (None, (), False)}
                                    for n, s in config.search_space.items()}, sort_keys=True),
        "experiment": prepared.experiment.name,
        "dataset_digest": prepared.experiment.digest[:20],
        "split": config.evaluation.split,
        "limit": str(config.evaluation.limit),
        "requests_per_trial": str(len(prepared.examples) * config.evaluation.repetitions),
        "repetitions": str(config.evaluation.repetitions),
        "warmup_requests": str(config.engine.warmup_requests),
        "backend": backend.name,
        "model": description["model"],
        "model_digest": description.get("model_sha256") or description["model_digest"],
        "sampler": config.study.sampler,
        "seed": str(config.study.seed),
    }


def _environment_tags(backend: Backend, config: StudyConfig) -> dict[str, str]:
    return {**backend.describe(), "cpu": cpu_model(), "package_version": pipeline.__version__,
            "git_commit": git_commit(config.path.parent), "backend": backend.name}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(folder: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def make_sampler(config: StudyConfig, offset: int) -> optuna.samplers.BaseSampler:
    """The study's sampler. TPE is multivariate (one joint model of all settings) with 6 random startup trials:
    of the TPE, NSGA-II and random variants replayed in BENCHMARKS.md, the one that found the most of the true
    front within 10-15% of the grid."""
    # A resumed study gets a different seed, so a random sampler does not repeat the settings it tried.
    seed = config.study.seed + offset
    if config.study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
    if config.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=6, multivariate=True)


def _open_study(prepared: PreparedStudy, storage: optuna.storages.BaseStorage,
                definition: dict[str, str]) -> optuna.Study:
    config = prepared.config
    name = config.study.name
    directions = [o.direction for o in config.objectives]
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        check_definition(existing, definition, definition,
                         fix=f"restore the setting or set study.name to a new study (storage "
                             f"{redact_url(prepared.storage_url)})")
        offset = len(existing.trials)
    else:
        offset = 0
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, load_if_exists=True,
                                sampler=make_sampler(config, offset))
    if existing is None:
        study.set_user_attr("definition", definition)
    return study


def check_definition(study: optuna.Study, current: dict[str, str], keys: Iterable[str], *, fix: str) -> None:
    """Raise ConfigError naming the first of ``keys`` whose value differs from the one the study was run with."""
    stored = study.user_attrs.get("definition", {})
    for key in keys:
        if stored.get(key) != current.get(key):
            raise ConfigError(f"study {study.study_name!r} was run with {key}={stored.get(key)!r}, this config "
                              f"gives {current.get(key)!r}: {fix}")


def _target(study: optuna.Study, trials: int) -> tuple[int, bool]:
    """How many completed trials this run works towards, and whether it resumes an earlier target.

    A run that was interrupted (killed, Ctrl-C) or that other workers share leaves its target open: the same
    command then finishes it instead of adding ``trials`` more.
    """
    complete = len(pareto.measured_trials(study))
    target = study.user_attrs.get("target")
    if target is not None and complete < target:
        return target, True
    study.set_user_attr("target", complete + trials)
    return complete + trials, False


def requests_frame(records: list[RequestRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        row = {"request_id": r.request_id, "request": r.request, "expected": json.dumps(r.expected),
               "answer": r.answer}
        row.update(asdict(r.score))
        row.update({k: getattr(r, k) for k in ("latency_ms", "ttft_ms", "prefill_ms", "decode_ms", "decode_tokens",
                                               "prompt_tokens_estimated", "prompt_tokens_engine", "output_tokens",
                                               "truncated", "failed", "server_ms", "overhead_ms")})
        rows.append(row)
    return pd.DataFrame(rows)


def run_study(prepared: PreparedStudy, *, trials: int, console: Console | None = None) -> StudyReport:
    """Bring the study to ``trials`` more completed trials, or finish the target an interrupted or shared run
    left open, and attach its front to the parent run.

    Returns:
        Where everything was recorded, every completed trial, and the front.

    Raises:
        InputError: the study exists with another definition (nothing recorded).
        PipelineError: MLflow failed, or too many trials in a row failed.
    """
    config, backend = prepared.config, prepared.backend
    console = console or Console(stderr=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    definition = definition_of(prepared)
    name = config.study.name
    storage = open_storage(prepared.storage_url, heartbeat_interval_s=config.study.heartbeat_interval_s,
                           grace_period_s=config.study.grace_period_s)
    with study_lock(prepared.storage_url, name):
        study = _open_study(prepared, storage, definition)
        recover_dead_trials(study)
        target, resumed = _target(study, trials)
        tracker = StudyTracker.open(tracking_uri=prepared.tracking_uri,
                                    experiment_name=config.tracking.experiment_name, run_name=name,
                                    resume_run_id=study.user_attrs.get("mlflow_parent_run_id"))
        study.set_user_attr("mlflow_parent_run_id", tracker.parent_run_id)
    tracker.close_failed_runs(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    complete = len(pareto.measured_trials(study))
    if resumed:
        console.print(f"resuming study {name!r}: {target - complete} of its {target} trials still to run "
                      "(an interrupted run, or other workers)", highlight=False)
    env_tags = _environment_tags(backend, config)
    dataset = pd.DataFrame([{"id": e.id, "request": e.request, "expected": json.dumps(e.expected)}
                            for e in prepared.examples])
    tracker.log_study(params={f"study.{k}": v for k, v in definition.items()},
                      tags={**env_tags, "study": config.study.name, "optuna_storage": redact_url(prepared.storage_url),
                            "config": str(config.path), "backend_choice": prepared.backend_choice},
                      dataset=dataset, dataset_name=f"{prepared.experiment.name}-{config.evaluation.split}",
                      dataset_source=str(prepared.experiment.dataset_path), split=config.evaluation.split,
                      digest=prepared.experiment.digest)
    validator = prepared.experiment.validator()
    per_trial = len(prepared.examples) * config.evaluation.repetitions
    done_here: list[int] = []
    stop: list[str] = []

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False) as progress:
        trial_task = progress.add_task("trials", total=max(target - complete, 0))
        request_task = progress.add_task("requests", total=per_trial)

        def evaluate(trial: optuna.Trial, settings: InferenceSettings) -> list[float]:
            run_id = tracker.start_trial(trial.number, params=settings.as_params(),
                                         tags={**env_tags, "study": config.study.name})
            trial.set_user_attr("mlflow_run_id", run_id)
            progress.reset(request_task, total=per_trial, description=f"trial {trial.number} requests")
            try:
                outcome = run_trial(settings, prepared.examples, prompts=prepared.prompts, backend=backend,
                                    validator=validator, schema=prepared.experiment.schema,
                                    warmup=config.engine.warmup_requests, repetitions=config.evaluation.repetitions,
                                    margin=config.engine.context_margin,
                                    abort_on=config.constraints if config.evaluation.early_abort else (),
                                    on_request=lambda: progress.advance(request_task))
                values = trial_values(trial, outcome, config)
            except BaseException as exc:
                tracker.fail_trial(run_id, f"{type(exc).__name__}: {exc}")
                raise
            tags = {"feasible": str(all(v <= 0 for v in trial.constraints.values())).lower()}
            if outcome.infeasible:
                tags["infeasible"] = outcome.infeasible
            if outcome.aborted:
                tags["aborted"] = outcome.aborted.describe()
            try:
                tracker.finish_trial(run_id, metrics=trial.user_attrs["metrics"], tags=tags,
                                     requests=requests_frame(outcome.records))
            except ArtifactWriteError as exc:
                stop.append(str(exc))  # the measurement stands: told COMPLETE, then the study stops
            done_here.append(trial.number)
            return values

        status, reason = "FAILED", ""
        try:
            _optimize(study, evaluate, target=target, config=config, storage_url=prepared.storage_url,
                      backend_name=backend.name, stop=stop,
                      on_recovered=tracker.close_failed_runs, on_trial=lambda: progress.advance(trial_task),
                      on_exhausted=lambda n: console.print(
                          f"the sampler proposed only settings already measured ({n} in a row): the search "
                          f"space looks exhausted; stopping with {len(pareto.measured_trials(study))} measured "
                          "trials", highlight=False))
            status = "FINISHED"
        except KeyboardInterrupt:
            status, reason = "KILLED", "interrupted"
            raise
        except PipelineError as exc:
            reason = str(exc)
            raise
        finally:
            try:
                report = _finish(study, tracker, prepared, status, reason=reason, new_trials=len(done_here))
            except PipelineError:
                if status == "FINISHED":
                    raise
                # the run already failed: report that error, not a second one from the same broken store
    return report


def _optimize(study: optuna.Study, evaluate: Callable[[optuna.Trial, InferenceSettings], list[float]], *,
              target: int, config: StudyConfig, storage_url: str, backend_name: str, stop: list[str],
              on_recovered: Callable[[list[optuna.trial.FrozenTrial]], None], on_trial: Callable[[], None],
              on_exhausted: Callable[[int], None] = lambda n: None) -> None:
    """Optuna's ask → evaluate → tell loop, until the study has ``target`` completed trials.

    Trials are asked ``study.batch`` at a time (default: 4 against a server, else 1) under the study lock,
    never more than are left to do counting the ones other workers are running, so N requested trials are N
    trials whatever the number of workers. The trials of a batch run grouped by ``num_ctx``, the loaded value
    first: every change of ``num_ctx`` makes a server reload the model. A trial whose engine fails is FAIL
    and the study goes on, until ``study.max_consecutive_failures`` fail in a row. Nothing is left RUNNING:
    on any exit, the trials asked but not run are told FAIL. A trial whose settings were measured before is
    answered from that measurement (:func:`reuse_measurement`) and does not count; after ``REUSE_LIMIT`` such
    trials in a row the study ends.
    """
    failures, last_ctx, reused = 0, None, 0
    # How long to wait for other workers' trials before leaving them (and the open target) to a later run.
    wait_s = config.study.grace_period_s + 2 * config.study.heartbeat_interval_s
    patience = time.monotonic() + wait_s
    while True:
        asked: list[optuna.Trial] = []
        with study_lock(storage_url, study.study_name):
            recovered = recover_dead_trials(study)
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            left = target - len(pareto.measured_trials(study)) - running
            if left > 0:
                # Grouping by num_ctx saves a server's reloads; in process every context stays loaded.
                batch = config.study.batch or (4 if backend_name == "ollama" else 1)
                asked = [study.ask() for _ in range(min(batch, left))]
                for trial in asked:
                    trial.set_user_attr("worker", WORKER)
        on_recovered(recovered)
        if not asked:
            # Other workers' trials may still fail, or their worker die, and have to run again here.
            if running == 0 or time.monotonic() > patience:
                return
            time.sleep(1.0)
            continue
        plans = [(trial, suggest(trial, config.search_space, seed=config.study.seed)) for trial in asked]
        plans.sort(key=lambda plan: (plan[1].num_ctx != last_ctx, plan[1].num_ctx))
        repeats = [plan for plan in plans if reuse_measurement(study, plan[0])]
        plans = [plan for plan in plans if plan not in repeats]
        reused = reused + len(repeats) if not plans else 0
        if reused >= REUSE_LIMIT:
            # Everything the sampler proposes has been measured: the space is exhausted (or the sampler stuck).
            study.set_user_attr("target", len(pareto.measured_trials(study)))
            on_exhausted(reused)
            return
        for index, (trial, settings) in enumerate(plans):
            try:
                with heartbeat(study, trial):
                    values = evaluate(trial, settings)
            except BackendError as exc:
                _fail(study, trial, f"{exc}")
                failures += 1
                on_trial()
                if failures >= config.study.max_consecutive_failures:
                    _fail_unrun(study, plans[index + 1:])
                    raise PipelineError(f"study stopped after {failures} failed trials in a row; last: {exc}") from exc
                continue
            except BaseException as exc:
                _fail(study, trial, f"{type(exc).__name__}: {exc}")
                _fail_unrun(study, plans[index + 1:])
                raise
            study.tell(trial, values)
            if stop:
                _fail_unrun(study, plans[index + 1:])
                raise PipelineError(stop[0])
            failures = 0
            if not trial.user_attrs.get("infeasible"):
                last_ctx = settings.num_ctx
            on_trial()
        patience = time.monotonic() + wait_s


REUSE_LIMIT = 25


def reuse_measurement(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Tell ``trial`` the outcome of an earlier trial with the same settings, if one was measured.

    Samplers propose settings they have tried before, often in a space of choices only. Measuring one again
    spends a trial on a repeat, and the luckier of two noisy measurements could reach the front; answering
    with the earlier values is Optuna's advice for duplicates. The trial is COMPLETE with the user attr
    ``same_as`` (the earlier trial's number), has no MLflow run, and does not count toward the target.

    Returns:
        Whether the trial was answered.
    """
    earlier = next((t for t in pareto.measured_trials(study) if t.params == trial.params), None)
    if earlier is None:
        return False
    for name, value in earlier.constraints.items():
        trial.set_constraint(name, value)
    trial.set_user_attr(pareto.REUSED, earlier.number)
    trial.set_user_attr("metrics", earlier.user_attrs.get("metrics", {}))
    study.tell(trial, earlier.values)
    return True


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr("failure", reason[:2000])
    study.tell(trial, state=TrialState.FAIL)


def _fail_unrun(study: optuna.Study, plans: list[tuple[optuna.Trial, InferenceSettings]]) -> None:
    for trial, _ in plans:
        _fail(study, trial, "not run: the study stopped first")


def trial_values(trial: optuna.Trial, outcome: TrialOutcome, config: StudyConfig) -> list[float]:
    """Set the trial's metrics and constraints; return its objective values.

    A setting that cannot fit the context is not run: it gets the worst values (0 for a maximised metric, the
    request timeout for a minimised one) and a violated ``context_fit`` constraint, so it is never on the front.
    A trial stopped early has the metrics of the requests it ran; the constraint it cannot meet is set from
    the best value it could still have reached, which breaks it.
    """
    if outcome.infeasible:
        penalty = config.engine.request_timeout_s * 1000
        metrics = {o.metric: 0.0 if o.direction == "maximize" else penalty for o in config.objectives}
        trial.set_user_attr("infeasible", outcome.infeasible)
        trial.set_constraint(CONTEXT_FIT, 1.0)
        for constraint in config.constraints:
            trial.set_constraint(constraint.metric, 0.0)
    else:
        if all(r.failed for r in outcome.records):
            raise BackendError(f"all {len(outcome.records)} requests failed: {outcome.records[0].score.error}")
        metrics = summarize(outcome.records, model_loads=outcome.model_loads, model_load_ms=outcome.model_load_ms)
        metrics.update(confidence_intervals(outcome.records, seed=config.study.seed))
        trial.set_constraint(CONTEXT_FIT, 0.0)
        limits = {c.metric: metrics[c.metric] for c in config.constraints}
        if outcome.aborted:
            trial.set_user_attr("aborted", outcome.aborted.describe())
            limits[outcome.aborted.constraint.metric] = outcome.aborted.bound
        for constraint in config.constraints:
            trial.set_constraint(constraint.metric, constraint.violation(limits[constraint.metric]))
    trial.set_user_attr("metrics", metrics)
    return [metrics[o.metric] for o in config.objectives]


def _finish(study: optuna.Study, tracker: StudyTracker, prepared: PreparedStudy, status: str, *, reason: str,
            new_trials: int) -> StudyReport:
    config = prepared.config
    trials = pareto.trials_frame(study, config.objectives)
    front = pareto.front_frame(trials, config.objectives)
    front_error = None
    with tempfile.TemporaryDirectory() as folder:
        plot = pareto.plot_fronts({config.study.name: trials}, config.objectives,
                                  Path(folder) / "pareto_front.png", title=f"{config.study.name}: Pareto front")
        if not trials.empty:
            states = [t.state for t in study.trials]
            try:
                tracker.log_front(trials=trials, front=front, plot=plot, metrics={
                    "front_size": len(front),
                    "trials_complete": states.count(TrialState.COMPLETE),
                    "trials_reused": sum(pareto.REUSED in t.user_attrs for t in study.trials),
                    "trials_failed": states.count(TrialState.FAIL),
                    "trials_infeasible": int((~trials["feasible"]).sum())})
            except PipelineError as exc:  # the parent run must still be closed
                front_error = exc
    if front_error is not None and status == "FINISHED":
        status, reason = "FAILED", str(front_error)
    # With several workers the last one to stop closes the parent run.
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tracker.finish(status, reason=reason)
    if front_error is not None:
        raise front_error
    return StudyReport(config.study.name, prepared.storage_url, prepared.tracking_uri, tracker.parent_run_id,
                       tracker.run_url(), trials, front, new_trials)

