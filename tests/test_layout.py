"""The package's rooms: imports only go toward rooms below, and each library is imported by its one room.

The order, lowest first, is the table of docs/layout.md: a module may import its own room and the rooms below
it. ``pipeline/errors.py`` is below every room; ``pipeline/testing`` (the doubles) may import every room and no
room imports it. Each room's ``__init__`` docstring says its one job and which rooms it may import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

ROOMS = ("errors", "engines", "job", "cache", "measure", "render", "tracking", "search", "promote", "commands")
# Libraries whose every import is in one room: a second room importing one of them is a wrong turn.
OWNED = {"optuna": "search", "mlflow": "tracking", "matplotlib": "render", "plotly": "render"}


def room_of(module: str) -> str | None:
    """The room of a module of the package (``pipeline.search.study`` → ``search``); None for the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """Every module that the file imports, absolute, with its line: ``(12, "pipeline.job.files")``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if name in ("pipeline",) + tuple(f"pipeline.{r}" for r in ROOMS):  # from pipeline.x import module
                found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def wrong_turns(root: Path) -> list[str]:
    """Every import of the package under ``root`` that goes up a room or into another room's library, as
    ``pipeline/job/files.py:12: job imports search (pipeline.search.config)``."""
    problems = []
    for path in sorted((root / "pipeline").rglob("*.py")):
        relative = path.relative_to(root)
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        room = room_of(module)
        if room is None or room == "__main__":
            continue
        for line, name in imports_of(path, module):
            top = name.split(".")[0]
            if top in OWNED and room not in (OWNED[top], "testing"):
                problems.append(f"{relative}:{line}: {room} imports {top}, which only {OWNED[top]}/ may import")
            if top != "pipeline" or name == "pipeline":
                continue
            target = room_of(name)
            if room == "testing" or target == room:
                continue
            if target == "testing":
                problems.append(f"{relative}:{line}: {room} imports the test doubles ({name})")
            elif target not in ROOMS or room not in ROOMS:
                problems.append(f"{relative}:{line}: {name} is in no room of {ROOMS}")
            elif ROOMS.index(target) > ROOMS.index(room):
                problems.append(f"{relative}:{line}: {room} imports {target} ({name}), a room above it")
    return problems


def test_imports_only_go_down_the_rooms():
    assert wrong_turns(ROOT) == []


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module of the package and the modules of the package it imports (at the top or inside a function)."""
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in sorted((root / "pipeline").rglob("*.py"))}
    return {m: {n for _, n in imports_of(p, m) if n in modules and n != m} for m, p in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected parts of more than one module (Tarjan)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for other in graph[module]:
            if other not in order:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], order[other])
        if low[module] == order[module]:
            part = []
            while not part or part[-1] != module:
                part.append(stack.pop())
            if len(part) > 1:
                found.append(sorted(part))

    for module in graph:
        if module not in order:
            visit(module)
    return found


def test_no_module_imports_itself_back_through_others():
    assert circles(import_graph(ROOT)) == []
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_trial_and_study_attributes_are_read_and_written_by_their_declared_names():
    # every key of a trial's or a study's user attrs is a name declared in pipeline.search.trials
    literal = re.compile(r"""(user_attrs\.get\(|user_attrs\[|set_user_attr\()\s*["']""")
    found = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "pipeline").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert found == []


def test_every_room_says_its_job_and_what_it_may_import():
    for room in ROOMS[1:]:
        doc = ast.get_docstring(ast.parse((ROOT / "pipeline" / room / "__init__.py").read_text()))
        assert doc and "May import:" in doc, room
    modules = {p.relative_to(ROOT / "pipeline").parts[0] for p in (ROOT / "pipeline").rglob("*.py")}
    assert modules <= {*(f"{r}.py" if r == "errors" else r for r in ROOMS), "testing", "__init__.py",
                       "__main__.py"}, "a module outside the rooms"


@pytest.mark.parametrize(("room", "line", "expected"), [
    ("job", "from pipeline.search.config import load_config",
     "job imports search (pipeline.search.config), a room above it"),
    ("engines", "from pipeline import measure", "engines imports measure (pipeline.measure), a room above it"),
    ("measure", "import optuna", "measure imports optuna, which only search/ may import"),
    ("search", "from mlflow import MlflowClient", "search imports mlflow, which only tracking/ may import"),
    ("tracking", "from ..search.study import run_study",
     "tracking imports search (pipeline.search.study), a room above it"),
    ("promote", "from pipeline.testing import FakeBackend", "promote imports the test doubles (pipeline.testing)"),
    ("render", "from pipeline.reports import table", "pipeline.reports is in no room of " + str(ROOMS)),
])
def test_a_wrong_turn_is_named_with_its_file_and_line(tmp_path, room, line, expected):
    folder = tmp_path / "pipeline" / room
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text('"""A room."""\n')
    (folder / "wrong.py").write_text(f'"""A module."""\n\nimport json\n{line}\n')
    assert wrong_turns(tmp_path) == [f"pipeline/{room}/wrong.py:4: {expected}"]


def test_going_down_or_within_a_room_is_allowed(tmp_path):
    folder = tmp_path / "pipeline" / "search"
    folder.mkdir(parents=True)
    (folder / "right.py").write_text("import optuna\nfrom pipeline.measure.metrics import METRICS\n"
                                     "from pipeline.search import fronts\nfrom pipeline.errors import ConfigError\n")
    assert wrong_turns(tmp_path) == []
