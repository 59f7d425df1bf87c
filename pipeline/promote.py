"""Promote one point of a study's front: choose it, re-check it on held-out data, write an Ollama Modelfile.

The chosen trial's params are replayed through the study's own code path (``optuna.trial.FixedTrial`` →
:func:`pipeline.space.suggest` → :func:`pipeline.runner.run_trial`), on the ``holdout`` split that no study
uses, with repetitions. Promotion is refused when held-out accuracy falls below the dev accuracy by more than
the tolerance, or when a latency limit fails on held-out data. An accepted point becomes a Modelfile (FROM,
PARAMETER, SYSTEM, MESSAGE) plus a sidecar for what a Modelfile cannot say (whether to pass ``format=`` and the
schema), a smoke request must pass, and a new version of a registered model gets the ``champion`` alias.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline import pareto
from pipeline.backends.base import ModelPublisher, RequestFailed
from pipeline.compare import to_minimization
from pipeline.config import Constraint, Objective
from pipeline.errors import ConfigError, InputError, PipelineError
from pipeline.modelfile import Modelfile, sanitize, write_modelfile
from pipeline.prepare import PreparedStudy, check_definition, definition_of
from pipeline.runner import prepare_requests, run_trial
from pipeline.scoring import confidence_intervals, summarize
from pipeline.space import InferenceSettings, suggest
from pipeline.storage import open_storage
from pipeline.study import trial_plan
from pipeline.tables import field_errors, requests_frame
from pipeline.tracking import log_batch, start_run

__all__ = ["PromotionPolicy", "PromotionRefused", "PromotionReport", "choose_trial", "decide", "knee_index",
           "promote"]

CHAMPION = "champion"
Policy = Literal["sla", "knee", "trial"]


class PromotionRefused(PipelineError):
    """The chosen point did not hold up on held-out data; nothing was registered (exit code 3)."""

    exit_code = 3


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
    modelfile: Path | None = None
    sidecar: Path | None = None
    model_version: str | None = None
    notes: list[str] = field(default_factory=list)


def knee_index(points: np.ndarray) -> int:
    """The knee of a front of minimisation points: the point nearest the ideal once each objective is scaled
    to [0, 1] over the front (ties: the first)."""
    low, high = points.min(axis=0), points.max(axis=0)
    scaled = (points - low) / np.where(high > low, high - low, 1.0)
    return int(np.argmin(np.linalg.norm(scaled, axis=1)))


def choose_trial(study: optuna.Study, objectives: tuple[Objective, ...],
                 policy: PromotionPolicy) -> optuna.trial.FrozenTrial:
    """Pick the trial to promote.

    ``sla``: the best on the first maximised objective among front trials with ``latency_p95_ms`` within the
    limit; ``knee``: :func:`knee_index` of the front; ``trial``: that trial, which must be complete and feasible.

    Raises:
        InputError: no trial fits the policy.
    """
    front = pareto.front_trials(study)
    if policy.policy == "trial":
        chosen = next((t for t in study.trials if t.number == policy.trial), None)
        if chosen is None or chosen.state != optuna.trial.TrialState.COMPLETE:
            raise InputError(f"trial {policy.trial} of study {study.study_name!r} is not a completed trial; "
                             f"front trials: {', '.join(str(t.number) for t in front) or 'none'}")
        if any(v > 0 for v in chosen.constraints.values()):
            raise InputError(f"trial {policy.trial} breaks a constraint ({chosen.constraints}); choose a feasible one")
        return chosen
    if not front:
        raise InputError(f"study {study.study_name!r} has no feasible trials on its front; run more trials")
    if policy.policy == "sla":
        if policy.sla_p95_ms is None:
            raise ConfigError("the sla policy needs --sla-p95-ms")
        within = [t for t in front if t.user_attrs["metrics"]["latency_p95_ms"] <= policy.sla_p95_ms]
        if not within:
            best = min(t.user_attrs["metrics"]["latency_p95_ms"] for t in front)
            raise InputError(f"no front trial has latency_p95_ms <= {policy.sla_p95_ms:g} (the fastest has "
                             f"{best:.0f}); raise --sla-p95-ms or use --policy knee")
        quality = next((o for o in objectives if o.direction == "maximize"), objectives[0])
        sign = 1 if quality.direction == "maximize" else -1
        return max(within, key=lambda t: (sign * t.user_attrs["metrics"][quality.metric],
                                          -t.user_attrs["metrics"]["latency_p95_ms"]))
    points = to_minimization(np.array([t.values for t in front], dtype=float), objectives)
    return front[knee_index(points)]


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
                                       schema=example.schema.document, fmt=settings.format)
        else:
            backend.start_trial(settings.num_ctx)
            answer = backend.generate(request.messages, settings, schema=example.schema.document).text
    except RequestFailed as exc:
        raise PromotionRefused(f"refused: the smoke request failed: {exc}") from exc
    if not prepared.experiment.scorer.score(answer, example.expected, example.schema).schema_valid:
        raise PromotionRefused(f"refused: the smoke request's answer does not validate against the schema: "
                               f"{answer[:120]!r}")
    return answer


def decide(policy: PromotionPolicy, constraints: tuple[Constraint, ...], metric: str, dev: dict[str, float],
           holdout: dict[str, float]) -> str | None:
    """Why a point must not be promoted, or None: held-out ``metric`` below dev by more than the tolerance, or
    a latency limit (the config's constraints, ``policy.sla_p95_ms``) broken on held-out data."""
    if holdout[metric] < dev[metric] - policy.tolerance:
        return (f"held-out {metric} {holdout[metric]:.3f} is below dev {dev[metric]:.3f} by more than the "
                f"tolerance {policy.tolerance:g}")
    limits = [(c.describe(), c.violation(holdout[c.metric])) for c in constraints]
    if policy.sla_p95_ms is not None:
        limits.append((f"latency_p95_ms <= {policy.sla_p95_ms:g}", holdout["latency_p95_ms"] - policy.sla_p95_ms))
    broken = [(text, v) for text, v in limits if v > 0]
    if broken:
        return f"held-out data breaks the SLA {broken[0][0]} (off by {broken[0][1]:.3g})"
    return None


def promote(prepared: PreparedStudy, study_name: str, policy: PromotionPolicy, *,
            on_request: Any = lambda: None) -> PromotionReport:
    """Choose, re-check and promote a point of ``study_name``'s front.

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
    chosen = choose_trial(study, objectives, policy)
    metric = policy.metric or next((o.metric for o in objectives if o.direction == "maximize"), "field_accuracy")
    # The study's own seed: a replay must be the trial as it ran, whatever seed the config now gives.
    seed = int(study.user_attrs["definition"]["seed"])
    settings = suggest(optuna.trial.FixedTrial(chosen.params), config.search_space, seed=seed)
    holdout_examples = prepared.experiment.split("holdout")
    plan = replace(trial_plan(prepared), repetitions=policy.repetitions, abort_on=())
    outcome = run_trial(settings, holdout_examples, plan, on_request=on_request)
    if outcome.infeasible:
        raise PromotionRefused(f"refused: on held-out data {outcome.infeasible}")
    holdout = summarize(outcome.records, model_loads=outcome.model_loads, model_load_ms=outcome.model_load_ms)
    holdout.update(confidence_intervals(outcome.records, seed=seed))
    dev = chosen.user_attrs["metrics"]

    parent = study.user_attrs.get("mlflow_parent_run_id")
    client, run_id = start_run(prepared.tracking_uri, experiment_name=config.tracking.experiment_name,
                               beside_run=parent, run_name=f"promote {study_name} trial {chosen.number}",
                               tags={"kind": "promotion", "source_study": study_name,
                                     "source_trial": str(chosen.number), "source_run": parent or "",
                                     "policy": policy.policy, **prepared.backend.describe()})
    log_batch(client, run_id, params={**settings.as_params(), "holdout_requests": len(outcome.records),
                                      "repetitions": policy.repetitions, "tolerance": policy.tolerance},
              metrics={**{f"holdout_{k}": v for k, v in holdout.items()}, **{f"dev_{k}": v for k, v in dev.items()}})
    client.log_table(run_id, data=requests_frame(outcome.records), artifact_file="holdout_requests.json")
    errors = field_errors(outcome.records)
    if not errors.empty:
        client.log_table(run_id, data=errors, artifact_file="holdout_field_errors.json")
    report = PromotionReport(study_name, chosen.number, settings, dev, holdout, run_id)
    reason = decide(policy, config.constraints, metric, dev, holdout)
    if reason is None:
        try:
            _write_and_register(prepared, study_name, chosen, settings, policy, report, client)
        except PromotionRefused as exc:
            reason = str(exc).removeprefix("refused: ")
    client.set_tag(run_id, "promotion", "refused" if reason else "accepted")
    if reason:
        client.set_tag(run_id, "refused_because", reason)
        client.set_terminated(run_id, "FINISHED")
        raise PromotionRefused(f"refused: trial {chosen.number} of {study_name!r}: {reason}")
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

    policy.output.mkdir(parents=True, exist_ok=True)
    report.modelfile = write_modelfile(policy.output / "Modelfile", modelfile,
                                       header=f"{name}: study {study_name}, trial {chosen.number} (promoted)")
    report.sidecar = policy.output / "promotion.json"
    report.sidecar.write_text(json.dumps(sidecar, indent=2, default=float), encoding="utf-8")
    run_id = report.run_id
    for path in (report.modelfile, report.sidecar):
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
