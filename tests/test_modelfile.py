from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import InputError
from pipeline.promote.modelfile import (
    Command,
    Modelfile,
    ModelfileError,
    parse,
    parse_commands,
    render,
    sanitize,
    write_modelfile,
)

SYSTEM_PROMPT = '''You turn a user's task request into one Task API call. Requests may be casual, terse or indirect;
pick the action the user means.

# Actions and their params
- create_task: title (required), due, priority.
- list_tasks: status ("open", "completed" or "all"), priority, due. All optional.
- update_task: id (required) and fields (required object with at least one of title, due, priority).
- delete_task: id (required).
- complete_task: id (required).

Priority is low, medium, high or urgent; "when you get a chance" means low and "asap" means urgent.
An id is the number in "task 14", "#7" or "item 3" -- never a word.

## Rules
- Answer with exactly one JSON object with keys action, params and success. No prose, no code fences.
- success is always true.
- Write due as the user wrote it, lower-case, without "by", "on" or "due", e.g. "friday", "next monday".
- Only include params the request states; don't invent a "priority" the user didn't say.

Example: "Review code by Friday" gives
{"action": "create_task", "params": {"title": "review code", "due": "friday"}, "success": true}
'''

EXAMPLES = [
    ("Add a task to renew the car insurance next tuesday",
     {"action": "create_task", "params": {"title": "renew the car insurance", "due": "next tuesday"}}),
    ("show me finished tasks", {"action": "list_tasks", "params": {"status": "completed"}}),
    ("can you change the due date on #36 to saturday",
     {"action": "update_task", "params": {"id": 36, "fields": {"due": "saturday"}}}),
    ("please remove #48, it was added by mistake", {"action": "delete_task", "params": {"id": 48}}),
    ("task 46 is all done", {"action": "complete_task", "params": {"id": 46}}),
    ('remind me to order "new" business cards, high priority',
     {"action": "create_task", "params": {"title": 'order "new" business cards', "priority": "high"}}),
    ("list every open task marked urgent",
     {"action": "list_tasks", "params": {"status": "open", "priority": "urgent"}}),
    ("task 42 needs a new title: order office chairs",
     {"action": "update_task", "params": {"id": 42, "fields": {"title": "order office chairs"}}}),
    ("get task 29 off my list entirely", {"action": "delete_task", "params": {"id": 29}}),
    ("what's on my plate?", {"action": "list_tasks", "params": {}}),
]

PARAMETERS = {"num_ctx": 2048, "num_predict": 96, "temperature": 0.35, "top_p": 0.9, "top_k": 40, "seed": 42}


def _realistic() -> Modelfile:
    messages = []
    for request, answer in EXAMPLES:
        messages.append(("user", request))
        messages.append(("assistant", json.dumps({**answer, "success": True})))
    return Modelfile(base="task-api", parameters=dict(PARAMETERS), system=SYSTEM_PROMPT, messages=tuple(messages))


# --- round trip on realistic content --------------------------------------------------------------------------


def test_realistic_modelfile_round_trips_exactly():
    from pipeline.engines.tokens import estimate_tokens

    assert 260 <= estimate_tokens([{"role": "system", "content": SYSTEM_PROMPT}]) <= 300
    m = _realistic()
    text = render(m, header="promoted from study task-api, trial 17\nscore 0.94")
    back = parse(text)
    assert back == m
    assert [type(v) for v in back.parameters.values()] == [int, int, float, float, int, int]
    assert list(back.parameters) == list(PARAMETERS)
    assert text.startswith("# promoted from study task-api, trial 17\n# score 0.94\nFROM task-api\n")
    assert "PARAMETER num_ctx 2048\n" in text and "PARAMETER temperature 0.35\n" in text
    assert 'MESSAGE assistant """{"action": "delete_task", "params": {"id": 48}, "success": true}"""\n' in text
    assert len(back.messages) == 20 and back.messages[1][1].endswith('"success": true}')


def test_write_modelfile_writes_the_rendered_bytes(tmp_path):
    m = Modelfile(base="task-api", parameters={"seed": 1}, system="a\r\nb")
    path = write_modelfile(tmp_path / "Modelfile", m, header="provenance")
    raw = path.read_bytes()
    assert raw == render(m, header="provenance").encode("utf-8")
    assert b"a\r\nb" in raw  # no newline translation: Ollama keeps the CR inside quotes
    assert parse(raw.decode("utf-8")) == m


