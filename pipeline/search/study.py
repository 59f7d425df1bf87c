"""A study: Optuna's ask → evaluate → tell loop over inference settings, tracked in MLflow.

Everything that can be wrong with the input is checked before the Optuna storage or MLflow is touched;
after that, each trial is a nested MLflow run and an Optuna trial, and the front is attached to the parent.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.console import Console

from pipeline.render.plots import plot_fronts
from pipeline.search.fronts import front_frame, front_trials, measured_trials, superseded, trials_frame
from pipeline.search.trials import BASELINE, RACED, REUSED, TOPS_UP
from pipeline.search.config import StudyConfig
from pipeline.search.drift import REFERENCE, reference_setting, study_monitor
from pipeline.tracking.environment import environment_tags
from pipeline.errors import BackendError, PipelineError, redact_url
from pipeline.search.objectives import trial_values
from pipeline.search.prepare import PreparedStudy, check_definition, definition_of
from pipeline.render.progress import study_progress
from pipeline.measure.racing import Racer
from pipeline.search.reuse import REUSE_LIMIT, reuse_measurement
from pipeline.measure.runner import TrialPlan, run_trial
from pipeline.search.samplers import make_sampler
from pipeline.engines.settings import InferenceSettings
from pipeline.search.space import suggest
from pipeline.search.storage import (
    WORKER,
    heartbeat,
    heartbeat_helpers,
    open_storage,
    recover_dead_trials,
    study_lock,
)
from pipeline.measure.tables import field_errors, requests_frame
from pipeline.search.topup import (
    TOP_UP_REQUESTS,
    TrialRecords,
    combined,
    next_requests,
    next_top_up,
    resumable,
    top_up_source,
)
from pipeline.tracking.runs import ArtifactWriteError, StudyTracker

__all__ = ["StudyReport", "run_study", "trial_plan"]


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
        if config.baseline is not None:
            # Measured first, as any trial: every later point is seen against what is served today.
            study.enqueue_trial({name: config.baseline[name] for name in config.search_space},
                                user_attrs={BASELINE: True})
    return study


def _target(study: optuna.Study, trials: int) -> tuple[int, bool]:
    """How many completed trials this run works towards, and whether it resumes an earlier target.

    A run that was interrupted (killed, Ctrl-C) or that other workers share leaves its target open: the same
    command then finishes it instead of adding ``trials`` more.
    """
    complete = len(measured_trials(study))
    target = study.user_attrs.get("target")
    if target is not None and complete < target:
        return target, True
    study.set_user_attr("target", complete + trials)
    return complete + trials, False


def run_study(prepared: PreparedStudy, *, trials: int, console: Console | None = None,
              refine: int | None = None) -> StudyReport:
    """Bring the study to ``trials`` more completed trials, or finish the target an interrupted or shared run
    left open, then refine its front with up to ``refine`` more requests (default: the config's
    ``evaluation.refine_requests``; see ``pipeline.topup``), and attach its front to the parent run.

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
    complete = len(measured_trials(study))
    if resumed:
        console.print(f"resuming study {name!r}: {target - complete} of its {target} trials still to run "
                      "(an interrupted run, or other workers)", highlight=False)
    env_tags = environment_tags(backend, config.path.parent)
    evaluation = config.evaluation
    # How each trial's requests are spent (they may change between runs of a study: tags, not params).
    env_tags.update({"evaluation.stages": ",".join(map(str, evaluation.stages)) or "none",
                     "evaluation.racing_error_rate": f"{evaluation.racing_error_rate:g}",
                     "evaluation.error_rate": f"{evaluation.error_rate:g}",
                     "evaluation.refine_requests": str(evaluation.refine_requests if refine is None else refine),
                     "evaluation.drift_every": str(evaluation.drift_every)})
    dataset = pd.DataFrame([{"id": e.id, "request": e.request, "expected": json.dumps(e.expected)}
                            for e in prepared.examples])
    tracker.log_study(params={f"study.{k}": v for k, v in definition.items()},
                      tags={**env_tags, "study": config.study.name, "optuna_storage": redact_url(prepared.storage_url),
                            "config": str(config.path), "backend_choice": prepared.backend_choice,
                            "experiment": prepared.experiment.name,
                            "label": prepared.experiment.label_pointer or "none"},
                      dataset=dataset, dataset_name=f"{prepared.experiment.name}-{config.evaluation.split}",
                      dataset_source=str(prepared.experiment.dataset_path), split=config.evaluation.split,
                      digest=prepared.experiment.digest)
    plan = trial_plan(prepared)
    reps = config.evaluation.repetitions
    per_trial = len(prepared.examples) * reps
    ordered = prepared.experiment.ordered(config.evaluation.split)
    records = TrialRecords(lambda run_id: tracker.read_table(run_id, "requests.json"), prepared.experiment.examples,
                           prepared.experiment.scorer)
    done_here: list[int] = []
    stop: list[str] = []
    reference: list[InferenceSettings] = []
    drift = study_monitor(study, prepared, plan, tracker, reference, console)

    with study_progress(console, trials=target - complete, requests=per_trial) as progress:

        def evaluate(trial: optuna.Trial, settings: InferenceSettings) -> list[float]:
            source = top_up_source(study, trial)
            # A top-up of the baseline is the baseline's latest measurement.
            baseline = bool(trial.user_attrs.get(BASELINE) or source and source.user_attrs.get(BASELINE))
            if baseline:
                trial.set_user_attr(BASELINE, True)
            run_id = tracker.start_trial(trial.number, params=settings.as_params(),
                                         tags={**env_tags, "study": config.study.name,
                                               **({BASELINE: "true"} if baseline else {}),
                                               **({TOPS_UP: str(source.number)} if source else {})})
            trial.set_user_attr("mlflow_run_id", run_id)
            if source is not None:
                trial.set_user_attr(TOPS_UP, source.number)
            if drift is not None:
                reference[:] = reference or [reference_setting(study, config) or settings]
                if drift.last is None:
                    drift.start()
                if drift.last is not None:
                    trial.set_user_attr(REFERENCE, drift.last)
                    tracker.tag_run(run_id, {REFERENCE: f"{drift.last:.1f}"})
            progress.trial_started(trial.number)
            try:
                if source is None:
                    # The baseline is the reference every point is seen against: measured in full, never stopped
                    # early.
                    racer = None if baseline or not config.evaluation.stages else Racer(
                        [(t.number, records.get(t)) for t in front_trials(study)], config.objectives,
                        config.evaluation.racing_error_rate, config.evaluation.stages, seed=config.study.seed)
                    outcome = run_trial(settings, prepared.examples, replace(plan, abort_on=()) if baseline else plan,
                                        on_request=progress.request_done, race=racer and racer.check)
                    ran = len(outcome.records)
                else:
                    before = records.get(source)
                    wanted = trial.user_attrs.get(TOP_UP_REQUESTS) or per_trial - len(before)
                    added = run_trial(settings, next_requests(ordered, before, -(-wanted // reps)),
                                      replace(plan, abort_on=()), on_request=progress.request_done)
                    outcome, ran = combined(before, source.user_attrs["metrics"], added), len(added.records)
                values = trial_values(trial, outcome, config)
            except BaseException as exc:
                tracker.fail_trial(run_id, f"{type(exc).__name__}: {exc}")
                raise
            records.keep(trial.number, outcome.records)
            if drift is not None and not outcome.infeasible:
                drift.trial_done(trial.number)
            metrics = {**trial.user_attrs["metrics"], "requests_run": float(ran)}
            trial.set_user_attr("metrics", metrics)
            tags = {"feasible": str(all(v <= 0 for v in trial.constraints.values())).lower(), **outcome.tags}
            if outcome.infeasible:
                tags["infeasible"] = outcome.infeasible
            if outcome.aborted:
                tags["aborted"] = outcome.aborted.describe()
            if outcome.raced:
                tags[RACED] = outcome.raced.describe()
            exhausted = sum(r.thinking_exhausted for r in outcome.records)
            if exhausted:
                tags["thinking_exhausted"] = note = (
                    f"thinking used up num_predict {settings.num_predict} in {exhausted} of {len(outcome.records)} "
                    "requests, which got no answer; raise num_predict or set think: off")
                console.print(f"trial {trial.number}: {note}", highlight=False)
            try:
                tracker.finish_trial(run_id, metrics=metrics, tags=tags,
                                     tables={"requests.json": requests_frame(outcome.records),
                                             "field_errors.json": field_errors(outcome.records)})
                if source is not None:
                    tracker.tag_run(source.user_attrs["mlflow_run_id"], {"superseded_by": str(trial.number)})
            except ArtifactWriteError as exc:
                stop.append(str(exc))  # the measurement stands: told COMPLETE, then the study stops
            done_here.append(trial.number)
            return values

        status, reason = "FAILED", ""
        try:
            _optimize(study, evaluate, target=target, config=config, storage_url=prepared.storage_url,
                      batch=config.study.batch or (1 if backend.keeps_contexts else 4), stop=stop,
                      on_recovered=tracker.close_failed_runs, on_trial=progress.trial_done,
                      resume=lambda t: resumable(study, t, config.objectives, records.get,
                                                 config.evaluation.racing_error_rate, seed=config.study.seed),
                      on_exhausted=lambda n: console.print(
                          f"the sampler proposed only settings already measured ({n} in a row): the search "
                          f"space looks exhausted; stopping with {len(measured_trials(study))} measured "
                          "trials", highlight=False))
            budget = config.evaluation.refine_requests if refine is None else refine
            if budget and not stop:
                _refine(study, evaluate, budget=budget, most=len(ordered) * reps, config=config,
                        storage_url=prepared.storage_url, stop=stop, console=console)
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
              target: int, config: StudyConfig, storage_url: str, batch: int, stop: list[str],
              on_recovered: Callable[[list[optuna.trial.FrozenTrial]], None], on_trial: Callable[[], None],
              on_exhausted: Callable[[int], None] = lambda n: None,
              resume: Callable[[optuna.trial.FrozenTrial], bool] = lambda earlier: False) -> None:
    """Optuna's ask → evaluate → tell loop, until the study has ``target`` completed trials.

    Trials are asked ``batch`` at a time (default: 4 against a server, 1 in process) under the study lock,
    never more than are left to do counting the ones other workers are running, so N requested trials are N
    trials whatever the number of workers. The trials of a batch run grouped by ``num_ctx`` and server settings
    (``InferenceSettings.load_key``), the loaded ones first: every change of them makes a server reload the model
    or restart. A trial whose engine fails is FAIL
    and the study goes on, until ``study.max_consecutive_failures`` fail in a row. Nothing is left RUNNING:
    on any exit, the trials asked but not run are told FAIL. A trial whose settings were measured before is
    answered from that measurement (:func:`reuse_measurement`) and does not count; after ``REUSE_LIMIT`` such
    trials in a row the study ends.
    """
    failures, last_key, reused = 0, None, 0
    # How long to wait for other workers' trials before leaving them (and the open target) to a later run.
    wait_s = config.study.grace_period_s + 2 * config.study.heartbeat_interval_s
    patience = time.monotonic() + wait_s
    while True:
        asked: list[optuna.Trial] = []
        with study_lock(storage_url, study.study_name):
            recovered = recover_dead_trials(study)
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            left = target - len(measured_trials(study)) - running
            if left > 0:
                with heartbeat_helpers():  # asking on a heartbeat storage outside Study.optimize warns
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
        plans.sort(key=lambda plan: (plan[1].load_key != last_key, plan[1].load_key))
        repeats = [plan for plan in plans
                   if reuse_measurement(study, plan[0], resume=resume)]
        plans = [plan for plan in plans if plan not in repeats]
        reused = reused + len(repeats) if not plans else 0
        if reused >= REUSE_LIMIT:
            # Everything the sampler proposes has been measured: the space is exhausted (or the sampler stuck).
            study.set_user_attr("target", len(measured_trials(study)))
            on_exhausted(reused)
            return
        for index, (trial, settings) in enumerate(plans):
            if index and reuse_measurement(study, trial, resume=resume):
                continue  # an earlier trial of this batch measured (or topped up) the same settings
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
                last_key = settings.load_key
            on_trial()
        patience = time.monotonic() + wait_s


def _refine(study: optuna.Study, evaluate: Callable[[optuna.Trial, InferenceSettings], list[float]], *,
            budget: int, most: int, config: StudyConfig, storage_url: str, stop: list[str],
            console: Console) -> None:
    """Top up the front and the points whose intervals reach it (``topup.next_top_up``), one trial per top-up,
    until nothing is left to decide or ``budget`` requests are spent."""
    spent = 0
    while (choice := next_top_up(study, config.objectives, budget=budget - spent, most=most)) is not None:
        earlier = choice.trial
        with study_lock(storage_url, study.study_name):
            study.enqueue_trial(earlier.params, user_attrs={TOPS_UP: earlier.number,
                                                            TOP_UP_REQUESTS: choice.requests})
            with heartbeat_helpers():
                trial = study.ask()
            trial.set_user_attr("worker", WORKER)
        settings = suggest(trial, config.search_space, seed=config.study.seed)
        console.print(f"refining: trial {trial.number} tops up trial {earlier.number} "
                      f"({earlier.user_attrs['metrics']['requests_measured']:.0f} requests) with {choice.requests} "
                      f"more ({spent} of {budget} spent)", highlight=False)
        try:
            with heartbeat(study, trial):
                values = evaluate(trial, settings)
        except BackendError as exc:
            _fail(study, trial, f"{exc}")
            console.print(f"refinement stopped: {exc}", highlight=False)
            return
        except BaseException as exc:
            _fail(study, trial, f"{type(exc).__name__}: {exc}")
            raise
        study.tell(trial, values)
        spent += int(trial.user_attrs["metrics"]["requests_run"])
        if stop:
            raise PipelineError(stop[0])
        if not trial.user_attrs["metrics"]["requests_run"]:
            return  # nothing left to measure (another worker measured it first)


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr("failure", reason[:2000])
    study.tell(trial, state=TrialState.FAIL)


def _fail_unrun(study: optuna.Study, plans: list[tuple[optuna.Trial, InferenceSettings]]) -> None:
    for trial, _ in plans:
        _fail(study, trial, "not run: the study stopped first")


def trial_plan(prepared: PreparedStudy) -> TrialPlan:
    """What every trial of the study runs with."""
    config = prepared.config
    return TrialPlan(prompts=prepared.prompts, backend=prepared.backend, scorer=prepared.experiment.scorer,
                     warmup=prepared.warmup, warmup_requests=config.engine.warmup_requests,
                     repetitions=config.evaluation.repetitions, margin=config.engine.context_margin,
                     abort_on=config.constraints if config.evaluation.early_abort else ())


def _finish(study: optuna.Study, tracker: StudyTracker, prepared: PreparedStudy, status: str, *, reason: str,
            new_trials: int) -> StudyReport:
    config = prepared.config
    trials = trials_frame(study, config.objectives)
    front = front_frame(trials, config.objectives)
    front_error = None
    with tempfile.TemporaryDirectory() as folder:
        plot = plot_fronts({config.study.name: trials}, config.objectives,
                                  Path(folder) / "pareto_front.png", title=f"{config.study.name}: Pareto front")
        if not trials.empty:
            states = [t.state for t in study.trials]
            try:
                tracker.log_front(trials=trials, front=front, plot=plot, metrics={
                    "front_size": len(front),
                    "trials_complete": states.count(TrialState.COMPLETE),
                    "trials_reused": sum(REUSED in t.user_attrs for t in study.trials),
                    "trials_failed": states.count(TrialState.FAIL),
                    "trials_infeasible": int((~trials["feasible"]).sum())})
                gone = superseded(study)
                for trial in study.get_trials(deepcopy=False):
                    if trial.number in gone and trial.user_attrs.get("mlflow_run_id"):
                        tracker.tag_run(trial.user_attrs["mlflow_run_id"], {"pareto": "false"})
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

