"""Text embedders for dense retrieval, loaded by name.

An embedder maps texts to L2-normalised float32 vectors (N, D). Two kinds of model directory load:
- ``lmstack:DIR``: an lmstack encoder checkpoint (``arch: encoder``, :class:`model.encoder.TransformerEncoder`,
  reached through the ``lmstack.models`` plugin group) with its tokenizer (``lmstack.tokenizers``' ``auto``),
  pooled as the checkpoint says;
- ``hf:DIR``: a sentence-transformers directory (BGE, E5, GTE, MiniLM, ...) or any transformers encoder, read the
  way sentence-transformers reads it: ``modules.json`` names the transformer, pooling (``1_Pooling/config.json``:
  mean, CLS, last token); ``config_sentence_transformers.json`` the query and document prompts
  (E5's "query: " / "passage: "). Needs ``pip install lmstack-rag[hf]`` (transformers).
Vectors are always L2-normalised (retrieval scores are cosine similarities, sentence-transformers' default).
A bare directory is taken as ``hf`` when it has ``modules.json`` and as ``lmstack`` otherwise. Every embedder
has a ``fingerprint`` (a hash of its weights and pooling) that an index records, so a query is never embedded by a
different model than the index's passages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from specs.errors import ConfigError
from specs.plugins import resolve

KINDS = ("query", "document")


class Embedder(Protocol):
    spec: str  # how load_embedder finds it again ("hf:/models/bge-small")
    fingerprint: str
    dim: int

    def embed(self, texts: Sequence[str], *, kind: str = "document") -> np.ndarray: ...


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown embedding kind {kind!r}; valid: {', '.join(KINDS)}")


def _sha256_files(paths: Sequence[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in sorted(paths):
        h.update(p.name.encode())
        with p.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class LmstackEmbedder:
    """An lmstack encoder checkpoint: ``embed(texts)`` pools its last hidden states as the checkpoint was trained."""

    def __init__(self, directory: str | Path, *, device: str = "auto", batch_size: int = 32,
                 max_tokens: int | None = None):
        path = Path(directory)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ConfigError("embedder", f"{path} has no config.json: not an lmstack checkpoint directory")
        arch = json.loads(cfg_file.read_text()).get("arch", "transformer")
        if arch != "encoder":
            raise ConfigError("embedder", f"{path} holds a {arch!r} model; dense retrieval needs an embedding model "
                              "(an lmstack encoder checkpoint, arch 'encoder', or a sentence-transformers directory "
                              "as hf:DIR)")
        self.device = _pick_device(device)
        self.model = resolve("lmstack.models", arch).from_pretrained(path, device=self.device).eval()
        self.tokenizer = resolve("lmstack.tokenizers", "auto")(str(path))
        self.batch_size = batch_size
        self.max_tokens = min(max_tokens or self.model.config.max_seq_len, self.model.config.max_seq_len)
        self.dim = int(self.model.config.d_model)
        self.spec = f"lmstack:{path.resolve()}"
        card = path / "modelcard.json"
        hashes = json.loads(card.read_text()).get("files", {}) if card.is_file() else {}
        self.fingerprint = (hashlib.sha256(json.dumps([hashes, self.model.pooling], sort_keys=True).encode())
                            .hexdigest() if hashes else _sha256_files(list(path.glob("*.safetensors")),
                                                                      self.model.pooling))

    @torch.no_grad()
    def embed(self, texts: Sequence[str], *, kind: str = "document") -> np.ndarray:
        _check_kind(kind)
        out = []
        for i in range(0, len(texts), self.batch_size):
            rows = [self.tokenizer.encode(t)[: self.max_tokens] or [0] for t in texts[i:i + self.batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            vec = self.model.embed(ids.to(self.device), mask.to(self.device), normalize=True)
            out.append(vec.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class HFEmbedder:
    """A sentence-transformers (or plain transformers) directory, pooled and prompted as sentence-transformers
    would."""

    POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}
    MODES = {"mean": "mean", "cls": "cls", "lasttoken": "last"}

    def __init__(self, directory: str | Path, *, device: str = "auto", batch_size: int = 32,
                 max_tokens: int | None = None):
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:  # the optional extra
            raise ConfigError("embedder", "hf embedders need transformers: pip install 'lmstack-rag[hf]'") from exc
        path = Path(directory)
        if not path.is_dir():
            raise ConfigError("embedder", f"{path} is not a directory")
        modules = json.loads((path / "modules.json").read_text()) if (path / "modules.json").is_file() else []
        sub = {m["type"].rsplit(".", 1)[-1]: path / m["path"] for m in modules}
        tf_dir = sub.get("Transformer", path)
        pool_cfg = sub.get("Pooling", path / "1_Pooling") / "config.json"
        self.pooling = "mean"
        if pool_cfg.is_file():
            self.pooling = self._pooling(pool_cfg)
        st_cfg = path / "config_sentence_transformers.json"
        prompts = json.loads(st_cfg.read_text()).get("prompts", {}) if st_cfg.is_file() else {}
        self.prompts = {"query": prompts.get("query", ""), "document": prompts.get("document",
                                                                                   prompts.get("passage", ""))}
        sb_cfg = tf_dir / "sentence_bert_config.json"
        seq = json.loads(sb_cfg.read_text()).get("max_seq_length") if sb_cfg.is_file() else None
        self.device = _pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(tf_dir)
        self.model = AutoModel.from_pretrained(tf_dir).to(self.device).eval()
        self.max_tokens = max_tokens or seq or min(self.tokenizer.model_max_length, 512)
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self.spec = f"hf:{path.resolve()}"
        weights = [p for p in tf_dir.iterdir() if p.suffix in (".safetensors", ".bin")]
        self.fingerprint = _sha256_files(weights, json.dumps([self.pooling, self.prompts]))

    @classmethod
    def _pooling(cls, cfg_file: Path) -> str:
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("include_prompt") is False:
            raise ConfigError("embedder", f"{cfg_file}: include_prompt false (pooling that skips the prompt's "
                              "tokens) is not supported")
        if "pooling_mode" in cfg:  # sentence-transformers 5+
            mode = cfg["pooling_mode"]
            if mode not in cls.MODES:
                raise ConfigError("embedder", f"{cfg_file}: pooling_mode {mode!r} is not supported; supported: "
                                  f"{', '.join(cls.MODES)}")
            return cls.MODES[mode]
        picked = [v for k, v in cls.POOLINGS.items() if cfg.get(k)]
        others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in cls.POOLINGS]
        if len(picked) != 1 or others:
            raise ConfigError("embedder", f"{cfg_file}: exactly one of {', '.join(cls.POOLINGS)} must be set"
                              + (f" (also set, unsupported: {', '.join(others)})" if others else ""))
        return picked[0]

    @torch.no_grad()
    def embed(self, texts: Sequence[str], *, kind: str = "document") -> np.ndarray:
        _check_kind(kind)
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = [self.prompts[kind] + t for t in texts[i:i + self.batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt").to(self.device)
            h_BTD = self.model(**enc).last_hidden_state
            mask_BT = enc["attention_mask"]
            if self.pooling == "mean":
                w = mask_BT[..., None].to(h_BTD.dtype)
                vec = (h_BTD * w).sum(1) / w.sum(1).clamp_min(1e-9)
            elif self.pooling == "cls":
                vec = h_BTD[:, 0]
            else:  # the last real token (right padding)
                vec = h_BTD[torch.arange(len(batch), device=h_BTD.device), mask_BT.sum(1) - 1]
            out.append(F.normalize(vec, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def load_embedder(spec: str, **kwargs: Any) -> Embedder:
    """``lmstack:DIR``, ``hf:DIR``, a bare directory, or ``NAME:ARG`` for a plugin of ``lmstack.embedders``."""
    kind, sep, arg = spec.partition(":")
    if not sep or len(kind) == 1:  # a bare path (or a Windows drive letter)
        arg = spec
        kind = "hf" if (Path(spec) / "modules.json").is_file() else "lmstack"
    if kind == "lmstack":
        return LmstackEmbedder(arg, **kwargs)
    if kind == "hf":
        return HFEmbedder(arg, **kwargs)
    return resolve("lmstack.embedders", kind)(arg, **kwargs)
