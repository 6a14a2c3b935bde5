"""JSON Schema (draft 2020-12) for lmstack's YAML documents, for editors and CI.

``lmstack schema --kind run -o .lmstack/run.schema.json`` writes the schema of a training config (RunConfig);
a first line ``# yaml-language-server: $schema=.lmstack/run.schema.json`` in a config then gives completion, hover
and errors in VS Code (Red Hat's YAML extension), Neovim and JetBrains. Kinds: ``run`` and each specs config class
(``ModelConfig``, ``TrainConfig``, ...), ``study`` (lmstack-autotune's study document) and ``policy``
(lmstack-safety's guardrail policy).

The schema is generated from the same classes the loaders build (pydantic's schema of the specs dataclasses and
models) and describes the current schema version. It checks names, types, ranges and choices; cross-field rules
(``data.seq_len`` within ``model.max_seq_len``, ...) and migrations of older versions are the loaders' work, which
``lmstack validate`` runs. A config the loader accepts always passes the schema (tested).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from specs.config import CONFIG_CLASSES, RunConfig
from specs.errors import ConfigError, suggest
from specs.migrations import SCHEMA_VERSION

DRAFT = "https://json-schema.org/draft/2020-12/schema"
KINDS = ("run", "study", "policy", *sorted(k for k in CONFIG_CLASSES if k != "RunConfig"))


def _config_schema(cls: type) -> dict[str, Any]:
    from pydantic import TypeAdapter

    schema = TypeAdapter(cls).json_schema()
    defs = schema.get("$defs", {})
    names = {c.__name__: c for c in CONFIG_CLASSES.values()}
    for name, sub in [(cls.__name__, schema), *defs.items()]:
        if name in names and sub.get("type") == "object":
            sub["additionalProperties"] = False  # unknown keys fail in the loader
            _tuples_take_strings(names[name], sub)
    return schema


def _tuples_take_strings(cls: type, schema: dict[str, Any]) -> None:
    """The loader splits ``a,b`` into a tuple field's items (``viz.backend: csv,tensorboard``): allow that string."""
    props = schema.get("properties", {})
    for f in dataclasses.fields(cls):
        prop = props.get(f.name)
        if prop is None:
            continue
        for alt in prop.get("anyOf", [prop]):
            if alt.get("type") == "array":
                arr = {k: v for k, v in alt.items() if k not in ("default", "title", "description")}
                for key in list(alt):
                    if key not in ("default", "title", "description"):
                        del alt[key]
                alt["anyOf"] = [arr, {"type": "string", "description": "comma-separated items"}]
                break


def json_schema(kind: str = "run") -> dict[str, Any]:
    """The JSON Schema of one document kind (see :data:`KINDS`)."""
    if kind == "run":
        schema = _config_schema(RunConfig)
        # train.init_from takes the model section from the checkpoint it names, so the file may leave it out.
        schema["required"] = [r for r in schema.get("required", []) if r != "model"]
        schema["properties"] = {
            "schema_version": {"type": "integer", "minimum": 1, "maximum": SCHEMA_VERSION,
                               "description": f"the config schema version (current: {SCHEMA_VERSION}); older "
                                              "versions are migrated on load"},
            **schema["properties"],
        }
        title = "lmstack training config (RunConfig)"
    elif kind in CONFIG_CLASSES:
        schema = _config_schema(CONFIG_CLASSES[kind])
        title = f"lmstack {kind}"
    elif kind == "study":
        schema = _model_schema("autotune.spec", "StudySpec", "lmstack-autotune")
        for name in ("sampler", "pruner"):  # the study also takes the bare type name: `sampler: tpe`
            prop = schema["properties"][name]
            names = sorted(prop["discriminator"]["mapping"])
            prop["oneOf"] = [*prop["oneOf"], {"type": "string", "enum": names}]
        title = "lmstack-autotune study"
    elif kind == "policy":
        schema = _model_schema("safety.policy", "Policy", "lmstack-safety")
        title = "lmstack-safety guardrail policy"
    else:
        raise ConfigError("kind", f"unknown document kind {kind!r}{suggest(kind, KINDS)}; expected one of: "
                                  f"{', '.join(KINDS)}")
    return {"$schema": DRAFT, "title": title, **{k: v for k, v in schema.items() if k != "title"}}


def _model_schema(module: str, name: str, dist: str) -> dict[str, Any]:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ConfigError("kind", f"this kind's schema comes from {dist}, which is not installed: "
                                  f"pip install {dist}") from None
    return getattr(mod, name).model_json_schema()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", default="run", help=f"the document kind, one of: {', '.join(KINDS)} (default run)")
    p.add_argument("-o", "--out", help="write the schema here (atomically) instead of printing it")


def run(args: argparse.Namespace) -> int:
    text = json.dumps(json_schema(args.kind), indent=2) + "\n"
    if args.out:
        from specs.io import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
