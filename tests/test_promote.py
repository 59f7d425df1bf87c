from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from pipeline.commands.cli import main
from pipeline.errors import InputError
from pipeline.measure.gain import Gain
from pipeline.measure.registry import Constraint, Objective
from pipeline.promote.choose import Choice, beating_baseline, choose_trial, knee_index
from pipeline.promote.modelfile import parse
from pipeline.promote.promotion import PromotionPolicy, decide, fall_note, unjudged
from pipeline.search.snapshot import StudySnapshot
from pipeline.search.trials import BASELINE
from pipeline.testing.ollama_double import OllamaDouble
from tests.conftest import ROOT, smoke_config

OBJECTIVES = (Objective("schema_valid_rate", "maximize"), Objective("latency_p95_ms", "minimize"))


def test_knee_is_the_point_nearest_the_ideal_after_scaling():
    # minimisation points: (-validity, p95)
    front = np.array([[-1.0, 900.0], [-0.9, 300.0], [-0.2, 100.0]])
    assert knee_index(front) == 1
    assert knee_index(np.array([[-1.0, 5.0]])) == 0
    # two points: over the front alone each is 0 on one objective and 1 on the other (a tie: the first); over
    # what the study measured, 30 ms of p95 is little and 0.33 of accuracy much
    pair = np.array([[-0.34, 804.0], [-0.67, 834.0]])
    assert knee_index(pair) == 0
    assert knee_index(pair, np.array([[-0.1, 600.0], [-0.2, 5000.0]])) == 1


@pytest.fixture
def study():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for valid, p95, feasible in [(1.0, 900.0, True), (0.9, 300.0, True), (0.2, 100.0, True), (1.0, 50.0, False)]:
        trial = study.ask()
        trial.set_constraint("latency_p95_ms", -1.0 if feasible else 1.0)
        trial.set_user_attr("metrics", {"schema_valid_rate": valid, "latency_p95_ms": p95})
        study.tell(trial, [valid, p95])
    return StudySnapshot.of(study)


def test_policies_choose_from_the_feasible_front(study):
    assert choose_trial(study, OBJECTIVES, PromotionPolicy("sla", sla_p95_ms=1000)).trial.number == 0
    assert choose_trial(study, OBJECTIVES, PromotionPolicy("sla", sla_p95_ms=500)).trial.number == 1
    assert choose_trial(study, OBJECTIVES, PromotionPolicy("knee")).trial.number == 1
    assert choose_trial(study, OBJECTIVES, PromotionPolicy("trial", trial=2)).trial.number == 2
    with pytest.raises(InputError, match="no front trial has latency_p95_ms <= 60 \\(the fastest has 100\\)"):
        choose_trial(study, OBJECTIVES, PromotionPolicy("sla", sla_p95_ms=60))
    with pytest.raises(InputError, match="trial 3 breaks a constraint"):
        choose_trial(study, OBJECTIVES, PromotionPolicy("trial", trial=3))
    with pytest.raises(InputError, match="trial 9 of study .* is not a completed trial"):
        choose_trial(study, OBJECTIVES, PromotionPolicy("trial", trial=9))


def constructed(points, *, baseline_at=None) -> StudySnapshot:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (valid, p95) in enumerate(points):
        trial = study.ask()
        trial.set_constraint("latency_p95_ms", -1.0)
        trial.set_user_attr("metrics", {"schema_valid_rate": valid, "latency_p95_ms": p95})
        if i == baseline_at:
            trial.set_user_attr(BASELINE, True)
        study.tell(trial, [valid, p95])
    return StudySnapshot.of(study)


