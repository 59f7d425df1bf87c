"""The bundle of a promoted setting: an Ollama Modelfile, a sidecar for what a Modelfile cannot say, what other
serving stacks need, and the files written (:mod:`pipeline.promote.check` proves them).

A Modelfile (FROM, PARAMETER, SYSTEM, MESSAGE: :mod:`pipeline.promote.modelfile`) cannot set ``format``, the
schema, ``think``, or examples picked per request: the sidecar (``promotion.json``) holds them. On an
OpenAI-compatible server it also holds the request defaults (sampling options and ``response_format``, as a
study sent them); on llama-server, the server's launch command with the chosen flags (``llama-server.sh``).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cache.embedder import EMBEDDER
from pipeline.cache.semantic import DEFAULT_THRESHOLD
from pipeline.engines.base import ManagedServer, RequestShaper
from pipeline.engines.settings import InferenceSettings
from pipeline.promote.modelfile import Modelfile, write_modelfile
from pipeline.search.prepare import PreparedStudy

__all__ = ["BundleFiles", "bundle_of", "serving_extras", "write_bundle"]


@dataclass(frozen=True)
class BundleFiles:
    modelfile: Path
    sidecar: Path
    launch: Path | None = None         # the server's launch command (llama-server)

    @property
    def paths(self) -> list[Path]:
        """The files written, in the order they are recorded."""
        return [self.modelfile, self.sidecar, *([self.launch] if self.launch is not None else [])]


def bundle_of(prepared: PreparedStudy, settings: InferenceSettings) -> tuple[Modelfile, dict[str, Any]]:
    """The Modelfile of a setting and its sidecar.

    Returns:
        The Modelfile (not yet sanitised: :func:`pipeline.promote.modelfile.sanitize`) and the sidecar: what
        every request must still carry, and, with per-request examples, the pool and the router that picks them.
    """
    prompts, experiment = prepared.prompts, prepared.experiment
    static = settings.example_selection == "static"
    shots = prompts.select_examples("", settings.few_shot, "static") if static else []
    messages = tuple(pair for shot in shots
                     for pair in (("user", shot.request), ("assistant", json.dumps(shot.answer, ensure_ascii=False))))
    modelfile = Modelfile(base=prepared.backend.base_model, parameters=settings.options(),
                          system=prompts.variants[settings.prompt_variant], messages=messages)
    sidecar: dict[str, Any] = {
        "format": settings.format,
        # A Modelfile cannot set `format`: every request must pass it to get the constrained decoding measured.
        "pass_format": settings.format != "off",
        # The job's schema, or None when each request carries its own (in the field `schema_field` names).
        "schema": experiment.schema.document if experiment.schema is not None else None,
        "schema_field": experiment.schema_field,
        "input_template": experiment.template.text,
        "options": settings.options(),
        # Ollama's request field `think` (a Modelfile cannot set it); "default" sends none, so a model that can
        # think does.
        "think": settings.think,
        "few_shot": settings.few_shot,
        "example_selection": settings.example_selection,
    }
    if settings.cache != "off":
        # The response cache the setting was measured through; clients serve with it (docs/cache.md):
        # pipeline.cache.serving.from_sidecar reads this.
        sidecar["cache"] = {"mode": settings.cache, "never": sorted(experiment.never_cache),
                            "label": experiment.label_pointer}
        if settings.cache == "semantic":
            sidecar["cache"].update(threshold=settings.cache_threshold or DEFAULT_THRESHOLD,
                                    guard="on" if settings.cache_guard else "off", embedder=EMBEDDER)
            served = prepared.embedder
            if settings.cache_embedder == "server" and served is not None:
                # the server's model, by name and API; its URL without credentials (client code may pass its own)
                sidecar["cache"].update(embedder=served.name, embed_model=served.model, embed_api=served.api,
                                        embed_url=served.where)
    if not static and settings.few_shot:
        # Per-request examples cannot live in a Modelfile: clients pick them as the router does and send them.
        sidecar["examples"] = [{"request": e.request, "answer": e.answer, "label": e.label} for e in prompts.examples]
        sidecar["label"] = experiment.label_pointer
        sidecar["router"] = {label: [p.pattern for p in ps] for label, ps in prompts.keywords.items()}
        sidecar["router_default"] = prompts.default_label
    return modelfile, sidecar


def serving_extras(prepared: PreparedStudy, settings: InferenceSettings) -> dict[str, Any]:
    """What a serving stack other than Ollama needs.

    Returns:
        The sidecar's extra entries: ``request_defaults``, the request fields a study sent besides the messages
        (OpenAI-compatible servers), and ``launch_command``, the command of the server running the promoted
        settings, on port 8080 (llama-server); neither for a backend that has none.
    """
    backend, found = prepared.backend, {}
    if isinstance(backend, RequestShaper):
        schema = prepared.experiment.schema.document if prepared.experiment.schema is not None else {}
        found["request_defaults"] = {k: v for k, v in backend.request_body([], settings, schema=schema).items()
                                     if k != "messages"}
    command = list(backend.command) if isinstance(backend, ManagedServer) else []
    if command:
        command[command.index("--port") + 1] = "8080"
        found["launch_command"] = command
    return found


def write_bundle(folder: Path, modelfile: Modelfile, sidecar: dict[str, Any], *, header: str) -> BundleFiles:
    """Write the bundle into ``folder`` (created if missing): ``Modelfile``, ``promotion.json`` and, when the
    sidecar has a ``launch_command``, an executable ``llama-server.sh``; ``header`` heads the Modelfile and the
    script as a comment.

    Returns:
        The files written.
    Raises:
        ModelfileError: the Modelfile cannot be written as it is (:func:`~pipeline.promote.modelfile.render`).
        OSError: a file cannot be written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = write_modelfile(folder / "Modelfile", modelfile, header=header)
    path = folder / "promotion.json"
    path.write_text(json.dumps(sidecar, indent=2, default=float), encoding="utf-8")
    launch = None
    if "launch_command" in sidecar:
        launch = folder / "llama-server.sh"
        launch.write_text(f"#!/bin/sh\n# {header}\n"
                          f"exec {shlex.join(sidecar['launch_command'])} \"$@\"\n", encoding="utf-8")
        launch.chmod(0o755)
    return BundleFiles(written, path, launch)
