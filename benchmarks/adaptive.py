"""Adaptive evaluation against fixed-size trials, replayed on the full-split grid.

``python -m benchmarks adaptive`` replays studies against ``benchmarks/data/grid_full.csv`` (every setting of the
grid on all 60 dev requests). Each seed shuffles the split once: every trial of that replay takes its requests in
that order, as every trial of a real study takes the same requests. A trial looks its requests up instead of
running the model and goes through the study's own code: ``reuse.reuse_measurement`` (with racing's resuming),
``racing.Racer`` after each stage, ``runner.abort_reason``, ``topup`` for refinement and resumed trials,
``objectives.trial_values``, and ``promote.choose_trial`` for the promoted point.

The truth is each setting's metrics over all 60 requests. A replay's **share** after ``b`` requests is the
hypervolume of the *true* values of the settings on the replay's own front at that point (what its user would pick
from), over the true front's, on the true front's normalised reference (as ``pipeline compare`` measures).

Variants: fixed trials of 20 requests (the default study), racing as shipped (4, 8, 12, 16 of 20 at error rate
0.2), at error rate 0.05, every 2 requests, with trials of 30 requests, and with a quarter of the budget kept for
refinement at the end. Reported per objective pair: the mean share at request budgets of 10%, 15% and 25% of the
grid measured with fixed trials (300, 440 and 720 requests), the requests each variant needs to reach that mean
share (and the saving), how often the promoted point (knee and SLA policies) is the true best point or tied with
it at equal budgets, and how many new trials each variant ran, how many racing stopped and their mean requests.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from benchmarks.common import (
    GRID_DATA,
    GRID_FULL_CONFIG,
    GRID_FULL_DATA,
    ROOT,
    load,
    read_grid,
    run_real_study,
    searched,
    write_result,
)
from benchmarks.replay import Scale, Table, on_front
from pipeline.errors import InputError
from pipeline.measure.racing import Racer, bound_metrics, bounds_of, ties
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Objective
from pipeline.measure.runner import TrialOutcome, abort_reason
from pipeline.promote.choose import choose_trial, knee_index
from pipeline.promote.promotion import PromotionPolicy
from pipeline.search.compare import to_minimization
from pipeline.search.config import StudyConfig, load_config
from pipeline.search.finals import Finalists, Finals
from pipeline.search.fronts import SETTINGS, front_trials
from pipeline.search.objectives import trial_values
from pipeline.search.prepare import racing_stages
from pipeline.search.reuse import REUSE_LIMIT, reuse_measurement
from pipeline.search.samplers import make_sampler
from pipeline.search.snapshot import StudySnapshot
from pipeline.search.space import suggest
from pipeline.search.topup import TOP_UP_REQUESTS, combined, next_top_up, resumable, top_up_source
from pipeline.search.trials import METRICS, RACED, REUSED, TOPS_UP

SIZE = 20                       # requests of a fixed-size trial: the default study's limit
BUDGETS = (0.10, 0.15, 0.25)    # shares of the grid measured with fixed trials
REFINE_SHARE = 0.25             # of a refining variant's budget, kept for the end


@dataclass(frozen=True)
class Variant:
    name: str
    stages: tuple[int, ...] = ()
    alpha: float = 0.2          # racing's error rate
    refine: bool = False
    size: int = SIZE            # requests of a trial that runs them all


VARIANTS = (
    Variant("fixed 20 requests"),
    Variant("racing at 4, 8, 12, 16 (error rate 0.2)", (4, 8, 12, 16)),
    Variant("racing at 4, 8, 12, 16, error rate 0.05", (4, 8, 12, 16), 0.05),
    Variant("racing at 2, 4, ..., 18", tuple(range(2, 20, 2))),
    Variant("racing, trials of 30 requests", (4, 8, 12, 16, 20, 24), size=30),
    Variant("racing at 4, 8, 12, 16 + refinement", (4, 8, 12, 16), refine=True),
)
REFINED_BUDGETS = (0.15, 0.25)  # the budgets a refining variant is replayed at (each is a replay of its own)


class Replayed:
    """One replayed study on one seed's request order, spending up to ``budget`` requests."""

    def __init__(self, table: Table, config: StudyConfig, variant: Variant, order: np.ndarray, seed: int) -> None:
        self.table, self.variant, self.order = table, variant, order
        self.config = replace(config, study=replace(config.study, seed=seed),
                              evaluation=replace(config.evaluation, stages=variant.stages,
                                                 racing_error_rate=variant.alpha))
        self.study = optuna.create_study(directions=[o.direction for o in config.objectives],
                                         sampler=make_sampler(self.config.study.sampler, seed=self.config.study.seed))
        self.records: dict[int, list[RequestRecord]] = {}
        self.spent = 0
        self.checkpoints: list[tuple[int, frozenset]] = []

    def run(self, budget: int, *, at: tuple[int, ...] = (), on_budget=lambda spent, study: None) -> None:
        explore = budget * (1 - REFINE_SHARE) if self.variant.refine else budget
        marks = sorted(at)
        reused = 0
        while self.spent < explore and reused < REUSE_LIMIT:
            trial = self.study.ask()
            settings = suggest(trial, self.config.search_space, seed=self.config.study.seed)
            if reuse_measurement(self.study, trial, resume=lambda t: resumable(
                    self.study, t, self.config.objectives, lambda f: self.records[f.number],
                    self.config.evaluation.racing_error_rate, seed=self.config.study.seed)):
                reused += 1
                continue
            reused = 0
            while marks and self.spent + self.variant.size > marks[0] >= self.spent:
                on_budget(marks.pop(0), self.study)
            self._measure(trial, settings.as_params())
        while self.variant.refine and (choice := next_top_up(self.study, self.config.objectives,
                                                             budget=budget - self.spent, most=len(self.order))):
            self.study.enqueue_trial(choice.trial.params, user_attrs={TOPS_UP: choice.trial.number,
                                                                      TOP_UP_REQUESTS: choice.requests})
            trial = self.study.ask()
            settings = suggest(trial, self.config.search_space, seed=self.config.study.seed)
            if not self._measure(trial, settings.as_params()):
                break
        for mark in marks:
            on_budget(mark, self.study)

    def _measure(self, trial: optuna.Trial, params: dict[str, Any]) -> int:
        """As the study's ``evaluate``: a new setting (racing, early abort) or a top-up; returns requests run."""
        config = self.config
        every = self.table.records[self.table.key(params)]
        ordered = [every[i] for i in self.order]
        source = top_up_source(self.study, trial)
        if source is None:
            racer = Racer([(t.number, self.records[t.number]) for t in front_trials(self.study)],
                          config.objectives, config.evaluation.racing_error_rate, config.evaluation.stages,
                          seed=config.study.seed) if config.evaluation.stages else None
            outcome = TrialOutcome()
            size = self.variant.size
            for record in ordered[:size]:
                outcome.records.append(record)
                outcome.aborted = abort_reason(outcome.records, size, config.constraints)
                outcome.raced = racer.check(outcome.records, size) if racer and not outcome.aborted else None
                if outcome.aborted or outcome.raced:
                    break
            ran = len(outcome.records)
        else:
            trial.set_user_attr(TOPS_UP, source.number)
            before = self.records[source.number]
            wanted = trial.user_attrs.get(TOP_UP_REQUESTS) or self.variant.size - len(before)
            seen = {r.request_id for r in before}
            added = TrialOutcome(records=[r for r in ordered if r.request_id not in seen][:wanted])
            outcome, ran = combined(before, source.user_attrs[METRICS], added), len(added.records)
        values = trial_values(trial, outcome, config)
        trial.set_user_attr(METRICS, {**trial.user_attrs[METRICS], "requests_run": float(ran)})
        self.study.tell(trial, values)
        self.records[trial.number] = outcome.records
        self.spent += ran
        self.checkpoints.append((self.spent, frozenset(self.table.key(t.params)
                                                       for t in front_trials(self.study))))
        return ran

    def finals(self, choose, budget: int, decide_on=None) -> Finals:
        """The finals as a study holds them (``finals.finals_of``): top-ups of the choice and its tied rivals until
        decided (on ``decide_on``, default: every objective), the split used up or ``budget`` more requests
        spent."""
        config, start = self.config, self.spent
        state = Finalists(self.study, decide_on or config.objectives, choose, lambda t: self.records[t.number],
                          config.evaluation.error_rate, most=len(self.order), seed=config.study.seed)
        while True:
            now = state(budget - (self.spent - start))
            if now.top_up is None:
                return now
            self.study.enqueue_trial(now.top_up.trial.params, user_attrs={TOPS_UP: now.top_up.trial.number,
                                                                          TOP_UP_REQUESTS: now.top_up.requests})
            trial = self.study.ask()
            settings = suggest(trial, config.search_space, seed=config.study.seed)
            if not self._measure(trial, settings.as_params()):
                return now

    def front_at(self, budget: int) -> frozenset:
        """The settings on the replay's front after at most ``budget`` requests."""
        found: frozenset = frozenset()
        for spent, front in self.checkpoints:
            if spent > budget:
                break
            found = front
        return found


