"""Ollama Modelfiles: write a promoted setting as a Modelfile, and read one back by Ollama's own rules.

:func:`render` turns a :class:`Modelfile` into text, :func:`parse` reads text back, :func:`sanitize` rewrites
what Ollama's grammar cannot carry, and :func:`write_modelfile` is the only function that touches the disk.
For every Modelfile that ``render`` accepts with ``on_unsafe="refuse"``, ``parse(render(m)) == m`` exactly.

The grammar, as implemented by ``ParseFile``, ``parseRuneForState`` and ``unquote`` in Ollama's
``parser/parser.go`` (github.com/ollama/ollama; ``parser/parser_test.go`` pins the cases below):

* The file is read rune by rune; a leading byte-order mark is dropped. Both ``\\n`` and ``\\r`` break lines.
* Spaces, tabs and line breaks between commands are skipped. ``#`` where a command could start begins a comment
  that runs to the next line break; a ``#`` anywhere else (inside a value) is literal text.
* A command is ASCII letters, compared case-insensitively, followed by one space or tab: ``FROM``,
  ``PARAMETER``, ``MESSAGE``, ``SYSTEM``, ``TEMPLATE``, ``ADAPTER``, ``LICENSE``, ``DRAFT``, ``RENDERER``,
  ``PARSER``, ``REQUIRES``. Any other word, or a command followed directly by a line break, is an error.
* ``PARAMETER <name> <value>``: the name is ``[A-Za-z0-9_]+`` with its case kept, ended by one space or tab.
  The parser emits it as a command *named after the parameter*, so ``PARAMETER system x`` is read exactly
  like ``SYSTEM x`` (and ``PARAMETER model x`` like ``FROM x``).
* ``MESSAGE <role> <value>``: the role is ``system``, ``user`` or ``assistant``, lower-case only.
* A value is everything up to the first line break at which the text so far, trimmed of surrounding
  whitespace, is complete: if it starts with ``\"\"\"`` it must be at least 6 characters and end with
  ``\"\"\"`` (the value is what lies between); else if it starts with ``"`` it must end with ``"``; else it is
  bare and complete at once. Completeness is checked only at line breaks and at the end of the file, so both
  quoted forms can span lines, and text after a closing quote on the same line keeps the value open.
  There are no escape sequences: a backslash is an ordinary character.
* Characters that Go's ``strconv.IsPrint`` rejects are dropped from values (printable means Unicode
  categories L, M, N, P, S and the ASCII space); tab, CR and LF are the exceptions and are kept.

What this means for the text a Modelfile can carry (``render`` always triple-quotes SYSTEM and MESSAGE):

* Cannot be carried, in any quoting: (1) a line break inside a triple-quoted value that follows ``\"\"\"``
  (spaces and tabs between do not help), i.e. a line other than the last ending in ``\"\"\"``: the value closes
  there and the rest is read as commands; (2) characters the parser drops: NUL and the other controls, format
  characters such as zero-width joiners and U+FEFF, non-ASCII spaces such as U+00A0, U+2028/U+2029,
  private-use, surrogate and unassigned code points. "Unassigned" follows Python's ``unicodedata`` (Unicode
  14.0 on Python 3.11); Go's tables may be a version newer, so a very new character can be refused needlessly.
* Carried faithfully inside triple quotes, though they look risky: ``\"\"\"`` in mid-line or at the very end of
  the value, a value that starts or ends with ``"``, leading/trailing spaces and blank lines, CR and CRLF,
  lines starting with ``#``, backslashes (a trailing one too), and the empty string.
* A bare value loses surrounding whitespace and cannot hold a line break or start with ``"``, so ``FROM`` and
  string parameters are written bare only when none of that applies, and triple-quoted otherwise.

This module's own reading of parameters: a value that looks like an integer or a decimal number is read as
``int`` or ``float``, anything else as ``str``; a name that appears on several lines is read as a list.
``stop`` (a ``[]string`` option in Ollama) is always a list of strings. So a string parameter such as ``"42"``
reads back as a number, and a one-element list of an ordinary parameter as a scalar.

The rewrite rule (:func:`sanitize`, ``render(..., on_unsafe="rewrite")``): a space is inserted before the
last quote of a ``\"\"\"`` that ends a line (``\"\"\"`` becomes ``\"\" \"``); non-ASCII spaces (category Zs) become
``" "``; every other dropped character is removed, which is the text Ollama itself would have stored. A
number-like string parameter becomes the number, a one-element list its element, an empty list is left out,
and a non-string ``stop`` value becomes its text. Anything no rewrite can fix (an empty ``FROM``, an unknown
role, a parameter name Ollama treats as a command, a bool, NaN) raises :class:`ModelfileError` in both modes.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pipeline.errors import InputError

__all__ = [
    "COMMANDS",
    "LIST_PARAMETERS",
    "ROLES",
    "Command",
    "Modelfile",
    "ModelfileError",
    "parse",
    "parse_commands",
    "render",
    "sanitize",
    "write_modelfile",
]

ROLES = ("system", "user", "assistant")
# Every command word Ollama's parser accepts (isValidCommand), lower-case.
COMMANDS = ("from", "parameter", "message", "system", "template", "adapter", "license", "draft", "renderer",
            "parser", "requires")
# Options Ollama types as lists (api.Options: Stop []string): read back as a list of strings, even from one line.
LIST_PARAMETERS = frozenset({"stop"})

# Command names as ParseFile emits them that CreateRequest does not treat as parameters; a PARAMETER with one
# of these names would be applied as that command.
_NOT_PARAMETERS = frozenset({"model", "message", "system", "template", "adapter", "license", "draft", "renderer",
                             "parser", "requires"})
_UNSUPPORTED = frozenset({"template", "adapter", "license", "draft", "renderer", "parser", "requires"})
_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_]+")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_TRIPLE = '"""'
# Only printable characters, space, tab, CR and LF reach the parser's buffer, so Go's strings.TrimSpace
# (Unicode whitespace) can only ever remove these four.
_BLANK = " \t\r\n"


