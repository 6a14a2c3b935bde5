"""Reward functions for ``train.grpo.rewards``, called as TRL calls them (``prompts=``, ``completions=``,
``completion_ids=`` and the prompt file's columns as keywords; one float or None a completion). A completion is its
text, or for chat prompts a list of one assistant message.

- ``rl.rewards:exact_match``: 1.0 when the completion, stripped, is the row's ``answer`` column, stripped (0.0
  otherwise; None where the row has no answer).
- ``rl.rewards:think_format``: 1.0 when the completion puts its reasoning in one ``<think>...</think>`` block
  before the answer (TRL's ``think_format_reward``), else 0.0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_THINK = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL | re.MULTILINE)


def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[0]["content"]


def exact_match(completions: Sequence[Any], answer: Sequence[Any] | None = None, **_: Any) -> list[float | None]:
    if answer is None:
        return [None] * len(completions)
    return [None if a is None else float(_text(c).strip() == str(a).strip()) for c, a in zip(completions, answer)]


def think_format(completions: Sequence[Any], **_: Any) -> list[float]:
    return [1.0 if _THINK.match(_text(c)) else 0.0 for c in completions]
