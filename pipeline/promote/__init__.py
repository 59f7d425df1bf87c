"""Promotion: choosing a point of a front, the held-out check against the baseline, the bundle (Modelfile,
launch command, sidecar) and its check (replayed from the written files), and side-by-side comparison of two
settings files. One job per module: ``policies`` (one module a policy, a registry), ``choose`` (the named
policy's point and the menu of what each would promote, from a snapshot of the study), ``bundle``, ``check``,
``modelfile`` (Ollama's grammar),
``promotion`` (the held-out check and the verdict), ``compare_settings``. Optuna and MLflow are read through
:mod:`pipeline.search.snapshot` and :mod:`pipeline.tracking.promotion`.

May import: every room below it: :mod:`pipeline.search` and what it may import.
"""
