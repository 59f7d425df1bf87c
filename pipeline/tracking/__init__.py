"""Tracking: every MLflow call — study and trial runs, comparison and promotion runs, tables, environment tags —
and where the stores are. The only room that imports mlflow.

May import: :mod:`pipeline.render`, :mod:`pipeline.measure`, :mod:`pipeline.cache`, :mod:`pipeline.job`,
:mod:`pipeline.engines` and :mod:`pipeline.errors`.
"""
