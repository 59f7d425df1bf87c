"""Search: the study's config, the space turned into suggestions, samplers, storage, the study run, objectives,
top-ups, reuse, fronts, drift control and the comparison of studies. The only room that imports optuna.

May import: every room below it: :mod:`pipeline.tracking`, :mod:`pipeline.render`, :mod:`pipeline.measure`,
:mod:`pipeline.cache`, :mod:`pipeline.job`, :mod:`pipeline.engines`, :mod:`pipeline.errors`.
"""
