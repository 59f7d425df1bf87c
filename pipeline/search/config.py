"""Study configuration: one YAML file loaded once into validated dataclasses.

Everything a study needs is read here; the rest of the pipeline receives typed values and never looks at raw
YAML. Relative paths in a config file are resolved against the file's own folder. A config named
``configs/NAME.yaml`` studies ``experiments/NAME`` with ``prompts/NAME`` unless it says otherwise, and its study
is called ``NAME``. Locations (stores, server hosts) are checked by :mod:`pipeline.tracking.locations`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pipeline.cache.exact import CACHE_EMBEDDERS, CACHE_MODES
from pipeline.cache.served import EMBED_APIS
from pipeline.engines.config import EngineConfig
from pipeline.engines.registry import BACKENDS
from pipeline.engines.serving import CONCURRENCY, SERVER_SETTINGS
from pipeline.engines.settings import CORE_PARAMETERS
from pipeline.errors import ConfigError, did_you_mean, unknown_key
from pipeline.job.files import parse_yaml, read_text
from pipeline.job.prompts import SELECTIONS
from pipeline.measure.intervals import ERROR_RATE
from pipeline.measure.registry import FIELD_METRIC, REGISTRY, Constraint, Objective, metric_direction, metric_name
from pipeline.search.samplers import SAMPLERS
from pipeline.tracking.locations import check_host, check_storage_url, check_tracking_uri

__all__ = [
    "FORMATS",
    "PARAMETERS",
    "OPTIONAL_PARAMETERS",
    "SAMPLERS",
    "SELECTIONS",
    "THINK",
    "EvaluationConfig",
    "ParamSpec",
    "StudyConfig",
    "StudySection",
    "TrackingConfig",
    "load_config",
    "load_settings",
    "settings_values",
]

FORMATS = ("off", "json", "schema")
# Ollama's `think` (api.ThinkValue): off, on, or a thinking level (gpt-oss); "default" sends nothing, so a model
# that thinks does (Ollama turns thinking on for every model with the thinking capability).
THINK = ("default", "off", "on", "low", "medium", "high", "max")

# The tunable inference settings: Ollama's option names verbatim, plus the prompt-side knobs.
# name -> (type, default spec, lowest allowed value or allowed strings). A default of None depends on the job
# and is filled in once its files are loaded (pipeline.search.prepare): every prompt variant, few-shot counts up to
# the pool's size, and by_label selection only for an experiment with a label.
PARAMETERS: dict[str, tuple[type, Any, Any]] = {
    "num_ctx": (int, {"choices": [512, 1024, 2048]}, 64),
    "num_predict": (int, {"choices": [48, 96, 160]}, 1),
    "temperature": (float, {"low": 0.0, "high": 1.0}, 0.0),
    "top_p": (float, {"low": 0.5, "high": 1.0}, 0.0),
    "top_k": (int, {"low": 1, "high": 100}, 0),
    "few_shot": (int, None, 0),
    "prompt_variant": (str, None, None),
    "example_selection": (str, None, SELECTIONS),
    "format": (str, {"choices": list(FORMATS)}, FORMATS),
}
# Every point of the space gives these (InferenceSettings); the settings below are optional (left out: the
# server's default).
assert tuple(PARAMETERS) == CORE_PARAMETERS
# Whether a model that can think does (a request setting of Ollama's), the response cache a request is served
# through (pipeline.cache), the server's own settings (llama-server's flags, pipeline.engines.serving) and the load
# (evaluation.concurrency).
PARAMETERS["think"] = (str, None, THINK)
PARAMETERS["cache"] = (str, None, CACHE_MODES)
PARAMETERS["cache_threshold"] = (float, None, 0.0)  # a cosine in (0, 1]
PARAMETERS["cache_guard"] = (str, None, ("on", "off"))
PARAMETERS["cache_embedder"] = (str, None, CACHE_EMBEDDERS)
PARAMETERS.update({name: (s.kind, None, s.allowed) for name, s in SERVER_SETTINGS.items()})
PARAMETERS[CONCURRENCY] = (int, None, 1)
OPTIONAL_PARAMETERS = tuple(name for name in PARAMETERS if name not in CORE_PARAMETERS)


@dataclass(frozen=True)
class ParamSpec:
    """How one setting is searched: a fixed value, a list of choices, or a numeric range."""

    name: str
    kind: Literal["fixed", "categorical", "int", "float"]
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False


@dataclass(frozen=True)
class StudySection:
    name: str = ""  # default: the config file's name
    trials: int = 12
    seed: int = 42
    sampler: str = "tpe"
    storage: str | None = None
    batch: int | None = None
    max_consecutive_failures: int = 3
    heartbeat_interval_s: int = 10
    grace_period_s: int = 60


@dataclass(frozen=True)
class EvaluationConfig:
    split: str = "dev"
    limit: int | None = 20
    # Over the job's traffic (its arrival order, repeats included) where the job has a traffic file; false: over the
    # split's labelled requests, each once (the job's `traffic` ignored).
    traffic: bool = True
    repetitions: int = 1
    early_abort: bool = True
    # Racing (pipeline.measure.racing): request counts after which a trial stops when a front point dominates it at
    # `racing_error_rate`; []: every trial runs `limit` requests; null: the default, RACING_STAGES of a trial's
    # requests when it has at least MIN_RACED (see prepare.racing_stages).
    stages: tuple[int, ...] | None = None
    racing_error_rate: float = 0.2
    # Error rate of every interval and decision reported: the intervals recorded on every trial, ties, refinement,
    # the finals, the promotion's comparisons and its bundle check (intervals.ERROR_RATE: 95% intervals).
    error_rate: float = ERROR_RATE
    # Requests a study spends at its end topping up the front and the points it cannot tell from it (0: none).
    refine_requests: int = 0
    # Drift control (pipeline.search.drift): every `drift_every` trials (0: never), `drift_requests` requests of a
    # reference setting; trials measured while its median latency moved by more than `drift_threshold` are flagged (and
    # measured again with `drift_remeasure`).
    drift_every: int = 0
    drift_requests: int = 3
    drift_threshold: float = 0.15
    drift_remeasure: bool = False
    # `concurrency` (closed-loop clients sending a trial's requests at once: a number, or {choices: [...]}) is
    # read into the search space as the setting of that name; see _load.


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str | None = None
    experiment_name: str = ""  # default: the study's name


@dataclass(frozen=True)
class CostConfig:
    """What the machine that serves costs: ``per_hour`` in ``currency`` (an ISO 4217 code); None: no cost."""

    per_hour: float | None = None
    currency: str = "USD"


@dataclass(frozen=True)
class StudyConfig:
    path: Path
    experiment: Path
    prompts: Path
    study: StudySection = field(default_factory=StudySection)
    engine: EngineConfig = field(default_factory=EngineConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    objectives: tuple[Objective, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    search_space: dict[str, ParamSpec] = field(default_factory=dict)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    # The settings served today (every setting of the search space), or None: measured first by a study and
    # against the candidate by `promote`.
    baseline: dict[str, Any] | None = None

    def with_overrides(self, **sections: dict[str, Any]) -> StudyConfig:
        """Return a copy with some section fields replaced (command-line values), validated like the file."""
        where = "command line"
        changed: dict[str, Any] = {}
        for section, values in sections.items():
            values = {k: v for k, v in values.items() if v is not None}
            if not values:
                continue
            current = getattr(self, section)
            checked = _check_fields(values, type(current), f"{where} ({section})")
            if checked.get("gguf") is not None:  # a path on the command line is relative to the shell's folder
                checked["gguf"] = Path(checked["gguf"]).resolve()
            changed[section] = replace(current, **checked)
        return replace(self, **changed)


# The default racing stages, as shares of a trial's requests (4, 8, 12 and 16 of 20), and the fewest requests a
# trial must have to be raced by default (BENCHMARKS.md, adaptive evaluation).
RACING_STAGES = (0.2, 0.4, 0.6, 0.8)
MIN_RACED = 10

# Correct answers first: with constrained decoding (format=schema) every answer is schema-valid by
# construction, so validity cannot tell settings apart; field accuracy can.
DEFAULT_OBJECTIVES = (
    Objective("field_accuracy", "maximize"),
    Objective("latency_p95_ms", "minimize"),
)

_TOP_LEVEL = ("study", "experiment", "prompts", "engine", "evaluation", "objectives", "constraints", "cost",
              "search_space", "baseline", "tracking")


def load_config(path: str | Path) -> StudyConfig:
    """Load and validate a study config file.

    Returns:
        The validated :class:`StudyConfig`, paths resolved against the file's folder.

    Raises:
        ConfigError: the file is missing, is not UTF-8 YAML, or has an unknown key, a repeated key, a wrong type,
            a bad range or an unusable store location.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass an existing YAML file, e.g. configs/task_api.yaml")
    raw = _read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections ({', '.join(_TOP_LEVEL)})")
    where = str(path)
    _reject_unknown(raw, _TOP_LEVEL, where)
    base = path.resolve().parent

    def folder(key: str, default: str) -> Path:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ConfigError(f"{where}: '{key}' must be a folder path (string), got {_shown(value)}")
        resolved = (base / value).resolve()
        if not resolved.is_dir():
            raise ConfigError(f"{where}: '{key}' folder {resolved} not found; point it at an existing folder")
        return resolved

    study = StudySection(**_check_fields(raw.get("study"), StudySection, f"{where} (study)"))
    if not study.name:
        study = replace(study, name=_job_name(path, where))
    tracking = TrackingConfig(**_check_fields(raw.get("tracking"), TrackingConfig, f"{where} (tracking)"))
    if not tracking.experiment_name:
        tracking = replace(tracking, experiment_name=study.name)
    engine_values = _check_fields(raw.get("engine"), EngineConfig, f"{where} (engine)")
    evaluation, load = _load(raw.get("evaluation"), f"{where} (evaluation)")
    if engine_values.get("gguf") is not None:
        engine_values["gguf"] = (base / engine_values["gguf"]).resolve()
    if "server_args" in engine_values:
        engine_values["server_args"] = tuple(engine_values["server_args"])
    return StudyConfig(
        path=path.resolve(),
        experiment=folder("experiment", f"../experiments/{path.stem}"),
        prompts=folder("prompts", f"../prompts/{path.stem}"),
        study=study,
        engine=EngineConfig(**engine_values),
        evaluation=EvaluationConfig(**_check_fields(evaluation, EvaluationConfig, f"{where} (evaluation)")),
        objectives=_objectives(raw.get("objectives"), where),
        constraints=_constraints(raw.get("constraints"), where),
        search_space={**_search_space(raw.get("search_space"), where), **load},
        tracking=tracking,
        cost=CostConfig(**_check_fields(raw.get("cost"), CostConfig, f"{where} (cost)")),
        baseline=settings_values(raw["baseline"], f"{where} (baseline)") if raw.get("baseline") is not None else None,
    )


