"""The documentation: tables the code owns are generated from it, every link resolves, the README stays short.

A table between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in a page of ``docs/`` is rendered here
from the code that owns it (the metric registry, the server settings, the search space's settings, the catalogue of
bad input) and compared with the page. ``DOCS_UPDATE=1 python -m pytest tests/test_docs.py`` rewrites every block that
differs instead of failing. No model is loaded.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.cache.semantic import DEFAULT_THRESHOLD
from pipeline.engines.serving import CONCURRENCY, SERVER_SETTINGS, launch_args
from pipeline.engines.settings import CORE_PARAMETERS
from pipeline.measure.intervals import reported_intervals
from pipeline.measure.racing import BOUND_SUFFIXES
from pipeline.measure.registry import REGISTRY, ci_metrics, field_metric
from pipeline.promote.policies import DEFAULT
from pipeline.promote.policies import REGISTRY as REGISTRY_OF_POLICIES
from pipeline.search.config import PARAMETERS
from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 12_000  # bytes: the README is the front door; the reference is in docs/


# -- rendering the tables ------------------------------------------------------------------------------------

def code(text: Any) -> str:
    """``text`` as a Markdown code span that survives a table cell (a pipe is escaped, a backtick fenced)."""
    text = str(text).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def metrics_table() -> str:
    """Every declared metric in the order a trial records them, then the metrics named after a field or a metric."""
    rows = [(code(m.name), code(m.header) if m.header else "", m.unit,
             "higher" if m.direction == "maximize" else "lower", m.description) for m in REGISTRY.values()]
    resamples = inspect.signature(reported_intervals).parameters["resamples"].default
    low, high = BOUND_SUFFIXES
    per_field = (f"one metric per field path the expected answers use ({code(field_metric('/params/title'))}; an "
                 f"array item is written `-`, as MLflow allows no `*`: "
                 f"{code(field_metric('/line_items/*/unit_price'))}): which field fails")
    run = ("the requests this trial sent (`requests_measured` counts the ones its metrics are over, earlier trials' "
           "included when it tops one up)")
    reported = (f"95% percentile-bootstrap interval ({resamples:,} resamples of the trial's requests) of "
                + ", ".join(code(name) for name in ci_metrics()))
    rows += [
        (code(field_metric("/<path>")), "", "share", "higher", per_field),
        ("`requests_run`", "", "requests", "", run),
        (f"`<objective>{low}`, `<objective>{high}`", "", "", "",
         "each objective's interval at `evaluation.error_rate`, as refinement and unpaired ties use it"),
        ("`<metric>_ci95_low`, `<metric>_ci95_high`", "", "", "", reported),
    ]
    return table(("metric", "column", "unit", "better", "meaning"), rows)


_NAME = re.compile(r"(--[\w-]+|\b\w+_\w+\b)")


def _counterpart(text: str) -> str:
    """A counterpart as written in the code, with its flag and option names as code: ``num_thread (request
    option)`` → ```num_thread` (request option)``."""
    return _NAME.sub(lambda match: f"`{match.group(1)}`", text)


def _allowed(kind: type, allowed: Any) -> str:
    if allowed is None:
        return "a name the job's files define"
    if kind is str:
        return ", ".join(allowed)
    return f"≥ {allowed:g}"


def policies_table() -> str:
    """Every promotion policy with the sentence it says what it promotes in (markup: its option names as code)."""
    def sentence(text: str) -> str:
        return re.sub(r"(--[a-z0-9-]+(?: N)?|latency_p95_ms)", r"`\1`", text)

    return table(("policy", "what it promotes"),
                 [(code(name) + (" (default)" if name == DEFAULT else ""), sentence(p.sentence))
                  for name, p in REGISTRY_OF_POLICIES.items()])


def server_settings_table() -> str:
    rows = [(code(name), code(s.flag), _allowed(s.kind, s.allowed), _counterpart(s.ollama), _counterpart(s.vllm))
            for name, s in SERVER_SETTINGS.items()]
    return table(("setting", "llama-server flag", "values", "Ollama", "vLLM"), rows)


def _yaml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _default(name: str, spec: Any) -> str:
    pinned = dict(zip(*[iter(launch_args(0, {}))] * 2, strict=True))  # flags the tool always sets
    if spec is not None:
        return "searched as " + code("{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in spec.items()) + "}")
    if name in CORE_PARAMETERS:
        return "filled in from the job's files"
    if name == CONCURRENCY:
        return "1: one client"
    if name == "cache":
        return "off: every request reaches the engine"
    if name == "cache_threshold":
        return f"{DEFAULT_THRESHOLD} (a semantic cache's)"
    if name == "cache_guard":
        return "on (a semantic cache's)"
    if name == "cache_embedder":
        return "minilm: all-MiniLM-L6-v2 in process (a semantic cache's)"
    if name in SERVER_SETTINGS and SERVER_SETTINGS[name].flag in pinned:
        return f"{pinned[SERVER_SETTINGS[name].flag]}, pinned by the tool (not llama-server's own choice)"
    return "not set: the server's default"


def search_space_table() -> str:
    types = {int: "whole number", float: "number", str: "text"}
    rows = []
    for name, (kind, spec, allowed) in PARAMETERS.items():
        where = ("`evaluation.concurrency`" if name == CONCURRENCY
                 else "`search_space`, llama-server only" if name in SERVER_SETTINGS else "`search_space`")
        rows.append((code(name), where, types[kind], _allowed(kind, allowed), _default(name, spec)))
    return table(("setting", "set in", "type", "values", "when the config leaves it out"), rows)


def bad_input_table() -> str:
    """The catalogue of tests/test_bad_input.py, one row per case: each row is a test that checks its message."""
    from tests.test_bad_input import CASES

    rows = []
    for case in CASES:
        kind, _, what = case.id.partition("-")
        rows.append((kind, what.replace("-", " "), code(case.message)))
    return table(("input", "what is wrong", "the error line contains"), rows)


GENERATED: list[tuple[str, str, Callable[[], str]]] = [
    ("metrics.md", "metrics", metrics_table),
    ("backends.md", "server-settings", server_settings_table),
    ("browse-compare-promote.md", "policies", policies_table),
    ("study.md", "search-space", search_space_table),
    ("errors.md", "bad-input", bad_input_table),
]


def block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated: {re.escape(name)} -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)


@pytest.mark.parametrize("page, name, render", GENERATED, ids=[name for _, name, _ in GENERATED])
def test_a_generated_table_is_what_the_code_says(page, name, render):
    path = DOCS / page
    text = path.read_text()
    found = block(name).findall(text)
    assert len(found) == 1, f"docs/{page} must hold one <!-- generated: {name} --> … <!-- end generated --> block"
    wanted = render()
    if found[0][1] != wanted and os.environ.get("DOCS_UPDATE") == "1":
        path.write_text(block(name).sub(lambda m: m.group(1) + wanted + m.group(3), text))
        return
    assert found[0][1] == wanted, (f"docs/{page}: the {name} table differs from the code; "
                                   "run DOCS_UPDATE=1 python -m pytest tests/test_docs.py to rewrite it")


def test_every_metric_says_what_it_means():
    assert [name for name, m in REGISTRY.items() if not m.description.strip()] == []


# -- links ----------------------------------------------------------------------------------------------------

PAGES = [README, *sorted(DOCS.glob("*.md"))]
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text outside code blocks and code spans, where a link is a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation but - and _ dropped, each space a -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, a repeated one numbered as GitHub numbers it (``-1``, ``-2``)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text())):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def links(path: Path) -> list[str]:
    return _LINK.findall(prose(path.read_text()))


def test_the_link_finder_finds_links_and_anchors():
    assert slug("Interrupted studies, and running many workers") == "interrupted-studies-and-running-many-workers"
    assert slug("`mlflow run`") == "mlflow-run"
    assert slug("Browsing, comparing and promoting") == "browsing-comparing-and-promoting"
    text = 'See [a](a.md#b), ![pic](p.png "title"), `[not](x.md)` and [[x] y](c.md).'
    assert _LINK.findall(prose(text)) == ["a.md#b", "p.png", "c.md"]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else file}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {resolved.relative_to(ROOT)}")
    assert broken == []


def test_the_readme_is_short_and_links_every_page():
    assert len(README.read_bytes()) < README_LIMIT, f"README.md is {len(README.read_bytes())} bytes"
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in links(README)}
    assert [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_a_page_says_what_it_is_and_leads_back_to_the_readme(page):
    title, blank, first, *_ = page.read_text().splitlines()
    assert title.startswith("# ") and blank == "" and first.strip(), page.name
    assert "(../README.md)" in first, f"{page.name}: its first line must link back to ../README.md"
