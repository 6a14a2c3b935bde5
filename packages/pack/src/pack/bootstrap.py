"""``lmstack bootstrap``: install lmstack into a virtual environment with the right PyTorch build.

The plan is the one ``./dev setup`` follows: create the venv, upgrade pip, install torch first and alone from PyTorch's
wheel index for the target (``https://download.pytorch.org/whl/<target>``, so no package's ``torch`` requirement can
pull another build), pin the torch that got installed in a constraint file, then install the lmstack packages under
that constraint (from the package index, or ``-e REPO/packages/<name>`` with ``--editable``). ``--target auto`` picks
the newest CUDA index the NVIDIA driver supports (``nvidia-smi``'s ``CUDA Version``), ROCm where ROCm is installed,
else the CPU build, and says why.

``plan`` is pure (it reads the filesystem only to refuse a bad ``--venv`` or ``--editable``) and returns the steps;
``execute`` runs them and stops at the first that fails. ``--dry-run`` prints them; ``--requirements`` writes a pip
requirements file instead.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pack.doctor import TORCH_INDEX, query_driver
from pack.errors import PackError

# PyTorch's CUDA wheel indexes and the CUDA version each is built for, oldest first.
CUDA_TARGETS: dict[str, tuple[int, int]] = {"cu118": (11, 8), "cu121": (12, 1), "cu124": (12, 4), "cu126": (12, 6),
                                            "cu128": (12, 8), "cu129": (12, 9), "cu130": (13, 0)}
ROCM_TARGET = "rocm6.2"
TARGETS = ("cpu", *CUDA_TARGETS, ROCM_TARGET)
# The lmstack distributions (lmstack-<name>) published from this repository.
KNOWN_PACKAGES = ("attn", "autotune", "blocks", "compress", "corpus", "data", "dist", "eval", "export", "governance",
                  "interpret", "kernel", "model", "pack", "rag", "registry", "rl", "safety", "serve", "specs",
                  "tensor", "train", "viz")
CONSTRAINT_FILE = "torch-constraint.txt"
_TORCH_VERSION = 'import torch; print("torch==" + torch.__version__)'


@dataclass(frozen=True)
class Step:
    """One command of the plan. ``stdout_to``: the command's standard output is written (atomically) to that file."""

    what: str
    argv: tuple[str, ...]
    stdout_to: Path | None = None

    def shell(self) -> str:
        """The command as one shell-quoted line (with ``> FILE`` for a step that writes its output)."""
        line = shlex.join(self.argv)
        return f"{line} > {shlex.quote(str(self.stdout_to))}" if self.stdout_to is not None else line


# ------------------------------------------------------------------------------------------------------- target

def cuda_target(cuda_version: str) -> str | None:
    """The newest PyTorch CUDA index not newer than ``cuda_version`` (the driver's max, e.g. '12.4'), or None."""
    try:
        have = tuple(int(x) for x in cuda_version.split(".")[:2])
    except ValueError:
        return None
    fitting = [t for t, v in CUDA_TARGETS.items() if v <= have]
    return fitting[-1] if fitting else None


def choose_target(*, which: Callable[[str], str | None] = shutil.which,
                  run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                  rocm_root: Path = Path("/opt/rocm")) -> tuple[str, str]:
    """(target, why): a CUDA index from the NVIDIA driver, ROCm when rocminfo or /opt/rocm exists, else cpu."""
    driver, why = query_driver(which=which, run=run)
    if driver is not None:
        target = cuda_target(driver.cuda_version)
        if target is not None:
            return target, (f"NVIDIA driver {driver.driver_version} supports CUDA up to {driver.cuda_version}; "
                            f"{target} is the newest PyTorch CUDA build not newer than that")
        why = (f"NVIDIA driver {driver.driver_version} supports only CUDA {driver.cuda_version}, older than every "
               f"PyTorch CUDA build ({', '.join(CUDA_TARGETS)}); update the driver for GPU support")
    if which("rocminfo") is not None or rocm_root.exists():
        return ROCM_TARGET, f"{why}; ROCm found ({which('rocminfo') or rocm_root})"
    return "cpu", f"{why} and no ROCm (rocminfo, {rocm_root}) found: the CPU build"


# --------------------------------------------------------------------------------------------------------- plan

def all_packages() -> dict[str, str]:
    """pack's ``all`` extra (and pack itself): name -> requirement, e.g. 'train' -> 'lmstack-train<1,>=0.7'."""
    from packaging.requirements import Requirement

    out = {"pack": "lmstack-pack"}
    for line in md.requires("lmstack-pack") or []:
        req = Requirement(line)
        if req.marker is not None and req.marker.evaluate({"extra": "all"}) and not req.marker.evaluate({"extra": ""}):
            out[req.name.removeprefix("lmstack-")] = f"{req.name}{req.specifier}"
    return out


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise PackError("--editable reads the packages' pyproject.toml files, which needs Python 3.11+ (tomllib); "
                        "without --editable any Python >= 3.10 works") from None
    with open(path, "rb") as f:
        return tomllib.load(f)