def test_with_a_baseline_the_policies_choose_among_the_front_points_that_beat_it():
    # front: A (1.0, 900), B (0.9, 300), C (0.2, 100); the baseline (0.95, 950) is beaten by A alone
    points = [(1.0, 900.0), (0.9, 300.0), (0.2, 100.0), (0.95, 950.0)]
    plain = constructed(points)
    assert choose_trial(plain, OBJECTIVES, PromotionPolicy("knee")) == Choice(plain.trials[1])
    served = constructed(points, baseline_at=3)
    choice = choose_trial(served, OBJECTIVES, PromotionPolicy("knee"))
    assert choice.trial.number == 0  # not the plain knee: B is faster than the baseline but less accurate
    assert choice.why == ("chosen among the 1 of 3 front points that beat the baseline (trial 3) on every "
                          "objective on dev")
    assert choose_trial(served, OBJECTIVES, PromotionPolicy("sla", sla_p95_ms=950)).trial.number == 0
    # within the SLA nothing beats it: the whole front, said so
    choice = choose_trial(served, OBJECTIVES, PromotionPolicy("sla", sla_p95_ms=500))
    assert choice.trial.number == 1 and choice.why.startswith("no front point within the SLA beats the baseline")
    # the baseline on the front: nothing beats it, the whole front is the pool, said so
    on_front = constructed([(1.0, 900.0), (0.2, 100.0)], baseline_at=0)
    pool, why = beating_baseline(on_front, on_front.front, OBJECTIVES)
    assert [t.number for t in pool] == [1] and why.startswith("no front point beats the baseline (trial 0)")
    assert choose_trial(on_front, OBJECTIVES, PromotionPolicy("knee")).trial.number == 1  # never the baseline
    assert choose_trial(on_front, OBJECTIVES, PromotionPolicy("trial", trial=1)).why == ""


@pytest.fixture(scope="module")
def schema_study(tmp_path_factory):
    """A finished two-trial study whose settings constrain answers to the schema (so they are valid)."""
    import os

    folder = tmp_path_factory.mktemp("promote")
    config = folder / "study.yaml"
    import yaml

    config.write_text(yaml.safe_dump(smoke_config(
        study={"name": "promo", "trials": 2},
        search_space={"format": "schema", "few_shot": 2, "prompt_variant": "compact",
                      "num_predict": {"choices": [64, 96]}})))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["study", "--config", str(config), "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]) == 0
    finally:
        os.chdir(cwd)
    return folder, config


def promote_cli(folder: Path, config: Path, *args: str, output: str = "out") -> int:
    return main(["promote", "promo", "--config", str(config), "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
                 "--repetitions", "1", "--output", str(folder / output), *args])


def champion(client: MlflowClient) -> int | None:
    """The version the registered model's champion alias points at; None before any promotion."""
    if not client.search_registered_models(filter_string="name = 'promo'"):
        return None
    return client.get_registered_model("promo").aliases.get("champion")


@pytest.mark.slow
def test_promotion_accepted_writes_modelfile_and_moves_the_alias(schema_study, capsys):
    folder, config = schema_study
    assert promote_cli(folder, config, "--policy", "trial", "--trial", "0") == 0
    out = capsys.readouterr().out
    assert "promoted trial 0 of 'promo' as 'promo' version 1" in out
    # the real model, greedy: the 8 requests replayed through the files answer exactly as the trial's settings did
    assert "bundle check: 8 held-out requests replayed through the written bundle, 8 answered identically" in out
    study = optuna.load_study(study_name="promo", storage=f"sqlite:///{folder}/optuna.db")
    params = study.trials[0].params
    modelfile = parse((folder / "out" / "Modelfile").read_text())
    assert modelfile.parameters == {"num_ctx": 1024, "num_predict": params["num_predict"], "temperature": 0.0,
                                    "top_p": 1.0, "top_k": 40, "seed": 7}
    assert modelfile.base.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert modelfile.system == (ROOT / "prompts/task_api/compact.txt").read_text().strip()
    assert [role for role, _ in modelfile.messages] == ["user", "assistant", "user", "assistant"]
    sidecar = json.loads((folder / "out" / "promotion.json").read_text())
    assert sidecar["pass_format"] is True and sidecar["format"] == "schema" and sidecar["schema"]["oneOf"]
    assert sidecar["source"] == {"study": "promo", "trial": 0, "storage": f"sqlite:///{folder}/optuna.db"}

    assert promote_cli(folder, config, "--policy", "trial", "--trial", "1") == 0
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    versions = sorted(client.search_model_versions("name='promo'"), key=lambda v: int(v.version))
    assert [int(v.version) for v in versions] == [1, 2]  # older versions stay
    assert client.get_registered_model("promo").aliases == {"champion": 2}
    assert versions[1].tags == {"source_study": "promo", "source_trial": "1"}
    run = client.get_run(versions[1].run_id)
    assert run.data.tags["promotion"] == "accepted" and run.data.tags["source_trial"] == "1"
    assert 0 <= run.data.metrics["holdout_schema_valid_rate"] <= 1 and run.data.params["holdout_requests"] == "40"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "modelfile")}
    assert names == {"modelfile/Modelfile", "modelfile/promotion.json"}
    assert "holdout_requests.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.data.tags["bundle_check"] == "passed" and run.data.metrics["bundle_check_identical"] == 8


