"""Conformance suite for attention implementations: subclass it once per implementation.

    class TestSdpa(AttentionConformance):
        impl = "sdpa"

Every case runs the implementation against ``kernel.reference.attention`` in float32 on the same inputs. For
float32 the outputs must agree to ``fp32_atol``; for fp16/bf16 the implementation's error against the fp32
reference must be at most ``lowp_factor`` (2) times the error of the plain torch low-precision path (matmul and
softmax in the low dtype), the flash-attention test convention. Cases the implementation declares unsupported
(``Implementation.why_not``) must be refused with a reason instead of being run. Written without pytest so that
third-party kernel packages can reuse it: skips raise ``unittest.SkipTest``, which pytest honours.
"""

from __future__ import annotations

import unittest
from dataclasses import dataclass
from typing import ClassVar

import torch

from kernel.implementation import Implementation
from kernel.reference import allowed_mask, repeat_kv
from kernel.reference import attention as reference_attention
from kernel.registry import KernelRegistry, default_registry, make_request


@dataclass(frozen=True)
class Case:
    B: int = 2
    H: int = 4
    KVH: int = 4
    T: int = 9
    S: int = 9
    Dh: int = 16
    causal: bool = False
    mask: str | None = None  # None | "random" | "padding" (left padding, incl. fully-masked rows)
    bias: bool = False
    scale: float | None = None
    strided: bool = False  # q as a (B, T, H, Dh) transpose, k/v as the first S slots of a longer cache buffer


