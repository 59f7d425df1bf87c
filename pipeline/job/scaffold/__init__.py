"""``pipeline init NAME``: a new job as files, commented, ready to run and to be rewritten.

It writes ``experiments/NAME/`` (manifest, schema, a dataset with two example lines, a README for the labelling
rules), ``prompts/NAME/`` (one system-prompt variant, a few-shot pool, a router) and ``configs/NAME.yaml``. The
files are the templates next to this module, with ``NAME`` filled in. Nothing that exists is overwritten.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import ConfigError

__all__ = ["scaffold"]

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# template file (under templates/) -> where it goes, NAME replaced by the job's name
_FILES = {
    "experiment.yaml": "experiments/NAME/experiment.yaml",
    "schema.json": "experiments/NAME/schema.json",
    "dataset.jsonl": "experiments/NAME/dataset.jsonl",
    "README.md": "experiments/NAME/README.md",
    "system.txt": "prompts/NAME/default.txt",
    "examples.jsonl": "prompts/NAME/examples.jsonl",
    "router.yaml": "prompts/NAME/router.yaml",
    "config.yaml": "configs/NAME.yaml",
}


def scaffold(name: str, root: Path) -> list[Path]:
    """Write a new job's files under ``root``.

    Returns:
        The files written, in the order above.

    Raises:
        ConfigError: the name cannot name a study, or any of the files (or a file where a folder goes) exists.
    """
    if not _NAME.fullmatch(name):
        raise ConfigError(f"job name {name!r} must start with a letter or digit and hold only letters, digits, '.', "
                          "'_' and '-' (100 at most): it names the folders, the config and the study")
    targets = {template: root / target.replace("NAME", name) for template, target in _FILES.items()}
    existing = [p for p in targets.values() if p.exists()]
    existing += [f for p in targets.values() for f in p.parents if f.exists() and not f.is_dir()]
    if existing:
        raise ConfigError(f"{existing[0]} already exists; `pipeline init` never overwrites: choose another name or "
                          "move it away")
    for template, path in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = (_TEMPLATES / template).read_text(encoding="utf-8")
        path.write_text(text.replace("{{NAME}}", name), encoding="utf-8")
    return list(targets.values())
