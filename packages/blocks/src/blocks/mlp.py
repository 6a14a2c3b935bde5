"""Feed-forward sublayers: the two-layer MLP (GPT-2) and the gated SwiGLU (Llama).

MLP: ``down_proj(act(up_proj(x)))`` with GELU (Hendrycks & Gimpel 2016, arXiv:1606.08415), its tanh approximation
(GPT-2's ``gelu_new``) or ReLU. SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (Shazeer 2020, "GLU Variants
Improve Transformer", arXiv:2002.05202) through the kernel registry's ``swiglu`` op; other activations give the
matching GLU variant (GeGLU, ReGLU). Names follow Hugging Face Llama (``gate_proj``, ``up_proj``, ``down_proj``).

Shape legend: B batch, T tokens, D model width, F hidden width (cfg.d_ff).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kernel import resolve
from kernel.reference import matmul_dtype
from specs.config import ModelConfig
from tensor.folded import fold_norm_weight, linear_with
from tensor.fused import fuse_linears, is_fused, split_output

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def _plain_linear(m: nn.Module) -> bool:
    """An nn.Linear whose call would do nothing but ``F.linear``: not a subclass (quantized, adapted) and no hooks
    (activation probes), so an op may take its weights directly."""
    return type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks)


class MLP(nn.Module):
    """(B, T, D) -> (B, T, D) through a hidden width F with one activation."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu_tanh", bias: bool = True):
        super().__init__()
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        if self.activation == "gelu_tanh" and all(_plain_linear(m) for m in (self.up_proj, self.down_proj)):
            # GPT-2's MLP through the registry's gelu_mlp op (on CUDA: the GELU in the matmuls' epilogues)
            op = resolve("gelu_mlp", "auto", device=x_BTD.device, dtype=matmul_dtype(x_BTD),
                         backward=torch.is_grad_enabled() and x_BTD.requires_grad)
            up, down = self.up_proj, self.down_proj
            return op(x_BTD, up.weight, up.bias, down.weight, down.bias)
        return self.down_proj(self.act(self.up_proj(x_BTD)))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class SwiGLU(nn.Module):
    """(B, T, D) -> (B, T, D): ``down_proj(act(gate_proj(x)) * up_proj(x))``, act = silu for SwiGLU proper."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "silu", bias: bool = False):
        super().__init__()
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.input_rms_eps: float | None = None  # set by fold_input_norm

    def forward(self, x_BTD: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); plus ``residual`` when given (added by ``down_proj``)."""
        eps = self.input_rms_eps
        if is_fused(self, "gate_up_proj"):
            if self.activation == "silu" and getattr(self.gate_up_proj, "accepts_glu", False):
                # the gate/up projection returns silu(gate) * up itself, from its epilogue (one kernel fewer)
                kw = {} if eps is None else {"rms_eps": eps}
                return linear_with(self.down_proj, self.gate_up_proj(x_BTD, glu="silu", **kw), residual=residual)
            gate_BTF, up_BTF = split_output(self, "gate_up_proj", linear_with(self.gate_up_proj, x_BTD, rms_eps=eps))
        else:
            gate_BTF, up_BTF = (linear_with(self.gate_proj, x_BTD, rms_eps=eps),
                                linear_with(self.up_proj, x_BTD, rms_eps=eps))
        if self.activation == "silu":
            op = resolve("swiglu", "auto", device=x_BTD.device, dtype=gate_BTF.dtype,
                         backward=torch.is_grad_enabled() and gate_BTF.requires_grad)
            h_BTF = op(gate_BTF, up_BTF)
        else:
            h_BTF = self.act(gate_BTF) * up_BTF
        return linear_with(self.down_proj, h_BTF, residual=residual)

    def fold_input_norm(self, weight: torch.Tensor, eps: float) -> None:
        """Fold the weight of the RMSNorm that feeds this layer into gate/up (in place, inference; see
        ``tensor.folded``): forward then takes the un-normalised input."""
        fold_norm_weight(self.norm_readers(), weight)
        self.input_rms_eps = eps

    def norm_readers(self) -> list[nn.Module]:
        """The projections that read this layer's input norm: ``gate_up_proj`` when fused, else gate/up_proj."""
        names = ("gate_up_proj",) if is_fused(self, "gate_up_proj") else ("gate_proj", "up_proj")
        return [getattr(self, n) for n in names]

    def fuse_projections(self) -> None:
        """One ``gate_up_proj`` GEMM instead of gate/up_proj (decode speed); outputs and state_dict keys unchanged.
        Projections that are no longer plain Linears (quantized, adapted) are left as they are."""
        if not is_fused(self, "gate_up_proj") and all(type(getattr(self, n)) is nn.Linear
                                                       for n in ("gate_proj", "up_proj")):
            fuse_linears(self, ("gate_proj", "up_proj"), "gate_up_proj")

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


def make_mlp(cfg: ModelConfig) -> MLP | SwiGLU:
    """The feed-forward sublayer ``cfg.mlp`` names, width ``cfg.d_ff``, activation ``cfg.activation``."""
    cls = SwiGLU if cfg.mlp == "swiglu" else MLP
    return cls(cfg.d_model, cfg.d_ff, activation=cfg.activation, bias=cfg.bias)
