"""TransformerLM's public API: forward shapes, loss, caches, parameter counts, init, plugins and the Protocol."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attn.cache import PagedKVCache, StaticKVCache
from model.encoder import TransformerEncoder
from model.lm import TransformerLM
from specs import plugins
from specs.errors import CacheFullError, ConfigError, PluginError, ShapeError
from specs.presets import preset
from specs.protocols import LanguageModel
from specs.protocols import PagedKVCache as PagedProtocol


@pytest.fixture(scope="module")
def lm() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(preset("llama-debug"))


def test_forward_shape_and_protocol(lm):
    assert isinstance(lm, LanguageModel)
    logits = lm(torch.randint(0, 512, (3, 7)))
    assert logits.shape == (3, 7, 512) and logits.dtype == torch.float32


def test_logits_to_keep_gives_those_positions_logits_only(lm):
    """logits_to_keep (transformers' argument): the last n positions, or given positions, of the full logits;
    with a cache the keys and values of every token are still written (the next step is the same), and the
    folded-norm head too. Bad values name the argument and what it takes."""
    x = torch.randint(0, 512, (2, 9))
    full = lm(x)
    for n in (1, 4, 9, 20):
        torch.testing.assert_close(lm(x, logits_to_keep=n), full[:, -n:])
    assert torch.equal(lm(x, logits_to_keep=0), full)
    pos = torch.tensor([0, 3, -1])
    torch.testing.assert_close(lm(x, logits_to_keep=pos), full[:, [0, 3, 8]])
    import numpy as np
    torch.testing.assert_close(lm(x, logits_to_keep=np.int64(2)), full[:, -2:])
    nxt = torch.randint(0, 512, (2, 1))
    c_full, c_last = lm.new_cache(2, 16), lm.new_cache(2, 16)
    lm(x, cache=c_full)
    assert lm(x, cache=c_last, logits_to_keep=1).shape == (2, 1, 512)
    torch.testing.assert_close(lm(nxt, cache=c_last), lm(nxt, cache=c_full))
    folded = TransformerLM(lm.config)
    folded.load_state_dict(lm.state_dict())
    folded.fold_norms()
    torch.testing.assert_close(folded(x, logits_to_keep=2), full[:, -2:], rtol=1e-5, atol=1e-5)
    for bad, what in [(-1, "-1"), (True, "True"), (1.0, "1.0"), ("1", "'1'")]:
        with pytest.raises(ConfigError, match=rf"logits_to_keep.*expected 0 .*got {what}"):
            lm(x, logits_to_keep=bad)
    with pytest.raises(ConfigError, match=r"logits_to_keep.*1-D integer, got shape \(1, 2\) torch.int64"):
        lm(x, logits_to_keep=torch.tensor([[0, 1]]))
    with pytest.raises(ConfigError, match=r"logits_to_keep.*1-D integer, got shape \(2,\) torch.float32"):
        lm(x, logits_to_keep=torch.tensor([0.0, 1.0]))
    with pytest.raises(ConfigError, match=r"logits_to_keep.*\[-9, 9\) for 9 input tokens, got 0..9"):
        lm(x, logits_to_keep=torch.tensor([0, 9]))


def test_loss_equals_cross_entropy_of_logits_with_ignored_labels(lm):
    x = torch.randint(0, 512, (2, 10))
    labels = torch.randint(0, 512, (2, 10))
    labels[0, :4] = -100
    got = lm.loss(x, labels)
    got.backward()
    g_fused = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    want = F.cross_entropy(lm(x).reshape(-1, 512), labels.reshape(-1), ignore_index=-100)
    want.backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for n, p in lm.named_parameters():
        torch.testing.assert_close(g_fused[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    lm.zero_grad()


def test_untrained_loss_is_near_log_vocab(lm):
    x = torch.randint(0, 512, (4, 32))
    assert abs(lm.loss(x, x).item() - math.log(512)) < 0.5


def test_labels_shape_is_checked(lm):
    with pytest.raises(ShapeError, match="labels"):
        lm.loss(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


def test_bad_input_shapes_name_the_argument(lm):
    with pytest.raises(ShapeError, match="input_ids"):
        lm(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ShapeError, match="attn_mask"):
        lm(torch.zeros(2, 5, dtype=torch.long), attn_mask=torch.ones(2, 4))
    cache = lm.new_cache(2, 16)
    with pytest.raises(ShapeError, match="2 active rows"):
        lm(torch.zeros(3, 1, dtype=torch.long), cache=cache)
    doc_ids = torch.zeros(2, 1, dtype=torch.long)
    lm(torch.zeros(2, 1, dtype=torch.long), cache=cache, document_ids=doc_ids)  # an empty cache takes documents
    with pytest.raises(ConfigError, match="document_ids"):
        lm(torch.zeros(2, 1, dtype=torch.long), cache=cache, document_ids=doc_ids)


def test_new_cache_kinds(lm):
    static = lm.new_cache(2, 32)
    assert isinstance(static, StaticKVCache) and static.k_cache[0].shape == (2, 2, 32, 16)
    paged = lm.new_cache(0, kind="paged", block_size=8, num_blocks=5)
    assert isinstance(paged, PagedProtocol) and paged.num_free_blocks() == 5 and paged.block_size == 8
    sized = lm.new_cache(3, 64, kind="paged", block_size=16)
    assert isinstance(sized, PagedKVCache) and sized.num_blocks == 12 and sized.seq_lens.tolist() == [0, 0, 0]
    with pytest.raises(ConfigError, match="valid: static, paged"):
        lm.new_cache(1, kind="ring")
    with pytest.raises(ConfigError, match="num_blocks"):
        lm.new_cache(0, kind="paged")


def test_cache_overflow_is_cache_full(lm):
    cache = lm.new_cache(1, 8)
    lm(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    with pytest.raises(CacheFullError):
        lm(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def test_learned_positions_stop_at_max_seq_len():
    gpt = TransformerLM(preset("gpt2-debug", max_seq_len=8))
    with pytest.raises(ShapeError, match="max_seq_len=8"):
        gpt(torch.zeros(1, 9, dtype=torch.long))


def test_num_params(lm):
    cfg = lm.config
    D, F_, V, L, KVD = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers, cfg.kv_heads * cfg.head_dim
    per_layer = 2 * D * D + 2 * D * KVD + 3 * D * F_ + 2 * D
    assert lm.num_params() == V * D + L * per_layer + D + V * D
    assert lm.num_params(exclude_embeddings=True) == L * per_layer + D + V * D
    tied = TransformerLM(preset("gpt2-debug"))
    assert tied.num_params() == sum(p.numel() for p in tied.parameters())  # tied head counted once
    assert tied.num_params() - tied.num_params(exclude_embeddings=True) == (512 + 256) * 64


def test_init_follows_the_config():
    torch.manual_seed(0)
    lm = TransformerLM(preset("llama-debug", n_layers=4, d_model=128, d_ff=256))
    assert abs(lm.model.embed_tokens.weight.std().item() - 0.02) < 0.002
    assert abs(lm.model.layers[0].self_attn.o_proj.weight.std().item() - 0.02 / math.sqrt(8)) < 0.001
    assert torch.equal(lm.model.norm.weight, torch.ones(128))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    lm = TransformerLM(preset("llama-debug", dropout=0.5))
    x = torch.randint(0, 512, (1, 6))
    lm.train()
    assert not torch.equal(lm(x), lm(x))
    lm.eval()
    assert torch.equal(lm(x), lm(x))


def test_plugin_entry_points_build_the_models():
    plugins.cache_clear()
    assert plugins.resolve("lmstack.models", "transformer") is TransformerLM
    assert plugins.resolve("lmstack.models", "encoder") is TransformerEncoder
    cfg = preset("gpt2-debug")
    assert isinstance(plugins.resolve("lmstack.models", cfg.arch)(cfg), TransformerLM)


def test_attention_implementations_agree():
    torch.manual_seed(0)
    x = torch.randint(0, 512, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0
    outs = {}
    for impl in ("reference", "sdpa"):
        torch.manual_seed(0)
        lm = TransformerLM(preset("llama-debug", attn_impl=impl)).eval()
        outs[impl] = lm(x, attn_mask=mask)
    torch.testing.assert_close(outs["reference"], outs["sdpa"], atol=1e-5, rtol=0)
    with pytest.raises(PluginError, match="unknown attention implementation 'flsh'.*valid names"):
        TransformerLM(preset("llama-debug", attn_impl="flsh"))(x)


def test_loss_impl_picks_the_lm_head_kernel_and_all_agree():
    torch.manual_seed(0)
    ids = torch.randint(0, 512, (2, 12))
    losses = []
    for impl in ("auto", "reference", "logits"):
        torch.manual_seed(0)
        m = TransformerLM(preset("llama-debug", loss_impl=impl))
        losses.append(m.loss(ids, ids))
    for other in losses[1:]:
        torch.testing.assert_close(other, losses[0], rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    with pytest.raises(PluginError, match="logits"):
        TransformerLM(preset("llama-debug", loss_impl="nope")).loss(ids, ids)


def test_causal_false_is_refused_and_points_at_the_encoder(tmp_path):
    cfg = preset("gpt2-debug", causal=False)
    with pytest.raises(ConfigError, match="model.causal: TransformerLM is a causal .* causal=False; .* "
                                          r"model.encoder.TransformerEncoder \(arch='encoder'\)"):
        TransformerLM(cfg)
    TransformerEncoder(cfg).save_pretrained(tmp_path)  # tied gpt2 head: its tensors would have loaded silently
    with pytest.raises(ConfigError, match="model.encoder.TransformerEncoder"):
        TransformerLM.from_pretrained(tmp_path)


def test_token_ids_and_labels_out_of_range(lm):
    for bad in (512, -1):
        with pytest.raises(ShapeError, match=rf"input_ids: token id {bad} is out of range; expected ids in "
                                             r"\[0, 512\) for vocab_size=512"):
            lm(torch.tensor([[1, bad]]))
    with pytest.raises(ShapeError, match="input_ids: dtype float32 not allowed; expected one of int64, int32"):
        lm(torch.tensor([[1.0, 2.0]]))
    ids = torch.tensor([[1, 2, 3]])
    for bad, others in ((512, -100), (-1, -100), (-1, 5), (-7, 5)):
        with pytest.raises(ShapeError, match=rf"labels: token id {bad} is out of range; expected ids in \[0, 512\) "
                                             r"or -100 \(ignored\)"):
            lm.loss(ids, torch.tensor([[others, bad, 3]]))
    assert torch.isfinite(lm.loss(ids, torch.tensor([[-100, 511, 0]])))


def test_token_id_check_is_skipped_while_compiling(monkeypatch):
    """No host sync: a traced or compiled graph (and a GPU tensor) is not read back for the range check."""
    from model.stack import check_token_ids

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    check_token_ids(torch.tensor([[512]]), "input_ids", 512)
    monkeypatch.undo()
    with pytest.raises(ShapeError):
        check_token_ids(torch.tensor([[512]]), "input_ids", 512)
    check_token_ids(torch.tensor([[512]], device="meta"), "input_ids", 512)
