"""``lmstack bundle``: reproducible, verified model tarballs: a checkpoint, its governance artifacts, a manifest.

``lmstack bundle build CKPT -o NAME.tar.gz --artifacts artifacts/ [--sign-key KEY.pem]`` writes::

    bundle.json     the manifest: format version, name, what it was built from, the path, sha256 and bytes of every
                    other member, and the lmstack distributions (with versions) that built it
    bundle.sig      with --sign-key: a DSSE v1 envelope (Ed25519 over PAE(type, manifest bytes)), as lmstack-registry
                    signs manifests, so keys from ``openssl genpkey -algorithm ed25519`` work
    MODEL_CARD.md   artifacts/MODEL_CARD.md when there is one, else rendered from model/modelcard.json
    artifacts/...   the --artifacts directory (lmstack-governance's SBOM, CHECKSUMS.sha256, RECEIPT.json, ...)
    model/...       the checkpoint's files, checked against its modelcard.json first

The archive is reproducible in the sense of https://reproducible-builds.org/docs/archives/: members sorted, mtime
$SOURCE_DATE_EPOCH (else 0), uid/gid 0 with empty owner names, modes 0644 (0755 for owner-executable files), no
directory entries, gzip header without name or time. Hidden files (``.name``) are left out.
``verify`` refuses unsafe members (absolute, ``..``, links, devices) before reading any content, then hashes every
member against the manifest; ``unpack`` verifies, extracts (tarfile's ``data`` filter) into a temporary sibling,
hashes what landed on disk and renames it into place. Those live in :mod:`pack.bundle_check` and are re-exported here.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pack.bundle_check import (
    CARD_MD,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PAYLOAD_TYPE,
    SIGNATURE,
    BundleInfo,
    check_signature,
    file_sha256,
    read_manifest,
    signing_api,
    tar_member,
    unpack,
    verify,
)
from pack.errors import PackError
from specs.errors import ConfigError

__all__ = ["CARD_MD", "FORMAT", "FORMAT_VERSION", "MANIFEST", "PAYLOAD_TYPE", "SIGNATURE", "BundleInfo", "build",
           "check_signature", "read_manifest", "source_date_epoch", "unpack", "verify"]
# ---------------------------------------------------------------------------------------------------------- build


def _walk(root: Path) -> list[tuple[str, Path]]:
    """``(posix path relative to root, file)`` for every non-hidden file under root, sorted; symlinked files are
    followed (a Hugging Face cache snapshot is all links), symlinked directories and special files are refused."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise PackError(f"{Path(dirpath) / d}: a symlinked directory; expected plain directories and files "
                                "in a bundle's inputs (copy it in instead)")
        for name in sorted(f for f in filenames if not f.startswith(".")):
            p = Path(dirpath) / name
            if not p.is_file():
                raise PackError(f"{p}: not a regular file (a broken link, socket or device); expected files only")
            rel = p.relative_to(root).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise PackError(f"{p}: file name is not valid UTF-8; rename it") from None
            out.append((rel, p))
    return out


