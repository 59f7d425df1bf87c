"""A study: Optuna's ask → evaluate → tell loop over inference settings, tracked in MLflow.

Everything that can be wrong with the input is checked before the Optuna storage or MLflow is touched;
after that, each trial is a nested MLflow run and an Optuna trial, and the front is attached to the parent.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.console import Console

from pipeline.engines.settings import InferenceSettings
from pipeline.errors import PipelineError, redact_url
from pipeline.measure.bottleneck import verdict
from pipeline.measure.racing import Racer
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Objective, feasible
from pipeline.measure.runner import TrialOutcome, TrialPlan, run_trial
from pipeline.measure.tables import field_errors, requests_frame
from pipeline.render.plots import plot_fronts
from pipeline.render.progress import study_progress
from pipeline.search.drift import reference_setting, study_monitor
from pipeline.search.explain import front_explanation, study_note
from pipeline.search.finals import Choose, Finalists, Finals
from pipeline.search.fronts import front_frame, front_trials, measured_trials, superseded, trials_frame
from pipeline.search.loop import TrialLoop
from pipeline.search.objectives import trial_values
from pipeline.search.prepare import PreparedStudy, check_definition, definition_of
from pipeline.search.samplers import make_sampler
from pipeline.search.storage import (
    open_storage,
    recover_dead_trials,
    study_lock,
)
from pipeline.search.topup import (
    TOP_UP_REQUESTS,
    TrialRecords,
    combined,
    next_requests,
    resumable,
    top_up_source,
)
from pipeline.search.trials import (
    ABORTED,
    BASELINE,
    BOTTLENECK,
    DEFINITION,
    INFEASIBLE,
    METRICS,
    PARENT_RUN,
    RACED,
    REFERENCE,
    REUSED,
    RUN_ID,
    TARGET,
    TOPS_UP,
    failed_runs,
)
from pipeline.tracking.environment import environment_tags
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
    explanation: list[str] = field(default_factory=list)  # why the front is empty or thin (explain.py)
    finals: Finals | None = None       # where the finals ended, when the run held them (finals.py)


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
                                sampler=make_sampler(config.study.sampler, seed=config.study.seed + offset))
    if study.metric_names is None:  # optuna-dashboard and Optuna's plots then name the objectives
        with warnings.catch_warnings():  # marked experimental since Optuna 3.2; its interface is one list
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.metric for o in config.objectives])
    if existing is None:
        study.set_user_attr(DEFINITION, definition)
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
    target = study.user_attrs.get(TARGET)
    if target is not None and complete < target:
        return target, True
    study.set_user_attr(TARGET, complete + trials)
    return complete + trials, False


def run_study(prepared: PreparedStudy, *, trials: int, console: Console | None = None,
              refine: int | None = None, choose: Choose | None = None, finals: int = 0,
              decide_on: tuple[Objective, ...] | None = None) -> StudyReport:
    """Bring the study to ``trials`` more completed trials, or finish the target an interrupted or shared run
    left open, then refine its front with up to ``refine`` more requests (default: the config's
    ``evaluation.refine_requests``; see ``pipeline.search.topup``), hold the finals of the policy ``choose``
    with up to ``finals`` more requests (:mod:`pipeline.search.finals`; a pair decided on ``decide_on``, default:
    every objective), and attach its front to the parent run.

    Returns:
        Where everything was recorded, every completed trial, and the front.

    Raises:
        InputError: the study exists with another definition (nothing recorded).
        PipelineError: MLflow failed, or too many trials in a row failed.
    """
    return StudyRun(prepared, trials=trials, console=console or Console(stderr=True), refine=refine,
                    choose=choose, finals=finals, decide_on=decide_on).run()


class StudyRun:
    """One run of a study, in the method's order: :meth:`open` the study (the baseline enqueued first in a new
    one) and its parent run, :meth:`describe` it on that run, :meth:`optimize` (each trial through
    :meth:`evaluate`), refine the front (``TrialLoop.refine``), and finish with the front attached
    (:func:`_finish`)."""

    def __init__(self, prepared: PreparedStudy, *, trials: int, console: Console, refine: int | None,
                 choose: Choose | None = None, finals: int = 0,
                 decide_on: tuple[Objective, ...] | None = None) -> None:
        self.prepared, self.config, self.console = prepared, prepared.config, console
        self.decide_on = decide_on or prepared.config.objectives
        self.trials = trials
        self.choose, self.finals_budget = choose, finals
        self.finals: Finals | None = None
        self.refine_budget = self.config.evaluation.refine_requests if refine is None else refine
        self.plan = trial_plan(prepared)
        reps = self.config.evaluation.repetitions
        self.per_trial = len(prepared.examples) * reps
        self.ordered = prepared.experiment.ordered(self.config.evaluation.split)
        self.definition = definition_of(prepared)
        self.new_trials = 0
        self.stop_reason: str | None = None  # a measurement that could not be recorded: the study stops
        self.reference: InferenceSettings | None = None  # the drift monitor's reference setting, once chosen

    def run(self) -> StudyReport:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.open()
        self.describe()
        with study_progress(self.console, trials=self.target - self.complete, requests=self.per_trial) as progress:
            self.progress = progress
            status, reason = "FAILED", ""
            try:
                self.optimize()
                if self.refine_budget and not self.stop_reason:
                    self.loop.refine(budget=self.refine_budget,
                                     most=len(self.ordered) * self.config.evaluation.repetitions,
                                     console=self.console)
                if self.choose is not None and not self.stop_reason:
                    self.hold_finals()
                status = "FINISHED"
            except KeyboardInterrupt:
                status, reason = "KILLED", "interrupted"
                raise
            except PipelineError as exc:
                reason = str(exc)
                raise
            finally:
                try:
                    report = _finish(self.study, self.tracker, self.prepared, status, reason=reason,
                                     new_trials=self.new_trials, finals=self.finals, records=self.records.get)
                except PipelineError:
                    if status == "FINISHED":
                        raise
                    # the run already failed: report that error, not a second one from the same broken store
        return report

    def open(self) -> None:
        """Open (or create) the study and its MLflow parent run under the study lock, fail dead workers' trials,
        and set the target this run works towards."""
        config, prepared = self.config, self.prepared
        name = config.study.name
        storage = open_storage(prepared.storage_url, heartbeat_interval_s=config.study.heartbeat_interval_s,
                               grace_period_s=config.study.grace_period_s)
        with study_lock(prepared.storage_url, name):
            self.study = _open_study(prepared, storage, self.definition)
            recover_dead_trials(self.study)
            self.target, resumed = _target(self.study, self.trials)
            self.tracker = StudyTracker.open(tracking_uri=prepared.tracking_uri,
                                             experiment_name=config.tracking.experiment_name, run_name=name,
                                             resume_run_id=self.study.user_attrs.get(PARENT_RUN))
            self.study.set_user_attr(PARENT_RUN, self.tracker.parent_run_id)
        self.tracker.close_failed_runs(failed_runs(self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))))
        self.complete = len(measured_trials(self.study))
        if resumed:
            self.console.print(f"resuming study {name!r}: {self.target - self.complete} of its {self.target} trials "
                               "still to run (an interrupted run, or other workers)", highlight=False)
        self.records = TrialRecords(lambda run_id: self.tracker.read_table(run_id, "requests.json"),
                                    list(prepared.experiment.requests), prepared.experiment.scorer)
        self.drift = study_monitor(self.study, prepared, self.plan, self.tracker, lambda: self.reference,
                                   self.console)

    def hold_finals(self) -> None:
        """The finals of the policy's choice (:mod:`pipeline.search.finals`), recorded on the parent run: the
        verdict as tags (``finals``, ``finals.chosen``, ``finals.tied``) and each rival as a row of
        ``finals.json``."""
        config = self.config
        if not front_trials(self.study):
            return
        state = Finalists(self.study, self.decide_on, self.choose, self.records.get, config.evaluation.error_rate,
                          most=len(self.ordered) * config.evaluation.repetitions, seed=config.study.seed)
        self.finals = self.loop.finals(state, budget=self.finals_budget, console=self.console)
        self.tracker.tag_run(self.tracker.parent_run_id, {
            "finals": self.finals.summary(), "finals.chosen": str(self.finals.chosen),
            "finals.tied": ",".join(map(str, self.finals.tied)) or "none",
            "finals.budget": str(self.finals_budget)})
        self.tracker.log_parent_table(pd.DataFrame(self.finals.rows()), "finals.json")

    def describe(self) -> None:
        """Record what the study is on its parent run: its definition, the environment, the dataset."""
        config, prepared, evaluation = self.config, self.prepared, self.config.evaluation
        self.env_tags = environment_tags(prepared.backend, config.path.parent)
        # How each trial's requests are spent (they may change between runs of a study: tags, not params).
        self.env_tags.update({"evaluation.stages": ",".join(map(str, evaluation.stages)) or "none",
                              "evaluation.racing_error_rate": f"{evaluation.racing_error_rate:g}",
                              "evaluation.error_rate": f"{evaluation.error_rate:g}",
                              "evaluation.refine_requests": str(self.refine_budget),
                              "evaluation.drift_every": str(evaluation.drift_every)})
        dataset = pd.DataFrame([{"id": e.id, "request": e.request, "expected": json.dumps(e.expected)}
                                for e in prepared.examples])
        self.tracker.log_study(
            params={f"study.{k}": v for k, v in self.definition.items()},
            tags={**self.env_tags, "study": config.study.name, "optuna_storage": redact_url(prepared.storage_url),
                  "config": str(config.path), "backend_choice": prepared.backend_choice,
                  "experiment": prepared.experiment.name, "label": prepared.experiment.label_pointer or "none"},
            dataset=dataset, dataset_name=f"{prepared.experiment.name}-{evaluation.split}",
            dataset_source=str(prepared.experiment.dataset_path), split=evaluation.split,
            digest=prepared.experiment.digest)

    def optimize(self) -> None:
        """The loop of new trials, until the target is met (:class:`pipeline.search.loop.TrialLoop`)."""
        config, study = self.config, self.study
        self.loop = TrialLoop(
            study, self.evaluate, config=config, storage_url=self.prepared.storage_url,
            stopped=lambda: self.stop_reason,
            on_recovered=lambda trials: self.tracker.close_failed_runs(failed_runs(trials)),
            on_trial=self.progress.trial_done,
            resume=lambda t: resumable(study, t, config.objectives, self.records.get,
                                       config.evaluation.racing_error_rate, seed=config.study.seed),
            on_exhausted=lambda n: self.console.print(
                f"the sampler proposed only settings already measured ({n} in a row): the search space looks "
                f"exhausted; stopping with {len(measured_trials(study))} measured trials", highlight=False))
        self.loop.optimize(target=self.target,
                           batch=config.study.batch or (1 if self.prepared.backend.keeps_contexts else 4))

    def evaluate(self, trial: optuna.Trial, settings: InferenceSettings) -> list[float]:
        """Measure one trial (from scratch, or topping up an earlier one) in its own MLflow run; return its
        objective values."""
        source = top_up_source(self.study, trial)
        run_id = self._start(trial, settings, source)
        try:
            outcome, ran = self._measure(trial, settings, source)
            values = trial_values(trial, outcome, self.config, extra={"requests_run": float(ran)})
        except BaseException as exc:
            self.tracker.fail_trial(run_id, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.progress.trial_measured()
        self.records.keep(trial.number, outcome.records)
        if self.drift is not None and not outcome.infeasible:
            self.drift.trial_done(trial.number)
        self._record(trial, settings, run_id, source, outcome)
        self.new_trials += 1
        return values

    def _start(self, trial: optuna.Trial, settings: InferenceSettings,
               source: optuna.trial.FrozenTrial | None) -> str:
        """Open the trial's run, tagged as the baseline (a top-up of the baseline is its latest measurement) or
        the top-up it is, and take the drift monitor's reading; return the run id."""
        baseline = bool(trial.user_attrs.get(BASELINE) or source and source.user_attrs.get(BASELINE))
        if baseline:
            trial.set_user_attr(BASELINE, True)
        run_id = self.tracker.start_trial(trial.number, params=settings.as_params(),
                                          tags={**self.env_tags, "study": self.config.study.name,
                                                **({BASELINE: "true"} if baseline else {}),
                                                **({TOPS_UP: str(source.number)} if source else {})})
        trial.set_user_attr(RUN_ID, run_id)
        if source is not None:
            trial.set_user_attr(TOPS_UP, source.number)
        drift = self.drift
        if drift is not None:
            self.reference = self.reference or reference_setting(self.study, self.config) or settings
            if drift.last is None:
                drift.start()
            if drift.last is not None:
                trial.set_user_attr(REFERENCE, drift.last)
                self.tracker.tag_run(run_id, {REFERENCE: f"{drift.last:.1f}"})
        self.progress.trial_started(trial.number)
        return run_id

    def _measure(self, trial: optuna.Trial, settings: InferenceSettings,
                 source: optuna.trial.FrozenTrial | None) -> tuple[TrialOutcome, int]:
        """The trial's outcome and how many requests it ran: a new trial races the front (the baseline, the
        reference every point is seen against, is measured in full, never stopped early); a top-up runs the
        next requests of the earlier trial and combines them with its records."""
        config, plan = self.config, self.plan
        if source is None:
            baseline = bool(trial.user_attrs.get(BASELINE))
            racer = None if baseline or not config.evaluation.stages else Racer(
                [(t.number, self.records.get(t)) for t in front_trials(self.study)], config.objectives,
                config.evaluation.racing_error_rate, config.evaluation.stages, seed=config.study.seed)
            outcome = run_trial(settings, self.prepared.examples, replace(plan, abort_on=()) if baseline else plan,
                                on_request=self.progress.request_done, race=racer and racer.check)
            return outcome, len(outcome.records)
        reps = config.evaluation.repetitions
        before = self.records.get(source)
        wanted = trial.user_attrs.get(TOP_UP_REQUESTS) or self.per_trial - len(before)
        added = run_trial(settings, next_requests(self.ordered, before, -(-wanted // reps)),
                          replace(plan, abort_on=()), on_request=self.progress.request_done)
        return combined(before, source.user_attrs[METRICS], added), len(added.records)

    def _record(self, trial: optuna.Trial, settings: InferenceSettings, run_id: str,
                source: optuna.trial.FrozenTrial | None, outcome: TrialOutcome) -> None:
        """Finish the trial's run: its metrics, why it is infeasible, stopped or raced, its tables; mark the
        trial it topped up as superseded. A run whose artifacts cannot be written keeps its metrics, and the
        study stops after this trial."""
        metrics = trial.user_attrs[METRICS]
        tags = {"feasible": str(feasible(trial.constraints.values())).lower(), **outcome.tags}
        if outcome.infeasible:
            tags[INFEASIBLE] = outcome.infeasible
        if outcome.aborted:
            tags[ABORTED] = outcome.aborted.describe()
        if outcome.raced:
            tags[RACED] = outcome.raced.describe()
        if outcome.records:  # where its time went, in words (pipeline.measure.bottleneck)
            tags[BOTTLENECK] = verdict(metrics, concurrency=settings.concurrency,
                                       slots=settings.server.get("parallel", 1)).sentence
        exhausted = sum(r.thinking_exhausted for r in outcome.records)
        if exhausted:
            tags["thinking_exhausted"] = note = (
                f"thinking used up num_predict {settings.num_predict} in {exhausted} of {len(outcome.records)} "
                "requests, which got no answer; raise num_predict or set think: off")
            self.console.print(f"trial {trial.number}: {note}", highlight=False)
        try:
            self.tracker.finish_trial(run_id, metrics=metrics, tags=tags,
                                      tables={"requests.json": requests_frame(outcome.records),
                                              "field_errors.json": field_errors(outcome.records)})
            if source is not None:
                self.tracker.tag_run(source.user_attrs[RUN_ID], {"superseded_by": str(trial.number)})
        except ArtifactWriteError as exc:
            self.stop_reason = str(exc)  # the measurement stands: told COMPLETE, then the study stops


def trial_plan(prepared: PreparedStudy) -> TrialPlan:
    """What every trial of the study runs with."""
    config = prepared.config
    return TrialPlan(prompts=prepared.prompts, backend=prepared.backend, scorer=prepared.experiment.scorer,
                     warmup=prepared.warmup, warmup_requests=config.engine.warmup_requests,
                     repetitions=config.evaluation.repetitions, margin=config.engine.context_margin,
                     abort_on=config.constraints if config.evaluation.early_abort else (),
                     never_cache=prepared.experiment.never_cache, server_embedder=prepared.embedder)


def _finish(study: optuna.Study, tracker: StudyTracker, prepared: PreparedStudy, status: str, *, reason: str,
            new_trials: int, finals: Finals | None = None,
            records: Callable[[optuna.trial.FrozenTrial], list[RequestRecord]] | None = None) -> StudyReport:
    config = prepared.config
    trials = trials_frame(study, config.objectives, records, alpha=config.evaluation.error_rate,
                          seed=config.study.seed)
    front = front_frame(trials, config.objectives)
    explanation = front_explanation(trials, front, config)
    front_error = None
    with tempfile.TemporaryDirectory() as folder:
        plot = plot_fronts({config.study.name: trials}, config.objectives, Path(folder) / "pareto_front.png",
                           title=f"{config.study.name}: Pareto front")
        if not trials.empty:
            states = [t.state for t in study.trials]
            try:
                note = study_note(trials, front, config, explanation)
                pareto = {run: bool(on) for run, on in zip(trials[RUN_ID], trials["pareto"]) if isinstance(run, str)}
                tracker.log_front(trials=trials, front=front, plot=plot, note=note, pareto=pareto, metrics={
                    "front_size": len(front),
                    "trials_complete": states.count(TrialState.COMPLETE),
                    "trials_reused": sum(REUSED in t.user_attrs for t in study.trials),
                    "trials_failed": states.count(TrialState.FAIL),
                    "trials_infeasible": int((~trials["feasible"]).sum())})
                gone = superseded(study)
                for trial in study.get_trials(deepcopy=False):
                    if trial.number in gone and trial.user_attrs.get(RUN_ID):
                        tracker.tag_run(trial.user_attrs[RUN_ID], {"pareto": "false"})
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
                       tracker.run_url(), trials, front, new_trials,
                       explanation=explanation, finals=finals)

