"""The transformer body shared by the decoder LM and the encoder: embeddings, blocks, final norm.

Named as Hugging Face's LlamaModel (``embed_tokens``, ``layers.{i}``, ``norm``) plus ``embed_positions`` for learned
positions (GPT-2's ``wpe``), so a Llama checkpoint maps onto it by name. It builds one
:class:`~attn.context.AttentionContext` per forward (positions, RoPE angles, ALiBi, masks) that every block shares,
and commits the KV cache (``cache.advance(T)``) after the last block. Post-norm stacks have no final norm (each
block already ends in one). After ``TransformerLM.fold_norms`` the final norm is the LM head's (``norm_folded``).

Shape legend: B batch, T new tokens, D model width.
"""

from __future__ import annotations

import torch
from torch import nn

from attn.context import build_context
from attn.positions import ALiBi, RotaryEmbedding
from blocks.block import make_block
from blocks.norms import make_norm
from specs.config import ModelConfig
from specs.errors import ShapeError
from specs.protocols import KVCache
from specs.tensor_spec import TOKENS


class TransformerStack(nn.Module):
    """``stack(input_ids_BT, ...) -> hidden_BTD`` for any ``ModelConfig`` (decoder when ``cfg.causal``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos_encoding == "learned" else None
        self.rotary = RotaryEmbedding(cfg) if cfg.pos_encoding == "rope" else None
        self.alibi = ALiBi(cfg.n_heads) if cfg.pos_encoding == "alibi" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(make_block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg) if cfg.norm_position == "pre" else None
        # set by TransformerLM.fold_norms: the final norm's weight lives in the LM head, which normalises its input,
        # so forward returns the un-normalised hidden states
        self.norm_folded = False

    def forward(self, input_ids: torch.Tensor, *, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, D) final hidden states (see ``TransformerLM.forward`` for the arguments)."""
        env = TOKENS.check(input_ids, "input_ids")
        check_token_ids(input_ids, "input_ids", self.config.vocab_size)
        if cache is not None and cache.n_layers != len(self.layers):
            raise ShapeError(f"the cache has {cache.n_layers} layers but the model has {len(self.layers)}")
        ctx = build_context(self.config, input_ids, positions=positions, cache=cache, attn_mask=attn_mask,
                            document_ids=document_ids, rotary=self.rotary, alibi=self.alibi,
                            dtype=self.embed_tokens.weight.dtype)
        h_BTD = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            # Fixed-shape caches (CUDA graphs, export tracing) must not read lengths back to the host or branch on
            # traced sizes; their capacity is checked against the position table in new_cache / by the caller.
            if not getattr(cache, "fixed_shape", False):
                held = max(cache.seq_lens.tolist(), default=0) if cache is not None else 0
                if held + env["T"] > self.config.max_seq_len:  # slots used; token positions never exceed them
                    raise ShapeError(f"learned positions stop at max_seq_len={self.config.max_seq_len}, but this "
                                     f"forward reaches slot {held + env['T'] - 1} ({held} cached + T={env['T']})")
            h_BTD = h_BTD + self.embed_positions(ctx.positions_BT)
        h_BTD = self.dropout(h_BTD)
        for layer in self.layers:
            h_BTD = layer(h_BTD, ctx)
        if cache is not None:
            cache.advance(env["T"])
        return h_BTD if self.norm is None or self.norm_folded else self.norm(h_BTD)


def check_token_ids(ids: torch.Tensor, name: str, vocab_size: int, *, ignore_index: int | None = None) -> None:
    """ShapeError unless every id in ``ids`` is in [0, vocab_size) (or equals ``ignore_index``).

    Only for CPU tensors outside torch.compile / export / tracing: reading a GPU tensor's min and max would sync the
    host every step (the trainer checks batches on the CPU before they move), and a traced graph has no values.
    One ``aminmax``; a second pass only when something is negative and an ``ignore_index`` may explain it."""
    if ids.device.type != "cpu" or ids.numel() == 0 or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    lo, hi = (int(v) for v in torch.aminmax(ids))
    bad = hi if hi >= vocab_size else None
    if bad is None and lo < 0:
        if ignore_index is None or lo != ignore_index:
            bad = lo
        else:
            stray = ids[(ids < 0) & (ids != ignore_index)]
            bad = int(stray[0]) if stray.numel() else None
    if bad is not None:
        allowed = f"[0, {vocab_size})" + ("" if ignore_index is None else f" or {ignore_index} (ignored)")
        raise ShapeError(f"{name}: token id {bad} is out of range; expected ids in {allowed} for vocab_size="
                         f"{vocab_size}")
