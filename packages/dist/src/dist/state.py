"""Model and optimizer state through ``torch.distributed.checkpoint`` (DCP), in safetensors, for any world size.

Every rank writes only the shards it holds and reads only the slices it needs, so a checkpoint saved by N ranks
under one strategy loads on M ranks under another (DCP reshards on load). The bytes are safetensors files read
by ``HuggingFaceStorageReader``, whose index is the files' JSON headers: nothing is unpickled on load.

Layout inside a checkpoint directory::

    model.safetensors        full weights, plain FQNs (consolidated from the rank shards by rank 0): what
                             serve, eval and export load, and what training resumes from
    optimizer/*.safetensors  optimizer tensors, flattened to ``state.<fqn>.<key>`` keys, one shard per rank
                             (the DTensor offsets live in each file's metadata)
    (optimizer.json)         the non-tensor part (``param_groups.<fqn>.<key>``): returned to the caller to write

ZeRO-1 optimizers (``ZeroRedundancyOptimizer``) consolidate on rank 0 and are written as full tensors in the same
flattened keys, so a ZeRO-1 checkpoint resumes under FSDP and the other way round.

Tensors DCP's safetensors consolidation mishandles are written apart: integer tensors (a QLoRA base's 4-bit bytes,
``compress.nf4``), which it cannot size (it asks ``torch.finfo``), and 0-d tensors, which it writes as zeros
(torch 2.13). Every rank gathers them whole, rank 0 adds them to ``model.safetensors`` before the file is
renamed into place, and every rank reads them back with safetensors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint import CheckpointException, HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.optim import ZeroRedundancyOptimizer

from dist.env import DistEnv, barrier, broadcast_json
from specs.errors import LmstackError

MODEL_FILE = "model.safetensors"
OPTIM_DIR = "optimizer"
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)
_WRAPPER_TOKENS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


class CheckpointError(LmstackError):
    """A checkpoint is missing, incomplete, corrupt, or does not fit the model it is loaded into."""


@contextlib.contextmanager
def _single_process_ok():
    # DCP warns that it "assumes the intent" when no process group exists; one process is a supported case here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def clean_fqn(name: str) -> str:
    for token in _WRAPPER_TOKENS:
        name = name.replace(token, "")
    return name


def _tensors_only(sd: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if what == "model" and len(out) != len(sd):
        extra = sorted(set(sd) - set(out))
        raise CheckpointError(f"model state has non-tensor entries {extra[:3]}; only tensors can be saved")
    return out


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: name}`` for parameters registered under several names (tied embeddings: ``lm_head.weight`` ->
    ``model.embed_tokens.weight``). Only the first name is stored, as Hugging Face checkpoints do."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        name = clean_fqn(name)
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def save_model(model: nn.Module, directory: str | os.PathLike[str], env: DistEnv) -> Path:
    """Write ``directory/model.safetensors`` (full weights) from every rank's shards. All ranks must call."""
    directory = Path(directory)
    aliases = tied_aliases(model)
    sd = {k: v for k, v in _tensors_only(get_model_state_dict(model), "model").items() if k not in aliases}
    whole = {k: _full(sd.pop(k)) for k in [k for k, v in sd.items() if not _dcp_writes(v)]}
    work = directory / ".model-dcp"
    if env.is_main:
        shutil.rmtree(work, ignore_errors=True)
    barrier(env)
    # Each rank writes its shard under work/sharded; rank 0 then consolidates them into one full file.
    with _single_process_ok():
        writer = HuggingFaceStorageWriter(str(work), save_distributed=True, enable_consolidation=True)
        dcp.save(sd, storage_writer=writer)
    if env.is_main:
        files = sorted(work.glob("*.safetensors"))
        if len(files) != 1:
            raise CheckpointError(f"consolidation produced {len(files)} weight files in {work}, expected 1")
        if whole:  # the tensors DCP mishandles, added by rank 0 (the file is renamed into place only once complete)
            with safe_open(str(files[0]), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                meta = f.metadata()
            save_file({**state, **{k: v.detach().cpu().contiguous() for k, v in whole.items()}}, str(files[0]),
                      metadata=meta)
        os.replace(files[0], directory / MODEL_FILE)
        shutil.rmtree(work)
    barrier(env)
    return directory / MODEL_FILE


def load_model(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    """Fill ``model`` (plain, DDP or FSDP-sharded) from the ``*.safetensors`` weights in ``directory``."""
    directory = Path(directory)
    _check_safetensors(directory, "model weights")
    aliases = tied_aliases(model)
    full = _tensors_only(get_model_state_dict(model), "model")
    sd = {k: v for k, v in full.items() if k not in aliases}
    whole = [k for k, v in sd.items() if not _dcp_writes(v)]
    _load({k: v for k, v in sd.items() if k not in whole}, directory, "model weights")
    if whole:
        sd.update(_read_whole(directory / MODEL_FILE, {k: sd[k] for k in whole}))
    set_model_state_dict(model, {**sd, **{alias: sd[name] for alias, name in aliases.items() if alias in full}})


def _dcp_writes(t: torch.Tensor) -> bool:
    """Whether DCP's safetensors consolidation writes ``t`` right: floating (it sizes dtypes by finfo) and not 0-d."""
    return t.is_floating_point() and t.dim() > 0


def _full(t: torch.Tensor) -> torch.Tensor:
    """``t`` whole: a DTensor (FSDP) gathered, on every rank."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _read_whole(path: Path, want: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors ``want`` names (those written apart), read whole from the model file and checked against the
    model's: the same shape, and for integers the same dtype (a float is cast, as DCP's loader casts)."""
    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            for k, like in want.items():
                if k not in keys:
                    raise CheckpointError(f"{path}: cannot load model weights: {k!r} is missing")
                t = f.get_tensor(k)
                if t.shape != like.shape or (t.dtype != like.dtype and not (t.is_floating_point()
                                                                            and like.is_floating_point())):
                    raise CheckpointError(f"{path}: cannot load model weights: {k!r} is {t.dtype} "
                                          f"{tuple(t.shape)}, the model's {like.dtype} {tuple(like.shape)}")
                if hasattr(like, "device_mesh"):  # an FSDP-sharded entry: this rank's part of the whole
                    from torch.distributed.tensor import distribute_tensor

                    out[k] = distribute_tensor(t.to(like.device, like.dtype), like.device_mesh, like.placements)
                else:
                    out[k] = t.to(like.device, like.dtype)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return out


def _check_safetensors(directory: Path, what: str) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files with {what}")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{f}: not a readable safetensors file ({exc})") from None
    return files


def _load(state: dict[str, torch.Tensor], directory: Path, what: str) -> None:
    reader = HuggingFaceStorageReader(str(directory))
    try:
        with _single_process_ok():
            dcp.load(state, storage_reader=reader)
    except (Exception, CheckpointException) as exc:  # DCP's CheckpointException (a BaseException) wraps each rank's
        lines = str(exc).strip().splitlines()  # traceback; its last line is the underlying error
        raise CheckpointError(f"{directory}: cannot load {what}: {lines[-1] if lines else type(exc).__name__}") from exc


# ---- optimizer ------------------------------------------------------------------------------------------------
def save_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str | os.PathLike[str],
                   env: DistEnv) -> dict[str, Any]:
    """Write optimizer tensors to ``directory/optimizer/``; return the JSON-able rest (same on every rank)."""
    out = Path(directory) / OPTIM_DIR
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)
        flat: dict[str, Any] = {}
        if env.is_main:
            flat = _flatten_zero(model, optimizer)
            out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in flat.items() if isinstance(v, torch.Tensor)},
                      str(out / "optimizer.safetensors"))
        rest = _jsonable({k: v for k, v in flat.items() if not isinstance(v, torch.Tensor)})
        return broadcast_json(env, rest)
    osd = get_optimizer_state_dict(model, optimizer, options=_FLAT)
    tensors = {k: v for k, v in osd.items() if isinstance(v, torch.Tensor)}
    with _single_process_ok():
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(out), save_distributed=True))
    return _jsonable({k: v for k, v in osd.items() if not isinstance(v, torch.Tensor)})


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str | os.PathLike[str],
                   rest: dict[str, Any]) -> None:
    """Restore what :func:`save_optimizer` wrote (``rest`` is its JSON part), resharding as needed."""
    src = Path(directory) / OPTIM_DIR
    _check_safetensors(src, "optimizer state")
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        md = HuggingFaceStorageReader(str(src)).read_metadata().state_dict_metadata
        full = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in md.items()}
        _load(full, src, "optimizer state")
        optimizer.load_state_dict(_unflatten_zero(model, optimizer, {**rest, **full}))
        return
    osd = get_optimizer_state_dict(model, optimizer, options=_FLAT)
    tensors = {k: v for k, v in osd.items() if isinstance(v, torch.Tensor)}
    _load(tensors, src, "optimizer state")
    merged = {**osd, **tensors}
    for k, v in rest.items():
        if k not in merged:
            raise CheckpointError(f"{src}: optimizer state has {k!r}, which this model/optimizer does not")
        merged[k] = tuple(v) if isinstance(merged[k], tuple) and isinstance(v, list) else v
    set_optimizer_state_dict(model, optimizer, merged, options=_FLAT)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Clean FQN of every optimizer parameter, in the optimizer's global index order."""
    names = {id(p): clean_fqn(n) for n, p in model.named_parameters()}
    order = [p for group in optimizer.param_groups for p in group["params"]]
    missing = [i for i, p in enumerate(order) if id(p) not in names]
    if missing:
        raise CheckpointError(f"optimizer holds {len(missing)} parameters that are not in the model")
    return [names[id(p)] for p in order]