class Truth:
    """Every setting's values over the whole split, the true front, its hypervolume scale, and the true best
    point of each promotion policy."""

    def __init__(self, table: Table, alpha: float = 0.05) -> None:
        self.table, self.objectives = table, table.config.objectives
        self.scale = Scale(table)
        metrics = [o.metric for o in self.objectives]
        self.rows = {table.key(row): row for row in self.scale.truth.to_dict(orient="records")}
        self.bounds = {key: bounds_of({**self.rows[key], **bound_metrics(records, self.objectives, alpha)},
                                      self.objectives)
                       for key, records in table.records.items()}
        feasible = [key for key, row in self.rows.items() if row["feasible"]]
        points = to_minimization(np.array([[self.rows[k][m] for m in metrics] for k in feasible], float),
                                 self.objectives)
        kept = on_front(points)
        self.front_keys = [k for k, on in zip(feasible, kept) if on]
        self.knee = self.front_keys[knee_index(points[kept], points)]  # scaled over every feasible setting
        p95 = {k: self.rows[k]["latency_p95_ms"] for k in self.front_keys}
        self.sla = float(np.median(list(p95.values())))
        quality = next(o.metric for o in self.objectives if o.direction == "maximize")
        self.sla_best = max((k for k in self.front_keys if p95[k] <= self.sla),
                            key=lambda k: (self.rows[k][quality], -p95[k]))

    def share(self, keys: frozenset) -> float:
        chosen = [k for k in keys if self.rows[k]["feasible"]]
        if not chosen:
            return 0.0
        points = to_minimization(np.array([[self.rows[k][o.metric] for o in self.objectives] for k in chosen], float),
                                 self.objectives)
        return self.scale.hypervolume(points) / self.scale.true_hypervolume

    def hit(self, chosen: tuple, best: tuple) -> bool:
        """The chosen setting is the true best, or the whole split cannot tell them apart."""
        return chosen == best or bool(ties({0: self.bounds[chosen], 1: self.bounds[best]})[0])


