"""Measurement: one setting run over requests (the runner), the trial metrics declared and summarised, their
intervals, racing on the same requests, paired gain, side-by-side arms, and the tables of a trial's requests.

May import: :mod:`pipeline.cache`, :mod:`pipeline.job`, :mod:`pipeline.engines` and :mod:`pipeline.errors`.
"""
