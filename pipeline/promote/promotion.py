"""Promote one point of a study's front: choose it, re-check it on held-out data, write and register its bundle.

The chosen trial (:mod:`pipeline.promote.choose`) is replayed through the study's own code path
(:func:`pipeline.search.space.replay` → :func:`pipeline.measure.runner.run_trial`), on the ``holdout`` split that
no study uses, with repetitions. Promotion is refused on evidence only (:func:`decide`): when the candidate is less
accurate than the baseline (measured side by side, paired) by more than the margin with its whole interval, or a
limit (a constraint, the SLA) is broken with the held-out interval past it, or a limit that must be shown met
(false hits) is not shown met by it. The fall from dev to held-out is
reported, not refused: dev accuracy is the best of a study's noisy estimates. An accepted point becomes a bundle
(:mod:`pipeline.promote.bundle`: Modelfile, sidecar, launch command), written first to a staging folder and read
back: held-out requests replayed through an engine configured only from those files must answer as the trial's
settings did (:mod:`pipeline.promote.check`). Then the bundle is copied to the output folder and a new version of
a registered model gets the ``champion`` alias. Everything is recorded in one MLflow run
(:class:`pipeline.tracking.promotion.PromotionRun`), a refused promotion too.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from rich.console import Console

from pipeline.engines.base import Backend, ManagedServer, ModelPublisher
from pipeline.engines.settings import InferenceSettings, settings_of
from pipeline.errors import ConfigError, PipelineError
from pipeline.measure.gain import Gain, accuracy_metrics, gain_frame, gain_metrics, paired_gain, slower
from pipeline.measure.intervals import ERROR_RATE, wilson
from pipeline.measure.metrics import measured_metrics
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Constraint, lookup, with_role
from pipeline.measure.runner import run_trial
from pipeline.measure.sidebyside import SideBySide, measure_on_own_backends
from pipeline.measure.tables import field_errors, requests_frame, side_by_side_frame
from pipeline.promote.bundle import BundleFiles, bundle_of, serving_extras, write_bundle
from pipeline.promote.check import BundleCheck, BundleCheckFailed, check_bundle
from pipeline.promote.choose import Choice, MenuRow, Preference, choose_trial, machine_states_note, menu
from pipeline.promote.modelfile import sanitize
from pipeline.promote.policies import DEFAULT, policy_named
from pipeline.search.finals import Finals
from pipeline.search.objectives import request_slos, truncation_reason
from pipeline.search.prepare import PreparedStudy
from pipeline.search.snapshot import StudySnapshot, open_for_promotion
from pipeline.search.space import replay
from pipeline.search.study import run_study, trial_plan
from pipeline.search.trials import TrialView
from pipeline.tracking.promotion import PromotionRun

__all__ = ["CHAMPION", "MARGIN", "PromotionPolicy", "PromotionRefused", "PromotionReport", "decide", "fall_note",
           "promote"]

CHAMPION = "champion"                                # the alias of the registered version promoted last
# The dev requests the finals may add before a policy chooses, by default: for the knee half the default study's
# 16 trials × 20 requests; none for the sla policy, whose choice the finals moved across its latency limit more
# often than they decided it (BENCHMARKS.md, 9).
FINALS_REQUESTS = {"accuracy": 160, "latency": 160, "knee": 160, "sla": 0, "trial": 0}
# How far below the most accurate point (accuracy policy) or the baseline (latency policy, refusal) a setting's
# accuracy may be, in the accuracy metric's units (BENCHMARKS.md, 10).
MARGIN = 0.02
BASELINE, CANDIDATE = "baseline", "candidate"      # the two arms of the side-by-side measurement


class PromotionRefused(PipelineError):
    """The chosen point did not hold up on held-out data; nothing was registered (exit code 3). ``report`` holds
    what was measured, when the refusal came after the held-out measurement."""

    exit_code = 3

    def __init__(self, message: object = "", *, report: PromotionReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class PromotionPolicy:
    policy: str = DEFAULT              # a name of pipeline.promote.policies.REGISTRY
    sla_p95_ms: float | None = None
    trial: int | None = None
    margin: float = MARGIN
    repetitions: int = 2
    check_requests: int = 8            # held-out requests replayed through the written bundle
    prefer: Preference = "policy"      # what breaks a tie the finals could not (pipeline.promote.choose)
    finals_requests: int | None = None  # dev requests the finals may add before the choice (0: none; None: the
                                        # policy's default, FINALS_REQUESTS)
    metric: str | None = None          # the accuracy metric checked on held-out data; default: first maximised
                                       # objective
    registered_model: str | None = None
    ollama_name: str | None = None
    output: Path = Path("promoted")

    @property
    def finals_budget(self) -> int:
        """The dev requests the finals may add: the policy's default unless given."""
        return FINALS_REQUESTS.get(self.policy, 0) if self.finals_requests is None else self.finals_requests