def objective_sets(config: StudyConfig) -> dict[str, StudyConfig]:
    """The objective pairs of the search benchmark: validity (the earlier default) and correctness (the default)."""
    p95 = Objective("latency_p95_ms", "minimize")
    return {"schema-valid vs p95": replace(config, objectives=(Objective("schema_valid_rate", "maximize"), p95)),
            "field accuracy vs p95 (default)": config}


def _choice(study: optuna.Study, config: StudyConfig, policy: PromotionPolicy, table: Table) -> tuple | None:
    try:
        return table.key(choose_trial(StudySnapshot.of(study), config.objectives, policy).trial.params)
    except InputError:
        return None


def real(*, trials: int, limit: int | None) -> dict[str, Any]:
    """The default study on the embedded engine twice with the same seed: fixed-size trials, then its evaluation as
    shipped (racing, refinement, drift control as configured); wall time, requests sent, and both fronts."""
    from pipeline.search.compare import StudyFront, compare

    base = load_config(ROOT / "configs" / "task_api.yaml")
    if limit:
        base = base.with_overrides(evaluation={"limit": limit})
    shipped = base.evaluation
    arms = {"fixed": replace(shipped, stages=(), refine_requests=0, drift_every=0),
            "adaptive": replace(shipped, refine_requests=min(shipped.refine_requests, 2 * limit) if limit
                                else shipped.refine_requests)}
    studies, fronts = {}, []
    for name, evaluation in arms.items():
        config = replace(base, evaluation=evaluation, study=replace(base.study, name=f"adaptive_{name}"))
        with tempfile.TemporaryDirectory() as folder:
            report, wall, clock = run_real_study(config, trials=trials, folder=Path(folder))
            timed = _timed_requests(config.study.name, report.storage_url, Path(folder))
        frame = report.trials
        shown = [o.metric for o in config.objectives]
        bounds = [f"{m}{suffix}" for m in shown for suffix in ("_bound_low", "_bound_high") if f"{m}{suffix}" in frame]
        studies[name] = {
            "evaluation": {"stages": list(racing_stages(config, config.evaluation.limit or 60)),
                           "racing_error_rate": evaluation.racing_error_rate,
                           "refine_requests": evaluation.refine_requests,
                           "drift_every": evaluation.drift_every},
            "wall_s": wall, "engine_s": clock.total_ms() / 1000, "timed_requests": timed,
            "generate_calls": sum(1 for call, _ in clock.calls if call == "generate"),
            "requests_measured": int(frame["requests_measured"].sum()),
            "trials": len(frame), "raced": int((frame["raced"] != "").sum()),
            "topped_up": int(frame["tops_up"].notna().sum()),
            "front": report.front[["number", *[c for c in SETTINGS if c in report.front], *shown, *bounds,
                                   "requests_measured", "tied_with"]].to_dict(orient="records"),
        }
        fronts.append(StudyFront(name, config.objectives, frame, report.front, None))
    try:
        comparison = compare(fronts)
    except InputError:  # neither study has a feasible trial (a smoke-sized run)
        studies["coverage"] = {}
        return studies
    for row in comparison.summary.itertuples(index=False):
        studies[row.study]["hypervolume"] = float(row.hypervolume)
    studies["coverage"] = {a: {b: float(comparison.coverage.loc[a, b]) for b in comparison.coverage.columns
                               if a != b} for a in comparison.coverage.index}
    return studies


