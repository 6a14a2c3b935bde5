"""``lmstack doctor``: what this environment has and can run.

Each check reports ``ok``, ``warn`` or ``error`` with a one-line detail and, for a warn or an error, the fix (a pip
command or a setting). The checks: the Python version against every lmstack distribution's ``Requires-Python``; the
installed lmstack distributions and their ``Requires-Dist`` (``pip check``, scoped to lmstack); torch's build, its
devices and their compute capability; triton, flash-attn, xgrammar and ``TRITON_INTERPRET``; every ``lmstack.*``
entry point (each is loaded); and the NVIDIA driver, from ``nvidia-smi``'s header, against torch's CUDA build.

``run_checks`` takes its inputs as arguments (distributions, entry points, ``which``, ``run``, the torch probe, the
environment) so each check can be tested with fabricated ones.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

STATUSES = ("ok", "warn", "error")
PLUGIN_PREFIX = "lmstack."
TORCH_INDEX = "https://download.pytorch.org/whl"


@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is ok, warn or error; ``fix`` says what to do for a warn or an error."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        assert self.status in STATUSES, self.status


@dataclass(frozen=True)
class GpuInfo:
    """One device as torch sees it. ``memory_bytes`` is the total memory in bytes."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_bytes: int
    bf16: bool


@dataclass(frozen=True)
class TorchInfo:
    """torch's build and devices: ``cuda``/``hip`` are torch.version.cuda/hip (None on other builds)."""

    version: str
    cuda: str | None
    hip: str | None
    cuda_available: bool
    devices: tuple[GpuInfo, ...] = ()


@dataclass(frozen=True)
class DriverInfo:
    """The NVIDIA driver: its version and the newest CUDA version it supports (nvidia-smi's header)."""

    driver_version: str
    cuda_version: str


@dataclass(frozen=True)
class RequirementProblem:
    """A requirement of ``dist`` that is missing (``found`` is None) or installed outside its specifier."""

    dist: str
    version: str
    requirement: str
    name: str
    found: str | None


# ---------------------------------------------------------------------------------------------------------- probes

def probe_torch() -> TorchInfo:
    """Import torch and describe its build and devices; raises ImportError when torch is not installed."""
    import torch

    devices = []
    available = bool(torch.cuda.is_available())
    if available:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cap = (int(props.major), int(props.minor))
            bf16 = cap >= (8, 0) if torch.version.hip is None else bool(torch.cuda.is_bf16_supported())
            devices.append(GpuInfo(i, str(props.name), cap, int(props.total_memory), bf16))
    return TorchInfo(str(torch.__version__), torch.version.cuda, torch.version.hip, available, tuple(devices))


_DRIVER_RE = re.compile(r"Driver Version:\s*([0-9][0-9.]*)")
_CUDA_RE = re.compile(r"CUDA Version:\s*([0-9]+\.[0-9]+)")


def parse_nvidia_smi(text: str) -> DriverInfo | None:
    """The driver and max CUDA version from ``nvidia-smi``'s header (``Driver Version: 550.54  CUDA Version: 12.4``)."""
    driver, cuda = _DRIVER_RE.search(text), _CUDA_RE.search(text)
    if driver is None or cuda is None:
        return None
    return DriverInfo(driver.group(1), cuda.group(1))