def editable_closure(repo: Path, names: Sequence[str]) -> list[str]:
    """``names`` and every lmstack package they depend on (read from REPO/packages/*/pyproject.toml), sorted."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        project = _load_toml(repo / "packages" / name / "pyproject.toml").get("project", {})
        for line in project.get("dependencies", []):
            dep = Requirement(line).name
            if dep.startswith("lmstack-") and (repo / "packages" / dep.removeprefix("lmstack-")).is_dir():
                todo.append(dep.removeprefix("lmstack-"))
    return sorted(seen)


def resolve_packages(spec: str, editable: Path | None) -> list[str]:
    """``'train,serve'`` or ``'all'`` -> package names (no ``lmstack-`` prefix); an unknown one lists the valid ones."""
    known = sorted(p.parent.name for p in (editable / "packages").glob("*/pyproject.toml")) if editable else \
        list(KNOWN_PACKAGES)
    wanted = [w.strip().removeprefix("lmstack-") for w in spec.split(",") if w.strip()]
    if not wanted:
        raise PackError(f"--packages is empty; expected 'all' or a comma-separated list of: {', '.join(known)}")
    out: list[str] = []
    for name in wanted:
        names = list(all_packages()) if name == "all" else [name]
        for n in names:
            if n not in known:
                where = f"in {editable / 'packages'}" if editable else "an lmstack package"
                raise PackError(f"--packages: {n!r} is not {where}; expected 'all' or some of: {', '.join(known)}")
            if n not in out:
                out.append(n)
    return out


def torch_requirement(spec: str) -> str:
    """``--torch`` -> a requirement: '2.5.1' -> 'torch==2.5.1', '>=2.6' -> 'torch>=2.6', 'torch<3' as is."""
    from packaging.requirements import InvalidRequirement, Requirement

    spec = spec.strip()
    text = f"torch=={spec}" if spec[:1].isdigit() else spec if spec.startswith("torch") else f"torch{spec}"
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise PackError(f"--torch {spec!r} is not a version or specifier ({exc}); "
                        "expected e.g. 2.5.1 or '>=2.6,<3'") from None
    if req.name != "torch" or req.extras or req.url or req.marker:
        raise PackError(f"--torch {spec!r}: expected a torch version or specifier, e.g. 2.5.1 or '>=2.6,<3'")
    return str(req)


def venv_python(venv: Path) -> Path:
    """The interpreter inside ``venv``."""
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _check_venv(venv: Path) -> bool:
    """Whether ``venv`` is already a virtual environment; refuses a file or a non-empty non-venv directory."""
    if (venv / "pyvenv.cfg").is_file():
        return True
    if venv.exists() and not venv.is_dir():
        raise PackError(f"--venv {venv} is a file; expected a new directory or an existing virtual environment")
    if venv.is_dir() and any(venv.iterdir()):
        raise PackError(f"--venv {venv} exists and is not a virtual environment (no pyvenv.cfg); expected a new or "
                        "empty directory, or an existing virtual environment")
    return False


def _requirements(packages: Sequence[str], editable: Path | None) -> list[tuple[str, ...]]:
    """pip's arguments for each package: ('-e', path) with ``editable``, else (requirement,)."""
    if editable is not None:
        return [("-e", str(editable.resolve() / "packages" / n)) for n in editable_closure(editable, packages)]
    ranges = all_packages()
    return [(ranges.get(n, f"lmstack-{n}"),) for n in packages]


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise PackError(f"unknown --target {target!r}; expected auto or one of: {', '.join(TARGETS)}")


def plan(venv: Path, *, target: str, packages: Sequence[str], torch: str = "torch", editable: Path | None = None,
         python: str = sys.executable, system_torch: bool = False, pip_args: Sequence[str] = ()) -> list[Step]:
    """The steps that install ``packages`` with torch from ``target``'s index into ``venv``, in order.

    ``system_torch`` makes the venv with ``--system-site-packages`` and installs no torch (the constraint is still the
    venv's own ``import torch``). ``pip_args`` go to every pip install (e.g. ``--no-index``, ``--no-deps``).
    """
    _check_target(target)
    if editable is not None and not (editable / "packages").is_dir():
        raise PackError(f"--editable {editable}: no packages/ directory there; expected the lmstack repository root")
    exists = _check_venv(venv)
    py = str(venv_python(venv))
    extra = tuple(pip_args)
    steps = []
    if not exists:
        steps.append(Step(f"create the virtual environment {venv}",
                          (python, "-m", "venv", *(["--system-site-packages"] if system_torch else []), str(venv))))
    steps.append(Step("upgrade pip", (py, "-m", "pip", "install", "--upgrade", "pip", *extra)))
    if not system_torch:
        steps.append(Step(f"install torch alone from PyTorch's {target} index",
                          (py, "-m", "pip", "install", torch, "--index-url", f"{TORCH_INDEX}/{target}", *extra)))
    constraint = venv / CONSTRAINT_FILE
    steps.append(Step("pin the installed torch", (py, "-c", _TORCH_VERSION), stdout_to=constraint))
    reqs = [a for r in _requirements(packages, editable) for a in r]
    steps.append(Step(f"install {', '.join(packages)} under the torch pin",
                      (py, "-m", "pip", "install", "-c", str(constraint), *reqs, *extra)))
    return steps


