"""What a setting holds in memory: the KV cache computed from the model's metadata against llama-server's own
account of it, and the measured peak resident memory of what serves a trial, on every backend that can tell."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from rich.console import Console

from pipeline.engines.embedded import bundled_model_path, gguf_metadata
from pipeline.engines.llama_server import LlamaServerBackend
from pipeline.engines.memory import MIB, context_cells, kv_cache_mib, peak_rss_mib, reset_peak_rss
from pipeline.engines.ollama import OllamaBackend
from pipeline.engines.settings import settings_of
from pipeline.measure.metrics import measured_metrics
from pipeline.measure.runner import run_trial
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend
from tests.conftest import plan, smoke_config

SETTING = {"num_ctx": 1024, "num_predict": 16, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 0,
           "prompt_variant": "compact", "example_selection": "static", "format": "off"}
# llama.cpp's own account, logged when a context is made (verbose): the whole cache and each half
KV_LINE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells.*K \((\w+)\): +([\d.]+) MiB, "
                     r"V \((\w+)\): +([\d.]+) MiB")


def test_a_context_is_rounded_up_to_whole_blocks_of_cells():
    assert [context_cells(n) for n in (1, 256, 1000, 1024, 3000)] == [256, 256, 1024, 1024, 3072]


def test_the_kv_cache_needs_the_models_metadata():
    metadata = gguf_metadata(bundled_model_path())
    assert kv_cache_mib(metadata, 1024) == 22.5  # 30 layers x 1024 cells x 3 KV heads x 64 x 2 values x 2 bytes
    assert kv_cache_mib({k: v for k, v in metadata.items() if not k.endswith("block_count")}, 1024) is None
    assert kv_cache_mib(metadata, 1024, type_k="q9_9") is None


@pytest.mark.parametrize(("num_ctx", "server"), [
    (1000, {}),
    (2048, {"parallel": 2}),
    (1024, {"cache_type_k": "q8_0", "cache_type_v": "q8_0", "flash_attn": "on"}),
    (3000, {"parallel": 3, "cache_type_k": "q4_0"}),
], ids=["1000-f16", "2x2048-f16", "1024-q8_0", "3x3000-q4_0-f16"])
def test_the_kv_cache_computed_is_the_one_llama_server_allocates(num_ctx, server):
    backend = LlamaServerBackend(extra_args=("--verbose",), timeout_s=60)
    try:
        settings = settings_of({**SETTING, "num_ctx": num_ctx, **server}, seed=0)
        backend.start_trial(num_ctx, server=settings.server)
        held = backend.resources(settings)
        logged = KV_LINE.findall(backend._process.log_tail(20000))
        assert logged, backend._process.log_tail(5)
        total, cells, type_k, _, type_v, _ = logged[-1]
        assert (type_k, type_v) == (server.get("cache_type_k", "f16"), server.get("cache_type_v", "f16"))
        assert int(cells) * max(1, server.get("parallel", 1)) >= num_ctx
        assert held["kv_cache_mb"] == pytest.approx(float(total), abs=0.01)
        # the server's peak holds the weights it maps and its cache
        assert held["memory_mb"] > held["kv_cache_mb"] and held["model_mb"] > 50
    finally:
        backend.close()


def test_a_processs_peak_is_measured_from_a_reset():
    me = os.getpid()
    block = np.ones(64 * MIB // 8)  # 64 MiB touched
    peak = peak_rss_mib(me)
    del block
    reset_peak_rss(me)
    assert peak_rss_mib(me) < peak - 48


def test_a_trial_in_process_records_its_memory(engine, experiment, prompts):
    outcome = run_trial(settings_of(SETTING, seed=0), experiment.split("dev", 2), plan(experiment, prompts, engine))
    held = outcome.resources
    assert held["kv_cache_mb"] == 22.5 and held["memory_mb"] > held["model_mb"] > 50
    metrics = measured_metrics(outcome.records, resources=held)
    assert {k: metrics[k] for k in held} == held  # one key the engine reports, one declared metric


def test_ollama_reports_what_it_holds_for_the_loaded_model(double, experiment, prompts):
    backend = OllamaBackend("tuned", host=double.url, timeout_s=30)
    try:
        outcome = run_trial(settings_of(SETTING, seed=0), experiment.split("dev", 1),
                            plan(experiment, prompts, backend))
        # /api/ps size (the double: the model file's) and the KV cache from /api/show's model_info
        assert outcome.resources == {"kv_cache_mb": 22.5,
                                     "memory_mb": bundled_model_path().stat().st_size / MIB}
    finally:
        backend.close()


def test_a_priced_study_records_what_each_trial_costs_and_can_minimise_it(tmp_path, write_config):
    config = write_config(smoke_config(study={"name": "priced", "trials": 3}, cost={"per_hour": 0.9},
                                       objectives=[{"metric": "field_accuracy"},
                                                   {"metric": "cost_per_1k_answers", "direction": "minimize"}]))
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=FakeBackend())
    trials = run_study(prepared, trials=3, console=Console(file=io.StringIO())).trials
    # the price of each trial's span spread over its answers: at its measured throughput (FakeBackend: no memory)
    expected = 0.9 / 3600 / trials["throughput_rps"] * 1000
    assert ((trials["cost_per_1k_answers"] - expected).abs() < 1e-9 * expected).all()
    assert "memory_mb" not in trials
