"""Benchmark: a LoRA fine-tuning step, lmstack (TransformerLM + compress.apply_lora) against transformers'
LlamaForCausalLM + PEFT, the same weights and adapters, in one process.

Each step is forward, loss, backward and a fused AdamW step over the adapters alone; the base weights are frozen in
the model's dtype (bf16 on a GPU), the adapters trained in the same dtype, as PEFT does by default. The two models are
timed interleaved (A-B-A-B) so both see the same machine; tokens/s is the median over ``--steps`` steps after
``--warmup``, peak memory the CUDA allocator's peak during each model's steps (``peak_gib``; ``step_gib`` that peak
above what was allocated before the steps, which holds both models; ``weights_gib`` the model's own tensors).
Before timing, the run records both models' losses on the first batch (``first_loss``), which must agree (the
compress tests check it in fp32). A benchmark, not a test: put the figures, card and date in docs/benchmarks.md.

``--qlora``: QLoRA instead, both bases frozen as NF4 with double quantization from the same bf16 weights, every
Linear but the LM head: lmstack's ``compress.nf4_`` against transformers' ``BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=bf16)`` (bitsandbytes), the
adapters as before. The first losses then agree to the rounding of the two double quantizations.

    python packages/compress/benchmarks/bench_lora.py --preset llama-1b --batch 4 --seq 2048 --out lora.json
    python packages/compress/benchmarks/bench_lora.py --preset llama-1b --batch 4 --seq 2048 --qlora
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone

import torch

from compress import apply_lora, nf4_
from compress.lora import lora_layers
from model.lm import TransformerLM
from specs.presets import PRESETS, preset

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _count(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {raw!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llm-small", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=_count(1), default=4)
    ap.add_argument("--seq", type=_count(1), default=256)
    ap.add_argument("--r", type=_count(1), default=16)
    ap.add_argument("--steps", type=_count(1), default=10)
    ap.add_argument("--warmup", type=_count(0), default=3)
    ap.add_argument("--rounds", type=_count(1), default=2, help="A-B rounds (each times --steps steps of each model)")
    ap.add_argument("--qlora", action="store_true", help="4-bit NF4 bases (lmstack nf4_ against bitsandbytes)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=INT",
                    help="override a ModelConfig field of the preset, e.g. --set d_model=4096 (a 7B shape: "
                         "d_model=4096 n_layers=32 n_heads=32 n_kv_heads=32 d_ff=11008)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import peft
    import transformers

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    fields = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if not name or not value.isdigit():
            ap.error(f"--set expects FIELD=INT, got {item!r}")
        fields[name] = int(value)
    cfg = preset(args.preset, max_seq_len=max(args.seq, 256), **fields)
    ours = TransformerLM(cfg).eval()
    extra = {}
    if args.qlora:
        extra = {"quantization_config": transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype), "device_map": {"": dev.index or 0} if dev.type == "cuda" else "cpu"}
    with tempfile.TemporaryDirectory() as d:
        ours.to(dtype).save_pretrained(d, format="hf")  # both quantize the same rounded weights
        theirs = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=dtype, attn_implementation="sdpa",
                                                                   **extra)
    ours = ours.to(dev, dtype)
    if args.qlora:
        nf4_(ours)
    else:
        theirs = theirs.to(dev)
    apply_lora(ours, r=args.r, alpha=2 * args.r, targets=TARGETS)
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules=TARGETS,
                                                         lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():  # the same adapter weights in both (PEFT keys name our modules)
        mine = {n: m for n, m in lora_layers(ours).items()}
        for name, module in theirs.named_modules():
            key = name.removeprefix("base_model.model.")
            if key in mine and hasattr(module, "lora_A"):
                module.lora_A["default"].weight.copy_(mine[key].lora_A.weight)
                module.lora_B["default"].weight.normal_(0, 0.01)
                mine[key].lora_B.weight.copy_(module.lora_B["default"].weight)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=g).to(dev)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[:, -1] = -100  # transformers scores labels=x from the second token on, so the last target is not one of its

    def step_ours(opt):
        loss = ours.loss(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def step_theirs(opt):
        out = theirs(input_ids=x, labels=x)  # transformers shifts the labels itself
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    fused = dev.type == "cuda"
    opts = {"lmstack": torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4, fused=fused),
            "transformers+peft": torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-4,
                                                   fused=fused)}
    steps = {"lmstack": step_ours, "transformers+peft": step_theirs}
    ours.train(), theirs.train()
    with torch.no_grad():
        first = {"lmstack": float(ours.loss(x, y)), "transformers+peft": float(theirs(input_ids=x, labels=x).loss)}
    trainable = {"lmstack": sum(p.numel() for p in ours.parameters() if p.requires_grad),
                 "transformers+peft": sum(p.numel() for p in theirs.parameters() if p.requires_grad)}
    models = {"lmstack": ours, "transformers+peft": theirs}
    weights = {k: sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers())) / 2**30
               for k, m in models.items()}  # what the model holds (its 4-bit bytes under --qlora)
    times: dict[str, list[float]] = {k: [] for k in steps}
    peak: dict[str, float] = {}
    above: dict[str, float] = {}
    for name, fn in steps.items():
        for _ in range(args.warmup):
            fn(opts[name])
    for _ in range(args.rounds):
        for name, fn in steps.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                resting = torch.cuda.memory_allocated()  # both models' weights and optimizer states
            for _ in range(args.steps):
                t = time.perf_counter()
                fn(opts[name])
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
            if dev.type == "cuda":
                peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)
                above[name] = max(above.get(name, 0.0), (torch.cuda.max_memory_allocated() - resting) / 2**30)
    tokens = args.batch * args.seq
    res = {k: {"tokens_per_s": tokens / statistics.median(v), "step_ms": 1e3 * statistics.median(v),
               "peak_gib": peak.get(k), "step_gib": above.get(k), "weights_gib": weights[k], "first_loss": first[k],
               "trainable_params": trainable[k]}
           for k, v in times.items()}
    doc = {"bench": "qlora_step" if args.qlora else "lora_step",
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "dtype": str(dtype),
           "args": vars(args), "results": res,
           "speedup": res["lmstack"]["tokens_per_s"] / res["transformers+peft"]["tokens_per_s"]}
    print(json.dumps(doc, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
    return doc


if __name__ == "__main__":
    main()
