"""The bundle check: held-out requests replayed through an engine configured only from the written bundle, and
compared with the same requests as the trial's settings answered them.

The bundle is read back from its files (:class:`WrittenBundle`): the Modelfile by Ollama's grammar
(:func:`pipeline.promote.modelfile.parse`: base, PARAMETERs, SYSTEM, MESSAGEs), the sidecar (``format``,
``think``, the schema, routed examples) and llama-server's launch command (context and server flags). On a server
that creates models (Ollama) the model is created from the parsed Modelfile and asked with only what the sidecar
says a client sends; elsewhere the engine is (re)started with the bundle's context and server flags and sent the
bundle's settings.

Two settings that are the same engine configuration answer alike, within what decoding lets vary
(:func:`compare`):

- decoding seen to be deterministic (every held-out request answered identically on each repetition, or, with
  one repetition, temperature 0) must give identical answers, request by request;
- otherwise the bundle's schema-valid rate and accuracy, paired request by request with the held-out answers,
  must differ by an amount whose 95% paired-bootstrap interval holds 0. One cut answer among a handful at
  temperature 0.7 stays inside it; a bundle that lost its format, its system prompt or its examples does not.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.engines.base import ManagedServer, Message, ModelPublisher, RequestFailed
from pipeline.engines.serving import server_of_launch
from pipeline.engines.settings import InferenceSettings
from pipeline.errors import PipelineError
from pipeline.job.experiment import Example
from pipeline.job.prompts import PromptLibrary, ShotExample
from pipeline.measure.intervals import ERROR_RATE, paired_gaps
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Objective, lookup
from pipeline.measure.runner import run_trial
from pipeline.promote.bundle import BundleFiles
from pipeline.promote.modelfile import Modelfile, parse
from pipeline.search.prepare import PreparedStudy
from pipeline.search.study import trial_plan

__all__ = ["BundleCheck", "BundleCheckFailed", "WrittenBundle", "check_bundle", "compare"]

# The variant name the bundle's own system prompt is rendered under.
_VARIANT = "bundle"


class BundleCheckFailed(PipelineError):
    """The written bundle could not be read back or served (promotion turns it into its refusal)."""


@dataclass(frozen=True)
class WrittenBundle:
    """A bundle as its files say it: what a user who only has the files would serve."""

    modelfile: Modelfile
    sidecar: dict[str, Any]
    launch: tuple[str, ...] | None = None   # llama-server's arguments after the binary, when the bundle has them

    @classmethod
    def read(cls, files: BundleFiles) -> WrittenBundle:
        """Read the files back.

        Raises:
            BundleCheckFailed: a file cannot be read or parsed.
        """
        try:
            modelfile = parse(files.modelfile.read_text(encoding="utf-8"))
            sidecar = json.loads(files.sidecar.read_text(encoding="utf-8"))
            launch = None if files.launch is None else _launch_arguments(files.launch)
        except (OSError, ValueError, PipelineError) as exc:
            raise BundleCheckFailed(f"the written bundle cannot be read back: {exc}") from exc
        return cls(modelfile, sidecar, launch)

    def settings(self) -> InferenceSettings:
        """The settings the bundle serves: its Modelfile's PARAMETERs, the sidecar's format, think and examples,
        and the launch command's context and server flags; never its response cache."""
        params, sidecar = self.modelfile.parameters, self.sidecar
        num_ctx, server = params["num_ctx"], {}
        if self.launch is not None:
            num_ctx, server = server_of_launch(list(self.launch))
        # The sidecar's cache is left out: the replay goes to the engine every time, so that stored answers cannot
        # make the check pass.
        serving = tuple(server.items()) + ((("think", sidecar["think"]),) if sidecar.get("think", "default")
                                           != "default" else ())
        return InferenceSettings(num_ctx=num_ctx, num_predict=params["num_predict"],
                                 temperature=params["temperature"], top_p=params["top_p"], top_k=params["top_k"],
                                 few_shot=sidecar["few_shot"], prompt_variant=_VARIANT,
                                 example_selection=sidecar["example_selection"], format=sidecar["format"],
                                 seed=params.get("seed", 0), serving=serving)

    def prompts(self, like: PromptLibrary) -> PromptLibrary:
        """The prompts the bundle renders: its SYSTEM, its MESSAGE pairs (static examples) or the sidecar's pool
        and router (examples picked per request). ``like`` lends only its folder, for messages."""
        sidecar = self.sidecar
        if sidecar["example_selection"] == "static" or not sidecar["few_shot"]:
            pairs = self.modelfile.messages
            examples = tuple(ShotExample(pairs[i][1], json.loads(pairs[i + 1][1]), None, {}, None)
                             for i in range(0, len(pairs) - 1, 2))
            keywords: dict[str, tuple[re.Pattern[str], ...]] = {}
            default = None
        else:
            examples = tuple(ShotExample(e["request"], e["answer"], e.get("label"), {}, None)
                             for e in sidecar["examples"])
            keywords = {label: tuple(re.compile(p) for p in patterns) for label, patterns in sidecar["router"].items()}
            default = sidecar.get("router_default")
        return PromptLibrary(like.folder, {_VARIANT: self.modelfile.system or ""}, examples, keywords, default)



