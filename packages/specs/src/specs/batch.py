"""Batch: what data loaders yield and trainers consume, normalised to the specs shapes.

All tensors are (B, T): ``input_ids`` and ``labels`` (``labels[t]`` is the target for ``input_ids[t]``,
with -100 for positions that carry no loss), ``attention_mask`` (1 for real tokens), ``positions`` (restart
at 0 at each packed document when packing resets positions), and ``document_ids`` (which packed document
each token belongs to; used for block-diagonal masks), ``advantages`` (float: each target token's advantage,
for policy-gradient objectives such as rl's GRPO; None otherwise) and ``old_logps`` (float: each target token's
log-probability under the policy that sampled it, for the importance ratios of several optimisation passes over
one generation; None otherwise) and ``ref_logps`` (float: each target token's log-probability under a reference
model, computed before training, for preference objectives that skip the reference's forward; None otherwise).
Framework-neutral: any array with ``.shape`` works.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from specs.tensor_spec import TensorSpec

IGNORE_INDEX = -100
_BT = TensorSpec("B", "T")


@dataclass(frozen=True)
class Batch:
    input_ids: Any
    labels: Any | None = None
    attention_mask: Any | None = None
    positions: Any | None = None
    document_ids: Any | None = None
    advantages: Any | None = None
    old_logps: Any | None = None
    ref_logps: Any | None = None

    def __post_init__(self) -> None:
        env = _BT.check(self.input_ids, "Batch.input_ids")
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if value is not None:
                _BT.check(value, f"Batch.{f.name}", bound=env)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    def num_tokens(self) -> int:
        b, t = self.shape
        return b * t

    def to(self, *args: Any, **kwargs: Any) -> Batch:
        """Move every tensor (``.to(device, non_blocking=True)`` style)."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(*args, **kwargs)
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
