"""``lmstack doctor``: the real environment, ``pip check`` as the independent reference for the requirement check,
fabricated distributions and plugins (real ``.dist-info`` directories), a fake ``nvidia-smi`` on PATH, and the CLI."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from pack import doctor
from pack.cli import main
from pack.doctor import Check, DriverInfo, GpuInfo, TorchInfo

# nvidia-smi's header as printed on an H200 (driver 580) and on an older driver.
SMI_580 = """Tue Dec  1 00:16:53 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA H200                    On  |   00000000:00:06.0 Off |                    0 |
+-----------------------------------------+------------------------+----------------------+
"""
SMI_550 = SMI_580.replace("580.159.04", "550.54.15 ").replace("CUDA Version: 13.0", "CUDA Version: 12.4")


def write_dist(root: Path, name: str, version: str, requires: list[str] = (), requires_python: str | None = None,
               entry_points: str | None = None) -> None:
    """A real installed-distribution record: NAME-VERSION.dist-info with METADATA (and entry_points.txt)."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    if entry_points is not None:
        (info / "entry_points.txt").write_text(entry_points)


def no_torch() -> TorchInfo:
    raise ImportError("No module named 'torch'")


def fake_env(**kw):
    """run_checks arguments for a machine with no driver and a CPU torch (tests override what they need)."""
    base = dict(which=lambda name: None, torch_probe=lambda: TorchInfo("2.6.0+cpu", None, None, False), environ={})
    return {**base, **kw}


