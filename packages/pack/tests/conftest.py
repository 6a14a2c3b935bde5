"""Shared paths and documents for pack's tests."""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import strategies as st

from pack.schema import json_schema
from specs.config import RunConfig
from specs.schema import ConfigBase

ROOT = Path(__file__).resolve().parents[3]
DEBUG = ROOT / "cfgs" / "debug.yaml"


@pytest.fixture
def debug_doc() -> dict:
    return copy.deepcopy(yaml.safe_load(DEBUG.read_text()))


# --- hypothesis: edits of a RunConfig document, many of them ones the loader accepts ------------
def _fields() -> list[tuple[str, str]]:
    """(section, field) for every field of every section of a RunConfig."""
    hints = typing.get_type_hints(RunConfig)
    return [(f.name, g.name) for f in dataclasses.fields(RunConfig)
            if isinstance(hints[f.name], type) and issubclass(hints[f.name], ConfigBase)
            for g in dataclasses.fields(hints[f.name])]


VALUES = st.one_of(st.integers(-3, 5000), st.floats(-10, 1e4, allow_nan=False), st.booleans(), st.none(),
                   st.sampled_from(["auto", "csv", "none", "cosine", "FSDP", "fsdp", "", "1e-3", "3.0e-4", "swiglu",
                                    "rope", "bf16", "byte", "embedded", "mlp", "silu", "sdpa"]),
                   st.lists(st.sampled_from(["csv", "jsonl", "tensorboard", "x"]), max_size=3),
                   st.dictionaries(st.sampled_from(["type", "factor", "r", "alpha"]),
                                   st.one_of(st.integers(0, 8), st.sampled_from(["linear", "llama3"])), max_size=2))


def _near(prop: dict) -> st.SearchStrategy:
    """Values around what a property allows (its choices, its bounds and a little past them), so that many edits
    are ones the loader accepts."""
    prop = json_schema("run")["$defs"].get(prop["$ref"].rsplit("/", 1)[1], {}) if "$ref" in prop else prop
    alts = [_near(a) for a in prop.get("anyOf", [])]
    if "enum" in prop:
        alts.append(st.sampled_from(prop["enum"]))
    kind = prop.get("type")
    low = prop.get("minimum", prop.get("exclusiveMinimum", 0))
    if kind == "integer":
        alts.append(st.integers(low - 1, low + 300))
    elif kind == "number":
        alts.append(st.floats(low - 0.5, low + 10.0, allow_nan=False))
    elif kind == "boolean":
        alts.append(st.booleans())
    elif kind == "string" and "enum" not in prop:
        alts.append(st.sampled_from(["x", "auto", "csv,jsonl", ""]))
    elif kind == "array":
        alts.append(st.lists(st.sampled_from(["csv", "jsonl", "q_proj"]), max_size=2))
    elif kind == "null":
        alts.append(st.none())
    return st.one_of(alts) if alts else VALUES


_RUN_DEFS = json_schema("run")["$defs"]
PROPS = {(sec, f): _RUN_DEFS[typing.get_type_hints(RunConfig)[sec].__name__]["properties"][f]
         for sec, f in _fields()}


@st.composite
def edit_strategy(draw: st.DrawFn) -> tuple[tuple[str, str], object]:
    where = draw(st.sampled_from(sorted(PROPS)))
    return where, draw(st.one_of(VALUES, _near(PROPS[where]), _near(PROPS[where])))


