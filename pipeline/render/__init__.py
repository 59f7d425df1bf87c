"""Rendering: what a person reads or looks at, from plain data — progress lines and pictures of fronts.
The only room that imports matplotlib or plotly.

May import: :mod:`pipeline.measure`, :mod:`pipeline.cache`, :mod:`pipeline.job`, :mod:`pipeline.engines` and
:mod:`pipeline.errors`.
"""
