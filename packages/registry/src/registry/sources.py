"""``registry:NAME[@REF]`` as a model path: the ``lmstack.sources`` plugin ``registry`` (specs.sources).

``python -m serve --model registry:tiny-llama@production`` (also ``python -m export --model`` and eval's
``load_model``) serves the version that REF names (a number, ``latest`` (the default), a stage, or an alias) from
the registry at ``$LMSTACK_REGISTRY`` (else ``./registry``), as MLflow's ``models:/NAME@alias`` URIs load a
registered model. The version is checked out once, every file's sha256 verified, into
``<root>/checkouts/<manifest digest>/`` and reused after (a version's files never change: its digest names them;
the folder is a cache, safe to delete).
With ``$LMSTACK_REGISTRY_PUBKEY`` set (a PEM public key, or ``trusted`` for the registry's trusted keys) only a
version whose signature verifies is handed out.
"""

from __future__ import annotations

import os
from pathlib import Path

from registry.errors import RegistryError
from registry.lifecycle import Registry

ROOT_ENV = "LMSTACK_REGISTRY"
PUBKEY_ENV = "LMSTACK_REGISTRY_PUBKEY"


def checkout_source(ref: str) -> Path:
    """The local directory (or file) of ``NAME[@REF]``, checked out on first use."""
    name, _, version_ref = ref.partition("@")
    if not name:
        raise RegistryError(f"registry:{ref}: expected registry:NAME[@REF], e.g. registry:tiny-llama@production")
    with Registry(os.environ.get(ROOT_ENV) or "registry", create=False) as reg:
        v = reg.get(name, version_ref or "latest")
        key = os.environ.get(PUBKEY_ENV)
        if key:
            reg.verify_signature(name, v.version, None if key == "trusted" else key)
        dest = reg.root / "checkouts" / v.digest.removeprefix("sha256:")
        if not dest.exists():  # a checkout is built aside and renamed into place: it is whole once it exists
            reg.checkout(name, v.version, dest)
        return dest