def _timed_requests(name: str, storage_url: str, folder: Path) -> int:
    """Timed requests a study sent: ``requests_run`` over its measured trials, superseded ones included."""
    cwd = os.getcwd()
    os.chdir(folder)  # the study's storage URL may be relative to where it ran
    try:
        study = optuna.load_study(study_name=name, storage=storage_url)
    finally:
        os.chdir(cwd)
    return int(sum(t.user_attrs.get(METRICS, {}).get("requests_run", 0)
                   for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                   if REUSED not in t.user_attrs))


@dataclass
class Pair:
    """One objective pair's replay context: its config, the table, the truth, the budgets."""

    label: str
    config: StudyConfig
    table: Table
    truth: Truth
    budgets: list[int]


_PAIRS: dict[str, Pair] = {}  # built before the worker processes fork, shared with them


def _replay_seed(task: tuple[str, int, tuple[Variant, ...]]) -> tuple[list[dict], list[dict], list[dict]]:
    """Every variant's replays on one seed's request order: shares at each step, promoted points at each budget,
    and what its new trials ran (racing replays up to the largest budget)."""
    label, seed, variants = task
    pair = _PAIRS[label]
    config, table, truth, budgets = pair.config, pair.table, pair.truth, pair.budgets
    size = len(next(iter(table.records.values())))
    order = np.random.default_rng(seed).permutation(size)
    steps = list(range(SIZE, max(budgets) + 1, SIZE))
    shares: list[dict] = []
    choices: list[dict] = []
    spending: list[dict] = []
    for variant in variants:
        # racing: one replay up to the largest budget, read at every step; refinement: a replay per budget and share
        # of it (its end depends on the budget), 60% for the saving, 100% for the promotion
        refined = [b for b, share in zip(budgets, BUDGETS) if share in REFINED_BUDGETS]
        runs = [(b, f) for b in refined for f in (0.6, 1.0)] if variant.refine else [(max(budgets), None)]
        for target, fraction in runs:
            picked: dict[int, dict[str, Any]] = {}

            def at_budget(spent: int, study: optuna.Study, picked: dict = picked) -> None:
                picked[spent] = {name: _choice(study, config, policy, table) for name, policy in (
                    ("knee", PromotionPolicy()), ("sla", PromotionPolicy(policy="sla", sla_p95_ms=truth.sla)))}

            replayed = Replayed(table, config, variant, order, seed)
            if fraction is None:
                replayed.run(target, at=tuple(budgets), on_budget=at_budget)
                points = [(step, step) for step in steps]
                new = [t for t in replayed.study.trials if t.state == optuna.trial.TrialState.COMPLETE
                       and REUSED not in t.user_attrs and TOPS_UP not in t.user_attrs]
                spending.append({"objectives": label, "variant": variant.name, "seed": seed, "trials": len(new),
                                 "raced": sum(RACED in t.user_attrs for t in new),
                                 "requests_per_trial": float(np.mean([t.user_attrs[METRICS]["requests_run"]
                                                                      for t in new]))})
            else:
                replayed.run(int(fraction * target))
                if fraction == 1.0:
                    at_budget(target, replayed.study)
                points = [(target, int(fraction * target))]
            for budget, spent in points:
                shares.append({"objectives": label, "variant": variant.name, "seed": seed, "budget": budget,
                               "spent": spent, "share": truth.share(replayed.front_at(spent))})
            for spent, chosen in picked.items():
                for policy, key in chosen.items():
                    best = truth.knee if policy == "knee" else truth.sla_best
                    choices.append({"objectives": label, "variant": variant.name, "seed": seed, "budget": spent,
                                    "policy": policy, "hit": key is not None and truth.hit(key, best),
                                    "exact": key == best})
    return shares, choices, spending


