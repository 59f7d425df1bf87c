"""The response cache between a client and the engine: answers kept by everything that made them and served again
to the same request (exact) or to one that means nearly the same (semantic: an embedding, a threshold and a guard on
the literal parts). A trial measures through it (``cache`` is a searched setting); a promoted bundle names it and
user code serves with it (docs/cache.md).

May import: :mod:`pipeline.job` (an answer's label), :mod:`pipeline.engines` and :mod:`pipeline.errors`.
"""
