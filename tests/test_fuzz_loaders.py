"""Fuzzing the loaders: any config, dataset, schema or prompt folder is loaded or rejected with our own error.

A loader that lets a third-party exception through (a YAML or JSON parser's, a TypeError from an unhashable
value, a RecursionError) turns bad input into a traceback. Every input here must end in success or in a one-line
``PipelineError``. The regression tests at the end pin each crash these properties (or a review of the loaders)
found, and each bad value that used to slip through to fail later.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.job.experiment import Experiment, load_experiment
from pipeline.job.prompts import PromptLibrary, load_prompts
from pipeline.measure.registry import METRICS
from pipeline.search.config import PARAMETERS, StudyConfig, load_config
from tests.conftest import EXPERIMENT, PROMPTS, smoke_config


def fuzz(examples: int) -> settings:
    # Derandomized: every run tries the same inputs (a failure reproduces) and writes no example database.
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


KEY_WORDS = ["study", "engine", "evaluation", "objectives", "constraints", "search_space", "tracking", "name",
             "trials", "seed", "storage", "gguf", "host", "keep_alive", "split", "limit", "metric", "direction",
             "max", "min", "low", "high", "step", "log", "choices", "keywords", "default", "id", "request",
             "expected", "answer", "action", "params", *PARAMETERS, *list(METRICS)[:4]]
TEXT = st.text(max_size=12) | st.sampled_from(KEY_WORDS + ["", " ", "off", "dev", "tpe", "30m", "sqlite://"])
NUMBERS = (st.integers() | st.integers(min_value=-(10**30), max_value=10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([10**400, -(10**400), 0, -1, 0.5]))
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
YAML_DOCS = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(TEXT | st.integers() | st.booleans(), inner, max_size=5), max_leaves=16)
JSON_DOCS = st.recursive(st.none() | st.booleans() | NUMBERS | TEXT,
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=5),
                         max_leaves=16)


def assert_pipeline_outcome(load: Callable[[], Any], loaded: type) -> None:
    """The property: a loaded value of the right type, or our own error with a one-line message."""
    try:
        value = load()
    except PipelineError as exc:
        assert len(str(exc).splitlines()) == 1 and str(exc).strip(), repr(str(exc))
        return
    assert isinstance(value, loaded)


def write_text(path: Path, text: str | bytes) -> None:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")


def dump(value: Any) -> str:
    return yaml.safe_dump(value, allow_unicode=True, sort_keys=False)


# -- config -------------------------------------------------------------------------------------------------

def put(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """Set ``raw[path[0]][path[1]]... = value``, replacing what is in the way with mappings."""
    node = raw
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


SECTION_KEYS = [("study", k) for k in ("name", "trials", "seed", "sampler", "storage", "batch",
                                       "max_consecutive_failures")] + \
               [("engine", k) for k in ("backend", "gguf", "ollama_model", "host", "keep_alive", "pull", "threads",
                                        "warmup_requests", "request_timeout_s", "context_margin")] + \
               [("evaluation", k) for k in ("split", "limit", "repetitions")] + \
               [("tracking", k) for k in ("tracking_uri", "experiment_name")]
SPACE_KEYS = [("search_space", name) for name in PARAMETERS]
RANGES = st.fixed_dictionaries({"low": NUMBERS, "high": NUMBERS},
                               optional={"step": NUMBERS | SCALARS, "log": st.booleans() | SCALARS})
CHOICES = st.fixed_dictionaries({"choices": st.lists(SCALARS, max_size=4) | SCALARS})
OBJECTIVES = st.lists(st.fixed_dictionaries({}, optional={"metric": st.sampled_from(list(METRICS)) | YAML_DOCS,
                                                          "direction": st.sampled_from(["maximize", "minimize"])
                                                          | SCALARS}), max_size=3) | YAML_DOCS
CONSTRAINTS = st.dictionaries(st.sampled_from(list(METRICS)) | TEXT | NUMBERS,
                              st.dictionaries(st.sampled_from(["max", "min", "below"]), NUMBERS | SCALARS,
                                              max_size=2) | SCALARS, max_size=2) | YAML_DOCS
MUTATIONS = st.lists(
    st.tuples(st.sampled_from(SECTION_KEYS), SCALARS | YAML_DOCS)
    | st.tuples(st.sampled_from(SPACE_KEYS), RANGES | CHOICES | SCALARS)
    | st.tuples(st.just(("objectives",)), OBJECTIVES)
    | st.tuples(st.just(("constraints",)), CONSTRAINTS)
    | st.tuples(st.sampled_from([(k,) for k in ("study", "engine", "search_space", "experiment", "prompts",
                                                 "extra")]), YAML_DOCS),
    min_size=1, max_size=3)


@fuzz(400)
@given(mutations=MUTATIONS)
def test_config_with_mutated_fields(mutations):
    raw = smoke_config()
    for path, value in mutations:
        put(raw, path, copy.deepcopy(value))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.yaml"
        write_text(path, dump(raw))
        assert_pipeline_outcome(lambda: load_config(path), StudyConfig)


@fuzz(200)
@given(document=YAML_DOCS)
def test_config_any_yaml_document(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.yaml"
        write_text(path, dump(document))
        assert_pipeline_outcome(lambda: load_config(path), StudyConfig)


@fuzz(200)
@given(text=st.text(max_size=200) | st.binary(max_size=100)
       | st.lists(st.sampled_from(["study:", "  name: x", "- a", "[", "{", "&a", "*a", "<<: *a", "? x", ": y",
                                   "!!binary", "!!set", "%YAML 1.1", "---", "...", "\t", "'", '"', "\x00",
                                   "\ufeff", "\x85", "\u2028"]), max_size=12).map("\n".join))
def test_config_any_text(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.yaml"
        write_text(path, text)
        assert_pipeline_outcome(lambda: load_config(path), StudyConfig)


# -- experiment ---------------------------------------------------------------------------------------------

REAL_LINES = (EXPERIMENT / "dataset.jsonl").read_text().splitlines()
REAL_SCHEMA = (EXPERIMENT / "schema.json").read_text()


@st.composite
def mutated_line(draw: st.DrawFn, real: list[str], keys: list[str], inner: str) -> str:
    item = json.loads(draw(st.sampled_from(real)))
    key = draw(st.sampled_from(keys))
    if draw(st.booleans()):
        if draw(st.booleans()):
            item.pop(key, None)
        else:
            item[key] = draw(JSON_DOCS)
    elif isinstance(item.get(inner), dict):
        item[inner][draw(st.sampled_from(["action", "params", "success", "extra"]))] = draw(JSON_DOCS)
    return json.dumps(item)


def lines_of(real: list[str], keys: list[str], inner: str) -> st.SearchStrategy[list[str]]:
    line = (st.sampled_from(real) | mutated_line(real, keys, inner) | JSON_DOCS.map(json.dumps)
            | st.text(max_size=40) | st.sampled_from(["", "[]", "{}", "NaN", "[" * 3000, "1" * 5000, "\x00"]))
    return st.lists(line, max_size=6)


SCHEMAS = (st.just(REAL_SCHEMA) | JSON_DOCS.map(json.dumps) | st.text(max_size=60)
           | st.sampled_from(['{"$ref": "http://127.0.0.1:9/nowhere.json"}', '{"$ref": "#/$defs/none"}',
                              '{"type": "objekt"}', "true", "false", "{}", '{"pattern": "("}', "[" * 3000])
           | st.binary(max_size=20))


REAL_MANIFEST = (EXPERIMENT / "experiment.yaml").read_text()
MANIFEST_KEYS = ["description", "schema", "schema_field", "dataset", "input", "label", "scoring", "warmup", "default",
                 "fields", "rule", "tolerance", "relative", "key", "weight", "exact", "text", "number", "unordered",
                 "ignore", "/action", "/params", "/params/title", "/params/*", "/success", "request", "schema.json",
                 "dataset.jsonl", "{request}", "{x}", "{", "}", "~", "*"]
MANIFEST_TEXT = st.text(max_size=12) | st.sampled_from(MANIFEST_KEYS)
MANIFEST_DOCS = st.recursive(st.none() | st.booleans() | NUMBERS | MANIFEST_TEXT,
                             lambda inner: st.lists(inner, max_size=4)
                             | st.dictionaries(MANIFEST_TEXT, inner, max_size=5), max_leaves=16)


@st.composite
def manifests(draw: st.DrawFn) -> str | bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return REAL_MANIFEST
    if choice == 1:
        manifest = yaml.safe_load(REAL_MANIFEST)
        key = draw(st.sampled_from(["schema", "input", "label", "scoring", "warmup", "schema_field", "extra",
                                    ("scoring", "fields"), ("scoring", "default"), ("scoring", "fields", "/action")]))
        put(manifest, key if isinstance(key, tuple) else (key,), draw(MANIFEST_DOCS))
        return dump(manifest)
    if choice == 2:
        return dump(draw(MANIFEST_DOCS))
    return draw(st.binary(max_size=20) | st.text(max_size=80))


@fuzz(150)
@given(manifest=manifests())
def test_experiment_any_manifest(manifest):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "exp"
        shutil.copytree(EXPERIMENT, root)
        write_text(root / "experiment.yaml", manifest)
        assert_pipeline_outcome(lambda: load_experiment(root), Experiment)


@fuzz(150)
@given(schema=SCHEMAS, lines=lines_of(REAL_LINES, ["id", "split", "request", "expected"], "expected"),
       keep_real=st.booleans())
def test_experiment_any_schema_and_dataset(schema, lines, keep_real):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_text(root / "experiment.yaml", REAL_MANIFEST)
        write_text(root / "schema.json", schema)
        write_text(root / "dataset.jsonl", "\n".join((REAL_LINES[:5] if keep_real else []) + lines) + "\n")
        assert_pipeline_outcome(lambda: load_experiment(root), Experiment)


# -- prompts ------------------------------------------------------------------------------------------------

REAL_EXAMPLES = (PROMPTS / "examples.jsonl").read_text().splitlines()
REAL_ROUTER = yaml.safe_load((PROMPTS / "router.yaml").read_text())


def _permissive_experiment() -> Experiment:
    """An experiment whose schema allows anything, labelled by /action: the prompt folder's checks alone decide."""
    folder = Path(tempfile.mkdtemp())
    (folder / "experiment.yaml").write_text("schema: schema.json\nlabel: /action\n")
    (folder / "schema.json").write_text("{}")
    (folder / "dataset.jsonl").write_text("\n".join(REAL_LINES) + "\n")
    experiment = load_experiment(folder)
    shutil.rmtree(folder)
    return experiment


