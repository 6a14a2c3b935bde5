"""A classifier plugin that needs no model: a prompt-injection score from weighted phrase patterns.

Registered as ``injection-heuristic`` in the entry-point group ``lmstack.safety_classifiers`` (the group a policy's
``classifier`` detector resolves through :func:`specs.plugins.resolve`). Its phrases are the attack families of
Perez & Ribeiro 2022 ("Ignore Previous Prompt", goal hijacking and prompt leaking) and of Rebuff's heuristic
check; each matched family adds its weight, combined as independent evidence: ``1 - prod(1 - w)``. It is a cheap
first filter, not a substitute for a trained classifier; any other plugin of the group takes its place by name.

A classifier plugin is a factory: ``factory(**options)`` returns ``score(text: str) -> float`` in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_FAMILIES: tuple[tuple[str, float], ...] = (
    (r"\b(?:ignore|disregard|forget|override|skip)\b.{0,40}\b(?:previous|prior|above|earlier|preceding|all|system|"
     r"your)\b.{0,40}\b(?:instructions?|prompts?|rules|directions|guidelines|messages?)\b", 0.6),
    (r"\b(?:reveal|print|show|repeat|output|leak|tell me|spell out|write out|display)\b.{0,60}\b(?:system prompt|"
     r"hidden (?:prompt|instructions?)|initial (?:prompt|instructions?)|your (?:instructions|prompt|rules)|"
     r"secret|password|canary)\b", 0.45),
    (r"\byou are (?:now|no longer)\b|\bfrom now on,? you\b|\bpretend (?:to be|you are)\b|\bact as\b", 0.3),
    (r"\b(?:DAN|developer mode|jailbreak|do anything now|god mode|unfiltered mode)\b", 0.45),
    (r"\b(?:new|updated|real) (?:instructions?|task|rules)\s*:", 0.35),
    (r"(?:^|\n)\s*(?:system|assistant)\s*:|<\|?(?:im_start|system|endoftext)\|?>|\[/?INST\]", 0.35),
    (r"\b(?:in )?(?:base64|rot13|reverse(?:d)?|hex(?:adecimal)?)\b.{0,40}\b(?:prompt|instructions?|secret|"
     r"password)\b", 0.25),
)


class InjectionHeuristic:
    """``score(text)``: 0 for text that matches no family, rising towards 1 as families add up.

    ``extra_phrases`` adds regular expressions (case-insensitive), each with ``extra_weight``.
    """

    def __init__(self, extra_phrases: Iterable[str] = (), extra_weight: float = 0.5):
        if not 0.0 <= extra_weight <= 1.0:
            raise ValueError(f"extra_weight must be in [0, 1]; got {extra_weight}")
        families = [*_FAMILIES, *((p, extra_weight) for p in extra_phrases)]
        self.families = [(re.compile(p, re.IGNORECASE | re.DOTALL), w) for p, w in families]

    def __call__(self, text: str) -> float:
        keep = 1.0
        for pattern, weight in self.families:
            if pattern.search(text):
                keep *= 1.0 - weight
        return 1.0 - keep
