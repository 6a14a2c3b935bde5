"""An export-friendly KV cache: past key/value tensors in, concatenated present tensors out.

It implements the specs :class:`~specs.protocols.KVCache` protocol with plain tensor operations only (no Python
ints taken from tensors, no in-place writes), so torch.export, the ONNX exporter and torch.jit.trace record it as
graph ops. This is the decoder-with-past convention of Hugging Face Optimum and onnxruntime-genai: the graph takes
``past_key_values.{i}.key/value`` (B, KVH, S, Dh) and returns ``present.{i}.key/value`` (B, KVH, S+T, Dh).

Every row has the same past length S, so ``seq_lens`` is S for every row, derived from the past tensor itself
(a sum over a ones tensor) so that it stays a graph value for every exporter. The cache declares the specs
KVCache ``fixed_shape`` capability (``append`` returns ``max_seq_len`` slots, here exactly S + T, and the model
masks by ``seq_lens`` with tensor ops instead of reading lengths on the host): ``max_seq_len`` is then a SymInt
under torch.export and a traced size under torch.jit.trace, so the batch, sequence and past axes stay dynamic.
Left padding is expressed by the ``attention_mask`` input, as in Hugging Face decoders.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from export.errors import ExportError


class PastKVCache:
    """KVCache over explicit per-layer (past_k, past_v) tensors, each (B, KVH, S, Dh); S may be 0.

    ``new_tokens`` is T, the number of tokens the coming forward appends (``input_ids.shape[1]``).
    """

    fixed_shape = True

    def __init__(self, past: Sequence[tuple[torch.Tensor, torch.Tensor]], new_tokens: int):
        if not past:
            raise ExportError("PastKVCache needs at least one layer of past key/values")
        self.new_tokens = new_tokens
        self.n_layers = len(past)
        self._past = list(past)
        self._present: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.n_layers
        self._advanced = False

    @property
    def seq_lens(self) -> torch.Tensor:
        """(B,) int64: S for every row."""
        k0 = self._past[0][0]
        return torch.ones_like(k0[:, 0, :, 0], dtype=torch.long).sum(-1)

    @property
    def max_seq_len(self) -> int:
        """S + T: the key length every ``append`` of this forward returns."""
        return self._past[0][0].shape[2] + self.new_tokens

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past_k, past_v = self._past[layer]
        k_all = torch.cat([past_k, k.to(past_k.dtype)], dim=2)  # (B, KVH, S+T, Dh)
        v_all = torch.cat([past_v, v.to(past_v.dtype)], dim=2)
        self._present[layer] = (k_all, v_all)
        return k_all, v_all

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._past[layer]

    def advance(self, n_tokens: int) -> None:
        missing = [i for i, p in enumerate(self._present) if p is None]
        if missing:
            raise ExportError(f"the model advanced the cache without appending to layers {missing}")
        self._past = [p for p in self._present if p is not None]
        self._present = [None] * self.n_layers
        self._advanced = True

    def presents(self) -> list[torch.Tensor]:
        """[k_0, v_0, k_1, v_1, ...] after the forward pass (the model must have called ``advance``)."""
        if not self._advanced or any(p is not None for p in self._present):
            raise ExportError("the model did not append to and advance the cache (specs KVCache protocol: "
                              "append(layer, k, v) for every layer, then advance(T))")
        return [t for kv in self._past for t in kv]

    def evict(self, rows: Sequence[int]) -> None:
        raise ExportError("an exported decoder graph cannot evict rows; drop them from the inputs instead")

    def reset(self) -> None:
        raise ExportError("an exported decoder graph cannot reset its cache; pass empty past tensors instead")
