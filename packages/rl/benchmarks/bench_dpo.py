"""Benchmark: a DPO step with LoRA, lmstack (TransformerLM + compress.apply_lora + rl's DPO objective) against TRL's
DPOTrainer on transformers' LlamaForCausalLM + PEFT, the same weights, adapters and pairs, in one process.

Each step is the policy forward over the pairs (chosen and rejected rows in one batch), the reference forward
without gradients (the same model with its adapters off, as both do for a PEFT model), the sigmoid DPO loss,
backward, and a fused AdamW step over the adapters. The base weights are frozen in bf16 (on a GPU), the adapters
in bf16 too. TRL's side is its own ``DPOTrainer._compute_loss`` on batches from its ``DataCollatorForPreference``;
lmstack's is ``rl.objectives.DPO(cfg).module(...)`` on batches from ``rl.data``'s collation. The two are timed
interleaved (A-B-A-B); tokens/s counts every row's tokens (padding included: both pad to the batch's longest),
the median over ``--steps`` after ``--warmup``; peak memory is the CUDA allocator's peak during each one's steps.
The adapters start equal (lora_A copied, lora_B zero) and the warm-up steps' losses of both are printed: both
start at log 2 and fall. They do not fall identically on a GPU: TRL takes the log-softmax in the logits' dtype
(bf16), lmstack in fp32, and a sequence's log-probability sums hundreds of them (on the CPU, in fp32, they agree
to 1e-6). A benchmark, not a test: put the
figures, card and date in docs/benchmarks.md.

    python packages/rl/benchmarks/bench_dpo.py --preset llama-1b --pairs 4 --prompt 256 --completion 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import types
from datetime import datetime, timezone

import torch

from compress import apply_lora
from compress.lora import lora_layers
from model.lm import TransformerLM
from rl.data import PreferenceLoader
from rl.objectives import DPO
from specs.config import LoraConfig, PreferenceConfig, TrainConfig
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
    ap.add_argument("--pairs", type=_count(1), default=4, help="pairs a step (twice as many rows)")
    ap.add_argument("--prompt", type=_count(1), default=128, help="prompt tokens")
    ap.add_argument("--completion", type=_count(2), default=128, help="longest completion's tokens")
    ap.add_argument("--r", type=_count(1), default=16)
    ap.add_argument("--steps", type=_count(1), default=10)
    ap.add_argument("--warmup", type=_count(0), default=3)
    ap.add_argument("--rounds", type=_count(1), default=2, help="A-B rounds (each times --steps steps of each)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import datasets
    import peft
    import transformers
    import trl

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    cfg = preset(args.preset, max_seq_len=max(args.prompt + args.completion, 256))
    ours = TransformerLM(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d, format="hf")
        theirs = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=dtype, attn_implementation="sdpa")
    ours = ours.to(dev, dtype)
    theirs = theirs.to(dev)
    lora = LoraConfig(r=args.r, alpha=2 * args.r, targets=tuple(TARGETS))
    apply_lora(ours, r=lora.r, alpha=lora.alpha, targets=TARGETS)
    g = torch.Generator().manual_seed(0)
    V = cfg.vocab_size
    pairs = []
    for i in range(args.pairs):  # completions of different lengths, as real pairs have
        short = args.completion - (i % 2) * args.completion // 3
        pairs.append((torch.randint(0, V, (args.prompt,), generator=g).tolist(),
                      torch.randint(0, V, (args.completion,), generator=g).tolist(),
                      torch.randint(0, V, (short,), generator=g).tolist()))
    tok = types.SimpleNamespace(vocab_size=V, pad_id=0)
    b = next(iter(PreferenceLoader(pairs, tok, batch_size=args.pairs, seq_len=args.prompt + args.completion,
                                   seed=0, shuffle=False, drop_last=True, epochs=1, split="train", source="bench")))
    b = b.to(dev)
    train = TrainConfig(lora=lora)
    pref = PreferenceConfig(method="dpo", beta=0.1)
    objective = DPO(pref).module(ours, train=train, device=dev)

    records = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs]
    tcfg = trl.DPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], beta=0.1, bf16=False,
                         per_device_train_batch_size=args.pairs, use_cpu=dev.type != "cuda")
    # a tokenized dataset: TRL's tokenizer is only asked for its pad id (the records hold ids already)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=_byte_tokenizer(), pad_token="<pad>",
                                                  eos_token="<eos>")
    # a fresh adapter wrapped by TRL itself (peft_config), so its reference is the base model with the adapter
    # off, as lmstack's; then the same lora_A as lmstack's (lora_B starts at zero in both)
    trainer = trl.DPOTrainer(model=theirs, args=tcfg, processing_class=hf_tok,
                             peft_config=peft.LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules=TARGETS,
                                                         lora_dropout=0.0, task_type="CAUSAL_LM"),
                             train_dataset=datasets.Dataset.from_list([{"prompt": "a", "chosen": "b",
                                                                        "rejected": "c"}]))
    with torch.no_grad():
        mine = dict(lora_layers(ours))
        copied = 0
        for name, layer in trainer.model.named_modules():
            key = name.removeprefix("base_model.model.")
            if key in mine and hasattr(layer, "lora_A"):
                layer.lora_A["default"].weight.copy_(mine[key].lora_A.weight)
                layer.lora_B["default"].weight.zero_()
                copied += 1
        assert copied == len(mine), (copied, len(mine))
    collated = trl.trainer.dpo_trainer.DataCollatorForPreference(pad_token_id=0)(records)
    inputs = {k: v.to(dev) for k, v in collated.items()}
    model_theirs = trainer.model

    def step_ours(opt):
        loss, _ = objective(b.input_ids, b.labels, attn_mask=b.attention_mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def step_theirs(opt):
        loss = trainer._compute_loss(model_theirs, inputs, False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    fused = dev.type == "cuda"
    opts = {"lmstack": torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5, fused=fused),
            "trl+peft": torch.optim.AdamW([p for p in model_theirs.parameters() if p.requires_grad], lr=1e-5,
                                          fused=fused)}
    steps = {"lmstack": step_ours, "trl+peft": step_theirs}
    ours.train(), model_theirs.train()
    times: dict[str, list[float]] = {k: [] for k in steps}
    peak: dict[str, float] = {}
    first: dict[str, list[float]] = {}
    for name, fn in steps.items():  # the same updates from the same start: the losses must agree
        first[name] = [float(fn(opts[name]).detach()) for _ in range(args.warmup)]
    for _ in range(args.rounds):
        for name, fn in steps.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            for _ in range(args.steps):
                t = time.perf_counter()
                fn(opts[name])
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
            if dev.type == "cuda":
                peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    tokens = {"lmstack": b.input_ids.numel(), "trl+peft": inputs["input_ids"].numel()}
    res = {k: {"tokens_per_s": tokens[k] / statistics.median(v), "step_ms": 1e3 * statistics.median(v),
               "peak_gib": peak.get(k), "warmup_losses": first[k], "rows_x_tokens": tokens[k]}
           for k, v in times.items()}
    doc = {"bench": "dpo_lora_step", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "dtype": str(dtype),
           "args": vars(args), "results": res,
           "speedup": res["trl+peft"]["step_ms"] / res["lmstack"]["step_ms"]}
    print(json.dumps(doc, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
    return doc


def _byte_tokenizer():
    """A tiny tokenizers.Tokenizer for TRL's constructor (the benchmark's pairs are token ids already)."""
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "a": 2, "b": 3, "c": 4}, unk_token="<pad>"))


if __name__ == "__main__":
    main()
