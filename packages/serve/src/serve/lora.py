"""Per-request LoRA adapters for the engine (vLLM's ``--enable-lora``; S-LoRA, Sheng et al. 2023): any number of
named adapters held on the host, up to ``max_loras`` of them in the model's adapter slots at once.

:class:`AdapterSlots` wraps the model through the ``lmstack.adapters`` plugin's ``multi`` (lmstack-compress's
``MultiLoRA``: each batch row adds the LoRA term of its own slot, in fixed shapes that CUDA graphs replay). A
request names its adapter; when the engine admits it the adapter is made resident: it keeps its slot, takes a free
one, or takes the least recently used slot that no running request holds. When every slot is held by running
requests, the request waits (first come first served) until one frees. Each adapter load gets a fresh ``uid``,
which salts the prefix cache, so keys and values computed under one adapter are never reused under another.

Registration (``add`` / ``remove``) may come from any thread; slots change only on the engine thread.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from serve.loading import adapters
from specs.errors import ConfigError


@dataclass(eq=False)
class Adapter:
    """A registered adapter: its name (the API's ``model``), directory, load id and host weights."""

    name: str
    path: str
    uid: int
    weights: Any = field(repr=False)
    removed: bool = False

    @property
    def salt(self) -> str:
        return f"lora:{self.uid}"


class AdapterSlots:
    """``max_loras`` slots of rank up to ``max_rank`` on ``model`` (wrapped in place), for ``max_rows`` rows."""

    def __init__(self, model: Any, *, max_loras: int, max_rank: int, max_rows: int,
                 targets: Iterable[str] | str | None = None):
        kw = {} if targets is None else {"targets": targets if isinstance(targets, str) else tuple(targets)}
        self.multi = adapters().multi(model, max_loras=max_loras, max_rank=max_rank, max_rows=max_rows, **kw)
        self.max_loras, self.max_rank = max_loras, max_rank
        self._lock = threading.Lock()
        self._uids = itertools.count(1)
        self._by_name: dict[str, Adapter] = {}
        self._slot: dict[int, Adapter] = {}  # slot -> the adapter resident there
        self._users = [0] * max_loras  # running requests holding each slot
        self._lru: OrderedDict[int, None] = OrderedDict((s, None) for s in range(max_loras))  # oldest first

    # --- registration (any thread) -------------------------------------------------------------------------
    def add(self, name: str, path: str) -> Adapter:
        """Read and check the adapter in ``path`` and register it as ``name`` (ConfigError when the name is taken
        or the files do not fit this model)."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("lora_name", f"expected a non-empty name, got {name!r}")
        with self._lock:
            if name in self._by_name:
                raise ConfigError("lora_name", f"an adapter named {name!r} is loaded already; unload it first")
        weights = adapters().read(path)
        self.multi.check(weights)
        with self._lock:
            if name in self._by_name:
                raise ConfigError("lora_name", f"an adapter named {name!r} is loaded already; unload it first")
            adapter = self._by_name[name] = Adapter(name, str(path), next(self._uids), weights)
        return adapter

    def remove(self, name: str) -> Adapter:
        """Unregister ``name``: new requests cannot use it and waiting ones fail; running ones finish with it."""
        with self._lock:
            adapter = self._by_name.pop(name, None)
        if adapter is None:
            raise ConfigError("lora_name", f"no adapter named {name!r} is loaded; loaded: {self.names() or 'none'}")
        adapter.removed = True
        return adapter

    def get(self, name: str) -> Adapter | None:
        with self._lock:
            return self._by_name.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._by_name)

    def listed(self) -> list[Adapter]:
        with self._lock:
            return sorted(self._by_name.values(), key=lambda a: a.uid)

    # --- residency (the engine thread) ---------------------------------------------------------------------
    def acquire(self, adapter: Adapter) -> int | None:
        """A slot holding ``adapter`` for one more running request, loading it if needed; None while every slot
        is held by running requests."""
        slot = next((s for s, a in self._slot.items() if a is adapter), None)
        if slot is None:
            slot = next((s for s in self._lru if self._users[s] == 0), None)
            if slot is None:
                return None
            self.multi.load(slot, adapter.weights)
            self._slot[slot] = adapter
        self._users[slot] += 1
        self._lru.move_to_end(slot)
        return slot

    def release(self, slot: int) -> None:
        """One running request holding ``slot`` is done; a removed adapter leaves its slot with the last one."""
        self._users[slot] -= 1
        adapter = self._slot.get(slot)
        if self._users[slot] == 0 and adapter is not None and adapter.removed:
            self.multi.clear(slot)
            del self._slot[slot]
            self._lru.move_to_end(slot, last=False)

    def resident(self) -> dict[int, str]:
        """slot -> name of the adapter loaded there."""
        return {s: a.name for s, a in sorted(self._slot.items())}

    def set_rows(self, slots: Sequence[int | None], *, always: bool = False) -> None:
        self.multi.set_rows(slots, always=always)
