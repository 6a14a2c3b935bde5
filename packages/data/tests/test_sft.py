"""Chat SFT data (``data.sft``, the ``lmstack.datasets`` plugin ``chat``): assistant-only targets under the chat
template, checked against transformers' tokenizer rendering the same template, batches, splits, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch

from data.sft import build_chat_dataloader, pack_best_fit, read_conversations, tokenize_conversation
from data.tokenizer import load_tokenizer
from specs.batch import IGNORE_INDEX
from specs.errors import ConfigError
from specs.plugins import resolve

CONVS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                  {"role": "assistant", "content": "6, since 3+3=6."}]},
    {"prompt": "Name a colour.", "completion": "Blue."},
] + [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}!"}]}
     for i in range(10)]


@pytest.fixture
def jsonl(tmp_path):
    p = tmp_path / "chat.jsonl"
    p.write_text("\n".join(json.dumps(c) for c in CONVS) + "\n")
    return p


def test_targets_are_the_assistant_turns_and_their_end_markers():
    tok = load_tokenizer("byte")
    msgs = read_conversations_from(CONVS[0])
    ids, target = tokenize_conversation(tok, msgs)
    assert ids == tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False)
    spans, cur = [], []
    for i, t in zip(ids, target):
        if t:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur)), cur.clear()
    spans += [tok.decode(cur)] if cur else []
    assert spans == ["4<|im_end|>\n", "6, since 3+3=6.<|im_end|>\n"]


def test_the_spans_match_transformers_rendering_of_the_template(tmp_path):
    """The same ChatML template rendered by transformers (with {% generation %} marks, its assistant mask):
    the same ids and the same targets."""
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer("bpe:300", texts=[json.dumps(c) for c in CONVS] * 5)
    tok.save(tmp_path / "tok")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    marked = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
              "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' + '\\n' }}"
              "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}")
    for conv in CONVS[:2]:
        msgs = read_conversations_from(conv)
        ids, target = tokenize_conversation(tok, msgs)
        out = hf.apply_chat_template(msgs, chat_template=marked, tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True)
        assert ids == list(out["input_ids"])
        assert target == [bool(m) for m in out["assistant_masks"]]


def read_conversations_from(conv):
    return [{"role": "user", "content": conv["prompt"]}, {"role": "assistant", "content": conv["completion"]}] \
        if "prompt" in conv else conv["messages"]


def test_conversations_are_read_with_their_lines(jsonl):
    convs = read_conversations(jsonl)
    assert len(convs) == len(CONVS) and convs[1] == (f"{jsonl}:2", read_conversations_from(CONVS[1]))


def test_batches_splits_and_exact_resume(jsonl):
    build = resolve("lmstack.datasets", "chat")
    dl = build(str(jsonl), 4, 128, seed=1, tokenizer="byte", epochs=None, pack=False, val_fraction=0.25)
    val = build(str(jsonl), 1, 128, seed=1, tokenizer="byte", epochs=1, pack=False, val_fraction=0.25, split="val")
    assert len(dl.rows) == 9 and len(val.rows) == 3 and len(dl) == 2  # 12 conversations, a quarter held out
    assert {tuple(r[0]) for r in dl.rows}.isdisjoint({tuple(r[0]) for r in val.rows})
    it = iter(dl)
    first = next(it)
    longest = int(first.attention_mask.sum(1).max())  # rows as wide as the longest, a multiple of 8, not seq_len
    assert first.input_ids.shape == first.labels.shape == first.attention_mask.shape == (4, -(-longest // 8) * 8)
    assert first.input_ids.shape[1] < 128
    for ids, labels, mask in zip(first.input_ids, first.labels, first.attention_mask):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any() and (labels[n:] == IGNORE_INDEX).all()
        assert ((labels != IGNORE_INDEX).sum() > 0) and (labels[:n] != IGNORE_INDEX).sum() < n  # targets, context
        t = (labels[:n - 1] != IGNORE_INDEX).nonzero().flatten()
        assert torch.equal(labels[t], ids[t + 1])  # labels[t] is the token after ids[t]
    state = dl.state_dict()
    want = [next(it) for _ in range(3)]  # across the epoch boundary
    again = build(str(jsonl), 4, 128, seed=1, tokenizer="byte", epochs=None, pack=False, val_fraction=0.25)
    again.load_state_dict(json.loads(json.dumps(state)))
    got = [b for b, _ in zip(again, range(3))]
    assert all(torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels) for a, b in zip(want, got))
    with pytest.raises(ConfigError, match="data.state.batch_size"):
        build(str(jsonl), 2, 128, tokenizer="byte", pack=False, val_fraction=0.25).load_state_dict(state)


def test_truncation_keeps_targets_or_skips_the_row(jsonl, caplog):
    dl = build_chat_dataloader(jsonl, 2, 80, tokenizer="byte", shuffle=False)  # the system-prompted one is cut off
    assert len(dl.rows) == len(CONVS) - 1 and "1 of 12 train conversations skipped" in caplog.text
    assert "no assistant token within seq_len=80" in caplog.text


def test_bad_data_is_named(tmp_path, jsonl):
    bad = tmp_path / "bad.jsonl"
    for line, words in (('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
                        ("{not json", "not valid JSON"),
                        ('{"messages": [{"role": "bot", "content": "x"}]}', r"messages\[0\] must be"),
                        ('{"text": "x"}', "expected")):
        bad.write_text(json.dumps(CONVS[1]) + "\n" + line + "\n")
        with pytest.raises(ConfigError, match=rf"bad.jsonl:2: .*{words}"):
            build_chat_dataloader(bad, 1, 32, pack=False)
    with pytest.raises(ConfigError, match="data.doc_mask: packed chat rows need data.doc_mask: true"):
        build_chat_dataloader(jsonl, 1, 32, pack=True)
    with pytest.raises(ConfigError, match="data.doc_mask: one conversation a row has no documents"):
        build_chat_dataloader(jsonl, 1, 32, doc_mask=True)
    with pytest.raises(ConfigError, match="no .jsonl conversations"):
        build_chat_dataloader(tmp_path / "none", 1, 32)
    with pytest.raises(ConfigError, match="too few for one batch of 64"):
        build_chat_dataloader(jsonl, 64, 32)


def test_best_fit_decreasing():
    bins = pack_best_fit([5, 3, 8, 2, 2, 7, 1], 10)
    assert sorted(i for b in bins for i in b) == list(range(7))
    assert bins == [[2, 3], [5, 1], [0, 4, 6]]  # 8+2; 7+3; 5+2+1: each into the fullest bin with room
    assert all(sum([5, 3, 8, 2, 2, 7, 1][i] for i in b) <= 10 for b in bins)
    with pytest.raises(ConfigError, match="fit a bin of 4"):
        pack_best_fit([5], 4)


def test_packed_rows_hold_each_conversation_as_alone(jsonl):
    """Packed with document masks and restarted positions, a row's loss is the sum of its conversations' losses
    each in a row of its own (a TransformerLM with random weights), with far fewer rows."""
    from model.lm import TransformerLM
    from specs.presets import preset

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug", vocab_size=512, init_std=0.2)).eval()
    packed = build_chat_dataloader(jsonl, 1, 512, tokenizer="byte", shuffle=False, pack=True, doc_mask=True)
    single = build_chat_dataloader(jsonl, 1, 512, tokenizer="byte", shuffle=False)
    assert len(packed) < len(single) / 2 and sorted(i for b in packed.bins for i in b) == list(range(len(CONVS)))

    def loss_sum(b, **kw):
        with torch.no_grad():
            logits = model(b.input_ids, attn_mask=b.attention_mask, **kw)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), b.labels.flatten(),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")

    want = sum(loss_sum(b) for b in single)
    got = sum(loss_sum(b, positions=b.positions, document_ids=b.document_ids) for b in packed)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    b = next(iter(packed))
    assert b.positions[0, 0] == 0 and (b.document_ids[0].diff() >= 0).all()
    assert int((b.labels != IGNORE_INDEX).sum()) == sum(int((s.labels != IGNORE_INDEX).sum())
                                                        for s, i in zip(single, range(len(CONVS)))
                                                        if i in packed.bins[0])
    # without the masks the conversations would see each other: the loss changes
    leaky = sum(loss_sum(b) for b in packed)
    assert abs(float(leaky) - float(want)) > 1e-2
    state = packed.state_dict()
    assert state["packed_rows"] == len(packed.bins) and "packed_rows" not in single.state_dict()
