"""``pipeline import-calls``: a function-calling set (questions, offered functions, acceptable argument values)
written as a new job (:mod:`pipeline.job.calls`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from rich.console import Console

from pipeline.commands import options
from pipeline.errors import DataError
from pipeline.job.calls import convert_calls, router_keywords
from pipeline.job.files import jsonl_objects
from pipeline.job.scaffold import scaffold

__all__ = ["add_parser", "run"]

_SYSTEM = """\
You turn a user's request into one call of the functions it offers. Answer with one JSON object and nothing
else: {"name": "<the function's name>", "arguments": {"<argument>": <value>, ...}}. Give every argument the
request sets and every required one; leave out the others.
"""
_MANIFEST = """\
# {name}: a function-calling set converted by `pipeline import-calls` from {source}.
# Each line offers its own functions (`functions`, shown to the model) and carries its answer's schema
# (`tools`); `accept` lists the other acceptable values of an argument and the arguments that may be left out.
schema_field: tools
dataset: dataset.jsonl
input: "Functions: {{functions}}\\n\\nRequest: {{request}}"
label: /name
scoring:
  default: text        # strings equal ignoring case and repeated spaces; numbers equal as JSON (1 = 1.0)
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("import-calls", help="write a function-calling set (question, function, ground "
                                                      "truth per line) as a new job")
    parser.add_argument("questions", type=Path, help="JSON Lines: question, function list, and ground_truth or id")
    parser.add_argument("--answers", type=Path, help="JSON Lines of {id, ground_truth}, when the questions file "
                                                     "holds no ground truth")
    parser.add_argument("--name", required=True, help="the job's name: experiments/NAME, prompts/NAME, "
                                                      "configs/NAME.yaml")
    parser.add_argument("--holdout", type=options.share, default=0.4,
                        help="share of the lines held out for promotion (default 0.4)")
    parser.add_argument("--few-shot", type=options.positive_int, default=2,
                        help="dev lines moved to the few-shot pool, the first its warm-up request (default 2)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the project folder (default: here)")


def run(args: argparse.Namespace, console: Console) -> int:
    shape = "question, function and ground_truth (or an id the --answers file has)"
    questions = list(jsonl_objects(args.questions, shape))
    answers = None
    if args.answers is not None:
        answers = {str(item.get("id")): item.get("ground_truth")
                   for _, item in jsonl_objects(args.answers, "id and ground_truth")}
    converted = convert_calls(questions, answers, holdout=args.holdout)
    dev = [line for line in converted.lines if line["split"] == "dev"]
    pool, lines = dev[:args.few_shot], [line for line in converted.lines if line not in dev[:args.few_shot]]
    if not any(line["split"] == "dev" for line in lines) or not any(line["split"] == "holdout" for line in lines):
        raise DataError(f"{args.questions}: {len(converted.lines)} lines converted ({_skipped(converted)}), too few "
                        "for a dev and a held-out split and the few-shot pool; add lines or change --holdout")
    written = scaffold(args.name, args.root)
    experiment = args.root / "experiments" / args.name
    prompts = args.root / "prompts" / args.name
    (experiment / "schema.json").unlink()  # each line carries its own
    written.remove(experiment / "schema.json")
    (experiment / "experiment.yaml").write_text(_MANIFEST.format(name=args.name, source=args.questions.name))
    (experiment / "dataset.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    (experiment / "README.md").write_text(_readme(args, converted, len(lines), len(pool)))
    (prompts / "default.txt").write_text(_SYSTEM)
    (prompts / "examples.jsonl").write_text("".join(
        json.dumps({"functions": line["functions"], "tools": line["tools"], "request": line["request"],
                    "answer": line["expected"]}, ensure_ascii=False) + "\n" for line in pool))
    config = args.root / "configs" / f"{args.name}.yaml"
    shots = ", ".join(str(n) for n in range(len(pool) + 1))
    config.write_text(config.read_text().replace("few_shot: {choices: [0, 1, 2]}", f"few_shot: {{choices: [{shots}]}}"))
    names = sorted({line["expected"]["name"] for line in converted.lines})
    (prompts / "router.yaml").write_text(yaml.safe_dump({"keywords": router_keywords(names), "default": names[0]},
                                                        sort_keys=False))
    out = options.stdout()
    for path in written:
        out.print(f"wrote {path}", markup=False, highlight=False)
    out.print(f"{len(lines)} requests ({sum(line['split'] == 'holdout' for line in lines)} held out), {len(pool)} "
              f"in the few-shot pool; {_skipped(converted)}; of {converted.arguments} arguments, "
              f"{converted.with_alternatives} accept other values and {converted.may_be_left_out} may be left out"
              + (f" ({converted.relaxed} of them required by the function: no longer)" if converted.relaxed else "")
              + (f"; {converted.dropped} acceptable value{'s' if converted.dropped > 1 else ''} the functions' own "
                 "parameters do not allow dropped" if converted.dropped else ""),
              markup=False, highlight=False)
    out.print(f"Run: python -m pipeline study --config {config}",
              markup=False, highlight=False)
    return 0


def _skipped(converted) -> str:
    if not converted.skipped:
        return "none skipped"
    return "skipped: " + ", ".join(f"{count} {why}" for why, count in converted.skipped.most_common())


def _readme(args: argparse.Namespace, converted, requests: int, pool: int) -> str:
    return (f"# {args.name}\n\nConverted by `python -m pipeline import-calls {args.questions.name}` "
            f"(held out: {args.holdout:g}).\n\n- {requests} requests, {pool} more in the few-shot pool; "
            f"{_skipped(converted)}.\n- The answer: `{{\"name\": <function>, \"arguments\": {{...}}}}`; `expected` "
            "holds each argument's first acceptable value, `accept` the others (`alternatives`) and the arguments that "
            "may be left out (`optional`).\n- An argument whose only acceptable value was `\"\"` is not expected: "
            "an answer that gives it is judged wrong there.\n")
