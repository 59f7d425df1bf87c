"""Prompts: system-prompt variants, the few-shot pool and the rendering of chat messages.

A prompt folder holds one ``<variant>.txt`` per system-prompt variant, ``examples.jsonl`` (the few-shot
pool, ``{"request", "answer"}`` per line) and ``router.yaml`` (keywords that predict a request's action, used
by the ``by_action`` example selection). Few-shot examples become user/assistant message pairs, the same
shape an Ollama Modelfile's ``MESSAGE`` lines carry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema.protocols import Validator

from pipeline.errors import DataError, did_you_mean
from pipeline.experiment import first_violation, has_action, parse_json, read_text
from pipeline.files import parse_yaml

__all__ = ["Message", "PromptLibrary", "ShotExample", "load_prompts"]

Message = dict[str, str]


@dataclass(frozen=True)
class ShotExample:
    request: str
    answer: dict[str, Any]

    @property
    def action(self) -> str:
        return self.answer["action"]


@dataclass(frozen=True)
class PromptLibrary:
    folder: Path
    variants: dict[str, str]
    examples: tuple[ShotExample, ...]
    keywords: dict[str, tuple[re.Pattern[str], ...]]
    default_action: str

    def check_variant(self, name: str, where: str) -> None:
        """Raise DataError naming the known variants when ``name`` is not one."""
        if name not in self.variants:
            raise DataError(f"{where}: unknown prompt variant {name!r}.{did_you_mean(name, self.variants)} "
                            f"Variants in {self.folder}: {', '.join(sorted(self.variants))}")

    def route(self, request: str) -> str:
        """Predict a request's action from its words: the action with most keyword hits, else the default."""
        text = request.casefold()
        hits = {action: sum(bool(p.search(text)) for p in patterns) for action, patterns in self.keywords.items()}
        best = max(hits, key=hits.__getitem__, default=self.default_action)
        return best if hits.get(best) else self.default_action

    def select_examples(self, request: str, count: int, selection: str) -> list[ShotExample]:
        """Pick ``count`` few-shot examples: ``static`` takes the pool's first ones; ``by_action`` takes the
        examples of the request's predicted action first, then the rest in pool order."""
        if selection == "static" or count == 0:
            return list(self.examples[:count])
        action = self.route(request)
        ranked = [e for e in self.examples if e.action == action] + [e for e in self.examples if e.action != action]
        return ranked[:count]

    def render(self, request: str, *, variant: str, few_shot: int, selection: str) -> list[Message]:
        """The chat messages for one request: system prompt, few-shot pairs, then the request."""
        messages: list[Message] = [{"role": "system", "content": self.variants[variant]}]
        for shot in self.select_examples(request, few_shot, selection):
            messages.append({"role": "user", "content": shot.request})
            messages.append({"role": "assistant", "content": json.dumps(shot.answer)})
        messages.append({"role": "user", "content": request})
        return messages


def load_prompts(folder: Path, validator: Validator) -> PromptLibrary:
    """Load a prompt folder; every few-shot answer must validate against the experiment's schema.

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
        raise DataError(f"{examples_path} not found: a prompt folder needs a few-shot pool")
    examples = []
    for number, line in enumerate(read_text(examples_path)[1].splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{examples_path}:{number}"
        item = parse_json(line, where)
        if not isinstance(item, dict) or not isinstance(item.get("request"), str) or "answer" not in item:
            raise DataError(f"{where}: must be an object with a 'request' string and an 'answer'")
        if not item["request"].strip():
            raise DataError(f"{where}: the request is empty; write the example's request")
        error = first_violation(validator, item["answer"], examples_path, where)
        if error is not None:
            raise DataError(f"{where}: example answer violates the schema: {error.message}; fix the example")
        if not has_action(item["answer"]):
            # The router picks examples by their action; the schema may not require one.
            raise DataError(f"{where}: example answer must be a JSON object with an 'action' string; "
                            "fix the example")
        examples.append(ShotExample(item["request"], item["answer"]))

    router_path = folder / "router.yaml"
    keywords: dict[str, tuple[re.Pattern[str], ...]] = {}
    default_action = examples[0].action if examples else ""
    if router_path.is_file():
        keywords, default_action = _load_router(router_path, default_action)
    return PromptLibrary(folder, variants, tuple(examples), keywords, default_action)


def _load_router(path: Path, default_action: str) -> tuple[dict[str, tuple[re.Pattern[str], ...]], str]:
    text = read_text(path)[1]
    router = parse_yaml(path, text, DataError, what="router", depth="a router needs two levels")
    shape = "needs 'keywords:' mapping each action to a list of words, and may set 'default: <action>'"
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
    for action, listed in words.items():
        if not isinstance(action, str) or not isinstance(listed, list):
            raise DataError(f"{path}: keywords of {action!r} must be a list of words, got {type(listed).__name__}; "
                            f"it {shape}")
        for word in listed:
            if isinstance(word, bool) or not isinstance(word, (str, int, float)) or not str(word).strip():
                raise DataError(f"{path}: keyword {word!r} of {action!r} must be a non-empty word or phrase")
    default = router.get("default", default_action)
    if "default" in router and (not isinstance(default, str) or not default.strip()):
        raise DataError(f"{path}: 'default' must be an action name, got {default!r}")
    # Whole words only, so that "any" does not match "anything".
    keywords = {action: tuple(re.compile(rf"\b{re.escape(str(w).casefold())}\b") for w in listed)
                for action, listed in words.items()}
    return keywords, default