class ModelfileError(InputError):
    """A Modelfile cannot be written or read as asked; exit code 2."""


class Command(NamedTuple):
    """One command as Ollama's ParseFile emits it: ``name`` is ``model`` for FROM, the parameter's own name for
    PARAMETER, and the lower-cased word otherwise; a MESSAGE's ``args`` is ``"<role>: <content>"``."""

    name: str
    args: str
    line: int


@dataclass(frozen=True)
class Modelfile:
    """What this project writes into a Modelfile.

    ``parameters`` keeps its order; values are ``int``, ``float`` or ``str``, and a list stands for repeated
    PARAMETER lines. A scalar ``stop`` is held as a one-element list, as Ollama holds it.
    """

    base: str
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    messages: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Copy and normalise so that equal content compares equal and callers' containers are not shared.
        params: dict[str, Any] = {}
        for name, value in dict(self.parameters).items():
            if isinstance(value, (list, tuple)):
                value = list(value)
            elif name in LIST_PARAMETERS:
                value = [value]
            params[name] = value
        object.__setattr__(self, "parameters", params)
        messages = []
        for index, message in enumerate(self.messages, start=1):
            if not isinstance(message, (tuple, list)) or len(message) != 2:
                raise ModelfileError(f"MESSAGE {index}: expected a (role, content) pair, got {message!r}; "
                                     "pass two strings")
            messages.append((message[0], message[1]))
        object.__setattr__(self, "messages", tuple(messages))


# ---------------------------------------------------------------------------------------------------------------
# Reading


def parse(text: str) -> Modelfile:
    """Read Modelfile text by the rules of Ollama's parser.go.

    Returns:
        The Modelfile. When a command repeats, the last SYSTEM and FROM win, as in Ollama.
    Raises:
        ModelfileError: the text breaks Ollama's grammar, has no FROM line, or uses a command this Modelfile
            cannot hold (TEMPLATE, ADAPTER, LICENSE, DRAFT, RENDERER, PARSER, REQUIRES); the message names the line.
    """
    base: str | None = None
    system: str | None = None
    messages: list[tuple[str, str]] = []
    raw_params: dict[str, list[str]] = {}
    for command in parse_commands(text):
        if command.name == "model":
            base = command.args
        elif command.name == "system":
            system = command.args
        elif command.name == "message":
            # CreateRequest splits at the first ": ", which the parser put after the role.
            role, _, content = command.args.partition(": ")
            if role not in ROLES:
                raise ModelfileError(f"line {command.line}: MESSAGE role {role!r} is not one of "
                                     f"{', '.join(ROLES)}; use one of them")
            messages.append((role, content))
        elif command.name in _UNSUPPORTED:
            raise ModelfileError(f"line {command.line}: {command.name.upper()} is valid in Ollama but not supported "
                                 "here (only FROM, PARAMETER, SYSTEM and MESSAGE are); remove the line")
        else:
            raw_params.setdefault(command.name, []).append(command.args)
    if base is None:  # parse_commands already refuses text without FROM; kept for type narrowing
        raise ModelfileError("no FROM line; add 'FROM <model>'")
    params = {name: _read_parameter(name, values) for name, values in raw_params.items()}
    return Modelfile(base=base, parameters=params, system=system, messages=tuple(messages))