@dataclass
class PromotionReport:
    study: str
    trial: int
    settings: InferenceSettings
    dev: dict[str, float]
    holdout: dict[str, float]
    run_id: str
    baseline: dict[str, float] | None = None
    gains: list[Gain] = field(default_factory=list)
    modelfile: Path | None = None
    sidecar: Path | None = None
    launch: Path | None = None         # the server's launch command (llama-server)
    model_version: str | None = None
    notes: list[str] = field(default_factory=list)
    choice: str = ""                   # how the choice was narrowed (:func:`pipeline.promote.choose.choose_trial`)
    menu: list[MenuRow] = field(default_factory=list)  # what each policy would promote (choose.menu)
    accuracy: str = ""                 # the accuracy metric judged on held-out data
    check: BundleCheck | None = None   # the written bundle replayed (:mod:`pipeline.promote.check`)
    finals: Finals | None = None       # the finalists measured until the choice was decided, when they were


@dataclass(frozen=True)
class _HeldOut:
    """The held-out measurement of the candidate (and, with a baseline in the config, of the baseline beside it)."""

    records: list[RequestRecord]       # the candidate's
    metrics: dict[str, float]          # the candidate's
    side: SideBySide | None = None
    baseline: dict[str, float] | None = None
    gains: list[Gain] | None = None


def decide(policy: PromotionPolicy, constraints: tuple[Constraint, ...], metric: str, holdout: dict[str, float], *,
           gains: list[Gain] | None = None, baseline: dict[str, float] | None = None) -> str | None:
    """Why a point must not be promoted, on held-out evidence only, or None.

    Refused: the candidate is less accurate than the baseline by more than the margin with the whole paired
    interval of the difference (``gains``, measured side by side; without them, the two values), or a limit (the
    config's constraints, ``policy.sla_p95_ms``) is broken with the held-out 95% interval wholly past it (the
    value alone where the metric has no interval); a limit the registry says must be shown met (``shown``:
    false hits) is refused unless the interval lies within it. A limit on a metric not measured on held-out data
    is not judged (the report says which, :func:`unjudged`).
    """
    gain = next((g for g in gains or () if g.metric == metric and g.kind == "difference"), None)
    if gain is not None and gain.high < -policy.margin:
        return (f"held-out {metric} is below the baseline's (the settings served today, measured side by side) by "
                f"more than the margin {policy.margin:g}: {gain.change:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}], "
                "paired")
    if gain is None and baseline is not None and holdout[metric] < baseline[metric] - policy.margin:
        return (f"held-out {metric} {holdout[metric]:.3f} is below the baseline's {baseline[metric]:.3f} by more "
                f"than the margin {policy.margin:g}")
    limits = list(constraints)
    if policy.sla_p95_ms is not None:
        limits.append(Constraint("latency_p95_ms", max=policy.sla_p95_ms))
    for limit in limits:
        if limit.metric not in holdout:
            continue
        low = holdout.get(f"{limit.metric}_ci95_low", holdout[limit.metric])
        high = holdout.get(f"{limit.metric}_ci95_high", holdout[limit.metric])
        declared = lookup(limit.metric)
        if declared is not None and declared.shown and limit.breaks(limit.reading(holdout)):
            return (f"held-out data does not show {limit.describe()}: {holdout[limit.metric]:.4g} (95% interval "
                    f"[{low:.4g}, {high:.4g}]); {_evidence_needed(limit)}")
        nearest = low if limit.max is not None else high  # the end of the interval closest to meeting the limit
        if limit.breaks(nearest):  # an infinite end (no interval) points towards meeting it: no evidence
            return (f"held-out data breaks the SLA {limit.describe()}: {holdout[limit.metric]:.4g} "
                    f"(95% interval [{low:.4g}, {high:.4g}])")
    return None


def _evidence_needed(limit: Constraint) -> str:
    """What would show a limit on a rare event met: the number of held-out requests without one whose Wilson
    interval's upper end is within it."""
    if limit.max is None or not 0 < limit.max < 1:
        return "more held-out requests would narrow the interval"
    needed = next(n for n in range(1, 10**7) if wilson(0, n, ERROR_RATE)[1] <= limit.max)
    return f"about {needed} held-out requests without one would show it"