@pytest.mark.slow
def test_a_bundle_without_its_format_is_refused_by_the_replay_on_the_real_model(schema_study, capsys, monkeypatch):
    from pipeline.promote import promotion

    folder, config = schema_study
    made = promotion.bundle_of
    monkeypatch.setattr(promotion, "bundle_of", lambda prepared, settings: (
        made(prepared, settings)[0], {**made(prepared, settings)[1], "format": "off", "pass_format": False}))
    assert promote_cli(folder, config, "--policy", "trial", "--trial", "0", output="unformatted") == 3
    captured = capsys.readouterr()
    assert "the written bundle does not reproduce the trial:" in captured.err
    assert "answers differ from the trial's, where decoding is deterministic" in captured.err
    # what was measured is printed before the refusal: dev against held-out, and the check
    assert "schema_valid_rate: dev" in captured.out and "bundle check: 8 held-out requests" in captured.out
    assert not (folder / "unformatted").exists()


@pytest.mark.slow
def test_promotion_refused_when_held_out_latency_breaks_the_sla(schema_study, capsys):
    folder, config = schema_study
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    before = len(client.search_model_versions("name='promo'")) if client.search_registered_models() else 0
    # the accepted test may have run first (same study, module fixture): absent, or the version it promoted last
    alias_before = champion(client)
    # an output folder of its own: the accepted test writes its bundle to "out"
    code = promote_cli(folder, config, "--policy", "trial", "--trial", "0", "--sla-p95-ms", "1", output="refused")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 2 and "refused: trial 0 of 'promo': held-out data breaks the SLA" in err[-1]
    after = len(client.search_model_versions("name='promo'")) if client.search_registered_models() else 0
    assert after == before
    assert champion(client) == alias_before
    # nothing written: no Modelfile, no sidecar, not even the folder
    assert not (folder / "refused").exists()
    # (the module's study may hold other refused promotions: the bundle-check test's)
    refused = [r for r in client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
               if r.data.tags.get("promotion") == "refused" and "SLA" in r.data.tags["refused_because"]]
    assert len(refused) == 1 and "latency_p95_ms <= 1" in refused[0].data.tags["refused_because"]
    assert not client.list_artifacts(refused[0].info.run_id, "modelfile")  # and no bundle logged to the run


def test_refused_on_evidence_only_and_a_fall_from_dev_refuses_nothing():
    policy = PromotionPolicy("knee", margin=0.05)
    held = {"field_accuracy": 0.40, "latency_p95_ms": 900.0, "latency_p95_ms_ci95_low": 820.0,
            "latency_p95_ms_ci95_high": 980.0}
    # far below its dev value (0.65, the best of a study's noisy estimates): reported, never a refusal
    assert decide(policy, (), "field_accuracy", held) is None
    assert "winner's curse" in fall_note("field_accuracy", {"field_accuracy": 0.65}, held)
    assert fall_note("field_accuracy", {"field_accuracy": 0.35}, held) is None

    def gain(change, low, high):
        return Gain("field_accuracy", "difference", 0.5, 0.5 + change, change, low, high)

    # less accurate than the baseline beyond the margin with the whole paired interval: refused
    reason = decide(policy, (), "field_accuracy", held, gains=[gain(-0.2, -0.3, -0.1)])
    assert reason.startswith("held-out field_accuracy is below the baseline's") and "-0.200 [-0.300, -0.100]" in reason
    # an interval that reaches back within the margin is no evidence: accepted
    assert decide(policy, (), "field_accuracy", held, gains=[gain(-0.2, -0.35, -0.04)]) is None
    # a limit is broken only when the held-out interval lies wholly past it
    assert decide(policy, (Constraint("latency_p95_ms", max=850.0),), "field_accuracy", held) is None
    reason = decide(policy, (Constraint("latency_p95_ms", max=800.0),), "field_accuracy", held)
    assert reason == "held-out data breaks the SLA latency_p95_ms <= 800: 900 (95% interval [820, 980])"
    assert "latency_p95_ms <= 700" in decide(PromotionPolicy("sla", sla_p95_ms=700.0), (), "field_accuracy", held)
    # a throughput limit is judged on the held-out span's throughput; one not measured there is named, not judged
    rate = (Constraint("throughput_rps", min=2.0),)
    assert decide(policy, rate, "field_accuracy", {**held, "throughput_rps": 1.2}).startswith(
        "held-out data breaks the SLA throughput_rps >= 2")
    assert decide(policy, rate, "field_accuracy", {**held, "throughput_rps": 2.5}) is None
    assert decide(policy, rate, "field_accuracy", held) is None
    assert unjudged(policy, rate, held) == ["throughput_rps"]


