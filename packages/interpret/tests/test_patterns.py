"""Attention patterns against transformers' own (eager attention, ``output_attentions=True``) on the same weights,
the head scores against their definitions, and the model left as it was."""

from __future__ import annotations

import pytest
import torch

from interpret import attention_patterns, head_scores, induction_scores
from kernel.testing import AttentionConformance
from specs.errors import ConfigError

transformers = pytest.importorskip("transformers")


def _eager(d, cls):
    return cls.from_pretrained(d, attn_implementation="eager").eval()


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_patterns_equal_transformers_eager_attentions(request, ids, name):
    hf, ours, d = request.getfixturevalue(name)
    cls = type(hf)
    with torch.no_grad():
        want = torch.stack(_eager(d, cls)(ids, output_attentions=True).attentions)  # (L, B, H, T, T)
    got = attention_patterns(ours, ids)
    assert got.shape == want.shape == (3, 2, 4, 9, 9)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones_like(got[..., 0]))  # rows are distributions
    assert (got.triu(1) == 0).all()  # causal
    torch.testing.assert_close(attention_patterns(ours, ids, layers=[2, 0]), got[[2, 0]])
    torch.testing.assert_close(attention_patterns(_eager(d, cls), ids, layers=[1]), want[[1]])  # a transformers model


def test_the_model_is_left_as_it_was(llama, ids):
    _, ours, _ = llama
    impls = [layer.self_attn.attn_impl for layer in ours.model.layers]
    before = ours(ids)
    with pytest.raises(ConfigError, match=r"\[3\] are not layers of this model; expected 0 .. 2"):
        attention_patterns(ours, ids, layers=[3])
    with pytest.raises(TypeError):  # the forward itself fails: the layers still get their attention back
        attention_patterns(ours, ids, no_such_argument=1)
    assert [layer.self_attn.attn_impl for layer in ours.model.layers] == impls
    torch.testing.assert_close(ours(ids), before, rtol=0, atol=0)


def test_sdpa_transformers_models_are_refused_with_the_fix(llama, ids):
    hf, _, d = llama
    sdpa = type(hf).from_pretrained(d, attn_implementation="sdpa").eval()
    try:
        attention_patterns(sdpa, ids)
    except ConfigError as exc:
        assert "attn_implementation='eager'" in str(exc)
    else:  # some transformers versions fall back to eager by themselves: then the weights must be the right ones
        torch.testing.assert_close(attention_patterns(sdpa, ids), attention_patterns(_eager(d, type(hf)), ids))


def test_head_scores_follow_their_definitions():
    T = 4
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1  # a perfect previous-token head
    first = torch.zeros(T, T)
    first[:, 0] = 1  # an attention sink
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    pat = torch.stack([prev, first, uniform])[None, None]  # (L=1, B=1, H=3, T, T)
    s = head_scores(pat)  # means over the queries t = 1 .. 3
    third = (1 / 2 + 1 / 3 + 1 / 4) / 3
    torch.testing.assert_close(s["previous_token"][0], torch.tensor([1.0, 1 / 3, third]))
    torch.testing.assert_close(s["first_token"][0], torch.tensor([1 / 3, 1.0, third]))
    torch.testing.assert_close(s["self"][0], torch.tensor([0.0, 0.0, third]))
    want_entropy = sum(torch.log(torch.tensor(float(n))) for n in range(2, T + 1)) / (T - 1)
    torch.testing.assert_close(s["entropy"][0], torch.tensor([0.0, 0.0, float(want_entropy)]), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match=r"expected \(L, B, H, T, T\)"):
        head_scores(pat[0])


def test_induction_scores_read_the_repeated_sequence(llama):
    _, ours, _ = llama
    scores = induction_scores(ours, 300, seq_len=6, batch=2, seed=3, bos=1)
    g = torch.Generator().manual_seed(3)
    r = torch.randint(1, 300, (2, 6), generator=g)
    ids = torch.cat([torch.ones(2, 1, dtype=torch.long), r, r], 1)
    pat = attention_patterns(ours, ids)
    want = torch.stack([pat[..., t, t - 5].mean(1) for t in range(7, 13)], -1).mean(-1)  # (L, H)
    torch.testing.assert_close(scores, want)
    assert scores.shape == (3, 4) and (scores >= 0).all() and (scores <= 1).all()


def test_cli_heads(llama, capsys):
    import json

    from data.tokenizer.loading import load_tokenizer
    from interpret.__main__ import main

    _, ours, d = llama
    text = "the quick brown fox jumps over the lazy dog"
    assert main(["heads", "--model", str(d), "--text", text, "--induction-len", "6", "--batch", "2", "--top", "2",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    tok = load_tokenizer(str(d))
    want = head_scores(attention_patterns(ours, torch.tensor([tok.encode(text)])))
    for name, t in want.items():
        torch.testing.assert_close(torch.tensor(doc[name]["scores"]), t)
        best = max(((i, j) for i in range(3) for j in range(4)), key=lambda c: t[c].item())
        if name != "entropy":
            assert (doc[name]["top"][0]["layer"], doc[name]["top"][0]["head"]) == best
    torch.testing.assert_close(torch.tensor(doc["induction"]["scores"]),
                               induction_scores(ours, 300, seq_len=6, batch=2, seed=0, bos=tok.bos_id))
    assert main(["heads", "--model", str(d), "--text", text, "--induction-len", "4"]) == 0
    assert "previous_token: L" in capsys.readouterr().out
    assert main(["heads", "--model", str(d), "--induction-len", "0"]) == 2
    assert "nothing to score" in capsys.readouterr().err


class TestRecordingAttention(AttentionConformance):
    """The recording attention (this package's lmstack.kernels entry point) passes kernel's shared attention
    conformance suite: it is the reference attention, in float32, whoever calls it."""

    impl = "interpret_pattern"
