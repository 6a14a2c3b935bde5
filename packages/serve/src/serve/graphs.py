"""The engine's decode step as CUDA graphs: one per padded batch size, replayed for any running set of requests.

An eager decode step of a 1B model launches some 300 kernels from Python, each a few microseconds of GPU work: at
64 rows the GPU idles most of the step. :class:`DecodeGraphs` captures ``model(tokens, cache=view)`` once per row
count R in (1, 2, 4, ..., max_batch_size) over a paged cache's fixed-shape decode views
(``cache.decode_view``: static lengths, block tables and write slots, attention through the registry's
``decode_attention`` op); a step pads the running requests to the next R, copies their lengths, block tables and
last tokens into the static buffers and replays the graph (vLLM's CUDA-graph decode). On a CPU (tests) or with
``capture=False`` the same views run eagerly, so the path is checked everywhere. The graphs share one memory pool
and are captured largest first; capture needs the model idle on the capturing thread.

Shape legend: R padded rows, B live rows, V vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from specs.errors import ConfigError

log = logging.getLogger(__name__)


def batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two below ``max_batch_size``, then ``max_batch_size`` itself."""
    sizes, r = [], 1
    while r < max_batch_size:
        sizes.append(r)
        r *= 2
    return [*sizes, max_batch_size]


class DecodeGraphs:
    """Decode steps over ``cache`` (a paged cache with ``decode_view``) for up to ``max_batch_size`` rows."""

    def __init__(self, model: Any, cache: Any, max_batch_size: int, max_seq_len: int, *, capture: bool):
        self.model, self.cache = model, cache
        self.sizes = batch_sizes(max_batch_size)
        device = cache.device
        self.views = {r: cache.decode_view(r, max_seq_len, model.config) for r in self.sizes}
        self.tokens = {r: torch.zeros(r, 1, dtype=torch.long, device=device) for r in self.sizes}
        self.logits: dict[int, torch.Tensor] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if capture:
            self._capture()

    @classmethod
    def try_build(cls, model: Any, cache: Any, max_batch_size: int, max_seq_len: int, *,
                  capture: bool) -> DecodeGraphs | None:
        """The graphs, or None (logged) when this model or cache has no mask-free decode view."""
        if not hasattr(cache, "decode_view"):
            return None
        try:
            return cls(model, cache, max_batch_size, max_seq_len, capture=capture)
        except ConfigError as exc:
            log.info("decode steps run eagerly: %s", exc)
            return None

    def _capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        for r in reversed(self.sizes):  # largest first: the smaller graphs reuse its memory
            view, tokens = self.views[r], self.tokens[r]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(2):  # kernel choices, Triton compilation and allocator warm-up, outside the graph
                    self.model(tokens, cache=view)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
                self.logits[r] = self.model(tokens, cache=view)
            self.graphs[r] = graph
        torch.cuda.synchronize()

    def step(self, seq_ids: Sequence[Hashable], last_tokens: Sequence[int]) -> torch.Tensor:
        """Decode one token for each sequence (room for it reserved in the cache); logits (B, V), and the cache's
        host lengths advance by one."""
        B = len(seq_ids)
        r = next(s for s in self.sizes if s >= B)
        view, tokens = self.views[r], self.tokens[r]
        view.load(seq_ids)
        host = torch.zeros(r, 1, dtype=torch.long)
        host[:B, 0] = torch.tensor(list(last_tokens), dtype=torch.long)
        tokens.copy_(host)
        if r in self.graphs:
            self.graphs[r].replay()
            logits = self.logits[r]
        else:
            logits = self.model(tokens, cache=view)
        view.commit()
        return logits[:B, -1]