def query_driver(*, which: Callable[[str], str | None] = shutil.which,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> tuple[DriverInfo | None, str]:
    """Run ``nvidia-smi``; (driver, '') when its header parses, else (None, why not)."""
    exe = which("nvidia-smi")
    if exe is None:
        return None, "nvidia-smi is not on PATH"
    try:
        proc = run([exe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{exe} could not run: {exc}"
    out = f"{proc.stdout or ''}\n{proc.stderr or ''}"
    info = parse_nvidia_smi(out) if proc.returncode == 0 else None
    if info is None:
        first = next((line.strip() for line in out.splitlines() if line.strip()), "no output")
        return None, f"{exe} exited {proc.returncode} without a driver header: {first}"
    return info, ""


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


# ------------------------------------------------------------------------------------------- distribution checks

def _canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def index_distributions(distributions: Iterable[md.Distribution]) -> dict[str, md.Distribution]:
    """Canonical name -> distribution; the first one found wins, as for imports and pip."""
    out: dict[str, md.Distribution] = {}
    for dist in distributions:
        name = dist.metadata.get("Name")
        if name:
            out.setdefault(_canonical(name), dist)
    return out


def _lmstack(dists: Mapping[str, md.Distribution]) -> dict[str, md.Distribution]:
    return {n: d for n, d in sorted(dists.items()) if n.startswith("lmstack-")}


def requirement_problems(dists: Mapping[str, md.Distribution]) -> list[RequirementProblem]:
    """Like ``pip check`` scoped to lmstack: each unmet requirement of an lmstack distribution, or of any
    distribution on an lmstack one. Requirements whose marker does not apply here (extras' included) are skipped."""
    from packaging.requirements import InvalidRequirement, Requirement

    problems = []
    for name, dist in sorted(dists.items()):
        for line in dist.requires or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            target = _canonical(req.name)
            if not (name.startswith("lmstack-") or target.startswith("lmstack-")):
                continue
            found = dists.get(target)
            if found is not None and req.specifier.contains(found.version, prereleases=True):
                continue
            shown = f"{req.name}{req.specifier}" if req.specifier else req.name
            problems.append(RequirementProblem(name, dist.version, shown, target,
                                               None if found is None else found.version))
    return problems


def distribution_checks(dists: Mapping[str, md.Distribution], python_version: str) -> list[Check]:
    """Checks 1 and 2: the Python version, the lmstack distributions and their requirements."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    ours = _lmstack(dists)
    checks = []
    bad_python = []
    for name, dist in ours.items():
        spec = dist.metadata.get("Requires-Python")
        try:
            if spec and not SpecifierSet(spec).contains(python_version, prereleases=True):
                bad_python.append(f"{name} {dist.version} requires Python {spec}")
        except InvalidSpecifier:
            bad_python.append(f"{name} {dist.version} has an invalid Requires-Python {spec!r}")
    if bad_python:
        checks += [Check("python", "error", f"Python {python_version}: {b}",
                         "use a Python that satisfies it: lmstack bootstrap --python PYTHON --venv DIR")
                   for b in bad_python]
    else:
        checks.append(Check("python", "ok", f"Python {python_version} satisfies Requires-Python of "
                                            f"{len(ours)} lmstack distributions"))
    listing = ", ".join(f"{n} {d.version}" for n, d in ours.items()) or "none installed"
    checks.append(Check("distributions", "ok" if ours else "warn", f"{len(ours)}: {listing}",
                        "" if ours else "pip install lmstack-pack[all]"))
    problems = requirement_problems(dists)
    for p in problems:
        if p.found is None:
            detail = f"{p.dist} {p.version} requires {p.requirement}, which is not installed"
        else:
            detail = f"{p.dist} {p.version} requires {p.requirement}, but {p.name} {p.found} is installed"
        checks.append(Check("requirements", "error", detail, f"pip install '{p.requirement}'"))
    if not problems:
        checks.append(Check("requirements", "ok", f"every requirement of the {len(ours)} lmstack distributions is met"))
    return checks


def plugin_checks(entry_points: Iterable[md.EntryPoint]) -> list[Check]:
    """Check 5: load every ``lmstack.*`` entry point; one that fails is an error naming group, name and distribution."""
    checks, loaded, groups = [], 0, set()
    for ep in entry_points:
        if not ep.group.startswith(PLUGIN_PREFIX):
            continue
        dist = getattr(ep, "dist", None)
        owner = f"{dist.metadata.get('Name')} {dist.version}" if dist is not None else "unknown distribution"
        try:
            ep.load()
        except Exception as exc:  # a plugin's import can fail in any way; report it, do not crash the report
            checks.append(Check("plugins", "error", f"{ep.group} {ep.name!r} = {ep.value} from {owner} failed to "
                                                    f"load: {type(exc).__name__}: {exc}",
                                f"reinstall or fix {owner.split()[0]}, or uninstall it"))
            continue
        loaded += 1
        groups.add(ep.group)
    if not checks:
        checks.append(Check("plugins", "ok", f"{loaded} entry points in {len(groups)} lmstack.* groups load"))
    return checks


# ------------------------------------------------------------------------------------------------ device checks

def torch_checks(torch: TorchInfo | None, torch_error: str, driver: DriverInfo | None) -> list[Check]:
    """Check 3: torch's build, whether a GPU is usable, and each device's capability, memory and bf16."""
    if torch is None:
        return [Check("torch", "error", torch_error,
                      f"pip install torch --index-url {TORCH_INDEX}/cpu (or `lmstack bootstrap --target auto` for "
                      "the CUDA/ROCm build this machine's driver supports)")]
    build = f"CUDA {torch.cuda} build" if torch.cuda else f"ROCm {torch.hip} build" if torch.hip else "CPU build"
    checks = []
    if torch.cuda_available:
        checks.append(Check("torch", "ok", f"torch {torch.version} ({build}); {len(torch.devices)} GPU(s) available"))
    elif (torch.cuda or torch.hip) and driver is not None:
        checks.append(Check("torch", "warn", f"torch {torch.version} ({build}) sees no GPU although nvidia-smi "
                                             f"reports driver {driver.driver_version}",
                            "check CUDA_VISIBLE_DEVICES and that `nvidia-smi` lists the GPU"))
    else:
        checks.append(Check("torch", "ok", f"torch {torch.version} ({build}); no GPU available, runs on CPU"))
    for gpu in torch.devices:
        cap = f"{gpu.capability[0]}.{gpu.capability[1]}"
        detail = (f"{gpu.name}, compute capability {cap}, {gpu.memory_bytes / 2**30:.1f} GiB, "
                  f"bf16 {'yes' if gpu.bf16 else 'no'}")
        if torch.hip is None and gpu.capability < (8, 0):
            checks.append(Check(f"gpu{gpu.index}", "warn", detail + ": below 8.0",
                                "Triton kernels and bf16 want Ampere (8.0) or newer: use dtype float16 or float32 "
                                "and the reference kernels on this GPU"))
        else:
            checks.append(Check(f"gpu{gpu.index}", "ok", detail))
    return checks


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def kernel_checks(torch: TorchInfo | None, environ: Mapping[str, str],
                  find_spec: Callable[[str], object] = importlib.util.find_spec) -> list[Check]:
    """Check 4: triton (wanted on a GPU), flash-attn and xgrammar (optional) and ``TRITON_INTERPRET``."""
    gpu = torch is not None and bool(torch.cuda or torch.hip)
    checks = []
    if find_spec("triton") is not None:
        version = _dist_version("triton", "pytorch-triton-rocm", "pytorch-triton") or "unknown version"
        checks.append(Check("triton", "ok", f"triton {version}"))
    elif gpu:
        checks.append(Check("triton", "warn", "triton is not installed: the Triton kernels fall back to the "
                                              "pure-torch reference", "pip install triton"))
    else:
        checks.append(Check("triton", "ok", "not installed (not needed on a CPU build; the reference kernels run)"))
    if find_spec("flash_attn") is not None:
        checks.append(Check("flash_attn", "ok", f"flash-attn {_dist_version('flash-attn') or 'unknown version'}"))
    else:
        checks.append(Check("flash_attn", "ok", "not installed (optional: pip install flash-attn "
                                                "--no-build-isolation, on a CUDA machine)"))
    if find_spec("xgrammar") is not None:
        checks.append(Check("xgrammar", "ok", f"xgrammar {_dist_version('xgrammar') or 'unknown version'}: "
                                              "lmstack-serve's structured outputs and tool calls"))
    else:
        checks.append(Check("xgrammar", "ok", "not installed (optional: structured outputs and tool calls in "
                                              "lmstack-serve: pip install 'lmstack-serve[structured]')"))
    interp = environ.get("TRITON_INTERPRET")
    if interp and interp != "0" and torch is not None and torch.cuda_available:
        checks.append(Check("TRITON_INTERPRET", "warn", f"TRITON_INTERPRET={interp} on a machine with a GPU: Triton "
                                                        "kernels run in the slow CPU interpreter",
                            "unset TRITON_INTERPRET"))
    else:
        state = f"set ({interp})" if interp else "unset"
        checks.append(Check("TRITON_INTERPRET", "ok", f"{state}"))
    return checks


def driver_checks(torch: TorchInfo | None, driver: DriverInfo | None, why: str) -> list[Check]:
    """Check 6: the NVIDIA driver and whether it supports torch's CUDA build."""
    if driver is None:
        if why.startswith("nvidia-smi is not on PATH"):
            return [Check("driver", "ok", "nvidia-smi is not on PATH: no NVIDIA driver (CPU or ROCm machine)")]
        return [Check("driver", "warn", why, "reinstall or reload the NVIDIA driver until `nvidia-smi` runs")]
    detail = f"NVIDIA driver {driver.driver_version}, supports CUDA up to {driver.cuda_version}"
    if torch is None or not torch.cuda:
        return [Check("driver", "ok", detail)]
    need, have = _version_tuple(torch.cuda), _version_tuple(driver.cuda_version)
    fix = (f"update the NVIDIA driver to one supporting CUDA {torch.cuda}, or install torch for CUDA <= "
           f"{driver.cuda_version}: lmstack bootstrap --target auto")
    if need[:1] > have[:1]:
        return [Check("driver", "error", f"{detail}; torch {torch.version} is built for CUDA {torch.cuda}", fix)]
    if need > have:
        return [Check("driver", "warn", f"{detail}; torch {torch.version} is built for CUDA {torch.cuda} (runs "
                                        "through CUDA minor-version compatibility; PTX JIT may fail)", fix)]
    return [Check("driver", "ok", f"{detail}; torch is built for CUDA {torch.cuda}")]


# --------------------------------------------------------------------------------------------------- the report

def run_checks(*, distributions: Iterable[md.Distribution] | None = None,
               entry_points: Iterable[md.EntryPoint] | None = None,
               which: Callable[[str], str | None] = shutil.which,
               run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
               torch_probe: Callable[[], TorchInfo] = probe_torch,
               environ: Mapping[str, str] | None = None,
               python_version: str | None = None) -> list[Check]:
    """Every check, in report order. Defaults read this environment; each argument replaces one input.

    ``entry_points`` defaults to the ``lmstack.*`` entry points of ``distributions``.
    """
    dists = index_distributions(md.distributions() if distributions is None else distributions)
    if entry_points is None:
        entry_points = [ep for d in dists.values() for ep in d.entry_points]
    checks = distribution_checks(dists, python_version or platform.python_version())
    try:
        torch, torch_error = torch_probe(), ""
    except ImportError as exc:
        torch, torch_error = None, f"torch is not installed ({exc})"
    except Exception as exc:  # a broken torch install (missing CUDA libraries, ...): report, do not crash
        torch, torch_error = None, f"torch fails to import: {type(exc).__name__}: {exc}"
    driver, why = query_driver(which=which, run=run)
    checks += torch_checks(torch, torch_error, driver)
    checks += kernel_checks(torch, os.environ if environ is None else environ)
    checks += plugin_checks(entry_points)
    checks += driver_checks(torch, driver, why)
    return checks


def exit_status(checks: Iterable[Check], *, strict: bool = False) -> int:
    """0 unless a check is an error (or, with ``strict``, a warning): then 1."""
    bad = {"error", "warn"} if strict else {"error"}
    return 1 if any(c.status in bad for c in checks) else 0


def report_dict(checks: list[Check]) -> dict:
    """The report as a JSON-ready dict with stable keys: status (the worst), counts, checks."""
    counts = {s: sum(c.status == s for c in checks) for s in STATUSES}
    worst = next((s for s in reversed(STATUSES) if counts[s]), "ok")
    return {"schema_version": 1, "status": worst, "counts": counts, "checks": [asdict(c) for c in checks]}


def format_report(checks: list[Check]) -> str:
    """The report as aligned text lines, each warn/error followed by its fix."""
    counts = report_dict(checks)["counts"]
    width = max((len(c.name) for c in checks), default=0)
    lines = [f"lmstack doctor: {counts['ok']} ok, {counts['warn']} warn, {counts['error']} error"]
    for c in checks:
        lines.append(f"  {c.status:<5}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"  {'':<5}  {'':<{width}}  fix: {c.fix}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``lmstack doctor [--json] [--strict]``."""
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too, not only on errors")


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 1 when a check is an error (or a warning, with --strict)."""
    checks = run_checks()
    print(json.dumps(report_dict(checks), indent=2) if args.json else format_report(checks))
    return exit_status(checks, strict=args.strict)