def test_header_lines_are_comments_and_cannot_inject_commands():
    m = Modelfile(base="task-api")
    text = render(m, header="run abc\rFROM evil\n\nSYSTEM pwned\x00")
    assert text == "# run abc\n# FROM evil\n#\n# SYSTEM pwned\nFROM task-api\n"
    assert parse(text) == m


# --- hand-written Modelfiles in Ollama's documented style -----------------------------------------------------


def test_docs_mario_example():
    text = """FROM llama3.2
# sets the temperature to 1 [higher is more creative, lower is more coherent]
PARAMETER temperature 1
# sets the context window size to 4096, this controls how many tokens the LLM can use as context
PARAMETER num_ctx 4096

# sets a custom system message to specify the behavior of the chat assistant
SYSTEM You are Mario from super mario bros, acting as an assistant.
"""
    assert parse(text) == Modelfile(base="llama3.2", parameters={"temperature": 1, "num_ctx": 4096},
                                    system="You are Mario from super mario bros, acting as an assistant.")


def test_docs_message_history_example():
    text = """FROM llama3.2

SYSTEM You are a helpful geography assistant.

# Example conversation to guide responses
MESSAGE user Is Toronto in Canada?
MESSAGE assistant yes
MESSAGE user Is Sacramento in Canada?
MESSAGE assistant no
"""
    m = parse(text)
    assert m.system == "You are a helpful geography assistant."
    assert m.messages == (("user", "Is Toronto in Canada?"), ("assistant", "yes"),
                          ("user", "Is Sacramento in Canada?"), ("assistant", "no"))


def test_docs_stop_and_commands_are_case_insensitive():
    text = 'from ./model.gguf\nparameter stop "AI assistant:"\nPaRaMeTeR top_p 0.9\nsystem """be brief"""\n' \
           "Message user hi\n"
    assert parse(text) == Modelfile(base="./model.gguf", parameters={"stop": ["AI assistant:"], "top_p": 0.9},
                                    system="be brief", messages=(("user", "hi"),))


@pytest.mark.parametrize(("body", "system"), [
    # parser_test.go TestParseFileQuoted
    ('SYSTEM """\nThis is a\nmultiline system.\n"""\n\t\t\t', "\nThis is a\nmultiline system.\n"),
    ('SYSTEM """\nThis is a\nmultiline system."""\n\t\t\t', "\nThis is a\nmultiline system."),
    ('SYSTEM """This is a\nmultiline system."""\n\t\t\t', "This is a\nmultiline system."),
    ('SYSTEM """This is a multiline system."""\n\t\t\t', "This is a multiline system."),
    ('SYSTEM """\nThis is a multiline system with "quotes".\n"""\n', '\nThis is a multiline system with "quotes".\n'),
    ('SYSTEM """"""\n', ""),
    ('SYSTEM ""\n', ""),
    ("SYSTEM \"'\"\n", "'"),
    ('SYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""\n', '\'\'"\'""\'""\'"\'\'\'\'\'""\'""\''),
    # TestParseMultiByte, and the rules the cases above imply
    ("\tSYSTEM 你好👋", "你好👋"),
    ('SYSTEM "single quotes\nspan lines"\n', "single quotes\nspan lines"),
    ('SYSTEM """mid-line """ is fine"""\n', 'mid-line """ is fine'),
    ('SYSTEM "no \\"escapes\\" here\\"\n', 'no \\"escapes\\" here\\'),
    ('SYSTEM """a\n# not a comment\n"""   \n', "a\n# not a comment\n"),
    ('SYSTEM """a\r\nb"""\r\n', "a\r\nb"),
    ("SYSTEM   bare value with  inner spaces   \n", "bare value with  inner spaces"),
    ('SYSTEM """first""" trailing text keeps it open\nuntil a line ends in quotes"""\n',
     'first""" trailing text keeps it open\nuntil a line ends in quotes'),
])
def test_parser_test_go_system_cases(body, system):
    assert parse("\nFROM foo\n" + body).system == system


@pytest.mark.parametrize(("line", "value"), [
    # parser_test.go TestParseFileParameters (stop is always a list here)
    ("stop ### User:", "### User:"),
    ("stop ### User: ", "### User:"),
    ('stop "### User:"', "### User:"),
    ('stop "### User: "', "### User: "),
    ('stop """### User:"""', "### User:"),
    ('stop """### User:\n"""', "### User:\n"),
    ("stop <|endoftext|>", "<|endoftext|>"),
    ("stop </s>", "</s>"),
])
def test_parser_test_go_stop_cases(line, value):
    assert parse(f"FROM foo\nPARAMETER {line}\n").parameters == {"stop": [value]}


