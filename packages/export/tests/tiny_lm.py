"""A tiny Llama-style causal LM that satisfies ``specs.protocols.LanguageModel`` without importing lmstack's model.

It stands in for ``model.lm.TransformerLM`` to show that export works on any module honouring the protocol:
``forward(input_ids, positions=None, cache=None, attn_mask=None, document_ids=None)`` and ``new_cache``.
Legend: B batch, T new tokens, S cached tokens, H heads, KVH key/value heads, Dh head dim, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specs.config import ModelConfig


class ListKVCache:
    """A growing per-layer cache (the specs KVCache protocol), for the stand-in model's eager decoding."""

    def __init__(self, n_layers: int, batch_size: int):
        self.n_layers = n_layers
        self._k: list[torch.Tensor | None] = [None] * n_layers
        self._v: list[torch.Tensor | None] = [None] * n_layers
        self._len = torch.zeros(batch_size, dtype=torch.long)

    @property
    def seq_lens(self) -> torch.Tensor:
        return self._len

    def append(self, layer, k, v):
        old_k, old_v = self._k[layer], self._v[layer]
        k_all = k if old_k is None else torch.cat([old_k[:, :, : int(self._len.max())], k], dim=2)
        v_all = v if old_v is None else torch.cat([old_v[:, :, : int(self._len.max())], v], dim=2)
        self._k[layer], self._v[layer] = k_all, v_all
        return k_all, v_all

    def read(self, layer):
        return self._k[layer][:, :, : int(self._len.max())], self._v[layer][:, :, : int(self._len.max())]

    def advance(self, n_tokens: int) -> None:
        self._len = self._len + n_tokens

    def evict(self, rows) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self._k = [None] * self.n_layers
        self._v = [None] * self.n_layers
        self._len = torch.zeros_like(self._len)


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, h, kvh, dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.attn_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.q = nn.Linear(d, h * dh, bias=False)
        self.k = nn.Linear(d, kvh * dh, bias=False)
        self.v = nn.Linear(d, kvh * dh, bias=False)
        self.o = nn.Linear(h * dh, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.gate = nn.Linear(d, cfg.d_ff, bias=False)
        self.up = nn.Linear(d, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, d, bias=False)

    def forward(self, x_BTD, cos_BTDh, sin_BTDh, layer, cache, attn_mask):
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        h = self.attn_norm(x_BTD)
        q = self.q(h).view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k(h).view(B, T, cfg.kv_heads, cfg.head_dim).transpose(1, 2)  # (B, KVH, T, Dh)
        v = self.v(h).view(B, T, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = _rope(q, cos_BTDh, sin_BTDh), _rope(k, cos_BTDh, sin_BTDh)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, KVH, S+T, Dh)
        rep = cfg.n_heads // cfg.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        S_T = k.shape[2]
        q_idx = torch.arange(T, device=x_BTD.device) + (S_T - T)  # absolute cache index of each query
        allowed = torch.arange(S_T, device=x_BTD.device)[None, :] <= q_idx[:, None]  # (T, S+T)
        allowed = allowed[None, None]
        if attn_mask is not None:
            allowed = allowed & attn_mask.bool()[:, None, None, :]
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, T, Dh)
        x_BTD = x_BTD + self.o(att.transpose(1, 2).reshape(B, T, -1))
        h = self.mlp_norm(x_BTD)
        return x_BTD + self.down(F.silu(self.gate(h)) * self.up(h))


def _rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos[:, None] + rot * sin[:, None]


class TinyLM(nn.Module):
    """Llama-style decoder: RMSNorm, RoPE, GQA, SwiGLU, untied head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        inv = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        for p in self.parameters():
            nn.init.normal_(p, std=1 / math.sqrt(p.shape[-1]))

    def forward(self, input_ids, positions=None, cache=None, attn_mask=None, document_ids=None):
        B, T = input_ids.shape
        if positions is None:
            zero = torch.zeros(B, 1, dtype=torch.long, device=input_ids.device)
            start = cache.seq_lens[:, None] if cache is not None else zero
            positions = start + torch.arange(T, device=input_ids.device)
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, Dh/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.embed(input_ids)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, i, cache, attn_mask)
        if cache is not None:
            cache.advance(T)
        return self.lm_head(self.norm(x))

    def new_cache(self, batch_size, max_seq_len=None, *, kind="static", **kwargs):
        return ListKVCache(self.config.n_layers, batch_size)
