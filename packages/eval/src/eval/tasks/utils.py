"""Loaders for the bundled lm-eval tasks: JSONL files next to this module, read offline into a DatasetDict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

HERE = Path(__file__).parent


def _load(name: str) -> datasets.DatasetDict:
    rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_mc(**_: Any) -> datasets.DatasetDict:
    return _load("lmstack_tiny_mc.jsonl")


def load_text(**_: Any) -> datasets.DatasetDict:
    return _load("lmstack_tiny_text.jsonl")


def load_qa(**_: Any) -> datasets.DatasetDict:
    return _load("lmstack_tiny_qa.jsonl")
