"""Preparing a study: load the job's files, fill in the search-space defaults that depend on them, cross-check
everything, and open the backend — before anything is recorded.

What makes two invocations the same study (:func:`definition_of`) is decided here too, so that ``study`` and
``promote`` compare a config with a stored study the same way (:func:`check_definition`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import optuna

from pipeline.cache.embedder import embedder_problem
from pipeline.cache.served import ServerEmbedder
from pipeline.engines.base import Backend, model_digest
from pipeline.engines.registry import make_backend
from pipeline.engines.serving import CONCURRENCY, SERVER_SETTINGS, combination_problem
from pipeline.engines.settings import CORE_PARAMETERS, settings_of
from pipeline.errors import ConfigError, DataError, did_you_mean
from pipeline.job.experiment import Example, Experiment, load_experiment
from pipeline.job.prompts import PromptLibrary, load_prompts
from pipeline.measure.registry import FIELD_METRIC, REGISTRY, field_metric, server_metrics
from pipeline.measure.runner import check_fit, prepare_requests
from pipeline.search.config import MIN_RACED, OPTIONAL_PARAMETERS, RACING_STAGES, ParamSpec, StudyConfig
from pipeline.search.trials import DEFINITION
from pipeline.tracking.locations import resolve_stores

__all__ = ["PreparedStudy", "check_definition", "check_point", "definition_of", "job_defaults", "prepare_study",
           "study_experiment", "warmup_example"]

# The default few-shot range reaches this many examples, or the pool's size if it is smaller.
DEFAULT_MAX_SHOTS = 5


@dataclass
class PreparedStudy:
    """A checked config with everything loaded: nothing has been written yet."""

    config: StudyConfig
    experiment: Experiment
    prompts: PromptLibrary
    examples: list[Example]
    warmup: Example
    backend: Backend
    backend_choice: str
    tracking_uri: str
    storage_url: str
    embedder: ServerEmbedder | None = None  # a semantic cache's server embedder (cache_embedder: server), checked


def study_experiment(config: StudyConfig) -> Experiment:
    """The job a study of ``config`` measures: its experiment, over the traffic file where it has one and the
    config does not say ``evaluation.traffic: false``, else over the dataset's splits.

    Raises:
        DataError: the experiment or its traffic is not valid.
    """
    experiment = load_experiment(config.experiment)
    return experiment if config.evaluation.traffic else experiment.without_traffic()


def prepare_study(config: StudyConfig, *, tracking_uri: str | None = None,
                  on_pull: Callable[[str, int | None, int | None], None] | None = None,
                  backend: Backend | None = None) -> PreparedStudy:
    """Load and cross-check the experiment, prompts, search space, metrics and model.

    ``backend`` replaces the configured one (tests pass ``pipeline.testing.FakeBackend``).

    Raises:
        InputError: anything in the input is wrong; nothing has been recorded.
    """
    experiment = study_experiment(config)
    prompts = load_prompts(config.prompts, experiment)
    config = job_defaults(config, experiment, prompts)
    _check_space(config, experiment, prompts)
    _check_metrics(config, experiment)
    warmup = warmup_example(experiment, prompts)
    examples = experiment.split(config.evaluation.split, config.evaluation.limit)
    if not examples:
        raise DataError(f"{experiment.dataset_path}: no examples in split {config.evaluation.split!r}; "
                        "label some or choose another split")
    config = replace(config, evaluation=replace(config.evaluation, stages=racing_stages(
        config, len(examples) * config.evaluation.repetitions)))
    uri, storage = resolve_stores(tracking_uri, config.tracking.tracking_uri, config.study.storage,
                                  configured_in=str(config.path), storage_where="Optuna storage")
    if config.baseline is not None:
        config = replace(config, baseline=_complete(config, config.baseline, f"{config.path} (baseline)"))
        check_point(config, experiment, prompts, config.baseline, f"{config.path} (baseline)", in_space=True)
    embedders = _cache_embedders(config)
    if "minilm" in embedders and (missing := embedder_problem()) is not None:
        raise ConfigError(f"{config.path} (search_space.cache): semantic: {missing}")
    if backend is None:
        backend, choice = make_backend(config.engine, on_pull=on_pull)
    else:
        choice = f"{backend.name} (given)"
    problem = _serving_problem(config, backend)
    if problem:
        backend.close()
        raise ConfigError(f"{config.path}: {problem}")
    if config.baseline is not None:
        _check_fits(config, experiment, prompts, backend, config.baseline, f"{config.path} (baseline)")
    on_server = [m for m in _metrics_used(config) if m in server_metrics()]
    if on_server and not backend.server_timings:
        backend.close()
        raise ConfigError(f"{config.path}: {on_server[0]} is measured only against a server; "
                          f"the {backend.name} backend was chosen ({choice})")
    embedder = None
    if "server" in embedders:
        try:
            embedder = server_embedder(config, backend)
            embedder.check(f"{config.path} (engine.embed_model)")
        except BaseException:
            backend.close()
            raise
    return PreparedStudy(config, experiment, prompts, examples, warmup, backend, choice, uri, storage, embedder)


def _cache_embedders(config: StudyConfig) -> set[str]:
    """The embedders a semantic cache of the study may use (none without one), the baseline's included."""
    points = [{name: spec.choices for name, spec in config.search_space.items()
               if name in ("cache", "cache_embedder")}]
    if config.baseline is not None:
        points.append({name: (config.baseline[name],) for name in ("cache", "cache_embedder")
                       if name in config.baseline})
    return {embedder for point in points if "semantic" in point.get("cache", ())
            for embedder in point.get("cache_embedder", ("minilm",))}


