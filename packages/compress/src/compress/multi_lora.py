"""Many LoRA adapters served at once over one base model, each batch row with its own (S-LoRA, Sheng et al. 2023,
arXiv:2311.03285; Punica, Chen et al. 2023, arXiv:2310.18547; vLLM's ``--enable-lora``).

``MultiLoRA(model, max_loras=4, max_rank=16)`` wraps the model's Linear layers in :class:`MultiLoRALinear`: each
keeps ``max_loras`` adapter *slots* stacked into two matrices, ``lora_A`` (S*P*R, in) and ``lora_B`` (S*P*R, out)
(B transposed; S slots, P packed parts, R the largest rank), and adds to each row's base output its own slot's
term, ``scale[s] * B[s] @ (A[s] @ x[b])``, through the kernel registry's ``lora`` op: on a GPU two Triton kernels
that read only the rows' own adapters (Punica's BGMV), elsewhere two dense matmuls over every slot with the other
slots masked out. Either way the step has fixed shapes and no branch on the rows' adapters, so a CUDA graph captured
once serves any mix of them; the slot of each row is a device buffer read at run time. Ranks below R are
zero-padded, which adds nothing.

Fused projections (``fuse_projections``: q/k/v_proj in one ``qkv_proj``) are adapted in place: the fused Linear's
P parts each get their own A rows and B columns, with B's rows placed on its part's output rows, so an adapter of
``q_proj`` and ``v_proj`` (PEFT's files) applies to the fused layer exactly, and the fast path stays one GEMM.

``read_adapter(dir)`` reads PEFT's files (safetensors only) into an :class:`AdapterWeights` on the host;
``multi.load(slot, weights)`` copies it into a slot, ``multi.clear(slot)`` empties one, and
``multi.set_rows(slots)`` says which slot each row of the next forwards uses (None: the base model alone).

Shape legend: B rows, T tokens, S slots, P packed parts, R max rank.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from compress.lora import ADAPTER_WEIGHTS, PREFIX, _matches, read_adapter_config
from kernel import resolve
from kernel.lora import lora_mask
from specs.errors import ConfigError, ShapeError

_FUSED_ATTR = "_fused_linears"  # what tensor.fused records on a fused Linear's parent: {name: (parts, widths)}
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AdapterWeights:
    """One adapter on the host: ``tensors[module] = (A (r, in), B (out, r))`` in fp32, and its scaling."""

    path: str
    r: int
    scaling: float
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def modules(self) -> list[str]:
        return sorted(self.tensors)


def read_adapter(directory: str | os.PathLike[str]) -> AdapterWeights:
    """PEFT's ``adapter_config.json`` and ``adapter_model.safetensors`` in ``directory``, checked (plain LoRA, A and
    B for every module, one rank) and read to fp32 host tensors. Nothing is unpickled."""
    cfg = read_adapter_config(directory)
    weights = Path(directory) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ConfigError("adapter", f"{directory} has no {ADAPTER_WEIGHTS} (safetensors only; nothing is unpickled)")
    state = load_file(str(weights))
    r = cfg.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ConfigError("adapter", f"{directory}: r is {r!r}; expected a positive integer")
    alpha = cfg.get("lora_alpha", r)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ConfigError("adapter", f"{directory}: lora_alpha is {alpha!r}; expected a positive number")
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    names = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in state if k.startswith(PREFIX)})
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in names:
        a, b = (state.get(f"{PREFIX}{name}.{part}.weight") for part in ("lora_A", "lora_B"))
        if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise ShapeError(f"{weights}: {name} needs lora_A.weight (r={r}, in) and lora_B.weight (out, r={r}), "
                             f"got {None if a is None else tuple(a.shape)} and {None if b is None else tuple(b.shape)}")
        tensors[name] = (a.float(), b.float())
    if not tensors or len(tensors) * 2 != len(state):
        raise ShapeError(f"{weights}: expected only keys {PREFIX}<module>.lora_A.weight and .lora_B.weight, got "
                         f"{sorted(state)[:4]}")
    return AdapterWeights(str(directory), r, float(scaling), tensors)


class _Rows:
    """The per-row state all wrapped layers read, in device buffers a CUDA graph reads at replay: each row's slot,
    each slot's scaling, and for each packing P the rows' masks of the op's dense form (built once a step here,
    not once a layer)."""

    def __init__(self, max_loras: int, max_rank: int, max_rows: int, device: torch.device, dtype: torch.dtype):
        self.S, self.R, self.max_rows, self.dtype = max_loras, max_rank, max_rows, dtype
        self.scales = torch.zeros(max_loras, device=device)  # each slot's alpha / r (0: empty)
        self.rows = torch.full((max_rows,), max_loras, dtype=torch.long, device=device)  # slot a row; S: none
        self.masks: dict[int, torch.Tensor] = {}  # P -> (max_rows, S*P*R)
        self.compute = False  # False: no row uses an adapter, so the layers skip the LoRA term (eager steps)

    def add_packing(self, parts: int) -> None:
        if parts not in self.masks:
            self.masks[parts] = lora_mask(self.rows, self.scales, parts, self.R, self.dtype).clone()  # its own memory

    def refresh(self) -> None:
        for parts, mask in self.masks.items():
            mask.copy_(lora_mask(self.rows, self.scales, parts, self.R, self.dtype))


class MultiLoRALinear(nn.Module):
    """``base_layer(x) + lora_B((lora_A(x)) * mask)``: a frozen Linear plus the LoRA term of each row's slot.
    ``parts`` are the output rows of each packed projection ((name, start, stop); one part unless fused)."""

    def __init__(self, base: nn.Linear, parts: Sequence[tuple[str, int, int]], rows: _Rows):
        super().__init__()
        self.base_layer, self.parts, self._rows = base, tuple(parts), rows
        self.in_features, self.out_features = base.in_features, base.out_features
        self.bounds = (0, *(stop for _, _, stop in self.parts))
        width = rows.S * len(self.parts) * rows.R
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.register_buffer("lora_A", torch.zeros(width, base.in_features, **kw), persistent=False)
        self.register_buffer("lora_B", torch.zeros(width, base.out_features, **kw), persistent=False)
        self.impl = "auto"  # the registry's lora implementation

    def forward(self, x_BTI: torch.Tensor) -> torch.Tensor:
        y_BTO = self.base_layer(x_BTI)
        rows = self._rows
        if not rows.compute:
            return y_BTO
        n_rows = x_BTI.shape[0]
        if x_BTI.dim() != 3 or n_rows > rows.max_rows:
            raise ShapeError(f"MultiLoRALinear takes (B, T, {self.in_features}) with B <= {rows.max_rows} rows, got "
                             f"{tuple(x_BTI.shape)}")
        op = resolve("lora", self.impl, device=x_BTI.device, dtype=x_BTI.dtype)
        # in place: y is the base layer's own output
        op(y_BTO.view(-1, self.out_features), x_BTI.reshape(-1, self.in_features), self.lora_A, self.lora_B,
           rows.rows[:n_rows], rows.scales, self.bounds, rows.masks[len(self.parts)][:n_rows])
        return y_BTO

    def write(self, slot: int, part: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Slot ``slot``'s A (r, in) and B (part's rows, r) for part ``part``; None empties it."""
        R, P = self._rows.R, len(self.parts)
        cols = slice((slot * P + part) * R, (slot * P + part + 1) * R)
        _, start, stop = self.parts[part]
        self.lora_A[cols].zero_()
        self.lora_B[cols].zero_()
        if a is not None and b is not None:
            r = a.shape[0]
            self.lora_A[cols][:r].copy_(a)
            self.lora_B[cols][:r, start:stop].copy_(b.t())

    def extra_repr(self) -> str:
        return f"parts={[p[0] for p in self.parts]}, slots={self._rows.S}, max_rank={self._rows.R}"


