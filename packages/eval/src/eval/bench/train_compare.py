"""``bench train-compare``: training-step tokens/s and MFU of lmstack against transformers, same shape, same run.

Both sides: bf16 autocast over fp32 master weights, fused AdamW, ``torch.compile`` of the loss function (forward +
backward through AOTAutograd), random tokens, the same batch and sequence length. The baseline is the matching
transformers class (GPT2LMHeadModel for the GPT-2 family, LlamaForCausalLM for Llama) with SDPA attention.
MFU = tokens/s x FLOPs per token / peak, with FLOPs per token = 6 N (non-embedding parameters plus the LM head)
+ 12 L d T (attention scores and values, PaLM appendix B), and the datasheet dense bf16 peak of the card.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from eval.bench import options
from eval.bench.common import prefer_kernels, profile_kernels, report, sync
from eval.loading import pick_device
from specs.plugins import resolve
from specs.presets import preset

VARIANTS = ("lmstack", "lmstack-fused", "transformers")
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="gpt2-124m")
    p.add_argument("--seq", type=options.count(2), default=1024)
    p.add_argument("--batch", type=options.count(1), default=16)
    p.add_argument("--steps", type=options.count(1), default=20)
    p.add_argument("--warmup", type=options.count(0), default=5)
    p.add_argument("--device", type=options.device, default="cuda", help=options.DEVICE_FORMS)
    p.add_argument("--variants", type=options.names(VARIANTS), default="lmstack,transformers",
                   help="lmstack, lmstack-fused (fused q/k/v and gate/up projections), transformers")
    p.add_argument("--prefer", default="", help="kernel choices, e.g. attention=sdpa,linear_cross_entropy=triton")
    p.add_argument("--compile", default="default", help="torch.compile mode ('none': eager)")
    p.add_argument("--profile", action="store_true",
                   help="also profile 3 steps of each variant: kernels per step, time per kernel class, top kernels")
    p.add_argument("--profile-top", type=options.count(1), default=25,
                   help="how many of the top kernels --profile reports")


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def flops_per_token(cfg: Any, n_params_no_embed: int, seq: int) -> float:
    return 6 * n_params_no_embed + 12 * cfg.n_layers * cfg.d_model * seq


def _hf_model(cfg: Any) -> torch.nn.Module:
    if cfg.pos_encoding == "learned":
        from transformers import GPT2Config, GPT2LMHeadModel

        c = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
                       n_head=cfg.n_heads, n_inner=cfg.d_ff, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                       bos_token_id=None, eos_token_id=None)
        return GPT2LMHeadModel._from_config(c, attn_implementation="sdpa")
    from transformers import LlamaConfig, LlamaForCausalLM

    c = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                    num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
                    max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=cfg.tie_embeddings,
                    bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM._from_config(c, attn_implementation="sdpa")


def _bench(loss_fn: Any, params: list[torch.nn.Parameter], x: torch.Tensor, y: torch.Tensor, steps: int,
           warmup: int, device: str, profile: bool = False, top: int = 25) -> dict[str, Any]:
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.startswith("cuda"))

    def step() -> torch.Tensor:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    out: dict[str, Any] = {"step_s": t, "tokens_per_s": x.numel() / t, "loss": float(loss.detach())}
    if profile:  # after the timing, so it cannot perturb it
        out["profile"] = profile_kernels(step, 3, device, top=top)
        out["profile"]["step_us"] = t * 1e6  # beside kernel_us_per_step: the gap is host or launch time
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    prefer_kernels(args.prefer)
    device = pick_device(args.device)  # ConfigError, not a torch traceback, when CUDA is absent
    cfg = preset(args.preset, max_seq_len=max(args.seq, preset(args.preset).max_seq_len))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g).to(device)
    y = torch.roll(x, -1, dims=1)
    compile_fn = (lambda f: f) if args.compile == "none" else (lambda f: torch.compile(f, mode=args.compile))
    peak = peak_flops(device)
    results: dict[str, Any] = {"peak_bf16_flops": peak, "variants": {}}
    for name in args.variants:
        torch.manual_seed(0)
        if name in ("lmstack", "lmstack-fused"):
            model = resolve("lmstack.models", cfg.arch)(cfg).to(device)
            if name == "lmstack-fused":  # one q/k/v GEMM (and one gate/up GEMM) in forward and backward
                model.fuse_projections()
            n = model.num_params(exclude_embeddings=True) + (model.lm_head.weight.numel() if cfg.tie_embeddings else 0)
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
                model.loss(x[:1, :16], y[:1, :16])  # eager first: kernel choices resolve outside the graph
            loss_fn = compile_fn(lambda a, b, m=model: m.loss(a, b))
        elif name == "transformers":
            model = _hf_model(cfg).to(device)
            n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
            n += model.get_output_embeddings().weight.numel() if cfg.tie_embeddings else 0
            cm = compile_fn(model)
            loss_fn = lambda a, b, m=cm: m(input_ids=a, labels=a).loss  # HF shifts the labels itself
        else:
            raise AssertionError(name)  # --variants allows no other
        r = _bench(loss_fn, list(model.parameters()), x, y, args.steps, args.warmup, device, args.profile,
                   args.profile_top)
        fpt = flops_per_token(cfg, n, args.seq)
        mfu = None if peak is None else r["tokens_per_s"] * fpt / peak
        r.update(params_no_embedding=n, flops_per_token=fpt, mfu=mfu)
        results["variants"][name] = r
        del model, loss_fn
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    v = results["variants"]
    if "lmstack" in v and "transformers" in v:
        results["speedup_vs_transformers"] = v["lmstack"]["tokens_per_s"] / v["transformers"]["tokens_per_s"]
    if "lmstack-fused" in v and "transformers" in v:
        results["fused_speedup_vs_transformers"] = (v["lmstack-fused"]["tokens_per_s"]
                                                    / v["transformers"]["tokens_per_s"])
    return report("train-compare", vars(args), results, device)