def test_a_false_hit_limit_must_be_shown_met_by_the_held_out_interval():
    policy, limit = PromotionPolicy("accuracy"), (Constraint("false_hit_rate", max=0.01),)
    held = {"field_accuracy": 0.6}
    # no false hit among 80 held-out requests is no evidence of at most 1%: the interval's upper end is 4.6%
    shown = {**held, "false_hit_rate": 0.0, "false_hit_rate_ci95_low": 0.0, "false_hit_rate_ci95_high": 0.046}
    assert decide(policy, limit, "field_accuracy", shown) == (
        "held-out data does not show false_hit_rate <= 0.01: 0 (95% interval [0, 0.046]); about 381 held-out "
        "requests without one would show it")
    assert decide(policy, limit, "field_accuracy", {**shown, "false_hit_rate_ci95_high": 0.0076}) is None
    # an exact cache cannot serve another request's answer ([0, 0]); a setting without a cache serves none
    assert decide(policy, limit, "field_accuracy", {**shown, "false_hit_rate_ci95_high": 0.0}) is None
    assert decide(policy, limit, "field_accuracy", held) is None and unjudged(policy, limit, held) == []
    assert limit[0].reading(held) == 0.0 and limit[0].reading(shown) == 0.046
    # a limit on any other metric is read at its value
    assert Constraint("latency_p95_ms", max=1.0).reading({"latency_p95_ms": 2.0, "latency_p95_ms_ci95_high": 3.0}) == 2


@pytest.mark.slow
def test_promotion_to_an_ollama_server_creates_the_model_and_replays_requests_through_it(engine, tmp_path,
                                                                                         write_config):
    with OllamaDouble(engine=engine) as server:
        config = write_config(smoke_config(
            study={"name": "promo"}, engine={"backend": "ollama", "ollama_model": "tuned", "host": server.url},
            search_space={"format": "schema", "few_shot": 2, "prompt_variant": "compact", "num_predict": 64}))
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        assert main(["study", "--config", str(config), "--trials", "1", "--tracking-uri", uri]) == 0
        assert main(["promote", "promo", "--config", str(config), "--tracking-uri", uri, "--repetitions", "1",
                     "--ollama-name", "tuned-tuned", "--output", str(tmp_path / "out")]) == 0
        creates = [r["body"] for r in server.requests if r["path"] == "/api/create"]
        assert len(creates) == 1 and creates[0]["model"] == "tuned-tuned" and creates[0]["from"] == "tuned"
        assert creates[0]["parameters"]["num_predict"] == 64 and len(creates[0]["messages"]) == 4
        # the bundle check: held-out requests asked of the created model, with only what a client sends
        replayed = [r["body"] for r in server.requests if r["path"] == "/api/chat"
                    and r["body"].get("model") == "tuned-tuned"]
        assert len(replayed) == 8 and all(b["format"]["oneOf"] for b in replayed)
        assert all([m["role"] for m in b["messages"]] == ["user"] for b in replayed)
    assert parse((tmp_path / "out" / "Modelfile").read_text()).base == "tuned"