def unjudged(policy: PromotionPolicy, constraints: tuple[Constraint, ...], holdout: dict[str, float]) -> list[str]:
    """The limits :func:`decide` could not judge: their metric was not measured on held-out data (a metric
    that a setting without it meets, such as false hits without a cache, is judged)."""
    metrics = [c.metric for c in constraints if (d := lookup(c.metric)) is None or d.absent is None]
    metrics += ["latency_p95_ms"] if policy.sla_p95_ms is not None else []
    return [m for m in dict.fromkeys(metrics) if m not in holdout]




def fall_note(metric: str, dev: dict[str, float], holdout: dict[str, float]) -> str | None:
    """The fall of ``metric`` from dev to held-out, as information: the chosen point's dev value is the best of
    the study's noisy estimates, so held-out is expected to be lower (the winner's curse); None: no fall."""
    if metric not in dev or metric not in holdout or not holdout[metric] < dev[metric]:
        return None
    return (f"held-out {metric} {holdout[metric]:.3f} is below its dev value {dev[metric]:.3f}: expected, since "
            "the point was chosen for being best on dev (the winner's curse); the side-by-side with the baseline "
            "is what decides")


def promote(prepared: PreparedStudy, study_name: str, policy: PromotionPolicy, *,
            baseline_backend: Backend | None = None, on_request: Callable[[], None] = lambda: None,
            console: Console | None = None) -> PromotionReport:
    """Choose, re-check and promote a point of ``study_name``'s front.

    With a baseline in the config, the candidate and the baseline are measured side by side on the held-out
    requests (:mod:`pipeline.measure.sidebyside`; the baseline on ``baseline_backend``, default: a second backend
    made from the config) and the gain is reported with paired intervals (:mod:`pipeline.measure.gain`).

    Returns:
        What was promoted, with held-out metrics, the files written and the registered version.

    Raises:
        InputError: the study or trial cannot be found, or the config does not match the study.
        PromotionRefused: held-out accuracy or latency failed, or the written bundle did not reproduce the setting.
        PipelineError: the tracking store or the Model Registry failed.
    """
    config = prepared.config
    study = open_for_promotion(prepared, study_name)
    finals, skipped = _hold_finals(prepared, study, policy, console or Console(stderr=True, quiet=True))
    if finals is not None:
        study = open_for_promotion(prepared, study_name)  # the front, its ties and the choice, from the top-ups
    alpha = config.evaluation.error_rate
    choice = choose_trial(study, config.objectives, policy, alpha=alpha)
    chosen = choice.trial
    offered = menu(study, config.objectives, policy, chosen, alpha=alpha)
    quality = with_role(config.objectives, "accuracy")
    metric = policy.metric or (quality.metric if quality is not None else "field_accuracy")
    settings = replay(chosen.params, config.search_space, seed=study.seed)
    held = _measure_held_out(prepared, settings, policy, seed=study.seed, baseline_backend=baseline_backend,
                             on_request=on_request)
    dev = chosen.metrics
    run = _record(prepared, study, choice, settings, policy, held)
    not_judged = unjudged(policy, config.constraints, held.metrics)
    notes = [choice.why, machine_states_note(study, chosen, threshold=config.evaluation.drift_threshold), skipped,
             fall_note(metric, dev, held.metrics),
             f"not measured on held-out data, so not judged: {', '.join(not_judged)}" if not_judged else None]
    report = PromotionReport(study_name, chosen.number, settings, dev, held.metrics, run.run_id,
                             baseline=held.baseline, gains=held.gains or [], choice="; ".join(n for n in notes if n),
                             finals=finals, menu=offered, accuracy=metric)
    run.tag("policy.sentence", policy_named(policy.policy).sentence)
    run.tag("policy.margin", f"{policy.margin:g}")
    run.tags({f"menu.{row.policy}": row.describe(metric) for row in offered})
    if finals is not None:
        run.tag("finals", finals.summary())
        run.log_table(pd.DataFrame(finals.rows()), "finals.json")
    if held.gains and slower(held.gains):
        run.tag("slower_than_baseline", slower(held.gains))
    reason = decide(policy, config.constraints, metric, held.metrics, gains=held.gains, baseline=held.baseline)
    if reason is None:
        reason = _write_and_register(prepared, study_name, chosen, settings, policy, report, run, held.records,
                                     metric)
    # The verdict is tagged before the run is closed; a refused promotion's run is FINISHED too (it did its job).
    run.tag("promotion", "refused" if reason else "accepted")
    if reason:
        run.tag("refused_because", reason)
        run.finish()
        raise PromotionRefused(f"refused: trial {chosen.number} of {study_name!r}: {reason}", report=report)
    run.finish()
    return report


