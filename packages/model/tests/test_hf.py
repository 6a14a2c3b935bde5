"""Hugging Face interop both ways, checked against transformers itself (random weights from small configs).

HF -> lmstack: transformers' save_pretrained directories (single file and sharded) load into TransformerLM and give
the same fp32 logits (1e-4) for prefill and for cached decode steps (static and paged caches) as transformers' own
cached decode. lmstack -> HF: save_pretrained(format="hf") directories load in transformers with equal logits.
"""

from __future__ import annotations

import inspect
import json
import warnings

import pytest
import torch

from model.lm import TransformerLM
from specs.config import RopeScaling
from specs.errors import ConfigError
from specs.presets import preset

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore", module="transformers")
ATOL = 1e-4
SMALL = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96, vocab_size=256,
             max_position_embeddings=128)


def llama(**kw) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**{**SMALL, **kw}))


HF_MODELS = {
    "llama-gqa-llama3": lambda: llama(num_key_value_heads=2, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "llama-mqa-tied": lambda: llama(num_key_value_heads=1, tie_word_embeddings=True),
    "mistral-window": lambda: MistralForCausalLM(MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=6)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=64, n_head=4, n_layer=2, vocab_size=256, n_positions=128,
                                               bos_token_id=0, eos_token_id=0)),
}


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(HF_MODELS))
def pair(request, tmp_path_factory):
    """(transformers model, TransformerLM loaded from its save_pretrained directory)."""
    torch.manual_seed(0)
    hf = HF_MODELS[request.param]().eval()
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    return hf, TransformerLM.from_pretrained(d).eval()


@torch.no_grad()
def hf_decode(hf, x: torch.Tensor, prefill: int) -> torch.Tensor:
    """transformers' own cached decode (its KV cache argument is ``cache`` from 5.x, ``past_key_values`` before)."""
    key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    out = hf(x[:, :prefill], use_cache=True)
    logits = [out.logits]
    for t in range(prefill, x.shape[1]):
        out = hf(x[:, t:t + 1], use_cache=True, **{key: getattr(out, key)})
        logits.append(out.logits)
    return torch.cat(logits, 1)


@torch.no_grad()
def test_prefill_logits_match(pair):
    hf, lm = pair
    x = tokens(2, 40)
    torch.testing.assert_close(lm(x), hf(x).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["static", "paged"])
@torch.no_grad()
def test_cached_decode_matches_transformers_cached_decode(pair, kind):
    hf, lm = pair
    x = tokens(2, 30, seed=1)
    want = hf_decode(hf, x, prefill=20)
    cache = lm.new_cache(2, 64, kind=kind, block_size=8)
    got = [lm(x[:, :20], cache=cache)] + [lm(x[:, t:t + 1], cache=cache) for t in range(20, 30)]
    torch.testing.assert_close(torch.cat(got, 1), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["static", "paged"])
@torch.no_grad()
def test_left_padded_batch_decode_matches_transformers(pair, kind):
    """Batched generation with left padding: transformers given generate()'s position ids and masks."""
    hf, lm = pair
    x = tokens(2, 12, seed=4)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0
    nxt = tokens(2, 3, seed=5)
    key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    pos = lambda m: (m.cumsum(-1) - 1).masked_fill(m == 0, 1)
    out = hf(x, attention_mask=mask, position_ids=pos(mask), use_cache=True)
    want = [out.logits[:, -1:]]
    cache = lm.new_cache(2, 64, kind=kind, block_size=8)
    got = [lm(x, cache=cache, attn_mask=mask)[:, -1:]]
    for t in range(3):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        out = hf(nxt[:, t:t + 1], attention_mask=mask, position_ids=pos(mask)[:, -1:], use_cache=True,
                 **{key: getattr(out, key)})
        want.append(out.logits)
        got.append(lm(nxt[:, t:t + 1], cache=cache, attn_mask=mask))
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), atol=ATOL, rtol=0)


def test_llama3_scaling_and_gqa_are_read(tmp_path):
    hf = HF_MODELS["llama-gqa-llama3"]()
    hf.save_pretrained(tmp_path)
    cfg = TransformerLM.from_pretrained(tmp_path).config
    assert cfg.kv_heads == 2 and cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == RopeScaling(type="llama3", factor=8.0, original_max_seq_len=16, low_freq_factor=1.0,
                                           high_freq_factor=4.0)


