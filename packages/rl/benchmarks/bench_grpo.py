"""Benchmark: GRPO training steps, lmstack's Trainer (``train.grpo``) against TRL's GRPOTrainer (``--method rloo``:
RLOO against TRL's RLOOTrainer), the same weights, prompts, reward function and settings, in one process.

A step samples ``--generations`` completions of ``--completion`` tokens (at most) for each of ``--prompts`` prompts,
scores them, and takes one optimizer step on them (full fine-tuning, fp32 weights under bf16 autocast on a GPU,
AdamW; TRL's loop with its ``bf16=True``). Random weights rarely sample EOS, so completions run to the limit in both
(the tokens each generated are counted and reported). Each side runs ``--steps`` steps after one warm-up step;
the time of a step is the wall time between step ends (a callback on each side), median reported, with the
tokens sampled a second. The runs are sequential (TRL first, then lmstack once per ``--samplers`` entry:
``train.grpo.sampler`` ``generate``, the policy sampling eagerly as TRL's does, and ``paged``, a synced copy in
serve's engine), so they see the same machine in turn. A benchmark, not a test: put the figures, card and date in
docs/benchmarks.md.

    python packages/rl/benchmarks/bench_grpo.py --preset llama-1b --prompts 8 --generations 8 --completion 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from bench_dpo import _count  # this directory's: the same argparse type

from model.lm import TransformerLM
from rl.prompts import build_prompt_dataloader
from specs.config import DataConfig, GRPOConfig, RunConfig, TrainConfig
from specs.presets import PRESETS, preset
from train.trainer import Trainer


def length_reward(completions, **_):
    """A reward the benchmark can compute for both: the completion's length in characters over 1,000."""
    return [len(c) / 1000 for c in completions]


