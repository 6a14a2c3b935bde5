"""LoRA: low-rank adapters on a model's Linear layers, applied from outside the model (Hu et al. 2021,
arXiv:2106.09685), with PEFT's names, initialisation and files, so adapters move both ways between lmstack and
Hugging Face PEFT.

``apply_lora(model, r=8, alpha=16, targets=("q_proj", "v_proj"))`` replaces each target ``nn.Linear`` by a
:class:`LoRALinear`, ``y = base_layer(x) + lora_B(lora_A(dropout(x))) * alpha / r`` (``alpha / sqrt(r)`` with
``use_rslora``, Kalajdzievski 2023), and freezes every other parameter: an optimizer over the parameters that
require grad (the Trainer's) trains the adapters alone. ``lora_A`` starts Kaiming-uniform and ``lora_B`` at zero,
as PEFT does, so the model computes what it did until the first step.

``save_adapter(model, dir)`` writes ``adapter_model.safetensors`` (keys ``base_model.model.<module>.lora_A.weight``)
and ``adapter_config.json`` (``peft_type`` LORA): for a Llama-shaped TransformerLM, whose module names are
transformers' LlamaForCausalLM's, ``peft.PeftModel.from_pretrained(hf_model, dir)`` loads it, and
``load_adapter(model, dir)`` loads one PEFT saved. ``merge_lora(model)`` folds every adapter into its base weight
and puts the plain ``nn.Linear`` back: the model is then the architecture it was built as, and
``save_pretrained``, export and serve's fast paths take it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from compress.nf4 import NF4Linear, nf4_
from specs.errors import ConfigError, ShapeError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."  # PEFT's key prefix in adapter_model.safetensors
DEFAULT_TARGETS = ("q_proj", "v_proj")  # PEFT's default for Llama
# adapter_config.json's fields that plain LoRA fixes (PEFT's LoraConfig names)
_PEFT_FIELDS: dict[str, Any] = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none", "fan_in_fan_out": False,
                                "use_dora": False, "init_lora_weights": True, "inference_mode": True,
                                "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
                                "rank_pattern": {}, "alpha_pattern": {}}


class LoRALinear(nn.Module):
    """``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling`` over a frozen ``nn.Linear`` (PEFT's
    ``lora.Linear``: the same submodule names, so state_dict keys read ``<name>.lora_A.weight``). Unlike PEFT's
    it has no ``weight`` attribute: code that rewrites a Linear's weight in place (``fold_norms``, which would scale
    the base and not ``lora_A``) then leaves it alone; merge first."""

    def __init__(self, base: nn.Linear | NF4Linear, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__()
        _check_hparams(r, alpha, dropout)
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        kw = _device_dtype(base)
        self.lora_A = nn.Linear(base.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, **kw)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.disabled = False  # True: the base layer alone (adapters_disabled; DPO's reference model)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's init_lora_weights=True
        nn.init.zeros_(self.lora_B.weight)
        for p in base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return self.base_layer(x)
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``lora_B @ lora_A * scaling`` (out, in), in fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def merged(self) -> nn.Linear:
        """The base Linear with the adapter folded into its weight (a new weight tensor; the base is unchanged). An
        NF4 base (QLoRA) is dequantized first: the result is a full-precision Linear (PEFT quantizes it again)."""
        base = self.base_layer
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, **_device_dtype(base))
        with torch.no_grad():
            out.weight.copy_((_base_weight(base).float() + self.delta_weight()).to(out.weight.dtype))
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, alpha={self.alpha}"
                + (", use_rslora=True" if self.use_rslora else ""))


def _device_dtype(base: nn.Module) -> dict[str, Any]:
    if isinstance(base, NF4Linear):
        return {"device": base.device, "dtype": base.dtype}
    return {"device": base.weight.device, "dtype": base.weight.dtype}


def _base_weight(base: nn.Module) -> torch.Tensor:
    return base.dequantized() if isinstance(base, NF4Linear) else base.weight


def _check_hparams(r: Any, alpha: Any, dropout: Any) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ConfigError("lora.r", f"the adapter rank must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ConfigError("lora.alpha", f"must be a positive number (the update is scaled by alpha / r), got "
                                        f"{alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError("lora.dropout", f"must be in [0, 1), got {dropout!r}")


def _matches(name: str, targets: tuple[str, ...] | str) -> bool:
    """PEFT's target rule: a regex string must match the whole module name; a list names module-name suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               targets: Iterable[str] | str = DEFAULT_TARGETS, use_rslora: bool = False) -> int:
    """Wrap every ``nn.Linear`` of ``model`` named by ``targets`` (module-name suffixes such as "q_proj", or one
    regex matching whole names) in a :class:`LoRALinear`, in place, and freeze every other parameter. Returns the
    number of layers adapted. A model with adapters already, or targets that match no Linear, is a ConfigError
    (the latter listing the Linear names there are); fused projections (``fuse_projections``) hide q/k/v_proj and
    gate/up_proj: adapt the model before fusing it."""
    chosen = _chosen(model, r, alpha, dropout, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    for name, linear in chosen:
        owner, _, leaf = name.rpartition(".")
        layer = LoRALinear(linear, r, alpha, dropout, use_rslora).train(linear.training)  # eval stays eval
        setattr(modules[owner] if owner else model, leaf, layer)
    return len(chosen)


def _chosen(model: nn.Module, r: Any, alpha: Any, dropout: Any, targets: Iterable[str] | str
            ) -> list[tuple[str, nn.Module]]:
    """The (name, Linear) pairs :func:`apply_lora` adapts; ConfigError, before anything changes, for bad
    hyperparameters, a model with adapters already, targets matching no Linear, or the LM head."""
    _check_hparams(r, alpha, dropout)
    tgt: tuple[str, ...] | str = targets if isinstance(targets, str) else tuple(targets)
    if not tgt:
        raise ConfigError("lora.targets", "names no module; expected Linear names such as ('q_proj', 'v_proj')")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ConfigError("lora", "the model has LoRA adapters already; merge_lora(model) first to stack another")
    chosen = [(name, m) for name, m in model.named_modules()
              if (type(m) is nn.Linear or isinstance(m, NF4Linear)) and _matches(name, tgt)]
    if not chosen:
        linears = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                          if isinstance(m, (nn.Linear, NF4Linear))})
        raise ConfigError("lora.targets", f"{tgt!r} matches no nn.Linear of {type(model).__name__}; its Linear "
                          f"layers are named {', '.join(linears) or '(none)'}")
    head = [name for name, _ in chosen if name.rsplit(".", 1)[-1] == "lm_head"]
    if head:  # TransformerLM's fused loss reads the head's weight itself, so an adapter there would be skipped
        raise ConfigError("lora.targets", f"{tgt!r} matches the LM head ({head[0]}), which the fused loss reads "
                          "directly; adapt the layers inside the network (q/k/v/o_proj, gate/up/down_proj)")
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's adapted layers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[int]:
    """Within the block every adapted layer computes its base layer alone, so ``model`` is the model it adapted
    (PEFT's ``disable_adapter()``; DPO's reference model without a copy). Yields the number of layers turned off;
    restores each layer's own setting on exit, also after an exception."""
    layers = list(lora_layers(model).values())
    before = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield len(layers)
    finally:
        for layer, was in zip(layers, before):
            layer.disabled = was


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight and put the plain ``nn.Linear`` back, in place; every parameter of
    the model then requires grad again (apply_lora froze them all). Returns the number of layers merged (0 for a
    model without adapters)."""
    layers = lora_layers(model)
    modules = dict(model.named_modules())
    for name, layer in layers.items():
        owner, _, leaf = name.rpartition(".")
        setattr(modules[owner] if owner else model, leaf, layer.merged().train(layer.training))
    if layers:
        for p in model.parameters():
            if p.is_floating_point():  # not a 4-bit base's bytes (NF4Linear), which stay frozen
                p.requires_grad_(True)
    return len(layers)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``state_dict`` the model would have after :func:`merge_lora`, without changing it: each adapted layer's
    ``<name>.weight`` is its base weight plus the adapter's delta (in the base weight's dtype; the base alone while
    the layer is ``disabled``) and ``<name>.bias`` its base bias, with no ``base_layer`` or ``lora_`` keys. Other
    entries are the model's own (detached, not copied). An NF4 layer (QLoRA) gives its dequantized weight, adapted
    or not. What a copy of a LoRA policy loads to sample from it (PEFT's ``merge_and_unload().state_dict()``, as
    TRL syncs vLLM)."""
    state = model.state_dict()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, NF4Linear):
                for key in [k for k in state if k.startswith(f"{name}.nf4_")]:
                    del state[key]
                state[f"{name}.weight"] = m.dequantized()
        for name, layer in lora_layers(model).items():
            for part in ("lora_A", "lora_B"):
                del state[f"{name}.{part}.weight"]
            w = state.pop(f"{name}.base_layer.weight")
            state[f"{name}.weight"] = w if layer.disabled else (w.float() + layer.delta_weight()).to(w.dtype)
            if f"{name}.base_layer.bias" in state:
                state[f"{name}.bias"] = state.pop(f"{name}.base_layer.bias")
    return state


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights under PEFT's keys (``base_model.model.<module>.lora_A.weight``)."""
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("lora", f"{type(model).__name__} has no LoRA adapters (apply_lora first)")
    out = {}
    for name, layer in layers.items():
        out[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach().contiguous().cpu()
        out[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous().cpu()
    return out


def adapter_config(model: nn.Module, base_model: str | None = None) -> dict[str, Any]:
    """PEFT's ``adapter_config.json`` for the model's adapters (one r, alpha and dropout for all of them)."""
    layers = list(lora_layers(model).items())
    if not layers:
        raise ConfigError("lora", f"{type(model).__name__} has no LoRA adapters (apply_lora first)")
    first = layers[0][1]
    if any((m.r, m.alpha, m.use_rslora) != (first.r, first.alpha, first.use_rslora) for _, m in layers):
        raise ConfigError("lora", "the adapters differ in r, alpha or use_rslora; PEFT's file holds one of each")
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    return {**_PEFT_FIELDS, "r": first.r, "lora_alpha": first.alpha, "lora_dropout": dropout,
            "target_modules": sorted({name.rsplit(".", 1)[-1] for name, _ in layers}), "use_rslora": first.use_rslora,
            "base_model_name_or_path": base_model}


def save_adapter(model: nn.Module, directory: str | os.PathLike[str], *, base_model: str | None = None) -> Path:
    """Write the adapters as PEFT does (``adapter_model.safetensors``, ``adapter_config.json``) into
    ``directory`` (created; other files there stay). Both files are written to a temporary directory first and
    renamed into place, the config last, so an error while writing leaves what was there."""
    return _write(directory, adapter_state_dict(model), adapter_config(model, base_model))


def save_adapter_state(state: Mapping[str, torch.Tensor], directory: str | os.PathLike[str], *, r: int,
                       alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                       base_model: str | None = None) -> Path:
    """:func:`save_adapter` from a model's full state dict (``<module>.lora_A.weight`` keys, e.g. a training
    checkpoint's consolidated weights, whatever the strategy that sharded them) and the adapters' settings."""
    _check_hparams(r, alpha, dropout)
    tensors = {f"{PREFIX}{k}": v.detach().contiguous().cpu() for k, v in state.items()
               if k.endswith((".lora_A.weight", ".lora_B.weight"))}
    if not tensors:
        raise ConfigError("lora", "the state holds no LoRA weights (<module>.lora_A.weight)")
    targets = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for k in tensors})
    cfg = {**_PEFT_FIELDS, "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": targets,
           "use_rslora": use_rslora, "base_model_name_or_path": base_model}
    return _write(directory, tensors, cfg)