def test_parameter_values_are_typed_and_repeats_become_lists():
    text = ("FROM foo\nPARAMETER num_ctx 1\nPARAMETER top_p 1.0\nPARAMETER min_p 0.05\nPARAMETER numa true\n"
            "PARAMETER stop <|eot_id|>\nPARAMETER stop 42\nPARAMETER repeat_last_n -1\nPARAMETER tfs_z 1e-05\n"
            "PARAMETER what the \nPARAMETER mixed 1\nPARAMETER mixed two\n")
    assert parse(text).parameters == {"num_ctx": 1, "top_p": 1.0, "min_p": 0.05, "numa": "true",
                                      "stop": ["<|eot_id|>", "42"], "repeat_last_n": -1, "tfs_z": 1e-05,
                                      "what": "the", "mixed": [1, "two"]}


def test_parser_test_go_from_and_trim_cases():
    assert parse('FROM "FOO  BAR  "').base == "FOO  BAR  "
    assert parse("FROM     FOOO BAR    ").base == "FOOO BAR"
    assert parse("FROM /what/is/the path ").base == "/what/is/the path"
    assert parse("FROM llama3:7b-instruct-q4_K_M").base == "llama3:7b-instruct-q4_K_M"
    m = parse("PARAMETER what the \nFROM lemons make lemonade ")
    assert (m.base, m.parameters) == ("lemons make lemonade", {"what": "the"})
    m = parse('\nFROM foo\nMESSAGE system """\nYou are a multiline file parser. Always parse things.\n"""\n\t\t\t')
    assert m.messages == (("system", "\nYou are a multiline file parser. Always parse things.\n"),)


def test_parse_commands_reads_every_ollama_command_like_parser_go():
    text = ('\nFROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\nPARAMETER param1        value1\n'
            'TEMPLATE """   {{ .System }}\n\n{{ .Prompt }}   """    \nREQUIRES 0.14.0\nDRAFT ./assistant\n')
    assert [(c.name, c.args) for c in parse_commands(text)] == [
        ("model", "     model 1"), ("adapter", "adapter3"), ("license", "MIT       "), ("param1", "value1"),
        ("template", "   {{ .System }}\n\n{{ .Prompt }}   "), ("requires", "0.14.0"), ("draft", "./assistant")]
    assert parse_commands("FROM x\nMESSAGE user hi\n")[1] == Command("message", "user: hi", 2)


def test_a_parameter_named_like_a_command_is_that_command():
    # ParseFile names a PARAMETER command after the parameter, so Ollama applies this as SYSTEM.
    assert parse("FROM x\nPARAMETER system hello\n") == Modelfile(base="x", system="hello")


