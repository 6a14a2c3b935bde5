"""The reward objective (``train.preference.method: reward``, ``model.arch: reward``) against TRL 1.13's
RewardTrainer on a transformers LlamaForSequenceClassification: the same sequences, loss, statistics and
gradients; then a reward model trained from a causal LM through ``python -m train.run``."""

from __future__ import annotations

import pytest
import torch
from test_run import _config, scalars
from test_trl_parity import RECORDS

from data.tokenizer.loading import load_tokenizer
from model.lm import TransformerLM
from model.reward import TransformerRewardModel
from rl.data import PreferenceLoader, tokenize_pair
from rl.objectives import RewardModule, full_sequences
from specs.errors import ConfigError
from train.run import cli

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")


@pytest.fixture(scope="module")
def seqcls_dir(hf_dirs, tmp_path_factory):
    """A random LlamaForSequenceClassification (one label) beside the tokenizer, pad id set as TRL needs."""
    d = tmp_path_factory.mktemp("rm")
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(hf_dirs[0])
    tok.save_pretrained(d)
    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   initializer_range=0.2, tie_word_embeddings=False, num_labels=1,
                                   pad_token_id=tok.pad_token_id)
    transformers.LlamaForSequenceClassification(cfg).save_pretrained(d)
    return d


def _batch(directory, records):
    tok = load_tokenizer(str(directory))
    pairs = [tokenize_pair(tok, r) for r in records]
    loader = PreferenceLoader(pairs, tok, batch_size=len(pairs), seq_len=64, seed=0, shuffle=False, drop_last=True,
                              epochs=1, split="train", source="test")
    return pairs, next(iter(loader))


@pytest.mark.parametrize("center", [0.0, 0.05])
def test_reward_loss_statistics_and_gradients_match_trl(seqcls_dir, tmp_path, center):
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(seqcls_dir)
    hf = transformers.LlamaForSequenceClassification.from_pretrained(seqcls_dir)
    args = trl.RewardConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False,
                            per_device_train_batch_size=len(RECORDS),
                            center_rewards_coefficient=center or None)
    trainer = trl.RewardTrainer(model=hf, args=args, processing_class=tok,
                                train_dataset=datasets.Dataset.from_list(RECORDS))
    pairs, b = _batch(seqcls_dir, RECORDS)
    ids, mask, _ = full_sequences(b.input_ids, b.labels, b.attention_mask)
    for i, row in enumerate(trainer.train_dataset):  # the same whole sequences TRL scores
        for j, key in ((0, "chosen_ids"), (1, "rejected_ids")):
            n = int(mask[2 * i + j].sum())
            assert ids[2 * i + j, :n].tolist() == row[key]
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(RECORDS))])
    trainer.model.train()
    want = trainer.compute_loss(trainer.model, inputs)
    want.backward()
    stats_want = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    ours = RewardModule(TransformerRewardModel.from_pretrained(seqcls_dir), center)
    loss, stats = ours(b.input_ids, b.labels, attn_mask=b.attention_mask)
    loss.backward()
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-6)
    for k in ("accuracy", "margin", "mean_reward"):
        assert stats[k].item() == pytest.approx(stats_want[k], rel=1e-5, abs=1e-6), k
    for name in ("score.weight", "model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"):
        g_want, g = trainer.model.get_parameter(name).grad, ours.model.get_parameter(name).grad
        assert g_want.abs().max() > 0
        torch.testing.assert_close(g, g_want, rtol=1e-4, atol=1e-6)


def test_a_reward_model_trains_from_a_causal_lm_through_train_run(hf_dirs, pairs, tmp_path):
    out = tmp_path / "rm"
    cfg = _config(tmp_path, hf_dirs[0], pairs, steps=8, eval_every=8, lr=1e-3,
                  preference={"method": "reward", "center_rewards": 0.01})
    assert cli(["--config", cfg, "--model.arch", "reward", "--train.out_dir", str(out)]) == 0
    s = scalars(out)
    assert s["loss"][8] < s["loss"][1] and s["eval/accuracy"][8] == 1.0 and s["eval/margin"][8] > 0
    ckpt = out / "checkpoints" / "step_00000008"
    rm = TransformerRewardModel.from_pretrained(ckpt).eval()
    lm = TransformerLM.from_pretrained(hf_dirs[0])
    trained = rm.state_dict()["model.layers.0.mlp.down_proj.weight"]
    assert not torch.equal(trained, lm.state_dict()["model.layers.0.mlp.down_proj.weight"])
    _, b = _batch(hf_dirs[0], [{"prompt": "Is kiwi a fruit? ", "chosen": "Yes, kiwi is a fruit.",
                                "rejected": "No idea about kiwi."}])
    ids, mask, _ = full_sequences(b.input_ids, b.labels, b.attention_mask)
    with torch.no_grad():
        chosen, rejected = rm(ids, attn_mask=mask)[:, 0]
    assert chosen > rejected  # a prompt it never saw
    with pytest.raises(Exception, match="score.weight"):
        TransformerLM.from_pretrained(ckpt)


@pytest.mark.parametrize("args,field", [
    ([], "model.arch"),  # a causal LM has no score head
    (["--model.arch", "reward", "--train.preference.loss_type", "ipo"], "train.preference.loss_type"),
    (["--model.arch", "reward", "--train.preference.method", "dpo", "--train.preference.center_rewards", "0.1"],
     "train.preference.center_rewards"),
])
def test_bad_reward_configs_stop_before_any_work(hf_dirs, pairs, tmp_path, capsys, args, field):
    cfg = _config(tmp_path, hf_dirs[0], pairs, preference={"method": "reward"})
    assert cli(["--config", cfg, *args, "--train.out_dir", str(tmp_path / "o")]) == 2
    assert field in capsys.readouterr().err


def test_a_model_without_a_score_head_is_refused():
    from rl.objectives import Reward
    from specs.config import PreferenceConfig
    from specs.presets import preset

    with pytest.raises(ConfigError, match="model.arch: reward"):
        Reward(PreferenceConfig(method="reward")).module(TransformerLM(preset("llama-debug")), train=None,
                                                         device=torch.device("cpu"))