def _check_card(ckpt: Path, hashes: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """The checkpoint's model card as a dict, after checking every file it lists (modelcard.verify's checks, on
    hashes computed once); a mismatch refuses the build, naming the file."""
    from specs.modelcard import ModelCard

    card = ModelCard.load(ckpt / "modelcard.json")
    for name, expect in card.files.items():
        where = ckpt / name
        if name not in hashes:
            raise PackError(f"{where}: listed in modelcard.json but missing; refusing to bundle a checkpoint that "
                            "fails its model card")
        sha, size = hashes[name]
        if expect.bytes >= 0 and size != expect.bytes:
            raise PackError(f"{where}: size {size} bytes, the model card says {expect.bytes} (truncated or replaced); "
                            "refusing to bundle a checkpoint that fails its model card")
        if sha != expect.sha256:
            raise PackError(f"{where}: sha256 {sha[:16]}... does not match the model card's {expect.sha256[:16]}... "
                            "(changed since it was saved); refusing to bundle a checkpoint that fails its model card")
    return card.to_dict()


def _render_card(name: str, card: dict[str, Any] | None, members: list[dict[str, Any]]) -> str:
    """A minimal MODEL_CARD.md for a checkpoint without governance's card: deterministic (no dates, no paths)."""
    lines = [f"# {name}", "", "Model bundle written by `lmstack bundle build`; `lmstack bundle verify` checks every "
             "file below against bundle.json.", ""]
    if card is not None:
        cfg = card.get("config") or {}
        keys = ("arch", "d_model", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len", "pos_encoding")
        shown = [(k, cfg[k]) for k in keys if k in cfg]
        if shown:
            lines += ["## Model", "", "| field | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in shown), ""]
        if card.get("lineage"):
            lines += ["## Lineage", ""]
            lines += [f"- {e.get('kind')}: {e.get('name')}" + (f" (sha256 {e['sha256']})" if e.get("sha256") else "")
                      for e in card["lineage"]]
            lines.append("")
    else:
        lines += ["Source: a Hugging Face model directory (no modelcard.json).", ""]
    lines += ["## Files", "", "| path | bytes | sha256 |", "|---|---:|---|"]
    lines += [f"| {m['path']} | {m['bytes']} | `{m['sha256']}` |" for m in members]
    return "\n".join(lines) + "\n"


def source_date_epoch() -> int:
    """``$SOURCE_DATE_EPOCH`` (seconds since 1970, https://reproducible-builds.org/specs/source-date-epoch/), else 0."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise ConfigError("SOURCE_DATE_EPOCH", f"expected a non-negative integer (seconds since 1970), got {raw!r}")
    return int(raw)


class _HashingReader:
    """Reads a file for tarfile.addfile while hashing it, so a file changed since it was hashed is caught."""

    def __init__(self, f: IO[bytes]):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        block = self.f.read(n)
        self.h.update(block)
        self.n += len(block)
        return block


def _inside(path: Path, root: Path) -> bool:
    return path.resolve() == root.resolve() or root.resolve() in path.resolve().parents


def build(ckpt_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
          artifacts: str | os.PathLike[str] | None = None, name: str | None = None,
          sign_key: str | os.PathLike[str] | None = None) -> BundleInfo:
    """Write the bundle ``out`` (gzip tarball) from a checkpoint directory and an optional artifacts directory.

    An lmstack checkpoint (with modelcard.json) must match its card; a Hugging Face directory is hashed as found.
    Nothing is written unless every input checks out; ``out`` is replaced atomically (temp file, then rename).
    """
    ckpt, out_p = Path(ckpt_dir), Path(out)
    if not ckpt.is_dir():
        raise PackError(f"{ckpt}: no such checkpoint directory; expected a directory with config.json")
    if not (ckpt / "config.json").is_file():
        raise PackError(f"{ckpt}: no config.json; expected an lmstack checkpoint (save_pretrained) or a Hugging Face "
                        "model directory")
    art = Path(artifacts) if artifacts is not None else None
    if art is not None and not art.is_dir():
        raise PackError(f"--artifacts {art}: no such directory; expected the release's artifacts directory")
    for root in (ckpt, art):
        if root is not None and _inside(out_p, root):
            raise PackError(f"-o {out_p} lies inside {root}, which is being bundled; write the bundle elsewhere")
    key = signing_api().load_private_key(sign_key) if sign_key is not None else None

    files = [(f"model/{rel}", p) for rel, p in _walk(ckpt)]
    files += [(f"artifacts/{rel}", p) for rel, p in _walk(art)] if art is not None else []
    hashes = {path: file_sha256(p) for path, p in files}
    card = None
    if (ckpt / "modelcard.json").is_file():
        card = _check_card(ckpt, {k.removeprefix("model/"): v for k, v in hashes.items() if k.startswith("model/")})
    bundle_name = name or (card["name"] if card else ckpt.resolve().name)
    if not bundle_name.strip():
        raise PackError("--name: expected a non-empty bundle name")
    members = [{"path": path, "sha256": hashes[path][0], "bytes": hashes[path][1]} for path, _ in files]
    if art is not None and (art / CARD_MD).is_file():
        card_md = (art / CARD_MD).read_bytes()
    else:
        card_md = _render_card(bundle_name, card, members).encode("utf-8")
    members.append({"path": CARD_MD, "sha256": hashlib.sha256(card_md).hexdigest(), "bytes": len(card_md)})
    members.sort(key=lambda m: m["path"])

    from pack.cli import lmstack_distributions

    epoch = source_date_epoch()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": bundle_name,
        "created_from": {
            "checkpoint": ckpt.resolve().name, "checkpoint_format": "lmstack" if card else "huggingface",
            "model_card": None if card is None else {"name": card["name"], "version": card["version"],
                                                     "sha256": hashes["model/modelcard.json"][0]},
            "artifacts": None if art is None else art.resolve().name,
        },
        "source_date_epoch": epoch,
        "built_with": lmstack_distributions(),
        "members": members,
    }
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    sig = _sign(body, key) if key is not None else None
    sources = dict(files)

    try:
        out_p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out_p.name}.", suffix=".tmp", dir=out_p.parent)
    except OSError as exc:
        raise PackError(f"cannot write {out_p}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:
                tf.addfile(tar_member(MANIFEST, len(body), 0o644, epoch), io.BytesIO(body))
                if sig is not None:
                    tf.addfile(tar_member(SIGNATURE, len(sig), 0o644, epoch), io.BytesIO(sig))
                for m in members:
                    _add_member(tf, m, sources.get(m["path"]), card_md, epoch)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_p)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PackError(f"cannot write {out_p}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return BundleInfo(out_p, manifest, body, sig, signing_api().key_id(key) if key is not None else None)


def _add_member(tf: tarfile.TarFile, m: dict[str, Any], src: Path | None, card_md: bytes, epoch: int) -> None:
    if src is None:  # MODEL_CARD.md at the top
        tf.addfile(tar_member(m["path"], len(card_md), 0o644, epoch), io.BytesIO(card_md))
        return
    mode = 0o755 if src.stat().st_mode & 0o100 else 0o644
    with open(src, "rb") as f:
        reader = _HashingReader(f)
        try:
            tf.addfile(tar_member(m["path"], m["bytes"], mode, epoch), reader)  # type: ignore[arg-type]
        except OSError:
            if reader.n >= m["bytes"]:
                raise
            extra = b"shrank"  # tarfile: "unexpected end of data"
        else:
            extra = f.read(1)
    if extra or reader.h.hexdigest() != m["sha256"]:
        raise PackError(f"{src}: changed while it was being bundled; nothing was written, run the build again")



def _sign(body: bytes, key: Any) -> bytes:
    signing = signing_api()
    sig = key.sign(signing.pae(PAYLOAD_TYPE, body))
    env = {"payload": base64.b64encode(body).decode("ascii"), "payloadType": PAYLOAD_TYPE,
           "signatures": [signing.signature_entry(signing.key_id(key), sig)]}
    return (json.dumps(env, indent=2, sort_keys=True) + "\n").encode("utf-8")



# ------------------------------------------------------------------------------------------------------------- CLI


def _describe(info: BundleInfo) -> Iterator[str]:
    m, src = info.manifest, info.manifest.get("created_from") or {}
    total = sum(x["bytes"] for x in m["members"])
    yield f"bundle    {info.path}"
    yield f"name      {m.get('name')}"
    yield f"format    {m['format']} v{m['format_version']}, manifest sha256 {info.digest}"
    yield (f"from      {src.get('checkpoint')} ({src.get('checkpoint_format')})"
           + (f", artifacts {src['artifacts']}" if src.get("artifacts") else ""))
    yield f"signed    {'yes (' + SIGNATURE + ')' if info.signature is not None else 'no'}"
    yield "built by  " + ", ".join(f"{k} {v}" for k, v in (m.get("built_with") or {}).items())
    yield f"members   {len(m['members'])} files, {total} bytes"
    for x in m["members"]:
        yield f"  {x['bytes']:>12}  {x['sha256'][:16]}  {x['path']}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``lmstack bundle build|verify|unpack|inspect``."""
    sub = p.add_subparsers(dest="action", required=True, metavar="{build,verify,unpack,inspect}")
    b = sub.add_parser("build", help="bundle a checkpoint and its artifacts into a reproducible .tar.gz")
    b.add_argument("ckpt", help="lmstack checkpoint directory (with modelcard.json) or Hugging Face model directory")
    b.add_argument("-o", "--out", required=True, help="the bundle to write, e.g. model.tar.gz")
    b.add_argument("--artifacts", help="release artifacts directory (governance's SBOM, CHECKSUMS, MODEL_CARD.md)")
    b.add_argument("--name", help="bundle name (default: the model card's name, else the directory's)")
    b.add_argument("--sign-key", help="Ed25519 private key (PEM PKCS#8 or 32 raw bytes) to sign bundle.json with")
    v = sub.add_parser("verify", help="check every member against bundle.json (and the signature with --pubkey)")
    v.add_argument("bundle")
    v.add_argument("--pubkey", help="Ed25519 public key (PEM); the bundle's signature must verify with it")
    u = sub.add_parser("unpack", help="verify, then extract safely into a new directory")
    u.add_argument("bundle")
    u.add_argument("-o", "--out", required=True, help="directory to create")
    u.add_argument("--pubkey", help="Ed25519 public key (PEM); the bundle's signature must verify with it")
    i = sub.add_parser("inspect", help="print the manifest (not verified: use verify)")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true", help="print bundle.json as it is")


def run(args: argparse.Namespace) -> int:
    """Run one ``lmstack bundle`` action; errors raise PackError (exit 2 through the CLI)."""
    if args.action == "build":
        info = build(args.ckpt, args.out, artifacts=args.artifacts, name=args.name, sign_key=args.sign_key)
        signed = f", signed by {info.signer[:16]}..." if info.signer else ""
        print(f"wrote {info.path}: {len(info.manifest['members'])} files, manifest sha256 {info.digest}{signed}")
    elif args.action == "verify":
        info = verify(args.bundle, pubkey=args.pubkey)
        sig = (f"signature by {info.signer[:16]}... verified" if info.signer else
               "signed, signature not checked (pass --pubkey)" if info.signature is not None else "unsigned")
        print(f"ok: {info.path}: {len(info.manifest['members'])} files match {MANIFEST} ({sig})")
    elif args.action == "unpack":
        info = unpack(args.bundle, args.out, pubkey=args.pubkey)
        print(f"unpacked {info.path} into {args.out} ({len(info.manifest['members'])} files verified)")
    else:
        info = read_manifest(args.bundle)
        if args.json:
            print(info.manifest_bytes.decode("utf-8"), end="")
        else:
            print("\n".join(_describe(info)))
    return 0