def server_embedder(config: StudyConfig, backend: Backend) -> ServerEmbedder:
    """The server embedder the config's engine section names: its ``embed_model`` at ``embed_url`` (default: the
    engine's own server, for the ollama and openai backends), by ``embed_api`` (default: the backend's).

    Raises:
        ConfigError: no model named, or no server to embed at.
    """
    engine, where = config.engine, f"{config.path} (engine)"
    if engine.embed_model is None:
        raise ConfigError(f"{where}: cache_embedder server needs engine.embed_model, the model the server embeds "
                          "with (e.g. all-minilm on Ollama)")
    url = engine.embed_url or (getattr(backend, "host", None) if engine.backend in ("ollama", "openai") else None)
    if url is None:
        raise ConfigError(f"{where}: the {engine.backend} backend serves no embeddings; set engine.embed_url to an "
                          "embedding server (e.g. llama-server --embeddings) or use cache_embedder: minilm")
    api = engine.embed_api or ("ollama" if engine.backend == "ollama" and engine.embed_url is None else "openai")
    return ServerEmbedder(url if "://" in url else f"http://{url}", engine.embed_model, api,
                          timeout_s=engine.request_timeout_s)


def racing_stages(config: StudyConfig, requests: int) -> tuple[int, ...]:
    """The racing stages of trials of ``requests``: the config's, else ``RACING_STAGES`` of them when a trial has
    at least ``MIN_RACED`` (fewer: none).

    Raises:
        ConfigError: a configured stage is not below the trial's requests.
    """
    stages = config.evaluation.stages
    if stages is None:
        return tuple(sorted({round(share * requests) for share in RACING_STAGES})) if requests >= MIN_RACED else ()
    if stages and stages[-1] >= requests:
        raise ConfigError(f"{config.path} (evaluation.stages): stage {stages[-1]} is not below the {requests} "
                          "requests of a trial; a stage is a request count after which a trial may stop: use "
                          "smaller stages or a larger limit")
    return stages


def job_defaults(config: StudyConfig, experiment: Experiment, prompts: PromptLibrary) -> StudyConfig:
    """The config with the search-space settings it leaves out that depend on the job filled in: every prompt
    variant; 0 up to 5 few-shot examples (fewer with a smaller pool); ``static`` and, when the experiment has a
    label and the pool has examples, ``by_label`` selection."""
    space = dict(config.search_space)
    variants = tuple(sorted(prompts.variants))
    pool = len(prompts.examples)
    defaults = {
        "prompt_variant": _choices("prompt_variant", variants),
        "few_shot": (ParamSpec("few_shot", "int", low=0, high=min(DEFAULT_MAX_SHOTS, pool)) if pool
                     else ParamSpec("few_shot", "fixed", (0,))),
        "example_selection": _choices("example_selection", ("static", "by_label")
                                      if experiment.label is not None and pool else ("static",)),
    }
    for name, spec in defaults.items():
        space.setdefault(name, spec)
    return replace(config, search_space={name: space[name] for name in _ORDER if name in space})


_ORDER = (*CORE_PARAMETERS, *OPTIONAL_PARAMETERS)


def _choices(name: str, values: tuple) -> ParamSpec:
    return ParamSpec(name, "categorical" if len(values) > 1 else "fixed", values)


