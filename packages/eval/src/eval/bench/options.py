"""argparse ``type=`` functions shared by the ``python -m eval.bench`` subcommands.

Each turns one option's text into its value or raises ``argparse.ArgumentTypeError`` saying what was wrong and what
was expected, so bad input stops at parse time (exit status 2, no traceback) before any model is built, anything is
timed or a file is written.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

DEVICE_FORMS = "auto, or a torch device such as cpu, cuda or cuda:0"


def count(minimum: int, why: str = "") -> Callable[[str], int]:
    """An integer of at least ``minimum`` (steps, tokens, requests, ...); ``why`` joins the error when given."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{f' ({why})' if why else ''}, got {value}")
        return value

    return parse


def counts(minimum: int) -> Callable[[str], list[int]]:
    """Comma-separated integers, each at least ``minimum`` (``"1,4,8"`` -> ``[1, 4, 8]``), at least one."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            values = []
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {minimum} such as 1,4,8, "
                                             f"got {text!r}")
        return values

    return parse


def seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def device(text: str) -> str:
    """``auto`` or a string ``torch.device`` parses (``cpu``, ``cuda``, ``cuda:0``); whether CUDA is there is
    :func:`eval.loading.pick_device`'s question, asked later."""
    if text != "auto":
        try:
            torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"expected {DEVICE_FORMS}, got {text!r}") from None
    return text


def names(valid: Sequence[str]) -> Callable[[str], list[str]]:
    """Comma-separated names, each one of ``valid`` (``--variants``), at least one."""

    def parse(text: str) -> list[str]:
        chosen = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in chosen if s not in valid]
        if bad or not chosen:
            what = f"unknown {', '.join(map(repr, bad))}" if bad else f"none given in {text!r}"
            raise argparse.ArgumentTypeError(f"{what}; valid (comma-separated): {', '.join(valid)}")
        return chosen

    return parse


def out_file(text: str) -> str:
    """A file path the JSON can be written to: not a directory, under a directory that exists or can be made. Only
    checked here (nothing is created), so a bad path fails before the benchmark rather than after it."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; expected a file path such as {path / 'bench.json'}")
    parent = path.absolute().parent
    while not parent.exists():  # the nearest ancestor that exists is where the directories would be made
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is not writable")
    return text
