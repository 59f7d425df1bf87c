"""Serving settings and load, without a server: flags, combinations, config parsing, goodput, closed-loop clients."""

from __future__ import annotations

import math
import threading
import time

import pytest

from pipeline.engines.serving import SERVER_SETTINGS, combination_problem, launch_args
from pipeline.engines.settings import settings_of
from pipeline.job.scoring import AnswerScore
from pipeline.measure.metrics import summarize
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Constraint
from pipeline.measure.runner import run_trial
from pipeline.search.config import ConfigError, load_config
from pipeline.search.objectives import request_slos
from pipeline.testing import FakeBackend
from tests.conftest import plan, smoke_config

SETTING = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 0,
           "prompt_variant": "compact", "example_selection": "static", "format": "off"}


def test_launch_args_give_every_slot_num_ctx_and_name_each_flag():
    assert launch_args(1024, {}) == ["--ctx-size", "1024", "--parallel", "1"]
    args = launch_args(1024, {"parallel": 4, "cache_type_k": "q8_0", "flash_attn": "on", "batch_size": 256})
    assert args == ["--ctx-size", "4096", "--parallel", "4", "--cache-type-k", "q8_0", "--flash-attn", "on",
                    "--batch-size", "256"]
    assert all(s.flag.startswith("--") and s.ollama and s.vllm for s in SERVER_SETTINGS.values())


@pytest.mark.parametrize("server, problem", [
    ({"cache_type_v": "q8_0", "flash_attn": "off"}, "needs flash attention"),
    ({"cache_type_v": "q4_0", "flash_attn": "off", "cache_type_k": "f16"}, "needs flash attention"),
    ({"ubatch_size": 1024, "batch_size": 512}, "ubatch_size 1024 is larger than batch_size 512"),
    ({"ubatch_size": 4096}, "larger than batch_size 2048"),  # llama-server's default batch
])
def test_settings_that_do_not_go_together(server, problem):
    assert problem in combination_problem(server)


@pytest.mark.parametrize("server", [{}, {"cache_type_v": "q8_0", "flash_attn": "on"}, {"cache_type_v": "q8_0"},
                                    {"cache_type_v": "f16", "flash_attn": "off"}, {"ubatch_size": 256}])
def test_settings_that_go_together(server):
    assert combination_problem(server) is None


def test_config_reads_serving_settings_and_concurrency(write_config):
    raw = smoke_config(evaluation={"concurrency": {"choices": [1, 2, 4]}})
    raw["search_space"].update({"parallel": {"choices": [1, 2]}, "flash_attn": True, "cache_type_k": "q8_0"})
    config = load_config(write_config(raw))
    space = config.search_space
    assert space["concurrency"].choices == (1, 2, 4)
    assert space["flash_attn"].choices == ("on",)  # YAML 1.1 reads a bare `on` as true
    assert space["parallel"].choices == (1, 2)
    single = load_config(write_config(smoke_config(evaluation={"concurrency": 1}), "one.yaml"))
    assert "concurrency" not in single.search_space  # one client: today's measurement, nothing recorded
    with pytest.raises(ConfigError, match="unknown key 'concurrency'"):
        load_config(write_config(smoke_config(search_space={**raw["search_space"], "concurrency": 2}), "x.yaml"))


def test_settings_carry_serving_values_flat_in_params_and_in_the_load_key():
    settings = settings_of({**SETTING, "parallel": 2, "concurrency": 4, "cache_type_k": "q8_0"}, seed=1)
    assert settings.server == {"parallel": 2, "cache_type_k": "q8_0"} and settings.concurrency == 4
    params = settings.as_params()
    assert params["parallel"] == 2 and params["concurrency"] == 4 and "serving" not in params
    assert settings.load_key == (1024, (("cache_type_k", "q8_0"), ("parallel", 2)))
    other_load = settings_of({**SETTING, "parallel": 2, "concurrency": 1, "cache_type_k": "q8_0"}, seed=1)
    assert other_load.load_key == settings.load_key  # the load is not a server setting: no restart
    plain = settings_of(SETTING, seed=1)
    assert plain.concurrency == 1 and plain.server == {} and set(plain.as_params()) == {*SETTING, "seed"}