def pip_check_problems(env: dict[str, str] | None = None) -> set[tuple[str, str, str | None]]:
    """``pip check``'s problems that involve an lmstack-* distribution: (dist, requirement name, found version)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, env=env)
    out = set()
    for line in proc.stdout.splitlines():
        if m := re.match(r"(\S+) \S+ requires (\S+?),? which is not installed", line):
            item = (m.group(1), m.group(2), None)
        elif m := re.match(r"(\S+) \S+ has requirement (.+?), but you have (\S+) (\S+?)\.?$", line):
            item = (m.group(1), m.group(3), m.group(4))
        else:
            continue
        item = (str(canonicalize_name(item[0])), str(canonicalize_name(re.split(r"[<>=!~;\[ ]", item[1])[0])),
                item[2])
        if item[0].startswith("lmstack-") or item[1].startswith("lmstack-"):
            out.add(item)
    return out


def doctor_problems(distributions) -> set[tuple[str, str, str | None]]:
    dists = doctor.index_distributions(distributions)
    return {(p.dist, p.name, p.found) for p in doctor.requirement_problems(dists)}


# ------------------------------------------------------------------------------------------- real environment

@pytest.fixture(scope="module")
def real_checks() -> list[Check]:
    return doctor.run_checks()


def test_real_environment_has_no_error(real_checks):
    errors = [c for c in real_checks if c.status == "error"]
    assert errors == []
    names = {c.name for c in real_checks}
    assert {"python", "distributions", "requirements", "torch", "triton", "flash_attn", "TRITON_INTERPRET",
            "plugins", "driver"} <= names
    listing = next(c for c in real_checks if c.name == "distributions").detail
    assert f"lmstack-pack {md.version('lmstack-pack')}" in listing and "lmstack-specs" in listing
    import torch

    assert torch.__version__ in next(c for c in real_checks if c.name == "torch").detail
    n_eps = sum(1 for d in doctor.index_distributions(md.distributions()).values() for ep in d.entry_points
                if ep.group.startswith("lmstack."))
    assert n_eps > 0 and f"{n_eps} entry points" in next(c for c in real_checks if c.name == "plugins").detail


def test_real_requirements_agree_with_pip_check():
    assert doctor_problems(md.distributions()) == pip_check_problems()


def test_fabricated_requirements_agree_with_pip_check(tmp_path):
    write_dist(tmp_path, "lmstack-fake", "1.0", ["nonexistent-pkg-xyz>=1", "lmstack-specs>=5,<6", "pydantic>=2",
                                                 "lmstack-also-missing ; python_version >= '3'",
                                                 "never-there ; python_version < '3'", "lmstack-gone ; extra == 'x'"])
    write_dist(tmp_path, "lmstack-other", "0.1", ["lmstack-fake>=2"])
    write_dist(tmp_path, "unrelated", "1.0", ["also-nonexistent-xyz"])  # not lmstack's business
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    expected = {("lmstack-fake", "nonexistent-pkg-xyz", None), ("lmstack-fake", "lmstack-specs", md.version(
        "lmstack-specs")), ("lmstack-fake", "lmstack-also-missing", None), ("lmstack-other", "lmstack-fake", "1.0")}
    assert pip_check_problems(env) == expected
    assert doctor_problems(md.distributions(path=[str(tmp_path), *sys.path])) == expected


def test_fabricated_problems_are_errors_naming_package_and_specifier(tmp_path):
    write_dist(tmp_path, "lmstack-serve", "0.17.0", ["lmstack-specs<1,>=0.9", "nonexistent-pkg-xyz>=1.2"],
               requires_python=">=3.10")
    write_dist(tmp_path, "lmstack-specs", "0.8.1", [], requires_python=">=3.99")
    write_dist(tmp_path, "lmstack-ok", "1.0", ["lmstack-serve>=0.17"])
    checks = doctor.distribution_checks(doctor.index_distributions(md.distributions(path=[str(tmp_path)])), "3.11.7")
    errors = [c for c in checks if c.status == "error"]
    details = " | ".join(c.detail for c in errors)
    assert len(errors) == 3, details
    assert "lmstack-serve 0.17.0 requires lmstack-specs<1,>=0.9, but lmstack-specs 0.8.1 is installed" in details
    assert "lmstack-serve 0.17.0 requires nonexistent-pkg-xyz>=1.2, which is not installed" in details
    assert "Python 3.11.7: lmstack-specs 0.8.1 requires Python >=3.99" in details
    assert any(c.fix == "pip install 'lmstack-specs<1,>=0.9'" for c in errors)
    assert doctor.exit_status(checks) == 1
    listing = next(c for c in checks if c.name == "distributions")
    assert listing.detail == "3: lmstack-ok 1.0, lmstack-serve 0.17.0, lmstack-specs 0.8.1"


# ------------------------------------------------------------------------------------------------------ plugins

def test_broken_plugin_is_an_error_naming_group_name_distribution(tmp_path):
    write_dist(tmp_path, "lmstack-plugged", "0.3", entry_points=(
        "[lmstack.models]\nbroken = lmstack_no_such_module_xyz:Model\ngood = json:dumps\n"
        "[lmstack.tokenizers]\nnoattr = json:no_such_attribute\n[console_scripts]\nignored = nowhere_xyz:main\n"))
    checks = doctor.run_checks(distributions=list(md.distributions(path=[str(tmp_path)])), **fake_env())
    plugin = [c for c in checks if c.name == "plugins"]
    assert [c.status for c in plugin] == ["error", "error"]
    broken = next(c.detail for c in plugin if "broken" in c.detail)
    for part in ("lmstack.models", "'broken'", "lmstack-plugged 0.3", "ModuleNotFoundError",
                 "lmstack_no_such_module_xyz"):
        assert part in broken
    assert "lmstack.tokenizers 'noattr'" in next(c.detail for c in plugin if "noattr" in c.detail)
    assert doctor.exit_status(checks) == 1
    dist = next(iter(md.distributions(path=[str(tmp_path)])))
    good = doctor.plugin_checks([ep for ep in dist.entry_points if ep.name == "good"])
    assert good == [Check("plugins", "ok", "1 entry points in 1 lmstack.* groups load")]


# ------------------------------------------------------------------------------------------------ torch, driver

def fake_smi(tmp_path: Path, text: str, code: int = 0) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "header.txt").write_text(text)
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\ncat '{bin_dir / 'header.txt'}'\nexit {code}\n")
    exe.chmod(0o755)
    return bin_dir


def test_fake_nvidia_smi_on_path_is_parsed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_smi(tmp_path, SMI_550)}{os.pathsep}{os.environ['PATH']}")
    assert doctor.query_driver() == (DriverInfo("550.54.15", "12.4"), "")
    assert doctor.parse_nvidia_smi(SMI_580) == DriverInfo("580.159.04", "13.0")
    assert doctor.parse_nvidia_smi("No devices were found") is None
    gpu = TorchInfo("2.5.1+cu124", "12.4", None, True, (GpuInfo(0, "NVIDIA H100", (9, 0), 80 * 2**30, True),))
    checks = doctor.run_checks(distributions=[], torch_probe=lambda: gpu, environ={})
    assert next(c for c in checks if c.name == "driver") == Check(
        "driver", "ok", "NVIDIA driver 550.54.15, supports CUDA up to 12.4; torch is built for CUDA 12.4")
    assert next(c for c in checks if c.name == "gpu0").detail == (
        "NVIDIA H100, compute capability 9.0, 80.0 GiB, bf16 yes")


def test_failing_nvidia_smi_is_a_warning(tmp_path):
    bin_dir = fake_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", 9)
    driver, why = doctor.query_driver(which=lambda n: str(bin_dir / n))
    assert driver is None and "exited 9" in why and "couldn't communicate" in why
    assert doctor.driver_checks(None, driver, why)[0].status == "warn"


@pytest.mark.parametrize("torch_cuda,status", [("12.4", "ok"), ("12.1", "ok"), ("12.6", "warn"), ("13.0", "error")])
def test_torch_cuda_build_against_driver(torch_cuda, status):
    info = TorchInfo(f"2.6.0+cu{torch_cuda.replace('.', '')}", torch_cuda, None, True)
    check = doctor.driver_checks(info, DriverInfo("550.54.15", "12.4"), "")[0]
    assert check.status == status
    if status != "ok":
        assert f"CUDA {torch_cuda}" in check.detail and "lmstack bootstrap --target auto" in check.fix


def test_old_gpu_warns_and_missing_torch_is_an_error():
    turing = TorchInfo("2.5.1+cu121", "12.1", None, True, (GpuInfo(0, "Tesla T4", (7, 5), 15 * 2**30, False),
                                                           GpuInfo(1, "NVIDIA A100", (8, 0), 40 * 2**30, True)))
    checks = doctor.torch_checks(turing, "", DriverInfo("535.1", "12.2"))
    assert [c.status for c in checks] == ["ok", "warn", "ok"]
    assert "Tesla T4" in checks[1].detail and "8.0" in checks[1].fix
    assert doctor.exit_status(checks) == 0 and doctor.exit_status(checks, strict=True) == 1
    unseen = doctor.torch_checks(TorchInfo("2.5.1+cu121", "12.1", None, False), "", DriverInfo("535.1", "12.2"))
    assert unseen[0].status == "warn"  # a CUDA build that sees no GPU although the driver is there
    checks = doctor.run_checks(distributions=[], **fake_env(torch_probe=no_torch))
    torch = next(c for c in checks if c.name == "torch")
    assert torch.status == "error" and "pip install torch --index-url https://download.pytorch.org/whl/cpu" in torch.fix


def test_triton_and_interpreter_checks():
    cuda = TorchInfo("2.6.0+cu124", "12.4", None, True)
    absent = doctor.kernel_checks(cuda, {"TRITON_INTERPRET": "1"}, find_spec=lambda name: None)
    by_name = {c.name: c for c in absent}
    assert by_name["triton"].status == "warn" and by_name["triton"].fix == "pip install triton"
    assert by_name["flash_attn"].status == "ok"
    assert by_name["xgrammar"].status == "ok" and "lmstack-serve[structured]" in by_name["xgrammar"].detail
    assert by_name["TRITON_INTERPRET"].status == "warn"
    present = {c.name: c for c in doctor.kernel_checks(cuda, {}, find_spec=lambda name: object())}
    assert present["xgrammar"].detail.startswith("xgrammar ")
    cpu = doctor.kernel_checks(TorchInfo("2.6.0+cpu", None, None, False), {"TRITON_INTERPRET": "1"},
                               find_spec=lambda name: None)
    assert all(c.status == "ok" for c in cpu)


# ---------------------------------------------------------------------------------------------------------- CLI

def test_cli_json_is_parseable_and_exit_follows_statuses(capsys, monkeypatch, real_checks):
    monkeypatch.setattr(doctor, "run_checks", lambda: real_checks)
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["schema_version", "status", "counts", "checks"]
    assert report["counts"]["error"] == 0 and len(report["checks"]) == len(real_checks)
    assert all(list(c) == ["name", "status", "detail", "fix"] for c in report["checks"])

    warn = [Check("a", "ok", "fine"), Check("b", "warn", "hmm", "do x")]
    monkeypatch.setattr(doctor, "run_checks", lambda: warn)
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "1 ok, 1 warn, 0 error" in text and "fix: do x" in text
    assert main(["doctor", "--strict", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "warn"
    monkeypatch.setattr(doctor, "run_checks", lambda: [*warn, Check("c", "error", "bad", "fix it")])
    assert main(["doctor", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["counts"] == {"ok": 1, "warn": 1, "error": 1}


def test_cli_runs_the_real_checks(capsys):
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["error"] == 0