def settings_values(raw: Any, where: str) -> dict[str, Any]:
    """One point of the search space written out in full (a config's ``baseline``, a settings file): every
    setting, each value checked as the search space checks it; serving settings only where they are given.

    Raises:
        ConfigError: not a mapping, an unknown or missing setting, or a value the setting cannot take.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must map every setting ({', '.join(CORE_PARAMETERS)}) to its value")
    _reject_unknown(raw, list(PARAMETERS), where)
    missing = [name for name in CORE_PARAMETERS if name not in raw]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}; give every setting a value (what is served "
                          "today: Ollama's defaults are num_ctx 4096, num_predict -1, temperature 0.8, top_p 0.9, "
                          "top_k 40)")
    return {name: _value(name, raw[name], f"{where}.{name}") for name in PARAMETERS if name in raw}


def load_settings(path: str | Path) -> dict[str, Any]:
    """A settings file: one YAML mapping of every setting (see :func:`settings_values`).

    Raises:
        ConfigError: the file is missing, is not UTF-8 YAML, or holds a bad setting.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"settings file {path} not found: write every setting ({', '.join(CORE_PARAMETERS)}) in "
                          "a YAML file")
    return settings_values(_read_yaml(path), str(path))


def _job_name(path: Path, where: str) -> str:
    """The study name a config without one gets: the file's name, when it is a usable one."""
    if not _STUDY_NAME.fullmatch(path.stem):
        raise ConfigError(f"{where}: the file name {path.stem!r} cannot name the study (letters, digits, '.', '_' "
                          "and '-' only); set study.name")
    return path.stem


