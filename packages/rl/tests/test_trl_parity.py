"""DPO and ORPO against TRL (trl 1.13): the same pairs tokenized the same way, and the same loss, statistics and
gradients from TRL's own ``DPOTrainer._compute_loss`` on the same transformers weights that lmstack loads."""

from __future__ import annotations

import copy
import types

import pytest
import torch

from data.tokenizer.loading import load_tokenizer
from model.lm import TransformerLM
from rl.data import PreferenceLoader, tokenize_pair
from rl.losses import orpo_odds_ratio, sequence_logps
from rl.objectives import CPO, DPO, ORPO, PreferenceModule
from specs.config import PreferenceConfig

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

RECORDS = [
    {"prompt": "hello world,", "chosen": " how are you today?", "rejected": " the lazy dog"},
    {"prompt": "the quick brown", "chosen": " fox jumps over the lazy dog", "rejected": " dog"},
    {"prompt": "preference data", "chosen": " for dpo", "rejected": " and a rejected one"},
]


def _trl_trainer(hf_dirs, tmp_path, **args):
    policy_dir, ref_dir = hf_dirs
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(policy_dir)
    policy = transformers.LlamaForCausalLM.from_pretrained(policy_dir)
    ref = transformers.LlamaForCausalLM.from_pretrained(ref_dir)
    cfg = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(RECORDS), report_to=[],
                        use_cpu=True, bf16=False, **args)
    return trl.DPOTrainer(model=policy, ref_model=ref, args=cfg, train_dataset=datasets.Dataset.from_list(RECORDS),
                          processing_class=tok)


def _ours(hf_dirs, objective):
    policy = TransformerLM.from_pretrained(hf_dirs[0])
    ref = TransformerLM.from_pretrained(hf_dirs[1]).eval().requires_grad_(False)
    return PreferenceModule(policy, ref if isinstance(objective, DPO) else None, objective._loss)


def _our_batch(hf_dirs, records=RECORDS):
    tok = load_tokenizer(str(hf_dirs[0]))
    pairs = [tokenize_pair(tok, r) for r in records]
    loader = PreferenceLoader(pairs, tok, batch_size=len(pairs), seq_len=64, seed=0, shuffle=False,
                              drop_last=True, epochs=1, split="train", source="test")
    return pairs, next(iter(loader))


def _trl_aligned(b):
    """The batch with one more (padding) column, so the shift TRL's get_batch_logps does drops no target: (ids,
    mask, lmstack's shifted targets, TRL's labels aligned with the inputs, -100 off the completion)."""
    pad = torch.zeros_like(b.input_ids[:, :1])
    ids, mask = torch.cat([b.input_ids, pad], 1), torch.cat([b.attention_mask, pad], 1)
    targets = torch.cat([b.labels, pad - 100], 1)
    labels = torch.cat([torch.full_like(targets[:, :1], -100), targets[:, :-1]], 1)
    return ids, mask, targets, labels


def test_pairs_tokenize_as_trl_tokenizes_them(hf_dirs, tmp_path):
    trainer = _trl_trainer(hf_dirs, tmp_path)
    pairs, _ = _our_batch(hf_dirs)
    for row, (p, c, r) in zip(trainer.train_dataset, pairs):
        assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == (p, c, r)
        assert p[0] == 0 and c[-1] == r[-1] == 1  # BOS from the post-processor, EOS appended


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.2),
                                                 ("sigmoid_norm", 0.0)])
def test_dpo_loss_statistics_and_gradients_match_trl(hf_dirs, tmp_path, loss_type, smoothing):
    beta = 0.3
    trainer = _trl_trainer(hf_dirs, tmp_path, beta=beta, loss_type=[loss_type], label_smoothing=smoothing)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(RECORDS))])
    trainer.model.train()
    want = trainer._compute_loss(trainer.model, inputs, False)
    want.backward()
    stats_want = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    cfg = PreferenceConfig(beta=beta, loss_type=loss_type, label_smoothing=smoothing)
    ours = _ours(hf_dirs, DPO(cfg))
    _, b = _our_batch(hf_dirs)
    loss, stats = ours(b.input_ids, b.labels, attn_mask=b.attention_mask)
    loss.backward()
    assert abs(loss.item()) > 1e-3  # the reference differs from the policy: a loss of log 2 would hide errors
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-6)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
              "logps/rejected"):
        assert stats[k].item() == pytest.approx(stats_want[k], rel=1e-5, abs=1e-6), k
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"):
        g_want = trainer.model.get_parameter(name).grad
        g = ours.model.get_parameter(name).grad
        assert g_want.abs().max() > 0
        torch.testing.assert_close(g, g_want, rtol=1e-4, atol=1e-6)


def test_rpo_adds_the_chosen_cross_entropy_as_trl_sft_loss(hf_dirs, tmp_path):
    """sft_weight is TRL's loss_type=["sigmoid", "sft"] with loss_weights [1, w]: with one pair a batch, TRL's
    token mean over the batch's chosen tokens and lmstack's mean over pairs of per-pair token means agree."""
    trainer = _trl_trainer(hf_dirs, tmp_path, beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.7])
    inputs = trainer.data_collator([trainer.train_dataset[1]])
    want = trainer._compute_loss(trainer.model, inputs, False)
    ours = _ours(hf_dirs, DPO(PreferenceConfig(beta=0.1, sft_weight=0.7)))
    _, b = _our_batch(hf_dirs, RECORDS[1:2])
    loss, _ = ours(b.input_ids, b.labels, attn_mask=b.attention_mask)
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-6)


