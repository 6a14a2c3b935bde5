"""Install every package under packages/ editable (with its test extra) into the current interpreter."""

import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
pkgs = sorted(p for p in (root / "packages").iterdir() if (p / "pyproject.toml").is_file())
args = [a for p in pkgs for a in ("-e", f"{p}[test]")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
