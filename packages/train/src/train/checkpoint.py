"""Training checkpoints: atomic directories under ``<out_dir>/checkpoints/step_XXXXXXXX``, keep-last-k, resume.

A checkpoint directory holds everything needed to continue bit-for-bit and everything serve/eval/governance read::

    model.safetensors       full weights (plain FQNs)              } dist.state: written through DCP by all
    optimizer/*.safetensors optimizer tensors, one shard per rank  }   ranks, loadable on any world size
    config.json             the ModelConfig (schema_version), so TransformerLM.from_pretrained(dir) works
    tokenizer.json, tokenizer_config.json, ...   the tokenizer (tokenizer.save), so serve can load it
    trainer_state.json      step, tokens, scheduler, grad scaler, the optimizer's non-tensor state, run config
    rng/rank_XXXXX.json     torch / cuda / python / numpy RNG states of each rank
    data/rank_XXXXX.json    each rank's data-loader ``state_dict()``
    adapter/                a LoRA run's adapters (train.lora) as PEFT saves them; model.safetensors then holds
                            the frozen base and the adapters under PEFT's names (from_pretrained merges them)
    modelcard.json          sha256 and size of every file above (specs.modelcard): checked before resuming
    metadata.json           provenance for governance (specs.metadata), incl. the same file hashes

Nothing is pickled: tensors are safetensors, the rest JSON. The directory is assembled under a hidden temporary
name and renamed into place once complete, so a crash never leaves a half checkpoint under a ``step_`` name, and
``resume='auto'`` only ever sees complete ones.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dist
from dist.state import CheckpointError
from specs.errors import ConfigError
from specs.io import atomic_write_text, config_to_dict
from specs.modelcard import IntegrityError, ModelCard, sha256_file
from specs.schema import ConfigBase
from train import adapters, init_from

logger = logging.getLogger("train")

FORMAT_VERSION = 1
STATE_FILE = "trainer_state.json"
CARD_FILE = "modelcard.json"
METADATA_FILE = "metadata.json"
ADAPTER_DIR = "adapter"  # a LoRA run's adapters (train.lora), PEFT's adapter_model.safetensors + adapter_config.json
_PREFIX = "step_"


def checkpoints_root(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dir(out_dir: str | os.PathLike[str], step: int) -> Path:
    return checkpoints_root(out_dir) / f"{_PREFIX}{step:08d}"


def list_checkpoints(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit()
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def check_writable(out_dir: str | os.PathLike[str]) -> None:
    """Create ``out_dir/checkpoints`` and write a probe file there, or fail naming ``train.out_dir``."""
    root = checkpoints_root(out_dir)
    probe = root / f".write-probe-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError("train.out_dir",
                          f"cannot write checkpoints under {str(out_dir)!r}: {exc.strerror or exc}") from None


def check_new_run(out_dir: str | os.PathLike[str]) -> None:
    """A run that does not continue one of ``out_dir``'s checkpoints would write its step directories over them
    (and prune them as older): a ConfigError when ``out_dir`` holds any."""
    if earlier := list_checkpoints(out_dir):
        raise ConfigError("train.out_dir", f"{out_dir} holds checkpoints of an earlier run (newest "
                                           f"{earlier[-1].name}); continue it with --train.resume auto "
                                           "(Trainer.resume('auto')), or choose another --train.out_dir (or delete "
                                           "that one)")


def resolve_resume(spec: str | None, out_dir: str | os.PathLike[str]) -> Path | None:
    """``None`` -> None; ``'auto'`` -> the newest complete checkpoint of ``out_dir`` or None; a path -> that
    checkpoint (a run directory means its newest checkpoint). A path that is neither is a CheckpointError."""
    if spec is None:
        return None
    if spec == "auto":
        found = list_checkpoints(out_dir)
        return found[-1] if found else None
    p = Path(spec)
    if (p / STATE_FILE).is_file():
        return p
    found = list_checkpoints(p)
    if found:
        return found[-1]
    what = "does not exist" if not p.exists() else f"is not a checkpoint (no {STATE_FILE}) nor a run directory with one"
    raise CheckpointError(f"train.resume: {p} {what}")


# ---- RNG -------------------------------------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_initialized() else None,
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *(x.item() if hasattr(x, "item") else x for x in np_state[2:])],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]][: torch.cuda.device_count()])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


# ---- save ------------------------------------------------------------------------------------------------------
def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save(trainer: Any, out_dir: str | os.PathLike[str]) -> Path:
    """Write a checkpoint of ``trainer`` at its current step; every rank must call. Returns the final path."""
    env = trainer.env
    final = step_dir(out_dir, trainer.global_step)
    tmp = final.with_name(f".tmp-{final.name}")
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        if trainer.tokenizer is not None and hasattr(trainer.tokenizer, "save"):
            trainer.tokenizer.save(tmp)  # creates tmp
        tmp.mkdir(parents=True, exist_ok=True)
    dist.barrier(env)
    dist.save_model(trainer.module, tmp, env)
    optim_rest = dist.save_optimizer(trainer.module, trainer.optimizer, tmp, env)
    _write_json(tmp / "rng" / f"rank_{env.rank:05d}.json", rng_state())
    loader = trainer.dataloader
    if loader is not None and hasattr(loader, "state_dict"):
        _write_json(tmp / "data" / f"rank_{env.rank:05d}.json", loader.state_dict())
    dist.barrier(env)
    if env.is_main:
        _finish(trainer, tmp, final, optim_rest)
    dist.barrier(env)
    return final


def _finish(trainer: Any, tmp: Path, final: Path, optim_rest: dict[str, Any]) -> None:
    model_cfg = getattr(trainer.module, "config", None)
    if isinstance(model_cfg, ConfigBase):
        _write_json(tmp / "config.json", config_to_dict(model_cfg))
    state = {
        "format_version": FORMAT_VERSION,
        "step": trainer.global_step,
        "tokens_seen": trainer.tokens_seen,
        "skipped_steps": trainer.skipped_steps,
        "world_size": trainer.env.world_size,
        "strategy": trainer.dist_cfg.strategy,
        "scheduler": trainer.scheduler.state_dict(),
        "grad_scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "optimizer": optim_rest,
        "config": trainer.config_dict(),
    }
    _write_json(tmp / STATE_FILE, state)
    lora = getattr(trainer.cfg, "lora", None)
    if lora is not None:  # the adapters alone, as PEFT saves them, from the consolidated weights (any strategy)
        adapters.save(tmp / dist.state.MODEL_FILE, tmp / ADAPTER_DIR, lora,
                      base_model=getattr(trainer.cfg, "init_from", None))
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    card = ModelCard.for_files(trainer.run_name, tmp, files, config=config_to_dict(model_cfg)
                               if isinstance(model_cfg, ConfigBase) else {})
    atomic_write_text(tmp / CARD_FILE, card.to_json())
    hashes = {name: h.sha256 for name, h in card.files.items()}
    parents = []
    if trainer.resumed_from is not None:
        parent = Path(trainer.resumed_from)
        weights = parent / dist.state.MODEL_FILE
        parents.append({"kind": "checkpoint", "path": str(parent),
                        "sha256": sha256_file(weights) if weights.is_file() else None})
    if getattr(trainer.cfg, "init_from", None):  # the model the run started from (train.init_from)
        parents.append(init_from.parent(trainer.cfg.init_from))
    metrics = {k: float(v) for k, v in trainer.last_metrics.items() if isinstance(v, (int, float))}
    doc = trainer.run_info.build(step=trainer.global_step, checkpoint_path=str(final), files=hashes,
                                 metrics=metrics, parents=parents)
    _write_json(tmp / METADATA_FILE, doc)
    if final.exists():  # the same step saved again (e.g. after a resume): swap, then drop the old one
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def prune(out_dir: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; return the deleted paths."""
    found = list_checkpoints(out_dir)
    doomed = found[:-keep] if keep > 0 else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