def random_adapter(model: nn.Module, directory: str | os.PathLike[str], *, r: int = 16, alpha: float = 16,
                   targets: Iterable[str] | str = DEFAULT_TARGETS, seed: int = 0, std: float = 0.02) -> Path:
    """Write an adapter with random A and B (normal, ``std``; seeded) for ``model``'s Linear layers named by
    ``targets``, as if trained elsewhere: for benchmarks and tests of adapter serving. ``model`` is not changed
    (its layers must not be fused yet, as for :func:`apply_lora`)."""
    _check_hparams(r, alpha, 0.0)
    tgt: tuple[str, ...] | str = targets if isinstance(targets, str) else tuple(targets)
    chosen = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and _matches(name, tgt)
              and name.rsplit(".", 1)[-1] != "lm_head"]
    if not chosen:
        raise ConfigError("lora.targets", f"{tgt!r} matches no nn.Linear of {type(model).__name__} (lm_head excluded)")
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, m in chosen:
        state[f"{name}.lora_A.weight"] = torch.randn(r, m.in_features, generator=g) * std
        state[f"{name}.lora_B.weight"] = torch.randn(m.out_features, r, generator=g) * std
    return save_adapter_state(state, directory, r=r, alpha=alpha)


def _write(directory: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], cfg: Mapping[str, Any]) -> Path:
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ConfigError("directory", f"cannot save an adapter into {target}: it exists and is not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=target))
    except OSError as exc:
        raise ConfigError("directory", f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        save_file(dict(tensors), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            os.replace(tmp / name, target / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_adapter_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``adapter_config.json`` of an adapter directory, checked to be one this module loads (plain LoRA)."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise ConfigError("adapter", f"{directory} has no {ADAPTER_CONFIG}; expected a LoRA adapter directory (what "
                          "save_adapter or PEFT's save_pretrained writes)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("adapter", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, Mapping) or cfg.get("peft_type") != "LORA":
        kind = cfg.get("peft_type") if isinstance(cfg, Mapping) else type(cfg).__name__
        raise ConfigError("adapter", f"{path}: peft_type is {kind!r}; only LORA adapters load here")
    unsupported = [k for k, ok in (("use_dora", False), ("fan_in_fan_out", False)) if cfg.get(k, ok) != ok]
    unsupported += [k for k in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform")
                    if cfg.get(k)]
    if cfg.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise ConfigError("adapter", f"{path} uses {', '.join(unsupported)}, which this loader does not support "
                          "(plain LoRA: one r and alpha, no DoRA, no trained biases or extra modules)")
    return dict(cfg)


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> int:
    """Apply the LoRA adapter saved in ``directory`` (by :func:`save_adapter` or PEFT) to ``model`` in place and
    load its weights; returns the number of layers adapted. Its keys must name exactly the Linear layers it
    targets, with matching shapes (else a ShapeError naming the key)."""
    cfg = read_adapter_config(directory)
    weights = Path(directory) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ConfigError("adapter", f"{directory} has no {ADAPTER_WEIGHTS} (safetensors only; nothing is unpickled)")
    state = load_file(str(weights))
    names = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in state if k.startswith(PREFIX)})
    if not names or len(names) * 2 != len(state):
        raise ShapeError(f"{weights}: expected keys {PREFIX}<module>.lora_A.weight and .lora_B.weight, got "
                         f"{sorted(state)[:4]}")
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    missing = [n for n in names if n not in linears]
    if missing:
        raise ShapeError(f"{weights} adapts modules {type(model).__name__} has no Linear for: {missing[:4]}")
    r = int(cfg["r"])
    for name in names:  # every shape before the model is touched
        m = linears[name]
        for part, want in (("lora_A", (r, m.in_features)), ("lora_B", (m.out_features, r))):
            t = state.get(f"{PREFIX}{name}.{part}.weight")
            if t is None or tuple(t.shape) != want:
                raise ShapeError(f"{weights}: {PREFIX}{name}.{part}.weight is "
                                 f"{'missing' if t is None else 'of shape ' + str(tuple(t.shape))}; the model's "
                                 f"layer ({m.in_features} -> {m.out_features}) at r={r} needs {want}")
    n = apply_lora(model, r=r, alpha=cfg["lora_alpha"], dropout=float(cfg.get("lora_dropout") or 0.0),
                   targets="|".join(re.escape(x) for x in names), use_rslora=bool(cfg.get("use_rslora", False)))
    layers = lora_layers(model)
    with torch.no_grad():
        for name, layer in layers.items():
            for part in ("lora_A", "lora_B"):
                getattr(layer, part).weight.copy_(state[f"{PREFIX}{name}.{part}.weight"])
    return n


class LoraAdapters:
    """The ``lmstack.adapters`` plugin ``lora``: how the Trainer adapts a model for ``train.lora`` (a
    ``specs.config.LoraConfig``) and writes each checkpoint's adapter files, without importing this package."""

    @staticmethod
    def apply(model: nn.Module, cfg: Any) -> int:
        """Adapt ``model`` for ``cfg``; with ``quantize_base: nf4`` (QLoRA) its Linear layers but the LM head
        become NF4 first."""
        base = getattr(cfg, "quantize_base", "none")
        if base not in ("none", "nf4"):
            raise ConfigError("train.lora.quantize_base", f"expected none or nf4, got {base!r}")
        if base == "nf4":
            _chosen(model, cfg.r, cfg.alpha, cfg.dropout, tuple(cfg.targets))  # what apply_lora would refuse, first
            nf4_(model, double_quant=getattr(cfg, "double_quant", True))
        return apply_lora(model, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, targets=tuple(cfg.targets),
                          use_rslora=cfg.use_rslora)

    @staticmethod
    def save(weights: str | os.PathLike[str], directory: str | os.PathLike[str], cfg: Any,
             base_model: str | None = None) -> Path:
        """The adapters of the model weights file ``weights`` (a checkpoint's model.safetensors) into
        ``directory``; only the adapters' tensors are read from it."""
        with safe_open(str(weights), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if k.endswith((".lora_A.weight", ".lora_B.weight"))}  # noqa: SIM118
        return save_adapter_state(state, directory, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout,
                                  use_rslora=cfg.use_rslora, base_model=base_model)


    @staticmethod
    def disabled(model: nn.Module) -> contextlib.AbstractContextManager[int]:
        """:func:`adapters_disabled`: the adapted model computing as its base model within the block."""
        return adapters_disabled(model)

    @staticmethod
    def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
        """:func:`merged_state_dict`: the adapted model's weights as its merged model's ``state_dict``."""
        return merged_state_dict(model)

    @staticmethod
    def check(directory: str | os.PathLike[str]) -> dict[str, Any]:
        """The adapter directory's config, or the ConfigError :func:`load_adapter` would raise for it (no
        adapter_config.json, not LoRA, unsupported options): for a check before a model loads."""
        return read_adapter_config(directory)

    @staticmethod
    def merge_from(model: nn.Module, directory: str | os.PathLike[str]) -> int:
        """Load the adapter saved in ``directory`` (PEFT's or :func:`save_adapter`'s files) and merge it into the
        model's weights (serve's ``--adapter``); returns the number of layers changed."""
        n = load_adapter(model, directory)
        merge_lora(model)
        return n

    @staticmethod
    def random(model: nn.Module, directory: str | os.PathLike[str], **kwargs: Any) -> Path:
        """:func:`random_adapter`: a random adapter's files for ``model`` (benchmarks of adapter serving)."""
        return random_adapter(model, directory, **kwargs)

    @staticmethod
    def read(directory: str | os.PathLike[str]) -> Any:
        """:func:`compress.multi_lora.read_adapter`: an adapter's weights on the host, checked, for a slot."""
        from compress.multi_lora import read_adapter

        return read_adapter(directory)

    @staticmethod
    def multi(model: nn.Module, **kwargs: Any) -> Any:
        """:class:`compress.multi_lora.MultiLoRA` on ``model`` (serve's ``--enable-lora``): adapter slots that
        each batch row picks from."""
        from compress.multi_lora import MultiLoRA

        return MultiLoRA(model, **kwargs)


LORA = LoraAdapters()

