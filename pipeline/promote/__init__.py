"""Promotion: choosing a point of a front, the held-out check against the baseline, the bundle (Modelfile,
launch command, sidecar) and its smoke request, and side-by-side comparison of two settings files.

May import: every room below it: :mod:`pipeline.search` and what it may import.
"""
