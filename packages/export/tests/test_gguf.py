"""The GGUF target against independent readers: llama.cpp's gguf package reads the file's metadata and tensors,
and transformers (``from_pretrained(gguf_file=...)``, which undoes llama.cpp's q/k permutation) loads a model whose
logits equal the exported one's, and a tokenizer that encodes as the checkpoint's does."""

from __future__ import annotations

import json

import pytest
import torch

from export.errors import ExportError, MissingDependencyError, ParityError
from export.exporter import export
from model.lm import TransformerLM
from specs.errors import ConfigError
from specs.presets import preset

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

TEXTS = ["hello world, the quick brown fox jumps over the lazy dog.", "Ünïcode ✓ and\ttabs\nnew lines 12345",
         "<|im_start|>user\nhi<|im_end|>"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A Llama-shaped checkpoint (GQA, d_ff 192: every matrix row a multiple of 32) with a byte-level BPE."""
    from data.tokenizer import train_bpe

    d = tmp_path_factory.mktemp("gguf") / "tiny-llama"
    torch.manual_seed(0)
    TransformerLM(preset("llama-debug", vocab_size=320, d_ff=192, init_std=0.2)).save_pretrained(d)
    train_bpe([TEXTS[0] * 30, TEXTS[1] * 10], vocab_size=300, min_frequency=2).save(d)
    return d


def _export(ckpt, out, **cfg):
    return export(TransformerLM.from_pretrained(ckpt), {"target": "gguf", "outdir": str(out), "hooks": [], **cfg},
                  source=ckpt)


def _field(reader, key):
    f = reader.fields[key]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]


def test_fp32_gguf_loads_in_transformers_with_the_models_logits_and_tokenizer(ckpt, tmp_path):
    res = _export(ckpt, tmp_path / "out")
    path = tmp_path / "out" / "model.gguf"
    assert res.path.name == "model.gguf" and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model.gguf", "modelcard.json"]
    reader = gguf.GGUFReader(path)
    cfg = preset("llama-debug", vocab_size=320, d_ff=192)
    assert _field(reader, "general.architecture") == "llama"
    assert [_field(reader, f"llama.{k}") for k in ("block_count", "embedding_length", "feed_forward_length",
                                                     "attention.head_count", "attention.head_count_kv")] == [
        cfg.n_layers, cfg.d_model, 192, cfg.n_heads, cfg.n_kv_heads]
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "blk.1.attn_q.weight", "output.weight"}

    ours = TransformerLM.from_pretrained(ckpt).eval()
    hf = transformers.LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                       torch_dtype=torch.float32).eval()
    ids = torch.randint(0, 320, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-5, atol=1e-5)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    from data.tokenizer import load_tokenizer

    mine = load_tokenizer(str(ckpt))
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(ckpt / "tokenizer.json"))
    for text in TEXTS:  # special tokens in text are matched as transformers matches them
        assert tok.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False), text
    for text in TEXTS[:2]:
        assert tok.encode(text, add_special_tokens=False) == list(mine.encode(text)), text
    assert tok.chat_template == json.loads((ckpt / "tokenizer_config.json").read_text())["chat_template"]
    meta = res.card.metadata
    assert meta["transformers"]["logit_max_abs_diff"] == 0.0 and meta["transformers"]["tokenizer_round_trip"]
    assert meta["tensor_types"] == {"F32": 2 * 9 + 3} and meta["inputs"] == []


@pytest.mark.parametrize(("dtype", "quantize", "kind"), [("fp16", "none", "F16"), ("bf16", "none", "BF16"),
                                                         ("fp32", "int8", "Q8_0")])
def test_lower_precision_and_q8_0(ckpt, tmp_path, dtype, quantize, kind):
    res = _export(ckpt, tmp_path / "out", dtype=dtype, quantize=quantize)
    meta = res.card.metadata
    assert meta["tensor_types"] == {kind: 2 * 7 + 2, "F32": 2 * 2 + 1}  # the matrices; the norms stay F32
    reader = gguf.GGUFReader(tmp_path / "out" / "model.gguf")
    assert {t.tensor_type.name for t in reader.tensors} == {kind, "F32"}
    full = (tmp_path / "out" / "model.gguf").stat().st_size
    assert full < 0.6 * _export(ckpt, tmp_path / "full").card.metadata["size_bytes"]
    if quantize == "none":  # the stored weights are the model's, exactly: transformers' float32 logits equal ours
        assert meta["transformers"]["logit_max_abs_diff"] == 0.0
    else:
        assert 0 < meta["tensor_max_abs_error"] < 0.01 and meta["transformers"]["greedy_agreement"] >= 0.75


def test_q4_0_blocks_with_the_head_in_q8_0(ckpt, tmp_path, monkeypatch):
    """quantize int4: the matrices in Q4_0, the LM head in Q8_0 (llama.cpp's file type MOSTLY_Q4_0), smaller than
    Q8_0, each block of 32 within amax / 8 of the model's (a corrupted block is caught before anything is
    written), and transformers reads the file back."""
    res = _export(ckpt, tmp_path / "q4", quantize="int4")
    meta = res.card.metadata
    assert meta["tensor_types"] == {"Q4_0": 2 * 7 + 1, "Q8_0": 1, "F32": 2 * 2 + 1}
    reader = gguf.GGUFReader(tmp_path / "q4" / "model.gguf")
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_0
    assert {t.name: t.tensor_type.name for t in reader.tensors}["output.weight"] == "Q8_0"
    q8 = _export(ckpt, tmp_path / "q8", quantize="int8").card.metadata
    assert meta["size_bytes"] < q8["size_bytes"] and meta["tensor_max_abs_error"] > q8["tensor_max_abs_error"] > 0
    assert 0 <= meta["transformers"]["greedy_agreement"] <= 1 and meta["transformers"]["logit_max_abs_diff"] > 0
    real = gguf.quants.quantize

    def corrupt(data, kind):  # one value of one block off by a whole block's amax
        if kind == gguf.GGMLQuantizationType.Q4_0:
            data = data.copy()
            data[0, 5] += 2 * abs(data[0, :32]).max() + 1
        return real(data, kind)

    monkeypatch.setattr(gguf.quants, "quantize", corrupt)
    with pytest.raises(ParityError, match="\\(Q4_0\\) differs from the model's by .* in block 0; nothing was written"):
        _export(ckpt, tmp_path / "bad", quantize="int4")
    assert not (tmp_path / "bad").exists()


def test_tied_embeddings_write_no_output_tensor(tmp_path):
    from data.tokenizer import train_bpe

    d = tmp_path / "tied"
    torch.manual_seed(2)
    TransformerLM(preset("llama-debug", vocab_size=320, tie_embeddings=True, init_std=0.2)).save_pretrained(d)
    train_bpe([TEXTS[0] * 30], vocab_size=300, min_frequency=2).save(d)
    _export(d, tmp_path / "out")
    reader = gguf.GGUFReader(tmp_path / "out" / "model.gguf")
    assert "output.weight" not in {t.name for t in reader.tensors}
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out"), gguf_file="model.gguf").eval()
    ids = torch.randint(0, 320, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, TransformerLM.from_pretrained(d).eval()(ids), rtol=1e-5,
                                   atol=1e-5)


def test_a_sentencepiece_vocabulary_goes_in_as_llamas(tmp_path):
    """A SentencePiece BPE tokenizer.model (Llama 2's kind) is written as llama.cpp's ``llama`` vocabulary, with
    scores and piece types; transformers' reading of the file tokenizes as sentencepiece does."""
    from data.tokenizer import load_tokenizer, train_sentencepiece

    d = tmp_path / "spm"
    torch.manual_seed(4)
    TransformerLM(preset("llama-debug", vocab_size=384, d_ff=192, init_std=0.2)).save_pretrained(d)
    train_sentencepiece([TEXTS[0] * 3, TEXTS[1] * 3, "über naïve café façade"] * 20, vocab_size=330,
                        user_defined_symbols=["<tool>"]).save(d)
    res = _export(d, tmp_path / "out")
    reader = gguf.GGUFReader(tmp_path / "out" / "model.gguf")
    assert _field(reader, "tokenizer.ggml.model") == "llama" and _field(reader, "tokenizer.ggml.add_space_prefix")
    assert "tokenizer.ggml.merges" not in reader.fields
    f = reader.fields["tokenizer.ggml.scores"]
    assert len(f.data) == 384  # the model's rows past the tokenizer's 330 padded as llama.cpp pads them
    types = reader.fields["tokenizer.ggml.token_type"]
    kinds = [int(types.parts[i][0]) for i in types.data]
    assert kinds.count(gguf.TokenType.BYTE) == 256 and kinds.count(gguf.TokenType.USER_DEFINED) == 1
    assert kinds[:4] == [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 3
    assert kinds[-1] == gguf.TokenType.UNUSED
    mine = load_tokenizer(str(d))
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"), gguf_file="model.gguf")
    # (not text that starts with a space: transformers' Metaspace then prepends no second "▁", where sentencepiece
    # and llama.cpp do)
    for text in [*TEXTS[:2], "two  spaces,   three", "a <tool> call: 日本"]:
        assert tok.encode(text, add_special_tokens=False) == list(mine.encode(text)), text
    assert tok.decode(mine.encode(TEXTS[1])) == mine.decode(mine.encode(TEXTS[1]))
    meta = res.card.metadata
    assert meta["tokenizer"]["model"] == "llama" and meta["transformers"]["tokenizer_round_trip"]
    assert meta["transformers"]["logit_max_abs_diff"] == 0.0

    uni = tmp_path / "unigram"  # llama.cpp's llama tokenizer merges by score: a unigram model would split otherwise
    TransformerLM(preset("llama-debug", vocab_size=384)).save_pretrained(uni)
    train_sentencepiece([TEXTS[0] * 3, TEXTS[1] * 3] * 20, vocab_size=330, model_type="unigram",
                        hard_vocab_limit=False).save(uni)
    with pytest.raises(ExportError, match="model_type unigram"):
        _export(uni, tmp_path / "u")
    assert not (tmp_path / "u").exists()


def test_what_gguf_cannot_hold_is_refused_before_anything_is_written(ckpt, tmp_path, monkeypatch):
    from data.tokenizer import load_tokenizer

    gpt2 = tmp_path / "gpt2"
    TransformerLM(preset("gpt2-debug")).save_pretrained(gpt2)
    with pytest.raises(ExportError, match="norm='layernorm' \\(GGUF's llama needs 'rmsnorm'\\)"):
        _export(gpt2, tmp_path / "a")
    byte = tmp_path / "byte"
    TransformerLM(preset("llama-debug")).save_pretrained(byte)
    load_tokenizer("byte").save(byte)
    with pytest.raises(ExportError, match="has neither a tokenizer.json nor a tokenizer.model"):
        _export(byte, tmp_path / "b")
    small = tmp_path / "small"  # a tokenizer with more ids than the model has embedding rows
    TransformerLM(preset("llama-debug", vocab_size=260)).save_pretrained(small)
    (small / "tokenizer.json").write_text((ckpt / "tokenizer.json").read_text())
    with pytest.raises(ExportError, match="the tokenizer has 30[0-9] ids and the model's vocabulary 260 rows"):
        _export(small, tmp_path / "e")
    doc = json.loads((ckpt / "tokenizer.json").read_text())  # Llama 3's kind: a regex split before ByteLevel
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\d"},
                                                                   "behavior": "Isolated", "invert": False},
                                                                  {**doc["pre_tokenizer"], "use_regex": False}]}
    (small / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(ExportError, match="pre-tokenizer Sequence; the gguf target writes byte-level BPE"):
        _export(small, tmp_path / "f")
    with pytest.raises(ConfigError, match="the gguf target takes none, int8 \\(Q8_0\\) or int4 \\(Q4_0\\), got .fp8."):
        _export(ckpt, tmp_path / "c", quantize="fp8")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="the 'gguf' Python package"):
        _export(ckpt, tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["byte", "gpt2", "small"]


def test_cli(ckpt, tmp_path, capsys):
    from export.cli import main

    assert main(["--model", str(ckpt), "--target", "gguf", "--quantize", "int8", "--outdir", str(tmp_path / "o"),
                 "--no-hooks"]) == 0
    assert (tmp_path / "o" / "model.gguf").is_file()
    assert main(["--model", str(ckpt), "--target", "gguf", "--outdir", str(tmp_path / "v"), "--no-hooks",
                 "--validate", "false"]) == 0
    card = json.loads((tmp_path / "v" / "modelcard.json").read_text())["metadata"]
    assert card["transformers"].startswith("not run (validate: false)") and card["tensor_max_abs_error"] == 0.0