def _hold_finals(prepared: PreparedStudy, study: StudySnapshot, policy: PromotionPolicy,
                 console: Console) -> tuple[Finals | None, str]:
    """Measure the policy's finalists on more of the dev split until its choice is decided
    (:mod:`pipeline.search.finals`), as a run of the study: the top-ups are trials of their own, the front is
    attached again.

    Returns:
        Where the finals ended (None: not held), and why they were not held ("" when they were or were not asked).
    """
    if policy.policy == "trial" or policy.finals_budget <= 0 or not study.front:
        return None, ""
    if prepared.config.study.name != study.name:
        return None, (f"no finals: the config's study is {prepared.config.study.name!r}, not {study.name!r}; "
                      "the choice rests on the study's own requests")
    objectives = prepared.config.objectives

    def choose(snapshot: StudySnapshot) -> int:
        return choose_trial(snapshot, objectives, policy, alpha=prepared.config.evaluation.error_rate).trial.number

    # the study's own seed (promote's config may give another: the replay takes the study's too)
    own = replace(prepared, config=prepared.config.with_overrides(study={"seed": study.seed}))
    try:
        report = run_study(own, trials=0, refine=0, choose=choose, finals=policy.finals_budget, console=console,
                           decide_on=policy_named(policy.policy).decides_on(objectives))
    except ConfigError as exc:  # the study was run with another config: its definition does not match
        return None, f"no finals: {exc}"
    return report.finals, ""


def _measure_held_out(prepared: PreparedStudy, settings: InferenceSettings, policy: PromotionPolicy, *, seed: int,
                      baseline_backend: Backend | None, on_request: Callable[[], None]) -> _HeldOut:
    """Measure the candidate on the held-out split, beside the config's baseline when it has one.

    Raises:
        PromotionRefused: a request does not fit its context, or an input was truncated.
    """
    config = prepared.config
    holdout_examples = prepared.experiment.split("holdout")
    plan = replace(trial_plan(prepared), repetitions=policy.repetitions, abort_on=())
    side = None
    if config.baseline is None:
        outcome = run_trial(settings, holdout_examples, plan, on_request=on_request)
    else:
        side = measure_on_own_backends((BASELINE, settings_of(config.baseline, seed=seed)), (CANDIDATE, settings),
                                       holdout_examples, plan, engine=config.engine, first_backend=baseline_backend,
                                       repetitions=policy.repetitions, on_request=on_request)
        outcome = side.outcomes[CANDIDATE]
    if outcome.infeasible:
        raise PromotionRefused(f"refused: on held-out data {outcome.infeasible}")
    if side is not None and side.infeasible:
        raise PromotionRefused(f"refused: on held-out data the {side.infeasible}")
    if any(r.input_truncated for r in outcome.records):
        raise PromotionRefused(f"refused: on held-out data {truncation_reason(outcome.records)}")
    slos = request_slos(config.constraints)
    metrics = measured_metrics(outcome.records, seed=seed, model_loads=outcome.model_loads,
                               model_load_ms=outcome.model_load_ms, span_s=outcome.span_s, slos=slos,
                               resources=outcome.resources, price_per_hour=config.cost.per_hour)
    if side is None:
        return _HeldOut(outcome.records, metrics)
    served = side.outcomes[BASELINE]
    gains = paired_gain(served.records, outcome.records,
                        accuracy_metrics(config.objectives, labelled=prepared.experiment.label is not None), seed=seed)
    return _HeldOut(outcome.records, metrics, side,
                    measured_metrics(served.records, seed=seed, span_s=served.span_s, slos=slos,
                                     resources=served.resources, price_per_hour=config.cost.per_hour), gains)


