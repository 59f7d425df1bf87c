"""`pipeline init`: a new job as commented files that run as they are, and again once rewritten — no code change."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from pipeline.commands.cli import main
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend


def init(root: Path, name: str = "my_job") -> list[str]:
    assert main(["init", name, "--root", str(root)]) == 0
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_init_writes_every_file_commented(tmp_path, capsys):
    files = init(tmp_path)
    assert files == ["configs/my_job.yaml", "experiments/my_job/README.md", "experiments/my_job/dataset.jsonl",
                     "experiments/my_job/experiment.yaml", "experiments/my_job/schema.json",
                     "prompts/my_job/default.txt", "prompts/my_job/examples.jsonl", "prompts/my_job/router.yaml"]
    assert "python -m pipeline study --config" in capsys.readouterr().out
    for name in files:
        text = (tmp_path / name).read_text()
        assert "{{NAME}}" not in text
        if name.endswith((".yaml", ".jsonl")):
            assert text.lstrip().startswith("#"), name  # each file says what it is for
    assert "$comment" in json.loads((tmp_path / "experiments/my_job/schema.json").read_text())


def test_init_refuses_to_overwrite_anything(tmp_path, capsys):
    (tmp_path / "prompts" / "my_job").mkdir(parents=True)
    (tmp_path / "prompts" / "my_job" / "examples.jsonl").write_text("mine\n")
    assert main(["init", "my_job", "--root", str(tmp_path)]) == 2
    assert "examples.jsonl already exists; `pipeline init` never overwrites" in capsys.readouterr().err
    assert (tmp_path / "prompts" / "my_job" / "examples.jsonl").read_text() == "mine\n"
    assert not (tmp_path / "configs").exists()  # nothing was written


def test_the_scaffold_runs_as_it_is(tmp_path):
    init(tmp_path)
    config = load_config(tmp_path / "configs" / "my_job.yaml").with_overrides(evaluation={"limit": 1})
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=FakeBackend())
    report = run_study(prepared, trials=2, console=Console(file=io.StringIO()))
    assert report.study_name == "my_job" and len(report.trials) == 2


# A small job of this test's own, written only as files: sentiment of a product review, with a nested object.
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["sentiment", "product"],
          "properties": {"sentiment": {"enum": ["positive", "negative"]},
                         "product": {"type": "object", "required": ["name"], "additionalProperties": False,
                                     "properties": {"name": {"type": "string"}}}}}
REVIEWS = [("The blender is great, I love it", "positive", "blender"), ("This kettle broke in a week", "negative",
           "kettle"), ("Best toaster I ever had", "positive", "toaster"), ("The lamp flickers, awful", "negative",
           "lamp"), ("Lovely soft pillow", "positive", "pillow"), ("Terrible headphones, no sound", "negative",
           "headphones")]


def rewrite_as_own_job(root: Path) -> Path:
    experiment, prompts = root / "experiments" / "reviews", root / "prompts" / "reviews"
    (experiment / "schema.json").write_text(json.dumps(SCHEMA))
    lines = [{"id": f"r{i}", "split": "dev" if i < 4 else "holdout", "review": text,
              "expected": {"sentiment": label, "product": {"name": product}}}
             for i, (text, label, product) in enumerate(REVIEWS)]
    (experiment / "dataset.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    manifest = yaml.safe_load((experiment / "experiment.yaml").read_text())
    manifest.update({"input": "Review: {review}", "label": "/sentiment", "scoring": {"default": "text"}})
    (experiment / "experiment.yaml").write_text(yaml.safe_dump(manifest))
    (prompts / "default.txt").write_text('Answer with JSON: {"sentiment": "positive" or "negative", '
                                         '"product": {"name": the product}}.')
    (prompts / "short.txt").write_text("Classify the review's sentiment and name the product, as JSON.")
    (prompts / "examples.jsonl").write_text(
        json.dumps({"review": "My new chair is comfortable", "answer": {"sentiment": "positive",
                                                                        "product": {"name": "chair"}}}) + "\n"
        + json.dumps({"review": "The oven stopped heating", "answer": {"sentiment": "negative",
                                                                     "product": {"name": "oven"}}}) + "\n")
    (prompts / "router.yaml").write_text("keywords:\n  positive: [great, love, best]\n  negative: [broke, awful]\n")
    config = yaml.safe_load((root / "configs" / "reviews.yaml").read_text())
    config["search_space"].update({"prompt_variant": {"choices": ["default", "short"]}, "num_predict": 40,
                                   "few_shot": {"choices": [0, 2]}, "temperature": 0.0})
    config["evaluation"]["limit"] = 2
    path = root / "configs" / "reviews.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_a_new_job_written_only_as_files_runs_a_real_study(tmp_path, capsys):
    init(tmp_path, "reviews")
    config = rewrite_as_own_job(tmp_path)
    code = main(["study", "--config", str(config), "--trials", "2", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Pareto front of study 'reviews'" in out.out
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("reviews").experiment_id])
    trial_metrics = [r.data.metrics for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(trial_metrics) == 2
    assert all({"label_accuracy", "field_accuracy./sentiment", "field_accuracy./product/name"} <= set(m)
               for m in trial_metrics)
