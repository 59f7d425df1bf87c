"""Benchmarks: measurement fidelity, pipeline overhead, search efficiency and early abort.

Each benchmark is one command, ``python -m benchmarks NAME``, writing ``NAME.json`` (machine-readable) and
``NAME.md`` (a short report) into ``benchmarks/results``; ``--smoke`` runs a tiny size that only checks the
benchmark works. BENCHMARKS.md summarises the latest full runs.
"""
