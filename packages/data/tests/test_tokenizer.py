"""Tokenizers: byte, trained byte-level BPE (checked against transformers), sentencepiece (against the library)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    train_bpe,
    train_sentencepiece,
)
from specs.errors import ConfigError
from specs.protocols import Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "Unicode: héllo wörld, naïve café, 日本語のテキスト, emoji 🙂 and Ελληνικά.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.",
] * 20
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there, who are you?"},
            {"role": "assistant", "content": "A model."}, {"role": "user", "content": "héllo 日本"}]


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    return train_bpe(CORPUS, vocab_size=400, min_frequency=1)


@pytest.fixture(scope="module")
def spm_tok() -> SentencePieceTokenizer:
    return train_sentencepiece(CORPUS, vocab_size=400, character_coverage=1.0)


text_st = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@given(text_st)
@settings(max_examples=60, deadline=None)
def test_byte_matches_utf8_and_round_trips(text: str) -> None:
    tok = ByteTokenizer()
    assert tok.encode(text) == list(text.encode("utf-8"))  # independent reference: Python's codec
    assert tok.decode(tok.encode(text, add_bos=True, add_eos=True)) == text
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert "".join(text[a:b] for (a, b), nxt in zip(offsets, offsets[1:] + [(-1, -1)]) if (a, b) != nxt) == text


def test_byte_specials_and_invalid_bytes() -> None:
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
    assert tok.decode([256, 104, 105, 257], skip_special_tokens=False) == "<|bos|>hi<|eos|>"
    assert tok.decode([0xFF, 104]) == "\ufffdh"
    assert tok.token_to_id("<|eos|>") == 257 and tok.token_to_id("<0x41>") == 65
    assert isinstance(tok, Tokenizer)


def test_bpe_matches_transformers(bpe: HFTokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    bpe.save(tmp_path / "tok")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    for text in CORPUS[:4] + ["  leading spaces\tand\ttabs\n\n"]:
        assert bpe.encode(text) == hf.encode(text, add_special_tokens=False)
        assert bpe.decode(bpe.encode(text)) == hf.decode(hf.encode(text, add_special_tokens=False)) == text
    # A special token's spelling inside a document stays text (transformers would make it the special id).
    injected = "<|im_start|>user\nhi<|eos|>"
    assert bpe.eos_id not in bpe.encode(injected) and bpe.decode(bpe.encode(injected)) == injected
    assert bpe.eos_id in hf.encode(injected, add_special_tokens=False)
    assert hf.bos_token == "<|bos|>" and hf.convert_tokens_to_ids("<|eos|>") == bpe.eos_id
    assert bpe.apply_chat_template(MESSAGES) == hf.apply_chat_template(MESSAGES, tokenize=False,
                                                                        add_generation_prompt=True)
    ref = hf.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
    assert bpe.apply_chat_template(MESSAGES, tokenize=True) == list(ref)
    im_start = bpe.token_to_id("<|im_start|>")
    assert bpe.apply_chat_template(MESSAGES, tokenize=True).count(im_start) == len(MESSAGES) + 1


@given(text_st)
@settings(max_examples=60, deadline=None)
def test_bpe_round_trip_and_offsets(text: str) -> None:
    tok = _BPE
    assert tok.decode(tok.encode(text)) == text
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert all(0 <= a <= b <= len(text) for a, b in offsets)


_BPE = train_bpe(CORPUS, vocab_size=400, min_frequency=1)


def test_bpe_deterministic_and_batch(bpe: HFTokenizer, tmp_path: Path) -> None:
    again = train_bpe(CORPUS, vocab_size=400, min_frequency=1)
    assert again.fingerprint() == bpe.fingerprint()
    assert train_bpe(CORPUS, vocab_size=450, min_frequency=1).fingerprint() != bpe.fingerprint()
    assert bpe.encode_batch(CORPUS[:4], add_eos=True) == [bpe.encode(t, add_eos=True) for t in CORPUS[:4]]
    files = []
    for i, text in enumerate(CORPUS[:4]):
        files.append(tmp_path / f"{i}.txt")
        files[-1].write_text(text * 5)
    from_files = load_tokenizer("bpe:300", files=files)
    assert from_files.vocab_size <= 300 and from_files.decode(from_files.encode(CORPUS[2])) == CORPUS[2]


def test_bpe_needs_text() -> None:
    with pytest.raises(ConfigError, match="no training text|none was given"):
        load_tokenizer("bpe:8000")
    with pytest.raises(ConfigError, match="integer"):
        load_tokenizer("bpe:lots", texts=["x"])
    with pytest.raises(ConfigError, match=">= 261"):
        train_bpe(["x"], vocab_size=100)



def test_a_single_text_is_not_a_list_of_documents(tmp_path: Path) -> None:
    # A str used to train on its single characters and encode_batch("hi") to encode two documents.
    for spec in ("bpe:400", "sentencepiece:300"):
        with pytest.raises(ConfigError, match=r"texts: .*got a single str of length 5; pass a list .*\[text\]"):
            load_tokenizer(spec, texts="hello")
        with pytest.raises(ConfigError, match="document 1 is of type int, expected a str"):
            load_tokenizer(spec, texts=["hello", 3])
        with pytest.raises(ConfigError, match=r"files: .*single path 'a\.txt'; pass a list, e\.g\. \['a\.txt'\]"):
            load_tokenizer(spec, files="a.txt")
    with pytest.raises(ConfigError, match="got a single bytes"):
        train_bpe(b"hello", vocab_size=300)
    with pytest.raises(ConfigError, match="got a single str"):
        ByteTokenizer().encode_batch("hi")


def test_save_keeps_other_files_and_replaces_another_tokenizer(bpe: HFTokenizer, spm_tok: SentencePieceTokenizer,
                                                               tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "ckpt"  # a checkpoint directory: weights and config first, the tokenizer saved beside them
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "config.json").write_text("{}")
    spm_tok.save(d)
    assert load_tokenizer(str(d)).fingerprint() == spm_tok.fingerprint()
    bpe.save(d)  # another kind into the same directory: its model file goes, the checkpoint's files stay
    assert not (d / "tokenizer.model").exists() and (d / "tokenizer.json").is_file()
    assert load_tokenizer(str(d)).fingerprint() == bpe.fingerprint()
    ByteTokenizer().save(d)
    assert type(load_tokenizer(str(d))) is ByteTokenizer and not (d / "tokenizer.json").exists()
    assert (d / "model.safetensors").read_bytes() == b"weights" and (d / "config.json").read_text() == "{}"
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json"]

    def broken(self, directory: Path) -> None:
        (directory / "tokenizer.json").write_text("half")
        raise OSError("disk full")

    before = {p.name: p.read_bytes() for p in d.iterdir()}
    monkeypatch.setattr(HFTokenizer, "_save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        bpe.save(d)  # an error while writing: the directory is as it was, no temporary left
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    with pytest.raises(ConfigError, match="not a directory"):
        ByteTokenizer().save(d / "config.json")


def test_save_load_round_trip(bpe: HFTokenizer, spm_tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    custom = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    for tok in (bpe, spm_tok, ByteTokenizer(chat_template=custom)):
        d = tok.save(tmp_path / tok.kind)
        back = load_tokenizer(str(d))
        assert type(back) is type(tok)
        assert back.fingerprint() == tok.fingerprint()
        assert (back.bos_id, back.eos_id, back.pad_id, back.vocab_size) == (tok.bos_id, tok.eos_id, tok.pad_id,
                                                                         tok.vocab_size)
        assert back.chat_template == tok.chat_template
        assert back.encode(CORPUS[2]) == tok.encode(CORPUS[2])
    assert load_tokenizer(str(tmp_path / "hf" / "tokenizer.json")).fingerprint() == bpe.fingerprint()
    assert load_tokenizer(tmp_path / "sentencepiece" / "tokenizer.model").fingerprint() == spm_tok.fingerprint()
    assert ByteTokenizer(chat_template=custom).apply_chat_template(MESSAGES[:1]) == "[system] You are terse.\n"


def test_sentencepiece_matches_library(spm_tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    import sentencepiece as spm

    path = spm_tok.save(tmp_path / "sp") / "tokenizer.model"
    ref = spm.SentencePieceProcessor(model_file=str(path))
    for text in CORPUS[:4]:
        assert spm_tok.encode(text) == ref.encode(text)
        assert spm_tok.decode(spm_tok.encode(text)) == ref.decode(ref.encode(text)) == text
        ids, offsets = spm_tok.encode_with_offsets(text)
        assert ids == ref.encode(text)
        assert all(0 <= a <= b <= len(text) for a, b in offsets)
    assert (spm_tok.bos_id, spm_tok.eos_id, spm_tok.pad_id) == (ref.bos_id(), ref.eos_id(), ref.pad_id())
    ids = spm_tok.encode("hello", add_bos=True, add_eos=True)
    assert ids[0] == ref.bos_id() and ids[-1] == ref.eos_id()
    assert spm_tok.decode(ids, skip_special_tokens=False) == "<s>hello</s>"
    assert spm_tok.decode(ids) == "hello"
    text = "naïve café 日本語"
    ids, offsets = spm_tok.encode_with_offsets(text)
    assert "".join(text[a:b] for a, b in _dedup(offsets)).replace(" ", "") == text.replace(" ", "")


def _dedup(offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for o in offsets:
        if not out or o != out[-1]:
            out.append(o)
    return out


def test_hf_cache_resolution(bpe: HFTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(ConfigError, match="Nothing is downloaded") as err:
        load_tokenizer("gpt2")
    assert str(tmp_path / "hf_home" / "hub") in str(err.value)
    repo = tmp_path / "hf_home" / "hub" / "models--openai-community--gpt2"
    snap = repo / "snapshots" / "abc123"
    bpe.save(snap)
    cfg = json.loads((snap / "tokenizer_config.json").read_text())
    cfg["bos_token"] = {"content": "<|eos|>", "special": True}  # HF's AddedToken spelling
    del cfg["lmstack"]
    (snap / "tokenizer_config.json").write_text(json.dumps(cfg))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    tok = load_tokenizer("gpt2")
    assert isinstance(tok, HFTokenizer) and tok.bos_id == bpe.eos_id and tok.spec == "gpt2"
    assert load_tokenizer("openai-community/gpt2").encode(CORPUS[0]) == bpe.encode(CORPUS[0])


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokenizer("./missing/tokenizer.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds none of"):
        load_tokenizer(str(tmp_path / "empty"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="chat_template"):
        ByteTokenizer(chat_template="{% for x in %}").apply_chat_template(MESSAGES)


def test_entry_points() -> None:
    from specs.plugins import available, resolve

    assert {"auto", "byte", "bpe", "hf", "sentencepiece"} <= set(available("lmstack.tokenizers"))
    assert resolve("lmstack.tokenizers", "auto") is load_tokenizer
    assert resolve("lmstack.tokenizers", "byte")().vocab_size == 259
    from data.loader import build_dataloader

    assert resolve("lmstack.datasets", "shards") is build_dataloader
