"""A catalogue of bad input, one row per kind: each is one line on stderr, exit code 2, and nothing written.

Every row runs twice: in an empty folder (no store may appear) and in a folder holding the stores of an
earlier study (``mlflow.db``, ``optuna.db``, which must keep every byte).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from pipeline.commands.cli import main
from pipeline.errors import ConfigError
from pipeline.tracking.locations import check_storage_url, check_tracking_uri
from tests.conftest import EXPERIMENT, PROMPTS, ROOT, files_under, smoke_config

SMOKE = str(ROOT / "configs" / "smoke.yaml")
DATASET_HEAD = (EXPERIMENT / "dataset.jsonl").read_text().splitlines()[:3]  # line 4 is the case's own

Make = Callable[[Path, pytest.MonkeyPatch], list[str]]


class Case(NamedTuple):
    id: str
    make: Make
    message: str


# -- how to produce each input -------------------------------------------------------------------------------

def write_config(folder: Path, raw: dict[str, Any] | str | bytes) -> Path:
    path = folder / "study.yaml"
    if isinstance(raw, bytes):
        path.write_bytes(raw)
    else:
        path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def config(**changes: Any) -> Make:
    """``pipeline study`` on the smoke config with some sections changed."""
    return lambda folder, _: ["study", "--config", str(write_config(folder, smoke_config(**changes)))]


def config_text(text: str | bytes) -> Make:
    return lambda folder, _: ["study", "--config", str(write_config(folder, text))]


def study(*args: str) -> Make:
    """``pipeline study`` on the smoke config with command-line options; ``{tmp}`` is the test's folder."""
    return lambda folder, _: ["study", "--config", SMOKE, *(a.format(tmp=folder) for a in args)]


def command(*args: str) -> Make:
    return lambda folder, _: [a.format(tmp=folder, smoke=SMOKE) for a in args]