EXPERIMENTS = [load_experiment(EXPERIMENT), _permissive_experiment()]


@st.composite
def router_texts(draw: st.DrawFn) -> str | bytes | None:
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return None
    if choice == 1:
        router = copy.deepcopy(REAL_ROUTER)
        put(router, draw(st.sampled_from([("keywords",), ("default",), ("keywords", "create_task"),
                                          ("keywords", "list_tasks"), ("extra",)])), draw(YAML_DOCS))
        return dump(router)
    if choice == 2:
        return dump(draw(YAML_DOCS))
    if choice == 3:
        return draw(st.binary(max_size=20))
    return draw(st.text(max_size=80))


@fuzz(150)
@given(variants=st.dictionaries(st.sampled_from(["compact", "minimal", "verbose", "x-1", "ünï"]),
                                st.text(max_size=30) | st.binary(max_size=10), max_size=3),
       lines=lines_of(REAL_EXAMPLES, ["request", "answer"], "answer"), router=router_texts(),
       experiment=st.sampled_from(EXPERIMENTS))
def test_prompts_any_folder(variants, lines, router, experiment):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, text in variants.items():
            write_text(root / f"{name}.txt", text)
        write_text(root / "examples.jsonl", "\n".join(lines) + "\n")
        if router is not None:
            write_text(root / "router.yaml", router)
        assert_pipeline_outcome(lambda: load_prompts(root, experiment), PromptLibrary)


