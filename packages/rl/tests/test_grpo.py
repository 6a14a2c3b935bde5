"""GRPO (``train.grpo``, ``rl.grpo``): the loss and gradients of TRL 1.13's GRPOTrainer for the same completions and
advantages, its group-normalised advantages, the prompt data, and runs through ``python -m train.run`` that raise a
reward, resume exactly and stop on bad configs before any work."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_run import scalars

from model.lm import TransformerLM
from rl.grpo import (
    GRPOModule,
    RLOOModule,
    _collate,
    _row,
    build_prompt_dataloader,
    group_advantages,
    read_prompts,
    rloo_advantages,
)
from rl.rewards import exact_match, think_format
from specs.config import GRPOConfig
from specs.errors import ConfigError
from train.run import cli

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")


def not_a_number(completions, **_):
    """A broken reward function (for the error test): text instead of numbers."""
    return ["high"] * len(completions)


def count_a(completions, **_):
    """A reward the tests' tiny models can learn: the share of the completion's characters that are 'a'."""
    return [c.count("a") / max(len(c), 1) for c in completions]


def _completions(trainer, tok, L):
    """(prompts (4, 5), completions (4, L) right-padded, their mask, their lengths, advantages) at random."""
    g = torch.Generator().manual_seed(0)
    V = trainer.model.config.vocab_size
    prompt = torch.randint(3, V, (4, 5), generator=g)
    lengths = [6, 3, 5, 1]
    completion = torch.full((4, L), tok.pad_token_id)
    cmask = torch.zeros(4, L, dtype=torch.long)
    for i, n in enumerate(lengths):
        completion[i, :n] = torch.randint(3, V, (n,), generator=g)
        cmask[i, :n] = 1
    return prompt, completion, cmask, lengths, torch.tensor([0.7, -0.7, 1.2, -1.2])


def _moved(trainer, prompt, completion, cmask, L):
    """Per-token log-probabilities of a sampling policy the model has since moved from: its own plus noise."""
    with torch.no_grad():
        logps = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt, completion], 1), torch.cat([torch.ones_like(prompt), cmask], 1), L)[0]
    return logps + torch.randn(logps.shape, generator=torch.Generator().manual_seed(9)) * 0.3 * cmask


def _ours_old(old, lengths, labels):
    """TRL's (B, L) completion log-probabilities where our rows' labels are (prompts of 5 tokens)."""
    out = torch.zeros(labels.shape)
    for i, n in enumerate(lengths):
        out[i, 4:4 + n] = old[i, :n]
    return out


CLIPS = {"": {}, "mu2-high": {"num_iterations": 2, "epsilon_high": 0.28},
         "mu2-delta": {"num_iterations": 2, "epsilon": 0.1, "delta": 1.3}}


@pytest.mark.parametrize("loss_type,beta,clip", [("dapo", 0.0, ""), ("grpo", 0.0, ""), ("dr_grpo", 0.0, ""),
                                                 ("dapo", 0.05, ""), ("dapo", 0.0, "mu2-high"),
                                                 ("grpo", 0.05, "mu2-delta")])
def test_grpo_loss_and_gradients_match_trl(hf_dirs, tmp_path, loss_type, beta, clip):
    """Also past a generation's first step (``num_iterations`` 2: the ratio to the sampling policy, clipped, with
    DAPO's higher upper bound or two-sided clipping): TRL's loss, gradients and clip ratios."""
    policy_dir = str(hf_dirs[0])
    L, temperature = 6, 0.7
    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False,
                          per_device_train_batch_size=4, num_generations=2, max_completion_length=L, beta=beta,
                          loss_type=loss_type, temperature=temperature, **CLIPS[clip])
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(policy_dir)
    trainer = trl.GRPOTrainer(model=policy_dir, reward_funcs=[count_a], args=args, processing_class=tok,
                              train_dataset=datasets.Dataset.from_list([{"prompt": "hello"}] * 4))
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    prompt, completion, cmask, lengths, adv = _completions(trainer, tok, L)
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": cmask, "advantages": adv, "num_items_in_batch": cmask.sum()}
    old = _moved(trainer, prompt, completion, cmask, L) if clip else None
    if clip:
        inputs["old_per_token_logps"] = old
    if beta:
        with torch.no_grad():
            inputs["ref_per_token_logps"] = trainer._get_per_token_logps_and_entropies(
                trainer.ref_model, torch.cat([prompt, completion], 1), torch.cat([torch.ones_like(prompt), cmask], 1),
                L)[0]
    want = trainer._compute_loss(trainer.model, inputs)
    want.backward()

    cfg = GRPOConfig(rewards=("test_grpo:count_a",), num_generations=2, max_completion_length=L, beta=beta,
                     loss_type=loss_type, temperature=temperature, **CLIPS[clip])
    policy = TransformerLM.from_pretrained(policy_dir)
    reference = TransformerLM.from_pretrained(policy_dir).eval().requires_grad_(False) if beta else None
    if beta:  # a reference that differs from the policy, in both: TRL's ref_model gets the same change
        with torch.no_grad():
            for m in (reference, trainer.ref_model):
                m.get_parameter("model.layers.0.mlp.down_proj.weight").mul_(1.5)
            inputs["ref_per_token_logps"] = trainer._get_per_token_logps_and_entropies(
                trainer.ref_model, torch.cat([prompt, completion], 1), torch.cat([torch.ones_like(prompt), cmask], 1),
                L)[0]
        trainer.model.zero_grad()
        want = trainer._compute_loss(trainer.model, inputs)
        want.backward()
    ours = GRPOModule(policy, cfg, reference)
    rows = [_row(prompt[i].tolist(), completion[i, :n].tolist(), 0) for i, n in enumerate(lengths)]
    ids, labels, mask = _collate(rows, None, tok.pad_token_id)
    a = torch.where(labels != -100, adv[:, None], 0.0)
    extra = {"old_logps": _ours_old(old, lengths, labels)} if clip else {}
    loss, stats = ours(ids, labels, a, attn_mask=mask, **extra)
    loss.backward()
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-6)
    if beta:
        assert stats["kl"].item() > 0
    metrics = trainer._metrics["train"]
    for k in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert stats[k].item() == pytest.approx(metrics[k][-1], abs=1e-6), k
    assert (stats["clip_ratio/region_mean"].item() > 0) == bool(clip)  # the moved policy's ratios leave the range
    for name in ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        g_want = trainer.model.get_parameter(name).grad
        assert g_want.abs().max() > 0
        torch.testing.assert_close(policy.get_parameter(name).grad, g_want, rtol=1e-4,
                                   atol=1e-5 * float(g_want.abs().max()))


@pytest.mark.parametrize("clip", ["", "mu2-high"])
def test_rloo_loss_and_gradients_match_trl(hf_dirs, tmp_path, clip):
    """RLOO's loss (``method: rloo``) and its gradients are TRL 1.13 RLOOTrainer._compute_loss's for the same
    completions, advantages and old log-probabilities: the policy's own on a generation's first step, a moved
    sampling policy's past it (``num_iterations`` 2, ratios clipped per completion)."""
    policy_dir = str(hf_dirs[0])
    L, temperature = 6, 0.7
    args = trl.RLOOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False,
                          per_device_train_batch_size=4, num_generations=2, max_completion_length=L, beta=0.0,
                          temperature=temperature, **CLIPS[clip])
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(policy_dir)
    trainer = trl.RLOOTrainer(model=policy_dir, reward_funcs=[count_a], args=args, processing_class=tok,
                              train_dataset=datasets.Dataset.from_list([{"prompt": "hello"}] * 4))
    trainer.model.train()
    prompt, completion, cmask, lengths, adv = _completions(trainer, tok, L)
    old = _moved(trainer, prompt, completion, cmask, L) * (1.0 if clip else 0.0)
    if not clip:  # the policy's own, as TRL computes them at generation
        with torch.no_grad():
            old = trainer._get_per_token_logps_and_entropies(
                trainer.model, torch.cat([prompt, completion], 1), torch.cat([torch.ones_like(prompt), cmask], 1),
                L)[0]
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": cmask, "advantages": adv, "old_logps": (old * cmask).sum(1)}
    want = trainer._compute_loss(trainer.model, inputs)
    want.backward()

    cfg = GRPOConfig(rewards=("test_grpo:count_a",), num_generations=2, max_completion_length=L, method="rloo",
                     temperature=temperature, **CLIPS[clip])
    policy = TransformerLM.from_pretrained(policy_dir)
    ours = RLOOModule(policy, cfg, None)
    rows = [_row(prompt[i].tolist(), completion[i, :n].tolist(), 0) for i, n in enumerate(lengths)]
    ids, labels, mask = _collate(rows, None, tok.pad_token_id)
    extra = {"old_logps": _ours_old(old, lengths, labels)} if clip else {}
    loss, stats = ours(ids, labels, torch.where(labels != -100, adv[:, None], 0.0), attn_mask=mask, **extra)
    loss.backward()
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-6)
    assert stats["clip_ratio/region_mean"].item() == pytest.approx(
        trainer._metrics["train"]["clip_ratio/region_mean"][-1], abs=1e-6)
    for name in ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        g_want = trainer.model.get_parameter(name).grad
        assert g_want.abs().max() > 0
        torch.testing.assert_close(policy.get_parameter(name).grad, g_want, rtol=1e-4,
                                   atol=1e-5 * float(g_want.abs().max()))


