"""Reading the project's YAML files (study configs, routers): one-line errors naming the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import InputError

__all__ = ["UniqueKeyLoader", "parse_yaml"]


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that rejects a key written twice in one mapping; PyYAML would silently keep the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then an override is the point of a merge, not a repeat
            key = self.construct_object(key_node, deep=deep)
            try:
                first = first_seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: the base class reports it, with its line
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice, first on line {first.start_mark.line + 1}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(path: Path, text: str, error: type[InputError], *, what: str, depth: str,
               unique_keys: bool = False) -> Any:
    """Parse YAML ``text`` read from ``path`` as plain data (safe loading only).

    Raises:
        error: the text is not YAML, holds a forbidden character, repeats a key (with ``unique_keys``), is nested
            too deeply (``depth`` says how deep it should be) or holds an integer too long to convert.
    """
    loader = UniqueKeyLoader if unique_keys else yaml.SafeLoader
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader: builds plain data, never objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{path}{line}: not valid YAML ({exc.problem or exc.context}); fix the syntax") from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise error(f"{path}:{line}: not valid YAML (character {chr(exc.character)!r} is not allowed); "
                    "remove it") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc}); fix the syntax") from exc
    except RecursionError as exc:
        raise error(f"{path}: nested too deeply to read; {depth}") from exc
    except ValueError as exc:  # Python's limit on the digits of an integer
        raise error(f"{path}: not a usable {what} ({exc.args[0].split(';')[0]}); fix the value") from exc
