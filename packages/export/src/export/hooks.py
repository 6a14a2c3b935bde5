"""Post-export hooks from the ``lmstack.export_hooks`` entry-point group (governance writes SBOM, CHECKSUMS and
MODEL_CARD this way, without export importing it).

A hook is ``fn(outdir: str, artifacts: list[str], metadata: dict) -> None`` called after the artifacts are
published and validated. ``ExportConfig.hooks``: None runs every installed hook, () none, names choose. Hooks are
resolved before exporting, so a misspelt name fails before any work with the list of valid names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from export.errors import HookError
from specs.plugins import available, resolve

GROUP = "lmstack.export_hooks"
Hook = Callable[[str, list[str], dict[str, Any]], Any]


def select_hooks(names: tuple[str, ...] | None, extra: Mapping[str, Hook] | None = None) -> list[tuple[str, Hook]]:
    """Resolve hook names (None: all installed plus ``extra``); PluginError lists valid names on a miss."""
    chosen = sorted({*available(GROUP), *(extra or {})}) if names is None else list(names)
    return [(n, resolve(GROUP, n, extra)) for n in chosen]


def run_hooks(hooks: list[tuple[str, Hook]], outdir: Path, artifacts: list[Path],
              metadata: dict[str, Any]) -> list[str]:
    ran = []
    for name, fn in hooks:
        try:
            fn(str(outdir), [str(a) for a in artifacts], dict(metadata))
        except Exception as exc:
            raise HookError(f"export hook {name!r} failed: {type(exc).__name__}: {exc}. The artifacts in {outdir} "
                            "are complete and validated; the hook's own outputs may be missing") from exc
        ran.append(name)
    return ran
