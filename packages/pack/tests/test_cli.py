"""``lmstack``: the overview, versions, delegation to each package's own CLI, plugin commands, clear refusals."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pack
from pack import cli

ROOT = Path(__file__).resolve().parents[3]
DEBUG = ROOT / "cfgs" / "debug.yaml"


def _py(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_overview_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in [*cli.OWN, *cli.DELEGATES]:
        assert f"  {name} " in out


def test_version_lists_installed_distributions(capsys):
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"lmstack-pack {pack.__version__}") and pack.__version__ == md.version("lmstack-pack")
    for name in ("lmstack-specs", "lmstack-train", "lmstack-serve"):
        assert f"  {name}" in out and md.version(name) in out.split(name, 1)[1].splitlines()[0]
    assert set(cli.lmstack_distributions()) >= {"lmstack-specs", "lmstack-pack", "lmstack-model"}


def test_delegate_is_the_same_call_as_python_m():
    """`lmstack config check F` and `python -m specs check F`: same output, same exit status, good and bad."""
    ours = _py("-m", "pack", "config", "check", str(DEBUG), "--train.steps", "7")
    theirs = _py("-m", "specs", "check", str(DEBUG), "--train.steps", "7")
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout and "steps: 7" in ours.stdout
    ours = _py("-m", "pack", "config", "check", str(DEBUG), "--train.steps", "-1")
    theirs = _py("-m", "specs", "check", str(DEBUG), "--train.steps", "-1")
    assert ours.returncode == theirs.returncode == 2
    assert ours.stderr == theirs.stderr and "train.steps" in ours.stderr


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("lmstack")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("lmstack-pack")


def test_unknown_command_suggests(capsys):
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "did you mean 'train'" in err


def test_missing_package_names_the_install(monkeypatch, capsys):
    monkeypatch.setitem(cli.DELEGATES, "ghost", cli.Delegate("no_such_lmstack_module", "lmstack-ghost", "x"))
    assert cli.main(["ghost", "--help"]) == 2
    assert "pip install lmstack-ghost" in capsys.readouterr().err
    cli.main(["--help"])
    assert "ghost       pip install lmstack-ghost" in capsys.readouterr().out


def test_delegate_exit_status_and_argv(tmp_path, monkeypatch, capsys):
    mod = tmp_path / "fake_cli_mod.py"
    mod.write_text("import sys\nprint('argv', sys.argv)\nraise SystemExit(int(sys.argv[1]))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.DELEGATES, "fake", cli.Delegate("fake_cli_mod", "lmstack-fake", "x"))
    argv_before = sys.argv[:]
    assert cli.main(["fake", "3", "--x"]) == 3
    out = capsys.readouterr().out  # as `python -m fake_cli_mod 3 --x` would see it
    assert out.startswith("argv [") and "fake_cli_mod.py', '3', '--x']" in out
    assert cli.main(["fake", "0"]) == 0
    assert sys.argv == argv_before


def _plugin_dist(tmp_path: Path, entry: str) -> None:
    info = tmp_path / "lmstack_hello-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lmstack-hello\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[lmstack.commands]\n{entry}\n")
    (tmp_path / "hello_mod.py").write_text(textwrap.dedent("""
        import sys
        def main(argv):
            print("hello", argv)
            return len(argv)
        if __name__ == "__main__":
            print("module", sys.argv[1:])
    """))


@pytest.mark.parametrize(("entry", "expect", "rc"), [
    ("hello = hello_mod:main", "hello ['a', 'b']", 2),
    ("hello = hello_mod", "module ['a', 'b']", 0),
    ("train = hello_mod:main", None, None),  # a plugin never shadows a built-in command
])
def test_plugin_commands(tmp_path, entry, expect, rc):
    _plugin_dist(tmp_path, entry)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    if expect is None:
        r = _py("-c", "from pack.cli import plugin_commands; print(sorted(plugin_commands()))", env=env)
        assert r.stdout.strip() == "[]"
        return
    r = _py("-m", "pack", "hello", "a", "b", env=env)
    assert r.returncode == rc, r.stderr
    assert expect in r.stdout
    r = _py("-m", "pack", "--help", env=env)
    assert "lmstack.commands" in r.stdout and "hello" in r.stdout
