"""Preference data I/O (``rl.data``): the four record formats, how pairs become rows, truncation, the held-out
split, exact resume, and errors that name the line."""

from __future__ import annotations

import json

import pytest
import torch

from data.tokenizer import ByteTokenizer
from rl.data import build_preference_dataloader, read_preferences, tokenize_pair
from specs.batch import IGNORE_INDEX
from specs.errors import ConfigError

TOK = ByteTokenizer()  # bos 256, eos 257, pad 258


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_text_pairs_tokenize_with_bos_and_eos_and_rows_alternate(tmp_path):
    f = _write(tmp_path / "p.jsonl", [{"prompt": "Q?", "chosen": "yes", "rejected": "no"}])
    p, c, r = tokenize_pair(TOK, read_preferences(f)[0][1])
    assert p == [256, *b"Q?"] and c == [*b"yes", 257] and r == [*b"no", 257]
    b = next(iter(build_preference_dataloader(f, batch_size=1, seq_len=32, tokenizer=TOK, shuffle=False)))
    assert b.input_ids.shape == (2, 8)  # two rows, padded to a multiple of 8
    for row, comp in ((0, c), (1, r)):
        full = p + comp
        n = len(full) - 1
        assert b.input_ids[row, :n].tolist() == full[:-1] and b.attention_mask[row].sum() == n
        assert (b.input_ids[row, n:] == 258).all()
        want = [IGNORE_INDEX] * (len(p) - 1) + comp
        assert b.labels[row, :n].tolist() == want and (b.labels[row, n:] == IGNORE_INDEX).all()


def test_conversational_and_implicit_prompts_render_with_the_chat_template(tmp_path):
    user = [{"role": "user", "content": "Hi"}]
    yes, no = [{"role": "assistant", "content": "Hello!"}], [{"role": "assistant", "content": "Go away."}]
    explicit = {"prompt": user, "chosen": yes, "rejected": no}
    implicit = {"chosen": user + yes, "rejected": user + no}
    f = _write(tmp_path / "c.jsonl", [explicit, implicit])
    (where_a, a), (where_b, b) = read_preferences(f)
    assert where_a.endswith("c.jsonl:1") and a == b  # the implicit prompt is the shared first message
    p, c, r = tokenize_pair(TOK, a)
    assert p == TOK.apply_chat_template(user, tokenize=True, add_generation_prompt=True)
    assert p + c == TOK.apply_chat_template(user + yes, tokenize=True, add_generation_prompt=False)
    assert p + r == TOK.apply_chat_template(user + no, tokenize=True, add_generation_prompt=False)
    assert TOK.decode(c).startswith("Hello!")


def test_tokenized_pairs_pass_through(tmp_path):
    f = _write(tmp_path / "i.jsonl", [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]}])
    b = next(iter(build_preference_dataloader(f, batch_size=1, seq_len=16, tokenizer=TOK)))
    assert b.input_ids[0, :4].tolist() == [1, 2, 3, 4] and b.labels[0, :4].tolist() == [-100, -100, 4, 5]
    assert b.input_ids[1, :3].tolist() == [1, 2, 3] and b.labels[1, :3].tolist() == [-100, -100, 6]


def test_long_pairs_truncate_and_prompts_that_fill_seq_len_are_dropped(tmp_path, caplog):
    f = _write(tmp_path / "t.jsonl", [{"prompt_ids": list(range(10)), "chosen_ids": [20] * 10, "rejected_ids": [21]},
                                      {"prompt_ids": list(range(12)), "chosen_ids": [20], "rejected_ids": [21]},
                                      {"prompt_ids": list(range(13)), "chosen_ids": [20], "rejected_ids": [21]}])
    with caplog.at_level("INFO", logger="rl.data"):
        loader = build_preference_dataloader(f, batch_size=1, seq_len=12, tokenizer=TOK)
    # 12 prompt tokens leave the completion's first token a target of the 12th input (as TRL keeps prompts
    # shorter than max_length = seq_len + 1); 13 leave none
    assert len(loader.pairs) == 2 and "1 of 3 pairs dropped" in caplog.text
    loader.shuffle = False
    b = next(iter(loader))
    assert b.input_ids.shape == (2, 12)  # capped at seq_len, not rounded past it
    assert (b.labels[0] != IGNORE_INDEX).sum() == 3  # 13 tokens kept: the prompt's 10, then 3 of the chosen's


def test_val_split_is_disjoint_and_the_stream_resumes_exactly(tmp_path):
    f = _write(tmp_path / "v.jsonl", [{"prompt_ids": [1, i], "chosen_ids": [2, i], "rejected_ids": [3]}
                                      for i in range(20)])
    train = build_preference_dataloader(f, batch_size=2, seq_len=8, tokenizer=TOK, val_fraction=0.25, seed=3)
    val = build_preference_dataloader(f, batch_size=2, seq_len=8, tokenizer=TOK, val_fraction=0.25, seed=3,
                                      split="val", shuffle=False)
    key = {tuple(p[0]) for p in train.pairs}
    assert len(train.pairs) == 15 and len(val.pairs) == 5 and not key & {tuple(p[0]) for p in val.pairs}
    loader = build_preference_dataloader(f, batch_size=2, seq_len=8, tokenizer=TOK, epochs=None, seed=1)
    it = iter(loader)
    for _ in range(13):  # past the first epoch's 10 batches
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    want = [next(it).input_ids for _ in range(4)]
    again = build_preference_dataloader(f, batch_size=2, seq_len=8, tokenizer=TOK, epochs=None, seed=1)
    again.load_state_dict(state)
    it2 = iter(again)
    assert all(torch.equal(next(it2).input_ids, w) for w in want)
    other = build_preference_dataloader(f, batch_size=4, seq_len=8, tokenizer=TOK, epochs=None, seed=1)
    with pytest.raises(ConfigError, match="data.state.batch_size"):
        other.load_state_dict(state)


@pytest.mark.parametrize("line,match", [
    ("{not json", "p.jsonl:2: not valid JSON"),
    ('{"prompt": "a", "chosen": "b"}', "p.jsonl:2: expected"),
    ('{"prompt": 3, "chosen": "b", "rejected": "c"}', "prompt is int"),
    ('{"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "boss", "content": "b"}], '
     '"rejected": [{"role": "assistant", "content": "c"}]}', r"chosen\[0\] must be"),
    ('{"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "user", "content": "b"}], '
     '"rejected": [{"role": "assistant", "content": "c"}]}', "must start with an assistant message"),
    ('{"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}',
     "share no messages"),
    ('{"prompt_ids": [1], "chosen_ids": [-2], "rejected_ids": [3]}', "chosen_ids must be a list of token ids"),
    ('{"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [3]}', "chosen_ids is empty"),
])
def test_bad_lines_are_named(tmp_path, line, match):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + line + "\n")
    with pytest.raises(ConfigError, match=match):
        read_preferences(f)


def test_bad_arguments_are_config_errors(tmp_path):
    f = _write(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(ConfigError, match="no .jsonl preference pairs there"):
        build_preference_dataloader(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="data.pack: false"):
        build_preference_dataloader(f, pack=True)
    with pytest.raises(ConfigError, match="too few for one batch of 2"):
        build_preference_dataloader(f, batch_size=2)
