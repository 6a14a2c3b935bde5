"""The fixed-shape cache: cached decode equals full recomputation, and a decode step traces as one graph that
never recompiles as the sequence grows (what CUDA-graph capture needs)."""

import pytest
import torch

from model.lm import TransformerLM
from specs.presets import preset


def _greedy_with(model, prompt, steps, cache):
    logits = model(prompt, cache=cache)
    out = [logits[:, -1]]
    tok = logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(steps):
        logits = model(tok, cache=cache)
        out.append(logits[:, -1])
        tok = logits[:, -1].argmax(-1, keepdim=True)
    return torch.stack(out, 1)


@pytest.mark.parametrize("name", ["llama-debug", "gpt2-debug"])
def test_fixed_cache_decode_equals_static_and_full(name):
    torch.manual_seed(0)
    model = TransformerLM(preset(name)).eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        fixed = _greedy_with(model, prompt, 5, model.new_cache(2, 32, kind="fixed"))
        static = _greedy_with(model, prompt, 5, model.new_cache(2, 32, kind="static"))
        torch.testing.assert_close(fixed, static, rtol=1e-5, atol=1e-5)
        # the last step's logits equal a full forward over the whole sequence
        seq = torch.cat([prompt, fixed[:, :-1].argmax(-1)], 1)
        full = model(seq)[:, -1]
        torch.testing.assert_close(fixed[:, -1], full, rtol=1e-4, atol=1e-4)


def test_fixed_cache_reports_device_lengths_and_evicts():
    model = TransformerLM(preset("llama-debug"))
    cache = model.new_cache(3, 16, kind="fixed")
    with torch.no_grad():
        model(torch.zeros(3, 4, dtype=torch.long), cache=cache)
    assert cache.seq_lens.tolist() == [4, 4, 4]
    cache.evict([1])
    assert cache.seq_lens.tolist() == [4, 0, 4]
    k, _ = cache.read(0)
    assert k.shape == (3, model.config.kv_heads, 16, model.config.head_dim)


def test_decode_step_is_one_graph_without_recompiles():
    torch._dynamo.reset()
    model = TransformerLM(preset("llama-debug")).eval()
    cache = model.new_cache(1, 32, kind="fixed")
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)  # prefill (and first kernel lookups) eagerly
        step = torch.compile(lambda tok: model(tok, cache=cache), backend="eager", fullgraph=True, dynamic=False)
        tok = torch.ones(1, 1, dtype=torch.long)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(4):
                tok = step(tok)[:, -1].argmax(-1, keepdim=True)
    assert cache.seq_lens.tolist() == [9]


def test_fixed_cache_rejects_bad_sizes_and_layers():
    from attn.cache import FixedKVCache
    from specs.errors import ConfigError

    with pytest.raises(ConfigError, match="cache.head_dim"):
        FixedKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=0, max_seq_len=4)
    cache = FixedKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=2, max_seq_len=4)
    with pytest.raises(ConfigError, match="layer 1 out of range"):
        cache.append(1, torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
