"""A buffered, append-only text file of complete lines: what makes CSV and JSONL logs survive a crash.

Records are kept in memory and written in one ``write`` every ``flush_every`` records, or with the first record
logged ``flush_secs`` after the last flush, and at ``flush``/``close``. Each flush ends on a line boundary and is
handed to the OS (``file.flush``), so a process killed with SIGKILL leaves every flushed line on disk; at worst
the last line is cut short, which the readers in :mod:`viz.readers` skip. ``close`` also fsyncs.

Opening an existing file appends (a resumed run continues its curves): a cut-short last line left by a crash is
truncated first, and the first line must equal ``header`` so that two formats never share a file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from viz.errors import VizError


class LineFile:
    def __init__(self, path: Path, header: str, *, flush_every: int, flush_secs: float):
        if flush_every < 1:
            raise VizError(f"flush_every must be >= 1, got {flush_every}")
        if not header.endswith("\n") or header.count("\n") != 1:
            raise VizError(f"header must be one line ending in a newline, got {header!r}")
        self.path = path
        self.flush_every = flush_every
        self.flush_secs = flush_secs
        self._pending: list[str] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair(header)
        self._file = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (lives as long as the logger)
        if self._file.tell() == 0:
            self._file.write(header)
            self._file.flush()
        self._last_flush = time.monotonic()

    def _repair(self, header: str) -> None:
        """Check the header of an existing file and cut a partial last line off it."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            first = f.readline().decode("utf-8", "replace")
            if first != header:
                raise VizError(f"{self.path} exists but is not this kind of log (first line {first.strip()[:80]!r}, "
                               f"expected {header.strip()!r}); choose another log_dir")
            size = f.seek(0, os.SEEK_END)
            # Read back from the end until the last newline: everything after it is a cut-short record.
            pos, chunk = size, 4096
            while pos > 0:
                start = max(0, pos - chunk)
                f.seek(start)
                block = f.read(pos - start)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    end = start + nl + 1
                    if end != size:
                        f.truncate(end)
                    return
                pos = start

    def write(self, line: str) -> None:
        """Queue one record (``line`` must end with a newline); flush when the buffer is due."""
        self._pending.append(line)
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._file.write("".join(self._pending))
            self._pending.clear()
        self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self._file.closed:
            return
        self.flush()
        os.fsync(self._file.fileno())
        self._file.close()
