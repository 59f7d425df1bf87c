"""Promotion policies: the registry (did-you-mean), the roles each reads from the metric registry, the ``accuracy``
and ``latency`` policies on paired evidence, and the menu of what each policy would promote."""

from __future__ import annotations

import optuna
import pytest

from pipeline.commands.cli import main
from pipeline.errors import ConfigError
from pipeline.job.scoring import AnswerScore
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Objective
from pipeline.promote.choose import choose_trial, menu
from pipeline.promote.policies import REGISTRY, policy_named
from pipeline.promote.promotion import PromotionPolicy
from pipeline.search.snapshot import StudySnapshot
from pipeline.search.trials import BASELINE
from tests.conftest import ROOT

OBJECTIVES = (Objective("field_accuracy", "maximize"), Objective("latency_p95_ms", "minimize"))
REQUESTS = 40


def records(rights: list[float], ms: float) -> list[RequestRecord]:
    return [RequestRecord(f"r{i}", f"request {i}", {}, "{}", AnswerScore(True, True, right == 1.0, right, None),
                          ms + i % 5) for i, right in enumerate(rights)]


def snapshot(points: dict[int, tuple[list[float], float]], *, baseline: int | None = None,
             paired: bool = True) -> StudySnapshot:
    """A study of the given trials (per-request field accuracies, latency), each on the front unless dominated."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    kept = {}
    for number, (rights, ms) in sorted(points.items()):
        trial = study.ask()
        kept[trial.number] = records(rights, ms)
        accuracy, p95 = sum(rights) / len(rights), ms + 4
        trial.set_user_attr("metrics", {"field_accuracy": accuracy, "latency_p95_ms": p95})
        if number == baseline:
            trial.set_user_attr(BASELINE, True)
        study.tell(trial, [accuracy, p95])
    return StudySnapshot.of(study, (lambda t: kept[t.number]) if paired else None)


# the same 40 requests: A answers 30 right; B the same 30 but one (a tie within any margin); C 18 of them
A = [1.0] * 30 + [0.0] * 10
B = [1.0] * 29 + [0.0] * 11
C = [1.0] * 18 + [0.0] * 22


def test_an_unknown_policy_is_refused_with_the_closest_name(capsys):
    with pytest.raises(ConfigError, match="unknown promotion policy 'acuracy': did you mean 'accuracy'"):
        policy_named("acuracy")
    with pytest.raises(SystemExit) as exit_:
        main(["promote", "smoke", "--config", str(ROOT / "configs/smoke.yaml"), "--policy", "lattency"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "did you mean 'latency'" in err
    assert list(REGISTRY) == ["accuracy", "latency", "sla", "knee", "trial"]
    assert all(p.sentence and p.name == name for name, p in REGISTRY.items())


def test_accuracy_takes_the_faster_of_two_points_tied_on_accuracy():
    study = snapshot({0: (A, 900.0), 1: (B, 500.0), 2: (C, 200.0)})
    choice = choose_trial(study, OBJECTIVES, PromotionPolicy("accuracy", margin=0.05))
    assert choice.trial.number == 1  # 1 of 40 requests behind: within the margin, and faster
    assert "trial 0 is the most accurate front point" in choice.why and "paired on 40 shared requests" in choice.why
    # with no margin at all the most accurate point stands
    assert choose_trial(study, OBJECTIVES, PromotionPolicy("accuracy", margin=0.0)).trial.number == 0


def test_accuracy_takes_the_more_accurate_point_when_the_difference_is_decided():
    study = snapshot({0: (A, 900.0), 2: (C, 200.0)})
    choice = choose_trial(study, OBJECTIVES, PromotionPolicy("accuracy", margin=0.05))
    assert choice.trial.number == 0 and "no faster point is within --margin 0.05" in choice.why


def test_latency_never_takes_a_point_less_accurate_than_the_baseline_beyond_the_margin():
    # the baseline answers like A; C is fastest but 0.3 behind it; B is within the margin
    study = snapshot({0: (A, 950.0), 1: (B, 500.0), 2: (C, 200.0)}, baseline=0)
    choice = choose_trial(study, OBJECTIVES, PromotionPolicy("latency", margin=0.05))
    assert choice.trial.number == 1 and "not below the baseline (trial 0)" in choice.why
    assert choose_trial(study, OBJECTIVES, PromotionPolicy("latency", margin=0.5)).trial.number == 2
    with pytest.raises(ConfigError, match="--policy latency needs the study to have measured a baseline"):
        choose_trial(snapshot({0: (A, 950.0)}), OBJECTIVES, PromotionPolicy("latency"))


def test_a_study_that_maximises_throughput_has_no_accuracy_to_choose_by():
    objectives = (Objective("throughput_rps", "maximize"), Objective("latency_p95_ms", "minimize"))
    study = snapshot({0: (A, 900.0)})
    with pytest.raises(ConfigError, match="--policy accuracy needs an accuracy .* among the study's objectives "
                                          "\\(throughput_rps, latency_p95_ms\\)"):
        choose_trial(study, objectives, PromotionPolicy("accuracy"))
    assert REGISTRY["knee"].needs == () and REGISTRY["accuracy"].needs == ("accuracy", "latency")


def test_without_records_the_choice_says_it_compared_intervals():
    study = snapshot({0: (A, 900.0), 1: (B, 500.0)}, paired=False)
    choice = choose_trial(study, OBJECTIVES, PromotionPolicy("accuracy", margin=0.05))
    assert choice.trial.number == 1 and "unpaired" in choice.why


def test_the_menu_shows_what_each_policy_would_promote_against_the_chosen_point():
    study = snapshot({0: (A, 900.0), 1: (B, 500.0), 2: (C, 200.0), 3: (C, 960.0)}, baseline=3)
    policy = PromotionPolicy("accuracy", margin=0.05)
    chosen = choose_trial(study, OBJECTIVES, policy).trial
    rows = {row.policy: row for row in menu(study, OBJECTIVES, policy, chosen)}
    assert set(rows) == {"accuracy", "latency", "knee"}  # sla only with a limit; trial never
    assert rows["accuracy"].trial.number == 1 and rows["accuracy"].accuracy is None
    other = rows["latency"]  # as fast as can be without falling below the baseline (C): trial 2
    assert other.trial.number == 2 and other.accuracy.paired and other.accuracy.estimate == pytest.approx(-11 / 40)
    assert other.latency.estimate < 0  # faster than the promoted point
    sla = menu(study, OBJECTIVES, PromotionPolicy("accuracy", margin=0.05, sla_p95_ms=100.0), chosen)
    assert next(r for r in sla if r.policy == "sla").unavailable.startswith("no front trial has latency_p95_ms <= 100")