def parse_commands(text: str) -> list[Command]:
    """Run Ollama's ParseFile state machine over ``text``, for every command Ollama knows.

    Returns:
        The commands in file order, each with the line it starts on.
    Raises:
        ModelfileError: where ParseFile fails (unknown command, missing value, bad role or parameter name,
            unclosed quote, no FROM line), naming the line.
    """
    text = text.removeprefix("\ufeff")  # ParseFile decodes through unicode.BOMOverride, which drops the mark
    commands: list[Command] = []
    state = _NIL
    buf: list[str] = []
    name = role = ""
    line = start = value_line = 1
    previous = ""
    for ch in text:
        nxt, keep = _step(state, ch, buf, line)
        if nxt != state:
            if state == _NAME:
                name, nxt = _command_name("".join(buf), line, nxt)
            elif state == _PARAMETER:
                name = "".join(buf)
            elif state == _MESSAGE:
                role = "".join(buf)
                if role not in ROLES:
                    raise ModelfileError(f"line {line}: MESSAGE role {role!r} is not one of {', '.join(ROLES)}; "
                                         "write it in lower case")
            elif state == _VALUE:
                value, complete = _unquote("".join(buf).strip(_BLANK))
                if not complete or ch in " \t":
                    buf.append(ch)  # the value goes on: this space or line break is part of it
                    line, previous = _advance(line, previous, ch)
                    continue
                commands.append(Command(name, f"{role}: {value}" if role else value, start))
                role = ""
            if nxt == _NAME:
                start = line
            if nxt == _VALUE:
                value_line = line
            buf = []
            state = nxt
        if keep and _is_print(keep):
            buf.append(keep)
        line, previous = _advance(line, previous, ch)
    if state == _VALUE:
        value, complete = _unquote("".join(buf).strip(_BLANK))
        if not complete:
            raise ModelfileError(f"line {value_line}: the quoted value that starts here is never closed; end it "
                                 'with the same quote (""" or ") at the end of a line')
        commands.append(Command(name, f"{role}: {value}" if role else value, start))
    elif state in (_NAME, _PARAMETER, _MESSAGE):
        raise ModelfileError(f"line {line}: the file ends inside a command; give the command a value")
    if not any(command.name == "model" for command in commands):
        raise ModelfileError("no FROM line; add 'FROM <model>' (a model name or a GGUF path)")
    return commands


_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)


def _step(state: int, ch: str, buf: list[str], line: int) -> tuple[int, str]:
    """parseRuneForState: the next state and the character to keep ("" for none)."""
    if state == _NIL:
        if ch == "#":
            return _COMMENT, ""
        if ch in _BLANK:
            return _NIL, ""
        return _NAME, ch
    if state == _NAME:
        if _is_alpha(ch):
            return _NAME, ch
        if ch in " \t":
            return _VALUE, ""
        word = "".join(buf)
        if ch in "\r\n" and word.lower() in COMMANDS:
            raise ModelfileError(f"line {line}: {word} has no value; write '{word} <value>' on one line")
        raise ModelfileError(f"line {line}: {word + ch!r} is not a Modelfile command; start the line with "
                             "FROM, PARAMETER, SYSTEM or MESSAGE followed by a space")
    if state == _VALUE:
        return (_NIL, ch) if ch in _BLANK else (_VALUE, ch)
    if state == _PARAMETER:
        if _is_alpha(ch) or "0" <= ch <= "9" or ch == "_":
            return _PARAMETER, ch
        if ch in " \t":
            return _VALUE, ""
        if ch in "\r\n":
            raise ModelfileError(f"line {line}: PARAMETER {''.join(buf)} has no value; write "
                                 "'PARAMETER <name> <value>' on one line")
        raise ModelfileError(f"line {line}: PARAMETER name {''.join(buf) + ch!r} may hold only ASCII letters, "
                             "digits and '_'; rename it")
    if state == _MESSAGE:
        if _is_alpha(ch):
            return _MESSAGE, ch
        if ch in " \t":
            return _VALUE, ""
        raise ModelfileError(f"line {line}: MESSAGE needs a role and a value; write 'MESSAGE <role> <text>' "
                             f"with role one of {', '.join(ROLES)}")
    # _COMMENT
    return (_NIL, "") if ch in "\r\n" else (_COMMENT, "")


