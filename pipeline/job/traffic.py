"""A job's traffic: the requests a server sees, in arrival order, as a file (``traffic`` in the manifest).

Where a job has traffic (and the study's config does not say ``evaluation.traffic: false``), a trial is measured
over it instead of over its dataset split, so that repeats and near-repeats reach the server as they would in
production. Each line of the JSON Lines file is one of:

- ``{"repeat": "t037"}``: the dataset's request ``t037`` again (its split, fields and expected answer);
- a new labelled request, written as a dataset line: ``{"id", "split", "expected", ...}`` plus the input
  template's fields (a paraphrase, or a request that looks alike but needs another answer, with its own answer);
- ``{"sample": {"count": 40, "seed": 1, "split": "dev", "weights": {"list_tasks": 4, "t037": 1}}}``: ``count``
  requests drawn reproducibly (``seed``) by weight over labels (a request of that label and split, from the
  dataset and the traffic's new requests) and ids (that request again).

A new request arrives where it is written; repeats and samples may name new requests written anywhere in the file.

Blank lines and ``#`` comments are skipped. A request's place in the traffic is its identity in a trial: the
second occurrence of ``t037`` is ``t037#2``, so paired comparisons pair the same position of the traffic.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path as FilePath
from typing import Any, Protocol, TypeVar

from pipeline.errors import DataError, did_you_mean
from pipeline.job.files import jsonl_objects, shown


class Request(Protocol):
    """What the traffic reads of a labelled request (``pipeline.job.experiment.Example``, a dataclass)."""

    id: str
    split: str
    label: str | None


Example = TypeVar("Example", bound=Request)

__all__ = ["read_traffic"]

_SHAPE = ('{"repeat": "<dataset id>"}, a new labelled request written as a dataset line, or {"sample": {"count", '
          '"seed", "split", "weights"}}')
_SAMPLE_KEYS = ("count", "seed", "split", "weights")


def read_traffic(examples: Sequence[Example], path: FilePath, new_example: Callable[[dict[str, Any], str], Example],
                 *, labelled: bool) -> dict[str, list[Example]]:
    """The traffic of each split, in arrival order (see the module docstring).

    ``examples`` are the dataset's requests; ``new_example(item, where)`` turns a new labelled request into one
    as the dataset does; ``labelled``: the job has a label (a sample may weigh labels).

    Raises:
        DataError: a line that is none of the three shapes, an unknown id or label, a new request whose id is
            taken, a bad sample; ``file:line`` and the fix.
    """
    known: dict[str, Example] = {e.id: e for e in examples}
    by_label: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for example in examples:
        if example.label is not None:
            by_label[(example.split, example.label)].append(example)
    traffic: dict[str, list[Example]] = defaultdict(list)
    seen: dict[str, int] = defaultdict(int)

    def arrive(example: Example) -> None:
        seen[example.id] += 1
        n = seen[example.id]
        traffic[example.split].append(example if n == 1 else replace(example, id=f"{example.id}#{n}"))

    # First the new requests, wherever they are written, so that a repeat or a sample may name any of them; then
    # the arrivals, in the file's order.
    items = list(jsonl_objects(path, _SHAPE))
    if not items:
        raise DataError(f"{path}: no requests; add one JSON object per line ({_SHAPE})")
    for where, item in items:
        if "repeat" not in item and "sample" not in item:
            if isinstance(item.get("id"), str) and item["id"] in known:
                raise DataError(f"{where}: id {item['id']!r} is taken (by the dataset or another traffic line); "
                                f'repeat it with {{"repeat": "{item["id"]}"}} or give the new request its own id')
            example = new_example(item, where)
            known[example.id] = example
            if example.label is not None:
                by_label[(example.split, example.label)].append(example)
    for where, item in items:
        if "repeat" in item:
            arrive(_known(item, where, known))
        elif "sample" in item:
            for example in _sample(item, where, known, by_label, labelled):
                arrive(example)
        else:
            arrive(known[item["id"]])
    return dict(traffic)


def _known(item: dict[str, Any], where: str, known: dict[str, Example]) -> Example:
    extra = [k for k in item if k != "repeat"]
    if extra:
        raise DataError(f"{where}: a repeat line holds only 'repeat', not {', '.join(map(repr, extra))}")
    name = item["repeat"]
    if not isinstance(name, str) or name not in known:
        raise DataError(f"{where}: repeat {shown(name)} names no request of the dataset or the traffic."
                        f"{did_you_mean(str(name), known)} Use an id from the dataset")
    return known[name]


def _sample(item: dict[str, Any], where: str, known: dict[str, Example],
            by_label: dict[tuple[str, str], list[Example]], labelled: bool) -> list[Example]:
    spec = item["sample"]
    if len(item) > 1 or not isinstance(spec, dict):
        raise DataError(f"{where}: a sample line is {{\"sample\": {{...}}}} with {', '.join(_SAMPLE_KEYS)}")
    unknown = [k for k in spec if k not in _SAMPLE_KEYS]
    if unknown:
        raise DataError(f"{where}: sample takes no {unknown[0]!r}.{did_you_mean(str(unknown[0]), _SAMPLE_KEYS)} "
                        f"It takes: {', '.join(_SAMPLE_KEYS)}")
    count, seed, split = spec.get("count"), spec.get("seed", 0), spec.get("split", "dev")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DataError(f"{where}: sample.count must be a whole number of requests, 1 or more, got {shown(count)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{where}: sample.seed must be a whole number, got {shown(seed)}")
    if split not in ("dev", "holdout"):
        raise DataError(f"{where}: sample.split {shown(split)} must be one of dev, holdout")
    weights = spec.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise DataError(f"{where}: sample.weights must map labels or ids to weights, e.g. {{\"list_tasks\": 4}}")
    pools: list[list[Example]] = []
    for key, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise DataError(f"{where}: sample.weights.{key} must be a number greater than 0, got {shown(weight)}")
        if (split, key) in by_label:
            pools.append(by_label[(split, key)])
        elif key in known and known[key].split == split:
            pools.append([known[key]])
        else:
            names = sorted({label for s, label in by_label if s == split} | {i for i, e in known.items()
                                                                             if e.split == split})
            raise DataError(f"{where}: sample.weights names {key!r}, which is no label or id of split {split!r}."
                            f"{did_you_mean(str(key), names)}"
                            + ("" if labelled else " The experiment has no label: name ids"))
    rng = random.Random(seed)
    chosen = rng.choices(pools, weights=list(weights.values()), k=count)
    return [rng.choice(pool) for pool in chosen]
