"""The bundle check of promotion: the written files, read back, serve the trial's setting; held-out requests
replayed through them must answer as the trial did (identically where decoding is deterministic, otherwise
within the paired intervals)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient
from rich.console import Console

from pipeline.engines.serving import launch_args, server_of_launch
from pipeline.engines.settings import InferenceSettings
from pipeline.job.scoring import AnswerScore
from pipeline.measure.records import RequestRecord
from pipeline.promote import promotion
from pipeline.promote.bundle import bundle_of, write_bundle
from pipeline.promote.check import WrittenBundle, compare
from pipeline.promote.promotion import PromotionPolicy, PromotionRefused, promote
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import ROOT, smoke_config

VALID = AnswerScore(parsed=True, schema_valid=True, exact_match=True, field_accuracy=1.0)
CUT = AnswerScore(parsed=False, schema_valid=False, exact_match=False, field_accuracy=0.0)


def record(request_id: str, answer: str, score: AnswerScore = VALID) -> RequestRecord:
    return RequestRecord(request_id, f"request {request_id}", {}, answer, score, latency_ms=100.0)


def test_identical_answers_pass_where_decoding_is_deterministic():
    trial = [record(str(i), f"answer {i}") for i in range(8) for _ in range(2)]  # two repetitions, identical
    check = compare(trial, [record(str(i), f"answer {i}") for i in range(8)], accuracy="field_accuracy",
                    temperature=0.7)
    assert check.deterministic and "identically on every repetition" in check.why_deterministic
    assert check.identical == 8 and check.failure is None and check.summary().endswith("passed")


def test_one_different_answer_fails_where_decoding_is_deterministic():
    trial = [record(str(i), f"answer {i}") for i in range(8)]  # one repetition at temperature 0: greedy
    bundle = [record(str(i), f"answer {i}" if i != 3 else "another answer") for i in range(8)]
    check = compare(trial, bundle, accuracy="field_accuracy", temperature=0.0)
    assert check.deterministic and check.identical == 7
    assert check.failure.startswith("1 of 8 answers differ from the trial's, where decoding is deterministic; "
                                    "request 3: trial 'answer 3', bundle 'another answer'")


def test_one_cut_answer_at_a_sampling_temperature_is_not_a_refusal():
    # the trial's repetitions differ (sampling), as at temperature 0.7; the bundle's answer to one request is cut
    trial = [record(str(i), f"answer {i} take {k}") for i in range(8) for k in range(2)]
    bundle = [record(str(i), "{\"action\": " if i == 0 else f"answer {i}", CUT if i == 0 else VALID)
              for i in range(8)]
    check = compare(trial, bundle, accuracy="field_accuracy", temperature=0.7)
    assert not check.deterministic and check.failure is None
    gap, low, high = check.gaps["schema_valid_rate"]
    assert gap == pytest.approx(-1 / 8) and low < 0 <= high


def test_a_bundle_that_answers_worse_on_most_requests_fails_at_a_sampling_temperature():
    trial = [record(str(i), f"answer {i} take {k}") for i in range(8) for k in range(2)]
    bundle = [record(str(i), "Sure, I can do that.", CUT if i < 6 else VALID) for i in range(8)]
    check = compare(trial, bundle, accuracy="field_accuracy", temperature=0.7)
    assert not check.deterministic
    assert check.failure.startswith("the bundle's schema_valid_rate differs from the trial's on the same requests "
                                    "by -0.75 [")


def test_a_launch_command_gives_back_the_context_and_server_settings():
    server = {"parallel": 2, "batch_size": 256, "cache_type_k": "q8_0", "flash_attn": "on"}
    args = ["--model", "m.gguf", "--host", "127.0.0.1", *launch_args(2048, server), "--no-repack"]
    assert server_of_launch(args) == (2048, server)
    assert server_of_launch(launch_args(1024, {})) == (1024, {"parallel": 1})


@pytest.fixture
def prepared(tmp_path, write_config):
    config = write_config(smoke_config(experiment=str(ROOT / "experiments/tickets"),
                                       prompts=str(ROOT / "prompts/tickets"),
                                       search_space={"prompt_variant": {"choices": ["short", "minimal"]}}))
    return prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                         backend=FakeBackend())


@pytest.mark.parametrize("selection", ["static", "by_label"])
def test_the_bundle_read_back_serves_the_trials_settings_and_messages(prepared, tmp_path, selection):
    settings = InferenceSettings(num_ctx=2048, num_predict=96, temperature=0.4, top_p=0.9, top_k=30, few_shot=2,
                                 prompt_variant="short", example_selection=selection, format="schema", seed=11,
                                 serving=(("think", "off"),))
    modelfile, sidecar = bundle_of(prepared, settings)
    bundle = WrittenBundle.read(write_bundle(tmp_path / "b", modelfile, sidecar, header="test"))
    assert bundle.settings() == replace(settings, prompt_variant="bundle")
    library = bundle.prompts(prepared.prompts)
    for example in prepared.experiment.split("holdout")[:10]:
        assert library.render(example.request, variant="bundle", few_shot=2, selection=selection) == \
            prepared.prompts.render(example.request, variant="short", few_shot=2, selection=selection)


@pytest.fixture
def fake_study(tmp_path, write_config):
    from pipeline.job.experiment import load_experiment
    from tests.conftest import EXPERIMENT

    right = answers_by_request({e.request: e.expected for e in load_experiment(EXPERIMENT).examples})

    def answer(messages, settings):  # right with the schema enforced, prose without
        return right(messages, settings) if settings.format == "schema" else "Sure, I can do that."

    config = write_config(smoke_config(study={"name": "promo", "trials": 2},
                                       search_space={"format": "schema", "few_shot": 2, "prompt_variant": "compact",
                                                     "num_predict": 64}))
    backend = FakeBackend(answer)
    study = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=backend)
    run_study(study, trials=2, console=Console(file=io.StringIO()))
    return config, answer


def promote_fake(tmp_path: Path, config: Path, answer) -> tuple[promotion.PromotionReport, FakeBackend]:
    backend = FakeBackend(answer)
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=backend)
    return promote(prepared, "promo", PromotionPolicy("trial", trial=0, repetitions=2, check_requests=5,
                                                      output=tmp_path / "out")), backend


def test_an_accepted_bundle_was_replayed_and_the_check_is_on_the_run(tmp_path, fake_study):
    config, answer = fake_study
    report, backend = promote_fake(tmp_path, config, answer)
    check = report.check
    assert check.requests == 5 and check.identical == 5 and check.deterministic and check.failure is None
    # 40 held-out requests twice after a warm-up, then the 5 replayed from the files (the context stays loaded)
    assert len(backend.calls) == 1 + 2 * 40 + 5
    assert backend.calls[-5:] == backend.calls[1:6]  # the same messages, rendered from the files
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(report.run_id)
    assert run.data.tags["bundle_check"] == "passed" and run.data.metrics["bundle_check_identical"] == 5
    assert run.data.tags["bundle_check_summary"].startswith("bundle check: 5 held-out requests replayed")
    assert json.loads((tmp_path / "out" / "promotion.json").read_text())["format"] == "schema"


def test_a_bundle_that_does_not_reproduce_the_setting_is_refused_and_nothing_is_written(tmp_path, fake_study,
                                                                                        monkeypatch):
    config, answer = fake_study
    made = promotion.bundle_of

    def without_format(prepared, settings):  # a sidecar that forgot the constrained decoding
        modelfile, sidecar = made(prepared, settings)
        return modelfile, {**sidecar, "format": "off", "pass_format": False}

    monkeypatch.setattr(promotion, "bundle_of", without_format)
    with pytest.raises(PromotionRefused) as refused:
        promote_fake(tmp_path, config, answer)
    assert "the written bundle does not reproduce the trial: 5 of 5 answers differ from the trial's" in \
        str(refused.value)
    assert refused.value.report.check.identical == 0
    assert not (tmp_path / "out").exists()
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(refused.value.report.run_id)
    assert run.data.tags["promotion"] == "refused" and run.data.tags["bundle_check"] == "failed"