def _read_yaml(path: Path) -> Any:
    _, text = read_text(path, error=ConfigError)
    return parse_yaml(path, text, ConfigError, what="config", depth="a study config needs a few levels at most",
                      unique_keys=True)


def _reject_unknown(raw: dict[str, Any], known: tuple[str, ...] | list[str], where: str) -> None:
    if (problem := unknown_key(raw, known)) is not None:
        raise ConfigError(f"{where}: {problem}")


# Field name -> (accepted Python types, rule) for each simple section.
_FIELD_RULES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "study_name"),
    "trials": ((int,), "positive"),
    "seed": ((int,), "non_negative"),
    "sampler": ((str,), "sampler"),
    "storage": ((str, type(None)), "storage"),
    "batch": ((int, type(None)), "positive"),
    "heartbeat_interval_s": ((int,), "positive"),
    "grace_period_s": ((int,), "positive"),
    "max_consecutive_failures": ((int,), "positive"),
    "backend": ((str,), "backend"),
    "gguf": ((str, type(None)), "path"),
    "ollama_model": ((str, type(None)), "name"),
    "host": ((str, type(None)), "host"),
    "keep_alive": ((str,), "duration"),
    "pull": ((bool,), "any"),
    "threads": ((int, type(None)), "positive"),
    "warmup_requests": ((int,), "non_negative"),
    "request_timeout_s": ((int, float), "positive"),
    "reload_threshold_ms": ((int, float, type(None)), "positive"),
    "context_margin": ((int, float), "share"),
    "served_model": ((str, type(None)), "name"),
    "server_binary": ((str, type(None)), "path"),
    "server_args": ((list, tuple), "flags"),
    "embed_model": ((str, type(None)), "name"),
    "embed_url": ((str, type(None)), "host"),
    "embed_api": ((str, type(None)), "embed_api"),
    "split": ((str,), "split"),
    "limit": ((int, type(None)), "positive"),
    "repetitions": ((int,), "positive"),
    "early_abort": ((bool,), "any"),
    "traffic": ((bool,), "any"),
    "stages": ((list, tuple, type(None)), "stages"),
    "error_rate": ((int, float), "error_rate"),
    "racing_error_rate": ((int, float), "error_rate"),
    "refine_requests": ((int,), "non_negative"),
    "drift_every": ((int,), "non_negative"),
    "drift_requests": ((int,), "positive"),
    "drift_threshold": ((int, float), "positive"),
    "drift_remeasure": ((bool,), "any"),
    "tracking_uri": ((str, type(None)), "tracking_uri"),
    "per_hour": ((int, float, type(None)), "positive"),
    "currency": ((str,), "currency"),
    "experiment_name": ((str,), "name"),
}


