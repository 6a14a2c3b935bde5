"""Boolean attention masks: causal, padding, sliding window and block-diagonal (packed documents).

Convention (torch ``scaled_dot_product_attention``): ``True`` means the query MAY attend to the key.
Masks are built from positions rather than indices so one function serves training (T == S), prefill and
cached decode (T < S, queries are the last positions), left padding and paged caches alike.

Semantics, for a query at position p and a key at position j:
  - causal: j <= p.
  - window=W (Mistral/Longformer sliding window, Beltagy et al. 2020 arXiv:2004.05150): p - j < W, i.e. W keys
    including the query itself; without ``causal`` the window is symmetric, |p - j| < W.
  - documents (packed sequences, as in Llama 3 training): the key's document id equals the query's.
  - padding: keys whose ``k_valid`` is False are never attended.
A row can end up with no key at all (a padding query under left padding, say). Such rows must not produce NaN:
kernel's reference and SDPA attention return zeros for them, and ``empty_rows`` finds them.

Shape legend: B batch, T queries, S keys.
"""

from __future__ import annotations

import torch

from specs.errors import ConfigError, ShapeError
from specs.tensor_spec import TensorSpec

_Q = TensorSpec("B", "T")
_K = TensorSpec("B", "S")


def _check_window(window: int | None) -> None:
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
        raise ConfigError("sliding_window", f"must be a positive int or None, got {window!r}")


def attention_mask(q_pos_BT: torch.Tensor, k_pos_BS: torch.Tensor, *, causal: bool = True,
                   k_valid_BS: torch.Tensor | None = None, window: int | None = None,
                   q_doc_BT: torch.Tensor | None = None, k_doc_BS: torch.Tensor | None = None) -> torch.Tensor:
    """Combined mask (B, 1, T, S) bool from query positions (B, T) and key positions (B, S).

    ``k_valid_BS`` (bool or 0/1) marks real keys; ``q_doc_BT``/``k_doc_BS`` are document ids (both or neither).
    """
    env = _Q.check(q_pos_BT, "q_pos_BT")
    _K.check(k_pos_BS, "k_pos_BS", B=env["B"])
    _check_window(window)
    q = q_pos_BT[:, :, None]  # (B, T, 1)
    k = k_pos_BS[:, None, :].to(q.device)  # (B, 1, S)
    dist = q - k
    mask = torch.ones(dist.shape, dtype=torch.bool, device=q.device)
    if causal:
        mask &= dist >= 0
    if window is not None:
        mask &= (dist < window) if causal else (dist.abs() < window)
    if (q_doc_BT is None) != (k_doc_BS is None):
        raise ShapeError("attention_mask: pass both q_doc_BT and k_doc_BS, or neither")
    if q_doc_BT is not None and k_doc_BS is not None:
        _Q.check(q_doc_BT, "q_doc_BT", B=env["B"], T=env["T"])
        _K.check(k_doc_BS, "k_doc_BS", B=env["B"], S=k_pos_BS.shape[1])
        mask &= q_doc_BT[:, :, None] == k_doc_BS[:, None, :].to(q.device)
    if k_valid_BS is not None:
        _K.check(k_valid_BS, "k_valid_BS", B=env["B"], S=k_pos_BS.shape[1])
        mask &= k_valid_BS[:, None, :].to(device=q.device, dtype=torch.bool)
    return mask[:, None]


def causal_mask(T: int, S: int | None = None, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, S) bool causal mask with queries at the last T of S positions (bottom-right aligned, as in decode)."""
    S = T if S is None else S
    if T > S:
        raise ShapeError(f"causal_mask: T={T} queries cannot exceed S={S} keys")
    q = torch.arange(S - T, S, device=device)[:, None]
    k = torch.arange(S, device=device)[None, :]
    return k <= q


def sliding_window_mask(T: int, S: int | None = None, *, window: int, causal: bool = True,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """(T, S) bool: causal (or symmetric) band of ``window`` keys; queries are the last T of S positions."""
    _check_window(window)
    S = T if S is None else S
    if T > S:
        raise ShapeError(f"sliding_window_mask: T={T} queries cannot exceed S={S} keys")
    dist = torch.arange(S - T, S, device=device)[:, None] - torch.arange(S, device=device)[None, :]
    return ((dist >= 0) & (dist < window)) if causal else (dist.abs() < window)


def document_mask(doc_ids_BT: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """(B, 1, T, T) bool block-diagonal mask: token t may attend to token s iff they share a document id."""
    _Q.check(doc_ids_BT, "doc_ids_BT")
    mask = doc_ids_BT[:, :, None] == doc_ids_BT[:, None, :]
    if causal:
        mask &= causal_mask(doc_ids_BT.shape[1], device=doc_ids_BT.device)
    return mask[:, None]


def padding_mask(attn_mask_BS: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, S) bool from a Hugging Face style attention mask (B, S): 1/True = real token, 0/False = padding."""
    _K.check(attn_mask_BS, "attn_mask_BS")
    return attn_mask_BS.to(torch.bool)[:, None, None, :]


def positions_from_padding(attn_mask_BS: torch.Tensor) -> torch.Tensor:
    """(B, S) int64 positions that skip padding (left padding gives the first real token position 0).

    Padding slots get position 1 (they are masked out anyway), exactly as transformers' ``generate()`` does.
    """
    _K.check(attn_mask_BS, "attn_mask_BS")
    valid = attn_mask_BS.to(torch.long)
    return (valid.cumsum(-1) - 1).masked_fill(valid == 0, 1)


def empty_rows(mask: torch.Tensor) -> torch.Tensor:
    """Bool (..., T, 1): True where a query row may attend to no key at all (its attention output is defined as 0)."""
    return ~mask.any(dim=-1, keepdim=True)
