"""The private APIs of libraries, each fenced in one module, still work on the installed versions.

Each fence (``pipeline/search/_optuna.py``, ``pipeline/tracking/_mlflow.py``, ``pipeline/engines/_ollama.py``,
``pipeline/engines/_llama_cpp.py``) says which version it was read against. These tests fail with the library,
the private name and the fence to re-read when the pinned version moves or a name is gone.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from importlib.metadata import version
from types import ModuleType

import httpx
import numpy as np
import optuna
import pytest

from pipeline.engines import _llama_cpp, _ollama
from pipeline.search import _optuna
from pipeline.tracking import _mlflow
from tests.conftest import ROOT

FENCES = {"optuna": _optuna, "mlflow": _mlflow, "ollama": _ollama, "llama_cpp_python": _llama_cpp}


@contextlib.contextmanager
def fenced(library: str, name: str) -> Iterator[None]:
    """Turn a missing private name into a failure that says what to re-read."""
    fence = FENCES[library]
    try:
        yield
    except (AttributeError, ImportError, TypeError) as exc:
        pytest.fail(f"{library} {version(library)}: {name} is gone or changed ({exc}); {fence.__name__} was read "
                    f"against {fence.READ_AGAINST}: re-read that release's source and mend the fence")


@pytest.mark.parametrize(("library", "fence"), FENCES.items())
def test_each_fence_was_read_against_the_pinned_version(library: str, fence: ModuleType):
    pinned = re.search(rf'"{library.replace("_", "[-_]")}==([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.I)
    assert pinned, f"pyproject.toml pins no {library}"
    assert fence.READ_AGAINST == pinned.group(1) == version(library), (
        f"{library}: pyproject.toml pins {pinned.group(1)}, {version(library)} is installed, {fence.__name__} was "
        f"read against {fence.READ_AGAINST}: re-read the private names it uses in the pinned release")


def test_optuna_private_names():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in ([1.0, 2.0], [0.5, 1.0], [0.4, 3.0]):
        study.tell(study.ask(), values)
    with fenced("optuna", "Trial._trial_id / Study._storage"):
        trial = study.trials[1]
        assert _optuna.storage_of(study).get_trial(_optuna.trial_id(trial)).number == 1
    with fenced("optuna", "optuna.study._multi_objective._get_pareto_front_trials_by_trials"):
        front = _optuna.pareto_front_trials(study.trials, study.directions, consider_constraint=False)
        assert sorted(t.number for t in front) == sorted(t.number for t in study.best_trials) == [0, 1]
    with fenced("optuna", "optuna.study._multi_objective._is_pareto_front"):
        assert _optuna.is_pareto_front(np.array([[1.0, 1.0], [2.0, 2.0], [0.5, 3.0]])).tolist() == [True, False, True]
    with fenced("optuna", "optuna._hypervolume.compute_hypervolume"):
        assert _optuna.hypervolume(np.array([[0.5, 0.5], [0.25, 0.75]]), np.ones(2)) == pytest.approx(0.3125)


def test_mlflow_private_names():
    import mlflow.data
    import pandas as pd
    from mlflow.entities import Dataset

    with pytest.warns(UserWarning), fenced("mlflow", "Dataset._to_mlflow_entity"):
        data = mlflow.data.from_pandas(pd.DataFrame({"a": [1]}), name="d", digest="abc")
        entity = _mlflow.dataset_entity(data)
    assert isinstance(entity, Dataset) and entity.name == "d" and entity.digest == "abc"


def test_ollama_private_names():
    import ollama

    with fenced("ollama", "Client._client"):
        client = _ollama.http_client(ollama.Client(host="http://127.0.0.1:9"))
    assert isinstance(client, httpx.Client) and str(client.base_url).startswith("http://127.0.0.1:9")
    client.close()


@pytest.mark.slow
def test_llama_cpp_private_names(engine):
    import llama_cpp

    with fenced("llama_cpp_python", "llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts"):
        with _llama_cpp.without_extra_buffers(llama_cpp.llama_cpp):
            assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is False
        assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True
    with fenced("llama_cpp_python", "Llama._model.token_get_text"):
        eos = engine._vocab.token_eos()
        # the chat template's end of turn in SmolLM2's vocabulary, as Llama.__init__ gives its own formatter
        assert _llama_cpp.token_text(engine._vocab, eos) == "<|im_end|>"
    engine.start_trial(512)
    with fenced("llama_cpp_python", "Llama._ctx.ctx"):
        handle = _llama_cpp.context_handle(engine._contexts[512])
        assert llama_cpp.llama_perf_context(handle).n_eval >= 0


# names of llama-cpp-python's private members that only the fence may read
_LLAMA_CPP_PRIVATE = re.compile(r"(?<!\bself)\._(?:model|ctx|batch|sampler)\b")


def test_llama_cpp_python_is_read_past_its_public_surface_only_in_its_fence():
    """``Llama``'s private members (``_model``, ``_ctx`` ...) are read in ``engines/_llama_cpp.py`` and nowhere
    else; the Ollama double reads the embedded backend through its public properties."""
    offenders = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if path.name == "_llama_cpp.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _LLAMA_CPP_PRIVATE.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], "\n".join(offenders)
    double = (ROOT / "pipeline" / "testing" / "ollama_double.py").read_text()
    assert not re.search(r"engine\._", double), "the Ollama double reads the embedded backend's internals"
