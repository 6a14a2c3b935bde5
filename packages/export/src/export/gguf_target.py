"""GGUF, llama.cpp's single-file format (also read by ollama, LM Studio and transformers' ``gguf_file=``), for
Llama-shaped models: written with llama.cpp's own ``gguf`` package, as its ``convert_hf_to_gguf.py`` writes a
``LlamaForCausalLM``.

- Metadata: ``general.architecture = llama``, its ``llama.*`` hyperparameters (context length, widths, heads,
  RMSNorm epsilon, RoPE base and dimensions), ``general.file_type``.
- Tensors under llama.cpp's names (``token_embd``, ``blk.N.attn_q``, ..., ``output``); the q and k projections
  permuted from the rotate-half layout to llama.cpp's interleaved RoPE layout (``LlamaModel.permute``); 1-D
  tensors (norms) in F32, the matrices in the export dtype (F32, F16, BF16); with ``quantize: int8``, Q8_0
  (blocks of 32 with one fp16 scale); with ``quantize: int4``, Q4_0 (blocks of 32, 4-bit values, one fp16 scale:
  ollama's long-time default), the LM head (or a tied embedding, which serves as it) in Q8_0, as llama.cpp keeps
  the output layer at higher precision. A matrix whose rows are not a multiple of 32 stays in the export dtype.
  A tied head writes no ``output`` tensor (llama.cpp then reads ``token_embd``).
- The tokenizer of the checkpoint directory, with its special ids and chat template. A ``tokenizer.json`` that is
  a byte-level BPE splitting as GPT-2 does (lmstack's ``train_bpe``) goes in as ``tokenizer.ggml.model = gpt2``
  with llama.cpp's ``gpt-2`` pre-tokenizer, its tokens, types and merges. Else a SentencePiece BPE
  ``tokenizer.model`` (Llama 1/2's, Mistral's, lmstack's ``train_sentencepiece``) goes in as ``llama``: every
  piece with its score and type, and ``add_space_prefix``. Another tokenizer is refused, naming it (a GGUF
  without its vocabulary runs nowhere).

Validation: the file is read back with ``gguf.GGUFReader`` and every tensor dequantized and compared with the
model's (exact for F32/F16/BF16 casts; Q8_0 and Q4_0 within each block's own bound); then, where
transformers is installed, the file is loaded as transformers does (``LlamaForCausalLM.from_pretrained(dir,
gguf_file=...)``, which undoes the permutation) and its logits compared with the model's on the fixed token
sequence, and its tokenizer (``AutoTokenizer`` from the file) must encode a text as the checkpoint's tokenizer
(tokenizers or sentencepiece) does.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.errors import ExportError, MissingDependencyError, ParityError
from export.targets import ExportJob, TargetResult, file_sizes
from specs.errors import ConfigError

FILENAME = "model.gguf"
QUANT = {"none": None, "int8": "Q8_0", "int4": "Q4_0"}  # export.quantize -> the GGML type of the matrices
# lmstack (transformers Llama) state_dict names -> llama.cpp's, per layer and global
LAYER = {"input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "attn_q",
         "self_attn.k_proj.weight": "attn_k", "self_attn.v_proj.weight": "attn_v",
         "self_attn.o_proj.weight": "attn_output",
         "post_attention_layernorm.weight": "ffn_norm", "mlp.gate_proj.weight": "ffn_gate",
         "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down"}
GLOBAL = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
SAMPLE_TEXT = "Hello world! GGUF files carry their tokenizer: 3.14, naïve café, <tags>,  two  spaces and\ttabs."


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute``: a q or k projection from the rotate-half RoPE layout (HF) to the
    interleaved one llama.cpp computes with (each head's rows (2, Dh/2) -> (Dh/2, 2))."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_llama(config: Any) -> None:
    """ExportError unless the model is one llama.cpp's ``llama`` architecture computes."""
    wrong = [f"{field}={getattr(config, field)!r} (GGUF's llama needs {want!r})"
             for field, want in (("norm", "rmsnorm"), ("mlp", "swiglu"), ("activation", "silu"),
                                 ("pos_encoding", "rope"), ("bias", False), ("norm_position", "pre"),
                                 ("causal", True), ("sliding_window", None), ("rope_scaling", None))
             if getattr(config, field, want) != want]
    if wrong:
        raise ExportError("the gguf target writes Llama-shaped models (llama.cpp's 'llama' architecture); this model "
                          "has " + "; ".join(wrong))


