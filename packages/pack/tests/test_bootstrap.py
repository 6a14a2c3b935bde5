"""``lmstack bootstrap``: the target from fake nvidia-smi outputs, the plan's order, the requirements file, the
refusals, and a real offline execution (a venv, the torch pin from the venv's own ``import torch``, and an editable
install of an lmstack package)."""

from __future__ import annotations

import importlib.metadata as md
import os
import shlex
import site
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from pack import bootstrap
from pack.bootstrap import Step, choose_target, execute, plan
from pack.cli import main
from pack.errors import PackError

REPO = Path(__file__).resolve().parents[3]
HEADER = "| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: {cuda}     |\n"


def smi(cuda: str):
    """``which`` and ``run`` for a machine whose nvidia-smi reports ``cuda`` and that has no ROCm."""
    def which(name):
        return "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None

    def run(argv, **kw):
        return subprocess.CompletedProcess(argv, 0, stdout=HEADER.format(cuda=cuda), stderr="")
    return which, run


@pytest.mark.parametrize("cuda,target", [("12.4", "cu124"), ("12.2", "cu121"), ("11.8", "cu118"), ("13.0", "cu130"),
                                         ("12.9", "cu129"), ("12.8", "cu128"), ("13.2", "cu130"),
                                         ("12.6", "cu126"), ("12.0", "cu118")])
def test_target_from_driver(cuda, target, tmp_path):
    which, run = smi(cuda)
    chosen, why = choose_target(which=which, run=run, rocm_root=tmp_path / "no-rocm")
    assert chosen == target
    assert f"CUDA up to {cuda}" in why and target in why


def test_target_without_usable_driver(tmp_path):
    which, run = smi("11.4")
    assert choose_target(which=which, run=run, rocm_root=tmp_path / "no-rocm")[0] == "cpu"
    assert "update the driver" in choose_target(which=which, run=run, rocm_root=tmp_path / "no-rocm")[1]
    chosen, why = choose_target(which=lambda n: None, rocm_root=tmp_path / "no-rocm")
    assert chosen == "cpu" and "nvidia-smi is not on PATH" in why
    (tmp_path / "rocm").mkdir()
    assert choose_target(which=lambda n: None, rocm_root=tmp_path / "rocm")[0] == "rocm6.2"


