"""Request records as tables, for the MLflow artifacts of a trial or a promotion.

``requests.json``: one row per request (request, expected, raw answer, scores, the fields right by what else the
expected answer accepts and how, timings, and whether the response cache served it).
``field_errors.json``: the fields answered wrong, counted by path, expected and got value.
``side_by_side.json``: two settings' requests in the order they were measured, interleaved.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import Any

import pandas as pd

from pipeline.job.experiment import Example
from pipeline.job.pointers import MISSING
from pipeline.job.scoring import Scorer
from pipeline.measure.records import RequestRecord
from pipeline.measure.sidebyside import SideBySide

__all__ = ["field_errors", "records_from_rows", "requests_frame", "side_by_side_frame"]

_TIMINGS = ("latency_ms", "ttft_ms", "prefill_ms", "decode_ms", "decode_tokens", "prompt_tokens_estimated",
            "prompt_tokens_engine", "prompt_tokens_evaluated", "output_tokens", "truncated", "failed", "server_ms",
            "overhead_ms", "input_truncated", "thinking_ttft_ms", "thinking_ms", "thinking_tokens", "cache",
            "cache_ms")


def requests_frame(records: list[RequestRecord]) -> pd.DataFrame:
    """One row per request; the field-by-field verdicts are summed up in ``wrong_fields``, and the fields right
    by an alternative, a left-out optional field or a default in ``accepted`` (``/unit (alternative 1)``)."""
    rows = []
    for r in records:
        score = {k: v for k, v in asdict(r.score).items() if k != "fields"}
        row = {"request_id": r.request_id, "request": r.request, "expected": json.dumps(r.expected), "answer": r.answer,
               **score, "wrong_fields": ", ".join(f.path for f in r.score.fields if not f.correct),
               "accepted": ", ".join(f"{f.path} ({f.matched})" for f in r.score.fields if f.correct and f.matched)}
        row.update({k: getattr(r, k) for k in _TIMINGS})
        rows.append(row)
    return pd.DataFrame(rows)


def records_from_rows(rows: pd.DataFrame, examples: dict[str, Example], scorer: Scorer) -> list[RequestRecord]:
    """Request records back from their rows (``requests.json``, or a benchmark's grid), in the rows' order.

    Each answer is scored again with ``scorer`` (a score is a function of the answer and the expected one), so the
    records carry their field-by-field verdicts, which the rows only sum up.

    Raises:
        KeyError: a row's request is not among ``examples`` (the message names it).
    """
    records = []
    for row in rows.to_dict(orient="records"):
        example = examples.get(str(row["request_id"]))
        if example is None:
            raise KeyError(f"request {row['request_id']!r} is not in the experiment's dataset")
        answer = "" if _missing(row.get("answer")) else str(row["answer"])
        failed = bool(row.get("failed", False))
        score = (scorer.unanswered(example.expected, "request failed") if failed
                 else scorer.score(answer, example.expected, example.schema, example.accepts))
        timings = {k: (None if _missing(row.get(k)) else row[k]) for k in _TIMINGS if k != "overhead_ms"}
        for key in ("decode_tokens", "prompt_tokens_engine", "prompt_tokens_evaluated", "thinking_tokens"):
            timings[key] = None if timings[key] is None else int(timings[key])
        for key, default in (("prompt_tokens_estimated", 0), ("output_tokens", 0), ("truncated", False),
                             ("input_truncated", False), ("cache", "")):
            timings[key] = type(default)(timings[key] if timings[key] is not None else default)
        timings["failed"] = failed
        latency = timings.pop("latency_ms")
        records.append(RequestRecord(request_id=example.id, request=example.request, expected=example.expected,
                                     answer=answer, score=score,
                                     latency_ms=float("nan") if latency is None else float(latency), **timings))
    return records


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value))


def field_errors(records: list[RequestRecord]) -> pd.DataFrame:
    """The wrong fields of the records, counted: path, expected and got (JSON text, or ``(missing)``), count;
    most frequent first."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for record in records:
        for f in record.score.fields:
            if not f.correct:
                counts[f.path, _json_text(f.expected), _json_text(f.got)] += 1
    rows = [{"path": p, "expected": e, "got": g, "count": c} for (p, e, g), c in counts.items()]
    frame = pd.DataFrame(rows, columns=["path", "expected", "got", "count"])
    return frame.sort_values(["count", "path"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _json_text(value: Any) -> str:
    return "(missing)" if value is MISSING else json.dumps(value, ensure_ascii=False)


def side_by_side_frame(side: SideBySide) -> pd.DataFrame:
    """Every request both arms measured, in measuring order: step, request position, arm, then as
    :func:`requests_frame`."""
    frames = {name: requests_frame(outcome.records) for name, outcome in side.outcomes.items()}
    seen: dict[str, int] = {}
    rows = []
    for step, (position, name) in enumerate(side.order):
        index = seen.get(name, 0)
        seen[name] = index + 1
        rows.append({"step": step, "position": position, "arm": name, **frames[name].iloc[index].to_dict()})
    return pd.DataFrame(rows)