def run(*, out: Path, smoke: bool = False, seeds: int = 40, real_studies: bool = True,
        grid: Path = GRID_FULL_DATA) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = replace(load(GRID_FULL_CONFIG), evaluation=replace(load(GRID_FULL_CONFIG).evaluation, limit=SIZE))
    # smoke: the 20-request grid (complete whatever the state of the full one; nothing to top up with)
    grid = GRID_DATA if smoke else grid.resolve()
    rows_all = read_grid(grid)
    sets = objective_sets(base)
    per_setting = int(rows_all.groupby(searched(base)).size().min())
    # with no request beyond a trial's, refinement has nothing to add: racing only
    variants = VARIANTS if per_setting > SIZE else tuple(v for v in VARIANTS if not v.refine)
    if smoke:
        seeds, variants = 2, (VARIANTS[0], VARIANTS[-1])
        sets = dict(list(sets.items())[1:2])
    started = time.perf_counter()
    truths = {}
    for label, config in sets.items():
        table = Table(config, rows_all)
        truth = Truth(table)
        count = len(table.records)
        _PAIRS[label] = Pair(label, config, table, truth, [math.ceil(b * count) * SIZE for b in BUDGETS])
        truths[label] = {"front": [dict(zip(table.names, k)) for k in truth.front_keys], "grid": count,
                         "requests_per_setting": len(next(iter(table.records.values()))), "sla_p95_ms": truth.sla,
                         "knee": dict(zip(table.names, truth.knee)), "sla_best": dict(zip(table.names, truth.sla_best))}
    tasks = [(label, seed, variants) for label in sets for seed in range(seeds)]
    with multiprocessing.get_context("fork").Pool(1 if smoke else os.cpu_count()) as pool:
        done = pool.map(_replay_seed, tasks, chunksize=1)
    shares = [row for part, _, _ in done for row in part]
    choices = [row for _, part, _ in done for row in part]
    spending = (pd.DataFrame([row for _, _, part in done for row in part])
                .groupby(["objectives", "variant"], sort=False)[["trials", "raced", "requests_per_trial"]].mean()
                .reset_index())
    shares_frame, choices_frame = pd.DataFrame(shares), pd.DataFrame(choices)
    summary = _summary(shares_frame, sets, budgets_of=lambda label: [math.ceil(b * truths[label]["grid"]) * SIZE
                                                                     for b in BUDGETS])
    promoted = (choices_frame.groupby(["objectives", "variant", "budget", "policy"], sort=False)
                .agg(hit=("hit", "mean"), exact=("exact", "mean")).reset_index())
    replay_seconds = time.perf_counter() - started
    studies = (real(trials=2, limit=3) if smoke else real(trials=16, limit=None)) if real_studies else {}
    result = {"grid": str(grid.relative_to(ROOT)) if grid.is_relative_to(ROOT) else str(grid), "seeds": seeds,
              "trial_size": SIZE, "refine_share": REFINE_SHARE, "truth": truths,
              "summary": summary.to_dict(orient="records"), "promoted": promoted.to_dict(orient="records"),
              "spending": spending.to_dict(orient="records"), "real": studies, "replay_seconds": replay_seconds,
              "seconds": time.perf_counter() - started}
    report = _report(summary, promoted, spending, truths, seeds, result["grid"])
    if studies:
        report += "\n" + _real_report(studies)
    return write_result("adaptive", result, report, out)


