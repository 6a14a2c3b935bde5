"""Sparse autoencoders (feature dictionaries) over a model's activations.

:class:`SparseAutoencoder` writes an activation ``x`` (D) as a sparse, non-negative combination of ``d_sae``
learned directions: ``f = act((x - b_dec) W_enc + b_enc)``, ``x_hat = f W_dec + b_dec``, the rows of ``W_dec``
kept at unit norm. ``k`` set: TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders",
arXiv:2406.04093: the ``k`` largest pre-activations kept, through a ReLU; loss the squared error, plus their
auxiliary loss on dead latents, ``aux_k``, weighted 1/32). ``k`` None: ReLU with an L1 penalty on the features
times their decoder norms (Bricken et al. 2023; Anthropic's April 2024 update), weighted ``l1_coefficient``.

Tensors are named and shaped as SAELens names them (``W_enc`` (D, d_sae), ``b_enc``, ``W_dec`` (d_sae, D),
``b_dec``) in ``sae_weights.safetensors``, with ``cfg.json`` beside them; :func:`train_sae` fits one to
activations (e.g. ``capture(...)["resid_post", layer]`` rows), and :func:`sae_metrics` reports what SAE papers do:
the fraction of variance unexplained, L0 and the share of dead features.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from specs.errors import ConfigError, ShapeError

WEIGHTS, CONFIG = "sae_weights.safetensors", "cfg.json"
AUX_WEIGHT = 1 / 32  # Gao et al.'s alpha


class SparseAutoencoder(nn.Module):
    """``SparseAutoencoder(d_in, d_sae, k=None)``: see the module docstring. ``forward(x) -> (x_hat, f)``."""

    def __init__(self, d_in: int, d_sae: int, k: int | None = None, *, seed: int = 0):
        super().__init__()
        for name, v in (("d_in", d_in), ("d_sae", d_sae)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"must be a positive integer, got {v!r}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae):
            raise ConfigError("k", f"must be an integer in [1, d_sae={d_sae}] or None (ReLU + L1), got {k!r}")
        self.d_in, self.d_sae, self.k = d_in, d_sae, k
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(d_sae, d_in, generator=gen)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().clone())  # the decoder's transpose (Gao et al.'s initialisation)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., d_sae) feature activations (at most ``k`` non-zero a row with TopK)."""
        if x.shape[-1] != self.d_in:
            raise ShapeError(f"the SAE reads vectors of {self.d_in}, got a last dim of {x.shape[-1]}")
        pre = self.pre_acts(x)
        if self.k is None:
            return torch.relu(pre)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rows of ``W_dec`` back to unit norm (after each optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12))

    def config(self) -> dict[str, Any]:
        return {"architecture": "topk" if self.k is not None else "standard", "d_in": self.d_in,
                "d_sae": self.d_sae, "k": self.k, "activation_fn": "topk" if self.k is not None else "relu",
                "activation_fn_kwargs": {"k": self.k} if self.k is not None else {},  # where SAELens reads k
                "apply_b_dec_to_input": True, "normalize_activations": "none"}

    def save(self, directory: str | os.PathLike[str], **metadata: Any) -> Path:
        """``cfg.json`` (plus ``metadata``, e.g. the model and hook point) and ``sae_weights.safetensors`` into
        ``directory``, written to a temporary directory and renamed into place."""
        out = Path(directory)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps({**self.config(), **metadata}, indent=2) + "\n")
        if out.exists():  # the old directory moves aside before the new one takes its name
            old = out.parent / f".{out.name}.old.{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: torch.device | str = "cpu") -> SparseAutoencoder:
        """An SAE saved by :meth:`save` (or SAELens's ``standard`` / ``topk`` files: the same names)."""
        d = Path(directory)
        if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
            raise ConfigError("sae", f"{d} needs {CONFIG} and {WEIGHTS}")
        cfg = json.loads((d / CONFIG).read_text())
        arch = cfg.get("architecture", "standard")
        if arch not in ("standard", "topk"):
            raise ConfigError("sae", f"{d}: architecture {arch!r} is not one this loads (standard, topk)")
        k = (cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")) if arch == "topk" else None
        if arch == "topk" and k is None:
            raise ConfigError("sae", f"{d}: a topk SAE's cfg.json names no k")
        sae = cls(int(cfg["d_in"]), int(cfg["d_sae"]), k=None if k is None else int(k))
        state = load_file(str(d / WEIGHTS))
        want = {n: tuple(p.shape) for n, p in sae.state_dict().items()}
        got = {n: tuple(t.shape) for n, t in state.items()}
        if want != got:
            raise ConfigError("sae", f"{d}: tensors {got} do not match cfg.json's {want}")
        sae.load_state_dict(state)
        return sae.to(device)


def sae_loss(sae: SparseAutoencoder, x: torch.Tensor, *, l1_coefficient: float = 5.0, dead: torch.Tensor | None = None,
             aux_k: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, parts) for a batch ``x`` (N, D): the squared error summed over D and averaged over rows; TopK adds
    ``AUX_WEIGHT`` x the error of the residual's reconstruction from the ``aux_k`` largest pre-activations among the
    ``dead`` features (normalised by the residual's variance, as Gao et al.); ReLU adds ``l1_coefficient`` x the
    features times their decoder row norms, summed."""
    pre = sae.pre_acts(x)
    x_hat, f = sae(x)
    err = x_hat - x
    mse = err.pow(2).sum(-1).mean()
    parts = {"mse": mse.detach()}
    loss = mse
    if sae.k is None:
        l1 = (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
        loss = loss + l1_coefficient * l1
        parts["l1"] = l1.detach()
    elif dead is not None and bool(dead.any()):
        k = min(aux_k or sae.d_in // 2, int(dead.sum()))
        masked = pre.masked_fill(~dead, float("-inf"))
        top = masked.topk(k, dim=-1)
        f_aux = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        e_hat = f_aux @ sae.W_dec
        residual = (x - x_hat).detach()
        aux = (e_hat - residual).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean().clamp(min=1e-12)
        loss = loss + AUX_WEIGHT * aux.nan_to_num(0.0)
        parts["aux"] = aux.detach()
    return loss, parts


@dataclass
class TrainResult:
    sae: SparseAutoencoder
    history: list[dict[str, float]] = field(default_factory=list)  # every ``log_every`` steps


def _batches(x: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0] - batch_size + 1, batch_size):
            yield x[order[i:i + batch_size].to(x.device)]


def train_sae(activations: torch.Tensor, d_sae: int, *, k: int | None = 32, steps: int = 1000,
              batch_size: int = 256, lr: float = 4e-4, l1_coefficient: float = 5.0, dead_after: int = 500,
              log_every: int = 100, seed: int = 0) -> TrainResult:
    """Fit a :class:`SparseAutoencoder` of ``d_sae`` features to ``activations`` (N, D) with Adam: ``b_dec`` starts
    at their mean; after each step the decoder's rows are renormalised and their gradient's component along them
    removed first (Bricken et al.); a feature that has not fired for ``dead_after`` batches is dead, and TopK trains
    the dead ones with the auxiliary loss. ``history``: step, loss, mse, fvu, l0, dead_frac."""
    if activations.dim() != 2:
        raise ShapeError(f"activations must be (N, D), got {tuple(activations.shape)}")
    n, d = activations.shape
    if not 1 <= batch_size <= n:
        raise ConfigError("batch_size", f"must be in [1, {n}] (the number of activations), got {batch_size}")
    if steps < 1:
        raise ConfigError("steps", f"must be at least 1, got {steps}")
    x_all = activations.float()
    sae = SparseAutoencoder(d, d_sae, k=k, seed=seed).to(x_all.device)
    with torch.no_grad():
        sae.b_dec.copy_(x_all.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    since = torch.zeros(d_sae, dtype=torch.long, device=x_all.device)  # batches since each feature last fired
    result = TrainResult(sae)
    batches = _batches(x_all, batch_size, torch.Generator().manual_seed(seed))
    for step in range(1, steps + 1):
        x = next(batches)
        dead = since >= dead_after
        loss, parts = sae_loss(sae, x, l1_coefficient=l1_coefficient, dead=dead)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # keep updates tangent to the unit-norm constraint
            g, w = sae.W_dec.grad, sae.W_dec
            g -= (g * w).sum(1, keepdim=True) * w
        opt.step()
        sae.normalize_decoder()
        with torch.no_grad():
            fired = (sae.encode(x) > 0).any(0)
            since = torch.where(fired, 0, since + 1)
        if step % log_every == 0 or step == steps:
            result.history.append({"step": step, "loss": float(loss.detach()), "mse": float(parts["mse"]),
                                   "fvu": float(parts["mse"] * x.shape[0] / ((x - x.mean(0)).pow(2).sum()
                                                                              .clamp(min=1e-12))),
                                   "dead_frac": float(dead.float().mean()),
                                   "l0": float((sae.encode(x) > 0).float().sum(-1).mean())})
    if not math.isfinite(result.history[-1]["loss"]):
        raise ConfigError("lr", f"training diverged (loss {result.history[-1]['loss']}); lower lr={lr}")
    return result


@torch.no_grad()
def sae_metrics(sae: SparseAutoencoder, activations: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Over ``activations`` (N, D): ``fvu`` (squared error over the total variance), ``l0`` (features on a row,
    mean), ``dead_frac`` (features that never fire), ``mse`` (per row)."""
    x = activations.float()
    err = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        x_hat, f = sae(xb)
        err += float((x_hat - xb).pow(2).sum())
        l0 += float((f > 0).sum())
        fired |= (f > 0).any(0)
    total = float((x - x.mean(0)).pow(2).sum())
    n = x.shape[0]
    return {"fvu": err / max(total, 1e-12), "l0": l0 / n, "dead_frac": float((~fired).float().mean()),
            "mse": err / n}
