"""lmstack dist: process groups from torchrun, DDP / FSDP2 / ZeRO-1 and activation checkpointing applied from
outside the model, and DCP checkpoints that load on any world size.

    env = dist.init(cfg.dist)                       # reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK
    model = dist.apply(model, cfg.dist, env.device) # DDP | FSDP (fully_shard per block + root) | ZeRO1 | none
"""

from dist.blocks import apply_activation_checkpointing, compile_blocks, eager_warmup, find_blocks
from dist.env import DistEnv, any_rank, barrier, broadcast_json, current, destroy, init, select_device
from dist.local_step import local_shards
from dist.precision import check_precision, dtype_of, why_unsupported
from dist.state import CheckpointError, load_model, load_optimizer, save_model, save_optimizer
from dist.strategies import apply, build_optimizer, clip_grad_norm_, grad_total_norm, gradient_sync, is_sharded, unwrap

__version__ = "0.4.4"

__all__ = [
    "CheckpointError", "DistEnv", "any_rank", "apply", "apply_activation_checkpointing", "barrier", "broadcast_json",
    "build_optimizer", "check_precision", "clip_grad_norm_", "compile_blocks", "current", "destroy", "dtype_of",
    "eager_warmup", "find_blocks", "grad_total_norm", "gradient_sync", "init", "is_sharded", "load_model",
    "load_optimizer", "local_shards", "save_model", "save_optimizer", "select_device", "unwrap", "why_unsupported",
]