def test_rloo_advantages_are_leave_one_out():
    """Each reward minus the mean of its group's other scored rewards, computed here one completion at a time; NaN
    rewards are left out of the baselines and get 0; ``normalize`` over the batch as TRL's nanstd (n - 1)."""
    from trl.trainer.utils import nanstd

    r = torch.tensor([1.0, 0.0, 0.5, 0.25, 2.0, float("nan"), 1.0, 3.0, 5.0, float("nan"), float("nan"),
                      float("nan")])
    want = torch.zeros(12)
    for i in range(12):
        others = [float(r[j]) for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i and not torch.isnan(r[j])]
        if not torch.isnan(r[i]) and others:
            want[i] = float(r[i]) - sum(others) / len(others)
    got = rloo_advantages(r, 4)
    torch.testing.assert_close(got, want)
    assert got[8] == 0 and got[5] == 0  # a group's only scored completion, an unscored one
    scored = torch.isnan(r) == 0
    scored[8] = False  # its baseline is 0 / 0: out of the normalisation too, advantage 0
    a = got[scored]
    normed = rloo_advantages(r, 4, normalize=True)
    torch.testing.assert_close(normed[scored], (a - a.mean()) / (nanstd(a) + 1e-4))
    assert (normed[~scored] == 0).all()


def test_group_advantages_are_trls():
    from trl.trainer.utils import nanstd

    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, float("nan"), 1.0, 3.0])
    adv, std = group_advantages(r, 4, "group")
    g = r.view(2, 4)
    mean = torch.nanmean(g, 1).repeat_interleave(4)
    want_std = nanstd(g, dim=1).repeat_interleave(4)
    torch.testing.assert_close(std, want_std)
    want = torch.nan_to_num((r - mean) / (want_std + 1e-4), nan=0.0)
    torch.testing.assert_close(adv, want)
    assert adv[5] == 0.0  # unscored: no advantage
    adv_b, std_b = group_advantages(r, 4, "batch")
    torch.testing.assert_close(std_b, nanstd(r).expand(8))
    adv_n, _ = group_advantages(r, 4, "none")
    torch.testing.assert_close(adv_n, torch.nan_to_num(r - mean, nan=0.0))