def _real_report(studies: dict[str, Any]) -> str:
    lines = ["## Real studies (the default study, embedded engine, same seed)", "",
             "| | evaluation | wall s | timed requests | trials | raced | topped up | hypervolume |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("fixed", "adaptive"):
        s = studies[name]
        lines.append(f"| {name} | {s['evaluation']} | {s['wall_s']:.0f} | {s['timed_requests']} | {s['trials']} | "
                     f"{s['raced']} | {s['topped_up']} | {s.get('hypervolume', float('nan')):.3f} |")
    for name in ("fixed", "adaptive"):
        lines += ["", f"{name} front:", ""]
        for point in studies[name]["front"]:
            lines.append("- " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in point.items()))
    lines += ["", f"coverage: {studies['coverage']}"]
    return "\n".join(lines)


def _summary(shares: pd.DataFrame, sets: dict, *, budgets_of) -> pd.DataFrame:
    """Per objective pair and fixed budget: fixed trials' mean share, and per variant its mean share at that budget
    and the requests it needs to reach fixed trials' share (refinement: 60% of the budget, if that reaches it)."""
    rows = []
    for label in sets:
        curves = (shares[shares["objectives"] == label].groupby(["variant", "budget", "spent"], sort=False)["share"]
                  .mean().reset_index())
        fixed = curves[curves["variant"] == VARIANTS[0].name].set_index("spent")["share"]
        for budget in budgets_of(label):
            target = float(fixed.loc[budget])
            for variant, curve in curves.groupby("variant", sort=False):
                if variant == VARIANTS[0].name:
                    continue
                if (curve["budget"] != curve["spent"]).any():  # refinement
                    mine = curve[curve["budget"] == budget].set_index("spent")["share"]
                    if mine.empty:  # not replayed at this budget
                        continue
                    reached = float(mine.get(budget, float("nan")))
                    short = int(0.6 * budget)
                    needed = short if mine.get(short, -1.0) >= target else None
                else:
                    enough = curve[curve["share"] >= target]
                    needed = int(enough["spent"].min()) if not enough.empty else None
                    reached = float(curve.set_index("spent")["share"].get(budget, float("nan")))
                rows.append({"objectives": label, "budget": budget, "fixed_share": target, "variant": variant,
                             "share_at_budget": reached, "requests_needed": needed,
                             "saving": None if needed is None else 1 - needed / budget})
    return pd.DataFrame(rows)


def _report(summary: pd.DataFrame, promoted: pd.DataFrame, spending: pd.DataFrame, truths: dict, seeds: int,
            grid: str) -> str:
    lines = ["# Adaptive evaluation against fixed-size trials", "",
             f"Replayed on {grid}, {seeds} seeds. share: hypervolume of the true values of the settings "
             "on the replay's own front, over the true front's. needed: the fewest requests at which the variant's "
             "mean share reaches fixed trials' mean share at the budget (refinement: run with 60% of the budget, "
             "met or not).", ""]
    for label, part in summary.groupby("objectives", sort=False):
        info = truths[label]
        lines += [f"## {label}", "", f"True front: {len(info['front'])} of {info['grid']} settings; SLA for the sla "
                  f"policy: p95 <= {info['sla_p95_ms']:.0f} ms (the true front's median).", "",
                  "| budget (fixed) | fixed share | variant | share at budget | needed | saving |",
                  "|---|---|---|---|---|---|"]
        for row in part.itertuples(index=False):
            needed = "not reached" if row.requests_needed is None or pd.isna(row.requests_needed) \
                else f"{int(row.requests_needed)}"
            saving = "" if row.saving is None or pd.isna(row.saving) else f"{row.saving:.0%}"
            lines.append(f"| {row.budget} | {row.fixed_share:.3f} | {row.variant} | {row.share_at_budget:.3f} | "
                         f"{needed} | {saving} |")
        lines += ["", "| variant | budget | knee: true best or tied (exact) | sla: true best or tied (exact) |",
                  "|---|---|---|---|"]
        mine = promoted[promoted["objectives"] == label]
        for (variant, budget), group in mine.groupby(["variant", "budget"], sort=False):
            cells = {r.policy: f"{r.hit:.0%} ({r.exact:.0%})" for r in group.itertuples(index=False)}
            lines.append(f"| {variant} | {budget} | {cells.get('knee', '')} | {cells.get('sla', '')} |")
        lines += ["", "| variant | new trials (mean, to the largest budget) | raced | requests a new trial ran |",
                  "|---|---|---|---|"]
        for row in spending[spending["objectives"] == label].itertuples(index=False):
            lines.append(f"| {row.variant} | {row.trials:.1f} | {row.raced:.1f} | {row.requests_per_trial:.1f} |")
        lines.append("")
    return "\n".join(lines)