def lowp_attention(q, k, v, *, mask=None, causal=False, scale=None, bias=None):
    """The plain torch path in the inputs' dtype (the yardstick for low-precision error)."""
    H, KVH, T, S, Dh = q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]
    scale = Dh**-0.5 if scale is None else scale
    scores = (q @ repeat_kv(k, H // KVH).transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.to(q.dtype)
    allowed = allowed_mask(mask, causal, T, S, q.device)
    if allowed is not None:
        empty = ~allowed.any(-1, keepdim=True)
        probs = torch.softmax(scores.masked_fill(~(allowed | empty), float("-inf")), -1).masked_fill(empty, 0)
    else:
        probs = torch.softmax(scores, -1)
    return probs @ repeat_kv(v, H // KVH)


class AttentionConformance:
    impl: ClassVar[str] = "reference"
    device: ClassVar[str] = "cpu"  # where the tensors live
    request_device: ClassVar[str | None] = None  # device type checked against the declaration (default: device)
    capability: ClassVar[tuple[int, int] | None] = None
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.bfloat16)
    fp32_atol: ClassVar[float] = 1e-5
    lowp_factor: ClassVar[float] = 2.0
    lowp_factor_overrides: ClassVar[dict[torch.dtype, float]] = {}  # e.g. an interpreter that rounds differently
    seed: ClassVar[int] = 0

    def registry(self) -> KernelRegistry:
        return default_registry()

    def implementation(self) -> Implementation:
        return self.registry().get("attention", self.impl)

    def _inputs(self, c: Case, dtype: torch.dtype, requires_grad: bool = False):
        g = torch.Generator().manual_seed(self.seed)
        q = torch.randn(c.B, c.H, c.T, c.Dh, generator=g)
        k = torch.randn(c.B, c.KVH, c.S, c.Dh, generator=g)
        v = torch.randn(c.B, c.KVH, c.S, c.Dh, generator=g)
        mask = None
        if c.mask == "random":
            mask = torch.rand(c.B, 1, c.T, c.S, generator=g) < 0.7
        elif c.mask == "padding":  # batch row 1 is left-padded by 3: its first 3 queries see nothing under causal
            valid = torch.ones(c.B, c.S, dtype=torch.bool)
            valid[min(1, c.B - 1), :3] = False
            mask = valid[:, None, None, :].expand(c.B, 1, c.T, c.S)
            if not c.causal:
                mask = mask & valid[:, None, -c.T:, None]  # padding queries attend to nothing
        bias = None
        if c.bias:
            slopes = torch.tensor([2.0 ** -(i + 1) for i in range(c.H)])
            dist = torch.arange(c.S)[None, :] - torch.arange(c.S - c.T, c.S)[:, None]
            bias = (slopes[:, None, None] * dist)[None].float()
        dev = torch.device(self.device)
        ts = [t.to(dev, dtype) for t in (q, k, v)]
        if c.strided:
            ts[0] = ts[0].transpose(1, 2).contiguous().transpose(1, 2)  # (B, T, H, Dh) memory, (B, H, T, Dh) view
            for i in (1, 2):
                buf = torch.zeros(c.B, c.KVH, c.S + 5, c.Dh, device=dev, dtype=dtype)
                buf[:, :, : c.S] = ts[i]
                ts[i] = buf[:, :, : c.S]
        ts = [t.requires_grad_(requires_grad) if requires_grad else t for t in ts]
        return (*ts, None if mask is None else mask.to(dev), None if bias is None else bias.to(dev))

    def _reason(self, c: Case, dtype: torch.dtype, backward: bool = False) -> str | None:
        req = make_request("attention", device=self.request_device or self.device, dtype=dtype, head_dim=c.Dh,
                           causal=c.causal, gqa=c.H != c.KVH, mask=c.mask is not None, bias=c.bias,
                           backward=backward, capability=self.capability)
        return self.implementation().why_not(req)

    def check(self, c: Case) -> None:
        fn = None
        for dtype in self.dtypes:
            reason = self._reason(c, dtype)
            if reason is not None:
                assert isinstance(reason, str) and reason, "why_not must explain a refusal"
                continue
            fn = fn or self.implementation().load()
            q, k, v, mask, bias = self._inputs(c, dtype)
            kw = dict(mask=mask, causal=c.causal, scale=c.scale, bias=bias)
            out = fn(q, k, v, **kw)
            assert out.shape == q.shape and out.dtype == dtype, (out.shape, out.dtype)
            assert torch.isfinite(out).all(), f"{self.impl}: non-finite output for {c}"
            ref = reference_attention(q.float(), k.float(), v.float(), **kw)
            err = (out.float() - ref).abs().max().item()
            if dtype == torch.float32:
                assert err <= self.fp32_atol, f"{self.impl} {c}: max error {err:.2e} > {self.fp32_atol:.0e}"
            else:
                base = (lowp_attention(q, k, v, **kw).float() - ref).abs().max().item()
                factor = self.lowp_factor_overrides.get(dtype, self.lowp_factor)
                assert err <= factor * base + 1e-6, \
                    f"{self.impl} {c} {dtype}: error {err:.2e} > {factor} x torch low-precision {base:.2e}"
            if mask is not None:
                allowed = allowed_mask(mask, c.causal, c.T, c.S, out.device)
                empty = ~allowed.any(-1, keepdim=True).expand_as(out[..., :1])
                assert (out.masked_select(empty.expand_as(out)) == 0).all(), "fully-masked rows must be zero"

    # the cases ----------------------------------------------------------------------------------------------
    def test_mha(self):
        self.check(Case())

    def test_gqa(self):
        self.check(Case(H=4, KVH=2))

    def test_mqa(self):
        self.check(Case(H=4, KVH=1, causal=True))

    def test_causal_prefill(self):
        self.check(Case(causal=True, T=17, S=17))

    def test_causal_decode_bottom_right(self):
        self.check(Case(causal=True, T=1, S=13))
        self.check(Case(causal=True, T=4, S=13, KVH=2))

    def test_bool_mask(self):
        self.check(Case(mask="random"))
        self.check(Case(mask="random", causal=True, KVH=2))

    def test_padding_rows_with_no_key_are_zero_not_nan(self):
        self.check(Case(mask="padding", causal=True))
        self.check(Case(mask="padding", causal=False, KVH=1))

    def test_bias(self):
        self.check(Case(bias=True, causal=True))
        self.check(Case(bias=True, mask="random", KVH=2))

    def test_scale_and_head_dims(self):
        self.check(Case(scale=0.3))
        for dh in (32, 64, 128):
            self.check(Case(Dh=dh, T=5, S=5, causal=True))

    def test_non_contiguous_inputs(self):
        self.check(Case(strided=True, causal=True, KVH=2))
        self.check(Case(strided=True, T=3, S=11, causal=True, mask="random"))

    def test_backward_matches_reference(self):
        c = Case(H=4, KVH=2, causal=True, T=7, S=7)
        reason = self._reason(c, torch.float32, backward=True)
        if reason is not None:
            raise unittest.SkipTest(f"{self.impl} cannot run a float32 backward here: {reason}")
        q, k, v, _, _ = self._inputs(c, torch.float32, requires_grad=True)
        out = self.implementation().load()(q, k, v, causal=True)
        grads = torch.autograd.grad(out.pow(2).sum(), (q, k, v))
        q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        ref_grads = torch.autograd.grad(reference_attention(q2, k2, v2, causal=True).pow(2).sum(), (q2, k2, v2))
        for name, a, b in zip("qkv", grads, ref_grads):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), f"{self.impl}: d{name} differs"
