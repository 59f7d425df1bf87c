"""The job, as files: the experiment manifest, its schemas, labelled requests, scoring rules and JSON Pointers,
the input template, prompt variants and routers, how an answer is judged field by field, and the scaffold
``init`` writes.

May import: :mod:`pipeline.engines` (a prompt is a list of engine messages) and :mod:`pipeline.errors`.
"""
