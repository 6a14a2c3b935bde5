"""TransformerRewardModel against transformers' LlamaForSequenceClassification: the same scores for the same
weights (left and right padding), loading a causal LM as the trunk with a new score head, and save/load."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import CheckpointError
from model.lm import TransformerLM
from model.reward import TransformerRewardModel
from specs.errors import ConfigError
from specs.presets import preset

transformers = pytest.importorskip("transformers")
PAD = 0


def _hf_cfg(**kw):
    return transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                    initializer_range=0.2, tie_word_embeddings=False, pad_token_id=PAD, **kw)


def _batch(left: bool):
    g = torch.Generator().manual_seed(1)
    lens = [9, 5, 7]
    ids = torch.full((3, 9), PAD)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for r, n in enumerate(lens):
        span = slice(9 - n, 9) if left else slice(0, n)
        ids[r, span] = torch.randint(1, 96, (n,), generator=g)
        mask[r, span] = 1
    return ids, mask


@pytest.mark.parametrize("left", [False, True])
def test_scores_match_llama_for_sequence_classification(tmp_path, left):
    torch.manual_seed(0)
    hf = transformers.LlamaForSequenceClassification(_hf_cfg(num_labels=1)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = TransformerRewardModel.from_pretrained(tmp_path / "hf").eval()
    assert ours.num_labels == 1
    ids, mask = _batch(left)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attn_mask=mask)
    assert got.shape == (3, 1) and want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_causal_lm_becomes_the_trunk_with_a_new_head(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(_hf_cfg()).save_pretrained(tmp_path / "lm")
    lm = TransformerLM.from_pretrained(tmp_path / "lm")
    rm = TransformerRewardModel.from_pretrained(tmp_path / "lm", num_labels=2)
    trunk = {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}
    assert all(torch.equal(rm.model.state_dict()[k], v) for k, v in trunk.items())
    assert "lm_head.weight" not in rm.state_dict() and rm.score.weight.shape == (2, 32)
    assert 0.1 < rm.score.weight.std() < 0.3  # normal(0, init_std = initializer_range 0.2)
    ids, mask = _batch(False)
    with torch.no_grad():
        h = lm.model(ids, attn_mask=mask)
        want = h[torch.arange(3), mask.sum(1) - 1] @ rm.score.weight.T
        torch.testing.assert_close(rm(ids, attn_mask=mask), want)


def test_save_and_load_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    rm = TransformerRewardModel(preset("llama-debug"), num_labels=3)
    rm.save_pretrained(tmp_path / "rm")
    back = TransformerRewardModel.from_pretrained(tmp_path / "rm")
    assert back.num_labels == 3
    ids = torch.randint(0, 512, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), rm(ids), rtol=0, atol=0)
    bf16 = TransformerRewardModel.from_pretrained(tmp_path / "rm", dtype="bf16")
    assert bf16.score.weight.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="num_labels"):
        TransformerRewardModel(preset("llama-debug"), num_labels=0)
    with pytest.raises(CheckpointError, match="missing"):
        TransformerRewardModel.from_pretrained(tmp_path / "nothing")
