"""Hugging Face transformers interop: Llama (and Mistral's sliding window) and GPT-2 configs and weight names.

Llama: our parameter names *are* LlamaForCausalLM's (``model.layers.{i}.self_attn.q_proj.weight``, ...), and
``tensor.rope`` uses its rotate-half layout, so weights map one to one. Config fields follow transformers'
LlamaConfig, both the 4.x spelling (``rope_theta``, ``rope_scaling``) and the 5.x one (``rope_parameters``).
GPT-2: ``transformer.h.{i}.attn.c_attn`` is a Conv1D (``x @ W + b``, W of shape (in, out)) holding q, k and v side
by side; it is split and transposed into our ``q_proj``/``k_proj``/``v_proj`` Linear weights (out, in), and the
other Conv1Ds (``c_proj``, ``mlp.c_fc``, ``mlp.c_proj``) are transposed. Reference: transformers'
modeling_llama.py, modeling_gpt2.py and convert_* scripts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from specs.config import ModelConfig, RopeScaling
from specs.errors import ConfigError

LLAMA_TYPES = ("llama", "mistral")
SUPPORTED = (*LLAMA_TYPES, "gpt2")
_ACT_FROM_HF = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_ACT_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")  # buffers of old transformers saves


def is_hf_config(doc: Mapping[str, Any]) -> bool:
    return "model_type" in doc


def _need(doc: Mapping[str, Any], key: str) -> Any:
    if key not in doc:
        raise ConfigError(f"config.json.{key}", f"missing from a {doc.get('model_type')} config")
    return doc[key]


def _activation(doc: Mapping[str, Any], key: str) -> str:
    act = doc.get(key, "silu")
    if act not in _ACT_FROM_HF:
        raise ConfigError(f"config.json.{key}",
                          f"activation {act!r} is not supported; valid: {', '.join(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[act]


def _rope_from_hf(doc: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    params = dict(doc.get("rope_parameters") or {})  # transformers 5.x
    theta = float(params.get("rope_theta", doc.get("rope_theta", 10000.0)))
    scaling = dict(doc.get("rope_scaling") or {}) or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    original = scaling.get("original_max_position_embeddings", doc.get("max_position_embeddings"))
    if kind == "llama3":
        return theta, RopeScaling(type="llama3", factor=float(scaling["factor"]), original_max_seq_len=original,
                                  low_freq_factor=float(scaling["low_freq_factor"]),
                                  high_freq_factor=float(scaling["high_freq_factor"]))
    if kind == "linear":
        return theta, RopeScaling(type="linear", factor=float(scaling["factor"]))
    if kind == "dynamic":
        return theta, RopeScaling(type="dynamic_ntk", factor=float(scaling["factor"]), original_max_seq_len=original)
    raise ConfigError("config.json.rope_scaling", f"rope type {kind!r} is not supported; valid: default, linear, "
                      "dynamic, llama3")


def config_from_hf(doc: Mapping[str, Any]) -> ModelConfig:
    """A transformers config.json (Llama, Mistral or GPT-2) as a ModelConfig."""
    mtype = doc.get("model_type")
    if mtype in LLAMA_TYPES:
        d_model, n_heads = int(_need(doc, "hidden_size")), int(_need(doc, "num_attention_heads"))
        if doc.get("head_dim") not in (None, d_model // n_heads):
            raise ConfigError("config.json.head_dim", f"{doc['head_dim']} != hidden_size / num_attention_heads = "
                              f"{d_model // n_heads}; decoupled head dims are not supported")
        attn_bias, mlp_bias = bool(doc.get("attention_bias", False)), bool(doc.get("mlp_bias", False))
        if attn_bias != mlp_bias:
            raise ConfigError("config.json.mlp_bias", f"attention_bias={attn_bias} with mlp_bias={mlp_bias}: lmstack "
                              "has one bias flag for every linear layer")
        theta, scaling = _rope_from_hf(doc)
        window = doc.get("sliding_window") if mtype == "mistral" else None
        return ModelConfig(
            d_model=d_model, n_heads=n_heads, n_kv_heads=int(doc.get("num_key_value_heads") or n_heads),
            n_layers=int(_need(doc, "num_hidden_layers")), d_ff=int(_need(doc, "intermediate_size")),
            vocab_size=int(_need(doc, "vocab_size")), max_seq_len=int(doc.get("max_position_embeddings", 2048)),
            norm="rmsnorm", norm_eps=float(doc.get("rms_norm_eps", 1e-6)), mlp="swiglu",
            activation=_activation(doc, "hidden_act"), pos_encoding="rope", rope_theta=theta, rope_scaling=scaling,
            sliding_window=window, tie_embeddings=bool(doc.get("tie_word_embeddings", False)), bias=attn_bias,
            init_std=float(doc.get("initializer_range", 0.02)))
    if mtype == "gpt2":
        if doc.get("scale_attn_by_inverse_layer_idx") or doc.get("scale_attn_weights") is False:
            raise ConfigError("config.json.scale_attn_weights", "only GPT-2's default 1/sqrt(head_dim) attention "
                              "scaling is supported")
        d_model = int(_need(doc, "n_embd"))
        return ModelConfig(
            d_model=d_model, n_heads=int(_need(doc, "n_head")), n_layers=int(_need(doc, "n_layer")),
            d_ff=int(doc.get("n_inner") or 4 * d_model), vocab_size=int(_need(doc, "vocab_size")),
            max_seq_len=int(doc.get("n_positions", 1024)), norm="layernorm",
            norm_eps=float(doc.get("layer_norm_epsilon", 1e-5)), mlp="mlp",
            activation=_activation(doc, "activation_function"), pos_encoding="learned",
            tie_embeddings=bool(doc.get("tie_word_embeddings", True)), bias=True,
            dropout=float(doc.get("resid_pdrop", 0.0)), init_std=float(doc.get("initializer_range", 0.02)))
    raise ConfigError("config.json.model_type", f"model_type {mtype!r} is not supported; valid: {', '.join(SUPPORTED)}")


def hf_family(cfg: ModelConfig) -> str:
    """'llama', 'mistral' or 'gpt2': the transformers architecture that computes exactly what ``cfg`` does."""
    common = [("causal", True), ("norm_position", "pre")]
    llama = [("norm", "rmsnorm"), ("mlp", "swiglu"), ("pos_encoding", "rope")]
    gpt2 = [("norm", "layernorm"), ("mlp", "mlp"), ("pos_encoding", "learned"), ("bias", True),
            ("sliding_window", None), ("n_heads", cfg.kv_heads)]
    misses = {}
    for family, rules in (("llama", llama), ("gpt2", gpt2)):
        bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in common + rules if getattr(cfg, k) != v]
        if not bad:
            return "mistral" if family == "llama" and cfg.sliding_window is not None else family
        misses[family] = bad
    raise ConfigError("format", "this model cannot be written as a Hugging Face checkpoint: as Llama, "
                      f"{'; '.join(misses['llama'])}; as GPT-2, {'; '.join(misses['gpt2'])}")


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The transformers config.json for ``cfg`` (see :func:`hf_family`)."""
    family = hf_family(cfg)
    dtype_name = str(dtype).removeprefix("torch.")
    if family == "gpt2":
        act = {"gelu_tanh": "gelu_new"}.get(cfg.activation, cfg.activation)
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": cfg.d_model,
                "n_head": cfg.n_heads, "n_layer": cfg.n_layers, "n_inner": cfg.d_ff, "n_positions": cfg.max_seq_len,
                "vocab_size": cfg.vocab_size, "layer_norm_epsilon": cfg.norm_eps, "activation_function": act,
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": 0.0,
                "tie_word_embeddings": cfg.tie_embeddings, "scale_attn_weights": True,
                "initializer_range": cfg.init_std, "torch_dtype": dtype_name}
    s = cfg.rope_scaling
    scaling = None
    if s is not None:
        scaling = {"rope_type": {"dynamic_ntk": "dynamic"}.get(s.type, s.type), "factor": s.factor}
        if s.type == "llama3":
            scaling.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor)
        if s.original_max_seq_len is not None:
            scaling["original_max_position_embeddings"] = s.original_max_seq_len
    doc = {"architectures": ["MistralForCausalLM" if family == "mistral" else "LlamaForCausalLM"],
           "model_type": family, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
           "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads, "num_hidden_layers": cfg.n_layers,
           "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_seq_len,
           "rms_norm_eps": cfg.norm_eps, "hidden_act": _ACT_TO_HF[cfg.activation], "rope_theta": cfg.rope_theta,
           "rope_scaling": scaling, "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": cfg.bias,
           "mlp_bias": cfg.bias, "attention_dropout": 0.0, "initializer_range": cfg.init_std,
           "torch_dtype": dtype_name}
    if family == "mistral":
        doc["sliding_window"] = cfg.sliding_window
    return doc


