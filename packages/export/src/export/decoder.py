"""The exported decoder's signature: a tensor-in/tensor-out wrapper around any specs LanguageModel.

Inputs and outputs carry the names the ONNX ecosystem uses for decoder-only LMs (Hugging Face Optimum,
onnxruntime-genai)::

    input_ids              (B, T)        int64
    attention_mask         (B, S+T)      int64, 1 = real token, 0 = left padding
    position_ids           (B, T)        int64
    past_key_values.{i}.key / .value     (B, KVH, S, Dh)   for each layer i (S may be 0)
 -> logits                 (B, T, V)
    present.{i}.key / .value             (B, KVH, S+T, Dh)

Without a cache (``ExportConfig.with_cache=False``) only the first three inputs and ``logits`` remain and
``attention_mask`` is (B, T). B, T and S are dynamic axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from export.cache import PastKVCache

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# ONNX dim_param names of the dynamic axes (Optimum's spelling).
BATCH, SEQ, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"


@dataclass(frozen=True, kw_only=True)
class DecoderSpec:
    """The graph signature for one model: layer count, KV geometry, vocab and whether it carries a cache."""

    n_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int
    with_cache: bool = True
    dtype: torch.dtype = torch.float32

    @classmethod
    def from_config(cls, config: Any, *, with_cache: bool, dtype: torch.dtype) -> DecoderSpec:
        kv_heads = getattr(config, "n_kv_heads", None) or config.n_heads
        return cls(n_layers=config.n_layers, kv_heads=kv_heads, head_dim=config.d_model // config.n_heads,
                   vocab_size=config.vocab_size, max_seq_len=config.max_seq_len, with_cache=with_cache, dtype=dtype)

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "position_ids"] + (self.past_names if self.with_cache else [])

    @property
    def output_names(self) -> list[str]:
        return ["logits"] + (self.present_names if self.with_cache else [])

    def io_description(self) -> dict[str, list[dict[str, Any]]]:
        """Names, symbolic shapes and dtypes of inputs and outputs, as recorded in modelcard.json."""
        fdt = str(self.dtype).removeprefix("torch.")
        kv_total = TOTAL if self.with_cache else SEQ
        inputs = [{"name": "input_ids", "shape": [BATCH, SEQ], "dtype": "int64"},
                  {"name": "attention_mask", "shape": [BATCH, kv_total], "dtype": "int64"},
                  {"name": "position_ids", "shape": [BATCH, SEQ], "dtype": "int64"}]
        inputs += [{"name": n, "shape": [BATCH, self.kv_heads, PAST, self.head_dim], "dtype": fdt}
                   for n in (self.past_names if self.with_cache else [])]
        outputs = [{"name": "logits", "shape": [BATCH, SEQ, self.vocab_size], "dtype": fdt}]
        outputs += [{"name": n, "shape": [BATCH, self.kv_heads, TOTAL, self.head_dim], "dtype": fdt}
                    for n in (self.present_names if self.with_cache else [])]
        return {"inputs": inputs, "outputs": outputs}

    def empty_past(self, batch: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Past tensors with S = 0, for a prefill through the cached graph."""
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return [torch.zeros(shape, dtype=self.dtype, device=device) for _ in self.past_names]

    def example_inputs(self, batch: int = 2, seq: int = 3, past: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Tracing inputs. Sizes are >= 2 and distinct so no exporter specialises a dynamic axis to a constant."""
        g = torch.Generator().manual_seed(seed)
        past = past if self.with_cache else 0
        ids = torch.randint(0, self.vocab_size, (batch, seq), generator=g)
        mask = torch.ones(batch, past + seq, dtype=torch.long)
        pos = (torch.arange(seq) + past).expand(batch, seq).contiguous()
        kv = [torch.randn(batch, self.kv_heads, past, self.head_dim, generator=g).to(self.dtype)
              for _ in (self.past_names if self.with_cache else [])]
        return (ids, mask, pos, *kv)

    def dynamic_shapes(self) -> tuple[Any, ...]:
        """torch.export dynamic_shapes for :meth:`example_inputs` (the past tensors are one varargs tuple)."""
        from torch.export import Dim

        b = Dim(BATCH, min=1, max=4096)
        t = Dim(SEQ, min=1, max=self.max_seq_len)
        if not self.with_cache:
            return ({0: b, 1: t}, {0: b, 1: t}, {0: b, 1: t})
        s = Dim(PAST, min=0, max=self.max_seq_len)
        total = Dim(TOTAL, min=1, max=2 * self.max_seq_len)
        return ({0: b, 1: t}, {0: b, 1: total}, {0: b, 1: t}, tuple({0: b, 2: s} for _ in self.past_names))


class DecoderWithPast(nn.Module):
    """``forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present)`` around ``model``."""

    def __init__(self, model: nn.Module, spec: DecoderSpec):
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.spec.with_cache:
            # An empty past rather than cache=None: the model then takes its fixed-shape cache path, which keeps
            # the batch axis dynamic even in models whose cache-less path sizes Python lists by the batch.
            B = input_ids.shape[0]
            empty = input_ids.new_zeros((B, self.spec.kv_heads, 0, self.spec.head_dim), dtype=self.spec.dtype)
            past = (empty,) * (2 * self.spec.n_layers)
        cache = PastKVCache([(past[2 * i], past[2 * i + 1]) for i in range(self.spec.n_layers)],
                            new_tokens=input_ids.shape[1])
        logits_BTV = self.model(input_ids, positions=position_ids, cache=cache, attn_mask=attention_mask)
        return (logits_BTV, *cache.presents()) if self.spec.with_cache else (logits_BTV,)
