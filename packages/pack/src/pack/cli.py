"""``lmstack``: one command line over every installed lmstack package.

``lmstack train --config cfgs/debug.yaml`` runs ``python -m train.run``, ``lmstack serve ...`` runs ``python -m serve``,
and so on for each package that is installed (a missing one is named with the pip command that installs it). pack's
own commands: ``new`` (a project from a template), ``validate`` and ``schema`` (configs with file:line errors, and
their JSON Schema for editors), ``doctor`` (what this environment can run), ``bootstrap`` (install lmstack into a
virtual environment with the right PyTorch build), ``bundle`` (a verified, reproducible model tarball).
Other distributions add commands through the ``lmstack.commands`` entry-point group.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import importlib.util
import runpy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pack
from specs.cli import run_cli
from specs.errors import ConfigError, suggest


@dataclass(frozen=True)
class Delegate:
    """A command that is another package's own CLI module, run as ``python -m MODULE``."""

    module: str
    distribution: str
    help: str


# The commands other packages own. `python -m MODULE ARGS` and `lmstack NAME ARGS` are the same call.
DELEGATES: dict[str, Delegate] = {
    "train": Delegate("train.run", "lmstack-train", "train from a YAML config (several GPUs: torchrun -m train.run)"),
    "serve": Delegate("serve", "lmstack-serve", "an OpenAI-compatible server over a checkpoint"),
    "eval": Delegate("eval.harness", "lmstack-eval", "lm-evaluation-harness with the lmstack model"),
    "bench": Delegate("eval.bench", "lmstack-eval", "speed and memory benchmarks against baselines in the same run"),
    "export": Delegate("export", "lmstack-export", "ONNX / TorchScript / safetensors exports"),
    "governance": Delegate("governance", "lmstack-governance", "SBOM, checksums and signatures, receipts, cards"),
    "corpus": Delegate("corpus", "lmstack-corpus", "corpus curation: dedup, PII, licences, shards"),
    "data": Delegate("data", "lmstack-data", "tokenizers and token shards"),
    "viz": Delegate("viz", "lmstack-viz", "scalars, probes and traces"),
    "interpret": Delegate("interpret", "lmstack-interpret", "logit lens, causal tracing, sparse autoencoders"),
    "rag": Delegate("rag", "lmstack-rag", "retrieval indexes, search, grounded answers"),
    "registry": Delegate("registry", "lmstack-registry", "the model registry: versions, stages, signatures"),
    "safety": Delegate("safety", "lmstack-safety", "guardrail policies and red-team suites"),
    "autotune": Delegate("autotune", "lmstack-autotune", "hyperparameter search over training runs"),
    "config": Delegate("specs", "lmstack-specs", "check or migrate one config with dotted overrides"),
}

# pack's own commands: module -> (help). Each module has add_arguments(parser) and run(args) -> int.
OWN: dict[str, tuple[str, str]] = {
    "new": ("pack.new", "a new project from a template (pretrain, finetune, dpo, serve, rag)"),
    "validate": ("pack.validate", "check config files; errors point at file:line:column"),
    "schema": ("pack.schema", "the JSON Schema of lmstack's YAML configs, for editors and CI"),
    "doctor": ("pack.doctor", "what this environment has and can run"),
    "bootstrap": ("pack.bootstrap", "install lmstack into a virtual environment with the right PyTorch build"),
    "bundle": ("pack.bundle", "build, verify and unpack reproducible model bundles"),
}

PLUGIN_GROUP = "lmstack.commands"


def lmstack_distributions() -> dict[str, str]:
    """Installed lmstack distributions (``lmstack-*``), name -> version, sorted by name."""
    found: dict[str, str] = {}
    for dist in md.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name.startswith("lmstack-") and name not in found:
            found[name] = dist.version
    return dict(sorted(found.items()))


def _installed(module: str) -> bool:
    top = module.split(".")[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def plugin_commands() -> dict[str, md.EntryPoint]:
    """Commands other distributions add (``lmstack.commands``); pack's and the delegates' names win a clash."""
    out: dict[str, md.EntryPoint] = {}
    for ep in md.entry_points(group=PLUGIN_GROUP):
        if ep.name not in OWN and ep.name not in DELEGATES:
            out.setdefault(ep.name, ep)
    return out


def _overview() -> str:
    lines = ["usage: lmstack COMMAND [ARGS...]   (lmstack COMMAND --help for a command's options)", "",
             "pack's commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in OWN.items()]
    lines += ["", "installed packages' commands (python -m MODULE is the same call):"]
    missing = []
    for name, d in DELEGATES.items():
        if _installed(d.module):
            lines.append(f"  {name:<11} {d.help}")
        else:
            missing.append(f"  {name:<11} pip install {d.distribution}")
    plugins = plugin_commands()
    if plugins:
        lines += ["", "commands from other distributions (lmstack.commands):"]
        lines += [f"  {name:<11} {ep.value}" for name, ep in sorted(plugins.items())]
    if missing:
        lines += ["", "not installed:", *missing]
    lines += ["", "lmstack --version lists the installed lmstack packages."]
    return "\n".join(lines)


def _run_module(module: str, argv: Sequence[str]) -> int:
    """``python -m module argv...`` in this process (sys.argv as that would set it); its exit status."""
    saved = sys.argv[:]
    sys.argv = [module, *argv]  # runpy puts the module's file in argv[0]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    finally:
        sys.argv = saved
    return 0


def _run_plugin(name: str, ep: md.EntryPoint, argv: Sequence[str]) -> int:
    if ":" not in ep.value:  # a module, run like python -m
        return _run_module(ep.value, argv)
    fn: Callable[[list[str]], int | None] = ep.load()
    try:
        return int(fn(list(argv)) or 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def _own(name: str, argv: Sequence[str]) -> int:
    module, help_ = OWN[name]
    mod = importlib.import_module(module)
    p = argparse.ArgumentParser(prog=f"lmstack {name}", description=(mod.__doc__ or help_).strip().splitlines()[0])
    mod.add_arguments(p)
    args = p.parse_args(list(argv))
    return int(mod.run(args) or 0)


def _version() -> str:
    dists = lmstack_distributions()
    width = max((len(n) for n in dists), default=12)
    lines = [f"lmstack-pack {pack.__version__} (python {sys.version.split()[0]})"]
    lines += [f"  {n:<{width}} {v}" for n, v in dists.items() if n != "lmstack-pack"]
    return "\n".join(lines)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    if argv[0] in ("-V", "--version", "version"):
        print(_version())
        return 0
    name, rest = argv[0], argv[1:]
    if name in OWN:
        return _own(name, rest)
    if name in DELEGATES:
        d = DELEGATES[name]
        if not _installed(d.module):
            raise ConfigError("command", f"'lmstack {name}' runs {d.module}, from {d.distribution}, which is not "
                                         f"installed: pip install {d.distribution}")
        return _run_module(d.module, rest)
    plugins = plugin_commands()
    if name in plugins:
        return _run_plugin(name, plugins[name], rest)
    known = [*OWN, *DELEGATES, *plugins]
    raise ConfigError("command", f"unknown command {name!r}{suggest(name, known)}; expected one of: "
                                 f"{', '.join(known)} (lmstack --help describes them)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