def _check_fields(raw: Any, section: type, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of keys to values, got {type(raw).__name__}")
    known = [f for f in section.__dataclass_fields__]
    _reject_unknown(raw, known, where)
    checked = {}
    for key, value in raw.items():
        types, rule = _FIELD_RULES[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(f"{where}: '{key}' must be {wanted}, got {_shown(value)}")
        if float in types and value is not None:
            value = _finite(value, f"{where}: '{key}'")
        _check_rule(key, value, rule, where)
        checked[key] = tuple(value) if isinstance(value, list) else value
    return checked


def _shown(value: Any) -> str:
    # A value quoted back to the user: repr() keeps it on one line; a pasted megabyte should not fill the screen.
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"


def _finite(value: float, spot: str) -> float:
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{spot} must be a finite number, got {_shown(value)}")
    return number


# Go's time.ParseDuration, which Ollama applies to keep_alive: "30m", "1h30m", "0"; a negative one means forever.
_DURATION = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+|[-+]?0")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A study's name becomes MLflow run names and metric keys (which must not change under path normalisation),
# the default registered-model and Ollama model name, and words in printed shell commands.
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _check_rule(key: str, value: Any, rule: str, where: str) -> None:
    if value is None or rule == "any":
        return
    if isinstance(value, str) and _CONTROL.search(value):
        raise ConfigError(f"{where}: '{key}' contains a control character ({_shown(value)}); remove it")
    if rule == "flags":
        if not all(isinstance(flag, str) and flag and not _CONTROL.search(flag) for flag in value):
            raise ConfigError(f"{where}: '{key}' must be a list of command-line words, e.g. [--mlock], got "
                              f"{_shown(value)}")
        return
    if rule == "stages":
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value) \
                or list(value) != sorted(set(value)):
            raise ConfigError(f"{where}: '{key}' must be request counts in increasing order, e.g. [8] or [5, 10] "
                              f"([] for no racing), got {_shown(value)}")
        return
    if rule == "error_rate" and not 0 < value <= 0.5:
        raise ConfigError(f"{where}: '{key}' must be in (0, 0.5], e.g. 0.05 for 95% intervals, got {_shown(value)}")
    if rule == "currency" and not re.fullmatch(r"[A-Z]{3}", value):
        raise ConfigError(f"{where}: '{key}' must be a three-letter currency code (ISO 4217) such as USD or EUR, "
                          f"got {_shown(value)}")
    if rule == "storage":
        check_storage_url(value, where)
    elif rule == "tracking_uri":
        check_tracking_uri(value, where)
    elif rule == "host":
        check_host(value, where)
    elif rule == "study_name" and value.strip() and not _STUDY_NAME.fullmatch(value):
        raise ConfigError(f"{where}: '{key}' {_shown(value)} must start with a letter or digit and hold only "
                          "letters, digits, '.', '_' and '-' (100 at most): it names MLflow runs, metric keys and "
                          "the promoted model")
    elif rule == "duration" and not _DURATION.fullmatch(value):
        raise ConfigError(f"{where}: '{key}' must be a duration like 30m, 1h or 0 (a negative one keeps the model "
                          f"loaded), got {_shown(value)}")
    elif rule == "duration" and not any(float(n) for n in re.findall(r"\d+(?:\.\d*)?|\.\d+", value)):
        raise ConfigError(f"{where}: '{key}' {_shown(value)} unloads the model after every request, so every "
                          "request of a study would load it again and time the load, not the setting; use a "
                          "duration such as 30m (a negative one keeps the model loaded)")
    problem = {
        "positive": value <= 0 if not isinstance(value, str) else False,
        "non_negative": value < 0 if not isinstance(value, str) else False,
        "share": not 0 <= value < 1 if not isinstance(value, str) else False,
        "name": isinstance(value, str) and not value.strip(),
        "study_name": isinstance(value, str) and not value.strip(),
        "path": isinstance(value, str) and not value.strip(),
    }.get(rule, False)
    if problem:
        wanted = {"positive": "greater than 0", "non_negative": "0 or more", "share": "in [0, 1)",
                  "name": "a non-empty string", "study_name": "a non-empty string", "path": "a file path"}[rule]
        raise ConfigError(f"{where}: '{key}' must be {wanted}, got {_shown(value)}")
    options = {"sampler": SAMPLERS, "backend": BACKENDS, "split": ("dev", "holdout"), "embed_api": EMBED_APIS}.get(rule)
    if options is not None and value not in options:
        raise ConfigError(f"{where}: '{key}' is {_shown(value)}, not one of {', '.join(options)}."
                          f"{did_you_mean(value, options)}")


def _objectives(raw: Any, where: str) -> tuple[Objective, ...]:
    if raw is None:
        return DEFAULT_OBJECTIVES
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: 'objectives' must be a non-empty list of {{metric, direction}}")
    objectives = []
    for i, item in enumerate(raw):
        spot = f"{where} (objectives[{i}])"
        if not isinstance(item, dict):
            raise ConfigError(f"{spot}: must be a mapping with 'metric' and 'direction'")
        _reject_unknown(item, ("metric", "direction"), spot)
        metric = _metric(item.get("metric"), spot)
        direction = item.get("direction", metric_direction(metric))
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"{spot}: 'direction' must be maximize or minimize, got {direction!r}")
        objectives.append(Objective(metric, direction))
    names = [o.metric for o in objectives]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: 'objectives' lists a metric twice ({', '.join(names)}); list each once")
    return tuple(objectives)