def test_auto_target_through_the_cli_with_nvidia_smi_on_path(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho '{HEADER.format(cuda='12.4').strip()}'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    venv = tmp_path / "venv"
    assert main(["bootstrap", "--dry-run", "--venv", str(venv), "--packages", "train"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# target cu124: NVIDIA driver 550.54.15 supports CUDA up to 12.4")
    commands = [shlex.split(line) for line in out[1:]]
    assert commands[0] == [sys.executable, "-m", "venv", str(venv)]
    assert "https://download.pytorch.org/whl/cu124" in commands[2]
    assert not venv.exists()  # a dry run runs nothing


def test_plan_installs_torch_alone_first_then_pins_it(tmp_path):
    venv = tmp_path / "venv"
    steps = plan(venv, target="cu121", packages=["train", "serve"], torch="torch==2.5.1")
    py = str(venv / "bin" / "python")
    assert [s.argv[:4] for s in steps] == [(sys.executable, "-m", "venv", str(venv)), (py, "-m", "pip", "install"),
                                           (py, "-m", "pip", "install"), (py, "-c", bootstrap._TORCH_VERSION),
                                           (py, "-m", "pip", "install")]
    torch_step, pin, install = steps[2], steps[3], steps[4]
    assert torch_step.argv[4:] == ("torch==2.5.1", "--index-url", "https://download.pytorch.org/whl/cu121")
    assert pin.stdout_to == venv / "torch-constraint.txt"
    assert install.argv[4:6] == ("-c", str(venv / "torch-constraint.txt"))
    names = [Requirement(a).name for a in install.argv[6:]]
    assert names == ["lmstack-train", "lmstack-serve"] and "torch" not in " ".join(install.argv[6:])
    assert pin.shell().endswith(f"> {venv / 'torch-constraint.txt'}")


def test_editable_plan_installs_the_lmstack_closure(tmp_path):
    steps = plan(tmp_path / "venv", target="cpu", packages=["serve"], editable=REPO)
    args = steps[-1].argv[6:]
    assert all(a == "-e" for a in args[::2])
    installed = {Path(p).name for p in args[1::2]}

    def closure(dist, seen):  # independently, from the installed distributions' metadata
        seen.add(dist.removeprefix("lmstack-"))
        for line in md.requires(dist) or []:
            req = Requirement(line)
            if req.name.startswith("lmstack-") and (req.marker is None or req.marker.evaluate({"extra": ""})):
                closure(req.name, seen)
        return seen
    assert installed == closure("lmstack-serve", set()) and {"serve", "specs", "kernel"} <= installed
    assert all((REPO / "packages" / n / "pyproject.toml").is_file() for n in installed)


def test_all_means_pack_and_its_all_extra():
    extra = {Requirement(r).name for r in md.requires("lmstack-pack") if "extra == 'all'" in r.replace('"', "'")}
    got = bootstrap.resolve_packages("all", None)
    assert {f"lmstack-{n}" for n in got} == extra | {"lmstack-pack"}
    assert bootstrap.resolve_packages("train, lmstack-serve,train", None) == ["train", "serve"]


def test_requirements_file_parses(tmp_path, capsys):
    out = tmp_path / "req" / "requirements.txt"
    assert main(["bootstrap", "--requirements", str(out), "--target", "cu124", "--torch", "2.5.1",
                 "--packages", "all"]) == 0
    assert "wrote" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cu124" in lines
    reqs = [Requirement(line) for line in lines if line.strip() and not line.startswith(("#", "-"))]
    assert str(reqs[0]) == "torch==2.5.1"
    assert {r.name for r in reqs[1:]} == {f"lmstack-{n}" for n in bootstrap.resolve_packages("all", None)}
    editable = bootstrap.requirements_text(target="cpu", packages=["specs"], editable=REPO).splitlines()
    assert f"-e {REPO / 'packages' / 'specs'}" in editable


@pytest.mark.parametrize("argv,message", [
    (["--target", "cu999"], "expected auto or one of: cpu, cu118, cu121, cu124, cu126, cu128, cu129, cu130, rocm6.2"),
    (["--target", "cpu", "--packages", "trian"], "'trian' is not an lmstack package; expected 'all' or some of"),
    (["--target", "cpu", "--torch", "numpy"], "expected a torch version or specifier"),
    (["--target", "cpu", "--torch", "2.5", "--system-torch"], "--system-torch installs no torch"),
])
def test_refusals(argv, message, tmp_path, capsys):
    assert main(["bootstrap", "--dry-run", "--venv", str(tmp_path / "v"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_refuses_an_existing_non_venv_directory(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "notes.txt").write_text("mine")
    with pytest.raises(PackError, match="exists and is not a virtual environment"):
        plan(tmp_path / "proj", target="cpu", packages=["specs"])
    with pytest.raises(PackError, match="is a file"):
        plan(tmp_path / "proj" / "notes.txt", target="cpu", packages=["specs"])
    (tmp_path / "empty").mkdir()
    assert plan(tmp_path / "empty", target="cpu", packages=["specs"])[0].argv[1:3] == ("-m", "venv")
    with pytest.raises(PackError, match="no packages/ directory"):
        plan(tmp_path / "v", target="cpu", packages=["specs"], editable=tmp_path)


def test_execute_stops_at_the_first_failing_step(tmp_path):
    marker = tmp_path / "never"
    steps = [Step("fine", (sys.executable, "-c", "pass")),
             Step("write", (sys.executable, "-c", "print('hello')"), stdout_to=tmp_path / "out.txt"),
             Step("break", (sys.executable, "-c", "raise SystemExit(3)")),
             Step("after", (sys.executable, "-c", f"open({str(marker)!r}, 'w')"))]
    with pytest.raises(PackError, match=r"step 3/4 \(break\) failed with exit status 3"):
        execute(steps)
    assert (tmp_path / "out.txt").read_text() == "hello\n" and not marker.exists()
    with pytest.raises(PackError, match="could not start"):
        execute([Step("missing", (str(tmp_path / "no-such-program"),))])


def test_real_offline_bootstrap(tmp_path, monkeypatch):
    # pip is kept offline and away from this machine's pip configuration
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    # a copy of one lmstack package; hatchling's default editable mode imports the `editables` package, which a build
    # without isolation and without the network cannot get, so the copy names its source directory (dev-mode-dirs)
    pkg = tmp_path / "repo" / "packages" / "tensor"
    pkg.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        (pkg / name).write_text((REPO / "packages" / "tensor" / name).read_text())
    with open(pkg / "pyproject.toml", "a") as f:
        f.write('\n[tool.hatch.build]\ndev-mode-dirs = ["src"]\n')
    (pkg / "src" / "tensor").mkdir(parents=True)
    (pkg / "src" / "tensor" / "__init__.py").write_text('"""A stand-in."""\n')

    venv = tmp_path / "venv"
    steps = plan(venv, target="cpu", packages=["tensor"], editable=tmp_path / "repo", system_torch=True,
                 pip_args=["--no-index", "--no-deps", "--no-build-isolation"])
    assert [s.what.split()[0] for s in steps] == ["create", "upgrade", "pin", "install"]
    assert "--system-site-packages" in steps[0].argv
    execute(steps[:1])
    # the interpreter that made this venv is itself a venv, so its "system" torch is the test venv's: make it visible
    next(venv.glob("lib/python*/site-packages")).joinpath("outer.pth").write_text(site.getsitepackages()[0] + "\n")
    execute(steps[1:])

    import torch

    assert (venv / "torch-constraint.txt").read_text() == f"torch=={torch.__version__}\n"
    probe = ("import importlib.util, importlib.metadata as md; "
             "print(importlib.util.find_spec('tensor').origin); print(md.version('lmstack-tensor'))")
    origin, version = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                                     check=True).stdout.split()
    assert Path(origin) == pkg / "src" / "tensor" / "__init__.py"
    assert version == md.version("lmstack-tensor")
    assert plan(venv, target="cpu", packages=["tensor"])[0].what == "upgrade pip"  # an existing venv is reused


def test_known_packages_are_this_repositorys():
    """The published names bootstrap accepts without --editable are exactly the packages/ of this repository."""
    root = Path(__file__).resolve().parents[3]
    assert sorted(bootstrap.KNOWN_PACKAGES) == sorted(p.parent.name for p in root.glob("packages/*/pyproject.toml"))