def _command_name(word: str, line: int, nxt: int) -> tuple[str, int]:
    """The command name ParseFile records for ``word``, and the state that follows it."""
    lowered = word.lower()
    if lowered not in COMMANDS:
        raise ModelfileError(f"line {line}: unknown command {word!r}; use FROM, PARAMETER, SYSTEM or MESSAGE")
    if lowered == "from":
        return "model", nxt
    if lowered == "parameter":
        return "", _PARAMETER  # the parameter's own name becomes the command name
    if lowered == "message":
        return "message", _MESSAGE
    return lowered, nxt


def _unquote(s: str) -> tuple[str, bool]:
    """parser.go's unquote: the value inside the quotes, and whether the quoting is complete."""
    if s.startswith(_TRIPLE):
        if len(s) >= 6 and s.endswith(_TRIPLE):
            return s[3:-3], True
        return "", False
    if s.startswith('"'):
        if len(s) >= 2 and s.endswith('"'):
            return s[1:-1], True
        return "", False
    return s, True


def _advance(line: int, previous: str, ch: str) -> tuple[int, str]:
    # Count CRLF as one line break so that error lines match what an editor shows.
    if ch == "\n" and previous == "\r":
        return line, ch
    return (line + 1 if ch in "\r\n" else line), ch


def _is_alpha(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def _is_print(ch: str) -> bool:
    """Go's strconv.IsPrint: Unicode letters, marks, numbers, punctuation, symbols, and the ASCII space."""
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def _read_parameter(name: str, values: list[str]) -> Any:
    if name in LIST_PARAMETERS:
        return list(values)
    converted = [_convert(value) for value in values]
    return converted[0] if len(converted) == 1 else converted


def _convert(text: str) -> int | float | str:
    # Strict ASCII patterns: Python's int()/float() would also accept "1_000", " 7", "inf" and other digits.
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


# ---------------------------------------------------------------------------------------------------------------
# Checking and rewriting


@dataclass(frozen=True)
class _Issue:
    field: str
    problem: str
    advice: str
    note: str

    def refusal(self) -> str:
        return f"{self.field}: {self.problem}; {self.advice}, or render with on_unsafe='rewrite'"


def sanitize(modelfile: Modelfile) -> tuple[Modelfile, list[str]]:
    """Rewrite what Ollama's grammar cannot carry, by the rule in this module's docstring.

    Returns:
        The rewritten Modelfile (``parse(render(it)) == it``) and one human-readable note per change, in field
        order; an empty list when nothing had to change.
    Raises:
        ModelfileError: a problem no rewrite can fix (empty FROM, unknown role, a parameter name Ollama reads as a
            command, a value that is not int, float or str, a non-finite float).
    """
    clean, issues = _check(modelfile)
    return clean, [f"{issue.field}: {issue.note}" for issue in issues]


def _check(modelfile: Modelfile) -> tuple[Modelfile, list[_Issue]]:
    issues: list[_Issue] = []
    base = _clean_text(_require_str(modelfile.base, "FROM"), "FROM", issues)
    if not base.strip(_BLANK):
        raise ModelfileError("FROM: the base model is empty; give a model name (e.g. 'my-model') or a GGUF path")
    params: dict[str, Any] = {}
    for name, value in modelfile.parameters.items():
        checked = _check_parameter(name, value, issues)
        if checked is not _OMIT:
            params[name] = checked
    system = None
    if modelfile.system is not None:
        system = _clean_text(_require_str(modelfile.system, "SYSTEM"), "SYSTEM", issues)
    messages = []
    for index, (role, content) in enumerate(modelfile.messages, start=1):
        label = f"MESSAGE {index} ({role})"
        if role not in ROLES:
            raise ModelfileError(f"MESSAGE {index}: role {role!r} is not one of {', '.join(ROLES)}; use one of them")
        messages.append((role, _clean_text(_require_str(content, label), label, issues)))
    clean = Modelfile(base=base, parameters=params, system=system, messages=tuple(messages))
    return clean, issues


_OMIT = object()


def _check_parameter(name: str, value: Any, issues: list[_Issue]) -> Any:
    label = f"PARAMETER {name}"
    if not isinstance(name, str) or not _PARAMETER_NAME.fullmatch(name):
        raise ModelfileError(f"{label}: a parameter name may hold only ASCII letters, digits and '_'; rename it")
    if name in _NOT_PARAMETERS:
        raise ModelfileError(f"{label}: Ollama reads a parameter named {name!r} as the {name.upper()} command; "
                             "drop it or set that field instead")
    if isinstance(value, list):
        if not value:
            issues.append(_Issue(label, "an empty list writes no line, so the parameter would read back as absent",
                                 f"leave {name!r} out", "left out the empty list"))
            return _OMIT
        if any(isinstance(item, list) for item in value):
            raise ModelfileError(f"{label}: a list may hold only int, float or str values; flatten it")
        if name in LIST_PARAMETERS:
            return [_check_list_item(name, item, f"{label} value {k}", issues) for k, item in enumerate(value, 1)]
        if len(value) == 1:
            issues.append(_Issue(label, "a one-element list is written as one line and reads back as a scalar",
                                 f"pass {value[0]!r} without the list", "replaced the one-element list by its value"))
            return _check_scalar(value[0], label, issues)
        return [_check_scalar(item, f"{label} value {k}", issues) for k, item in enumerate(value, 1)]
    return _check_scalar(value, label, issues)


def _check_list_item(name: str, item: Any, label: str, issues: list[_Issue]) -> str:
    if isinstance(item, bool) or not isinstance(item, (int, float, str)):
        raise ModelfileError(f"{label}: {item!r} is not a string; {name} values must be text")
    if not isinstance(item, str):
        text = _number_text(item, label)
        issues.append(_Issue(label, f"{item!r} is not a string and {name} values read back as strings",
                             f"write it as {text!r}", f"wrote {item!r} as the string {text!r}"))
        item = text
    return _clean_text(item, label, issues)


def _check_scalar(value: Any, label: str, issues: list[_Issue]) -> int | float | str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        hint = f"write it as the string {str(value).lower()!r}" if isinstance(value, bool) else "use int, float or str"
        raise ModelfileError(f"{label}: {value!r} cannot be written as a parameter value; {hint}")
    if not isinstance(value, str):
        _number_text(value, label)
        return value
    text = _clean_text(value, label, issues)
    number = _convert(text)
    if not isinstance(number, str):
        issues.append(_Issue(label, f"the string {text!r} reads back as the number {number!r}",
                             f"pass the number {number!r} instead", f"replaced the string {text!r} by {number!r}"))
        return number
    return text


def _number_text(value: float, label: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise ModelfileError(f"{label}: {value!r} is not a finite number; give a finite value")
    # repr is the shortest text that reads back as the same float, and Go's ParseFloat reads it too.
    return repr(value) if isinstance(value, float) else str(value)


def _require_str(value: Any, label: str) -> str:
    if not isinstance(value, str):
        raise ModelfileError(f"{label}: expected text, got {type(value).__name__}; pass a str")
    return value


def _clean_text(text: str, label: str, issues: list[_Issue]) -> str:
    """Apply the rewrite rule to one value, recording an issue for each kind of change."""
    spaces = {ch for ch in text if not _carried(ch) and unicodedata.category(ch) == "Zs"}
    dropped = {ch for ch in text if not _carried(ch) and unicodedata.category(ch) != "Zs"}
    if spaces:
        text = "".join(" " if ch in spaces else ch for ch in text)
        issues.append(_Issue(label, f"contains {_describe(spaces)}, which Ollama's parser drops",
                             "use a plain space", f"replaced {_describe(spaces)} with a plain space"))
    if dropped:
        text = "".join(ch for ch in text if ch not in dropped)
        issues.append(_Issue(label, f"contains {_describe(dropped)}, which Ollama's parser drops",
                             "remove it", f"removed {_describe(dropped)}, which Ollama's parser drops"))
    text, lines = _break_early_closes(text)
    if lines:
        where = f"line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))}"
        issues.append(_Issue(label, f"{where} of the text end{'s' if len(lines) == 1 else ''} with '\"\"\"', "
                                    "which closes Ollama's triple-quoted value early",
                             "change those quotes (e.g. to '\"\" \"')",
                             f"inserted a space before the last quote of '\"\"\"' at the end of {where}"))
    return text


def _carried(ch: str) -> bool:
    return ch in "\t\r\n" or _is_print(ch)


def _describe(chars: Iterable[str]) -> str:
    chars = sorted(chars)
    names = [f"U+{ord(ch):04X} ({unicodedata.name(ch, '') or _UNNAMED.get(unicodedata.category(ch), 'unnamed')})"
             for ch in chars]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return shown


_UNNAMED = {"Cc": "control character", "Cs": "surrogate", "Co": "private use", "Cn": "unassigned"}


def _break_early_closes(text: str) -> tuple[str, list[int]]:
    """Insert a space before the last quote of every ``\"\"\"`` that a line break follows.

    Mirrors ParseFile: at each line break it trims the value so far (opening quotes included) and closes the
    value if that ends with ``\"\"\"`` and is at least 6 characters long.

    Returns:
        The text and the 1-based lines of the text that were changed.
    """
    out = list(_TRIPLE)
    last = 2  # index in out of the last character that trimming would keep
    changed: list[int] = []
    line, previous = 1, ""
    for ch in text:
        if ch in "\r\n" and last >= 5 and out[last - 2] == out[last - 1] == out[last] == '"':
            out.insert(last, " ")
            last += 1
            if not changed or changed[-1] != line:
                changed.append(line)
        out.append(ch)
        if ch not in _BLANK:
            last = len(out) - 1
        line, previous = _advance(line, previous, ch)
    return "".join(out[3:]), changed


# ---------------------------------------------------------------------------------------------------------------
# Writing


def render(modelfile: Modelfile, *, on_unsafe: Literal["refuse", "rewrite"] = "refuse",
           header: str | None = None) -> str:
    """The text of the Modelfile: header comments, FROM, PARAMETER lines, SYSTEM, then MESSAGE lines.

    SYSTEM and MESSAGE contents are always triple-quoted; numbers are bare; FROM and string parameters are bare
    when that reads back unchanged and triple-quoted otherwise. ``header`` becomes comment lines (``# ``) at
    the top; its characters that Ollama's parser drops are left out, since comments are never read back.

    Returns:
        Text ending in a newline. With "refuse", ``parse`` of it equals ``modelfile``; with "rewrite", it
        equals ``sanitize(modelfile)[0]``.
    Raises:
        ModelfileError: with "refuse", for the first text the grammar cannot carry, naming the field (e.g.
            'MESSAGE 3 (assistant)') and what to change; in both modes, for problems no rewrite can fix.
    """
    if on_unsafe not in ("refuse", "rewrite"):
        raise ModelfileError(f"on_unsafe={on_unsafe!r} is not supported; use 'refuse' or 'rewrite'")
    clean, issues = _check(modelfile)
    if issues and on_unsafe == "refuse":
        raise ModelfileError(issues[0].refusal())
    lines = _header_lines(header)
    lines.append(f"FROM {_bare_or_quoted(clean.base)}")
    for name, value in clean.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            text = _bare_or_quoted(item) if isinstance(item, str) else _number_text(item, f"PARAMETER {name}")
            lines.append(f"PARAMETER {name} {text}")
    if clean.system is not None:
        lines.append(f"SYSTEM {_TRIPLE}{clean.system}{_TRIPLE}")
    for role, content in clean.messages:
        lines.append(f"MESSAGE {role} {_TRIPLE}{content}{_TRIPLE}")
    return "\n".join(lines) + "\n"


def write_modelfile(path: str | Path, modelfile: Modelfile, *, on_unsafe: Literal["refuse", "rewrite"] = "refuse",
                    header: str | None = None) -> Path:
    """Write ``render(modelfile, ...)`` to ``path`` as UTF-8, byte for byte.

    Returns:
        The path written.
    Raises:
        ModelfileError: as :func:`render`; OSError when the file cannot be written.
    """
    text = render(modelfile, on_unsafe=on_unsafe, header=header)
    target = Path(path)
    # Bytes, not text mode: newline translation would turn LF into CRLF, and CRs inside quotes are kept by Ollama.
    target.write_bytes(text.encode("utf-8"))
    return target


def _bare_or_quoted(text: str) -> str:
    bare = (text != "" and text == text.strip(_BLANK) and not text.startswith('"')
            and not any(ch in "\r\n" for ch in text))
    return text if bare else f"{_TRIPLE}{text}{_TRIPLE}"


def _header_lines(header: str | None) -> list[str]:
    if header is None:
        return []
    # Split on exactly the parser's line breaks: a lone CR left inside would end the comment mid-line.
    lines = ["".join(ch for ch in part if ch == "\t" or _is_print(ch)) for part in _LINE_BREAK.split(header)]
    return [f"# {line}" if line else "#" for line in lines]
