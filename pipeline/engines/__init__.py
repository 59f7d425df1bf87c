"""Engines: what serves the model. The Backend protocol and its data (messages, settings, generations, declared
capabilities), the backend registry, and the backends: embedded (llama.cpp in process), Ollama, any
OpenAI-compatible server, llama-server started by the tool; serving flags, token counting, truncation detection.

May import: nothing of the package but :mod:`pipeline.errors`.
"""
