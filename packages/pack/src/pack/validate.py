"""``lmstack validate``: check lmstack documents and point every error at its file, line and column.

``lmstack validate cfgs/*.yaml study.yaml policy.yaml`` runs each document through the loader that will read it
(training configs through specs with their migrations and cross-field rules, autotune studies through
autotune's, guardrail policies through lmstack-safety's), so a file passes exactly when ``train.run`` (or the
study, or the server's guard) would accept it. The loaders stop at the first error; the JSON Schema
(:mod:`pack.schema`) then finds the others in the same file, so one run lists every wrong field. Each error is
placed on the line of its YAML key, like a compiler's (``FILE:LINE:COL: error: PATH: MESSAGE``), or as GitHub
Actions annotations (``--format github``) or JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from pack.schema import KINDS, json_schema
from specs.errors import ConfigError, LmstackError


@dataclass(frozen=True)
class Problem:
    """One error in one document. ``path`` is the dotted field path ('' for the whole document); ``line`` and
    ``column`` are 1-based, None when the field is not in the file (a missing key, an override)."""

    file: str
    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def text(self) -> str:
        where = self.file + (f":{self.line}:{self.column}" if self.line else "")
        return f"{where}: error: {self.path + ': ' if self.path else ''}{self.message}"

    def github(self) -> str:
        props = f"file={_gh(self.file, True)}"
        if self.line:
            props += f",line={self.line},col={self.column}"
        return f"::error {props},title=lmstack validate::{_gh(self.path + ': ' if self.path else '', False)}" \
               f"{_gh(self.message, False)}"


def _gh(text: str, prop: bool) -> str:
    """GitHub workflow-command escaping (actions/toolkit's escapeData / escapeProperty)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def detect_kind(doc: Mapping[str, Any]) -> str:
    """``study`` for an autotune study (``space`` / ``objective``), ``policy`` for a guardrail policy (``rules``),
    else ``run``."""
    if "space" in doc or "objective" in doc:
        return "study"
    if "rules" in doc:
        return "policy"
    return "run"


# --- where a dotted path is in the YAML ------------------------------------------------------
_INDEX = re.compile(r"\[(\d+)\]|(\d+)(?=$|[.\[])")


def locate(root: yaml.Node | None, path: str) -> tuple[int, int] | None:
    """1-based (line, column) of the key (or item) that ``path`` names in a composed YAML tree, or of the deepest
    mapping on the way when the rest is not in the file (a missing field). Keys may hold dots (autotune's
    ``space.train.lr``): the longest key that fits is taken."""
    if root is None:
        return None
    node, mark, rest = root, root.start_mark, path
    while rest:
        rest = rest.removeprefix(".")
        if isinstance(node, yaml.MappingNode):
            best = None
            for key, value in node.value:
                k = str(key.value)
                fits = rest == k or rest.startswith((k + ".", k + "["))
                if fits and (best is None or len(k) > len(str(best[0].value))):
                    best = (key, value)
            if best is None:
                break
            mark, node, rest = best[0].start_mark, best[1], rest[len(str(best[0].value)):]
        elif isinstance(node, yaml.SequenceNode):
            m = _INDEX.match(rest)
            if m is None or int(m.group(1) or m.group(2)) >= len(node.value):
                break
            node = node.value[int(m.group(1) or m.group(2))]
            mark, rest = node.start_mark, rest[m.end():]
        else:
            break
    return mark.line + 1, mark.column + 1


# --- the loaders ----------------------------------------------------------------------------
def _load(doc: dict[str, Any], kind: str, file: Path | None, overrides: Sequence[str], check_paths: bool) -> None:
    """Raise the loader's ConfigError for ``doc``, or return when it is valid."""
    if kind == "study":
        try:
            from autotune.spec import check_config, load_spec
        except ImportError:
            raise ConfigError("", "checking a study needs lmstack-autotune: pip install lmstack-autotune") from None
        check_config(load_spec(doc))
    elif kind == "policy":
        try:
            from safety.policy import policy_from_dict
        except ImportError:
            raise ConfigError("", "checking a policy needs lmstack-safety: pip install lmstack-safety") from None
        policy_from_dict(doc)
    else:
        from specs.config import CONFIG_CLASSES, RunConfig
        from specs.io import config_from_dict

        cls = RunConfig if kind == "run" else CONFIG_CLASSES[kind]
        if cls is RunConfig:
            doc = _model_from_init(doc, file, overrides, check_paths)
        config_from_dict(doc, cls, list(overrides))


def _model_from_init(doc: dict[str, Any], file: Path | None, overrides: Sequence[str],
                     check_paths: bool) -> dict[str, Any]:
    """A run that fine-tunes (``train.init_from``) may leave out the model section: train.run takes it from the
    checkpoint when it starts. Here the rest is checked under a stand-in model, and a local init_from must exist."""
    from specs.sources import split_source

    train = doc.get("train") if isinstance(doc.get("train"), Mapping) else {}
    init = train.get("init_from")
    for i, arg in enumerate(overrides):
        if arg.startswith("--train.init_from"):
            init = arg.partition("=")[2] or (overrides[i + 1] if i + 1 < len(overrides) else None)
    if not init or "model" in doc or any(a.startswith("--model.") for a in overrides):
        return doc
    if check_paths and isinstance(init, str) and split_source(init) is None:
        base = Path(init).expanduser()
        if not base.is_absolute() and not base.exists() and file is not None and (file.parent / base).exists():
            base = file.parent / base
        if not base.is_dir():
            raise ConfigError("train.init_from", f"directory not found: {init} (expected a saved checkpoint, a "
                                                 "Hugging Face model directory, or a source like registry:NAME@REF)")
    # the stand-in: every section but model is checked; nothing the checkpoint decides is assumed
    stand_in = {"d_model": 64, "n_heads": 4, "n_layers": 1, "d_ff": 128, "vocab_size": 256, "max_seq_len": 1 << 30}
    return {**doc, "model": stand_in}


def _schema_problems(doc: Any, kind: str) -> list[tuple[str, str]]:
    """(path, message) for every place the JSON Schema rejects; [] when jsonschema cannot say."""
    import jsonschema

    try:
        schema = json_schema(kind)
    except ConfigError:
        return []
    out = []
    for err in jsonschema.Draft202012Validator(schema).iter_errors(doc):
        msg = err.message
        if err.context:  # anyOf / oneOf: the alternative that got furthest says more than "not valid under any"
            deepest = max(err.context, key=lambda e: len(e.absolute_path))
            if len(deepest.absolute_path) > len(err.absolute_path):
                err, msg = deepest, deepest.message
            else:
                types = [repr(e.validator_value) for e in err.context if e.validator == "type"]
                enums = [repr(v) for e in err.context if e.validator in ("enum", "const")
                         for v in (e.validator_value if e.validator == "enum" else [e.validator_value])]
                msg = f"{err.instance!r} is not " + " or ".join(
                    ([f"of type {' or '.join(types)}"] if types else []) + ([f"one of {', '.join(enums)}"] if enums
                                                                          else [])) if types or enums else msg
        parts = list(err.absolute_path)
        if err.validator == "additionalProperties":
            for extra in sorted(set(err.instance) - set(err.schema.get("properties", {}))):
                out.append((_dotted([*parts, extra]), "unknown key"))
            continue
        if err.validator == "required" and kind == "run" and not parts:
            continue
        if err.validator == "type" and isinstance(err.instance, str) and _is_number(err.instance):
            msg += " (YAML 1.1 reads a number without a dot, like 1e-3, as a string: write 1.0e-3)"
        out.append((_dotted(parts), msg))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _dotted(parts: Sequence[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _parse(path: Path) -> tuple[Any, yaml.Node | None]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text), yaml.compose(text)  # JSON is YAML: the same tree gives positions
    return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)


def validate_file(path: str | os.PathLike[str], kind: str = "auto", overrides: Sequence[str] = (), *,
                  check_paths: bool = True) -> list[Problem]:
    """Every problem in one document ([] when its loader accepts it). ``kind``: ``auto`` or one of
    :data:`pack.schema.KINDS`; ``overrides``: dotted ``--section.field VALUE`` pairs, as train.run takes them;
    ``check_paths=False`` leaves out whether a local ``train.init_from`` exists yet (a project's run.sh makes it)."""
    p = Path(path)
    name = os.fspath(path)
    if not p.is_file():
        return [Problem(name, "", "file not found" if not p.exists() else "not a file; expected a YAML or JSON "
                                                                            "document")]
    try:
        doc, root = _parse(p)
    except UnicodeDecodeError:
        return [Problem(name, "", "not UTF-8 text; expected a YAML or JSON document")]
    except json.JSONDecodeError as exc:
        return [Problem(name, "", f"not valid JSON: {exc.msg}", exc.lineno, exc.colno)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        msg = " ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
        return [Problem(name, "", f"not valid YAML: {msg or exc}", *((mark.line + 1, mark.column + 1) if mark
                                                                      else (None, None)))]
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        return [Problem(name, "", f"expected a mapping of sections at the top, got a {type(doc).__name__}", 1, 1)]
    if kind == "auto":
        kind = detect_kind(doc)
    try:
        _load(doc, kind, p, overrides, check_paths)
        return []
    except ConfigError as exc:
        first = (exc.path, exc.message)
    except LmstackError as exc:
        first = ("", str(exc))
    found = [first] + [(q, m) for q, m in _schema_problems(doc, kind) if q != first[0]]
    overridden = {o[2:].partition("=")[0] for o in overrides if o.startswith("--")}
    seen: set[tuple[str, str]] = set()
    problems = []
    for q, m in found:
        if (q, m) in seen:
            continue
        seen.add((q, m))
        at = locate(root, q) if q and q not in overridden else None  # an override's value is not in the file
        problems.append(Problem(name, q, m, *(at or (None, None))))
    return sorted(problems, key=lambda q: (q.line or 0, q.column or 0))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="YAML or JSON documents")
    p.add_argument("--kind", default="auto",
                   help=f"auto (from the document's keys) or one of: {', '.join(KINDS)}")
    p.add_argument("--format", default="text", choices=["text", "github", "json"],
                   help="text (FILE:LINE:COL: error: ...), github (workflow annotations) or json")
    p.add_argument("--override", action="append", default=[], metavar="--SECTION.FIELD=VALUE",
                   help="a dotted override applied before checking, as train.run takes it (repeatable)")


def run(args: argparse.Namespace) -> int:
    if args.kind != "auto" and args.kind not in KINDS:
        raise ConfigError("kind", f"unknown document kind {args.kind!r}; expected auto or one of: {', '.join(KINDS)}")
    overrides = [part for o in args.override for part in ([o] if o.startswith("--") else ["--" + o])]
    results = {f: validate_file(f, args.kind, overrides) for f in args.files}
    problems = [q for qs in results.values() for q in qs]
    if args.format == "json":
        print(json.dumps({"files": len(results), "invalid": sum(bool(v) for v in results.values()),
                          "problems": [asdict(q) for q in problems]}, indent=2))
    else:
        for q in problems:
            print(q.github() if args.format == "github" else q.text())
        bad = sum(bool(v) for v in results.values())
        print(f"{len(results)} file{'s' * (len(results) != 1)} checked: "
              f"{'all valid' if not bad else f'{bad} invalid, {len(problems)} error' + 's' * (len(problems) != 1)}",
              file=sys.stderr)
    return 1 if problems else 0
