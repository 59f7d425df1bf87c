"""Labelled sets that list alternatives: a function-calling set imported as a job (``pipeline import-calls``), a
study of the bundled model on it (its config as written, with a 2048-token context, 128 output tokens and
constrained decoding, so that every answer is a call), and every answer it gave scored twice — with what each
line accepts (alternatives, arguments that may be left out) and against one expected answer, as before
``accept`` existed.

``python -m benchmarks accepts --calls QUESTIONS --answers ANSWERS`` takes a public set in that format (the first
60 lines), e.g. BFCL v4 ``simple_python`` (``bfcl_eval/data/BFCL_v4_simple_python.json`` and
``possible_answer/BFCL_v4_simple_python.json`` of github.com/ShishirPatil/gorilla, Apache-2.0; not shipped here).
Without ``--calls`` it runs on ``benchmarks/data/calls_sample.jsonl``, a small set written for this project.
``--smoke``: the sample, 2 trials of 4 requests.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from benchmarks.common import ROOT, write_result
from pipeline.commands.cli import main as pipeline
from pipeline.job.experiment import load_experiment
from pipeline.job.scoring import Accepts
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.search.trials import RUN_ID
from pipeline.tracking.runs import run_table_reader

SAMPLE = ROOT / "benchmarks" / "data" / "calls_sample.jsonl"
LINES = 60
TRIALS = 8


def run(*, out: Path, smoke: bool = False, calls: Path | None = None, answers: Path | None = None) -> Path:
    source = calls or SAMPLE
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        head = root / "calls.jsonl"
        lines = [line for line in source.read_text().splitlines() if line.strip()][:LINES]
        head.write_text("\n".join(lines) + "\n")
        said = io.StringIO()
        argv = ["import-calls", str(head), "--name", "calls", "--root", str(root), "--few-shot", "2"]
        if answers is not None:
            argv += ["--answers", str(answers)]
        started = time.perf_counter()
        with contextlib.redirect_stdout(said):
            if pipeline(argv) != 0:
                raise SystemExit("import-calls failed")
        # as the job's config is written, but: the functions' descriptions make long prompts (a larger context),
        # and constrained decoding with room for a call, so that every answer is a call judged field by field
        path = root / "configs" / "calls.yaml"
        text = path.read_text()
        for old, new in (("num_ctx: 1024", "num_ctx: 2048"), ("num_predict: {choices: [32, 64]}", "num_predict: 128"),
                         ('format: {choices: ["off", schema]}', "format: schema")):
            assert old in text, old
            text = text.replace(old, new)
        path.write_text(text)
        # fixed-size trials of the config's 20 requests (4 in the smoke size), each answer to the end
        config = load_config(path).with_overrides(evaluation={**({"limit": 4} if smoke else {}), "stages": [],
                                                              "early_abort": False})
        os.chdir(root)
        prepared = prepare_study(config, tracking_uri=f"sqlite:///{root}/mlflow.db")
        try:
            report = run_study(prepared, trials=2 if smoke else TRIALS, console=Console(file=io.StringIO()))
        finally:
            prepared.backend.close()
        study_s = time.perf_counter() - started
        job = load_experiment(root / "experiments" / "calls")
        read = run_table_reader(prepared.tracking_uri, "requests.json")
        result = rescore(job, {int(row["number"]): read(row[RUN_ID])
                               for _, row in report.trials.iterrows()})
    result.update({"source": source.name, "lines": len(lines), "import": said.getvalue().splitlines()[-2],
                   "trials": len(report.trials), "study_s": round(study_s)})
    return write_result("accepts", result, _report(result), out)


def rescore(job, tables: dict[int, pd.DataFrame]) -> dict[str, Any]:
    """Every answer of every trial scored with its line's ``accept`` and without; per trial and pooled."""
    examples = {e.id: e for e in job.examples}
    pooled = Counter()
    kinds: Counter[str] = Counter()
    trials = []
    for number, rows in sorted(tables.items()):
        tally = Counter()
        for row in rows.to_dict(orient="records"):
            example = examples[str(row["request_id"])]
            answer = "" if not isinstance(row.get("answer"), str) else row["answer"]
            if row.get("failed"):
                continue
            now = job.scorer.score(answer, example.expected, example.schema, example.accepts)
            before = job.scorer.score(answer, example.expected, example.schema, Accepts())
            tally["answers"] += 1
            tally["exact"] += now.exact_match
            tally["exact_before"] += before.exact_match
            tally["fields"] += now.field_accuracy
            tally["fields_before"] += before.field_accuracy
            tally["flipped"] += now.exact_match and not before.exact_match
            kinds.update(re.sub(r" \d+$", "", f.matched) for f in now.fields if f.correct and f.matched)
        pooled.update(tally)
        n = max(tally["answers"], 1)
        trials.append({"trial": number, "answers": tally["answers"], "exact": tally["exact"] / n,
                       "exact_before": tally["exact_before"] / n, "fields": tally["fields"] / n,
                       "fields_before": tally["fields_before"] / n})
    n = max(pooled["answers"], 1)
    by_now = sorted(trials, key=lambda t: (-t["fields"], t["trial"]))
    by_before = sorted(trials, key=lambda t: (-t["fields_before"], t["trial"]))
    return {"answers": pooled["answers"], "exact": pooled["exact"] / n, "exact_before": pooled["exact_before"] / n,
            "fields": pooled["fields"] / n, "fields_before": pooled["fields_before"] / n,
            "flipped": pooled["flipped"], "accepted_fields": dict(kinds), "per_trial": trials,
            "best_trial": by_now[0]["trial"] if by_now else None,
            "best_trial_before": by_before[0]["trial"] if by_before else None}


def _report(r: dict[str, Any]) -> str:
    lines = [f"# Labelled sets with alternatives: {r['source']} ({r['lines']} lines)", "",
             f"Imported: {r['import']}", "",
             f"{r['trials']} trials of the bundled model, {r['answers']} answers (study {r['study_s']} s).", "",
             "| scored | exact match | field accuracy |", "| --- | --- | --- |",
             f"| with each line's accept | {r['exact']:.1%} | {r['fields']:.3f} |",
             f"| against one expected answer | {r['exact_before']:.1%} | {r['fields_before']:.3f} |", "",
             f"Answers right in every field only with accept: {r['flipped']}; fields right by "
             + (", ".join(f"{k} {v}" for k, v in sorted(r["accepted_fields"].items())) or "nothing else") + ".",
             f"Most accurate trial: {r['best_trial']} with accept, {r['best_trial_before']} against one answer.", "",
             "| trial | answers | exact (with / without) | fields (with / without) |", "| --- | --- | --- | --- |"]
    lines += [f"| {t['trial']} | {t['answers']} | {t['exact']:.1%} / {t['exact_before']:.1%} | "
              f"{t['fields']:.3f} / {t['fields_before']:.3f} |" for t in r["per_trial"]]
    return "\n".join(lines)
