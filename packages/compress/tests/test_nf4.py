"""QLoRA's 4-bit base (``compress.nf4``): NF4Linear computes with the weight bitsandbytes would store (the bytes are
checked against bitsandbytes in tensor's tests), keeps no full-precision weight for backward, and LoRA adapters
train on top of it: a QLoRA model equals LoRA over the dequantized weights, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress import NF4Linear, apply_lora, merge_lora, merged_state_dict, nf4_, quantize_
from compress.lora import LORA, lora_layers
from compress.nf4 import dequantize_
from model.lm import TransformerLM
from specs.config import LoraConfig
from specs.errors import ConfigError
from specs.presets import preset
from tensor.nf4 import dequantize_nf4, quantize_nf4


def _linear(i=96, o=80, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(i, o, bias=bias)


def test_forward_and_backward_use_the_dequantized_weight_and_save_no_copy_of_it():
    lin = _linear()
    layer = NF4Linear(lin)
    w = dequantize_nf4(quantize_nf4(lin.weight.detach()))
    assert torch.equal(layer.dequantized(), w) and (w - lin.weight).abs().max() > 0
    x = torch.randn(3, 5, 96, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = nn.functional.linear(ref_x, w, lin.bias.detach())
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-6, atol=1e-6)
    assert not any(t.is_floating_point() and t.numel() >= w.numel() for t in saved)  # 4-bit bytes, no W
    assert not any(p.requires_grad for p in layer.parameters())


def test_autocast_and_casts_keep_the_scales_in_fp32():
    layer = NF4Linear(_linear(bias=False))
    x = torch.randn(4, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), x.bfloat16().float() @ layer.dequantized(torch.bfloat16).float().T,
                               rtol=1e-2, atol=1e-2)
    before = layer.dequantized()
    layer.to(torch.bfloat16)
    assert layer.dtype == torch.bfloat16 and layer.nf4_absmax_scale.dtype == torch.float32
    assert torch.equal(layer.dequantized().float(), before.bfloat16().float())  # no scale went through bf16
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_a_qlora_model_is_lora_over_the_dequantized_weights():
    torch.manual_seed(0)
    cfg = preset("llama-debug")
    model = TransformerLM(cfg)
    assert nf4_(model) == cfg.n_layers * 7  # every Linear but the LM head
    assert type(model.lm_head) is nn.Linear
    layer = model.model.layers[0].self_attn.o_proj  # the bytes a frozen parameter (FSDP shards it), the rest buffers
    assert isinstance(layer.nf4_data, nn.Parameter) and not layer.nf4_data.requires_grad
    assert {n for n, _ in layer.named_buffers()} == {"nf4_absmax", "nf4_absmax_scale", "nf4_absmax_offset", "nf4_shape"}
    plain = TransformerLM(cfg)
    plain.load_state_dict(merged_state_dict(model))  # the dequantized weights as a plain model
    for m in (model, plain):
        torch.manual_seed(1)
        assert apply_lora(m, r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"]) == 3 * cfg.n_layers
        for layer in lora_layers(m).values():
            nn.init.normal_(layer.lora_B.weight, std=0.1)
    assert isinstance(lora_layers(model)["model.layers.0.self_attn.q_proj"].base_layer, NF4Linear)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, p in plain.named_parameters() if p.requires_grad}
    ids = torch.randint(0, cfg.vocab_size, (2, 17))
    logits_q, logits_p = model(ids), plain(ids)
    torch.testing.assert_close(logits_q, logits_p, rtol=1e-5, atol=1e-5)
    nn.functional.cross_entropy(logits_q.flatten(0, 1), ids.flatten()).backward()
    nn.functional.cross_entropy(logits_p.flatten(0, 1), ids.flatten()).backward()
    for (name, a), (_, b) in zip(lora_layers(model).items(), lora_layers(plain).items()):
        torch.testing.assert_close(a.lora_A.weight.grad, b.lora_A.weight.grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(a.lora_B.weight.grad, b.lora_B.weight.grad, rtol=1e-4, atol=1e-6, msg=name)
    # merged: full-precision Linears with the adapters folded in (the other NF4 layers stay 4-bit until dequantize_)
    merged = merged_state_dict(model)
    assert not any(".nf4_" in k or ".lora_" in k for k in merged)
    fresh = TransformerLM(cfg)
    fresh.load_state_dict(merged)
    torch.testing.assert_close(fresh(ids), logits_p.detach(), rtol=1e-5, atol=1e-5)
    assert merge_lora(model) == 3 * cfg.n_layers  # the merged model trains whole, but for the 4-bit bytes
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"model.layers.{i}.{m}.nf4_data" for i in range(cfg.n_layers)
                      for m in ("self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj")}
    assert dequantize_(model) == 4 * cfg.n_layers
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, (nn.Linear, NF4Linear)))
    torch.testing.assert_close(model(ids), logits_p.detach(), rtol=1e-5, atol=1e-5)


def test_the_plugin_quantizes_for_train_lora_and_saves_a_quarter_of_the_bytes():
    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug"))
    full = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if "layers" in k)
    assert LORA.apply(model, LoraConfig(r=4, targets=("q_proj", "v_proj"), quantize_base="nf4")) == 4
    state = model.state_dict()
    assert any(k.endswith("q_proj.base_layer.nf4_data") for k in state)
    assert any(k.endswith("o_proj.nf4_data") for k in state)  # not adapted, still 4-bit
    four = sum(t.numel() * t.element_size() for k, t in state.items() if "layers" in k and ".lora_" not in k)
    assert four < 0.16 * full  # 4.127 bits of 32, and the norms
    single = TransformerLM(preset("llama-debug"))
    LORA.apply(single, LoraConfig(r=4, quantize_base="nf4", double_quant=False))
    assert single.model.layers[0].mlp.down_proj.nf4_absmax.dtype == torch.float32
    with pytest.raises(ConfigError, match="LoRA adapters already"):
        LORA.apply(model, LoraConfig(r=4, quantize_base="nf4"))
    plain = TransformerLM(preset("llama-debug"))  # refused before anything is quantized
    with pytest.raises(ConfigError, match="matches no nn.Linear"):
        LORA.apply(plain, LoraConfig(r=4, targets=("query",), quantize_base="nf4"))
    assert not any(isinstance(m, NF4Linear) for m in plain.modules())
    assert quantize_(TransformerLM(preset("llama-debug")), "nf4") == 14
    with pytest.raises(ConfigError, match="no nn.Linear layers to quantize to NF4"):
        nf4_(nn.Sequential(nn.Embedding(4, 4)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton dequantization runs on a CUDA device")
def test_on_the_gpu_the_triton_dequantization_computes_as_the_reference():
    """On a GPU NF4Linear dequantizes through the registry's Triton kernel: the same weight bit for bit as the
    reference, and a bf16 QLoRA step whose adapter gradients match the fp32 computation on the same weights."""
    from kernel import nf4 as ref
    from kernel import resolve

    lin = _linear(2048, 640).cuda()
    layer = NF4Linear(lin)
    args = (*layer._tensors(), (640, 2048), torch.bfloat16)
    op = resolve("nf4_dequantize", device=torch.device("cuda"), dtype=torch.bfloat16)
    assert op.__module__ == "kernel.triton.nf4"
    assert torch.equal(layer.dequantized(torch.bfloat16), ref.nf4_dequantize(*args))
    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).cuda()
    nf4_(model)
    apply_lora(model, r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    for layer in lora_layers(model).values():
        nn.init.normal_(layer.lora_B.weight, std=0.1)
    ids = torch.randint(0, 512, (2, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(ids).flatten(0, 1).float(), ids.flatten())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == 2 * 3 * 2 and all(torch.isfinite(g).all() for g in grads.values())
    model.zero_grad()
    loss32 = nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())  # fp32 compute, same weights
    loss32.backward()
    assert abs(float(loss) - float(loss32)) < 0.05
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n].float(), p.grad, rtol=0.1, atol=0.02 * p.grad.abs().max().item())