def test_orpo_odds_ratio_and_logps_match_trl(hf_dirs):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    beta = 0.25
    ours = _ours(hf_dirs, ORPO(PreferenceConfig(method="orpo", beta=beta)))
    _, b = _our_batch(hf_dirs)
    ids, mask, targets, labels = _trl_aligned(b)
    with torch.no_grad():
        logits = ours.model(ids, attn_mask=mask)
        loss, stats = ours(ids, targets, attn_mask=mask)
    mean_logps = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    ours_sum, ours_n = sequence_logps(logits, targets)
    torch.testing.assert_close(ours_sum / ours_n, mean_logps, rtol=1e-5, atol=1e-6)
    stub = types.SimpleNamespace(beta=beta, accelerator=types.SimpleNamespace(device="cpu"))
    losses, chosen_r, rejected_r, ratio, log_odds = ORPOTrainer.odds_ratio_loss(stub, mean_logps[0::2],
                                                                               mean_logps[1::2])
    mine_ratio, mine_log_odds = orpo_odds_ratio(mean_logps[0::2], mean_logps[1::2])
    torch.testing.assert_close(beta * mine_ratio, losses)
    assert stats["log_odds_ratio"].item() == pytest.approx(ratio.item(), rel=1e-5)
    assert stats["log_odds_chosen"].item() == pytest.approx(log_odds.item(), rel=1e-5)
    assert stats["rewards/chosen"].item() == pytest.approx(chosen_r.mean().item(), rel=1e-5)
    nll = -(mean_logps[0::2]).mean()  # the chosen completions' token-mean cross-entropy, per pair, averaged
    torch.testing.assert_close(loss, nll - losses.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine_log_odds.mean(), log_odds)


def test_the_copy_reference_is_frozen_and_outside_the_module(hf_dirs):
    policy = TransformerLM.from_pretrained(hf_dirs[0])
    module = DPO(PreferenceConfig()).module(policy, train=types.SimpleNamespace(lora=None), device=torch.device("cpu"))
    names = [n for n, _ in module.named_parameters()]
    assert names and all(n.startswith("model.") for n in names)  # not trained, saved or wrapped
    ref = module.reference
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    before = copy.deepcopy(ref.state_dict())
    _, b = _our_batch(hf_dirs)
    loss, stats = module(b.input_ids, b.labels, attn_mask=b.attention_mask)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)  # policy == reference
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.1 * p.grad
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    loss, stats = module(b.input_ids, b.labels, attn_mask=b.attention_mask)
    assert loss.item() < 0.69 and stats["rewards/margins"].item() > 0


@pytest.mark.parametrize("method,loss_type,smoothing,sft", [
    ("simpo", "sigmoid", 0.0, 0.0), ("simpo", "sigmoid", 0.1, 0.0), ("cpo", "sigmoid", 0.0, 1.0),
    ("cpo", "hinge", 0.0, 0.0), ("cpo", "ipo", 0.0, 0.5)])
def test_cpo_and_simpo_match_trl_cpo_loss(hf_dirs, method, loss_type, smoothing, sft):
    """rl's CPO/SimPO on lmstack's log-probabilities against TRL's CPOTrainer.cpo_loss on TRL's own (get_batch_logps,
    averaged for simpo and ipo), plus sft_weight times the chosen completions' cross-entropy (TRL's cpo_alpha; one
    pair a batch, where TRL's token mean over the batch and lmstack's per-pair mean agree)."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    beta, gamma = 0.4, 0.7
    cfg = PreferenceConfig(method=method, beta=beta, loss_type=loss_type, label_smoothing=smoothing,
                           sft_weight=sft, simpo_gamma=gamma if method == "simpo" else 0.5)
    ours = _ours(hf_dirs, CPO(cfg))
    _, b = _our_batch(hf_dirs, RECORDS[1:2])
    ids, mask, targets, labels = _trl_aligned(b)
    with torch.no_grad():
        logits = ours.model(ids, attn_mask=mask)
        loss, stats = ours(ids, targets, attn_mask=mask)
    logps = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=method == "simpo" or loss_type == "ipo")
    stub = types.SimpleNamespace(alpha=0.0, beta=beta, simpo_gamma=gamma, label_smoothing=smoothing,
                                 loss_type="simpo" if method == "simpo" else loss_type,
                                 accelerator=types.SimpleNamespace(device="cpu"))
    losses, chosen_r, rejected_r = CPOTrainer.cpo_loss(stub, logps[0::2], logps[1::2])
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:])  # the chosen row's completion tokens
    want = losses.mean() + sft * nll
    assert abs(want.item() - 0.6931) > 1e-3
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert stats["rewards/chosen"].item() == pytest.approx(chosen_r.item(), rel=1e-5)
    assert stats["rewards/rejected"].item() == pytest.approx(rejected_r.item(), rel=1e-5)
