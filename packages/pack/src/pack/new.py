"""``lmstack new DIR --template NAME``: a ready-to-run project directory from a template (``cargo new``, cookiecutter).

Templates live in ``pack/templates/<name>/`` as package data. A file whose name ends ``.tmpl`` is rendered with
:class:`string.Template` (``$name`` is the project name, ``$$`` a literal ``$``) and loses the suffix; every other
file is copied byte for byte; ``*.sh`` files are executable. Files under ``templates/_shared/`` that a template lists
are copied into it as well. Every project also gets a ``.gitignore`` and ``.lmstack/run.schema.json`` (the JSON
Schema its configs' ``# yaml-language-server: $schema=...`` first line points at; ``.lmstack/policy.schema.json``
too where it ships a guardrail policy).

Every training config (RunConfig YAML) a template writes is checked as ``lmstack validate`` checks it before anything
is written, so a broken template fails whole, never as half a project. The project is built in a temporary sibling
directory and renamed into place; with ``--force`` into an existing directory each file is written atomically and
files the template does not write are left alone. Nothing is downloaded: every template runs on a CPU as written.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import string
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from pack.errors import PackError


@dataclass(frozen=True)
class TemplateInfo:
    """One template: a one-line description and the ``_shared/`` files it includes."""

    description: str
    shared: tuple[str, ...] = ()


TEMPLATES: dict[str, TemplateInfo] = {
    "pretrain": TemplateInfo("train a small Llama-style model from scratch, evaluate its perplexity, sample text",
                             ("generate.py",)),
    "finetune": TemplateInfo("LoRA fine-tuning of a saved model (or registry:NAME@REF) on the project's own text",
                             ("generate.py", "base.yaml.tmpl", "base.sh")),
    "dpo": TemplateInfo("preference tuning (DPO with LoRA) on the project's own chosen/rejected pairs",
                        ("generate.py", "base.yaml.tmpl", "base.sh")),
    "serve": TemplateInfo("an OpenAI-compatible server over a checkpoint, with a guardrail policy and a urllib client",
                          ()),
    "rag": TemplateInfo("retrieval-augmented answers: index the project's docs/, search them, ask a served model", ()),
}

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RUN_SCHEMA_LINE = "# yaml-language-server: $schema=.lmstack/run.schema.json"
POLICY_SCHEMA_LINE = "# yaml-language-server: $schema=.lmstack/policy.schema.json"
GITIGNORE = "runs/\nartifacts/\n*.safetensors\n.lmstack/\n__pycache__/\n"
_SKIP = ("__pycache__", ".pyc", ".DS_Store")


def templates() -> dict[str, str]:
    """The templates, name -> one-line description."""
    return {name: info.description for name, info in TEMPLATES.items()}


def check_name(name: str) -> str:
    """``name`` if it is a safe project name (letters, digits, ``-``, ``_``; at most 64), else a PackError."""
    if not NAME_RE.fullmatch(name):
        raise PackError(f"project name {name!r} is not allowed; expected letters, digits, '-' and '_' only, starting "
                        "with a letter or digit, at most 64 characters (pass --name NAME)")
    return name


def _walk(root: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if any(entry.name == s or entry.name.endswith(s) for s in _SKIP):
            continue
        rel = f"{prefix}{entry.name}"
        if entry.is_dir():
            yield from _walk(entry, rel + "/")
        else:
            yield rel, entry


def _template_root(template: str) -> Traversable:
    if template not in TEMPLATES:
        raise PackError(f"unknown template {template!r}; expected one of: {', '.join(TEMPLATES)} "
                        "(lmstack new --list describes them)")
    return files("pack") / "templates" / template


def render(template: str, name: str) -> dict[str, bytes]:
    """The files of ``template`` for project ``name``: relative POSIX path -> content, schema files included.
    Nothing is written."""
    check_name(name)
    root = _template_root(template)
    sources = [*_walk(root)]
    sources += [(s, files("pack") / "templates" / "_shared" / s) for s in TEMPLATES[template].shared]
    out: dict[str, bytes] = {}
    for rel, entry in sources:
        data = entry.read_bytes()
        if rel.endswith(".tmpl"):
            rel = rel[: -len(".tmpl")]
            try:
                data = string.Template(data.decode("utf-8")).substitute(name=name).encode("utf-8")
            except (KeyError, ValueError) as exc:
                raise PackError(f"template {template!r} file {rel}.tmpl has a bad placeholder ({exc}); only $name "
                                "is defined and a literal $ is written $$") from None
        out[rel] = data
    out[".gitignore"] = GITIGNORE.encode()
    out.update(_schemas(out))
    return out


def _schemas(rendered: Mapping[str, bytes]) -> dict[str, bytes]:
    import json

    from pack.schema import json_schema

    out = {".lmstack/run.schema.json": (json.dumps(json_schema("run"), indent=2) + "\n").encode()}
    if any(data.startswith(POLICY_SCHEMA_LINE.encode()) for data in rendered.values()):
        out[".lmstack/policy.schema.json"] = (json.dumps(json_schema("policy"), indent=2) + "\n").encode()
    return out


def run_configs(rendered: Mapping[str, bytes]) -> list[str]:
    """The paths among ``rendered`` that are training configs (their first line names the run schema)."""
    return [rel for rel, data in rendered.items() if rel.endswith((".yaml", ".yml"))
            and data.startswith(RUN_SCHEMA_LINE.encode())]


def _check(rendered: Mapping[str, bytes], template: str) -> None:
    """Every training config loads (lmstack validate's check; a config without a model section is checked under a
    stand-in model, its ``train.init_from`` being made by the project's run.sh)."""
    from pack.validate import validate_file

    with tempfile.TemporaryDirectory(prefix="lmstack-new-") as tmp:
        for rel in run_configs(rendered):
            p = Path(tmp) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(rendered[rel])
            problems = validate_file(p, "run", check_paths=False)
            if problems:
                raise PackError(f"template {template!r} is broken: its {rel} does not load ({problems[0].path}: "
                                f"{problems[0].message}); nothing was written (a bug in lmstack-pack: please "
                                "report it)")


def _mode(rel: str) -> int:
    return 0o755 if rel.endswith(".sh") else 0o644


def create(directory: str | os.PathLike[str], template: str, name: str | None = None, *,
           force: bool = False) -> list[Path]:
    """Write project ``template`` into ``directory``; returns the paths written, sorted.

    ``name`` defaults to the directory's name. A directory that exists and is not empty is refused unless
    ``force``, which overwrites the template's own files (each atomically) and keeps every other file."""
    target = Path(directory).expanduser().absolute()
    name = check_name(name if name is not None else target.name)
    rendered = render(template, name)
    _check(rendered, template)
    if target.exists() and not target.is_dir():
        raise PackError(f"{target} exists and is not a directory; expected a new or empty directory")
    occupied = target.is_dir() and any(target.iterdir())
    if occupied and not force:
        raise PackError(f"{target} exists and is not empty; expected a new or empty directory (--force writes the "
                        "template's files into it, keeping every other file)")
    if occupied:
        from specs.io import atomic_write_bytes

        for rel in rendered:
            if (target / rel).is_dir():
                raise PackError(f"{target / rel} is a directory; the template writes a file there")
        for rel, data in rendered.items():
            atomic_write_bytes(target / rel, data, mode=_mode(rel))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            for rel, data in rendered.items():
                p = tmp / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
                p.chmod(_mode(rel))
            tmp.chmod(0o755)
            try:
                os.replace(tmp, target)  # onto a missing or empty directory
            except OSError as exc:  # something appeared there meanwhile
                raise PackError(f"cannot create {target}: {exc.strerror or exc}; expected a new or empty "
                                "directory") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return sorted(target / rel for rel in rendered)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", help="the project directory to create (new or empty)")
    p.add_argument("--template", "-t", default="pretrain",
                   help=f"one of: {', '.join(TEMPLATES)} (default pretrain)")
    p.add_argument("--name", help="the project name (letters, digits, -, _; default: DIR's name)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty directory: the template's files are replaced, others kept")
    p.add_argument("--list", action="store_true", help="list the templates and exit")


def run(args: argparse.Namespace) -> int:
    if args.list:
        width = max(len(n) for n in TEMPLATES)
        for name, desc in templates().items():
            print(f"{name:<{width}}  {desc}")
        return 0
    if not args.dir:
        raise PackError("lmstack new needs a directory: lmstack new DIR --template NAME (--list shows templates)")
    written = create(args.dir, args.template, args.name, force=args.force)
    target = Path(args.dir)
    print(f"wrote {len(written)} files of template {args.template!r} into {target}", file=sys.stderr)
    print(f"next: cd {target} && cat README.md && ./{_first_script(written)}")
    return 0


def _first_script(written: list[Path]) -> str:
    order = ("run.sh", "serve.sh", "build.sh")
    names = {p.name for p in written}
    return next((s for s in order if s in names), "run.sh")