def test_builtin_rewards():
    from trl.rewards import think_format_reward

    texts = ["<think>\nwhy\n</think>\n42", "<think>no close", "42", "<think>a</think><think>b</think>"]
    chat = [[{"role": "assistant", "content": t}] for t in texts]
    assert think_format(chat) == think_format_reward(chat) == [1.0, 0.0, 0.0, 0.0]
    assert think_format(texts) == [1.0, 0.0, 0.0, 0.0]
    assert exact_match([" 42 ", "41", "x"], answer=["42", "42", None]) == [1.0, 0.0, None]
    assert exact_match(["42"]) == [None]


def test_prompt_data(tmp_path):
    from data.tokenizer import ByteTokenizer

    f = tmp_path / "p.jsonl"
    rows = [{"prompt": "2+2=", "answer": "4"}, {"prompt": [{"role": "user", "content": "hi"}], "answer": "hello"},
            {"prompt": "x" * 40, "answer": "y"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = ByteTokenizer()
    loader = build_prompt_dataloader(f, batch_size=3, seq_len=16, tokenizer=tok, shuffle=False)
    b = next(iter(loader))
    assert b.ids[0] == [256, *b"2+2="] and b.records[0]["answer"] == "4"
    assert b.ids[1] == tok.apply_chat_template(rows[1]["prompt"], tokenize=True, add_generation_prompt=True)[-16:]
    assert len(b.ids[2]) == 16 and b.ids[2][-1] == ord("x")  # kept its end
    half = b.rank_slice(1, 3)
    assert half.records == [b.records[1]]
    with pytest.raises(ConfigError, match="does not split over 2 ranks"):
        b.rank_slice(0, 2)
    f.write_text('{"prompt": 3}\n')
    with pytest.raises(ConfigError, match="p.jsonl:1: prompt must be"):
        read_prompts(f)


def _config(tmp_path, init_from, prompts, **grpo):
    doc = {"name": "grpo",
           "data": {"dataset": "prompts", "path": str(prompts), "seq_len": 32, "batch_size": 4, "pack": False},
           "train": {"steps": 4, "lr": 1e-2, "warmup_steps": 1, "log_every": 1, "eval_every": 0,
                     "init_from": str(init_from), "callbacks": [], "schedule": "constant", "weight_decay": 0.0,
                     "grpo": {"rewards": ["test_grpo:count_a"], "num_generations": 4, "max_completion_length": 8,
                              **grpo}},
           "viz": {"backend": ["csv"], "log_every": 1}}
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Write something {i}: "}) + "\n" for i in range(16)))
    return path


@pytest.mark.parametrize("sampler,method", [("generate", "grpo"), ("paged", "grpo"), ("paged", "rloo")])
def test_a_grpo_run_raises_its_reward(hf_dirs, prompts, tmp_path, sampler, method):
    out = tmp_path / "out"
    extra = {"beta": 0.02} if method == "rloo" else {}
    assert cli(["--config", _config(tmp_path, hf_dirs[0], prompts, sampler=sampler, method=method, **extra),
                "--train.steps", "16",
                "--train.out_dir", str(out), "--data.val_fraction", "0.25", "--train.eval_every", "16",
                "--train.eval_steps", "1"]) == 0
    s = scalars(out)
    assert 0 <= s["eval/reward"][16] <= 1 and "eval/loss" in s and "eval/ppl" not in s
    first = sum(s["reward"][i] for i in (1, 2, 3)) / 3
    last = sum(s["reward"][i] for i in (14, 15, 16)) / 3
    assert last > first + 0.05, (first, last)
    assert set(s) >= {"rewards/count_a/mean", "reward_std", "frac_reward_zero_std", "completions/mean_length",
                      "completions/clipped_ratio"}
    assert TransformerLM.from_pretrained(out / "checkpoints" / "step_00000016").config.d_model == 32


class _Trainer:
    """What GRPO.prepare reads of a Trainer: the policy, its tokenizer, step, seed, rank and precision."""

    def __init__(self, model, tok, lora=None):
        import contextlib
        import types

        self.module, self.tokenizer, self.device, self.global_step = model, tok, torch.device("cpu"), 0
        self.cfg = types.SimpleNamespace(seed=3, lora=lora)
        self.env = types.SimpleNamespace(rank=0)
        self.autocast = contextlib.nullcontext


@pytest.mark.parametrize("lora", [False, True])
def test_the_paged_sampler_follows_the_policy_as_generate_does(hf_dirs, lora):
    """``sampler: paged`` (a synced copy of the policy in serve's engine) gives the training batch ``generate``
    gives, at top-k 1 where sampling is deterministic, for the initial weights and after each change to them (an
    optimizer step: the copy syncs; LoRA: the merged weights)."""
    from data.tokenizer.loading import load_tokenizer
    from rl.grpo import GRPO, PromptBatch
    from specs.config import LoraConfig
    from train import adapters

    tok = load_tokenizer(str(hf_dirs[0]))
    torch.manual_seed(0)
    model = TransformerLM.from_pretrained(hf_dirs[0])
    lora_cfg = LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj")) if lora else None
    if lora:
        adapters.apply(model, lora_cfg)
    trainer = _Trainer(model, tok, lora_cfg)
    cfg = dict(rewards=("test_grpo:count_a",), num_generations=2, max_completion_length=6, top_k=1,
               temperature=0.7)
    paged, eager = GRPO(GRPOConfig(**cfg, sampler="paged")), GRPO(GRPOConfig(**cfg, sampler="generate"))
    assert GRPO(GRPOConfig(**cfg)).sampler_kind(torch.device("cpu")) == "generate"  # auto, off CUDA
    g = torch.Generator().manual_seed(1)
    batch = PromptBatch([torch.randint(3, 300, (n,), generator=g).tolist() for n in (4, 9, 17)],
                        [{"prompt": "x"}] * 3)
    seen = []
    for step in range(3):
        trainer.global_step = step
        a, _ = paged.prepare(batch, trainer)
        b, _ = eager.prepare(batch, trainer)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels), step
        assert paged._synced_at == step
        seen.append(a.input_ids)
        with torch.no_grad():  # what an optimizer step does: the trainable weights change
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.3)
    assert not torch.equal(seen[0], seen[1]) or not torch.equal(seen[1], seen[2])  # the samples moved with them


