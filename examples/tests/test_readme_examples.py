"""Every package README's Python examples, run as a user runs them: a README's ```python blocks in order, each a
script of its own, all in one fresh working directory (so a block may use the files an earlier one wrote), with
OMP_NUM_THREADS=1 and nothing downloaded. An example that fails here is an example that fails for a user.

A block whose first line is one of these comments runs as it says:
- ``# torchrun --nproc_per_node=N ...``: under torchrun, N processes (gloo on the CPU);
- ``# python -m serve --model DIR --port P ...``: with that server running, started here first (a tiny checkpoint
  and byte tokenizer are written to DIR when it does not exist) on a free port, which the block's URL is pointed at.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READMES = sorted(ROOT.glob("packages/*/README.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
TORCHRUN = re.compile(r"#\s*torchrun\s+--nproc_per_node[= ](\d+)\b")
SERVER = re.compile(r"#\s*python -m serve (.+?)(?:\s{2,}\(.*\))?\s*$")


def blocks(readme: Path) -> list[str]:
    return BLOCK.findall(readme.read_text(encoding="utf-8"))


def test_every_package_readme_has_an_example():
    assert len(READMES) >= 16
    assert [r.parent.name for r in READMES if not blocks(r)] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("LMSTACK_SIGNING_KEY", None)
    return env


def _tiny_checkpoint(directory: Path) -> None:
    from data.tokenizer import load_tokenizer
    from model.lm import TransformerLM
    from specs.presets import preset

    TransformerLM(preset("llama-debug")).save_pretrained(directory)
    load_tokenizer("byte").save(directory)


def _start_server(args: list[str], work: Path, log: Path) -> subprocess.Popen[bytes]:
    model = Path(args[args.index("--model") + 1])
    if not (work / model).exists():
        _tiny_checkpoint(work / model)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serve", *args], cwd=work, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT)
    port = args[args.index("--port") + 1]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"python -m serve {' '.join(args)} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail(f"python -m serve {' '.join(args)} did not come up in 120 s:\n{log.read_text()[-4000:]}")


@pytest.mark.parametrize("readme", READMES, ids=[r.parent.name for r in READMES])
def test_readme_python_examples_run(readme: Path, tmp_path: Path):
    work, scripts = tmp_path / "work", tmp_path / "scripts"  # scripts apart: their directory goes on sys.path
    work.mkdir()
    scripts.mkdir()
    for i, code in enumerate(blocks(readme)):
        first = code.splitlines()[0] if code.strip() else ""
        cmd: list[str] = [sys.executable]
        server = None
        if m := TORCHRUN.match(first):
            cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={m.group(1)}"]
        elif m := SERVER.match(first):
            args = shlex.split(m.group(1))
            port = str(_free_port())
            code = code.replace(f"127.0.0.1:{args[args.index('--port') + 1]}", f"127.0.0.1:{port}")
            args[args.index("--port") + 1] = port
            server = _start_server(args, work, tmp_path / f"server_{i}.log")
        script = scripts / f"block_{i}.py"
        script.write_text(code, encoding="utf-8")
        try:
            proc = subprocess.run([*cmd, str(script)], cwd=work, env=_env(), capture_output=True, text=True,
                                  timeout=300)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
        if proc.returncode != 0:
            pytest.fail(f"{readme.relative_to(ROOT)}, python block {i + 1}, exited {proc.returncode}\n--- code\n"
                        f"{code}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")