# ---- load ------------------------------------------------------------------------------------------------------
def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check ``path`` is a complete, unaltered checkpoint; return its trainer state. CheckpointError otherwise."""
    p = Path(path)
    for name in (STATE_FILE, CARD_FILE, dist.state.MODEL_FILE):
        if not (p / name).is_file():
            raise CheckpointError(f"{p}: incomplete checkpoint, {name} is missing")
    try:
        card = ModelCard.load(p / CARD_FILE)
        card.verify(p)
    except IntegrityError as exc:
        raise CheckpointError(f"corrupt checkpoint: {exc}") from None
    except Exception as exc:
        raise CheckpointError(f"{p / CARD_FILE}: unreadable model card ({exc})") from None
    try:
        state = json.loads((p / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{p / STATE_FILE}: not valid JSON ({exc})") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{p / STATE_FILE}: format_version {version!r}, expected {FORMAT_VERSION}")
    return state


def load(trainer: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Restore ``trainer`` from the checkpoint at ``path`` (every rank must call); returns the trainer state."""
    env, p = trainer.env, Path(path)
    error = None
    if env.is_main:
        try:
            verify(p)
        except CheckpointError as exc:
            error = str(exc)
    error = dist.broadcast_json(env, error)
    if error is not None:
        raise CheckpointError(error)
    state = json.loads((p / STATE_FILE).read_text(encoding="utf-8"))
    dist.load_model(trainer.module, p)
    dist.load_optimizer(trainer.module, trainer.optimizer, p, state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and state.get("grad_scaler"):
        trainer.scaler.load_state_dict(state["grad_scaler"])
    rng = p / "rng" / f"rank_{env.rank:05d}.json"
    if rng.is_file():
        set_rng_state(json.loads(rng.read_text(encoding="utf-8")))
    else:
        logger.warning("%s has no RNG state for rank %d (saved with world size %s); RNG streams start fresh",
                       p, env.rank, state.get("world_size"))
    loader = trainer.dataloader
    data = p / "data" / f"rank_{env.rank:05d}.json"
    if loader is not None and hasattr(loader, "load_state_dict"):
        if not data.is_file() and getattr(loader, "state_is_global", False):
            data = p / "data" / "rank_00000.json"  # every rank reads the same global stream: any rank's state fits
        if not data.is_file():
            raise CheckpointError(f"{p}: no data-loader state for rank {env.rank} (saved with world size "
                                  f"{state.get('world_size')}); an exact resume needs the loader's position")
        loader.load_state_dict(json.loads(data.read_text(encoding="utf-8")))
    return state
