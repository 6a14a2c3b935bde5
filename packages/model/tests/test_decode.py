"""Cached decode equals full recomputation, for every cache kind and attention variant.

Variants: MHA, GQA, MQA, sliding window, ALiBi, learned positions, no positions, llama3-scaled RoPE, post-norm.
Cases: prefill + chunked + single-token decode (also for the fixed-shape cache); batched rows with left padding
(attn_mask); paged rows of different lengths decoding together; prefix-cache hits; packed documents
(document_ids) equal separate forwards.
"""

from __future__ import annotations

import pytest
import torch

from model.lm import TransformerLM
from specs.config import RopeScaling
from specs.presets import preset

VARIANTS = {
    "mha": preset("llama-debug", n_kv_heads=None),
    "gqa": preset("llama-debug"),
    "mqa": preset("llama-debug", n_kv_heads=1),
    "window": preset("llama-debug", sliding_window=5),
    "alibi": preset("llama-debug", pos_encoding="alibi"),
    "learned": preset("gpt2-debug"),
    "nope": preset("llama-debug", pos_encoding="none"),
    "llama3": preset("llama-debug", rope_scaling=RopeScaling(type="llama3", factor=8.0, original_max_seq_len=16)),
    "postnorm": preset("gpt2-debug", norm_position="post", sliding_window=4),
}
KINDS = ("static", "paged")
ATOL = 2e-5


@pytest.fixture(scope="module", params=list(VARIANTS))
def lm(request) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(VARIANTS[request.param]).eval()


def ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 512, (B, T), generator=torch.Generator().manual_seed(seed))


def new_cache(lm: TransformerLM, kind: str, B: int):
    return lm.new_cache(B, 64, kind=kind, block_size=4)


@pytest.mark.parametrize("kind", [*KINDS, "fixed"])
@torch.no_grad()
def test_prefill_chunks_and_steps_equal_full_forward(lm, kind):
    x = ids(2, 14)
    full = lm(x)
    cache = new_cache(lm, kind, 2)
    got = [lm(x[:, :6], cache=cache), lm(x[:, 6:9], cache=cache)]
    got += [lm(x[:, t:t + 1], cache=cache) for t in range(9, 14)]
    assert cache.seq_lens.tolist() == [14, 14]
    torch.testing.assert_close(torch.cat(got, 1), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_left_padded_batch_matches_each_row_alone(lm, kind):
    real = [ids(1, 9, seed=1)[0], ids(1, 5, seed=2)[0]]
    n_new, T = 3, 9
    x = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, r in enumerate(real):
        x[b, T - len(r):] = r
        mask[b, T - len(r):] = 1
    nxt = ids(2, n_new, seed=3)
    # Padded full forward: every real position equals the row computed alone.
    full = lm(x, attn_mask=mask)
    for b, r in enumerate(real):
        torch.testing.assert_close(full[b, T - len(r):], lm(r[None])[0], atol=ATOL, rtol=0)
    # Cached: prefill with padding, then decode the next tokens with the mask extended by one each step.
    cache = new_cache(lm, kind, 2)
    steps = [lm(x, cache=cache, attn_mask=mask)[:, -1:]]
    for t in range(n_new):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        steps.append(lm(nxt[:, t:t + 1], cache=cache, attn_mask=mask))
    got = torch.cat(steps, 1)
    for b, r in enumerate(real):
        alone = lm(torch.cat([r, nxt[b]])[None])[0, len(r) - 1:]
        torch.testing.assert_close(got[b], alone, atol=ATOL, rtol=0)


@torch.no_grad()
def test_paged_rows_of_different_lengths_decode_together(lm):
    cache = lm.new_cache(0, 64, kind="paged", block_size=4, num_blocks=32)
    prompts = {"a": ids(1, 9, seed=4)[0], "b": ids(1, 3, seed=5)[0], "c": ids(1, 6, seed=6)[0]}
    for sid, p in prompts.items():
        cache.add_sequence(sid, p.tolist())
        cache.set_active([sid])
        lm(p[None], cache=cache)
    order = ["b", "c", "a"]
    nxt = ids(3, 4, seed=7)
    outs = []
    for t in range(4):
        for s in order:
            cache.reserve(s, 1)
        cache.set_active(order)
        outs.append(lm(nxt[:, t:t + 1], cache=cache))
    got = torch.cat(outs, 1)  # (3, 4, V)
    assert cache.seq_lens.tolist() == [3 + 4, 6 + 4, 9 + 4]
    for row, s in enumerate(order):
        full = lm(torch.cat([prompts[s], nxt[row]])[None])[0, len(prompts[s]):]
        torch.testing.assert_close(got[row], full, atol=ATOL, rtol=0)


@torch.no_grad()
def test_prefix_cache_hit_gives_the_same_logits(lm):
    cache = lm.new_cache(0, 64, kind="paged", block_size=4, num_blocks=32)
    shared = ids(1, 10, seed=8)[0]
    cache.add_sequence("first", shared.tolist())
    cache.set_active(["first"])
    lm(shared[None], cache=cache)
    prompt = torch.cat([shared[:9], ids(1, 3, seed=9)[0]])
    n_hit = cache.add_sequence("second", prompt.tolist())
    assert n_hit == 8
    cache.reserve("second", len(prompt) - n_hit)
    cache.set_active(["second"])
    got = lm(prompt[None, n_hit:], cache=cache)
    torch.testing.assert_close(got[0], lm(prompt[None])[0, n_hit:], atol=ATOL, rtol=0)
    assert cache.block_table("second")[:2] == cache.block_table("first")[:2]


@torch.no_grad()
def test_packed_documents_equal_separate_forwards(lm):
    docs = [ids(1, 5, seed=10)[0], ids(1, 7, seed=11)[0], ids(1, 4, seed=12)[0]]
    x = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    got = lm(x, positions=positions, document_ids=doc_ids)
    torch.testing.assert_close(got[0], torch.cat([lm(d[None])[0] for d in docs]), atol=ATOL, rtol=0)
