"""Run import-linter with contracts generated from tools/import_rules.py for the packages under packages/.

Generating the contracts keeps one source of truth (import_rules.py) and lets packages be added without editing
a hand-kept list. Exit status is lint-imports' own.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from import_rules import EXCEPTIONS, FORBIDDEN_EXTERNAL, allowed

ROOT = Path(__file__).resolve().parent.parent


def packages() -> list[str]:
    return sorted(
        p.name
        for p in (ROOT / "packages").iterdir()
        if (p / "pyproject.toml").is_file() and (p / "src" / p.name).is_dir()
    )


def contracts(pkgs: list[str]) -> str:
    lines = ["[importlinter]", "root_packages =", *[f"    {p}" for p in pkgs], "include_external_packages = True", ""]
    for p in pkgs:
        forbidden = [q for q in pkgs if q != p and q not in allowed(p, pkgs)]
        forbidden += list(FORBIDDEN_EXTERNAL.get(p, ()))
        if not forbidden:
            continue
        why = EXCEPTIONS.get(p, ((), ""))[1]
        lines += [
            f"[importlinter:contract:{p}]",
            f"name = {p} imports only {', '.join(allowed(p, pkgs)) or 'nothing in lmstack'}"
            + (f" (exception: {why})" if why else ""),
            "type = forbidden",
            f"source_modules = {p}",
            "forbidden_modules =",
            *[f"    {q}" for q in forbidden],
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    pkgs = packages()
    with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as f:
        f.write(contracts(pkgs))
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.call([str(exe), f.name, "--no-cache"])


if __name__ == "__main__":
    sys.exit(main())
