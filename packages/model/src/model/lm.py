"""TransformerLM: the decoder-only language model (Llama- or GPT-style from one ModelConfig).

``TransformerLM(cfg)`` is a :class:`~model.stack.TransformerStack` (``self.model``) plus an LM head
(``self.lm_head``, tied to the token embedding when ``cfg.tie_embeddings``), named as Hugging Face's
LlamaForCausalLM. It implements the specs LanguageModel Protocol: ``forward`` -> logits, ``loss`` through the
kernel registry's fused ``linear_cross_entropy`` (the (B, T, V) logits are never materialised), ``new_cache``
(static or paged KV caches from :mod:`attn.cache`), ``save_pretrained`` / ``from_pretrained`` (lmstack or Hugging
Face Llama / GPT-2 directories). References: GPT-2 (Radford et al. 2019), Llama (Touvron et al. 2023,
arXiv:2302.13971), nanoGPT and gpt-fast's model.py.

Shape legend: B batch, T new tokens, S cached tokens, D model width, V vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attn.cache import FixedKVCache, PagedKVCache, StaticKVCache
from blocks.norms import RMSNorm
from kernel import resolve
from model import pretrained
from model.stack import TransformerStack, check_token_ids
from specs.batch import IGNORE_INDEX
from specs.config import ModelConfig
from specs.errors import ConfigError
from specs.modelcard import LineageEntry
from specs.protocols import KVCache
from specs.tensor_spec import TensorSpec
from tensor.folded import fold_norm_weight, linear_with, refuse_state_dict, rms_normalize
from tensor.init import init_weights

CACHE_KINDS = ("static", "paged", "fixed")
_LABELS = TensorSpec("B", "T", dtypes=("int64", "int32"))


class TransformerLM(nn.Module):
    """Decoder-only LM: ``logits_BTV = model(input_ids_BT, positions=None, cache=None, attn_mask=None,
    document_ids=None)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.causal:
            raise ConfigError("model.causal", "TransformerLM is a causal (decoder-only) language model and this config "
                              "has causal=False; build bidirectional models (and load their checkpoints) with "
                              "model.encoder.TransformerEncoder (arch='encoder')")
        self.config = cfg
        self.model = TransformerStack(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # the final RMSNorm's eps once fold_norms has folded its weight into lm_head, which then normalises its
        # input (tensor.folded); None: the stack applies the norm
        self.head_rms_eps: float | None = None
        self.init_weights()

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """(Re)initialise every parameter by ``config.init`` (:func:`tensor.init.init_weights`); for meta-device
        construction (``to_empty`` after FSDP sharding) too."""
        init_weights(self, self.config, generator=generator)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                attn_mask: torch.Tensor | None = None, document_ids: torch.Tensor | None = None,
                logits_to_keep: int | torch.Tensor = 0) -> torch.Tensor:
        """Logits (B, T, V) for ``input_ids`` (B, T) int64 in [0, V) (checked on the CPU, see
        :func:`model.stack.check_token_ids`).

        ``cache``: a KV cache from :meth:`new_cache`; the T tokens are appended and ``seq_lens`` advance.
        ``attn_mask``: (B, S+T), 1 = real token, 0 = padding (left padding for batched generation).
        ``positions``: (B, T); default ``seq_lens[b] + arange(T)`` minus the padding before each token.
        ``document_ids``: (B, T) packed-document ids -> block-diagonal causal attention.
        ``logits_to_keep`` (as transformers' models take it): 0 (the default) for every position's logits; n > 0
        for the last n positions only, (B, min(n, T), V); or a 1-D integer tensor of positions, (B, len, V). The
        LM head then runs on those positions alone: a prefill that samples one token (``logits_to_keep=1``) skips
        the (B, T, V) logits, their memory and a quarter or more of its FLOPs at small widths.
        """
        h_BTD = self.model(input_ids, positions=positions, cache=cache, attn_mask=attn_mask,
                           document_ids=document_ids)
        return linear_with(self.lm_head, _keep_positions(h_BTD, logits_to_keep), rms_eps=self.head_rms_eps)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None,
             attn_mask: torch.Tensor | None = None, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy (fp32 scalar) over ``labels`` (B, T) != -100; ``labels[t]`` is the target of
        ``input_ids[t]`` (already shifted by the data loader), in [0, V) or -100 (checked on the CPU)."""
        _LABELS.check(labels, "labels", B=input_ids.shape[0], T=input_ids.shape[1])
        check_token_ids(labels, "labels", self.config.vocab_size, ignore_index=IGNORE_INDEX)
        h_BTD = self.model(input_ids, positions=positions, attn_mask=attn_mask, document_ids=document_ids)
        if self.head_rms_eps is not None:  # folded: the norm's weight is in lm_head, the normalising is left here
            h_BTD = rms_normalize(h_BTD, self.head_rms_eps)
        weight_VD = self.lm_head.weight
        ce = resolve("linear_cross_entropy", self.config.loss_impl, device=h_BTD.device, dtype=h_BTD.dtype,
                     backward=torch.is_grad_enabled() and h_BTD.requires_grad)
        return ce(h_BTD.reshape(-1, h_BTD.shape[-1]), weight_VD, labels.reshape(-1).long(), IGNORE_INDEX)

    def new_cache(self, batch_size: int, max_seq_len: int | None = None, *, kind: str = "static",
                  dtype: torch.dtype | None = None, device: str | torch.device | None = None, block_size: int = 16,
                  num_blocks: int | None = None, prefix_caching: bool = True) -> KVCache:
        """An empty KV cache for this model.

        ``kind="static"``: (batch_size, KVH, max_seq_len, Dh) per layer. ``kind="fixed"``: the same buffers with
        lengths on the device and whole-buffer attention, for CUDA-graph / torch.compile decode loops.
        ``kind="paged"``: ``num_blocks`` blocks of ``block_size`` tokens (default: enough for ``batch_size`` full
        sequences); ``batch_size > 0`` pre-registers sequences 0..batch_size-1 as the active rows. ``max_seq_len``
        defaults to ``config.max_seq_len``.
        """
        cfg = self.config
        p = next(self.parameters())
        dtype = p.dtype if dtype is None else dtype
        device = p.device if device is None else device
        max_seq_len = cfg.max_seq_len if max_seq_len is None else max_seq_len
        if cfg.pos_encoding == "learned" and max_seq_len > cfg.max_seq_len:
            raise ConfigError("max_seq_len", f"{max_seq_len} exceeds the {cfg.max_seq_len} learned positions")
        dims = dict(n_layers=cfg.n_layers, n_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim, dtype=dtype, device=device)
        if kind == "static":
            return StaticKVCache(batch_size=batch_size, max_seq_len=max_seq_len, **dims)
        if kind == "fixed":
            return FixedKVCache(batch_size=batch_size, max_seq_len=max_seq_len, **dims)
        if kind == "paged":
            if num_blocks is None:
                if batch_size <= 0:
                    raise ConfigError("num_blocks", "a paged cache needs num_blocks, or batch_size > 0 to size it")
                num_blocks = batch_size * -(-max_seq_len // block_size)
            return PagedKVCache(num_blocks=num_blocks, block_size=block_size, batch_size=batch_size,
                                max_seq_len=max_seq_len, prefix_caching=prefix_caching, **dims)
        raise ConfigError("kind", f"unknown KV cache kind {kind!r}; valid: {', '.join(CACHE_KINDS)}")

    def fuse_projections(self) -> TransformerLM:
        """Fuse each layer's q/k/v and gate/up projections into one GEMM each, in place (for inference: fewer,
        larger matmuls per decode step). Outputs, parameter count and ``state_dict`` keys are unchanged, so
        checkpoints and Hugging Face conversion work before and after. Returns self."""
        for m in self.modules():
            if m is not self and hasattr(m, "fuse_projections"):
                m.fuse_projections()
        return self

    def fold_norms(self) -> TransformerLM:
        """Inference only, in place: each layer's RMSNorm weights are folded into the projections that read them,
        which then normalise their input and add the residual stream themselves (``tensor.folded``; no norm or
        add kernels between a decode step's matmuls). Llama-style layers only (ConfigError otherwise); the folded
        model cannot be saved (its ``state_dict`` raises), so save first. Returns self.

        The final RMSNorm is folded into ``lm_head`` too when the head has a float weight of its own (not tied to
        the embedding, which would change with it; not yet quantized): one norm kernel fewer per decode step."""
        for layer in self.model.layers:
            layer.fold_norms()
        if self.head_rms_eps is None and self._head_can_fold():
            norm = self.model.norm
            fold_norm_weight([self.lm_head], norm.weight)
            self.head_rms_eps, self.model.norm_folded = norm.eps, True
            refuse_state_dict(self.lm_head, "this model's final norm weight is folded into lm_head (fold_norms, "
                                            "for inference); save the model before folding it")
        return self

    def _head_can_fold(self) -> bool:
        """The final norm is an RMSNorm and lm_head a Linear with a float weight of its own (untied)."""
        w = getattr(self.lm_head, "weight", None)
        return (isinstance(self.model.norm, RMSNorm) and isinstance(self.lm_head, nn.Linear)
                and isinstance(w, torch.Tensor) and w.is_floating_point()
                and w is not self.model.embed_tokens.weight)

    def can_fold_norms(self) -> bool:
        """True when :meth:`fold_norms` applies to every layer (Llama-style layers with float projections)."""
        return all(getattr(layer, "can_fold_norms", lambda: False)() for layer in self.model.layers)

    def use_layer_kernel(self, impl: str | None = "auto") -> TransformerLM:
        """Run each layer of a one-row decode step over a fixed-shape cache as one kernel registry ``decode_layer``
        call (on CUDA: one persistent Triton launch per layer instead of ~eight kernels), in place; prefill, batches
        and paged caches keep the per-op path, and None turns it off. Needs folded Llama layers with fused
        projections (``fuse_projections()``, then ``fold_norms()``); ConfigError names what is missing. Returns
        self."""
        if impl is not None:
            why = self.layer_kernel_unsupported()
            if why is not None:
                raise ConfigError("layer_kernel", why)
        for layer in self.model.layers:
            layer.use_layer_kernel(impl)
        return self

    def layer_kernel_unsupported(self) -> str | None:
        """Why :meth:`use_layer_kernel` cannot apply (the first layer that refuses, and why), or None."""
        for i, layer in enumerate(self.model.layers):
            why = layer.layer_kernel_unsupported() if hasattr(layer, "layer_kernel_unsupported") else \
                f"{type(layer).__name__} has no layer kernel"
            if why is not None:
                return f"layer {i}: {why}"
        return None

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied head counts once); ``exclude_embeddings`` drops token and position tables."""
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            for emb in (self.model.embed_tokens, self.model.embed_positions):
                if emb is not None:
                    params.pop(id(emb.weight), None)
        return sum(p.numel() for p in params.values())

    def save_pretrained(self, directory: str | os.PathLike[str], *, format: str = "lmstack",
                        max_shard_size: int | str = "5GB", name: str | None = None,
                        lineage: tuple[LineageEntry, ...] = (), metadata: Mapping[str, Any] | None = None) -> Path:
        """Write safetensors (sharded past ``max_shard_size``), config.json and modelcard.json, atomically.

        ``format="hf"`` writes a Hugging Face Llama / Mistral / GPT-2 directory that transformers loads.
        ``fuse_projections()`` keeps the checkpoint's names; a model folded (``fold_norms``), quantized or with
        modules replaced after construction is refused with a ConfigError before anything is written (its tensors
        are not the ones ``from_pretrained`` loads): save before transforming it. The target must not be the
        working directory or one of its parents (CheckpointError).
        """
        return pretrained.save(self, self.config, directory, build=type(self)._from_config, format=format,
                               max_shard_size=max_shard_size, name=name, lineage=lineage, metadata=metadata)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], dtype: torch.dtype | str | None = None,
                        device: str | torch.device = "cpu", *, verify: bool = True,
                        config: ModelConfig | None = None) -> TransformerLM:
        """Load an lmstack checkpoint or a Hugging Face Llama / Mistral / GPT-2 directory (safetensors only).

        ``dtype``: a floating-point torch.dtype or 'fp32' / 'fp16' / 'bf16' (also 'float32', 'float16',
        'bfloat16'); None keeps the checkpoint's. ``device``: a torch.device or its string, one this machine has.
        Either is checked before anything is read (ConfigError). ``verify`` checks the model card's sha256 of
        every file (required for lmstack directories). ``config``: build the model from this config instead of the
        directory's (to fine-tune with dropout, another attention kernel or a longer RoPE context): it must
        describe the same network (``ModelConfig.network_mismatches``; a ConfigError names every field that
        differs, before any weight is read).
        """
        return pretrained.load(cls._from_config, directory, dtype=dtype, device=device, verify=verify, config=config)

    @classmethod
    def read_config(cls, directory: str | os.PathLike[str]) -> ModelConfig:
        """The ModelConfig of the lmstack or Hugging Face checkpoint in ``directory``, from its config.json alone
        (``train.run`` fills a fine-tuning run's model section from it)."""
        return pretrained.read_model_config(directory)

    @classmethod
    def _from_config(cls, cfg: ModelConfig, _meta: Mapping[str, Any]) -> TransformerLM:
        """The untrained model from_pretrained fills (on the meta device) and save_pretrained checks against."""
        return cls(cfg)

    def extra_repr(self) -> str:
        return f"params={self.num_params():,}"