def environment(name: str, value: str, make: Make) -> Make:
    def run(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        monkeypatch.setenv(name, value)
        return make(folder, monkeypatch)

    return run


def experiment(change: Callable[[Path], None]) -> Make:
    """A copy of the experiment folder, changed, under a smoke config."""
    def run(folder: Path, _: pytest.MonkeyPatch) -> list[str]:
        copy = Path(shutil.copytree(EXPERIMENT, folder / "exp"))
        change(copy)
        return ["study", "--config", str(write_config(folder, smoke_config(experiment=str(copy))))]

    return run


def dataset_line(line: str | bytes) -> Make:
    """A dataset of three good lines, then ``line`` as line 4."""
    def change(folder: Path) -> None:
        head = "\n".join(DATASET_HEAD).encode() + b"\n"
        (folder / "dataset.jsonl").write_bytes(head + (line if isinstance(line, bytes) else line.encode()) + b"\n")

    return experiment(change)


def good_line(**changes: Any) -> str:
    item = json.loads(DATASET_HEAD[0]) | {"id": "x1"}
    return json.dumps({k: v for k, v in (item | changes).items() if v is not ...})


def write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return change


def delete(*patterns: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        for pattern in patterns:
            for path in folder.glob(pattern):
                path.unlink()

    return change


def prompts(change: Callable[[Path], None]) -> Make:
    """A copy of the prompt folder, changed, under a smoke config."""
    def run(folder: Path, _: pytest.MonkeyPatch) -> list[str]:
        copy = Path(shutil.copytree(PROMPTS, folder / "prompts"))
        change(copy)
        return ["study", "--config", str(write_config(folder, smoke_config(prompts=str(copy))))]

    return run


def _no_label(folder: Path, **changes: Any) -> list[str]:
    """The Task API experiment without its label (and without the router that needs one), under a config."""
    copy = Path(shutil.copytree(EXPERIMENT, folder / "exp"))
    manifest = (copy / "experiment.yaml").read_text().replace("label: /action", "")
    (copy / "experiment.yaml").write_text(manifest)
    (copy / "traffic.jsonl").unlink()  # its sample draws by label
    prompt_copy = Path(shutil.copytree(PROMPTS, folder / "prompts"))
    (prompt_copy / "router.yaml").unlink()
    raw = smoke_config(experiment=str(copy), prompts=str(prompt_copy), **changes)
    return ["study", "--config", str(write_config(folder, raw))]


def _calls(folder: Path, *lines: dict[str, Any]) -> list[str]:
    """``pipeline import-calls`` on a set of the given lines."""
    path = folder / "calls.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return ["import-calls", str(path), "--name", "calls", "--root", str(folder)]


def _init_twice(folder: Path) -> list[str]:
    """A job scaffolded once already: the second `init` must refuse."""
    (folder / "configs").mkdir()
    (folder / "configs" / "job.yaml").write_text("study: {}\n")
    return ["init", "job", "--root", str(folder)]


def model_file(content: bytes | None) -> Make:
    """``--model`` naming a file with ``content``, a missing file (None), or a folder (b"/")."""
    def run(folder: Path, _: pytest.MonkeyPatch) -> list[str]:
        path = folder / "model.gguf"
        if content == b"/":
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)
        return ["study", "--config", SMOKE, "--model", str(path)]

    return run


def _without_embedder(folder: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.setattr("pipeline.cache.embedder._MODEL_PACKAGE", "no_such_model_package")  # as if never installed
    return config(search_space={"cache": {"choices": ["off", "semantic"]}})(folder, mp)


SERVER_EMBEDDER = {"cache": "semantic", "cache_embedder": "server"}
BASELINE = {"num_ctx": 1024, "num_predict": 32, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 0,
            "prompt_variant": "compact", "example_selection": "static", "format": "off"}

# -- the catalogue -------------------------------------------------------------------------------------------

CASES = [
    # config file
    Case("config-server-setting-without-llama-server", config(search_space={"parallel": {"choices": [1, 2]}}),
         "search_space.parallel is a setting of llama-server, which the embedded backend does not start"),
    Case("config-concurrency-in-process", config(evaluation={"concurrency": 2}),
         "evaluation.concurrency 2: the embedded engine answers one request at a time in this process"),
    Case("config-concurrency-range", config(evaluation={"concurrency": {"low": 1, "high": 4}}),
         "give a number of clients or {choices: [1, 2, 4]}, not a range"),
    Case("config-concurrency-zero", config(evaluation={"concurrency": 0}), "0 is out of range; use a value >= 1"),
    Case("config-unknown-cache-type", config(search_space={"cache_type_k": "q5"}),
         "'q5' is not one of f16, q8_0, q4_0"),
    Case("config-server-args-not-a-list", config(engine={"server_args": "--mlock"}),
         "'server_args' must be list or tuple, got '--mlock'"),
    Case("config-openai-without-host", config(engine={"backend": "openai"}),
         "the openai backend needs the server's URL"),
    Case("config-unknown-top-level-key", config(studdy={}), "unknown key 'studdy'. Did you mean 'study'?"),
    Case("config-unknown-nested-key", config(study={"trails": 3}), "(study): unknown key 'trails'. Did you mean "
                                                                    "'trials'?"),
    Case("config-wrong-type", config(study={"trials": "ten"}), "(study): 'trials' must be int, got 'ten'"),
    Case("config-empty-choices", config(search_space={"num_ctx": {"choices": []}}),
         "(search_space.num_ctx): 'choices' must be a non-empty list"),
    Case("config-empty-range", config(search_space={"top_k": {"low": 5, "high": 5}}),
         "(search_space.top_k): empty range, low 5 == high 5; write the value itself"),
    Case("config-inverted-range", config(search_space={"few_shot": {"low": 4, "high": 1}}),
         "(search_space.few_shot): inverted range, low 4 > high 1; swap them"),
    Case("config-log-range-from-zero", config(search_space={"temperature": {"low": 0.0, "high": 1.0, "log": True}}),
         "(search_space.temperature): a log range needs low > 0"),
    Case("config-fractional-step-of-int", config(search_space={"top_k": {"low": 1, "high": 9, "step": 0.5}}),
         "(search_space.top_k): 'step' must be a whole number greater than 0, got 0.5"),
    Case("config-duplicate-choices", config(search_space={"num_predict": {"choices": [32, 32]}}),
         "'choices' repeats a value ([32, 32]); list each once"),
    Case("config-unknown-objective-metric", config(objectives=[{"metric": "latency_p95", "direction": "minimize"}]),
         "(objectives[0]): unknown metric 'latency_p95'. Did you mean 'latency_p95_ms'?"),
    Case("config-duplicate-objective", config(objectives=[{"metric": "latency_p95_ms"}, {"metric": "latency_p95_ms"}]),
         "'objectives' lists a metric twice"),
    Case("config-constraint-with-two-bounds", config(constraints={"latency_p95_ms": {"max": 900, "min": 10}}),
         "(constraints.latency_p95_ms): must be exactly one of {max: X} or {min: Y}"),
    Case("config-nan-limit", config(constraints={"latency_p95_ms": {"max": float("nan")}}),
         "(constraints.latency_p95_ms): 'max' must be a finite number, got nan"),
    Case("config-infinite-limit", config(constraints={"schema_valid_rate": {"min": float("-inf")}}),
         "(constraints.schema_valid_rate): 'min' must be a finite number, got -inf"),
    Case("config-nan-timeout", config(engine={"request_timeout_s": float("nan")}),
         "(engine): 'request_timeout_s' must be a finite number, got nan"),
    Case("config-keep-alive-zero", config(engine={"keep_alive": "0s"}),
         "(engine): 'keep_alive' '0s' unloads the model after every request"),
    Case("config-bad-keep-alive", config(engine={"keep_alive": "forever"}),
         "(engine): 'keep_alive' must be a duration like 30m, 1h or 0"),
    Case("config-yaml-is-a-list", config_text("- study\n- engine\n"), "the top level must be a mapping of sections"),
    Case("config-yaml-syntax-error", config_text("study:\n  name: x\n  trials: [1, 2\n"),
         "study.yaml:4: not valid YAML (expected ',' or ']', but got '<stream end>'); fix the syntax"),
    Case("config-key-given-twice", config_text("study: {name: a}\nstudy: {name: b}\n"),
         "study.yaml:2: not valid YAML (key 'study' is given twice, first on line 1)"),
    Case("config-not-utf8", config_text(b"study:\n  name: caf\xe9\n"),
         "study.yaml:2: not UTF-8 text (byte 0xe9 at offset 18); save it as UTF-8"),
    Case("config-empty-study-name", config(study={"name": ""}), "(study): 'name' must be a non-empty string, got ''"),
    Case("config-study-name-with-line-break", config(study={"name": "a\nb"}),
         "(study): 'name' contains a control character ('a\\nb'); remove it"),
    Case("config-study-name-with-a-path", study("--study-name", "a/../b"),
         "command line (study): 'name' 'a/../b' must start with a letter or digit"),
    Case("config-missing-file", study("--config", "missing.yaml"),  # relative: the message shows it as given
         "config file missing.yaml not found: pass an existing"),
    Case("config-markup-in-a-key", config(**{"[/x]": 1}), "unknown key '[/x]'"),
    Case("config-markup-in-a-value", config(study={"trials": "[red]"}), "'trials' must be int, got '[red]'"),
    # dataset
    Case("dataset-line-not-json", dataset_line("{not json"), "dataset.jsonl:4: not JSON (Expecting property name"),
    Case("dataset-line-is-an-array", dataset_line("[1, 2]"), "dataset.jsonl:4: must be a JSON object with id, split, "
                                                             "expected and the input template's fields; got a JSON "
                                                             "array"),
    Case("dataset-missing-field", dataset_line(good_line(expected=...)), "dataset.jsonl:4: missing expected"),
    Case("dataset-duplicate-id", dataset_line(good_line(id="t001")), "dataset.jsonl:4: id 't001' must be a unique"),
    Case("dataset-unknown-split", dataset_line(good_line(split="test")), "dataset.jsonl:4: split 'test' must be one "
                                                                         "of dev, holdout"),
    Case("dataset-empty-request", dataset_line(good_line(request="  ")), "dataset.jsonl:4: the request renders "
                                                                         "empty; fill in its fields"),
    Case("dataset-missing-template-field", dataset_line(good_line(request=...)),
         "dataset.jsonl:4: missing field 'request' that the input template '{request}' uses"),
    Case("dataset-expected-violates-schema",
         dataset_line(good_line(expected={"action": "create_task", "params": {}, "success": True})),
         "dataset.jsonl:4: expected answer violates schema.json"),
    Case("dataset-nan", dataset_line(good_line(request="x").replace('"success": true', '"success": NaN')),
         "dataset.jsonl:4: not JSON (NaN is not JSON"),
    Case("dataset-accept-empty-alternatives", dataset_line(good_line(accept={"alternatives": {"/params/due": []}})),
         "dataset.jsonl:4 (accept.alternatives): /params/due needs a non-empty list of other acceptable values"),
    Case("dataset-accept-alternative-violates-schema",
         dataset_line(good_line(accept={"alternatives": {"/params/due": [5]}})),
         "dataset.jsonl:4 (accept): the alternative 5 at /params/due violates schema.json"),
    Case("dataset-accept-optional-required", dataset_line(good_line(accept={"optional": ["/params/title"]})),
         "dataset.jsonl:4 (accept.optional): /params/title is required by schema.json; an answer cannot leave it out"),
    Case("dataset-accept-default-wrong-type", dataset_line(good_line(accept={"defaults": {"/params/due": 3}})),
         "dataset.jsonl:4 (accept): the default 3 at /params/due violates schema.json"),
    Case("dataset-accept-path-not-in-the-answer", dataset_line(good_line(accept={"optional": ["/params/priority"]})),
         "dataset.jsonl:4 (accept.optional): /params/priority is not in the expected answer"),
    Case("dataset-accept-unknown-key", dataset_line(good_line(accept={"alternative": {}})),
         "dataset.jsonl:4 (accept): unknown key 'alternative'. Did you mean 'alternatives'?"),
    Case("dataset-empty-file", experiment(write("dataset.jsonl", "")), "dataset.jsonl: no examples; add one JSON"),
    Case("dataset-missing-file", experiment(delete("dataset.jsonl")), "dataset.jsonl not found ("),
    Case("dataset-not-utf8", dataset_line(b'{"id": "caf\xe9"}'), "dataset.jsonl:4: not UTF-8 text (byte 0xe9"),
    # schema
    Case("schema-not-json", experiment(write("schema.json", '{"type": "object",\n')), "schema.json:2: not valid JSON"),
    Case("schema-not-a-json-schema", experiment(write("schema.json", '{"type": "objekt"}')),
         "schema.json: invalid JSON Schema at type"),
    Case("schema-missing", experiment(delete("schema.json")), "schema.json not found ("),
    Case("schema-remote-ref", experiment(write("schema.json", '{"$ref": "https://example.com/task.json"}')),
         "schema.json: $ref 'https://example.com/task.json' points outside the schema"),
    # the manifest
    Case("manifest-missing", experiment(delete("experiment.yaml")),
         "experiment.yaml not found: an experiment folder needs a manifest"),
    Case("manifest-unknown-key", experiment(write("experiment.yaml", "schema: schema.json\nlabels: /action\n")),
         "experiment.yaml: unknown key 'labels'. Did you mean 'label'?"),
    Case("manifest-path-not-in-schema",
         experiment(write("experiment.yaml", "schema: schema.json\nscoring: {fields: {/params/titel: exact}}\n")),
         "(scoring.fields./params/titel): /params/titel matches nothing in the schema"),
    Case("manifest-rule-wrong-type",
         experiment(write("experiment.yaml", "schema: schema.json\nscoring: {fields: {/action: number}}\n")),
         "rule 'number' cannot judge /action, which the schema makes string"),
    Case("manifest-optional-required",
         experiment(write("experiment.yaml", "schema: schema.json\nscoring: {optional: [/params/title]}\n")),
         "experiment.yaml (scoring.optional): /params/title is required by schema.json; an answer cannot leave it out"),
    Case("manifest-omit-defaults-not-a-flag",
         experiment(write("experiment.yaml", "schema: schema.json\nscoring: {omit_defaults: yes please}\n")),
         "experiment.yaml (scoring.omit_defaults): must be true or false, got 'yes please'"),
    Case("manifest-unknown-rule",
         experiment(write("experiment.yaml", "schema: schema.json\nscoring: {default: fuzzy}\n")),
         "(scoring) (default): unknown rule 'fuzzy'"),
    Case("manifest-label-is-an-object", experiment(write("experiment.yaml", "schema: schema.json\nlabel: /params\n")),
         "(label): /params is an object in the schema; a label must be one value"),
    Case("manifest-template-placeholder", experiment(write("experiment.yaml", "schema: schema.json\ninput: '{0}'\n")),
         "input template placeholder '{0}' must be a plain field name"),
    Case("manifest-by-label-without-label",
         experiment(lambda f: (write("experiment.yaml", "schema: schema.json\n")(f), delete("traffic.jsonl")(f))),
         "router.yaml: a router predicts label values, but"),
    Case("manifest-label-metric-without-label",
         lambda folder, mp: _no_label(folder, objectives=[{"metric": "label_accuracy"}, {"metric": "latency_p95_ms"}]),
         "label_accuracy needs a label"),
    Case("manifest-selection-without-label",
         lambda folder, mp: _no_label(folder, search_space={"example_selection": "by_label"}),
         "(search_space.example_selection): by_label picks few-shot examples by the request's label"),
    # the traffic file (docs/jobs.md)
    Case("traffic-unknown-repeat", experiment(write("traffic.jsonl", '{"repeat": "t0O1"}\n')),
         'traffic.jsonl:1: repeat \'t0O1\' names no request of the dataset or the traffic.'),
    Case("traffic-line-without-expected",
         experiment(write("traffic.jsonl", '{"id": "n1", "split": "dev", "request": "List all tasks"}\n')),
         "traffic.jsonl:1: missing expected; each line needs id, split, expected"),
    Case("traffic-sample-unknown-label",
         experiment(write("traffic.jsonl", '{"sample": {"count": 5, "weights": {"list_task": 1}}}\n')),
         "sample.weights names 'list_task', which is no label or id of split 'dev'. Did you mean 'list_tasks'?"),
    Case("traffic-sample-negative-weight",
         experiment(write("traffic.jsonl", '{"sample": {"count": 5, "weights": {"list_tasks": -1}}}\n')),
         "traffic.jsonl:1: sample.weights.list_tasks must be a number greater than 0, got -1"),
    # the response cache (docs/cache.md)
    Case("manifest-cache-never-unknown-label",
         experiment(lambda f: (f / "experiment.yaml").write_text((f / "experiment.yaml").read_text()
                                                                 + "cache:\n  never: [delete_tsk]\n")),
         "cache.never names 'delete_tsk', which no request of the dataset or the traffic has. Did you mean "
         "'delete_task'?"),
    Case("config-cache-mode", config(search_space={"cache": {"choices": ["off", "exakt"]}}),
         "(search_space.cache): 'exakt' is not one of off, exact, semantic. Did you mean 'exact'?"),
    Case("config-cache-threshold", config(search_space={"cache": "semantic", "cache_threshold": 1.5}),
         "(search_space.cache_threshold): cache_threshold 1.5 is a cosine similarity; use a value in (0, 1]"),
    Case("config-semantic-cache-without-embedder", _without_embedder,
         "(search_space.cache): semantic: the semantic cache's embedder needs no_such_model_package: pip install"),
    Case("config-server-embedder-without-model", config(search_space=SERVER_EMBEDDER),
         "(engine): cache_embedder server needs engine.embed_model, the model the server embeds with"),
    Case("config-server-embedder-on-the-embedded-engine",
         config(search_space=SERVER_EMBEDDER, engine={"embed_model": "all-minilm"}),
         "(engine): the embedded backend serves no embeddings; set engine.embed_url to an embedding server"),
    Case("config-server-embedder-not-answering",
         config(search_space=SERVER_EMBEDDER, engine={"embed_model": "all-minilm", "embed_url": "http://127.0.0.1:9"}),
         "(engine.embed_model): model 'all-minilm' does not embed at http://127.0.0.1:9 (no answer from "
         "http://127.0.0.1:9/embeddings (ConnectError)); start the server with --embeddings"),
    Case("config-cost-zero-price", config(cost={"per_hour": 0}), "(cost): 'per_hour' must be greater than 0, got 0"),
    Case("config-cost-negative-price", config(cost={"per_hour": -0.9}),
         "(cost): 'per_hour' must be greater than 0, got -0.9"),
    Case("config-cost-currency", config(cost={"per_hour": 0.9, "currency": "dollars"}),
         "(cost): 'currency' must be a three-letter currency code (ISO 4217) such as USD or EUR, got 'dollars'"),
    Case("config-cost-metric-without-price",
         config(objectives=[{"metric": "field_accuracy"}, {"metric": "cost_per_1k_answers"}]),
         "cost_per_1k_answers needs the machine's price: add cost: {per_hour: 0.90, currency: USD}"),
    Case("cli-diagnose-without-settings", lambda folder, _: ["diagnose", "--config", SMOKE],
         "no settings to diagnose: add a baseline (the settings served today) to the config, or pass --settings FILE"),
    Case("config-embed-api", config(engine={"embed_api": "grpc"}),
         "(engine): 'embed_api' is 'grpc', not one of ollama, openai."),
    Case("manifest-unknown-field-metric",
         config(objectives=[{"metric": "field_accuracy./params/titel"}, {"metric": "latency_p95_ms"}]),
         "field_accuracy./params/titel names no field of the expected answers. Did you mean "
         "'field_accuracy./params/title'?"),
    # prompt files
    Case("prompts-missing-folder", config(prompts="no-such-prompts"), "'prompts' folder"),
    Case("prompts-no-variants", prompts(delete("*.txt")), "no prompt variants; add one <variant>.txt"),
    Case("prompts-empty-variant", prompts(write("compact.txt", " \n")), "compact.txt: empty system prompt"),
    Case("prompts-variant-not-utf8", prompts(write("compact.txt", b"caf\xe9")), "compact.txt:1: not UTF-8 text"),
    Case("prompts-examples-line-not-json", prompts(write("examples.jsonl", "{oops\n")),
         "examples.jsonl:1: not JSON"),
    Case("prompts-example-violates-schema",
         prompts(write("examples.jsonl", '{"request": "x", "answer": {"action": "create_task"}}\n')),
         "examples.jsonl:1: example answer violates schema.json"),
    Case("prompts-router-unknown-label", prompts(write("router.yaml", "keywords:\n  create_tsk: [add]\n")),
         "router.yaml: keywords key 'create_tsk' is not a label value of the dataset. Did you mean 'create_task'?"),
    Case("prompts-example-without-answer", prompts(write("examples.jsonl", '{"request": "x"}\n')),
         "examples.jsonl:1: missing 'answer'"),
    # the baseline
    Case("baseline-missing-setting", config(baseline={"num_ctx": 1024}), "(baseline): missing num_predict"),
    Case("baseline-outside-the-space", config(baseline=dict(BASELINE, num_ctx=4096)),
         "(baseline).num_ctx: 4096 is not in search_space.num_ctx (1024); add it"),
    Case("baseline-does-not-fit",
         config(baseline=dict(BASELINE, num_ctx=128), search_space={"num_ctx": {"choices": [128, 1024]}}),
         "(baseline): on the dev split the prompt of request"),
    # a new job's files
    Case("init-would-overwrite", lambda folder, mp: _init_twice(folder), "already exists; `pipeline init` never "
                                                                           "overwrites"),
    Case("init-bad-name", command("init", "my job", "--root", "{tmp}"), "job name 'my job' must start with a letter"),
    Case("init-import-calls-without-functions", lambda folder, _: _calls(folder, {"question": "Weather in Oslo?"}),
         "calls.jsonl:1: no 'function' list of offered functions"),
    Case("init-import-calls-unnamed-function",
         lambda folder, _: _calls(folder, {"question": "Weather in Oslo?", "function": [{"parameters": {}}]}),
         "calls.jsonl:1: every offered function is an object with a 'name'"),
    Case("prompts-router-not-a-mapping", prompts(write("router.yaml", "- add\n- show\n")),
         "router.yaml: must be a mapping, got a list"),
    Case("prompts-router-keywords-not-a-list", prompts(write("router.yaml", "keywords:\n  create_task: add\n")),
         "router.yaml: keywords of 'create_task' must be a list of words, got str"),
    Case("prompts-unknown-variant", config(search_space={"prompt_variant": {"choices": ["compact", "verbos"]}}),
         "unknown prompt variant 'verbos'. Did you mean 'verbose'?"),
    # command-line values
    Case("cli-zero-trials", study("--trials", "0"), "argument --trials: 0 must be 1 or more"),
    Case("cli-trials-not-a-number", study("--trials", "abc"), "argument --trials: 'abc' is not a whole number"),
    Case("cli-negative-limit", study("--limit", "-1"), "argument --limit: -1 must be 1 or more"),
    Case("cli-fractional-seed", study("--seed", "1.5"), "argument --seed: '1.5' is not a whole number"),
    Case("cli-negative-seed", study("--seed", "-1"), "command line (study): 'seed' must be 0 or more, got -1"),
    Case("cli-unknown-backend", study("--backend", "vllm"),
         "argument --backend: 'vllm' is not one of embedded, ollama, auto, openai, llama-server"),
    Case("cli-unknown-policy", command("promote", "smoke", "--config", "{smoke}", "--policy", "best"),
         "argument --policy: unknown promotion policy 'best': the policies are accuracy, latency, sla, knee, trial"),
    Case("cli-unknown-policy-misspelt", command("promote", "smoke", "--config", "{smoke}", "--policy", "acuracy"),
         "argument --policy: unknown promotion policy 'acuracy': did you mean 'accuracy'?"),
    Case("cli-margin-above-one", command("promote", "smoke", "--config", "{smoke}", "--margin", "2"),
         "argument --margin: 2 must be between 0 and 1"),
    Case("cli-policy-trial-without-number", command("promote", "smoke", "--config", "{smoke}", "--policy", "trial"),
         "--policy trial needs --trial N"),
    Case("cli-compare-without-names", command("compare"), "the following arguments are required: studies"),
    Case("cli-compare-empty-list", command("compare", ","), "name at least one study to compare"),
    Case("cli-compare-unknown-study", command("compare", "nosuch"), "run `pipeline study` first"),
    Case("cli-promote-unknown-study", command("promote", "nosuch", "--config", "{smoke}"),
         "run `pipeline study` first"),
    Case("cli-bad-host", study("--backend", "ollama", "--model", "m", "--host", "http://[::1"),
         "command line (engine): 'host' 'http://[::1' is not a server URL (Invalid IPv6 URL)"),
    # storage URLs
    Case("storage-unknown-scheme", study("--storage", "nosuchscheme://x"),
         "command line (study): Optuna storage URL 'nosuchscheme://x' has an unknown scheme 'nosuchscheme'"),
    Case("storage-folder-missing", study("--storage", "sqlite:///nonexistent-dir/x.db"),
         "nonexistent-dir not found; create it first"),
    Case("storage-in-memory", study("--storage", "sqlite://"), "is an in-memory database, so nothing would be kept"),
    Case("storage-empty-is-not-given", command("compare", "nosuch", "--storage", ""),
         "run `pipeline study` first"),
    Case("storage-in-config-file", config(study={"storage": "postgres://u:secret@db/optuna"}),
         "(study): Optuna storage URL 'postgres://***@db/optuna'"),
    Case("storage-of-promote", command("promote", "smoke", "--config", "{smoke}", "--storage", "nosuchscheme://x"),
         "Optuna storage URL 'nosuchscheme://x' has an unknown scheme"),
    Case("storage-of-compare", command("compare", "smoke", "--storage", "nosuchscheme://x"),
         "Optuna storage URL 'nosuchscheme://x' has an unknown scheme"),
    # model names and paths
    Case("model-missing-file", model_file(None), "model.gguf cannot be read (No such file or directory)"),
    Case("model-is-a-folder", model_file(b"/"), "model.gguf cannot be read (Is a directory)"),
    Case("model-not-gguf", model_file(b"not a model"), "model.gguf is not a GGUF file"),
    Case("model-error-names-the-config-key", model_file(b"not a model"), "set engine.gguf"),
    Case("model-gguf-in-config-missing", config(engine={"gguf": "missing.gguf"}),
         "missing.gguf cannot be read (No such file or directory)"),
    Case("model-ollama-without-model", study("--backend", "ollama"), "the ollama backend needs a model name"),
    Case("model-ollama-unreachable", study("--backend", "ollama", "--model", "m", "--host", "http://127.0.0.1:9"),
         "Ollama server at http://127.0.0.1:9 is not reachable (ConnectError)"),
    Case("model-ollama-host-from-environment",
         environment("OLLAMA_HOST", "http://[::1", study("--backend", "ollama", "--model", "m")),
         "OLLAMA_HOST 'http://[::1' is not a server URL"),
    Case("model-ollama-unreachable-with-credentials",
         study("--backend", "ollama", "--model", "m", "--host", "http://user:secret@127.0.0.1:9"),
         "Ollama server at http://***@127.0.0.1:9 is not reachable"),
    # tracking URIs
    Case("tracking-folder-missing", study("--tracking-uri", "sqlite:///nonexistent-dir/mlflow.db"),
         "MLflow tracking URI 'sqlite:///nonexistent-dir/mlflow.db': folder"),
    Case("tracking-unknown-scheme", study("--tracking-uri", "nosuch://x"),
         "MLflow tracking URI 'nosuch://x' has an unknown scheme"),
    Case("tracking-from-environment", environment("MLFLOW_TRACKING_URI", "nosuch://x", study()),
         "MLflow tracking URI 'nosuch://x' has an unknown scheme"),
    Case("tracking-in-config-file", config(tracking={"tracking_uri": "sqlite:///nonexistent-dir/mlflow.db"}),
         "(tracking): MLflow tracking URI 'sqlite:///nonexistent-dir/mlflow.db': folder"),
    Case("tracking-of-compare", command("compare", "smoke", "--tracking-uri", "sqlite:///nonexistent-dir/mlflow.db"),
         "MLflow tracking URI 'sqlite:///nonexistent-dir/mlflow.db': folder"),
]


def catalogue() -> list[Any]:
    params = []
    for case in CASES:
        for folder in ("empty", "recorded"):
            params.append(pytest.param(case, folder, id=f"{case.id}-{folder}"))
    return params


# -- running a row -------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def earlier_stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stores an earlier `pipeline study` left: study 'smoke' in optuna.db, its parent run in mlflow.db."""
    folder = tmp_path_factory.mktemp("earlier")
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder}/optuna.db")
    study = optuna.create_study(study_name="smoke", storage=storage, directions=["maximize", "minimize"])
    study.set_user_attr("definition", {"objectives": "schema_valid_rate:maximize,latency_p95_ms:minimize"})
    study.add_trial(optuna.trial.create_trial(values=[1.0, 900.0]))
    storage.engine.dispose()
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    run = client.create_run(client.create_experiment("smoke"), run_name="smoke")
    client.set_terminated(run.info.run_id)
    return folder


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be rejected before a study starts: fail fast rather than run one."""
    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the bad input was accepted: the study started")

    monkeypatch.setattr("pipeline.commands.study.run_study", started)


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse
        code = exited.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def store_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("*.db")}


@pytest.mark.parametrize("case, folder_state", catalogue())
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, folder_state, tmp_path, monkeypatch, capsys, guarded,
                                                         earlier_stores):
    if folder_state == "recorded":
        for store in earlier_stores.glob("*.db"):
            shutil.copy2(store, tmp_path / store.name)
    argv = case.make(tmp_path, monkeypatch)
    before, stores = files_under(tmp_path), store_state(tmp_path)
    code, out, err = run(capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and case.message in lines[0], lines[0]
    assert out == ""
    assert files_under(tmp_path) == before
    assert store_state(tmp_path) == stores


def test_catalogue_covers_every_kind_of_input():
    kinds = {case.id.split("-")[0] for case in CASES}
    assert kinds == {"config", "dataset", "schema", "manifest", "prompts", "cli", "storage", "model", "tracking",
                     "init", "baseline", "traffic"}
    assert len(CASES) >= 25 and len({case.id for case in CASES}) == len(CASES)


def test_credentials_in_a_host_never_reach_the_terminal(capsys, tmp_path, monkeypatch, guarded):
    argv = study("--backend", "ollama", "--model", "m", "--host", "http://user:s3cret@127.0.0.1:9/?token=t0ken")(
        tmp_path, monkeypatch)
    code, out, err = run(capsys, argv)
    assert code == 2 and "s3cret" not in err + out and "t0ken" not in err + out


# -- the checks the orchestration calls -----------------------------------------------------------------------

@pytest.mark.parametrize("url, message", [
    ("", "the Optuna storage URL is empty; leave it out for the default"),
    ("   ", "the Optuna storage URL is empty"),
    ("not a url", "Optuna storage URL 'not a url' is not a URL; use sqlite:///optuna.db"),
    ("nosuchscheme://x", "has an unknown scheme 'nosuchscheme'"),
    ("sqlit:///optuna.db", "has an unknown scheme 'sqlit'. Did you mean 'sqlite'?"),
    ("sqlite://", "is an in-memory database, so nothing would be kept; name a file, e.g. sqlite:///optuna.db"),
    ("sqlite:///:memory:", "is an in-memory database"),
    ("sqlite:///nonexistent-dir/optuna.db", "nonexistent-dir not found; create it first"),
    ("sqlite:///.", "names a folder, not a file"),
    ("journal://", "names no file; use journal:///path/to/study.log"),
    ("journal://nonexistent-dir/study.log", "nonexistent-dir not found"),
    ("mysql+nosuchdriver://u:secret@db/optuna", "unknown scheme 'mysql+nosuchdriver'"),
])
def test_check_storage_url_rejects(tmp_path, url, message):
    with pytest.raises(ConfigError) as caught:
        check_storage_url(url, "--storage")
    text = str(caught.value)
    assert text.startswith("--storage: ") and message in text and len(text.splitlines()) == 1
    assert "secret" not in text
    assert files_under(tmp_path) == set()


def test_check_storage_url_accepts_what_optuna_opens(tmp_path):
    for url in ("sqlite:///optuna.db", f"sqlite:///{tmp_path}/optuna.db", "journal://study.log",
                f"journal://{tmp_path}/study.log"):
        check_storage_url(url, "--storage")
    (tmp_path / "optuna.db").touch()
    check_storage_url("sqlite:///optuna.db", "--storage", existing=True)
    with pytest.raises(ConfigError, match="other.db not found; run `pipeline study` first"):
        check_storage_url("sqlite:///other.db", "--storage", existing=True)
    assert files_under(tmp_path) == {"optuna.db"}  # checking opens nothing


def test_check_storage_url_names_a_missing_driver():
    with pytest.raises(ConfigError) as caught:
        check_storage_url("postgresql+nosuch://user:secret@db/optuna", "study.yaml (study)")
    assert "unknown scheme" in str(caught.value) and "secret" not in str(caught.value)


@pytest.mark.parametrize("uri, message", [
    ("", "MLflow tracking URI '' is empty"),
    ("nosuch://x", "MLflow tracking URI 'nosuch://x' has an unknown scheme 'nosuch'. Use sqlite:///mlflow.db"),
    ("sqlite:///nonexistent-dir/mlflow.db", "nonexistent-dir not found; create it first"),
    ("sqlite://", "is an in-memory database"),
    ("http://", "has no host; use http://HOST:PORT"),
    ("http://[::1", "is not a URI (Invalid IPv6 URL)"),
    ("nonexistent-dir/mlruns", "nonexistent-dir not found"),
    ("file:///nonexistent-dir/mlruns", "/nonexistent-dir not found"),
    ("https://user:secret@[::1", "'https://***@[::1'"),
])
def test_check_tracking_uri_rejects(tmp_path, uri, message):
    with pytest.raises(ConfigError) as caught:
        check_tracking_uri(uri, "--tracking-uri")
    text = str(caught.value)
    assert text.startswith("--tracking-uri: ") and message in text and len(text.splitlines()) == 1
    assert "secret" not in text
    assert files_under(tmp_path) == set()


def test_check_tracking_uri_accepts_what_mlflow_opens(tmp_path):
    (tmp_path / "study.yaml").touch()
    for uri in ("sqlite:///mlflow.db", f"sqlite:///{tmp_path}/mlflow.db", "mlruns", f"file://{tmp_path}/mlruns",
                "http://127.0.0.1:5000", "https://mlflow.example.com", "databricks"):
        check_tracking_uri(uri)
    with pytest.raises(ConfigError, match=r"^MLflow tracking URI 'study.yaml' names a file, not a folder"):
        check_tracking_uri("study.yaml")
    assert files_under(tmp_path) == {"study.yaml"}
