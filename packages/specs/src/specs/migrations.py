"""Schema versions and the pure migration functions that upgrade old documents on load.

Each migration is ``dict -> dict`` for one (document kind, from_version) step; loading chains them up to
:data:`SCHEMA_VERSION`. Constructors never carry compatibility branches.

v1 -> v2 (configs): ``ffn_dim`` became ``d_ff``, ``rope_base`` became ``rope_theta``, ``attn_impl='flash_attn'``
became ``'flash'``; the training section's ``lr_schedule`` became ``schedule`` and ``max_steps`` became ``steps``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from specs.errors import ConfigError

SCHEMA_VERSION = 2

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def _rename(d: dict[str, Any], old: str, new: str) -> None:
    if old in d:
        if new in d:
            raise ConfigError(old, f"both the v1 name {old!r} and its v2 name {new!r} are set; keep {new!r}")
        d[new] = d.pop(old)


def model_v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    _rename(out, "ffn_dim", "d_ff")
    _rename(out, "rope_base", "rope_theta")
    if out.get("attn_impl") == "flash_attn":
        out["attn_impl"] = "flash"
    return out


def train_v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    _rename(out, "lr_schedule", "schedule")
    _rename(out, "max_steps", "steps")
    return out


def run_v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    if isinstance(out.get("model"), Mapping):
        out["model"] = model_v1_to_v2(dict(out["model"]))
    if isinstance(out.get("train"), Mapping):
        out["train"] = train_v1_to_v2(dict(out["train"]))
    return out


MIGRATIONS: Mapping[tuple[str, int], Migration] = {
    ("ModelConfig", 1): model_v1_to_v2,
    ("TrainConfig", 1): train_v1_to_v2,
    ("RunConfig", 1): run_v1_to_v2,
}


def migrate(
    kind: str,
    data: Mapping[str, Any],
    *,
    current: int = SCHEMA_VERSION,
    migrations: Mapping[tuple[str, int], Migration] = MIGRATIONS,
) -> dict[str, Any]:
    """Upgrade ``data`` (which may carry ``schema_version``; absent means current) to ``current``.

    Documents newer than the code, or with no migration path, fail with a ConfigError.
    """
    out = dict(data)
    version = out.pop("schema_version", current)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError("schema_version", f"must be a positive integer, got {version!r}")
    if version > current:
        raise ConfigError(
            "schema_version",
            f"document is version {version} but this code knows up to {current}; upgrade lmstack-specs to read it",
        )
    while version < current:
        step = migrations.get((kind, version))
        if step is not None:
            out = step(out)
        version += 1
    return out
