"""Append-only JSONL files that survive killed runs and concurrent writers.

Long runs (captioning 500 clips x 3 prompts, a knockout sweep, the judge's cache and scores) append one row per
finished unit of work and, when rerun on the same file, skip the units whose rows are already there. A kill can
leave a partial last line: readers skip it, and the next append cuts it off first, so the file stays valid JSONL
(pandas can read it) and a rerun neither duplicates nor loses a row. Appends are whole writes under an exclusive
advisory lock (fcntl, where the platform has it), so two processes appending to one file never interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: appends stay whole writes; only the cross-process lock is lost
    fcntl = None


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """The complete rows (JSON objects) of a JSONL file; a missing file has none, a torn line is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


def read_done(path: str | Path, key: Callable[[dict[str, Any]], Hashable]) -> set:
    """Keys of the rows already in a file."""
    return {key(row) for row in iter_rows(path)}


@contextlib.contextmanager
def _locked(f: IO) -> Iterator[None]:
    if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _cut_torn_tail(f: IO[bytes]) -> None:
    """Truncate a partial last line (no trailing newline) left by a killed writer."""
    end = f.seek(0, os.SEEK_END)
    pos = end
    while pos > 0:
        start = max(0, pos - 65536)
        f.seek(start)
        block = f.read(pos - start)
        if end == pos and block.endswith(b"\n"):
            return  # the file ends with a complete line
        newline = block.rfind(b"\n")
        if newline >= 0:
            f.truncate(start + newline + 1)
            return
        pos = start
    f.truncate(0)


def append_rows(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows, one JSON object per line, in one locked write, flushed to disk before returning."""
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    if not data:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f, _locked(f):
        _cut_torn_tail(f)
        f.seek(0, os.SEEK_END)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