def test_rloo_takes_the_kl_to_the_reference_out_of_the_reward(hf_dirs):
    """``method: rloo`` with beta: prepare() scores the completions, takes beta x the summed log-ratio of the policy
    to the reference (log-softmax of the logits over the temperature, computed here) out of each reward, and gives
    each completion token its completion's leave-one-out advantage; ``kl`` is the token mean of the log-ratio."""
    from data.tokenizer.loading import load_tokenizer
    from rl.grpo import GRPO, PromptBatch
    from specs.config import TrainConfig

    tok = load_tokenizer(str(hf_dirs[0]))
    model = TransformerLM.from_pretrained(hf_dirs[0])
    cfg = GRPOConfig(rewards=("test_grpo:count_a",), num_generations=4, max_completion_length=6, method="rloo",
                     beta=0.5, temperature=0.8)
    obj = GRPO(cfg)
    module = obj.module(model, train=TrainConfig(grpo=cfg), device=torch.device("cpu"))
    assert isinstance(module, RLOOModule) and module._reference[0] is not model
    with torch.no_grad():  # an optimizer step: the policy leaves its reference
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g = torch.Generator().manual_seed(1)
    batch = PromptBatch([torch.randint(3, 300, (n,), generator=g).tolist() for n in (4, 9)], [{"prompt": "x"}] * 2)
    out, stats = obj.prepare(batch, _Trainer(model, tok))
    keep = out.labels != -100
    safe = out.labels.clamp(min=0)

    def logps(m):
        with torch.no_grad():
            lp = torch.log_softmax(m(out.input_ids).float() / 0.8, -1).gather(-1, safe[..., None])[..., 0]
        return lp * keep

    kl = logps(model) - logps(module._reference[0])
    texts = [tok.decode([t for t in row[k].tolist() if t != tok.eos_id]) for row, k in zip(out.labels, keep)]
    rewards = torch.tensor(count_a(texts)) - 0.5 * kl.sum(-1)
    want = torch.zeros(8)
    for i in range(8):
        others = [float(rewards[j]) for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i]
        want[i] = float(rewards[i]) - sum(others) / 3
    assert kl.abs().sum() > 0.1
    torch.testing.assert_close(out.advantages, torch.where(keep, want[:, None], 0.0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats["kl"], kl.sum() / keep.sum(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats["reward"], torch.tensor(count_a(texts)).mean())


@pytest.mark.parametrize("sampler", ["generate", "paged"])
def test_a_grpo_run_resumes_exactly(hf_dirs, prompts, tmp_path, sampler):
    cfg = _config(tmp_path, hf_dirs[0], prompts, beta=0.05, sampler=sampler)
    full, split = tmp_path / "full", tmp_path / "split"
    assert cli(["--config", cfg, "--train.deterministic", "true", "--train.out_dir", str(full)]) == 0
    assert cli(["--config", cfg, "--train.deterministic", "true", "--train.steps", "2", "--train.out_dir",
                str(split)]) == 0
    assert cli(["--config", cfg, "--train.deterministic", "true", "--train.out_dir", str(split), "--resume",
                "auto"]) == 0
    a, b = scalars(full), scalars(split)
    for tag in ("loss", "reward", "kl"):
        assert [a[tag][i] for i in range(1, 5)] == [b[tag][i] for i in range(1, 5)], tag


def test_several_steps_on_each_generation(hf_dirs, prompts, tmp_path):
    """``num_iterations: 2``: each sampled batch trains two steps (its rewards logged twice, the loader advanced
    once), the second with its ratios to the sampling policy and their clip ratios; checkpoints between
    generations resume exactly; one inside a generation is refused before any work."""
    cfg = _config(tmp_path, hf_dirs[0], prompts, num_iterations=2, epsilon_high=0.28, beta=0.05)
    full, split = tmp_path / "full", tmp_path / "split"
    common = ["--train.deterministic", "true", "--train.ckpt_every", "2"]
    assert cli(["--config", cfg, *common, "--train.out_dir", str(full)]) == 0
    s = scalars(full)
    assert s["reward"][1] == s["reward"][2] and s["reward"][3] == s["reward"][4] and s["reward"][1] != s["reward"][3]
    assert s["clip_ratio/region_mean"][1] == 0 and "clip_ratio/high_mean" in s  # the first step's ratio is 1
    state = json.loads((full / "checkpoints" / "step_00000004" / "data" / "rank_00000.json").read_text())
    assert state["batches_done"] == 2  # 4 steps, 2 generations
    assert cli(["--config", cfg, *common, "--train.steps", "2", "--train.out_dir", str(split)]) == 0
    assert cli(["--config", cfg, *common, "--train.out_dir", str(split), "--resume", "auto"]) == 0
    t = scalars(split)
    for tag in ("loss", "reward", "kl", "clip_ratio/region_mean"):
        assert [s[tag][i] for i in range(1, 5)] == [t[tag][i] for i in range(1, 5)], tag
    assert cli(["--config", cfg, "--train.ckpt_every", "3", "--train.out_dir", str(tmp_path / "bad")]) == 2


def test_a_reward_function_returning_no_number_is_named(hf_dirs, prompts, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli(["--config", _config(tmp_path, hf_dirs[0], prompts), "--train.grpo.rewards", "test_grpo:not_a_number",
                "--train.out_dir", str(out)]) == 2
    assert "not_a_number returned 'high' for completion 0; expected a number or None" in capsys.readouterr().err
    assert not list((out / "checkpoints").glob("step_*"))  # no step was taken, so none was saved


@pytest.mark.parametrize("args,field", [
    (["--dist.strategy", "FSDP"], "dist.strategy"),
    (["--train.grpo.rewards", "no_such_module:f"], "train.grpo.rewards"),
    (["--train.grpo.rewards", "model:/no/such/dir"], "train.grpo.rewards"),
    (["--data.dataset", "preference"], "data.dataset"),
    (["--train.grpo.num_generations", "1"], "train.grpo.num_generations"),
    (["--train.preference.method", "dpo"], "train.grpo"),
    (["--train.grpo.method", "rloo", "--train.grpo.loss_type", "grpo"], "train.grpo.loss_type"),
    (["--train.grpo.normalize_advantages", "true"], "train.grpo.normalize_advantages"),
    (["--train.grpo.method", "ppo"], "train.grpo.method"),
    (["--train.grpo.sampler", "generate", "--train.grpo.importance_sampling", "token_mask"],
     "train.grpo.importance_sampling"),
    (["--train.grpo.method", "rloo", "--train.grpo.importance_sampling", "token_mask"],
     "train.grpo.importance_sampling"),
    (["--train.grpo.importance_sampling_min", "4.0"], "train.grpo.importance_sampling_min"),
])
def test_bad_grpo_configs_stop_before_any_work(hf_dirs, prompts, tmp_path, capsys, args, field):
    assert cli(["--config", _config(tmp_path, hf_dirs[0], prompts), *args, "--train.out_dir",
                str(tmp_path / "o")]) == 2
    assert field in capsys.readouterr().err


@pytest.mark.dist
@pytest.mark.parametrize("sampler", ["generate", "paged"])
def test_grpo_under_ddp(hf_dirs, prompts, tmp_path, sampler):
    """Two gloo ranks under DDP, each sampling its half of the prompts (``paged``: each with its own copy of the
    policy): the run completes, logs its rewards and writes a checkpoint (the samples differ from one process's, so
    the losses are not compared)."""
    import os
    import subprocess
    import sys

    cfg = _config(tmp_path, hf_dirs[0], prompts, sampler=sampler)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.run",
           "--config", cfg, "--train.device", "cpu", "--dist.strategy", "DDP", "--train.steps", "3",
           "--train.out_dir", str(tmp_path / "ddp")]
    here = os.path.dirname(__file__)  # the reward function's module
    path = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    s = scalars(tmp_path / "ddp")
    assert sorted(s["reward"]) == [1, 2, 3] and all(0 <= v <= 1 for v in s["reward"].values())
    assert (tmp_path / "ddp" / "checkpoints" / "step_00000003" / "model.safetensors").is_file()


def test_a_reward_model_scores_grpo_completions(hf_dirs, prompts, tmp_path):
    """``model:DIR`` in train.grpo.rewards: a TransformerRewardModel scores prompt + completion ids, weighted with a
    reward function's; its scores are the ones the model gives those sequences."""
    from model.reward import TransformerRewardModel
    from rl.grpo import load_reward

    torch.manual_seed(0)
    rm_dir = tmp_path / "rm"
    TransformerRewardModel.from_pretrained(hf_dirs[0]).save_pretrained(rm_dir)
    name, fn = load_reward(f"model:{rm_dir}")
    rm = TransformerRewardModel.from_pretrained(rm_dir).eval()
    p, c = [[5, 6, 7], [5, 6]], [[8, 9], [10, 11, 12, 1]]
    with torch.no_grad():
        want = [float(rm(torch.tensor([a + b]))[0, 0]) for a, b in zip(p, c)]
    assert name == "model:rm" and fn(prompt_ids=p, completion_ids=c) == pytest.approx(want, rel=1e-5)
    out = tmp_path / "out"
    cfg = _config(tmp_path, hf_dirs[0], prompts)
    assert cli(["--config", cfg, "--train.grpo.rewards", f"[test_grpo:count_a, model:{rm_dir}]",
                "--train.grpo.reward_weights", "[1.0, 0.5]", "--train.steps", "2", "--train.out_dir", str(out)]) == 0
    s = scalars(out)
    for step in (1, 2):
        mixed = s["rewards/count_a/mean"][step] + 0.5 * s["rewards/model:rm/mean"][step]
        assert s["reward"][step] == pytest.approx(mixed, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_importance_weights_are_trls(mode):
    """TRL's vLLM correction, written out here from its documentation: per-token or per-sequence ratios of the
    policy's probability to the sampler's, clipped to [min, max] or zeroed outside it."""
    from rl.grpo import importance_weights

    g = torch.Generator().manual_seed(0)
    policy, sampler = -torch.rand(3, 5, generator=g) * 3, -torch.rand(3, 5, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float32)
    got = importance_weights(policy, sampler, mask, mode, 0.5, 2.0)
    for b in range(3):
        cols = mask[b].nonzero().flatten().tolist()
        if mode.startswith("sequence"):
            r = float(torch.exp(sum(policy[b, c] - sampler[b, c] for c in cols)))
            ratios = {c: r for c in cols}
        else:
            ratios = {c: float(torch.exp(policy[b, c] - sampler[b, c])) for c in cols}
        for c in range(5):
            want = 0.0
            if c in ratios:
                r = ratios[c]
                want = min(max(r, 0.5), 2.0) if mode.endswith("truncate") else (r if 0.5 <= r <= 2.0 else 0.0)
            assert float(got[b, c]) == pytest.approx(want, rel=1e-5), (b, c)
    assert (got >= 0).all()
    unbounded = importance_weights(policy, sampler, mask, mode, None, None)  # no bounds: the ratios themselves
    assert torch.allclose(unbounded, importance_weights(policy, sampler, mask, mode, 0.0, 1e30))


def test_the_paged_samplers_correction(hf_dirs):
    """With ``sampler: paged`` GRPO scores the sampled tokens under the copy: where the copy is the policy the
    weights are 1 and the batch is the uncorrected one; where the copy differs, each completion's advantage carries
    its masked sequence ratio (``auto``: TRL's sequence_mask at [-, 3])."""
    from data.tokenizer.loading import load_tokenizer
    from rl.grpo import GRPO, PromptBatch

    tok = load_tokenizer(str(hf_dirs[0]))
    model = TransformerLM.from_pretrained(hf_dirs[0])
    trainer = _Trainer(model, tok)
    cfg = dict(rewards=("test_grpo:count_a",), num_generations=2, max_completion_length=6, sampler="paged")
    g = torch.Generator().manual_seed(1)
    batch = PromptBatch([torch.randint(3, 300, (n,), generator=g).tolist() for n in (4, 9)], [{"prompt": "x"}] * 2)
    plain = GRPO(GRPOConfig(**cfg, importance_sampling="none"))
    auto = GRPO(GRPOConfig(**cfg))
    assert auto.correction(torch.device("cpu")) == "sequence_mask"
    a, _ = plain.prepare(batch, trainer)
    b, stats = auto.prepare(batch, trainer)
    assert torch.equal(a.input_ids, b.input_ids) and a.old_logps is None and b.old_logps is not None
    torch.testing.assert_close(b.advantages, a.advantages, rtol=1e-5, atol=1e-6)  # the copy is the policy: w = 1
    assert stats["sampling/sampling_logp_difference/max"].item() < 1e-4
    assert stats["sampling/importance_sampling_ratio/mean"].item() == pytest.approx(1.0, abs=1e-4)
    with torch.no_grad():  # the copy drifts from the policy (as bf16 kernels would, only more)
        for p in auto._paged.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    c, stats = auto.prepare(batch, trainer)
    lab = (c.labels != -100).float()
    with torch.no_grad():
        pol = torch.log_softmax(model(c.input_ids).float(), -1).gather(-1, c.labels.clamp(min=0)[..., None])[..., 0]
        cop = torch.log_softmax(auto._paged.model(c.input_ids).float(), -1).gather(
            -1, c.labels.clamp(min=0)[..., None])[..., 0]
    ratio = torch.exp(((pol - cop) * lab).sum(-1))
    w = torch.where(ratio <= 3.0, ratio, 0.0)
    assert stats["sampling/sampling_logp_difference/max"].item() > 1e-3
    texts = [tok.decode([t for t in row[k.bool()].tolist() if t != tok.eos_id]) for row, k in zip(c.labels, lab)]
    uncorrected, _ = group_advantages(torch.tensor(count_a(texts)), 2)
    torch.testing.assert_close(c.advantages, (uncorrected * w)[:, None] * lab, rtol=1e-4, atol=1e-5)
    assert 0 < stats["sampling/importance_sampling_ratio/mean"].item() != pytest.approx(1.0, abs=1e-4)