class GGUFTarget:
    name = "gguf"

    def check(self, cfg: Any) -> None:
        if importlib.util.find_spec("gguf") is None:
            raise MissingDependencyError("the gguf target", ["the 'gguf' Python package (pip install "
                                                             "'lmstack-export[gguf]')"])
        if cfg.quantize not in QUANT:
            raise ConfigError("export.quantize", f"the gguf target takes none, int8 (Q8_0) or int4 (Q4_0), got "
                                                 f"{cfg.quantize!r}")

    def build(self, job: ExportJob) -> TargetResult:
        import gguf

        config = job.model.config
        check_llama(config)
        vocab = read_vocab(job.source)
        path = job.workdir / FILENAME
        kinds = write_gguf(path, job.model, vocab, job.spec.dtype, quant=QUANT[job.config.quantize],
                           name=job.source.name if job.source else "lmstack")
        reader = gguf.GGUFReader(path)
        tensor_err = check_tensors(reader, job.model)
        # a GGUF file has no graph signature: llama.cpp (or transformers) runs it with its own decode loop
        meta: dict[str, Any] = {"inputs": [], "outputs": [], "format": "gguf", "architecture": "llama",
                                "runtime": "llama.cpp (llama-cli, llama-server), ollama, transformers (gguf_file=)",
                                "tensor_types": kinds,
                                "tensors": len(reader.tensors), "tensor_max_abs_error": tensor_err,
                                "tokenizer": vocab["summary"],
                                "size_bytes": file_sizes(job.workdir, [FILENAME])}
        if not job.config.validate:
            meta["transformers"] = "not run (validate: false): the file was checked by gguf's reader only"
        elif importlib.util.find_spec("transformers") is not None:
            meta["transformers"] = check_with_transformers(job, path, vocab)
        else:
            meta["transformers"] = "not installed: the file was checked by gguf's reader only"
        return TargetResult(files=[FILENAME], metadata=meta)


def read_vocab(source: Path | None) -> dict[str, Any]:
    """The checkpoint's tokenizer as a GGUF vocabulary: a byte-level BPE ``tokenizer.json`` as ``gpt2``, else a
    SentencePiece ``tokenizer.model`` as ``llama``; ExportError for a missing or other tokenizer."""
    tj = None if source is None else source / "tokenizer.json"
    spm_path = None if source is None else source / "tokenizer.model"
    if tj is not None and tj.is_file():
        doc = json.loads(tj.read_text(encoding="utf-8"))
        if is_gpt2_bpe(doc) or spm_path is None or not spm_path.is_file():
            return read_bpe_vocab(tj, doc)
    if spm_path is not None and spm_path.is_file():
        return read_spm_vocab(spm_path)
    where = source or "the export (no source directory)"
    raise ExportError(f"the gguf target writes the model's tokenizer into the file, and {where} has neither a "
                      "tokenizer.json nor a tokenizer.model; export from a checkpoint directory that holds one (a GGUF "
                      "without its vocabulary runs nowhere)")


def is_gpt2_bpe(doc: dict[str, Any]) -> bool:
    """GPT-2's own scheme: a ByteLevel pre-tokenizer splitting by GPT-2's regex, which llama.cpp calls "gpt-2".
    Llama 3's and Qwen's split by other regexes first (a Sequence), which llama.cpp names apart: not mapped yet."""
    model, pre = doc.get("model") or {}, doc.get("pre_tokenizer") or {}
    return (model.get("type") == "BPE" and not model.get("byte_fallback") and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True))


