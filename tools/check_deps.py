"""Per-package dependency declarations are exact: deptry finds no missing, unused or transitive imports. And a
package's ``__version__``, where it has one, is its pyproject version (a bump that forgot it went unnoticed twice).

Each package is checked from its own directory against its own pyproject.toml, with src/ as the code and tests,
benchmarks, examples and project templates excluded (their needs go in the `test` extra, which each pyproject
marks as a dev group).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
# Distributions whose import name differs from the distribution name.
EXTERNAL_MODULE_NAMES = {
    "pyyaml": "yaml",
    "scikit-learn": "sklearn",
    "prometheus-client": "prometheus_client",
    "pillow": "PIL",
    "lm-eval": "lm_eval",
    "spdx-tools": "spdx_tools",
    "onnxruntime": "onnxruntime",
    "sentencepiece": "sentencepiece",
    "license-expression": "license_expression",
}


def main() -> int:
    pkgs = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())
    names = {f"lmstack-{p.name}": p.name for p in pkgs} | EXTERNAL_MODULE_NAMES
    mapping = ",".join(f"{k}={v}" for k, v in names.items())
    exe = Path(sys.executable).with_name("deptry")
    failed = []
    for p in pkgs:
        cmd = [
            str(exe),
            ".",
            "--known-first-party",
            p.name,
            "--package-module-name-map",
            mapping,
            "--extend-exclude",
            "tests",
            "--extend-exclude",
            "benchmarks",
            "--extend-exclude",
            "examples",
            "--extend-exclude",
            r"src/[^/]+/templates",  # pack's project templates: the user's files, importing what projects install
        ]
        r = subprocess.run(cmd, cwd=p, capture_output=True, text=True)
        if r.returncode != 0:
            failed.append(p.name)
            print(f"--- deptry {p.name}\n{r.stdout}{r.stderr}")
    for p in pkgs:
        version = tomllib.loads((p / "pyproject.toml").read_text())["project"]["version"]
        init = p / "src" / p.name / "__init__.py"
        m = re.search(r'^__version__ = "([^"]+)"', init.read_text(), re.M) if init.is_file() else None
        if m and m.group(1) != version:
            failed.append(p.name)
            print(f"--- {p.name}: {init.relative_to(ROOT)} says __version__ = {m.group(1)!r}, pyproject.toml says "
                  f"{version!r}")
    if failed:
        print(f"dependency declarations or versions wrong in: {', '.join(failed)}")
        return 1
    print(f"deptry: {len(pkgs)} packages declare exactly what they import; __version__ strings match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