@dataclass(frozen=True)
class BundleCheck:
    """What the check measured and decided."""

    requests: int
    deterministic: bool
    why_deterministic: str
    identical: int                     # the bundle's answers identical to the trial's
    gaps: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # metric: bundle − trial, 95% low, high
    failure: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # request, trial's answer, bundle's answer

    def summary(self) -> str:
        """Three lines that fit 100 columns: what was compared, whether decoding is deterministic and why, then
        what was required and how it came out."""
        head = (f"bundle check: {self.requests} held-out requests replayed through the written bundle, "
                f"{self.identical} answered identically")
        gaps = ", ".join(f"{m} {d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for m, (d, lo, hi) in self.gaps.items())
        mode = (f"decoding deterministic ({self.why_deterministic})\n  identical answers required" if self.deterministic
                else f"decoding varies ({self.why_deterministic})\n  bundle − trial {gaps}, 95% paired")
        return f"{head}\n  {mode}; {'FAILED: ' + self.failure if self.failure else 'passed'}"


def check_bundle(prepared: PreparedStudy, files: BundleFiles, held_out: list[RequestRecord], *, requests: int,
                 accuracy: str, temperature: float, model_name: str | None) -> BundleCheck:
    """Replay the first ``requests`` held-out requests the engine answered (not a semantic cache's hits) through the
    written bundle and compare them with ``held_out`` (the trial's settings on the same requests, every
    repetition).

    ``model_name``: create the model under this name on a server that can (Ollama) and ask it; None: serve the
    bundle's settings through the study's backend (restarted from the launch command when it starts its own).

    Raises:
        BundleCheckFailed: the bundle cannot be read back, or its engine failed to start.
    """
    bundle = WrittenBundle.read(files)
    job_schema = prepared.experiment.schema
    if job_schema is not None and bundle.sidecar.get("schema") != job_schema.document:
        raise BundleCheckFailed(f"the sidecar {files.sidecar} holds another schema than the job's "
                                f"({job_schema.source})")
    # a semantic hit served another request's answer: the engine never answered that request in the trial, so it
    # has nothing to be compared with (an exact hit is the engine's answer to the same request)
    ids = list(dict.fromkeys(r.request_id for r in held_out if r.cache != "semantic"))[:requests]
    examples = {e.id: e for e in prepared.experiment.split("holdout")}
    chosen = [examples[i] for i in ids]
    if model_name is not None and isinstance(prepared.backend, ModelPublisher):
        replayed = _through_created_model(prepared, bundle, chosen, model_name)
    else:
        replayed = _through_backend(prepared, bundle, chosen)
    replayed_ids = set(ids)
    trial = [r for r in held_out if r.request_id in replayed_ids]
    return compare(trial, replayed, accuracy=accuracy, temperature=temperature,
                   alpha=prepared.config.evaluation.error_rate)


def compare(trial: list[RequestRecord], bundle: list[RequestRecord], *, accuracy: str,
            temperature: float, alpha: float = ERROR_RATE) -> BundleCheck:
    """Decide whether ``bundle`` (one answer per request) reproduces ``trial`` (the same requests, one or more
    repetitions each); see the module docstring."""
    answers: dict[str, list[str]] = {}
    for record in trial:
        answers.setdefault(record.request_id, []).append(record.answer)
    repeated = [a for a in answers.values() if len(a) > 1]
    if any(len(set(a)) > 1 for a in repeated):
        deterministic, why = False, "the trial's own repetitions answered differently"
    elif repeated:
        deterministic, why = True, f"each of {len(repeated)} requests answered identically on every repetition"
    else:
        deterministic = temperature == 0
        why = f"temperature {temperature:g}, one repetition"
    rows = [{"request_id": r.request_id, "trial_answer": answers[r.request_id][0], "bundle_answer": r.answer,
             "identical": r.answer == answers[r.request_id][0], "bundle_schema_valid": r.score.schema_valid,
             "bundle_" + accuracy: lookup(accuracy).request(r)} for r in bundle]
    identical = sum(row["identical"] for row in rows)
    objectives = [Objective("schema_valid_rate", "maximize"), Objective(accuracy, "maximize")]
    found = paired_gaps(trial, bundle, objectives, alpha) or []
    gaps = {o.metric: gap for o, gap in zip(objectives, found, strict=False)}
    failure = None
    if deterministic and identical < len(rows):
        first = next(row for row in rows if not row["identical"])
        failure = (f"{len(rows) - identical} of {len(rows)} answers differ from the trial's, where decoding is "
                   f"deterministic; request {first['request_id']}: trial {first['trial_answer'][:80]!r}, bundle "
                   f"{first['bundle_answer'][:80]!r}")
    elif not deterministic:
        off = [(m, g) for m, g in gaps.items() if not g[1] <= 0 <= g[2]]
        if off:
            metric, (gap, low, high) = off[0]
            failure = (f"the bundle's {metric} differs from the trial's on the same requests by {gap:+.2f} "
                       f"[{low:+.2f}, {high:+.2f}] (95% paired), beyond what decoding varies")
    return BundleCheck(len(rows), deterministic, why, identical, gaps, failure, rows)


def _through_backend(prepared: PreparedStudy, bundle: WrittenBundle, examples: list[Example]) -> list[RequestRecord]:
    """The bundle's settings through the study's backend, the server (if it starts one) started afresh."""
    settings = bundle.settings()
    plan = replace(trial_plan(prepared), prompts=bundle.prompts(prepared.prompts), repetitions=1, abort_on=())
    if isinstance(prepared.backend, ManagedServer):
        prepared.backend.stop()   # started again from the launch command's context and flags
    outcome = run_trial(settings, examples, plan)
    if outcome.infeasible:
        raise BundleCheckFailed(f"the written bundle cannot serve its own held-out requests: {outcome.infeasible}")
    return outcome.records


def _through_created_model(prepared: PreparedStudy, bundle: WrittenBundle, examples: list[Example],
                           name: str) -> list[RequestRecord]:
    """Create ``name`` from the parsed Modelfile and ask it, sending only what the sidecar says a client sends:
    routed examples (per-request selection), the request, ``format`` and ``think``."""
    backend, modelfile, sidecar = prepared.backend, bundle.modelfile, bundle.sidecar
    assert isinstance(backend, ModelPublisher)
    backend.create_model(name, base=modelfile.base, system=modelfile.system, parameters=dict(modelfile.parameters),
                         messages=[{"role": r, "content": c} for r, c in modelfile.messages])
    prompts, settings, scorer = bundle.prompts(prepared.prompts), bundle.settings(), prepared.experiment.scorer
    records = []
    for example in examples:
        messages: list[Message] = [{"role": "user", "content": example.request}]
        if sidecar["example_selection"] != "static" and sidecar["few_shot"]:
            messages = prompts.render(example.request, variant=_VARIANT, few_shot=settings.few_shot,
                                      selection=settings.example_selection)[1:]
        start = time.perf_counter()
        try:
            answer = backend.chat_with(name, messages, schema=_schema(bundle, example), fmt=settings.format,
                                       think=settings.think)
        except RequestFailed as exc:
            records.append(RequestRecord(example.id, example.request, example.expected, "",
                                         scorer.unanswered(example.expected, str(exc)), math.nan, failed=True))
            continue
        records.append(RequestRecord(example.id, example.request, example.expected, answer,
                                     scorer.score(answer, example.expected, example.schema, example.accepts),
                                     (time.perf_counter() - start) * 1000))
    return records


def _schema(bundle: WrittenBundle, example: Example) -> dict[str, Any] | bool:
    """The schema a request is constrained to: the sidecar's, or the request's own (``schema_field``)."""
    return bundle.sidecar["schema"] if bundle.sidecar.get("schema") is not None else example.schema.document


def _launch_arguments(path: Path) -> tuple[str, ...]:
    """The server's arguments in a launch script ``exec <binary> <args> "$@"``, after the binary."""
    line = next((x for x in path.read_text(encoding="utf-8").splitlines() if x.startswith("exec ")), None)
    if line is None:
        raise ValueError(f"{path}: no 'exec' line")
    words = shlex.split(line)[1:]
    return tuple(w for w in words[1:] if w != "$@")