def _record(prepared: PreparedStudy, study: StudySnapshot, choice: Choice, settings: InferenceSettings,
            policy: PromotionPolicy, held: _HeldOut) -> PromotionRun:
    """Start the promotion's run beside the study's parent run and log what was measured: params, dev and
    held-out metrics, the gain over the baseline, and the request tables.

    Returns:
        The run, still open.
    Raises:
        PipelineError: the tracking store failed when the run was started.
    """
    config, chosen, parent = prepared.config, choice.trial, study.parent_run_id
    run = PromotionRun.start(prepared.tracking_uri, experiment_name=config.tracking.experiment_name,
                             beside_run=parent, run_name=f"promote {study.name} trial {chosen.number}",
                             tags={"kind": "promotion", "source_study": study.name,
                                   "source_trial": str(chosen.number), "source_run": parent or "",
                                   "policy": policy.policy, **({"choice": choice.why} if choice.why else {}),
                                   **prepared.backend.describe()})
    run.log(params={**settings.as_params(), "holdout_requests": len(held.records),
                    "repetitions": policy.repetitions, "margin": policy.margin,
                    **{f"baseline.{k}": v for k, v in (config.baseline or {}).items()}},
            metrics={**{f"holdout_{k}": v for k, v in held.metrics.items()},
                     **{f"dev_{k}": v for k, v in chosen.metrics.items()},
                     **{f"baseline_holdout_{k}": v for k, v in (held.baseline or {}).items()},
                     **gain_metrics(held.gains or [])})
    run.log_table(requests_frame(held.records), "holdout_requests.json")
    errors = field_errors(held.records)
    if not errors.empty:
        run.log_table(errors, "holdout_field_errors.json")
    if held.side is not None:
        run.log_table(side_by_side_frame(held.side), "side_by_side.json")
        run.log_table(gain_frame(held.gains), "gain.json")
    return run


def _write_and_register(prepared: PreparedStudy, study_name: str, chosen: TrialView, settings: InferenceSettings,
                        policy: PromotionPolicy, report: PromotionReport, run: PromotionRun,
                        held_out: list[RequestRecord], metric: str) -> str | None:
    """Make the bundle, write it to a staging folder, check it (:func:`pipeline.promote.check.check_bundle`),
    then copy it to the output folder, record it in ``run`` and register it as the new ``champion`` version;
    fills in the report's notes, check, files and version.

    Returns:
        Why the bundle must not be promoted (it did not reproduce the setting; nothing was written), or None.
    Raises:
        ModelfileError: the Modelfile cannot be written even with rewrites.
        PipelineError: the Model Registry refused the new version.
    """
    modelfile, sidecar = bundle_of(prepared, settings)
    modelfile, notes = sanitize(modelfile)
    report.notes = notes
    name = policy.registered_model or study_name
    sidecar.update({"registered_model": name, "ollama_model": policy.ollama_name, "notes": notes,
                    "source": {"study": study_name, "trial": chosen.number, "storage": prepared.storage_url},
                    "holdout": report.holdout, "dev": report.dev})
    server_name = (policy.ollama_name or name) if isinstance(prepared.backend, ModelPublisher) else None
    if isinstance(prepared.backend, ManagedServer):  # the launch command is the one of the promoted settings
        prepared.backend.start_trial(settings.num_ctx, server=settings.server)
    sidecar.update(serving_extras(prepared, settings))
    header = f"{name}: study {study_name}, trial {chosen.number} (promoted)"
    with tempfile.TemporaryDirectory(prefix="bundle-") as staging:
        staged = write_bundle(Path(staging), modelfile, sidecar, header=header)
        try:
            check = check_bundle(prepared, staged, held_out, requests=policy.check_requests, accuracy=metric,
                                 temperature=settings.temperature, model_name=server_name)
        except BundleCheckFailed as exc:
            run.tag("bundle_check", f"failed: {exc}")
            return str(exc)
        report.check = check
        _record_check(run, check)
        if check.failure:
            return f"the written bundle does not reproduce the trial: {check.failure}"
        policy.output.mkdir(parents=True, exist_ok=True)
        files = BundleFiles(*(None if p is None else Path(shutil.copy2(p, policy.output / p.name))
                              for p in (staged.modelfile, staged.sidecar, staged.launch)))
    report.modelfile, report.sidecar, report.launch = files.modelfile, files.sidecar, files.launch
    run.log_bundle(files.paths)
    report.model_version = run.register(name, alias=CHAMPION,
                                        description="Ollama Modelfiles promoted from tuning studies",
                                        tags={"source_study": study_name, "source_trial": str(chosen.number)})
    return None


def _record_check(run: PromotionRun, check: BundleCheck) -> None:
    """The bundle check on the promotion's run: its verdict and summary as tags, the requests and paired gaps
    as metrics, each request's two answers as a table."""
    run.tag("bundle_check", "failed" if check.failure else "passed")
    run.tag("bundle_check_summary", check.summary())
    run.log(metrics={"bundle_check_requests": check.requests, "bundle_check_identical": check.identical,
                     "bundle_check_deterministic": float(check.deterministic),
                     **{f"bundle_check_gap_{m}{suffix}": v for m, gap in check.gaps.items()
                        for suffix, v in zip(("", "_ci95_low", "_ci95_high"), gap, strict=True)}})
    run.log_table(pd.DataFrame(check.rows), "bundle_check.json")