@pytest.mark.parametrize(("text", "fragment"), [
    ("\nFROM foo\nBADCOMMAND param1 value1\n", "line 3: unknown command 'BADCOMMAND'"),
    ("\nFROM foo\nMESSAGE badguy I'm a bad guy!\n", "line 3: MESSAGE role 'badguy'"),
    ("\nFROM foo\nMESSAGE system\n", "line 3"),
    ("\nFROM foo\nMESSAGE system", "line 3"),
    ("\nFROM foo\nPARAMETER param1\n", "line 3: PARAMETER param1 has no value"),
    ('\nFROM foo\nSYSTEM """This is a multiline system.""\n\t\t\t', "line 3: the quoted value"),
    ('\nFROM foo\nSYSTEM "\n\t\t\t', "line 3: the quoted value"),
    ("\nFROM foo\nSYSTEM\n", "line 3: SYSTEM has no value"),
    ("", "no FROM line"),
    ("PARAMETER param1 value1", "no FROM line"),
    ("FROM foo\nPARAMETER num-ctx 1\n", "line 2: PARAMETER name 'num-'"),
    ("FROM foo\nTEMPLATE {{ .Prompt }}\n", "line 2: TEMPLATE is valid in Ollama but not supported here"),
    ("FROM foo\nLICENSE MIT\n", "line 2: LICENSE"),
])
def test_parse_errors_name_the_line(text, fragment):
    with pytest.raises(ModelfileError) as info:
        parse(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


# --- hostile text ---------------------------------------------------------------------------------------------

UNSAFE = [
    # (text, rewritten, words the refusal must contain)
    ('say this:\nthe end """\nmore', 'say this:\nthe end "" "\nmore', ['"""', "line 2"]),
    ('a\n"""\nb', 'a\n"" "\nb', ['"""', "line 2"]),
    ('"""\nstarts with a closing line', '"" "\nstarts with a closing line', ['"""', "line 1"]),
    ('x """ \t\r\ny', 'x "" " \t\r\ny', ['"""', "line 1"]),
    ('{"a": """"}\n{"b": """"\n', '{"a": """"}\n{"b": """ "\n', ['"""', "line 2"]),
    ("nul\x00byte", "nulbyte", ["U+0000"]),
    ("no\u00a0break", "no break", ["U+00A0", "NO-BREAK SPACE"]),
    ("dev 👩\u200d💻", "dev 👩💻", ["U+200D", "ZERO WIDTH JOINER"]),
    ("line\u2028sep", "linesep", ["U+2028"]),
    ("bom\ufeff\x1b[0m", "bom[0m", ["U+001B", "U+FEFF"]),
]

CARRIED = [
    'say """hi""" now',                       # """ in mid-line
    'he said "ok"',                           # ends with "
    '"quoted" at the start',                  # starts with "
    'ends with triple """',                   # """ at the very end
    'a\n"""',                                 # last line is exactly """
    '"',
    '""',
    "\n\n   padded on both sides   \n\n",     # leading/trailing whitespace and blank lines
    "\t",
    "windows\r\nline\r\nends\r\n",            # CRLF
    "old mac\rline ends",                     # lone CR
    "C:\\path\\ends\\with\\backslash\\",
    "# looks like a comment\nFROM evil\nMESSAGE user injected",
    "",
    '{"action": "create_task", "params": {}, "success": true}',
    "unicode: ünïcödé 日本語 👋 e\u0301",
]


def _in_field(field: str, text: str) -> Modelfile:
    if field == "system":
        return Modelfile(base="task-api", system=text)
    return Modelfile(base="task-api", messages=(("user", "hi"), ("assistant", text)))


LABELS = {"system": "SYSTEM", "message": "MESSAGE 2 (assistant)"}


@pytest.mark.parametrize("field", ["system", "message"])
@pytest.mark.parametrize(("text", "rewritten", "words"), UNSAFE)
def test_unsafe_text_is_refused_or_rewritten(field, text, rewritten, words):
    m = _in_field(field, text)
    with pytest.raises(ModelfileError) as info:
        render(m)
    message = str(info.value)
    assert "\n" not in message and message.startswith(LABELS[field] + ": ")
    assert all(word in message for word in words) and "on_unsafe='rewrite'" in message

    clean, notes = sanitize(m)
    assert clean == _in_field(field, rewritten)
    assert notes and all(note.startswith(LABELS[field] + ": ") for note in notes)
    assert all(word in " ".join(notes) for word in words if word != '"""' or "inserted" in " ".join(notes))
    assert parse(render(m, on_unsafe="rewrite")) == clean
    assert parse(render(clean)) == clean and sanitize(clean) == (clean, [])


def test_rewrite_notes_describe_each_change():
    m = Modelfile(base="task-api", system='a\u00a0b\x00\nc"""\nd"""\ne')
    clean, notes = sanitize(m)
    assert clean.system == 'a b\nc"" "\nd"" "\ne'
    assert notes == ["SYSTEM: replaced U+00A0 (NO-BREAK SPACE) with a plain space",
                     "SYSTEM: removed U+0000 (control character), which Ollama's parser drops",
                     "SYSTEM: inserted a space before the last quote of '\"\"\"' at the end of lines 2, 3"]


@pytest.mark.parametrize("field", ["system", "message"])
@pytest.mark.parametrize("text", CARRIED)
def test_text_the_grammar_carries_round_trips_exactly(field, text):
    m = _in_field(field, text)
    assert parse(render(m)) == m
    assert sanitize(m) == (m, [])


# --- FROM and parameters --------------------------------------------------------------------------------------


def test_string_values_are_bare_when_safe_and_quoted_otherwise():
    m = Modelfile(base=" odd name.gguf", parameters={"stop": ["</s>", " padded ", "\n\n", '"q"', ""],
                                                      "label": "two words"})
    text = render(m)
    assert 'FROM """ odd name.gguf"""\n' in text and "PARAMETER stop </s>\n" in text
    assert 'PARAMETER stop """ padded """\n' in text and 'PARAMETER stop """"q""""\n' in text
    assert "PARAMETER label two words\n" in text
    assert parse(text) == m


def test_scalar_stop_is_held_as_a_list():
    m = Modelfile(base="x", parameters={"stop": "</s>"})
    assert m.parameters == {"stop": ["</s>"]} and parse(render(m)) == m


@pytest.mark.parametrize(("parameters", "fragment", "rewritten"), [
    ({"label": "42"}, "the string '42' reads back as the number 42", {"label": 42}),
    ({"label": "0.5"}, "reads back as the number 0.5", {"label": 0.5}),
    ({"num_ctx": [2048]}, "one-element list", {"num_ctx": 2048}),
    ({"stop": []}, "empty list", {}),
    ({"stop": [42, "x"]}, "42 is not a string", {"stop": ["42", "x"]}),
    ({"stop": ["a\x00"]}, "U+0000", {"stop": ["a"]}),
])
def test_parameter_values_that_would_not_read_back(parameters, fragment, rewritten):
    m = Modelfile(base="x", parameters=parameters)
    with pytest.raises(ModelfileError, match="^PARAMETER ") as info:
        render(m)
    assert fragment in str(info.value)
    clean, notes = sanitize(m)
    assert clean.parameters == rewritten and len(notes) == 1
    assert parse(render(m, on_unsafe="rewrite")) == clean


@pytest.mark.parametrize(("modelfile", "fragment"), [
    (Modelfile(base=""), "FROM: the base model is empty"),
    (Modelfile(base="\x00"), "FROM: the base model is empty"),
    (Modelfile(base="x", parameters={"num-ctx": 1}), "PARAMETER num-ctx: a parameter name"),
    (Modelfile(base="x", parameters={"system": "hi"}), "as the SYSTEM command"),
    (Modelfile(base="x", parameters={"numa": True}), "write it as the string 'true'"),
    (Modelfile(base="x", parameters={"temperature": float("nan")}), "not a finite number"),
    (Modelfile(base="x", parameters={"format": {"type": "object"}}), "use int, float or str"),
    (Modelfile(base="x", messages=(("bot", "hi"),)), "MESSAGE 1: role 'bot'"),
    (Modelfile(base="x", system=3), "SYSTEM: expected text"),  # type: ignore[arg-type]
])
@pytest.mark.parametrize("on_unsafe", ["refuse", "rewrite"])
def test_problems_no_rewrite_can_fix_raise_in_both_modes(modelfile, fragment, on_unsafe):
    with pytest.raises(ModelfileError, match=fragment):
        render(modelfile, on_unsafe=on_unsafe)


def test_numbers_round_trip_with_their_types():
    params = {"a": 0, "b": -1, "c": 10**20, "d": 1.0, "e": -0.0, "f": 1e-07, "g": 1.5e300, "h": 0.1 + 0.2,
              "i": [1, 2.5, "x"]}
    back = parse(render(Modelfile(base="x", parameters=params))).parameters
    assert back == params
    assert [type(v) for v in back.values()] == [type(v) for v in params.values()]
    assert [type(v) for v in back["i"]] == [int, float, str]


# --- properties -----------------------------------------------------------------------------------------------

HOSTILE = st.lists(st.sampled_from(['"', '""', '"""', "\n", "\r", "\r\n", " ", "\t", "#", "\\", "a", "{", "}",
                                    "FROM x", "MESSAGE user", "\x00", "\u00a0", "\u200d", "é", "👋", "\ud800"]),
                   max_size=24).map("".join)
TEXT = st.one_of(st.text(max_size=60), HOSTILE,
                 st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20))
MESSAGES = st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), TEXT), max_size=4).map(tuple)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(system=st.none() | TEXT, messages=MESSAGES, stop=TEXT, label=TEXT)
def test_refuse_either_raises_or_round_trips(system, messages, stop, label):
    m = Modelfile(base="task-api", parameters={"num_ctx": 2048, "stop": [stop], "label": label},
                  system=system, messages=messages)
    try:
        text = render(m)
    except ModelfileError as exc:
        assert "\n" not in str(exc)
        assert sanitize(m)[1]  # anything refused is something sanitize changes
        return
    assert parse(text) == m
    assert sanitize(m) == (m, [])


@PROPERTY
@given(system=st.none() | TEXT, messages=MESSAGES, stop=TEXT, label=TEXT)
def test_rewrite_always_round_trips_to_the_sanitized_modelfile(system, messages, stop, label):
    m = Modelfile(base="task-api", parameters={"stop": [stop], "label": label}, system=system, messages=messages)
    clean, notes = sanitize(m)
    assert parse(render(m, on_unsafe="rewrite")) == clean
    assert render(clean) == render(m, on_unsafe="rewrite")  # the rewritten Modelfile is accepted as it is
    assert (clean == m) == (not notes)