class MultiLoRA:
    """``max_loras`` adapter slots of rank up to ``max_rank`` on ``model``'s Linear layers named by ``targets``
    (module-name suffixes, or one regex matching whole names, as in PEFT; fused layers match by their parts'
    names), for batches of up to ``max_rows`` rows. Wraps the layers in place."""

    def __init__(self, model: nn.Module, *, max_loras: int = 1, max_rank: int = 16, max_rows: int = 256,
                 targets: Iterable[str] | str = DEFAULT_TARGETS):
        for field, v in (("max_loras", max_loras), ("max_rank", max_rank), ("max_rows", max_rows)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(field, f"must be a positive integer, got {v!r}")
        tgt: tuple[str, ...] | str = targets if isinstance(targets, str) else tuple(targets)
        if any(isinstance(m, MultiLoRALinear) for m in model.modules()):
            raise ConfigError("lora", "the model is wrapped for multi-LoRA serving already")
        weight = next(iter(model.parameters()))
        self.rows = _Rows(max_loras, max_rank, max_rows, weight.device, weight.dtype)
        self.layers: dict[str, MultiLoRALinear] = {}  # by the name of each adaptable (unfused) module
        self._parts: dict[str, tuple[MultiLoRALinear, int]] = {}
        modules = dict(model.named_modules())
        for name, m in list(modules.items()):
            if type(m) is not nn.Linear or name.rsplit(".", 1)[-1] == "lm_head":
                continue
            owner, _, leaf = name.rpartition(".")
            parent = modules[owner] if owner else model
            fused = getattr(parent, _FUSED_ATTR, {}).get(leaf)
            if fused is None:
                names, widths = (leaf,), (m.out_features,)
            else:
                names, widths = fused
            full = [f"{owner}.{n}" if owner else n for n in names]
            if not any(_matches(n, tgt) for n in full):
                continue
            bounds = torch.tensor([0, *widths]).cumsum(0).tolist()
            parts = [(n, bounds[i], bounds[i + 1]) for i, n in enumerate(full)]
            layer = MultiLoRALinear(m, parts, self.rows)
            self.rows.add_packing(len(parts))
            setattr(parent, leaf, layer)
            for i, n in enumerate(full):
                if _matches(n, tgt):
                    self._parts[n] = (layer, i)
            self.layers[name] = layer
        if not self._parts:
            raise ConfigError("lora.targets", f"{tgt!r} matches no nn.Linear of {type(model).__name__} (lm_head "
                              "excluded)")
        self.names: dict[int, str] = {}  # slot -> the adapter path loaded there (for messages)

    @property
    def max_loras(self) -> int:
        return self.rows.S

    @property
    def max_rank(self) -> int:
        return self.rows.R

    @property
    def targets(self) -> list[str]:
        """The module names an adapter may adapt."""
        return sorted(self._parts)

    def check(self, weights: AdapterWeights) -> None:
        """ConfigError / ShapeError unless ``weights`` fits: rank <= max_rank, every module wrapped, shapes equal."""
        if weights.r > self.rows.R:
            raise ConfigError("adapter", f"{weights.path} has rank {weights.r}, above this server's max LoRA rank "
                              f"{self.rows.R}; restart with --max-lora-rank {weights.r} or more")
        missing = [n for n in weights.modules if n not in self._parts]
        if missing:
            wrapped = sorted({n.rsplit(".", 1)[-1] for n in self._parts})
            raise ConfigError("adapter", f"{weights.path} adapts {missing[:3]}, which are not among the layers "
                              f"wrapped for LoRA (their suffixes: {wrapped})")
        for name in weights.modules:
            layer, i = self._parts[name]
            _, start, stop = layer.parts[i]
            a, b = weights.tensors[name]
            if a.shape[1] != layer.in_features or b.shape[0] != stop - start:
                raise ShapeError(f"{weights.path}: {name} is {a.shape[1]} -> {b.shape[0]}, the model's layer "
                                 f"{layer.in_features} -> {stop - start}")

    def _slot(self, slot: int) -> None:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < self.rows.S:
            raise ConfigError("slot", f"{slot!r} is not a slot; expected 0 .. {self.rows.S - 1}")

    @torch.no_grad()
    def load(self, slot: int, weights: AdapterWeights) -> None:
        """Copy ``weights`` into ``slot`` (checked first; the slot is untouched when it does not fit). Rows that
        use the slot must not run meanwhile (the caller's serialisation)."""
        self._slot(slot)
        self.check(weights)
        for name, (layer, i) in self._parts.items():
            a, b = weights.tensors.get(name, (None, None))
            layer.write(slot, i, a, b)
        self.rows.scales[slot] = weights.scaling
        self.names[slot] = weights.path
        self.rows.refresh()

    @torch.no_grad()
    def clear(self, slot: int) -> None:
        """Empty ``slot``: its rows compute as the base model."""
        self._slot(slot)
        for layer, i in self._parts.values():
            layer.write(slot, i, None, None)
        self.rows.scales[slot] = 0.0
        self.names.pop(slot, None)
        self.rows.refresh()

    @torch.no_grad()
    def set_rows(self, slots: Sequence[int | None], *, always: bool = False) -> None:
        """Row b of the next forwards uses slot ``slots[b]`` (None, and rows past the list: no adapter).
        ``always``: compute the LoRA term even when no row uses an adapter (a CUDA graph is being captured, or
        replays one that has it)."""
        if len(slots) > self.rows.max_rows:
            raise ShapeError(f"{len(slots)} rows; this MultiLoRA was built for at most {self.rows.max_rows}")
        host = torch.full((self.rows.max_rows,), self.rows.S, dtype=torch.long)
        for b, s in enumerate(slots):
            if s is not None:
                self._slot(s)
                host[b] = s
        self.rows.rows.copy_(host)
        self.rows.refresh()
        self.rows.compute = always or any(s is not None for s in slots)
