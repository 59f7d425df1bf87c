"""Optuna's ask → evaluate → tell loop, one for a study's optimisation and for its refinement.

:class:`TrialLoop` asks trials under the study lock, runs each through the study's ``evaluate`` with heartbeats,
and tells Optuna the outcome: values, or FAIL with the reason. Nothing it asked is ever left RUNNING.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState
from rich.console import Console

from pipeline.engines.settings import InferenceSettings
from pipeline.errors import BackendError, PipelineError
from pipeline.search.config import StudyConfig
from pipeline.search.finals import Finals
from pipeline.search.fronts import measured_trials
from pipeline.search.reuse import REUSE_LIMIT, reuse_measurement
from pipeline.search.space import suggest
from pipeline.search.storage import WORKER, heartbeat, heartbeat_helpers, recover_dead_trials, study_lock
from pipeline.search.topup import TOP_UP_REQUESTS, TopUp, next_top_up
from pipeline.search.trials import FAILURE, INFEASIBLE, METRICS, RAN_BY, TARGET, TOPS_UP

__all__ = ["Evaluate", "TrialLoop"]

Evaluate = Callable[[optuna.Trial, InferenceSettings], list[float]]
Plan = tuple[optuna.Trial, InferenceSettings]


class TrialLoop:
    """The loop of one study run.

    Args:
        evaluate: measures one trial's settings and returns its objective values.
        stopped: why the study must stop after the trial that was just told (a measurement that could not be
            recorded), or None.
        on_recovered: receives the trials of dead workers that were failed (their MLflow runs are closed).
        on_trial: called after each trial, measured or failed.
        resume: whether an earlier trial with the same settings should be topped up instead of reused.
        on_exhausted: told how many proposals in a row were settings already measured, when the loop ends so.
    """

    def __init__(self, study: optuna.Study, evaluate: Evaluate, *, config: StudyConfig, storage_url: str,
                 stopped: Callable[[], str | None] = lambda: None,
                 on_recovered: Callable[[list[optuna.trial.FrozenTrial]], None] = lambda trials: None,
                 on_trial: Callable[[], None] = lambda: None,
                 resume: Callable[[optuna.trial.FrozenTrial], bool] = lambda earlier: False,
                 on_exhausted: Callable[[int], None] = lambda n: None) -> None:
        self.study, self.evaluate, self.config, self.storage_url = study, evaluate, config, storage_url
        self.stopped, self.on_recovered, self.on_trial = stopped, on_recovered, on_trial
        self.resume, self.on_exhausted = resume, on_exhausted

    def optimize(self, *, target: int, batch: int) -> None:
        """Ask, evaluate and tell until the study has ``target`` completed trials.

        Trials are asked ``batch`` at a time (default: 4 against a server, 1 in process) under the study lock,
        never more than are left to do counting the ones other workers are running, so N requested trials are N
        trials whatever the number of workers. The trials of a batch run grouped by ``num_ctx`` and server
        settings (``InferenceSettings.load_key``), the loaded ones first: every change of them makes a server
        reload the model or restart. A trial whose engine fails is FAIL and the study goes on, until
        ``study.max_consecutive_failures`` fail in a row. On any exit, the trials asked but not run are told FAIL.
        A trial whose settings were measured before is answered from that measurement (:func:`reuse_measurement`)
        and does not count; after ``REUSE_LIMIT`` such trials in a row the study ends.

        Raises:
            PipelineError: too many trials failed in a row, or the study had to stop (``stopped``).
        """
        failures, last_key, reused = 0, None, 0
        # How long to wait for other workers' trials before leaving them (and the open target) to a later run.
        wait_s = self.config.study.grace_period_s + 2 * self.config.study.heartbeat_interval_s
        patience = time.monotonic() + wait_s
        while True:
            asked, running = self._ask_batch(target, batch)
            if not asked:
                # Other workers' trials may still fail, or their worker die, and have to run again here.
                if running == 0 or time.monotonic() > patience:
                    return
                time.sleep(1.0)
                continue
            plans = [(trial, self._settings(trial)) for trial in asked]
            plans.sort(key=lambda plan: (plan[1].load_key != last_key, plan[1].load_key))
            repeats = [plan for plan in plans if reuse_measurement(self.study, plan[0], resume=self.resume)]
            plans = [plan for plan in plans if plan not in repeats]
            reused = reused + len(repeats) if not plans else 0
            if reused >= REUSE_LIMIT:
                # Everything the sampler proposes has been measured: the space is exhausted (or the sampler stuck).
                self.study.set_user_attr(TARGET, len(measured_trials(self.study)))
                self.on_exhausted(reused)
                return
            for index, (trial, settings) in enumerate(plans):
                if index and reuse_measurement(self.study, trial, resume=self.resume):
                    continue  # an earlier trial of this batch measured (or topped up) the same settings
                try:
                    self._run(trial, settings)
                except BackendError as exc:
                    failures += 1
                    self.on_trial()
                    if failures >= self.config.study.max_consecutive_failures:
                        self._fail_unrun(plans[index + 1:])
                        raise PipelineError(f"study stopped after {failures} failed trials in a row; last: "
                                            f"{exc}") from exc
                    continue
                except BaseException:
                    self._fail_unrun(plans[index + 1:])
                    raise
                failures = 0
                if not trial.user_attrs.get(INFEASIBLE):
                    last_key = settings.load_key
                self.on_trial()
            patience = time.monotonic() + wait_s

    def refine(self, *, budget: int, most: int, console: Console) -> None:
        """Top up the front and the points whose intervals reach it (``topup.next_top_up``), one trial per
        top-up, until nothing is left to decide or ``budget`` requests are spent; an engine failure ends the
        refinement, not the study."""
        spent = 0
        while (choice := next_top_up(self.study, self.config.objectives, budget=budget - spent,
                                     most=most)) is not None:
            ran = self._top_up(choice, "refining", f"{spent} of {budget} spent", console)
            if not ran:
                return
            spent += ran

    def finals(self, state: Callable[[int], Finals], *, budget: int, console: Console) -> Finals:
        """Top up the policy's choice and its tied rivals (``finals.finals_of``; ``state`` gives where the finals
        stand with the budget left) until the choice is decided against each, the split is used up or ``budget``
        requests are spent; an engine failure ends the finals, not the study.

        Returns:
            Where the finals ended.
        """
        spent = 0
        while (now := state(budget - spent)).top_up is not None:
            ran = self._top_up(now.top_up, "finals", f"{now.chosen} tied with {', '.join(map(str, now.tied))}; "
                                                     f"{spent}/{budget} spent", console)
            if not ran:
                break  # nothing was measured: where the finals stand has not changed
            spent += ran
        return now

    def _top_up(self, choice: TopUp, doing: str, detail: str, console: Console) -> int:
        """One top-up as a trial of its own; returns the requests it ran (0: an engine failure, or nothing left
        to measure)."""
        earlier = choice.trial
        with study_lock(self.storage_url, self.study.study_name):
            self.study.enqueue_trial(earlier.params, user_attrs={TOPS_UP: earlier.number,
                                                                 TOP_UP_REQUESTS: choice.requests})
            trial = self._ask()
        settings = self._settings(trial)
        console.print(f"{doing}: trial {trial.number} tops up trial {earlier.number} "
                      f"({earlier.user_attrs[METRICS]['requests_measured']:.0f} requests) with "
                      f"{choice.requests} more ({detail})", highlight=False)
        try:
            self._run(trial, settings)
        except BackendError as exc:
            console.print(f"{doing} stopped: {exc}", highlight=False)
            return 0
        return int(trial.user_attrs[METRICS]["requests_run"])

    def _ask_batch(self, target: int, batch: int) -> tuple[list[optuna.Trial], int]:
        """Under the study lock: fail dead workers' trials, then ask as many as are left (at most ``batch``).
        Returns the asked trials and how many other trials are running."""
        asked: list[optuna.Trial] = []
        with study_lock(self.storage_url, self.study.study_name):
            recovered = recover_dead_trials(self.study)
            running = len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            left = target - len(measured_trials(self.study)) - running
            asked = [self._ask() for _ in range(min(batch, left))] if left > 0 else []
        self.on_recovered(recovered)
        return asked, running

    def _ask(self) -> optuna.Trial:
        with heartbeat_helpers():  # asking on a heartbeat storage outside Study.optimize warns
            trial = self.study.ask()
        trial.set_user_attr(RAN_BY, WORKER)
        return trial

    def _settings(self, trial: optuna.Trial) -> InferenceSettings:
        return suggest(trial, self.config.search_space, seed=self.config.study.seed)

    def _run(self, trial: optuna.Trial, settings: InferenceSettings) -> None:
        """Evaluate one asked trial with heartbeats and tell Optuna. Whatever the evaluation raises fails the
        trial (with the reason) and propagates.

        Raises:
            PipelineError: the trial was told, but the study must stop (``stopped``).
        """
        try:
            with heartbeat(self.study, trial):
                values = self.evaluate(trial, settings)
        except BaseException as exc:
            self._fail(trial, f"{exc}" if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}")
            raise
        self.study.tell(trial, values)
        reason = self.stopped()
        if reason:
            raise PipelineError(reason)

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr(FAILURE, reason[:2000])
        self.study.tell(trial, state=TrialState.FAIL)

    def _fail_unrun(self, plans: list[Plan]) -> None:
        for trial, _ in plans:
            self._fail(trial, "not run: the study stopped first")
