"""lmstack serve: decode loops (greedy, sampling, beam search, speculative) for any specs LanguageModel, a
continuous-batching engine over the paged KV cache, and an OpenAI-compatible HTTP server (``python -m serve``).

Entry points: :func:`serve.generate.generate`, :class:`serve.engine.Engine`, :func:`serve.server.build_app`.
"""
