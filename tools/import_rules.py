"""Who may import whom (ARCHITECTURE.md "Planes and who may import whom"), as data.

tools/check_imports.py turns this into import-linter contracts for the packages that exist.
"""

FOUNDATION = ("specs", "tensor", "kernel")
CHAIN = ("attn", "blocks", "model")

# package -> lmstack packages it may import (besides itself)
ALLOWED: dict[str, tuple[str, ...]] = {
    "specs": (),
    "tensor": ("specs",),
    "kernel": ("specs", "tensor"),
    "attn": FOUNDATION,
    "blocks": (*FOUNDATION, "attn"),
    "model": (*FOUNDATION, "attn", "blocks"),
}
DEFAULT_ALLOWED = FOUNDATION

# Declared exceptions to the default, each with its reason (one line in the contract).
EXCEPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "train": (("dist", "viz"), "the trainer applies dist strategies and owns its VizSession"),
    "corpus": (("data",), "corpus writes shards with data's ShardWriter and tokenizers"),
    "rl": (("train",), "RL trainers extend the Trainer"),
}
ANYTHING = ("pack",)  # pack bundles CLIs and templates over every package

# Third-party modules a package must never import at all.
FORBIDDEN_EXTERNAL: dict[str, tuple[str, ...]] = {"specs": ("torch", "numpy")}


def allowed(pkg: str, existing: list[str]) -> tuple[str, ...]:
    if pkg in ANYTHING:
        return tuple(p for p in existing if p != pkg)
    if pkg in ALLOWED:
        return ALLOWED[pkg]
    extra = EXCEPTIONS.get(pkg, ((), ""))[0]
    return (*DEFAULT_ALLOWED, *extra)