def _constraints(raw: Any, where: str) -> tuple[Constraint, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'constraints' must map a metric to {{max: X}} or {{min: Y}}")
    constraints = []
    for metric, limit in raw.items():
        spot = f"{where} (constraints.{metric})"
        name = _metric(metric, spot)
        if not isinstance(limit, dict) or len(limit) != 1 or next(iter(limit)) not in ("max", "min"):
            raise ConfigError(f"{spot}: must be exactly one of {{max: X}} or {{min: Y}}, got {limit!r}")
        (bound, value), = limit.items()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{spot}: '{bound}' must be a finite number, got {value!r}")
        constraints.append(Constraint(name, **{bound: float(value)}))
    return tuple(constraints)


def _metric(name: Any, where: str) -> str:
    """A trial metric's name; whether a ``field_accuracy.<path>`` names a field of the job is checked later, with
    the experiment's files (pipeline.search.prepare)."""
    if not isinstance(name, str) or metric_direction(name) is None:
        raise ConfigError(f"{where}: unknown metric {_shown(name)}.{did_you_mean(str(name), REGISTRY)} "
                          f"Known metrics: {', '.join(REGISTRY)}, and {FIELD_METRIC}<path> for one field, e.g. "
                          f"{FIELD_METRIC}/category")
    return metric_name(name)


def _search_space(raw: Any, where: str) -> dict[str, ParamSpec]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'search_space' must map setting names to a value, choices or a range")
    _reject_unknown(raw, [name for name in PARAMETERS if name != CONCURRENCY], f"{where} (search_space)")
    return {name: _param_spec(name, raw.get(name, default), f"{where} (search_space.{name})")
            for name, (_, default, _) in PARAMETERS.items() if name in raw or default is not None}


def _param_spec(name: str, raw: Any, where: str) -> ParamSpec:
    kind_type, _, allowed = PARAMETERS[name]
    if not isinstance(raw, dict):
        return ParamSpec(name, "fixed", (_value(name, raw, where),))
    if "choices" in raw:
        _reject_unknown(raw, ("choices",), where)
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: 'choices' must be a non-empty list, got {choices!r}")
        values = tuple(_value(name, c, where) for c in choices)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: 'choices' repeats a value ({choices!r}); list each once")
        return ParamSpec(name, "categorical", values)
    if kind_type is str:
        raise ConfigError(f"{where}: a text setting takes a value or {{choices: [...]}}, not a range")
    _reject_unknown(raw, ("low", "high", "step", "log"), where)
    if "low" not in raw or "high" not in raw:
        raise ConfigError(f"{where}: a range needs both 'low' and 'high' (or use 'choices')")
    low, high = _value(name, raw["low"], where), _value(name, raw["high"], where)
    if low > high:
        raise ConfigError(f"{where}: inverted range, low {low} > high {high}; swap them")
    if low == high:
        raise ConfigError(f"{where}: empty range, low {low} == high {high}; write the value itself ({name}: {low}) "
                          "or widen the range")
    step = raw.get("step")
    # Optuna rounds an integer setting's step down to an int (0 would fail every trial) and silently moves
    # `high` when a step does not fit the range.
    step_types = (int,) if kind_type is int else (int, float)
    if step is not None and (isinstance(step, bool) or not isinstance(step, step_types)
                             or not _finite(step, f"{where}: 'step'") > 0):
        wanted = "a whole number" if kind_type is int else "a number"
        raise ConfigError(f"{where}: 'step' must be {wanted} greater than 0, got {_shown(step)}")
    if step is not None and step > high - low:
        raise ConfigError(f"{where}: 'step' {step} is larger than the range {low}..{high}; lower it or widen the range")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' must be true or false, got {log!r}")
    if log and (low <= 0 or step is not None):
        raise ConfigError(f"{where}: a log range needs low > 0 and no step")
    kind = "int" if kind_type is int else "float"
    return ParamSpec(name, kind, low=low, high=high, step=step, log=log)


def _value(name: str, value: Any, where: str) -> Any:
    kind_type, _, allowed = PARAMETERS[name]
    if name in ("format", "cache") and value is False:  # YAML 1.1 reads a bare `off` as false
        value = "off"
    if name in ("flash_attn", "think", "cache_guard") and isinstance(value, bool):  # and `on` as true
        value = "on" if value else "off"
    if kind_type is float and isinstance(value, int) and not isinstance(value, bool):
        value = _finite(value, f"{where}: the value")
    if isinstance(value, bool) or not isinstance(value, kind_type):
        raise ConfigError(f"{where}: expected {kind_type.__name__}, got {_shown(value)}")
    if kind_type is str:
        if isinstance(allowed, tuple) and value not in allowed:
            raise ConfigError(f"{where}: {_shown(value)} is not one of {', '.join(allowed)}."
                              f"{did_you_mean(value, allowed)}")
        if not value.strip() or _CONTROL.search(value):
            raise ConfigError(f"{where}: {_shown(value)} is not a usable name; use letters, digits, - and _")
        return value
    if (isinstance(value, float) and not math.isfinite(value)) or value < allowed:
        raise ConfigError(f"{where}: {_shown(value)} is out of range; use a value >= {allowed}")
    if name == "top_p" and value > 1:
        raise ConfigError(f"{where}: top_p {value!r} is out of range; use a value in (0, 1]")
    if name == "cache_threshold" and not 0 < value <= 1:
        raise ConfigError(f"{where}: cache_threshold {value!r} is a cosine similarity; use a value in (0, 1]")
    return value


def _load(raw: Any, where: str) -> tuple[Any, dict[str, ParamSpec]]:
    """The evaluation section without its ``concurrency``, and that as a setting of the space: none at 1 (one
    client, every backend), else a fixed value or choices."""
    if not isinstance(raw, dict) or CONCURRENCY not in raw:
        return raw, {}
    rest = {k: v for k, v in raw.items() if k != CONCURRENCY}
    spec = _param_spec(CONCURRENCY, raw[CONCURRENCY], f"{where}.{CONCURRENCY}")
    if spec.kind == "int":
        raise ConfigError(f"{where}.{CONCURRENCY}: give a number of clients or {{choices: [1, 2, 4]}}, not a range")
    return rest, {} if spec.choices == (1,) else {CONCURRENCY: spec}