def _flatten_zero(model: nn.Module, optimizer: ZeroRedundancyOptimizer) -> dict[str, Any]:
    full = optimizer.state_dict()  # consolidated on rank 0: {"state": {index: {...}}, "param_groups": [...]}
    names = _param_names(model, optimizer)
    flat: dict[str, Any] = {}
    for index, state in full["state"].items():
        for key, value in state.items():
            flat[f"state.{names[index]}.{key}"] = value
    for group in full["param_groups"]:
        for index in group["params"]:
            for key, value in group.items():
                if key != "params":
                    flat[f"param_groups.{names[index]}.{key}"] = value
    return flat


def _unflatten_zero(model: nn.Module, optimizer: ZeroRedundancyOptimizer, flat: dict[str, Any]) -> dict[str, Any]:
    names = _param_names(model, optimizer)
    index_of = {n: i for i, n in enumerate(names)}
    state: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        if key.startswith("state."):
            fqn, name = key[len("state."):].rsplit(".", 1)
            if fqn not in index_of:
                raise CheckpointError(f"optimizer state for {fqn!r}, which this model does not have")
            state.setdefault(index_of[fqn], {})[name] = value
    groups, start = [], 0
    for group in optimizer.param_groups:
        indices = list(range(start, start + len(group["params"])))
        start += len(group["params"])
        saved = {k: v for k, v in group.items() if k != "params"}
        prefix = f"param_groups.{names[indices[0]]}."
        for key, value in flat.items():
            if key.startswith(prefix) and "." not in key[len(prefix):]:
                saved[key[len(prefix):]] = tuple(value) if isinstance(saved.get(key[len(prefix):]), tuple) else value
        groups.append({**saved, "params": indices})
    return {"state": state, "param_groups": groups}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    return obj
