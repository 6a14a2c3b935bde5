"""The corpus build: read -> normalise -> quality filter -> exact dedup -> near dedup -> redact PII -> tokenize ->
shards + manifest + report, written atomically through ``data.shards.ShardWriter``.

Per-document work (normalisation, quality, MinHash, PII) runs in a process pool when ``workers > 1``; decisions
that depend on earlier documents (dedup) are taken in input order in the main process, so the output is
byte-identical for any number of workers. Kept documents are spooled to a temporary file, because a
``bpe:<vocab>`` tokenizer is trained on them before anything is tokenized.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from corpus.dedup import NearDuplicateIndex, exact_key, minhash, shingle_hashes
from corpus.licenses import NOASSERTION, header_license
from corpus.normalize import normalize
from corpus.pii import PiiRedactor, check_phone_region
from corpus.quality import QualityConfig, check_quality
from corpus.report import write_reports
from corpus.sources import (
    InputInventory,
    InputIssue,
    RawDocument,
    directory_license,
    embedded_documents,
    read_file,
    scan,
)
from data.build import write_texts
from data.embedded import DEFAULT_BUDGET_BYTES
from data.manifest import tokenizer_entry
from data.shards import ShardWriter, check_outdir
from data.tokenizer import load_tokenizer
from data.tokenizer.loading import check_spec
from specs.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    input: str | None  # None: the embedded default (Python stdlib)
    outdir: str
    tokenizer: str = "byte"
    shard_size_tokens: int = 1 << 20
    redact_pii: bool = False
    dedup: bool = False
    near_dup_threshold: float = 0.8
    num_perm: int = 128
    shingle_size: int = 5
    quality: QualityConfig = field(default_factory=QualityConfig.default)
    on_error: Literal["skip", "fail"] = "skip"
    workers: int = 1
    overwrite: bool = False
    embedded_budget_bytes: int = DEFAULT_BUDGET_BYTES
    phone_region: str = "US"
    add_bos: bool = False
    add_eos: bool = True
    progress: bool | None = None  # None: only when stderr is a terminal

    def __post_init__(self) -> None:
        # Paths are the CLI's flags (shingle_size has none). A near_dup_threshold that MinHash LSH cannot band
        # with num_perm permutations is caught by build(), which needs datasketch for that.
        for name, v, lo in (("--shard-size-tokens", self.shard_size_tokens, 1), ("--num-perm", self.num_perm, 2),
                            ("shingle_size", self.shingle_size, 1), ("--workers", self.workers, 1),
                            ("--embedded-budget-bytes", self.embedded_budget_bytes, 1)):
            if not isinstance(v, int) or v < lo:
                raise ConfigError(name, f"must be an integer >= {lo}, got {v!r}")
        if not 0 < self.near_dup_threshold < 1:
            raise ConfigError("--near-dup-threshold", f"must be in (0, 1), got {self.near_dup_threshold} (a Jaccard "
                              "similarity; identical documents are removed by the exact dedup)")
        check_phone_region(self.phone_region, "--phone-region")

    def deterministic_dict(self) -> dict[str, Any]:
        """The settings that decide the output (recorded in the manifest; no paths, no worker count)."""
        d = asdict(self)
        for k in ("input", "outdir", "workers", "overwrite", "progress"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class _Processed:
    text: str
    key: str
    rejected: str | None
    signature: Any
    pii: dict[str, int]
    header_license: str | None


class _Worker:
    """Per-document work, picklable for the process pool."""

    def __init__(self, cfg: BuildConfig) -> None:
        self.cfg = cfg
        self._redactor: PiiRedactor | None = None

    def __call__(self, text: str) -> _Processed:
        cfg = self.cfg
        text = normalize(text)
        key = exact_key(text)
        rejected = check_quality(text, cfg.quality)
        sig = None
        if cfg.dedup and rejected is None:
            sig = minhash(shingle_hashes(text, cfg.shingle_size), cfg.num_perm)
        pii: dict[str, int] = {}
        if cfg.redact_pii and rejected is None:
            if self._redactor is None:
                self._redactor = PiiRedactor(phone_region=cfg.phone_region)
            text, counts = self._redactor(text)
            pii = dict(counts)
        return _Processed(text, key, rejected, sig, pii, header_license(text))


@dataclass
class BuildStats:
    documents_read: int = 0
    documents_kept: int = 0
    bytes_read: int = 0
    bytes_kept: int = 0
    removed: Counter[str] = field(default_factory=Counter)
    pii: Counter[str] = field(default_factory=Counter)
    licenses: dict[str, dict[str, int]] = field(default_factory=dict)
    per_file: dict[str, Counter[str]] = field(default_factory=dict)  # file -> license -> kept documents
    by_source: Counter[str] = field(default_factory=Counter)  # record 'source' (Dolma) or file -> kept documents
    issues: list[InputIssue] = field(default_factory=list)
    near_duplicates: list[dict[str, str]] = field(default_factory=list)


def _progress(cfg: BuildConfig, desc: str, total: int | None = None) -> Any:
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    return tqdm(total=total, desc=desc, unit="doc", disable=not enabled, file=sys.stderr)


def _read_all(cfg: BuildConfig) -> tuple[InputInventory, Iterator[RawDocument | InputIssue]]:
    if cfg.input is None:
        return embedded_documents(cfg.embedded_budget_bytes)
    root = Path(cfg.input).expanduser()
    inv = scan(root)

    def gen() -> Iterator[RawDocument | InputIssue]:
        for rel in inv.files:
            yield from read_file(root, rel, inv)

    return inv, gen()


def build(cfg: BuildConfig) -> dict[str, Any]:
    """Run the build; returns the report dict (also written as report.json / report.md in ``outdir``)."""
    t0 = time.perf_counter()
    out = check_outdir(cfg.outdir, overwrite=cfg.overwrite, name="--outdir")
    check_spec(cfg.tokenizer)  # before curation: a bad spec fails now, not after the whole corpus is read
    near = _near_index(cfg) if cfg.dedup else None
    inv, items = _read_all(cfg)
    stats = BuildStats()
    seen_exact: dict[str, str] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.spool-", dir=out.parent) as spool_dir:
        spool = Path(spool_dir) / "kept.jsonl"
        with open(spool, "w", encoding="utf-8") as fh, _progress(cfg, "curate") as bar:
            for raw, res in _processed(cfg, items, stats):
                bar.update(1)
                _decide(cfg, raw, res, inv, stats, seen_exact, near, fh)
        if stats.documents_kept == 0:
            raise ConfigError("--input", f"no document survived: read {stats.documents_read}, removed "
                              f"{dict(stats.removed)}, {len(stats.issues)} input errors")
        report = _write(cfg, inv, stats, spool, t0)
    return report


def _near_index(cfg: BuildConfig) -> NearDuplicateIndex:
    try:
        return NearDuplicateIndex(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
    except ValueError as exc:  # datasketch: fewer than 2 LSH bands for this threshold and num_perm
        raise ConfigError("--num-perm", f"{cfg.num_perm} permutations are too few for --near-dup-threshold "
                          f"{cfg.near_dup_threshold} (datasketch: {exc}); raise --num-perm or lower the "
                          "threshold") from None


def _processed(cfg: BuildConfig, items: Iterator[RawDocument | InputIssue],
               stats: BuildStats) -> Iterator[tuple[RawDocument, _Processed]]:
    """(document, processed) in input order; issues are recorded (or fatal with --on-error fail)."""
    pending: collections.deque[RawDocument] = collections.deque()
    fatal: list[InputIssue] = []

    def texts() -> Iterator[str]:
        # Runs in the pool's feeder thread when workers > 1: it must not raise, so a fatal issue ends the input.
        for it in items:
            if isinstance(it, InputIssue):
                if cfg.on_error == "fail":
                    fatal.append(it)
                    return
                stats.issues.append(it)
                continue
            pending.append(it)
            yield it.text

    worker = _Worker(cfg)
    if cfg.workers == 1:
        for res in map(worker, texts()):
            yield pending.popleft(), res
    else:
        import multiprocessing as mp

        with mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(cfg.workers) as pool:
            for res in pool.imap(worker, texts(), chunksize=8):
                yield pending.popleft(), res
    if fatal:
        raise ConfigError("--input", f"{fatal[0].where()}: {fatal[0].error} (--on-error skip records bad input "
                          "in the report and continues)")


def _decide(cfg: BuildConfig, raw: RawDocument, res: _Processed, inv: InputInventory, stats: BuildStats,
            seen_exact: dict[str, str], near: NearDuplicateIndex | None, fh: Any) -> None:
    stats.documents_read += 1
    nbytes = len(raw.text.encode("utf-8"))
    stats.bytes_read += nbytes
    stats.per_file.setdefault(raw.file, Counter())
    if res.rejected is not None:
        stats.removed[f"quality:{res.rejected}"] += 1
        return
    if cfg.dedup:
        if res.key in seen_exact:
            stats.removed["exact_duplicate"] += 1
            return
        seen_exact[res.key] = raw.id
        dup_of = near.seen(raw.id, res.signature) if near is not None else None
        if dup_of is not None:
            stats.removed["near_duplicate"] += 1
            if len(stats.near_duplicates) < 100:
                stats.near_duplicates.append({"document": raw.id, "duplicate_of": dup_of})
            return
    lic = res.header_license or raw.license_hint or directory_license(inv, raw.file) or NOASSERTION
    stats.documents_kept += 1
    stats.bytes_kept += len(res.text.encode("utf-8"))
    stats.pii.update(res.pii)
    entry = stats.licenses.setdefault(lic, {"documents": 0, "bytes": 0})
    entry["documents"] += 1
    entry["bytes"] += nbytes
    stats.per_file[raw.file][lic] += 1
    stats.by_source[raw.source] += 1
    fh.write(json.dumps(res.text, ensure_ascii=False) + "\n")


def _spooled(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def _sources(inv: InputInventory, stats: BuildStats) -> list[dict[str, Any]]:
    out = []
    for rel in inv.files:
        if rel not in inv.file_sha256:
            continue  # unreadable: listed in the report's errors
        kept = stats.per_file.get(rel, Counter())
        lic = kept.most_common(1)[0][0] if kept else directory_license(inv, rel)
        entry = {"name": rel, "sha256": inv.file_sha256[rel], "bytes": inv.file_bytes[rel], "license": lic,
                 "documents": sum(kept.values())}
        if len(kept) > 1:
            entry["licenses"] = dict(sorted(kept.items()))
        out.append(entry)
    return out


def _created_by() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"lmstack-corpus {version('lmstack-corpus')}"
    except PackageNotFoundError:
        return "lmstack-corpus"


def _write(cfg: BuildConfig, inv: InputInventory, stats: BuildStats, spool: Path, t0: float) -> dict[str, Any]:
    tok = load_tokenizer(cfg.tokenizer, texts=_spooled(spool))
    bos, eos = cfg.add_bos and tok.bos_id is not None, cfg.add_eos and tok.eos_id is not None
    writer = ShardWriter(cfg.outdir, vocab_size=tok.vocab_size, tokenizer=tokenizer_entry(tok, path="tokenizer"),
                         shard_size_tokens=cfg.shard_size_tokens, sources=_sources(inv, stats),
                         separators={"bos": bos, "eos": eos}, created_by=_created_by(), overwrite=cfg.overwrite)
    with writer:
        with _progress(cfg, "tokenize", total=stats.documents_kept) as bar:
            def counted() -> Iterator[str]:
                for t in _spooled(spool):
                    bar.update(1)
                    yield t

            write_texts(writer, counted(), tok, add_bos=bos, add_eos=eos, batch_size=256)
        tok.save(writer.staging / "tokenizer")
        summary = {"config": cfg.deterministic_dict(), "documents_read": stats.documents_read,
                   "documents_kept": stats.documents_kept, "removed": dict(sorted(stats.removed.items())),
                   "input_errors": len(stats.issues), "pii": dict(sorted(stats.pii.items())),
                   "licenses": dict(sorted(stats.licenses.items()))}
        writer.extra = {"corpus": json.loads(json.dumps(summary))}
        report = write_reports(writer, cfg=cfg, inv=inv, stats=stats, tokenizer=tok,
                               seconds=time.perf_counter() - t0)
    return report