class _Clock:
    """Step-end timestamps and completion tokens (as a TRL TrainerCallback and an lmstack Trainer callback)."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, *args, **kwargs):  # TRL (transformers.TrainerCallback)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def on_step(self, trainer, step, metrics):  # lmstack
        self.on_step_end()

    def __getattr__(self, name):  # every other TrainerCallback event: nothing
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llm-small", choices=sorted(PRESETS))
    ap.add_argument("--prompts", type=_count(1), default=4, help="prompts a step")
    ap.add_argument("--generations", type=_count(2), default=4, help="completions a prompt")
    ap.add_argument("--completion", type=_count(1), default=64, help="max completion tokens")
    ap.add_argument("--steps", type=_count(2), default=4)
    ap.add_argument("--method", default="grpo", choices=["grpo", "rloo"],
                    help="train.grpo.method, against TRL's GRPOTrainer or RLOOTrainer")
    ap.add_argument("--samplers", nargs="+", default=["generate", "paged"], choices=["generate", "paged"],
                    help="lmstack's train.grpo.sampler settings to run, each after TRL")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import datasets
    import transformers
    import trl

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    cfg = preset(args.preset, max_seq_len=max(512, 64 + args.completion))
    work = Path(tempfile.mkdtemp())
    TransformerLM(cfg).save_pretrained(work / "hf", format="hf")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"<{i}>": i for i in range(cfg.vocab_size)}  # a word-level tokenizer over the whole vocabulary
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<1>", pad_token="<2>",
                                                  bos_token="<3>")
    hf_tok.save_pretrained(work / "hf")
    prompts = [{"prompt": " ".join(f"<{4 + (7 * i + j) % 500}>" for j in range(32))} for i in range(64)]
    (work / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    total = args.steps + 1
    results = {}

    # TRL
    tclock = _Clock()
    rloo = args.method == "rloo"
    targs = (trl.RLOOConfig if rloo else trl.GRPOConfig)(
        output_dir=str(work / "trl"), report_to=[], bf16=cuda, use_cpu=not cuda,
        per_device_train_batch_size=args.prompts * args.generations, num_generations=args.generations,
        max_completion_length=args.completion, max_steps=total, learning_rate=1e-6, logging_steps=1,
        save_strategy="no", temperature=1.0, beta=0.0, gradient_accumulation_steps=1,
        **({} if rloo else {"loss_type": "dapo"}))
    tt = (trl.RLOOTrainer if rloo else trl.GRPOTrainer)(
        model=str(work / "hf"), reward_funcs=[length_reward], args=targs, processing_class=hf_tok,
        train_dataset=datasets.Dataset.from_list(prompts), callbacks=[tclock])
    tt.train()
    tlog = [h for h in tt.state.log_history if "completions/mean_length" in h]
    del tt
    if cuda:
        torch.cuda.empty_cache()

    for sampler in args.samplers:  # lmstack, once per sampler
        results[f"lmstack-{sampler}"] = _lmstack(args, cfg, work, total, sampler)
        if cuda:
            torch.cuda.empty_cache()
    steps = [b - a for a, b in zip(tclock.ends[:-1], tclock.ends[1:])]  # after the first (warm-up) step
    results["trl"] = _figures(args, steps, [h["completions/mean_length"] for h in tlog])
    doc = {"bench": "grpo_step", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name() if cuda else "cpu", "args": vars(args), "results": results,
           "speedup": {f"lmstack-{k}": results["trl"]["step_s"] / results[f"lmstack-{k}"]["step_s"]
                       for k in args.samplers}}
    print(json.dumps(doc, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
    return doc


def _figures(args: argparse.Namespace, steps: list[float], mean_len: list[float]) -> dict:
    """The median step and the tokens sampled a second, from step times and each step's mean completion length
    (the first, warm-up step's left out)."""
    step = statistics.median(steps)
    mean = statistics.mean(mean_len[1:] or mean_len)
    return {"step_s": step, "sampled_tokens_per_s": args.prompts * args.generations * mean / step,
            "mean_completion_tokens": mean}


def _lmstack(args: argparse.Namespace, cfg, work: Path, total: int, sampler: str) -> dict:
    """lmstack's Trainer with ``train.grpo`` (``sampler``) for ``total`` steps; its figures."""
    cuda = torch.cuda.is_available()
    clock = _Clock()
    loader = build_prompt_dataloader(work / "prompts.jsonl", batch_size=args.prompts, seq_len=64,
                                     tokenizer=str(work / "hf"), epochs=None)
    run = RunConfig(model=cfg, data=DataConfig(dataset="prompts", path=str(work / "prompts.jsonl"), pack=False,
                                               batch_size=args.prompts, seq_len=64),
                    train=TrainConfig(lr=1e-6, warmup_steps=0, log_every=1, out_dir=str(work / f"ours-{sampler}"),
                                      precision="bf16" if cuda else "fp32", ckpt_final=False, callbacks=(),
                                      weight_decay=0.0, grad_clip=1.0, schedule="constant",
                                      grpo=GRPOConfig(rewards=(f"{__name__}:length_reward",),
                                                      num_generations=args.generations,
                                                      max_completion_length=args.completion, sampler=sampler,
                                                      method=args.method)))
    model = TransformerLM.from_pretrained(work / "hf")
    lengths = []

    correction: dict[str, list[float]] = {}

    class Lengths:
        def on_step(self, trainer, step, metrics):
            if "completions/mean_length" in metrics:
                lengths.append(metrics["completions/mean_length"])
            for k, v in metrics.items():  # the paged sampler's importance correction, when it runs
                if k.startswith("sampling/"):
                    correction.setdefault(k, []).append(v)

        def __getattr__(self, name):
            if name.startswith("on_"):
                return lambda *a, **k: None
            raise AttributeError(name)

    trainer = Trainer(model, run, loader, tokenizer=loader.load_tokenizer(), callbacks=[clock, Lengths()])
    trainer.objective.check(run)  # as train.run's preflight: the sampler learns data.seq_len
    trainer.fit(steps=total)
    figures = _figures(args, [b - a for a, b in zip(clock.ends[:-1], clock.ends[1:])], lengths)
    return {**figures, **{k: statistics.mean(v) for k, v in correction.items()}}


if __name__ == "__main__":
    main()