def _check_space(config: StudyConfig, experiment: Experiment, prompts: PromptLibrary) -> None:
    space = config.search_space
    for variant in space["prompt_variant"].choices:
        prompts.check_variant(variant, f"{config.path} (search_space.prompt_variant)")
    few_shot = space["few_shot"]
    most = max(few_shot.choices) if few_shot.choices else few_shot.high
    if most > len(prompts.examples):
        raise ConfigError(f"{config.path} (search_space.few_shot): asks for up to {most} examples but "
                          f"{prompts.folder / 'examples.jsonl'} has {len(prompts.examples)}; lower it or add examples")
    if "by_label" in space["example_selection"].choices and experiment.label is None:
        raise ConfigError(f"{config.path} (search_space.example_selection): by_label picks few-shot examples by the "
                          f"request's label, but {experiment.manifest_path} sets no 'label'; add one or use static")


def check_point(config: StudyConfig, experiment: Experiment, prompts: PromptLibrary, values: dict[str, Any],
                where: str, *, in_space: bool = False) -> None:
    """Check one point of the space written out in full (a baseline, a settings file) against the job's files;
    ``in_space``: it must also be a point the search space can propose (a study measures its baseline as one of
    its trials).

    Raises:
        InputError: an unknown prompt variant, more examples than the pool holds, ``by_label`` without a label,
            or (``in_space``) a value outside the search space.
    """
    prompts.check_variant(values["prompt_variant"], f"{where}.prompt_variant")
    if values["few_shot"] > len(prompts.examples):
        raise ConfigError(f"{where}.few_shot: {values['few_shot']} examples but {prompts.folder / 'examples.jsonl'} "
                          f"has {len(prompts.examples)}; lower it or add examples")
    if values["example_selection"] == "by_label" and experiment.label is None:
        raise ConfigError(f"{where}.example_selection: by_label needs a label, and {experiment.manifest_path} sets "
                          "none; use static")
    if not in_space:
        return
    for name, spec in config.search_space.items():
        value = values[name]
        if spec.choices and value not in spec.choices:
            raise ConfigError(f"{where}.{name}: {value!r} is not in search_space.{name} "
                              f"({', '.join(map(str, spec.choices))}); add it, so that the study can measure the "
                              "baseline as one of its trials")
        if not spec.choices and not spec.low <= value <= spec.high:
            raise ConfigError(f"{where}.{name}: {value!r} is outside search_space.{name} "
                              f"({spec.low:g}..{spec.high:g}); widen the range, so that the study can measure the "
                              "baseline as one of its trials")


def _complete(config: StudyConfig, values: dict[str, Any], where: str) -> dict[str, Any]:
    """A point with the serving settings it leaves out that the space fixes filled in; one the space searches
    must be given (what is served today).

    Raises:
        ConfigError: a searched serving setting is missing, or the server settings do not go together.
    """
    completed = dict(values)
    for name in OPTIONAL_PARAMETERS:
        spec = config.search_space.get(name)
        if spec is None or name in completed:
            continue
        if spec.kind != "fixed":
            raise ConfigError(f"{where}: missing {name}, which search_space searches; give the value served today")
        completed[name] = spec.choices[0]
    problem = combination_problem({k: v for k, v in completed.items() if k in SERVER_SETTINGS})
    if problem:
        raise ConfigError(f"{where}: {problem}; change the baseline's server settings")
    return completed


def _serving_problem(config: StudyConfig, backend: Backend) -> str | None:
    """Why the backend cannot serve the space's serving settings, or None."""
    server = [name for name in SERVER_SETTINGS if name in config.search_space]
    if server and not backend.server_settings:
        return (f"search_space.{server[0]} is a setting of llama-server, which the {backend.name} backend does not "
                "start; use --backend llama-server, or remove it (docs/backends.md: each one's Ollama and vLLM "
                "counterpart)")
    think = config.search_space.get("think")
    thinking = [t for t in think.choices if t != "default"] if think is not None else []
    if thinking and not backend.thinks:
        return (f"search_space.think {thinking[0]}: the {backend.name} backend cannot switch a model's thinking "
                "(Ollama's `think`); use --backend ollama, or remove it")
    if backend.can_think is False and set(thinking) - {"off"}:
        return (f"search_space.think {next(t for t in thinking if t != 'off')}: model {backend.base_model!r} does not "
                "think (it lacks the thinking capability in `ollama show`); set think: off, or remove it")
    load = config.search_space.get(CONCURRENCY)
    if load is not None and max(load.choices) > 1 and not backend.concurrent:
        return (f"evaluation.concurrency {max(load.choices)}: the {backend.name} engine answers one request at a "
                "time in this process, so more clients would only queue; measure load on a server (--backend "
                "llama-server, openai or ollama) or set concurrency 1")
    context = config.search_space["num_ctx"]
    limit = backend.context_limit
    largest = max(context.choices) if context.choices else context.high
    if limit is not None and largest > limit:
        return (f"search_space.num_ctx reaches {largest:g}, above the model's training context {limit} (its "
                f"context_length); the {backend.name} server caps num_ctx there, so a larger value is the same "
                f"setting as {limit} scored as another: keep num_ctx at {limit} or below")
    if backend.fixed_context and context.kind != "fixed":
        return (f"search_space.num_ctx is searched, but the context of a server the {backend.name} backend only "
                "speaks to is set when that server starts; fix num_ctx to the server's context, or use "
                "--backend llama-server")
    return None