# -- regressions: crashes and values that slipped through, pinned ------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("study:\n  trials: " + "1" * 5000 + "\n", "Exceeds the limit (4300 digits)"),
    ("[" * 5000, "nested too deeply"),
    ("study:\n  name: a\x00b\n", "study.yaml:2: not valid YAML (character '\\x00' is not allowed)"),
    ("study: {name: a}\nstudy: {name: b}\n", "study.yaml:2: not valid YAML (key 'study' is given twice"),
    ("engine:\n  request_timeout_s: " + "9" * 400 + "\n", "'request_timeout_s' must be a finite number"),
    ("engine:\n  request_timeout_s: .nan\n", "'request_timeout_s' must be a finite number, got nan"),
    ("engine:\n  reload_threshold_ms: .inf\n", "'reload_threshold_ms' must be a finite number, got inf"),
    ("objectives:\n  - metric: [latency_p95_ms]\n", "unknown metric ['latency_p95_ms']"),
    ("search_space:\n  top_k: {low: 1, high: 10, step: 0.5}\n", "'step' must be a whole number greater than 0"),
    ("search_space:\n  temperature: {low: 0.0, high: " + "9" * 400 + "}\n", "must be a finite number"),
    ("engine:\n  gguf: \"a\\0b.gguf\"\n", "'gguf' contains a control character"),
    ("experiment: \"a\\0b\"\n", "'experiment' must be a folder path (string)"),
    ("engine:\n  host: 'http://[::1'\n", "'host' 'http://[::1' is not a server URL (Invalid IPv6 URL)"),
    ("engine:\n  keep_alive: forever\n", "'keep_alive' must be a duration like 30m"),
], ids=["huge-int", "deep-nesting", "nul-character", "key-twice", "overflowing-timeout", "nan-timeout",
        "inf-reload-threshold", "list-as-metric", "fractional-int-step", "overflowing-range", "nul-in-gguf",
        "nul-in-folder", "bad-ipv6-host", "bad-keep-alive"])
