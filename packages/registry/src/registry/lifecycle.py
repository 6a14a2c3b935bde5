"""``Registry``: stages and promotions, aliases, signatures, retention and garbage collection over a Store.

The lifecycle follows MLflow's Model Registry (stages, ``archive_existing_versions``, aliases such as
``champion``); signatures follow Sigstore/cosign's model of a detached signature over the manifest digest's
document, here a DSSE envelope beside the manifest (:mod:`registry.signing`). Every change is one transaction
that also appends its event, so the log and the state cannot disagree.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from registry import promotion, retention, signing
from registry._io import is_tmp, iso, remove_path, tmp_owner_alive
from registry.errors import GateError, NotFoundError, SignatureError
from registry.index import transaction
from registry.manifest import NAME_RE, ModelVersion
from registry.store import RESERVED_REFS, GcResult, Store, default_actor
from specs.io import atomic_write_bytes

ENVELOPE = "manifest.dsse.json"


class Registry(Store):
    """A local artifact registry at ``root``; see the package README for the whole API."""

    # ---- stages ------------------------------------------------------------------------------------------------
    def promote(self, name: str, version: int | str, stage: str, *, reason: str, actor: str | None = None,
                archive_existing: bool = True, require_signature: bool = False,
                public_key: str | os.PathLike[str] | None = None,
                require_metadata: Mapping[str, Mapping[str, float]] | None = None) -> ModelVersion:
        """Move ``version`` to ``stage`` (none, staging, production, archived). With ``archive_existing`` the
        versions already in staging or production (whichever is the target) move to archived. Gates:
        ``require_signature`` (a signature verifying with ``public_key``, or with any key in ``trusted/``) and
        ``require_metadata`` bounds; a refused promotion changes nothing."""
        promotion.check_stage(stage)
        bounds = promotion.parse_bounds(require_metadata)
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("promote needs a non-empty reason (it goes into the event log)")
        actor = actor or default_actor()
        with transaction(self.db):
            v = self.get(name, version)
            where = f"refusing to promote {name} v{v.version} to {stage}"
            if require_signature:
                try:
                    self._verify_signature(v, public_key)
                except SignatureError as exc:
                    raise GateError(f"{where}: signature required: {exc}") from None
            promotion.check_bounds(v.metadata, bounds, where)
            if v.stage == stage:
                return v
            moved = []
            if archive_existing and stage in ("staging", "production"):
                others = self.db.execute("SELECT version FROM versions WHERE model=? AND stage=? AND version<>? "
                                         "AND deleted_at IS NULL", (name, stage, v.version)).fetchall()
                for (other,) in others:
                    self.db.execute("UPDATE versions SET stage='archived' WHERE model=? AND version=?", (name, other))
                    self._event(actor, "version.stage", name, other, **{"from": stage, "to": "archived",
                                "reason": f"v{v.version} promoted to {stage}"})
                    moved.append(other)
            self.db.execute("UPDATE versions SET stage=? WHERE model=? AND version=?", (stage, name, v.version))
            self._event(actor, "version.stage", name, v.version, reason=reason, archived=moved,
                        gates={"signature": bool(require_signature), "metadata": [b.key for b in bounds]},
                        **{"from": v.stage, "to": stage})
            return self._load(name, v.version)

    # ---- aliases -----------------------------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int | str, *, actor: str | None = None) -> ModelVersion:
        """Point ``alias`` (e.g. ``champion``) at ``version``, moving it if it pointed elsewhere."""
        if not NAME_RE.match(alias) or alias in RESERVED_REFS or re.match(r"^v?\d+$", alias):
            raise ValueError(f"bad alias {alias!r}: expected letters, digits, '.', '_', '-', not a version number "
                             f"and not one of {', '.join(RESERVED_REFS)}")
        with transaction(self.db):
            v = self.get(name, version)
            old = self.db.execute("SELECT version FROM aliases WHERE model=? AND alias=?", (name, alias)).fetchone()
            if old is not None and old[0] == v.version:
                return v
            self.db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", (name, alias, v.version))
            self._event(actor, "alias.set", name, v.version, alias=alias, previous=None if old is None else old[0])
            return self._load(name, v.version)

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> None:
        with transaction(self.db):
            self._require_model(name)
            old = self.db.execute("SELECT version FROM aliases WHERE model=? AND alias=?", (name, alias)).fetchone()
            if old is None:
                have = [r[0] for r in self.db.execute("SELECT alias FROM aliases WHERE model=?", (name,))]
                raise NotFoundError(f"{name!r} has no alias {alias!r}; aliases: {', '.join(sorted(have)) or 'none'}")
            self.db.execute("DELETE FROM aliases WHERE model=? AND alias=?", (name, alias))
            self._event(actor, "alias.delete", name, old[0], alias=alias)

    # ---- signatures --------------------------------------------------------------------------------------------
    def signing_payload(self, name: str, ref: int | str = "latest") -> bytes:
        """The DSSE PAE bytes a signature over version ``ref`` covers (to sign with an external tool)."""
        v = self.get(name, ref)
        return signing.pae(signing.PAYLOAD_TYPE, self._manifest_bytes(name, v.version))

    def sign(self, name: str, ref: int | str, private_key_path: str | os.PathLike[str], *,
             actor: str | None = None) -> str:
        """Sign version ``ref``'s manifest with an Ed25519 PEM key; returns the keyid. Signing again with another
        key adds a signature to the envelope."""
        key = signing.load_private_key(private_key_path)
        with transaction(self.db):
            v = self.get(name, ref)
            entry = signing.sign(self._manifest_bytes(name, v.version), key)
            self._store_signature(v, entry, actor)
        return entry["keyid"]

    def attach_signature(self, name: str, ref: int | str, signature: bytes, public_key_path: str | os.PathLike[str],
                         *, actor: str | None = None) -> str:
        """Add a raw Ed25519 signature made elsewhere (``openssl pkeyutl -sign -rawin`` over
        :meth:`signing_payload`); it must verify with ``public_key_path`` first."""
        key = signing.load_public_key(public_key_path)
        with transaction(self.db):
            v = self.get(name, ref)
            body = self._manifest_bytes(name, v.version)
            entry = signing.signature_entry(signing.key_id(key), signature)
            signing.check_envelope(signing.envelope(body, [entry]), body, key, f"{name} v{v.version}")
            self._store_signature(v, entry, actor)
        return entry["keyid"]

    def _store_signature(self, v: ModelVersion, entry: dict[str, str], actor: str | None) -> None:
        path = self._dir(v.name, v.version) / ENVELOPE
        body = self._manifest_bytes(v.name, v.version)
        sigs = [] if not path.is_file() else [
            s for s in signing.read_envelope(path)["signatures"] if s.get("keyid") != entry["keyid"]]
        atomic_write_bytes(path, signing.canonical_envelope(signing.envelope(body, [*sigs, entry])), 0o644)
        self.db.execute("INSERT OR REPLACE INTO signatures VALUES (?, ?, ?, ?)",
                        (v.name, v.version, entry["keyid"], iso(self.clock())))
        self._event(actor, "version.sign", v.name, v.version, keyid=entry["keyid"], digest=v.digest)

    def verify_signature(self, name: str, ref: int | str = "latest",
                         public_key_path: str | os.PathLike[str] | None = None) -> str:
        """The keyid of a signature on version ``ref`` that verifies with ``public_key_path`` (default: any key in
        ``trusted/``) over exactly this version's manifest; a SignatureError says why not."""
        return self._verify_signature(self.get(name, ref), public_key_path)

    def _verify_signature(self, v: ModelVersion, public_key_path: str | os.PathLike[str] | None) -> str:
        where = f"{v.name} v{v.version}"
        env = signing.read_envelope(self._dir(v.name, v.version) / ENVELOPE)
        body = self._manifest_bytes(v.name, v.version)
        keys = [Path(public_key_path)] if public_key_path is not None else sorted((self.root / "trusted").glob("*.pem"))
        if not keys:
            raise SignatureError(f"{where}: no public key given and no trusted keys in {self.root / 'trusted'} "
                                 "(add one with trust())")
        errors = []
        for k in keys:
            try:
                return signing.check_envelope(env, body, signing.load_public_key(k), where)
            except SignatureError as exc:
                errors.append(str(exc))
        raise SignatureError(errors[0] if len(errors) == 1 else f"{where}: no trusted key verifies ({len(keys)} tried)")

    def trust(self, public_key_path: str | os.PathLike[str], *, actor: str | None = None) -> str:
        """Add an Ed25519 public key to ``trusted/``, the keys the signature gate uses by default."""
        key = signing.load_public_key(public_key_path)
        kid = signing.key_id(key)
        with transaction(self.db):
            atomic_write_bytes(self.root / "trusted" / f"{kid}.pub.pem", signing.public_pem(key), 0o644)
            self._event(actor, "key.trust", None, None, keyid=kid)
        return kid

    # ---- retention and gc --------------------------------------------------------------------------------------
    def plan_retention(self, policy: retention.RetentionPolicy | Mapping[str, Any], name: str | None = None, *,
                       now: datetime | None = None) -> retention.RetentionPlan:
        """What ``apply_retention`` would delete (of model ``name``, or of all), and why each other version stays."""
        if not isinstance(policy, retention.RetentionPolicy):
            policy = retention.RetentionPolicy.from_dict(policy)
        names = [name] if name is not None else [m.name for m in self.list_models()]
        versions = [v for n in names for v in self.list_versions(n)]
        return retention.plan(policy, versions, now or self.clock())

    def apply_retention(self, policy: retention.RetentionPolicy | Mapping[str, Any], name: str | None = None, *,
                        actor: str | None = None, now: datetime | None = None) -> retention.RetentionPlan:
        """Delete what the policy plans, planned again inside the transaction (a version promoted or aliased since
        a dry run is kept). Rows are marked deleted; their blobs go at the next :meth:`gc`."""
        with transaction(self.db):
            plan = self.plan_retention(policy, name, now=now)
            deleted = iso(self.clock())
            for d in plan.delete:
                self.db.execute("UPDATE versions SET deleted_at=? WHERE model=? AND version=?",
                                (deleted, d.name, d.version))
                self._event(actor, "version.delete", d.name, d.version, reasons=list(d.reasons),
                            policy=plan.policy.to_dict())
        return plan

    def gc(self, *, actor: str | None = None) -> GcResult:
        """Remove blobs no live version references (deleted versions' and orphans of interrupted registers), temp
        files whose writer has exited, and checkouts (``<root>/checkouts/``, the ``registry:`` model source's
        cache) of deleted or missing versions or half-written by an exited process; returns what was freed.
        Holds the write lock, so a concurrent register either committed first (its blobs are referenced) or
        re-checks its blobs after."""
        with transaction(self.db):
            live = {r[0] for r in self.db.execute("SELECT DISTINCT f.sha256 FROM files f JOIN versions v ON "
                                                  "f.model=v.model AND f.version=v.version WHERE v.deleted_at IS NULL")}
            freed = removed = temps = 0
            for digest, path in list(self.blobs.blobs()):
                if digest not in live:
                    freed += self.blobs.remove(path)
                    removed += 1
            for tmp in list(self.blobs.temps()):
                if not tmp_owner_alive(tmp):
                    freed += self.blobs.remove(tmp)
                    temps += 1
            for d in (self.root / "models").glob("*/*"):  # manifests of registers that never committed
                if d.name.isdigit() and self.db.execute("SELECT 1 FROM versions WHERE model=? AND version=?",
                                                        (d.parent.name, int(d.name))).fetchone() is None:
                    shutil.rmtree(d)
            checkouts = 0
            root = self.root / "checkouts"  # registry:NAME@REF sources' cache (registry.sources), one per digest
            if root.is_dir():
                digests = {r[0].removeprefix("sha256:") for r in
                           self.db.execute("SELECT digest FROM versions WHERE deleted_at IS NULL")}
                for d in list(root.iterdir()):
                    if (not tmp_owner_alive(d)) if is_tmp(d) else d.name not in digests:
                        freed += _tree_bytes(d)
                        remove_path(d)
                        checkouts += 1
            result = GcResult(freed, removed, temps, checkouts)
            if removed or temps or checkouts:
                self._event(actor, "gc", None, None, **result.to_dict())
        return result


def _tree_bytes(p: Path) -> int:
    if p.is_file() or p.is_symlink():
        return p.lstat().st_size
    return sum(f.lstat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
