"""Promote one point of a study's front: choose it, re-check it on held-out data, write an Ollama Modelfile.

The chosen trial's params are replayed through the study's own code path (``optuna.trial.FixedTrial`` →
:func:`pipeline.space.suggest` → :func:`pipeline.runner.run_trial`), on the ``holdout`` split that no study
uses, with repetitions. Promotion is refused when held-out accuracy falls below the baseline's (measured side by
side) or the dev accuracy (beyond the held-out interval) by more than the tolerance, or when a latency limit
fails on held-out data. An accepted point becomes a Modelfile (FROM,
PARAMETER, SYSTEM, MESSAGE) plus a sidecar for what a Modelfile cannot say (whether to pass ``format=`` and the
schema), a smoke request must pass, and a new version of a registered model gets the ``champion`` alias.

On an OpenAI-compatible server the sidecar also holds the request defaults (sampling options and
``response_format``, as a study sent them); on llama-server, the server's launch command with the chosen flags
(``llama-server.sh``), and the smoke request goes through a server freshly started with exactly that command.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.search.fronts import front_trials, measured_trials
from pipeline.search.trials import BASELINE as BASELINE_ATTR
from pipeline.engines.base import Backend, ModelPublisher, RequestFailed
from pipeline.search.compare import to_minimization
from pipeline.search.drift import REFERENCE, machine_note
from pipeline.measure.metrics import Constraint, Objective
from pipeline.errors import ConfigError, InputError, PipelineError
from pipeline.measure.gain import Gain, accuracy_metrics, gain_frame, gain_metrics, paired_gain, slower
from pipeline.promote.modelfile import Modelfile, sanitize, write_modelfile
from pipeline.search.objectives import truncation_reason
from pipeline.search.prepare import PreparedStudy, check_definition, definition_of
from pipeline.measure.racing import bounds_of, ties
from pipeline.measure.runner import prepare_requests, run_trial
from pipeline.measure.metrics import measured_metrics
from pipeline.measure.sidebyside import measure_on_own_backends
from pipeline.engines.settings import InferenceSettings, settings_of
from pipeline.search.space import suggest
from pipeline.search.storage import open_storage
from pipeline.search.study import trial_plan
from pipeline.measure.tables import field_errors, requests_frame, side_by_side_frame
from pipeline.tracking.runs import log_batch, start_run

__all__ = ["Choice", "PromotionPolicy", "PromotionRefused", "PromotionReport", "beating_baseline", "choose_trial",
           "decide", "knee_index", "promote"]

CHAMPION = "champion"
BASELINE, CANDIDATE = "baseline", "candidate"      # the two arms of the side-by-side measurement
Policy = Literal["sla", "knee", "trial"]


class PromotionRefused(PipelineError):
    """The chosen point did not hold up on held-out data; nothing was registered (exit code 3). ``report`` holds
    what was measured, when the refusal came after the held-out measurement."""

    exit_code = 3

    def __init__(self, message: object = "", *, report: PromotionReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class PromotionPolicy:
    policy: Policy = "knee"
    sla_p95_ms: float | None = None
    trial: int | None = None
    tolerance: float = 0.05
    repetitions: int = 2
    metric: str | None = None          # the accuracy metric checked on held-out data; default: first maximised
                                       # objective
    registered_model: str | None = None
    ollama_name: str | None = None
    output: Path = Path("promoted")


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
    choice: str = ""                   # how the baseline narrowed the choice (see :func:`beating_baseline`)


def knee_index(points: np.ndarray) -> int:
    """The knee of a front of minimisation points: the point nearest the ideal once each objective is scaled
    to [0, 1] over the front (ties: the first)."""
    low, high = points.min(axis=0), points.max(axis=0)
    scaled = (points - low) / np.where(high > low, high - low, 1.0)
    return int(np.argmin(np.linalg.norm(scaled, axis=1)))


@dataclass(frozen=True)
class Choice:
    trial: optuna.trial.FrozenTrial
    why: str = ""                      # how the baseline narrowed the choice, when the study measured one


def beating_baseline(study: optuna.Study, front: list[optuna.trial.FrozenTrial],
                     objectives: tuple[Objective, ...]) -> tuple[list[optuna.trial.FrozenTrial], str]:
    """The front points that dominate the study's baseline trial on dev (no worse on every objective, better on
    one), and a sentence saying so; the whole front when the study has no baseline or no point beats it."""
    served = next((t for t in measured_trials(study) if t.user_attrs.get(BASELINE_ATTR)), None)
    if served is None or not front:
        return front, ""
    base = to_minimization(np.array([served.values], dtype=float), objectives)[0]
    points = to_minimization(np.array([t.values for t in front], dtype=float), objectives)
    better = [t for t, p in zip(front, points) if (p <= base).all() and (p < base).any()]
    if not better:  # the baseline itself is no candidate (it may be on the front): it is what is served
        others = [t for t in front if t.number != served.number] or front
        return others, (f"no front point beats the baseline (trial {served.number}) on every objective on dev: "
                        "chosen from the whole front")
    return better, (f"chosen among the {len(better)} of {len(front)} front points that beat the baseline "
                    f"(trial {served.number}) on every objective on dev")


def choose_trial(study: optuna.Study, objectives: tuple[Objective, ...], policy: PromotionPolicy) -> Choice:
    """Pick the trial to promote.

    ``sla``: the best on the first maximised objective among front trials with ``latency_p95_ms`` within the
    limit; ``knee``: :func:`knee_index` of the front; ``trial``: that trial, which must be complete and feasible.
    When the study measured a baseline, ``sla`` and ``knee`` choose among the front points that beat it
    (:func:`beating_baseline`) — a promotion is meant to replace it — and from the whole front when none does.

    Raises:
        InputError: no trial fits the policy.
    """
    front = front_trials(study)
    if policy.policy == "trial":
        chosen = next((t for t in study.trials if t.number == policy.trial), None)
        if chosen is None or chosen.state != optuna.trial.TrialState.COMPLETE:
            raise InputError(f"trial {policy.trial} of study {study.study_name!r} is not a completed trial; "
                             f"front trials: {', '.join(str(t.number) for t in front) or 'none'}")
        if any(v > 0 for v in chosen.constraints.values()):
            raise InputError(f"trial {policy.trial} breaks a constraint ({chosen.constraints}); choose a feasible one")
        return Choice(chosen)
    if not front:
        raise InputError(f"study {study.study_name!r} has no feasible trials on its front; run more trials")
    pool, why = beating_baseline(study, front, objectives)
    if policy.policy == "sla":
        if policy.sla_p95_ms is None:
            raise ConfigError("the sla policy needs --sla-p95-ms")

        def within(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
            return [t for t in trials if t.user_attrs["metrics"]["latency_p95_ms"] <= policy.sla_p95_ms]

        if not within(pool) and within(front):
            pool = [t for t in front if not t.user_attrs.get(BASELINE_ATTR)] or front
            why = "no front point within the SLA beats the baseline on every objective on dev"
        if not within(pool):
            best = min(t.user_attrs["metrics"]["latency_p95_ms"] for t in front)
            raise InputError(f"no front trial has latency_p95_ms <= {policy.sla_p95_ms:g} (the fastest has "
                             f"{best:.0f}); raise --sla-p95-ms or use --policy knee")
        quality = next((o for o in objectives if o.direction == "maximize"), objectives[0])
        sign = 1 if quality.direction == "maximize" else -1
        pool = within(pool)
        best = max(pool, key=lambda t: (sign * t.user_attrs["metrics"][quality.metric],
                                        -t.user_attrs["metrics"]["latency_p95_ms"]))
        return _cheapest_tie(best, pool, objectives, why)
    points = to_minimization(np.array([t.values for t in pool], dtype=float), objectives)
    return _cheapest_tie(pool[knee_index(points)], pool, objectives, why)


def _cheapest_tie(chosen: optuna.trial.FrozenTrial, pool: list[optuna.trial.FrozenTrial],
                  objectives: tuple[Objective, ...], why: str) -> Choice:
    """``chosen``, or among the points of ``pool`` tied with it (``racing.ties``: their measurements cannot tell
    them apart on any objective) the one with the lowest latency, saying so."""
    tied = ties({t.number: bounds_of(t.user_attrs["metrics"], objectives) for t in pool})[chosen.number]
    if not tied:
        return Choice(chosen, why)
    latency = next((o.metric for o in objectives if o.direction == "minimize"
                    and o.metric.startswith(("latency_", "ttft_"))), "latency_p95_ms")
    group = [chosen, *(t for t in pool if t.number in tied)]
    cheapest = min(group, key=lambda t: (t.user_attrs["metrics"][latency], t.number))
    note = (f"trial {chosen.number} is tied with trial{'s' if len(tied) > 1 else ''} "
            f"{', '.join(str(n) for n in tied)} (their intervals overlap on every objective): chose trial "
            f"{cheapest.number}, the lowest {latency} ({cheapest.user_attrs['metrics'][latency]:.0f})")
    return Choice(cheapest, f"{why}; {note}" if why else note)


def _machine_states(study: optuna.Study, chosen: optuna.trial.FrozenTrial, config: Any) -> str | None:
    """Whether the chosen trial's dev latencies and the baseline trial's come from different machine states
    (``pipeline.drift``); the held-out side-by-side measures both at once."""
    served = next((t for t in measured_trials(study) if t.user_attrs.get(BASELINE_ATTR)), None)
    if served is None or served.number == chosen.number:
        return None
    note = machine_note((f"trial {chosen.number}", chosen.user_attrs.get(REFERENCE)),
                        (f"the baseline (trial {served.number})", served.user_attrs.get(REFERENCE)),
                        config.evaluation.drift_threshold)
    return None if note is None else f"on dev, {note}; the held-out side-by-side measures both at once"


def _modelfile(prepared: PreparedStudy, settings: InferenceSettings) -> tuple[Modelfile, dict[str, Any]]:
    """The Modelfile of a setting and its sidecar (what requests must still carry)."""
    prompts, experiment = prepared.prompts, prepared.experiment
    static = settings.example_selection == "static"
    shots = prompts.select_examples("", settings.few_shot, "static") if static else []
    messages = tuple(pair for shot in shots
                     for pair in (("user", shot.request), ("assistant", json.dumps(shot.answer, ensure_ascii=False))))
    modelfile = Modelfile(base=prepared.backend.base_model, parameters=settings.options(),
                          system=prompts.variants[settings.prompt_variant], messages=messages)
    sidecar: dict[str, Any] = {
        "format": settings.format,
        # A Modelfile cannot set `format`: every request must pass it to get the constrained decoding measured.
        "pass_format": settings.format != "off",
        # The job's schema, or None when each request carries its own (in the field `schema_field` names).
        "schema": experiment.schema.document if experiment.schema is not None else None,
        "schema_field": experiment.schema_field,
        "input_template": experiment.template.text,
        "options": settings.options(),
        # Ollama's request field `think` (a Modelfile cannot set it); "default" sends none, so a model that can
        # think does.
        "think": settings.think,
        "few_shot": settings.few_shot,
        "example_selection": settings.example_selection,
    }
    if not static and settings.few_shot:
        # Per-request examples cannot live in a Modelfile: clients pick them as the router does and send them.
        sidecar["examples"] = [{"request": e.request, "answer": e.answer, "label": e.label} for e in prompts.examples]
        sidecar["label"] = experiment.label_pointer
        sidecar["router"] = {label: [p.pattern for p in ps] for label, ps in prompts.keywords.items()}
        sidecar["router_default"] = prompts.default_label
    return modelfile, sidecar


def _smoke(prepared: PreparedStudy, settings: InferenceSettings, model_name: str | None,
           modelfile: Modelfile) -> str:
    """One held-out request through the promoted model; return its answer, or raise PromotionRefused.

    Through a server that can create models (``model_name`` given), the model is created from the Modelfile
    and asked directly; otherwise the promoted settings are sent as a study would send them.
    """
    example = prepared.experiment.split("holdout")[0]
    backend = prepared.backend
    request = prepare_requests([example], prepared.prompts, settings)[0]
    try:
        if model_name is not None and isinstance(backend, ModelPublisher):
            backend.create_model(model_name, base=modelfile.base, system=modelfile.system,
                                 parameters=dict(modelfile.parameters),
                                 messages=[{"role": r, "content": c} for r, c in modelfile.messages])
            # The Modelfile carries the system prompt and static examples; routed examples come from the client.
            extra = [] if settings.example_selection == "static" else [
                m for m in request.messages if m["role"] != "system"][:-1]
            answer = backend.chat_with(model_name, [*extra, {"role": "user", "content": example.request}],
                                       schema=example.schema.document, fmt=settings.format, think=settings.think)
        else:
            stop = getattr(backend, "stop", None)
            if stop is not None:  # a server the tool starts: start it afresh with the promoted settings
                stop()
            backend.start_trial(settings.num_ctx, server=settings.server)
            answer = backend.generate(request.messages, settings, schema=example.schema.document).text
    except RequestFailed as exc:
        raise PromotionRefused(f"refused: the smoke request failed: {exc}") from exc
    if not prepared.experiment.scorer.score(answer, example.expected, example.schema).schema_valid:
        raise PromotionRefused(f"refused: the smoke request's answer does not validate against the schema: "
                               f"{answer[:120]!r}")
    return answer


def _serving(prepared: PreparedStudy, settings: InferenceSettings) -> dict[str, Any]:
    """What a serving stack other than Ollama needs: the request defaults a study sent (OpenAI-compatible
    servers) and the launch command of the server the smoke request went through (llama-server), on port 8080."""
    backend, found = prepared.backend, {}
    request_body = getattr(backend, "request_body", None)
    if request_body is not None:
        schema = prepared.experiment.schema.document if prepared.experiment.schema is not None else {}
        found["request_defaults"] = {k: v for k, v in request_body([], settings, schema=schema).items()
                                     if k != "messages"}
    command = list(getattr(backend, "command", []))
    if command:
        command[command.index("--port") + 1] = "8080"
        found["launch_command"] = command
    return found


def decide(policy: PromotionPolicy, constraints: tuple[Constraint, ...], metric: str, dev: dict[str, float],
           holdout: dict[str, float], *, baseline: dict[str, float] | None = None) -> str | None:
    """Why a point must not be promoted, or None: held-out ``metric`` below the baseline's (measured side by
    side) by more than the tolerance, or below dev by more than the tolerance with dev outside the held-out 95%
    interval (``<metric>_ci95_high``, when ``holdout`` has it), or a latency limit (the config's constraints,
    ``policy.sla_p95_ms``) broken on held-out data."""
    if baseline is not None and holdout[metric] < baseline[metric] - policy.tolerance:
        return (f"held-out {metric} {holdout[metric]:.3f} is below the baseline's {baseline[metric]:.3f} (the "
                f"settings served today, measured side by side) by more than the tolerance {policy.tolerance:g}")
    # Dev is an estimate too, and the best of a study's trials on it (chosen for it): held-out accuracy a little
    # below it is expected. Refused: below by more than the tolerance, with dev outside the held-out interval.
    high = holdout.get(f"{metric}_ci95_high", float("-inf"))
    if holdout[metric] < dev[metric] - policy.tolerance and not high >= dev[metric]:
        shown = "" if np.isinf(high) else f" (95% interval up to {high:.3f})"
        return (f"held-out {metric} {holdout[metric]:.3f}{shown} is below dev {dev[metric]:.3f} by more than the "
                f"tolerance {policy.tolerance:g}")
    limits = [(c.describe(), c.violation(holdout[c.metric])) for c in constraints]
    if policy.sla_p95_ms is not None:
        limits.append((f"latency_p95_ms <= {policy.sla_p95_ms:g}", holdout["latency_p95_ms"] - policy.sla_p95_ms))
    broken = [(text, v) for text, v in limits if v > 0]
    if broken:
        return f"held-out data breaks the SLA {broken[0][0]} (off by {broken[0][1]:.3g})"
    return None


def promote(prepared: PreparedStudy, study_name: str, policy: PromotionPolicy, *,
            baseline_backend: Backend | None = None, on_request: Any = lambda: None) -> PromotionReport:
    """Choose, re-check and promote a point of ``study_name``'s front.

    With a baseline in the config, the candidate and the baseline are measured side by side on the held-out
    requests (:mod:`pipeline.sidebyside`; the baseline on ``baseline_backend``, default: a second backend made
    from the config) and the gain is reported with paired intervals (:mod:`pipeline.gain`).

    Returns:
        What was promoted, with held-out metrics, the files written and the registered version.

    Raises:
        InputError: the study or trial cannot be found, or the config does not match the study.
        PromotionRefused: held-out accuracy or latency failed, or the smoke request failed.
    """
    config = prepared.config
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(prepared.storage_url))
    except KeyError as exc:
        raise InputError(f"no study {study_name!r} in {prepared.storage_url}; run `pipeline study` first") from exc
    check_definition(study, definition_of(prepared), ("objectives", "search_space", "experiment", "dataset_digest",
                                                      "backend", "model", "model_digest"),
                     fix="pass the config (and backend/model) the study used")
    objectives = config.objectives
    choice = choose_trial(study, objectives, policy)
    chosen = choice.trial
    metric = policy.metric or next((o.metric for o in objectives if o.direction == "maximize"), "field_accuracy")
    # The study's own seed: a replay must be the trial as it ran, whatever seed the config now gives.
    seed = int(study.user_attrs["definition"]["seed"])
    settings = suggest(optuna.trial.FixedTrial(chosen.params), config.search_space, seed=seed)
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
    holdout = measured_metrics(outcome.records, seed=seed, model_loads=outcome.model_loads,
                               model_load_ms=outcome.model_load_ms)
    dev = chosen.user_attrs["metrics"]
    baseline = gains = None
    if side is not None:
        served = side.outcomes[BASELINE].records
        baseline = measured_metrics(served, seed=seed)
        gains = paired_gain(served, outcome.records, accuracy_metrics(config.objectives,
                                                                      labelled=prepared.experiment.label is not None),
                            seed=seed)

    parent = study.user_attrs.get("mlflow_parent_run_id")
    client, run_id = start_run(prepared.tracking_uri, experiment_name=config.tracking.experiment_name,
                               beside_run=parent, run_name=f"promote {study_name} trial {chosen.number}",
                               tags={"kind": "promotion", "source_study": study_name,
                                     "source_trial": str(chosen.number), "source_run": parent or "",
                                     "policy": policy.policy, **({"choice": choice.why} if choice.why else {}),
                                     **prepared.backend.describe()})
    log_batch(client, run_id, params={**settings.as_params(), "holdout_requests": len(outcome.records),
                                      "repetitions": policy.repetitions, "tolerance": policy.tolerance,
                                      **{f"baseline.{k}": v for k, v in (config.baseline or {}).items()}},
              metrics={**{f"holdout_{k}": v for k, v in holdout.items()}, **{f"dev_{k}": v for k, v in dev.items()},
                       **{f"baseline_holdout_{k}": v for k, v in (baseline or {}).items()},
                       **gain_metrics(gains or [])})
    client.log_table(run_id, data=requests_frame(outcome.records), artifact_file="holdout_requests.json")
    errors = field_errors(outcome.records)
    if not errors.empty:
        client.log_table(run_id, data=errors, artifact_file="holdout_field_errors.json")
    if side is not None:
        client.log_table(run_id, data=side_by_side_frame(side), artifact_file="side_by_side.json")
        client.log_table(run_id, data=gain_frame(gains), artifact_file="gain.json")
    notes = [choice.why, _machine_states(study, chosen, config)]
    report = PromotionReport(study_name, chosen.number, settings, dev, holdout, run_id, baseline=baseline,
                             gains=gains or [], choice="; ".join(n for n in notes if n))
    if gains and slower(gains):
        client.set_tag(run_id, "slower_than_baseline", slower(gains))
    reason = decide(policy, config.constraints, metric, dev, holdout, baseline=baseline)
    if reason is None:
        try:
            _write_and_register(prepared, study_name, chosen, settings, policy, report, client)
        except PromotionRefused as exc:
            reason = str(exc).removeprefix("refused: ")
    client.set_tag(run_id, "promotion", "refused" if reason else "accepted")
    if reason:
        client.set_tag(run_id, "refused_because", reason)
        client.set_terminated(run_id, "FINISHED")
        raise PromotionRefused(f"refused: trial {chosen.number} of {study_name!r}: {reason}", report=report)
    client.set_terminated(run_id, "FINISHED")
    return report



def _write_and_register(prepared: PreparedStudy, study_name: str, chosen: optuna.trial.FrozenTrial,
                        settings: InferenceSettings, policy: PromotionPolicy, report: PromotionReport,
                        client: MlflowClient) -> None:
    modelfile, sidecar = _modelfile(prepared, settings)
    modelfile, notes = sanitize(modelfile)
    report.notes = notes
    name = policy.registered_model or study_name
    sidecar.update({"registered_model": name, "ollama_model": policy.ollama_name, "notes": notes,
                    "source": {"study": study_name, "trial": chosen.number, "storage": prepared.storage_url},
                    "holdout": report.holdout, "dev": report.dev})
    server_name = (policy.ollama_name or name) if isinstance(prepared.backend, ModelPublisher) else None
    _smoke(prepared, settings, server_name, modelfile)
    sidecar.update(_serving(prepared, settings))

    policy.output.mkdir(parents=True, exist_ok=True)
    report.modelfile = write_modelfile(policy.output / "Modelfile", modelfile,
                                       header=f"{name}: study {study_name}, trial {chosen.number} (promoted)")
    report.sidecar = policy.output / "promotion.json"
    report.sidecar.write_text(json.dumps(sidecar, indent=2, default=float), encoding="utf-8")
    written = [report.modelfile, report.sidecar]
    if "launch_command" in sidecar:
        report.launch = policy.output / "llama-server.sh"
        report.launch.write_text(f"#!/bin/sh\n# {name}: study {study_name}, trial {chosen.number} (promoted)\n"
                                 f"exec {shlex.join(sidecar['launch_command'])} \"$@\"\n", encoding="utf-8")
        report.launch.chmod(0o755)
        written.append(report.launch)
    run_id = report.run_id
    for path in written:
        client.log_artifact(run_id, str(path), artifact_path="modelfile")
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Ollama Modelfiles promoted from tuning studies")
        version = client.create_model_version(
            name, source=f"{client.get_run(run_id).info.artifact_uri}/modelfile", run_id=run_id,
            tags={"source_study": study_name, "source_trial": str(chosen.number)})
        client.set_registered_model_alias(name, CHAMPION, version.version)
    except MlflowException as exc:
        raise PipelineError(f"the MLflow Model Registry refused the new version of {name!r}: {exc.message}") from exc
    report.model_version = version.version
