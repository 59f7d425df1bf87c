"""Prompts: system-prompt variants, the few-shot pool and the rendering of chat messages.

A prompt folder holds one ``<variant>.txt`` per system-prompt variant, ``examples.jsonl`` (the few-shot pool:
each line has the fields the experiment's input template uses and an ``answer``) and, for an experiment with a
label, an optional ``router.yaml``: keywords that predict a request's label value, used by the ``by_label``
example selection. Few-shot examples become user/assistant message pairs, the same shape an Ollama
Modelfile's ``MESSAGE`` lines carry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.engines.base import Message
from pipeline.errors import DataError, did_you_mean
from pipeline.job.experiment import Experiment
from pipeline.job.files import jsonl_objects, parse_yaml, read_text, shown
from pipeline.job.schemas import AnswerSchema

__all__ = ["SELECTIONS", "PromptLibrary", "ShotExample", "load_prompts"]

# How few-shot examples are picked: the pool's first ones, or those of the request's predicted label first.
SELECTIONS = ("static", "by_label")


@dataclass(frozen=True)
class ShotExample:
    """A few-shot example: the user message its fields render to, its answer and the answer's label."""

    request: str
    answer: Any
    label: str | None
    fields: Mapping[str, Any]
    schema: AnswerSchema


@dataclass(frozen=True)
class PromptLibrary:
    folder: Path
    variants: dict[str, str]
    examples: tuple[ShotExample, ...]
    keywords: dict[str, tuple[re.Pattern[str], ...]]
    default_label: str | None

    def check_variant(self, name: str, where: str) -> None:
        """Raise DataError naming the known variants when ``name`` is not one."""
        if name not in self.variants:
            raise DataError(f"{where}: unknown prompt variant {name!r}.{did_you_mean(name, self.variants)} "
                            f"Variants in {self.folder}: {', '.join(sorted(self.variants))}")

    def route(self, request: str) -> str | None:
        """Predict a request's label from its words: the label with most keyword hits, else the default."""
        text = request.casefold()
        hits = {label: sum(bool(p.search(text)) for p in patterns) for label, patterns in self.keywords.items()}
        best = max(hits, key=hits.__getitem__, default=self.default_label)
        return best if hits.get(best) else self.default_label

    def select_examples(self, request: str, count: int, selection: str) -> list[ShotExample]:
        """Pick ``count`` few-shot examples: ``static`` takes the pool's first ones; ``by_label`` takes the
        examples of the request's predicted label first, then the rest in pool order."""
        if selection == "static" or count == 0:
            return list(self.examples[:count])
        label = self.route(request)
        ranked = [e for e in self.examples if e.label == label] + [e for e in self.examples if e.label != label]
        return ranked[:count]

    def render(self, request: str, *, variant: str, few_shot: int, selection: str) -> list[Message]:
        """The chat messages for one request: system prompt, few-shot pairs, then the request."""
        messages: list[Message] = [{"role": "system", "content": self.variants[variant]}]
        for shot in self.select_examples(request, few_shot, selection):
            messages.append({"role": "user", "content": shot.request})
            messages.append({"role": "assistant", "content": json.dumps(shot.answer, ensure_ascii=False)})
        messages.append({"role": "user", "content": request})
        return messages


def load_prompts(folder: Path, experiment: Experiment) -> PromptLibrary:
    """Load a prompt folder for an experiment; every few-shot line is read as the experiment reads its dataset
    (template fields, an answer valid against its schema, a label value when the experiment has a label).

    Raises:
        DataError: a missing folder, no variants, an empty variant file, a file that is not UTF-8, a bad examples
            line (``file:line``), or a bad router.
    """
    if not folder.is_dir():
        raise DataError(f"prompt folder {folder} not found; point 'prompts' at a folder with <variant>.txt files")
    variants = {}
    for path in sorted(folder.glob("*.txt")):
        text = read_text(path)[1].strip()
        if not text:
            raise DataError(f"{path}: empty system prompt; write the prompt or delete the file")
        variants[path.stem] = text
    if not variants:
        raise DataError(f"{folder}: no prompt variants; add one <variant>.txt per system prompt")

    examples_path = folder / "examples.jsonl"
    if not examples_path.is_file():
        raise DataError(f"{examples_path} not found: a prompt folder needs a few-shot pool (it may hold no lines)")
    examples = []
    fields = ", ".join([*experiment.template.fields, "answer"])
    for where, item in jsonl_objects(examples_path, fields):
        if "answer" not in item:
            raise DataError(f"{where}: missing 'answer'; each example needs {fields}")
        request, answer, schema, label = experiment.read_line(item, where, answer_key="answer")
        examples.append(ShotExample(request, answer, label, item, schema))

    router_path = folder / "router.yaml"
    keywords: dict[str, tuple[re.Pattern[str], ...]] = {}
    default_label = next((e.label for e in examples), None)
    if router_path.is_file():
        if experiment.label is None:
            raise DataError(f"{router_path}: a router predicts label values, but {experiment.manifest_path} sets no "
                            "'label'; add one or delete the router")
        known = tuple(dict.fromkeys([*experiment.label_values, *(e.label for e in examples if e.label)]))
        keywords, default_label = _load_router(router_path, default_label, known)
    return PromptLibrary(folder, variants, tuple(examples), keywords, default_label)


def _load_router(path: Path, default_label: str | None,
                 known: tuple[str, ...]) -> tuple[dict[str, tuple[re.Pattern[str], ...]], str | None]:
    text = read_text(path)[1]
    router = parse_yaml(path, text, DataError, what="router", depth="a router needs two levels")
    shape = "needs 'keywords:' mapping each label value to a list of words, and may set 'default: <label value>'"
    if router is None:
        router = {}
    if not isinstance(router, dict):
        raise DataError(f"{path}: must be a mapping, got a {type(router).__name__}; it {shape}")
    unknown = [k for k in router if k not in ("keywords", "default")]
    if unknown:
        hint = did_you_mean(str(unknown[0]), ("keywords", "default"))
        raise DataError(f"{path}: unknown key {unknown[0]!r}.{hint} It {shape}")
    words = router.get("keywords")
    if not isinstance(words, dict):
        raise DataError(f"{path}: {shape}")

    def known_label(value: Any, what: str) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        if text not in known:
            raise DataError(f"{path}: {what} {shown(value)} is not a label value of the dataset.{did_you_mean(text, known)}"
                            f" Label values: {', '.join(known)}")
        return text

    keywords = {}
    for label, listed in words.items():
        if not isinstance(listed, list):
            raise DataError(f"{path}: keywords of {label!r} must be a list of words, got {type(listed).__name__}; "
                            f"it {shape}")
        for word in listed:
            if isinstance(word, bool) or not isinstance(word, (str, int, float)) or not str(word).strip():
                raise DataError(f"{path}: keyword {word!r} of {label!r} must be a non-empty word or phrase")
        # Whole words only, so that "any" does not match "anything".
        keywords[known_label(label, "keywords key")] = tuple(
            re.compile(rf"\b{re.escape(str(w).casefold())}\b") for w in listed)
    default = router.get("default", default_label)
    if "default" in router:
        if default is None or isinstance(default, (dict, list)):
            raise DataError(f"{path}: 'default' must be a label value, got {default!r}")
        default = known_label(default, "default")
    return keywords, default