def read_bpe_vocab(tj: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """A byte-level BPE ``tokenizer.json`` as GGUF's ``gpt2`` vocabulary (tokens by id, their types, the merges,
    special ids, chat template)."""
    model, pre = doc.get("model") or {}, doc.get("pre_tokenizer") or {}
    if not is_gpt2_bpe(doc):
        raise ExportError(f"{tj}: a {model.get('type')} tokenizer with pre-tokenizer {pre.get('type')}; the gguf "
                          "target writes byte-level BPE tokenizers that split as GPT-2 does (a ByteLevel "
                          "pre-tokenizer with its regex, as lmstack's train_bpe builds them) or SentencePiece BPE "
                          "models (a tokenizer.model beside it)")
    added = {t["id"]: t for t in doc.get("added_tokens", [])}
    ids = {**model["vocab"], **{t["content"]: i for i, t in added.items()}}
    size = max(ids.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf_token_type("unused")] * size
    for text, i in ids.items():
        tokens[i] = text
        types[i] = gguf_token_type("normal")
    for i, t in added.items():
        types[i] = gguf_token_type("control" if t.get("special") else "user_defined")
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    tcfg = tokenizer_config(tj.parent)
    special = {}
    for key in ("bos", "eos", "pad", "unk"):
        tok = tcfg.get(f"{key}_token")
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if isinstance(tok, str) and tok in ids:
            special[key] = ids[tok]
    return {"model": "gpt2", "pre": "gpt-2", "tokens": tokens, "types": types, "merges": merges, "scores": None,
            "special": special, "chat_template": tcfg.get("chat_template"), "tokenizer_file": tj,
            "summary": {"model": "gpt2", "tokens": size, "merges": len(merges), "special": special}}


# sentencepiece's ModelProto.TrainerSpec.ModelType numbers
SPM_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def read_spm_vocab(path: Path) -> dict[str, Any]:
    """A SentencePiece BPE model (Llama 1/2's, Mistral's, lmstack's ``train_sentencepiece``) as GGUF's ``llama``
    vocabulary, as llama.cpp's ``convert_hf_to_gguf.py`` writes one: every piece with its score and type (the
    proto's piece types are GGUF's token types), the special ids, and whether a space is prepended.

    Refused, naming the field: other model types (llama.cpp's ``llama`` tokenizer merges pieces by score, which is
    SentencePiece BPE), and normalisation llama.cpp does not do (a rule other than identity, collapsing spaces)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise MissingDependencyError("the gguf target's SentencePiece vocabularies",
                                     ["sentencepiece and protobuf (pip install 'lmstack-export[gguf]')"]) from exc
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError
        raise ExportError(f"{path} is not a SentencePiece model: {exc}") from None
    kind = SPM_MODEL_TYPES.get(proto.trainer_spec.model_type, str(proto.trainer_spec.model_type))
    norm = proto.normalizer_spec
    wrong = []
    if kind != "bpe":
        wrong.append(f"model_type {kind} (llama.cpp's SentencePiece tokenizer merges by score: bpe)")
    if norm.name not in ("identity", "") and norm.precompiled_charsmap:
        wrong.append(f"normalizer {norm.name!r} (llama.cpp normalizes nothing: identity)")
    if norm.remove_extra_whitespaces:
        wrong.append("remove_extra_whitespaces true (llama.cpp keeps every space: false)")
    if wrong:
        raise ExportError(f"{path}: a SentencePiece model llama.cpp would tokenize differently: " + "; ".join(wrong))
    if not proto.pieces:
        raise ExportError(f"{path}: a SentencePiece model with no pieces")
    tokens = [p.piece for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]  # NORMAL 1 .. BYTE 6: the same numbers as gguf.TokenType
    special = {key: i for key, i in (("bos", proto.trainer_spec.bos_id), ("eos", proto.trainer_spec.eos_id),
                                     ("pad", proto.trainer_spec.pad_id), ("unk", proto.trainer_spec.unk_id))
               if 0 <= i < len(tokens)}
    tcfg = tokenizer_config(path.parent)
    return {"model": "llama", "pre": "default", "tokens": tokens, "types": types, "merges": None, "scores": scores,
            "add_space_prefix": bool(norm.add_dummy_prefix), "special": special,
            "chat_template": tcfg.get("chat_template"), "tokenizer_file": path,
            "summary": {"model": "llama", "tokens": len(tokens), "special": special,
                        "add_space_prefix": bool(norm.add_dummy_prefix)}}


def tokenizer_config(directory: Path) -> dict[str, Any]:
    path = directory / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def gguf_token_type(kind: str) -> int:
    import gguf

    return {"normal": gguf.TokenType.NORMAL, "control": gguf.TokenType.CONTROL, "unused": gguf.TokenType.UNUSED,
            "user_defined": gguf.TokenType.USER_DEFINED}[kind]


def _tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(llama.cpp name, tensor) for every weight, q and k permuted, the tied head left out."""
    cfg = model.config
    n_kv = cfg.n_kv_heads or cfg.n_heads
    state = model.state_dict()
    out = []
    for key, t in state.items():
        if key in GLOBAL:
            if key == "lm_head.weight" and cfg.tie_embeddings:
                continue
            out.append((f"{GLOBAL[key]}.weight", t))
            continue
        parts = key.split(".")
        if parts[:2] != ["model", "layers"] or ".".join(parts[3:]) not in LAYER:
            raise ExportError(f"the gguf target has no llama.cpp name for the weight {key!r}")
        name = LAYER[".".join(parts[3:])]
        if name == "attn_q":
            t = permute(t, cfg.n_heads)
        elif name == "attn_k":
            t = permute(t, n_kv)
        out.append((f"blk.{parts[2]}.{name}.weight", t))
    return out


def write_gguf(path: Path, model: torch.nn.Module, vocab: dict[str, Any], dtype: torch.dtype, *, quant: str | None,
               name: str) -> dict[str, int]:
    """Write the GGUF file; returns how many tensors went in each type."""
    import gguf

    cfg = model.config
    ftype = {torch.float32: gguf.LlamaFileType.ALL_F32, torch.float16: gguf.LlamaFileType.MOSTLY_F16,
             torch.bfloat16: gguf.LlamaFileType.MOSTLY_BF16}[dtype]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads or cfg.n_heads)
    w.add_rope_dimension_count(cfg.d_model // cfg.n_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{quant}") if quant else ftype)
    w.add_tokenizer_model(vocab["model"])
    w.add_tokenizer_pre(vocab["pre"])
    tokens, types = list(vocab["tokens"]), list(vocab["types"])
    if len(tokens) > cfg.vocab_size:
        raise ExportError(f"the tokenizer has {len(tokens)} ids and the model's vocabulary {cfg.vocab_size} rows; "
                          "llama.cpp needs an embedding row for every token")
    tokens += [f"[PAD{i}]" for i in range(len(tokens), cfg.vocab_size)]  # rows the model has beyond the tokenizer
    types += [gguf_token_type("unused")] * (cfg.vocab_size - len(types))
    w.add_token_list(tokens)
    w.add_token_types(types)
    if vocab["merges"] is not None:
        w.add_token_merges(vocab["merges"])
    if vocab["scores"] is not None:  # a SentencePiece vocabulary: llama.cpp merges pieces by these
        w.add_token_scores(list(vocab["scores"]) + [-1000.0] * (cfg.vocab_size - len(vocab["scores"])))
        w.add_add_space_prefix(vocab["add_space_prefix"])
    special = vocab["special"]
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("pad", w.add_pad_token_id),
                     ("unk", w.add_unk_token_id)):
        if key in special:
            add(special[key])
    w.add_add_bos_token(False)  # lmstack's tokenizers add no BOS on their own (the chat template writes it)
    if vocab["chat_template"]:
        w.add_chat_template(vocab["chat_template"])
    kinds: dict[str, int] = {}
    for tname, t in _tensors(model):
        data = t.detach().float().cpu().numpy()
        if data.ndim == 1:
            kind = gguf.GGMLQuantizationType.F32
            w.add_tensor(tname, data.astype(np.float32))
        elif quant and data.shape[-1] % 32 == 0:
            head = tname == "output.weight" or (tname == "token_embd.weight" and model.config.tie_embeddings)
            kind = getattr(gguf.GGMLQuantizationType, "Q8_0" if head else quant)
            w.add_tensor(tname, gguf.quants.quantize(data, kind), raw_dtype=kind)
        elif dtype == torch.bfloat16:
            kind = gguf.GGMLQuantizationType.BF16
            w.add_tensor(tname, gguf.quants.quantize(data, kind), raw_dtype=kind)
        else:
            kind = gguf.GGMLQuantizationType.F16 if dtype == torch.float16 else gguf.GGMLQuantizationType.F32
            w.add_tensor(tname, data.astype(np.float16 if dtype == torch.float16 else np.float32))
        kinds[kind.name] = kinds.get(kind.name, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return kinds


BLOCK_BOUND = {"Q8_0": 1 / 254, "Q4_0": 1 / 8}  # the largest error of a block, over its amax


def check_tensors(reader: Any, model: torch.nn.Module) -> float:
    """Every tensor of the file, dequantized, against the model's; the largest |difference|. ParityError past
    a cast's rounding, or, for a block type, past its bound in any block of 32 (Q8_0: half a step, amax / 254;
    Q4_0: amax / 8, the value of the opposite sign to the block's largest clipped at 7 steps of amax / 8)."""
    from gguf import dequantize

    want = dict(_tensors(model))
    got = {t.name: t for t in reader.tensors}
    if set(got) != set(want):
        raise ParityError(f"the GGUF file holds {sorted(set(got) ^ set(want))[:4]} where the model differs; nothing "
                          "was written")
    worst = 0.0
    for name, t in got.items():
        ref = want[name].detach().float().cpu()
        val = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(ref.shape)
        err = float((val - ref).abs().max()) if ref.numel() else 0.0
        if t.tensor_type.name in BLOCK_BOUND:  # each block of 32 against its own bound (fp16 scales: +0.1%)
            block_err = (val - ref).abs().reshape(-1, 32).amax(1)
            block_bound = ref.reshape(-1, 32).abs().amax(1) * (BLOCK_BOUND[t.tensor_type.name] + 1e-3) + 1e-6
            i = int((block_err - block_bound).argmax())
            err_i, bound_i = float(block_err[i]), float(block_bound[i])
            if not math.isfinite(err) or err_i > bound_i:
                raise ParityError(f"GGUF tensor {name} ({t.tensor_type.name}) differs from the model's by {err_i:.3g} "
                                  f"> {bound_i:.3g} in block {i}; nothing was written")
        else:
            bound = float(ref.abs().max()) * 2 ** -7 + 1e-6  # bf16's half-ulp; F32/F16 are tighter
            if not math.isfinite(err) or err > bound:
                raise ParityError(f"GGUF tensor {name} ({t.tensor_type.name}) differs from the model's by {err:.3g} "
                                  f"> {bound:.3g}; nothing was written")
        worst = max(worst, err)
    return worst


def check_with_transformers(job: ExportJob, path: Path, vocab: dict[str, Any]) -> dict[str, Any]:
    """Load the file as transformers does and compare logits (and the tokenizer) with the model's."""
    import transformers

    try:
        hf = transformers.LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           torch_dtype=torch.float32).eval()
    except Exception as exc:
        raise ExportError(f"transformers could not load the GGUF file: {type(exc).__name__}: {exc}") from exc
    tokens = job.eval_tokens if job.eval_tokens.numel() >= 2 else torch.arange(min(16, job.spec.max_seq_len))[None]
    tokens = tokens % job.spec.vocab_size
    # transformers dequantizes to float32 and computes there: compare with the model in float32 on the same
    # (fp16/bf16-rounded) weights, so only the file can make a difference
    ref = copy.deepcopy(job.model).float().eval()
    with torch.no_grad():
        ours = ref(tokens).float()
        theirs = hf(tokens).logits.float()
    diff = float((ours - theirs).abs().max())
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
    report: dict[str, Any] = {"reference": "PyTorch model in float32 on the exported weights",
                              "logit_max_abs_diff": diff, "greedy_agreement": agree, "tokens": int(tokens.shape[1])}
    if job.config.quantize == "none":
        report["atol"] = job.atol
        if diff > job.atol:
            raise ParityError(f"transformers' reading of the GGUF file disagrees with the model: max |logit diff| "
                              f"{diff:.3g} > atol {job.atol:g}; nothing was written")
    want = reference_encode(vocab, SAMPLE_TEXT)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    got = tok.encode(SAMPLE_TEXT, add_special_tokens=False)
    if got != want:
        raise ParityError(f"the GGUF file's tokenizer (read by transformers) encodes a sample text as {got[:12]}..., "
                          f"the checkpoint's as {want[:12]}...; nothing was written")
    report["tokenizer_round_trip"] = True
    return report


def reference_encode(vocab: dict[str, Any], text: str) -> list[int]:
    """The checkpoint's own tokenizer's ids for ``text`` (no special tokens): tokenizers for a tokenizer.json,
    sentencepiece for a tokenizer.model."""
    if vocab["model"] == "llama":
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_file=str(vocab["tokenizer_file"])).encode(text)
    import transformers

    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(vocab["tokenizer_file"])).encode(
        text, add_special_tokens=False)
