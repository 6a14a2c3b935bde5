"""lmstack kernel: the KernelRegistry mapping symbolic ops to implementations.

``from kernel import resolve; attn = resolve("attention", "auto", device="cuda", dtype=torch.bfloat16,
head_dim=128, causal=True)``. The ops are ``kernel.OPS`` (attention, norms, RoPE, SwiGLU, the losses, the decode
matmuls and attention, ...); every op has a pure-torch "reference". Importing this package imports no optional back end.
"""

from kernel.hints import one_row_pdl_linear
from kernel.implementation import OPS, Implementation, Request
from kernel.registry import ENTRY_POINT_GROUP, KernelRegistry, default_registry, make_request, resolve

__version__ = "0.26.0"

__all__ = ["ENTRY_POINT_GROUP", "OPS", "Implementation", "KernelRegistry", "Request", "default_registry",
           "make_request", "one_row_pdl_linear", "resolve"]
