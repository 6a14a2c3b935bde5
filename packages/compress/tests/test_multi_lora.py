"""Multi-LoRA (``compress.multi_lora``) against Hugging Face PEFT: each row of one batch computes what PEFT's model
with that row's adapter computes, fused or not, at any rank up to the maximum; slots load, clear and refuse what
does not fit."""

from __future__ import annotations

import pytest
import torch

from compress.multi_lora import MultiLoRA, MultiLoRALinear, read_adapter
from model.lm import TransformerLM
from specs.errors import ConfigError, ShapeError

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# (r, alpha, targets, rslora): ranks below the maximum, different modules, rsLoRA's scaling
ADAPTERS = [(4, 8, ["q_proj", "v_proj"], False),
            (2, 7, ["k_proj", "o_proj", "up_proj", "down_proj"], True),
            (8, 16, ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"], False)]


@pytest.fixture(scope="module")
def setup(hf_dir, tmp_path_factory):
    """The tiny random Llama, three PEFT adapters saved from it, and PEFT's logits for each (index 3: none)."""
    base = hf_dir
    ids = torch.randint(0, 96, (4, 9), generator=torch.Generator().manual_seed(0))
    dirs, logits = [], []
    for k, (r, alpha, targets, rslora) in enumerate(ADAPTERS):
        hf = transformers.LlamaForCausalLM.from_pretrained(base).eval()
        pm = peft.get_peft_model(hf, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                     use_rslora=rslora))
        g = torch.Generator().manual_seed(10 + k)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        d = tmp_path_factory.mktemp(f"adapter{k}")
        pm.save_pretrained(d)
        with torch.no_grad():
            logits.append(pm(ids).logits)
        dirs.append(d)
    with torch.no_grad():
        logits.append(transformers.LlamaForCausalLM.from_pretrained(base).eval()(ids).logits)
    return base, dirs, ids, logits


@pytest.mark.parametrize("fuse", [False, True])
def test_each_row_computes_its_own_adapter_as_peft_does(setup, fuse):
    base, dirs, ids, want = setup
    model = TransformerLM.from_pretrained(base).eval()
    if fuse:
        model.fuse_projections()
    multi = MultiLoRA(model, max_loras=3, max_rank=8, max_rows=8)
    if fuse:
        assert {n.rsplit(".", 1)[-1] for n in multi.layers} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    for slot, d in enumerate(dirs):
        multi.load(slot, read_adapter(d))
    rows = [2, None, 0, 1]  # row b uses adapter rows[b]
    multi.set_rows(rows)
    with torch.no_grad():
        got = model(ids)
    for b, slot in enumerate(rows):
        torch.testing.assert_close(got[b], want[3 if slot is None else slot][b], rtol=1e-4, atol=1e-4)
    multi.set_rows([None, 0, 1, 2])  # the same rows, other adapters: nothing of the last set stays
    with torch.no_grad():
        got = model(ids)
    for b, k in enumerate([3, 0, 1, 2]):
        torch.testing.assert_close(got[b], want[k][b], rtol=1e-4, atol=1e-4)


def test_cleared_and_unused_slots_compute_the_base_model(setup):
    base, dirs, ids, want = setup
    model = TransformerLM.from_pretrained(base).eval()
    multi = MultiLoRA(model, max_loras=2, max_rank=8, max_rows=4)
    multi.load(0, read_adapter(dirs[2]))
    multi.load(1, read_adapter(dirs[0]))
    multi.set_rows([None] * 4, always=True)  # the LoRA term computed, every row's mask zero
    with torch.no_grad():
        torch.testing.assert_close(model(ids), want[3], rtol=1e-5, atol=1e-5)
    multi.clear(0)
    multi.set_rows([0, 1, 0, 1])
    with torch.no_grad():
        got = model(ids)
    torch.testing.assert_close(got[0::2], want[3][0::2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1::2], want[0][1::2], rtol=1e-4, atol=1e-4)
    multi.load(0, read_adapter(dirs[1]))  # a slot reloaded with a smaller rank: the old columns are gone
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0::2], want[1][0::2], rtol=1e-4, atol=1e-4)


def test_what_does_not_fit_is_refused_before_the_slot_changes(setup, tmp_path):
    base, dirs, ids, want = setup
    model = TransformerLM.from_pretrained(base).eval()
    multi = MultiLoRA(model, max_loras=1, max_rank=4, max_rows=4, targets=["q_proj", "v_proj"])
    assert multi.targets == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    multi.load(0, read_adapter(dirs[0]))
    with pytest.raises(ConfigError, match="rank 8, above this server's max LoRA rank 4; restart with "
                                          "--max-lora-rank 8"):
        multi.load(0, read_adapter(dirs[2]))
    with pytest.raises(ConfigError, match=r"adapts \['model.layers.0.mlp.down_proj'.*not among the layers wrapped"):
        multi.load(0, read_adapter(dirs[1]))
    multi.set_rows([0, 0, 0, 0])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), want[0], rtol=1e-4, atol=1e-4)  # slot 0 still holds adapter 0
    with pytest.raises(ConfigError, match="slot: 1 is not a slot; expected 0 .. 0"):
        multi.set_rows([1])
    with pytest.raises(ShapeError, match="5 rows; this MultiLoRA was built for at most 4"):
        multi.set_rows([0] * 5)
    with pytest.raises(ShapeError, match=r"takes \(B, T, 32\) with B <= 4 rows"):
        model(torch.randint(0, 96, (5, 3)))
    with pytest.raises(ConfigError, match="wrapped for multi-LoRA serving already"):
        MultiLoRA(model)
    with pytest.raises(ConfigError, match="max_rank: must be a positive integer, got 0"):
        MultiLoRA(TransformerLM.from_pretrained(base), max_rank=0)
    with pytest.raises(ConfigError, match="matches no nn.Linear"):
        MultiLoRA(TransformerLM.from_pretrained(base), targets=["lm_head"])


def test_a_wider_models_adapter_is_a_shape_error(setup, tmp_path):
    base, dirs, _, _ = setup
    w = read_adapter(dirs[0])
    name = w.modules[0]
    a, b = w.tensors[name]
    bad = type(w)(w.path, w.r, w.scaling, {**w.tensors, name: (torch.zeros(a.shape[0], 48), b)})
    multi = MultiLoRA(TransformerLM.from_pretrained(base).eval(), max_loras=1, max_rank=8)
    with pytest.raises(ShapeError, match=f"{name} is 48 -> 32, the model's layer 32 -> 32"):
        multi.load(0, bad)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": 8}')
    with pytest.raises(ConfigError, match="has no adapter_model.safetensors"):
        read_adapter(tmp_path)


def test_wrapped_layers_hold_no_state_dict_entries(setup):
    base, *_ = setup
    model = TransformerLM.from_pretrained(base).eval()
    keys = set(model.state_dict())
    MultiLoRA(model, max_loras=2, max_rank=4)
    assert all(isinstance(m, MultiLoRALinear) for n, m in model.named_modules() if n.endswith("q_proj"))
    assert {k.replace(".base_layer", "") for k in model.state_dict()} == keys