def test_config_regressions(write_config, text, message):
    # Real folders after the case's own lines, so line numbers hold and the checks after the folders' run.
    folders = [f"{key}: {json.dumps(str(value))}" for key, value in (("experiment", EXPERIMENT), ("prompts", PROMPTS))
               if not text.startswith(f"{key}:")]
    path = write_config(text + "\n" + "\n".join(folders) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


@pytest.fixture
def experiment_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXPERIMENT, tmp_path / "exp"))


LINE = '{{"id": "n", "split": "dev", "request": "r", "expected": {}}}'


@pytest.mark.parametrize("schema, line, message", [
    pytest.param(None, "1" * 5000, "dataset.jsonl:1: not JSON (Exceeds the limit (4300 digits)", id="huge-int"),
    pytest.param(None, "[" * 5000, "dataset.jsonl:1: not JSON (nested too deeply)", id="deep-line"),
    pytest.param(None, LINE.format("NaN"), "NaN is not JSON", id="nan"),
    pytest.param(None, LINE.format("1e999"), "1e999 is too large for a number", id="overflowing-float"),
    # jsonschema fetched this URL, then let the connection error through
    pytest.param('{"$ref": "http://127.0.0.1:9/nowhere.json"}', LINE.format("{}"),
                 "schema.json: $ref 'http://127.0.0.1:9/nowhere.json' points outside the schema", id="remote-ref"),
    pytest.param('{"$ref": "#/$defs/none"}', LINE.format("{}"),
                 "schema.json: $ref '#/$defs/none' points at nothing in the schema", id="dangling-ref"),
    pytest.param("{}", LINE.format("[1]"), "the answer has no value at the label path /action", id="no-label"),
    pytest.param("[" * 5000, None, "schema.json: not valid JSON (nested too deeply)", id="deep-schema"),
])
def test_experiment_regressions(experiment_copy, schema, line, message):
    if schema is not None:
        (experiment_copy / "schema.json").write_text(schema)
    if line is not None:
        (experiment_copy / "dataset.jsonl").write_text(line + "\n")
    with pytest.raises(DataError) as caught:
        load_experiment(experiment_copy)
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("file, content, message", [
    ("compact.txt", b"\xff\xfe", "compact.txt:1: not UTF-8 text (byte 0xff at offset 0)"),
    ("examples.jsonl", b'{"request": "\xff"}', "examples.jsonl:1: not UTF-8 text"),
    ("router.yaml", b"keywords: \xff", "router.yaml:1: not UTF-8 text"),
    ("router.yaml", "keywords: {create_task: [x]}\ndefault: [a]\n", "'default' must be a label value, got ['a']"),
    ("router.yaml", "keywords: {create_task: [x, '']}\n", "keyword '' of 'create_task' must be a non-empty word"),
    ("router.yaml", "keywords: {a: [x]}\n\x00", "router.yaml:2: not valid YAML (character '\\x00' is not allowed)"),
    ("examples.jsonl", '{"request": "x", "answer": ' + "[" * 5000 + "\n", "examples.jsonl:1: not JSON"),
    ("examples.jsonl", '{"request": "x", "answer": {"action": {}}}\n',
     "examples.jsonl:1: the answer has no value at the label path /action (got {})"),
], ids=["variant-not-utf8", "examples-not-utf8", "router-not-utf8", "router-default-list", "router-empty-keyword",
        "router-nul-character", "examples-deep-nesting", "example-label-not-a-value"])
def test_prompt_regressions(tmp_path, file, content, message):
    folder = Path(shutil.copytree(PROMPTS, tmp_path / "prompts"))
    write_text(folder / file, content)
    with pytest.raises(DataError) as caught:
        load_prompts(folder, EXPERIMENTS[1])
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_a_folder_named_like_a_variant_is_reported(tmp_path, experiment):
    folder = Path(shutil.copytree(PROMPTS, tmp_path / "prompts"))
    (folder / "zzz.txt").mkdir()
    with pytest.raises(DataError, match=r"zzz\.txt cannot be read \(Is a directory\)"):
        load_prompts(folder, experiment)