@torch.no_grad()
def test_sharded_transformers_directory_loads(tmp_path):
    torch.manual_seed(1)
    hf = HF_MODELS["llama-gqa-llama3"]().eval()
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    x = tokens(1, 12, seed=2)
    torch.testing.assert_close(TransformerLM.from_pretrained(tmp_path)(x), hf(x).logits, atol=ATOL, rtol=0)


EXPORTABLE = {
    "llama-debug": preset("llama-debug", vocab_size=256),
    "llama-tied-llama3": preset("llama-debug", vocab_size=256, tie_embeddings=True, rope_theta=500000.0,
                                rope_scaling=RopeScaling(type="llama3", factor=8.0, original_max_seq_len=16)),
    "llama-window": preset("llama-debug", vocab_size=256, sliding_window=5),
    "gpt2-debug": preset("gpt2-debug", vocab_size=256),
    "gpt2-untied": preset("gpt2-debug", vocab_size=256, tie_embeddings=False),
}


@pytest.mark.parametrize("name", list(EXPORTABLE))
@torch.no_grad()
def test_save_hf_loads_in_transformers(name, tmp_path):
    torch.manual_seed(2)
    lm = TransformerLM(EXPORTABLE[name]).eval()
    lm.save_pretrained(tmp_path, format="hf", max_shard_size="60KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = tokens(2, 24, seed=3)
    torch.testing.assert_close(hf(x).logits, lm(x), atol=ATOL, rtol=0)
    torch.testing.assert_close(hf_decode(hf, x, prefill=16), lm(x), atol=ATOL, rtol=0)
    again = TransformerLM.from_pretrained(tmp_path)  # and back: our own HF directory reads too
    assert again.config.replace(dropout=0.0) == lm.config.replace(dropout=0.0, max_seq_len=again.config.max_seq_len)


def test_hf_config_spelling(tmp_path):
    lm = TransformerLM(EXPORTABLE["llama-tied-llama3"])
    lm.save_pretrained(tmp_path, format="hf")
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["model_type"] == "llama" and doc["architectures"] == ["LlamaForCausalLM"]
    assert doc["rope_scaling"]["rope_type"] == "llama3" and doc["tie_word_embeddings"] is True
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).config
    rope = getattr(loaded, "rope_parameters", None) or loaded.rope_scaling
    assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0


def test_configs_transformers_cannot_express_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="as Llama, .*pos_encoding='alibi'"):
        TransformerLM(preset("llama-debug", pos_encoding="alibi")).save_pretrained(tmp_path, format="hf")
    assert not tmp_path.joinpath("config.json").exists()


def test_unsupported_transformers_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ConfigError, match="model_type 'bert' is not supported; valid: llama, mistral, gpt2"):
        TransformerLM.from_pretrained(tmp_path)


def test_a_bitsandbytes_4bit_checkpoint_loads_dequantized(tmp_path):
    """A Hugging Face directory saved with bitsandbytes' 4-bit NF4 (a "-bnb-4bit" repository: packed weights,
    absmaxes, quant maps and the JSON quant state; double quantization) loads into TransformerLM with the weights
    bitsandbytes dequantizes to: transformers' model on those weights gives the same logits."""
    from safetensors.torch import load_file, save_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False, torch_dtype="bfloat16")
    full, quant = tmp_path / "full", tmp_path / "bnb"
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(full)
    state = load_file(str(full / "model.safetensors"))
    packed_state, dequantized = {}, dict(state)
    for k, w in state.items():
        if k.endswith("_proj.weight"):  # every Linear but the head, as load_in_4bit leaves lm_head
            q, qs = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
            packed_state[k] = q
            packed_state.update({f"{k}.{name}": v for name, v in qs.as_dict(packed=True).items()})
            dequantized[k] = bnbf.dequantize_4bit(q, qs)
        else:
            packed_state[k] = w
    quant.mkdir()
    save_file(packed_state, str(quant / "model.safetensors"))
    doc = json.loads((full / "config.json").read_text())
    doc["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                  "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}
    (quant / "config.json").write_text(json.dumps(doc))
    save_file(dequantized, str(full / "model.safetensors"))  # transformers' model on bitsandbytes' weights
    ours = TransformerLM.from_pretrained(quant, dtype=torch.float32).eval()
    theirs = transformers.LlamaForCausalLM.from_pretrained(full, dtype=torch.float32).eval()
    ids = torch.randint(0, 96, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=1e-4, atol=1e-4)
