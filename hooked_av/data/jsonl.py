"""Append-only JSONL files that survive a killed run: durable appends, a torn last line cut, done keys read back.

A long run (captioning 500 clips x 3 prompts, a knockout sweep) writes one row per finished unit of work and, when
rerun on the same file, skips the units whose rows are already there. A kill can leave a partial last line; it is
cut before appending, so the rerun neither duplicates nor loses a row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


def repair_torn_tail(path: Path) -> None:
    """Cut a partial last line left by a killed run, so appended rows start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[:data.rfind(b"\n") + 1])


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The complete rows of a JSONL file; a line that is not JSON (a torn tail) is skipped."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def read_done(path: Path, key: Callable[[dict[str, Any]], Hashable]) -> set:
    """Keys of the rows already in a file."""
    return {key(row) for row in iter_rows(path)}


def append_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows, each flushed and fsynced before the next, so a kill loses at most the row being written."""
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
