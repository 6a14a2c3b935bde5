"""``bundle:PATH.tar.gz`` as a model path: the ``lmstack.sources`` plugin ``bundle`` (see specs.sources).

``python -m serve --model bundle:model.tar.gz`` (also ``python -m export --model`` and eval's ``load_model``) loads
the ``model/`` directory of a bundle written by ``lmstack bundle build``. The bundle is verified (every member's
sha256 against bundle.json) and extracted once into ``<cache>/<sha256 of bundle.json>/``, built aside and renamed
into place, then reused: the manifest's digest names the content, so the folder is a cache, safe to delete. The
cache is ``$LMSTACK_BUNDLE_CACHE``, else ``~/.cache/lmstack/bundles``. With ``$LMSTACK_BUNDLE_PUBKEY`` set (an
Ed25519 PEM public key) only a bundle whose signature verifies is handed out, on every call, cached or not.
"""

from __future__ import annotations

import os
from pathlib import Path

from pack.bundle import read_manifest, unpack
from pack.errors import PackError

CACHE_ENV = "LMSTACK_BUNDLE_CACHE"
PUBKEY_ENV = "LMSTACK_BUNDLE_PUBKEY"


def cache_root() -> Path:
    """Where bundles are extracted: ``$LMSTACK_BUNDLE_CACHE``, else ``~/.cache/lmstack/bundles``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmstack" / "bundles"


def bundle_source(ref: str) -> Path:
    """The verified, extracted ``model/`` directory of the bundle at ``ref`` (a path), extracted on first use."""
    path = Path(ref).expanduser()
    if not ref or not path.is_file():
        raise PackError(f"bundle:{ref}: no such bundle file; expected bundle:PATH.tar.gz (lmstack bundle build "
                        "writes one)")
    pubkey = os.environ.get(PUBKEY_ENV) or None
    info = read_manifest(path, pubkey=pubkey)  # the signature is checked on every call, cache hit or not
    dest = cache_root() / info.digest
    if not (dest / "model").is_dir():
        try:
            unpack(path, dest, pubkey=pubkey)
        except PackError:
            if not (dest / "model").is_dir():  # another process may have won the race to rename it into place
                raise
    model = dest / "model"
    if not model.is_dir():
        raise PackError(f"bundle:{ref}: the bundle has no model/ directory (its manifest lists no model/ files)")
    return model
