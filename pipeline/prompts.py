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

import yaml
from jsonschema.protocols import Validator

from pipeline.errors import DataError, did_you_mean

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
        DataError: no variants, an empty variant file, a bad examples line (``file:line``), or a bad router.
    """
    variants = {}
    for path in sorted(folder.glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="strict").strip()
        if not text:
            raise DataError(f"{path}: empty system prompt; write the prompt or delete the file")
        variants[path.stem] = text
    if not variants:
        raise DataError(f"{folder}: no prompt variants; add one <variant>.txt per system prompt")

    examples_path = folder / "examples.jsonl"
    if not examples_path.is_file():
        raise DataError(f"{examples_path} not found: a prompt folder needs a few-shot pool")
    examples = []
    for number, line in enumerate(examples_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{examples_path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg}); each line must be one JSON object") from exc
        if not isinstance(item, dict) or not isinstance(item.get("request"), str) or "answer" not in item:
            raise DataError(f"{where}: must be an object with a 'request' string and an 'answer'")
        error = next(iter(validator.iter_errors(item["answer"])), None)
        if error is not None:
            raise DataError(f"{where}: example answer violates the schema: {error.message}; fix the example")
        examples.append(ShotExample(item["request"], item["answer"]))

    router_path = folder / "router.yaml"
    keywords: dict[str, tuple[re.Pattern[str], ...]] = {}
    default_action = examples[0].action if examples else ""
    if router_path.is_file():
        try:
            router = yaml.safe_load(router_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise DataError(f"{router_path}: not valid YAML ({exc}); fix the syntax") from exc
        words = router.get("keywords") if isinstance(router, dict) else None
        if not isinstance(words, dict) or not all(isinstance(v, list) for v in words.values()):
            raise DataError(f"{router_path}: needs 'keywords:' mapping each action to a list of words")
        # Whole words only, so that "any" does not match "anything".
        keywords = {action: tuple(re.compile(rf"\b{re.escape(str(w).casefold())}\b") for w in ws)
                    for action, ws in words.items()}
        default_action = router.get("default", default_action)
    return PromptLibrary(folder, variants, tuple(examples), keywords, default_action)
