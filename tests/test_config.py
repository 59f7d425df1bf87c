from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.measure.registry import Constraint
from pipeline.search.config import ParamSpec, load_config
from pipeline.search.prepare import job_defaults
from tests.conftest import ROOT, smoke_config


def test_default_config_loads_with_every_setting():
    config = load_config(ROOT / "configs" / "task_api.yaml")
    assert [o.metric for o in config.objectives] == ["field_accuracy", "latency_p95_ms"]
    assert [o.direction for o in config.objectives] == ["maximize", "minimize"]
    assert config.constraints == (Constraint("schema_valid_rate", min=0.9), Constraint("latency_p95_ms", max=4000.0))
    assert set(config.search_space) == {"num_ctx", "num_predict", "temperature", "top_p", "top_k", "few_shot",
                                        "prompt_variant", "example_selection", "format"}
    assert config.search_space["format"] == ParamSpec("format", "categorical", ("off", "json", "schema"))
    assert config.search_space["top_k"] == ParamSpec("top_k", "int", low=1, high=100)
    assert config.experiment == ROOT / "experiments" / "task_api"


def test_missing_sections_take_defaults(write_config, experiment, prompts):
    config = load_config(write_config({"experiment": str(ROOT / "experiments/task_api"),
                                       "prompts": str(ROOT / "prompts/task_api")}, name="my_job.yaml"))
    assert config.study.trials == 12 and config.evaluation.split == "dev"
    assert config.study.name == config.tracking.experiment_name == "my_job"  # named after the file
    assert [o.metric for o in config.objectives] == ["field_accuracy", "latency_p95_ms"]
    assert config.search_space["temperature"].kind == "float"
    # the settings that depend on the job are filled in from its files
    assert "prompt_variant" not in config.search_space
    space = job_defaults(config, experiment, prompts).search_space
    assert space["prompt_variant"] == ParamSpec("prompt_variant", "categorical", ("compact", "minimal", "verbose"))
    assert space["few_shot"] == ParamSpec("few_shot", "int", low=0, high=5)
    assert space["example_selection"].choices == ("static", "by_label")


def test_a_config_names_its_experiment_and_prompts_after_itself(tmp_path):
    for folder in ("configs", "experiments/job", "prompts/job"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "configs" / "job.yaml").write_text("study: {trials: 2}\n")
    config = load_config(tmp_path / "configs" / "job.yaml")
    assert config.experiment == tmp_path / "experiments" / "job" and config.prompts == tmp_path / "prompts" / "job"


def test_bare_off_in_yaml_means_format_off(write_config):
    raw = smoke_config()
    text = (ROOT / "configs" / "smoke.yaml").read_text().replace('["off", schema]', "[off, schema]")
    text = text.replace("../experiments/task_api", raw["experiment"]).replace("../prompts/task_api", raw["prompts"])
    config = load_config(write_config(text))
    assert config.search_space["format"].choices == ("off", "schema")


@pytest.mark.parametrize("changes, message", [
    ({"studdy": {}}, "unknown key 'studdy'. Did you mean 'study'?"),
    ({"study": {"trials": "ten"}}, "(study): 'trials' must be int, got 'ten'"),
    ({"study": {"trials": 0}}, "'trials' must be greater than 0"),
    ({"study": {"sampler": "tpee"}}, "'sampler' is 'tpee', not one of tpe, nsga2, random. Did you mean 'tpe'?"),
    ({"engine": {"warmup_requests": True}}, "'warmup_requests' must be int, got True"),
    ({"engine": {"context_margin": 1.5}}, "'context_margin' must be in [0, 1)"),
    ({"evaluation": {"split": "test"}}, "'split' is 'test', not one of dev, holdout"),
    ({"evaluation": {"early_abort": "yes"}}, "(evaluation): 'early_abort' must be bool, got 'yes'"),
    ({"search_space": {"temperature": {"low": 1.0, "high": 0.2}}}, "inverted range, low 1.0 > high 0.2"),
    ({"search_space": {"num_ctx": {"choices": []}}}, "'choices' must be a non-empty list"),
    ({"search_space": {"top_p": {"low": 0.5, "high": 1.5}}}, "top_p 1.5 is out of range"),
    ({"search_space": {"num_predict": {"choices": [64, "many"]}}}, "expected int, got 'many'"),
    ({"search_space": {"format": {"choices": ["off", "jsonschema"]}}}, "'jsonschema' is not one of off, json, schema"),
    ({"search_space": {"num_kontext": 2048}}, "unknown key 'num_kontext'. Did you mean 'num_ctx'?"),
    ({"search_space": {"top_k": {"low": 1}}}, "a range needs both 'low' and 'high'"),
    ({"search_space": {"prompt_variant": {"low": 1, "high": 2}}}, "a text setting takes a value or {choices"),
    ({"objectives": [{"metric": "latency_p95", "direction": "minimize"}]},
     "unknown metric 'latency_p95'. Did you mean 'latency_p95_ms'?"),
    ({"objectives": [{"metric": "latency_p95_ms", "direction": "down"}]}, "'direction' must be maximize or minimize"),
    ({"objectives": []}, "'objectives' must be a non-empty list"),
    ({"constraints": {"latency_p95_ms": {"below": 10}}}, "must be exactly one of {max: X} or {min: Y}"),
    ({"experiment": "/nonexistent/experiment"}, "'experiment' folder /nonexistent/experiment not found"),
])
def test_bad_values_name_the_key_and_the_fix(write_config, changes, message):
    path = write_config(smoke_config(**changes))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert message in text
    assert str(path) in text and "\n" not in text


def test_yaml_syntax_error_names_the_line(write_config):
    path = write_config("study:\n  name: x\n  trials: [1, 2\n")
    with pytest.raises(ConfigError, match=r"study\.yaml:\d+: not valid YAML"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file nope.yaml not found"):
        load_config("nope.yaml")


def test_command_line_overrides_are_validated_too():
    config = load_config(ROOT / "configs" / "smoke.yaml")
    assert config.with_overrides(evaluation={"limit": 5}).evaluation.limit == 5
    assert config.with_overrides(study={"name": None}).study.name == "smoke"
    with pytest.raises(ConfigError, match="command line \\(study\\): 'sampler' is 'grid'"):
        config.with_overrides(study={"sampler": "grid"})


def test_constraint_violation_follows_optunas_sign_convention():
    assert Constraint("latency_p95_ms", max=1000).violation(900) == -100
    assert Constraint("latency_p95_ms", max=1000).violation(1200) == 200
    assert Constraint("schema_valid_rate", min=0.8).violation(0.5) == pytest.approx(0.3)
    assert Constraint("schema_valid_rate", min=0.8).violation(0.9) < 0


def test_a_config_with_a_byte_order_mark_reads_as_the_same_config(tmp_path):
    # The config is read like every job file (pipeline.job.files.read_text): a leading BOM is dropped.
    text = (ROOT / "configs" / "smoke.yaml").read_text().replace("../", f"{ROOT}/")
    (tmp_path / "plain.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "bom.yaml").write_text(text, encoding="utf-8-sig")
    assert (tmp_path / "bom.yaml").read_bytes().startswith(b"\xef\xbb\xbf")
    plain, bom = load_config(tmp_path / "plain.yaml"), load_config(tmp_path / "bom.yaml")
    assert bom.search_space == plain.search_space and bom.study == plain.study
