"""Per-package dependency declarations are exact: deptry finds no missing, unused or transitive imports.

Each package is checked from its own directory against its own pyproject.toml, with src/ as the code and tests,
benchmarks and examples excluded (their needs go in the `test` extra, which each pyproject marks as a dev group).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
        ]
        r = subprocess.run(cmd, cwd=p, capture_output=True, text=True)
        if r.returncode != 0:
            failed.append(p.name)
            print(f"--- deptry {p.name}\n{r.stdout}{r.stderr}")
    if failed:
        print(f"dependency declarations wrong in: {', '.join(failed)}")
        return 1
    print(f"deptry: {len(pkgs)} packages declare exactly what they import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
