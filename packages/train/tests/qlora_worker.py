"""Run by test_dist.py under ``torchrun --nproc_per_node=2``: QLoRA's 4-bit base under FSDP2 on gloo.

Usage: qlora_worker.py OUT_DIR [DEVICE] (cpu, the default: gloo; cuda: NCCL, one GPU a rank). Each rank builds
the same QLoRA model (llama-debug, every Linear but the head NF4, adapters on q/v/down), keeps an unsharded copy,
shards the other with ``dist.apply`` (FSDP), and runs one forward and backward on both with the same batch, and on
a third copy sharded under bf16 mixed precision. Rank 0 writes OUT_DIR/result.json: for every 4-bit layer its
whole byte count and the bytes each rank holds, the three losses, the largest difference between the fp32 models'
adapter gradients, and the loss of a differently initialised sharded model before and after ``dist.load_model``
of the sharded one's ``dist.save_model``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

import dist
from compress.lora import LORA
from compress.nf4 import NF4Linear
from specs.config import DistConfig, LoraConfig
from specs.presets import preset


def main() -> None:
    out, device = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "cpu")
    env = dist.init(DistConfig(strategy="FSDP"), device)
    torch.set_num_threads(1)
    from model.lm import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug", vocab_size=64, max_seq_len=32))
    LORA.apply(model, LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"), quantize_base="nf4"))
    for name, p in model.named_parameters():  # the adapters start at B = 0: move them so every gradient is live
        if ".lora_B." in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(name)))
    model.to(env.device)
    whole, mixed = copy.deepcopy(model), copy.deepcopy(model)
    cfg = DistConfig(strategy="FSDP", fsdp_unit_blocks=1)
    sharded = dist.apply(model, cfg, env.device, precision="fp32")
    mixed = dist.apply(mixed, cfg, env.device, precision="bf16")  # adapters gathered in bf16, 4-bit bytes as they are
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1)).to(env.device)
    labels = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2)).to(env.device)
    losses = [m.loss(ids, labels) for m in (whole, sharded, mixed)]
    for loss in losses:
        loss.backward()
    layers = {}
    for name, m in sharded.named_modules():
        if isinstance(m, NF4Linear):
            data = m.nf4_data
            local = data.to_local() if hasattr(data, "to_local") else data
            layers[name] = {"bytes": int(data.numel()), "local": int(local.numel()), "dtype": str(local.dtype),
                            "sharded": hasattr(data, "to_local")}
    grads = dict(whole.named_parameters())
    diff = 0.0
    for name, p in sharded.named_parameters():
        if p.requires_grad:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            diff = max(diff, (g - grads[name].grad).abs().max().item())
    # written by both ranks, read back into a differently initialised sharded model: the same loss
    dist.save_model(sharded, out / "ckpt", env)
    torch.manual_seed(1)
    fresh = TransformerLM(preset("llama-debug", vocab_size=64, max_seq_len=32))
    LORA.apply(fresh, LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"), quantize_base="nf4"))
    fresh = dist.apply(fresh, cfg, env.device, precision="fp32")
    before = fresh.loss(ids, labels).item()
    dist.load_model(fresh, out / "ckpt")
    with torch.no_grad():
        reloaded = fresh.loss(ids, labels).item()
    if env.is_main:
        (out / "result.json").write_text(json.dumps({"layers": layers, "losses": [x.item() for x in losses],
                                                      "grad_diff": diff, "world": env.world_size,
                                                      "reload": [before, reloaded]}))
    dist.destroy()


if __name__ == "__main__":
    main()
