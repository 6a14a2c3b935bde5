"""LoRA (``compress.lora``) against Hugging Face PEFT: the same outputs for the same adapter weights, adapter
files that move both ways, merging, training through the Trainer, and its errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from compress import (
    LoRALinear,
    adapters_disabled,
    apply_lora,
    load_adapter,
    merge_lora,
    merged_state_dict,
    save_adapter,
)
from compress.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_state_dict, lora_layers
from model.lm import TransformerLM
from specs.errors import ConfigError, ShapeError

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]


def _hf(d):
    return transformers.LlamaForCausalLM.from_pretrained(d).eval()


def _randomize(model, seed):
    """Nonzero lora_B (zero at init, which would hide any error in B's use)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.3)


@pytest.mark.parametrize("rslora", [False, True])
def test_an_lmstack_adapter_loads_into_peft_and_gives_its_logits(hf_dir, tmp_path, rslora):
    ours = TransformerLM.from_pretrained(hf_dir).eval()
    ids = torch.randint(0, 96, (2, 11))
    before = ours(ids)
    assert apply_lora(ours, r=4, alpha=8, targets=TARGETS, use_rslora=rslora) == 10
    torch.testing.assert_close(ours(ids), before)  # lora_B starts at zero: the model is unchanged
    _randomize(ours, 1)
    save_adapter(ours, tmp_path / "ad", base_model=str(hf_dir))
    cfg = json.loads((tmp_path / "ad" / ADAPTER_CONFIG).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["target_modules"] == sorted(TARGETS)
    theirs = peft.PeftModel.from_pretrained(_hf(hf_dir), tmp_path / "ad").eval()
    with torch.no_grad():
        want = theirs(ids).logits
    assert (want - before).abs().max() > 1e-2  # the adapter changes the output
    torch.testing.assert_close(ours(ids), want, rtol=1e-5, atol=1e-5)


def test_a_peft_adapter_loads_here_and_merges(hf_dir, tmp_path):
    torch.manual_seed(3)
    hf = _hf(hf_dir)
    config = peft.LoraConfig(r=8, lora_alpha=32, target_modules=["k_proj", "up_proj", "down_proj"], lora_dropout=0.1,
                             task_type="CAUSAL_LM", init_lora_weights=False)  # random A and B
    theirs = peft.get_peft_model(hf, config).eval()
    theirs.save_pretrained(tmp_path / "peft")
    ids = torch.randint(0, 96, (1, 13))
    with torch.no_grad():
        want = theirs(ids).logits
    ours = TransformerLM.from_pretrained(hf_dir).eval()
    assert load_adapter(ours, tmp_path / "peft") == 6
    layer = ours.model.layers[0].self_attn.k_proj
    assert isinstance(layer, LoRALinear) and layer.r == 8 and math.isclose(layer.scaling, 4.0)
    torch.testing.assert_close(ours(ids), want, rtol=1e-5, atol=1e-5)
    assert merge_lora(ours) == 6 and not lora_layers(ours)
    assert type(ours.model.layers[0].self_attn.k_proj) is nn.Linear
    torch.testing.assert_close(ours(ids), want, rtol=1e-4, atol=1e-4)
    ours.save_pretrained(tmp_path / "merged")  # the architecture it was built as: save_pretrained takes it
    back = TransformerLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(back(ids), want, rtol=1e-4, atol=1e-4)


def test_merged_state_dict_is_the_merged_models_and_changes_nothing(hf_dir):
    import copy

    torch.manual_seed(4)
    model = TransformerLM.from_pretrained(hf_dir)
    apply_lora(model, r=4, alpha=8, targets=TARGETS)
    _randomize(model, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = copy.deepcopy(model)
    merge_lora(merged)
    want = merged.state_dict()
    got = merged_state_dict(model)
    assert sorted(got) == sorted(want) == sorted(TransformerLM.from_pretrained(hf_dir).state_dict())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(got["model.layers.0.self_attn.q_proj.weight"],
                           before["model.layers.0.self_attn.q_proj.base_layer.weight"])  # the delta is in
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)
    with adapters_disabled(model):  # a disabled layer is its base
        off = merged_state_dict(model)
    torch.testing.assert_close(off["model.layers.0.self_attn.q_proj.weight"],
                               before["model.layers.0.self_attn.q_proj.base_layer.weight"], rtol=0, atol=0)


def test_adapters_disabled_is_the_base_model_as_peft_disable_adapter(hf_dir, tmp_path):
    """Within ``adapters_disabled`` the adapted model gives the base model's logits, as PEFT's
    ``disable_adapter()`` does for the same adapter; outside it the adapters apply again, also after an error."""
    ours = TransformerLM.from_pretrained(hf_dir).eval()
    ids = torch.randint(0, 96, (2, 9))
    base = ours(ids)
    apply_lora(ours, r=4, alpha=8, targets=TARGETS)
    _randomize(ours, 5)
    adapted = ours(ids)
    assert (adapted - base).abs().max() > 1e-2
    save_adapter(ours, tmp_path / "ad")
    theirs = peft.PeftModel.from_pretrained(_hf(hf_dir), tmp_path / "ad").eval()
    with adapters_disabled(ours) as n, torch.no_grad(), theirs.disable_adapter():
        assert n == 10
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(ids), base)
    torch.testing.assert_close(ours(ids), adapted)
    with pytest.raises(RuntimeError, match="inside"), adapters_disabled(ours):
        raise RuntimeError("inside")
    torch.testing.assert_close(ours(ids), adapted)
    from compress.lora import LORA
    with LORA.disabled(ours):
        torch.testing.assert_close(ours(ids), base)


def test_only_the_adapters_train(hf_dir, tmp_path):
    """Through the Trainer: the loss falls, the adapters change, every base weight stays bitwise."""
    from specs.config import TrainConfig
    from train.trainer import Trainer

    torch.manual_seed(0)
    model = TransformerLM.from_pretrained(hf_dir)
    apply_lora(model, r=4, alpha=8, targets=TARGETS)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) == 2 * (
        4 * (32 + 32) + 4 * (32 + 16) + 4 * (32 + 32) + 4 * (32 + 64) + 4 * (64 + 32))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in trainable}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}
    trainer = Trainer(model, TrainConfig(lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                         out_dir=str(tmp_path / "run"), device="cpu", callbacks=()))
    ids = torch.randint(0, 96, (4, 17), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    losses = [float(trainer.step(batch)) for _ in range(12)]
    assert losses[-1] < losses[0] - 0.1, losses
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert all(not torch.equal(dict(model.named_parameters())[n], v) for n, v in start.items() if ".lora_B." in n)


def test_an_adapted_model_does_not_fold_its_norms_until_merged(hf_dir):
    """fold_norms scales a Linear's weight by the norm's; an adapter's lora_A would miss it, so an adapted layer
    offers no weight to fold (and save_pretrained says to merge first)."""
    model = TransformerLM.from_pretrained(hf_dir).eval()
    apply_lora(model, targets=["q_proj"])
    assert not model.can_fold_norms()
    with pytest.raises(ConfigError, match="merge_lora"):
        model.save_pretrained(hf_dir.parent / "unmerged")
    merge_lora(model)
    assert model.can_fold_norms()


def test_targets_and_hyperparameters_are_checked(hf_dir, tmp_path):
    model = TransformerLM.from_pretrained(hf_dir)
    with pytest.raises(ConfigError, match=r"lora.targets.*matches no nn.Linear.*named .*gate_proj.*q_proj"):
        apply_lora(model, targets=["query"])
    for kw, field in (({"r": 0}, "lora.r"), ({"r": 2.5}, "lora.r"), ({"alpha": -1}, "lora.alpha"),
                      ({"dropout": 1.0}, "lora.dropout")):
        with pytest.raises(ConfigError, match=field):
            apply_lora(model, **kw)
    with pytest.raises(ConfigError, match="matches the LM head"):
        apply_lora(model, targets=["q_proj", "lm_head"])
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # nothing touched
    assert apply_lora(model, targets=r"model\.layers\.1\.mlp\.(up|down)_proj") == 2  # a regex: whole names
    with pytest.raises(ConfigError, match="has LoRA adapters already"):
        apply_lora(model)
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        save_adapter(TransformerLM.from_pretrained(hf_dir), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_bad_adapter_directories_are_refused_before_the_model_changes(hf_dir, tmp_path):
    model = TransformerLM.from_pretrained(hf_dir)
    apply_lora(model, r=4, targets=["q_proj"])
    save_adapter(model, tmp_path / "ad")
    other = TransformerLM.from_pretrained(hf_dir)
    with pytest.raises(ConfigError, match="has no adapter_config.json"):
        load_adapter(other, tmp_path)
    cfg = json.loads((tmp_path / "ad" / ADAPTER_CONFIG).read_text())
    for change, words in (({"r": 8}, r"lora_A.weight is of shape \(4, 32\).*needs \(8, 32\)"),
                          ({"use_dora": True}, "use_dora"), ({"peft_type": "IA3"}, "peft_type is 'IA3'")):
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / ADAPTER_WEIGHTS).write_bytes((tmp_path / "ad" / ADAPTER_WEIGHTS).read_bytes())
        (tmp_path / "bad" / ADAPTER_CONFIG).write_text(json.dumps({**cfg, **change}))
        with pytest.raises((ConfigError, ShapeError), match=words):
            load_adapter(other, tmp_path / "bad")
        assert not lora_layers(other)
    state = adapter_state_dict(model)
    assert sorted(state)[0].startswith("base_model.model.model.layers.0.self_attn.q_proj.lora_")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        save_adapter(model, tmp_path / "file")