def test_request_slos_take_the_strictest_latency_limits():
    slos = request_slos((Constraint("latency_p95_ms", max=2000), Constraint("latency_p50_ms", max=800),
                         Constraint("ttft_p95_ms", max=300), Constraint("field_accuracy", min=0.5)))
    assert slos == {"latency_ms": 800, "ttft_ms": 300}


def record(latency, ttft=None, *, failed=False, tokens=10):
    return RequestRecord("r", "", {}, "", AnswerScore(True, True, True, 1.0), latency, ttft_ms=ttft,
                         output_tokens=tokens, failed=failed)


def test_goodput_counts_requests_within_every_limit_per_second():
    records = [record(100, 10), record(500, 10), record(100, 90), record(float("nan"), failed=True)]
    metrics = summarize(records, span_s=2.0, slos={"latency_ms": 200, "ttft_ms": 50})
    assert metrics["throughput_rps"] == 1.5  # three completed in two seconds
    assert metrics["goodput_rps"] == 0.5  # only the first met both limits
    assert metrics["output_tokens_per_s"] == 15
    assert summarize(records, span_s=2.0)["goodput_rps"] == 1.5  # no limits: every completed request
    assert "throughput_rps" not in summarize(records)


class SlowFake(FakeBackend):
    """The fake backend taking real time per request, counting how many requests are in flight at once and
    keeping when the first one started and the last one ended."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        self.first_start = self.last_end = None

    def generate(self, messages, settings, *, schema):
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            if self.first_start is None:
                self.first_start = time.perf_counter()
        time.sleep(0.05)
        with self.lock:
            self.in_flight -= 1
            self.last_end = time.perf_counter()
        return super().generate(messages, settings, schema=schema)


@pytest.mark.parametrize("clients", [1, 3])
def test_closed_loop_clients_keep_that_many_requests_in_flight(experiment, prompts, clients):
    backend = SlowFake()
    examples = experiment.split("dev", 9)
    outcome = run_trial(settings_of({**SETTING, "concurrency": clients}, seed=0), examples,
                        plan(experiment, prompts, backend, warmup_requests=0))
    assert len(outcome.records) == 9 and backend.most == clients
    assert sorted(r.request_id for r in outcome.records) == sorted(e.id for e in examples)  # each once
    # Bounds that hold at any machine speed: a client sends its requests one after another, each sleeps at least
    # 50 ms, and one client takes at least 9 / clients of them; the span covers every request. No upper bound: on
    # a loaded machine the clients' threads may wait any time to run (that they overlap is `most` above).
    assert outcome.span_s >= math.ceil(9 / clients) * 0.05
    assert backend.last_end - backend.first_start <= outcome.span_s


def test_closed_loop_clients_stop_taking_requests_when_the_trial_is_aborted(experiment, prompts):
    backend = SlowFake(answer=lambda messages, settings: "not json")
    examples = experiment.split("dev", 20)
    outcome = run_trial(settings_of({**SETTING, "concurrency": 2}, seed=0), examples,
                        plan(experiment, prompts, backend, warmup_requests=0,
                             abort_on=(Constraint("schema_valid_rate", min=0.9),)))
    assert outcome.aborted is not None
    assert len(outcome.records) <= outcome.aborted.requests + 1  # at most the other client's request in flight


def test_a_baseline_gets_the_fixed_load_and_must_give_a_searched_one(tmp_path, write_config):
    from pipeline.search.prepare import prepare_study

    baseline = {**SETTING, "num_predict": 64}
    fixed = write_config(smoke_config(evaluation={"concurrency": 2}, baseline=baseline), "fixed.yaml")
    prepared = prepare_study(load_config(fixed), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=FakeBackend())
    assert prepared.config.baseline["concurrency"] == 2  # measured under the study's load, as every trial
    searched = write_config(smoke_config(evaluation={"concurrency": {"choices": [1, 2]}}, baseline=baseline),
                            "searched.yaml")
    with pytest.raises(ConfigError, match="baseline\\): missing concurrency, which search_space searches"):
        prepare_study(load_config(searched), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=FakeBackend())