def requirements_text(*, target: str, packages: Sequence[str], torch: str = "torch", editable: Path | None = None,
                      why: str = "") -> str:
    """A pip requirements file: PyTorch's index for ``target`` as an extra index, torch, then the packages."""
    _check_target(target)
    lines = [f"# lmstack bootstrap: torch from PyTorch's {target} index" + (f" ({why})" if why else ""),
             "# pip install -r THIS_FILE  (its local version, e.g. +cu124, wins over PyPI's build of the same release)",
             f"--extra-index-url {TORCH_INDEX}/{target}", torch]
    lines += [" ".join(r) for r in _requirements(packages, editable)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ execute

def execute(steps: Sequence[Step], *, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """Run ``steps`` in order, printing each; the first that fails raises PackError naming it (later ones never run)."""
    from specs.io import atomic_write_text

    for i, step in enumerate(steps, 1):
        print(f"==> [{i}/{len(steps)}] {step.what}: {step.shell()}", flush=True)
        try:
            if step.stdout_to is None:
                proc = run(list(step.argv))
            else:
                proc = run(list(step.argv), stdout=subprocess.PIPE, text=True)
        except OSError as exc:
            raise PackError(f"step {i}/{len(steps)} ({step.what}) could not start: {exc}") from None
        if proc.returncode != 0:
            raise PackError(f"step {i}/{len(steps)} ({step.what}) failed with exit status {proc.returncode}: "
                            f"{step.shell()}; the steps before it are done, rerun after fixing it")
        if step.stdout_to is not None:
            atomic_write_text(step.stdout_to, proc.stdout)


# ---------------------------------------------------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    """``lmstack bootstrap [--venv DIR] [--target T] [--packages ...] [--torch SPEC] [--editable REPO] ...``."""
    p.add_argument("--venv", type=Path, default=Path(".venv"), help="the virtual environment (default .venv)")
    p.add_argument("--target", default="auto", help=f"auto or one of {', '.join(TARGETS)} (default auto)")
    p.add_argument("--packages", default="all", help="comma-separated lmstack packages, or all (default all)")
    p.add_argument("--torch", default=None, help="torch version or specifier, e.g. 2.5.1 or '>=2.6,<3'")
    p.add_argument("--editable", type=Path, default=None, metavar="REPO_ROOT",
                   help="install -e REPO_ROOT/packages/<name> (and the lmstack packages they need)")
    p.add_argument("--python", default=sys.executable, help="the interpreter that creates the venv")
    p.add_argument("--system-torch", action="store_true",
                   help="use the torch of --python's site-packages (venv --system-site-packages); install none")
    p.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                   help="an argument for every pip install (repeatable), e.g. --pip-arg=--no-index")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--requirements", type=Path, default=None, metavar="OUT",
                   help="write a pip requirements file instead of installing")


def run(args: argparse.Namespace) -> int:
    """Choose the target, then print, write or run the plan."""
    target, why = (choose_target() if args.target == "auto" else (args.target, "asked for with --target"))
    _check_target(target)
    if args.system_torch and args.torch:
        raise PackError("--system-torch installs no torch, so --torch has nothing to choose; give one of them")
    torch = torch_requirement(args.torch) if args.torch else "torch"
    packages = resolve_packages(args.packages, args.editable)
    if args.requirements is not None:
        from specs.io import atomic_write_text

        atomic_write_text(args.requirements, requirements_text(target=target, packages=packages, torch=torch,
                                                               editable=args.editable, why=why))
        print(f"# target {target}: {why}")
        print(f"wrote {args.requirements}: pip install -r {shlex.quote(str(args.requirements))}")
        return 0
    steps = plan(args.venv, target=target, packages=packages, torch=torch, editable=args.editable,
                 python=args.python, system_torch=args.system_torch, pip_args=args.pip_arg)
    print(f"# target {target}: {why}")
    if args.dry_run:
        print("\n".join(s.shell() for s in steps))
        return 0
    execute(steps)
    check = "lmstack doctor" if "pack" in packages else "python -c 'import torch'"
    print(f"done: . {shlex.quote(str(args.venv))}/bin/activate, then `{check}` checks the environment")
    return 0