def _keep_positions(h_BTD: torch.Tensor, keep: int | torch.Tensor) -> torch.Tensor:
    """The positions of ``h_BTD`` that ``forward``'s ``logits_to_keep`` asks for."""
    if isinstance(keep, torch.Tensor):
        if keep.dim() != 1 or keep.dtype.is_floating_point or keep.dtype.is_complex or keep.dtype == torch.bool:
            raise ConfigError("logits_to_keep", f"a tensor of positions must be 1-D integer, got shape "
                              f"{tuple(keep.shape)} {keep.dtype}")
        T = h_BTD.shape[1]
        if keep.device.type == "cpu" and keep.numel() and not bool(((keep >= -T) & (keep < T)).all()):
            raise ConfigError("logits_to_keep", f"positions must lie in [-{T}, {T}) for {T} input tokens, got "
                              f"{keep.min().item()}..{keep.max().item()}")
        return h_BTD.index_select(1, keep.to(h_BTD.device).remainder(T))
    n = None if isinstance(keep, bool) else getattr(keep, "__index__", lambda: None)()
    if n is None or n < 0:
        raise ConfigError("logits_to_keep", f"expected 0 (every position), a count n > 0 of last positions or a 1-D "
                          f"integer tensor of positions, got {keep!r}")
    return h_BTD if n == 0 else h_BTD[:, -n:]