def _check_fits(config: StudyConfig, experiment: Experiment, prompts: PromptLibrary, backend: Backend,
                values: dict[str, Any], where: str) -> None:
    """Every request of either split, rendered with these settings, must fit their context."""
    settings = settings_of(values, seed=config.study.seed)
    for split in ("dev", "holdout"):
        reason = check_fit(prepare_requests(experiment.split(split), prompts, settings), settings, backend,
                           margin=config.engine.context_margin)
        if reason:
            backend.close()
            raise ConfigError(f"{where}: on the {split} split the {reason}; raise num_ctx or lower num_predict")


def _metrics_used(config: StudyConfig) -> list[str]:
    return [o.metric for o in config.objectives] + [c.metric for c in config.constraints]


def _check_metrics(config: StudyConfig, experiment: Experiment) -> None:
    for metric in _metrics_used(config):
        declared = REGISTRY.get(metric)
        if declared is not None and declared.group == "cost" and config.cost.per_hour is None:
            raise ConfigError(f"{config.path}: {metric} needs the machine's price: add cost: {{per_hour: 0.90, "
                              "currency: USD}} (what serving costs an hour)")
        if metric == "label_accuracy" and experiment.label is None:
            raise ConfigError(f"{config.path}: label_accuracy needs a label, and {experiment.manifest_path} sets no "
                              "'label'; add one (e.g. label: /category) or use field_accuracy")
        known = [field_metric(path) for path in experiment.field_paths]
        if metric.startswith(FIELD_METRIC) and metric not in known:
            raise ConfigError(f"{config.path}: {metric} names no field of the expected answers."
                              f"{did_you_mean(metric, known)} Fields: {', '.join(experiment.field_paths)}")


def warmup_example(experiment: Experiment, prompts: PromptLibrary) -> Example:
    """The untimed request sent after every load: the manifest's ``warmup``, else the first few-shot example.

    Warm-up uses a request outside the timed set: with a timed request's own text, that request would find its
    whole prompt cached and look faster than any real one.

    Raises:
        DataError: there is neither.
    """
    if experiment.warmup is not None:
        request, _, schema, _ = experiment.read_line(dict(experiment.warmup), f"{experiment.manifest_path} (warmup)",
                                                     answer_key="expected")
        return Example("warmup", "warmup", experiment.warmup, request, None, schema)
    if prompts.examples:
        shot = prompts.examples[0]
        return Example("warmup", "warmup", shot.fields, shot.request, shot.answer, shot.schema, shot.label)
    raise DataError(f"{experiment.manifest_path}: no warm-up request: add 'warmup' with the input template's fields, "
                    f"or a few-shot example to {prompts.folder / 'examples.jsonl'}")


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
        "model_digest": model_digest(description),
        "sampler": config.study.sampler,
        "seed": str(config.study.seed),
        "baseline": json.dumps(config.baseline, sort_keys=True) if config.baseline is not None else "none",
        # only where the trials run over the job's traffic (a study of before keeps its definition)
        **({"traffic": "arrival order"} if prepared.experiment.traffic else {}),
    }


def check_definition(study: optuna.Study, current: dict[str, str], keys: Iterable[str], *, fix: str) -> None:
    """Raise ConfigError naming the first of ``keys`` whose value differs from the one the study was run with."""
    stored = study.user_attrs.get(DEFINITION, {})
    for key in keys:
        if stored.get(key) != current.get(key):
            raise ConfigError(f"study {study.study_name!r} was run with {key}={stored.get(key)!r}, this config "
                              f"gives {current.get(key)!r}: {fix}")
