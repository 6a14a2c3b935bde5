"""``load_tokenizer(spec)``: one entry point from a ``--tokenizer`` value (or DataConfig.tokenizer) to a Tokenizer.

Accepted specs, checked in this order:

- a Tokenizer object: returned as is;
- ``byte``: :class:`~data.tokenizer.byte.ByteTokenizer` (no file);
- ``bpe:<vocab_size>`` / ``sentencepiece:<vocab_size>``: trained on ``texts=`` or ``files=`` (an error says so
  when neither is given);
- a path: ``tokenizer.json`` (HF tokenizers), a ``.model`` (sentencepiece), or a directory holding one of them
  (with an optional ``tokenizer_config.json`` for special tokens and the chat template, as ``save()`` writes);
- a Hugging Face model name (``gpt2``, ``org/name``): resolved only from the local HF cache
  (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``). Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from data.tokenizer.base import CONFIG_FILE, MODEL_FILES, BaseTokenizer, check_paths
from data.tokenizer.byte import ByteTokenizer
from data.tokenizer.hf import BPE_SPECIALS, HFTokenizer, train_bpe
from data.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
from specs.errors import ConfigError

TRAINED_KINDS = ("bpe", "sentencepiece", "spm")  # spec kinds that train a tokenizer (``bpe:8000``)


def load_tokenizer(spec: Any = "byte", *, texts: Iterable[str] | None = None, files: Sequence[str | Path] = (),
                   chat_template: str | None = None) -> BaseTokenizer:
    """Build the tokenizer named by ``spec`` (see the module docstring). Raises ConfigError with the fix."""
    if isinstance(spec, BaseTokenizer) or (not isinstance(spec, (str, os.PathLike)) and hasattr(spec, "encode")):
        return spec
    if isinstance(spec, os.PathLike):
        return _load_path(Path(spec), str(spec), chat_template)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("tokenizer", f"expected 'byte', 'bpe:<vocab_size>', a path or a model name, got {spec!r}")
    spec = spec.strip()
    if spec == "byte":
        return ByteTokenizer(chat_template=chat_template)
    kind, sep, size = spec.partition(":")
    if sep and kind in TRAINED_KINDS:
        if not size.isdigit():
            raise ConfigError("tokenizer", f"{spec!r}: expected {kind}:<vocab_size> with an integer, e.g. {kind}:8000")
        if texts is None and not files:
            raise ConfigError("tokenizer", f"{spec!r} trains a tokenizer on the input text, but none was given here "
                              "(pass texts= or files=; corpus.cli trains it on --input; or use 'byte' or a path)")
        if kind == "bpe":
            return train_bpe(texts, files=files, vocab_size=int(size), spec=spec, chat_template=chat_template)
        if files:
            texts = _iter_lines(check_paths(files))
        return train_sentencepiece(texts, vocab_size=int(size), spec=spec, chat_template=chat_template)
    path = Path(spec).expanduser()
    if path.exists():
        return _load_path(path, spec, chat_template)
    if _looks_like_path(spec):
        raise ConfigError("tokenizer", f"{spec!r} does not exist (expected a tokenizer.json, a .model or a directory)")
    cached = find_in_hf_cache(spec)
    if cached is None:
        raise ConfigError("tokenizer", (
            f"{spec!r} is not 'byte', 'bpe:<vocab_size>', an existing path, nor a model in the local Hugging Face "
            f"cache (searched {', '.join(str(r) for r in hf_cache_roots())}). Nothing is downloaded at run time: "
            f"pass a path to a tokenizer.json / tokenizer.model (or a directory holding one), copy the model into "
            f"the HF cache (e.g. `huggingface-cli download {spec} tokenizer.json tokenizer_config.json` on a "
            f"machine with network access), or use 'byte' or 'bpe:8000'"))
    return _load_path(cached, spec, chat_template)


def check_spec(spec: Any) -> None:
    """The ConfigError :func:`load_tokenizer` would raise for ``spec``, without training anything: a trained spec
    (``bpe:8000``) is checked for its size (bpe: the 256 bytes and the specials at least); any other spec is loaded,
    which is quick. For tools that train on text they first spend time collecting (``corpus.cli build``)."""
    if isinstance(spec, str):
        kind, sep, size = spec.strip().partition(":")
        if sep and kind in TRAINED_KINDS:
            if not size.isdigit():
                raise ConfigError("tokenizer", f"{spec!r}: expected {kind}:<vocab_size> with an integer, e.g. "
                                               f"{kind}:8000")
            n_min = 256 + len(BPE_SPECIALS)
            if kind == "bpe" and int(size) < n_min:
                raise ConfigError("tokenizer", f"bpe vocab_size must be >= {n_min} (256 bytes + specials), got "
                                               f"{int(size)}")
            return
    load_tokenizer(spec)


def _iter_lines(files: Sequence[str | Path]) -> Iterable[str]:
    for f in files:
        with open(f, encoding="utf-8") as fh:
            yield from fh


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith((".json", ".model")) or os.sep + os.sep in spec


def _load_path(path: Path, spec: str, chat_template: str | None) -> BaseTokenizer:
    if path.is_dir():
        cfg = _read_config(path / CONFIG_FILE)
        template = chat_template or _template(cfg)
        if cfg.get("lmstack", {}).get("kind") == "byte":
            return ByteTokenizer(spec=spec, chat_template=template)
        for name in MODEL_FILES:
            if (path / name).is_file():
                return _load_file(path / name, spec, cfg, template)
        raise ConfigError("tokenizer", f"directory {path} holds none of {', '.join(MODEL_FILES)} "
                          f"(nor a {CONFIG_FILE} of a byte tokenizer)")
    cfg = _read_config(path.parent / CONFIG_FILE)
    return _load_file(path, spec, cfg, chat_template or _template(cfg))


def _load_file(path: Path, spec: str, cfg: dict[str, Any], template: str | None) -> BaseTokenizer:
    if path.suffix == ".model":
        return SentencePieceTokenizer.from_file(path, spec=spec, chat_template=template)
    if path.suffix == ".json":
        return HFTokenizer.from_file(path, spec=spec, config=cfg, chat_template=template)
    raise ConfigError("tokenizer", f"{path}: expected a tokenizer.json (HF tokenizers) or a .model (sentencepiece)")


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("tokenizer", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError("tokenizer", f"{path}: expected a JSON object")
    return cfg


def _template(cfg: dict[str, Any]) -> str | None:
    from data.tokenizer.hf import _chat_template

    return _chat_template(cfg.get("chat_template"))


def hf_cache_roots() -> list[Path]:
    """Where the Hugging Face hub cache may be, in huggingface_hub's order of precedence."""
    roots = []
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        roots.append(Path(os.environ["HF_HOME"]) / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    roots.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    return list(dict.fromkeys(p.expanduser() for p in roots))


def find_in_hf_cache(name: str) -> Path | None:
    """The snapshot directory of model ``name`` in the local HF cache that holds a tokenizer file, or None."""
    for root in hf_cache_roots():
        repos = [root / ("models--" + name.replace("/", "--"))]
        if "/" not in name and root.is_dir():
            repos += sorted(root.glob(f"models--*--{name}"))  # 'gpt2' is cached as openai-community/gpt2 too
        for repo in repos:
            snap = _snapshot(repo)
            if snap is not None:
                return snap
    return None


def _snapshot(repo: Path) -> Path | None:
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    candidates = []
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidates.append(snaps / ref.read_text().strip())
    candidates += sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in candidates:
        if any((snap / f).is_file() for f in MODEL_FILES):
            return snap
    return None