def _strip_ignored(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}


def state_from_hf(cfg: ModelConfig, model_type: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers tensor names (and layouts) -> TransformerLM's."""
    state = _strip_ignored(state)
    if model_type in LLAMA_TYPES:
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    D = cfg.d_model
    for key, t in state.items():
        k = key.removeprefix("transformer.")
        if k == "lm_head.weight":
            out[k] = t
        elif k in _GPT2_EMBED:
            out[_GPT2_EMBED[k]] = t
        elif k.startswith("ln_f."):
            out[f"model.norm.{k[5:]}"] = t
        elif k.startswith("h."):
            _, i, rest = k.split(".", 2)
            p = f"model.layers.{i}."
            if rest.startswith("attn.c_attn."):
                leaf = rest.rsplit(".", 1)[1]
                parts = (t.T if leaf == "weight" else t).split(D, dim=0)
                for name, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                    out[f"{p}self_attn.{name}.{leaf}"] = part.contiguous()
            else:
                new, transpose = _GPT2_LAYER[rest.rsplit(".", 1)[0]]
                leaf = rest.rsplit(".", 1)[1]
                out[f"{p}{new}.{leaf}"] = t.T.contiguous() if transpose and leaf == "weight" else t
        else:
            out[key] = t  # unknown: reported as unexpected by the loader
    return out


_GPT2_EMBED = {"wte.weight": "model.embed_tokens.weight", "wpe.weight": "model.embed_positions.weight"}
# GPT-2 layer submodule -> (ours, Conv1D weight that needs a transpose)
_GPT2_LAYER = {"ln_1": ("input_layernorm", False), "ln_2": ("post_attention_layernorm", False),
               "attn.c_proj": ("self_attn.o_proj", True), "mlp.c_fc": ("mlp.up_proj", True),
               "mlp.c_proj": ("mlp.down_proj", True)}


def state_to_hf(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TransformerLM tensor names -> transformers' (inverse of :func:`state_from_hf`)."""
    if hf_family(cfg) in LLAMA_TYPES:
        return dict(state)
    inverse = {v[0]: (k, v[1]) for k, v in _GPT2_LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key == "lm_head.weight":
            out[key] = t
        elif key in _GPT2_EMBED.values():
            out["transformer." + next(k for k, v in _GPT2_EMBED.items() if v == key)] = t
        elif key.startswith("model.norm."):
            out[f"transformer.ln_f.{key.rsplit('.', 1)[1]}"] = t
        else:
            _, _, i, rest = key.split(".", 3)
            module, leaf = rest.rsplit(".", 1)
            p = f"transformer.h.{i}."
            if module == "self_attn.q_proj":
                qkv = [state[f"model.layers.{i}.self_attn.{n}_proj.{leaf}"] for n in "qkv"]
                out[f"{p}attn.c_attn.{leaf}"] = torch.cat(qkv, 0).T.contiguous() if leaf == "weight" else torch.cat(qkv)
            elif module in ("self_attn.k_proj", "self_attn.v_proj"):
                continue
            else:
                hf, transpose = inverse[module]
                out[f"{p}{hf}.{leaf}"] = t.T.contiguous() if transpose and leaf == "weight" else t
    return out
