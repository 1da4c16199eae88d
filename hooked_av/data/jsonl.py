"""Append-only JSONL files that survive killed runs and concurrent writers.

Long runs (captioning 500 clips x 3 prompts, a knockout sweep, the judge's cache and scores) append one row per
finished unit of work and, when rerun on the same file, skip the units whose rows are already there. A kill can
leave a partial last line: readers skip it, and the next append cuts it off first, so the file stays valid JSONL
(pandas can read it) and a rerun neither duplicates nor loses a row. A bad line anywhere else is damage, and
reading it is an error naming the line, never a silently dropped row. Appends are whole writes under an exclusive
advisory lock (fcntl, where the platform has it), so two processes appending to one file never interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from hooked_av.model.errors import HookedAVError, InputError

try:
    import fcntl
except ImportError:  # Windows: appends stay whole writes; only the cross-process lock is lost
    fcntl = None


class JSONLError(HookedAVError, ValueError):
    """A line that is not a JSON object, before the file's end: corruption, not a killed writer (file:line)."""


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows (JSON objects) of a JSONL file; a missing file has none, blank lines are skipped.

    A torn last line (no trailing newline: a writer killed mid-append) is skipped. Any other line that is not a
    JSON object raises JSONLError naming the file and line: appends are whole lines, so such a line is damage
    that would otherwise silently drop a row.
    """
    path = Path(path)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                row = err
            if not isinstance(row, dict) and not line.endswith("\n"):
                return  # the torn tail of a killed append; the next append cuts it off
            if isinstance(row, json.JSONDecodeError):
                raise JSONLError(f"{path}:{number}: not a JSON object ({row}): {line[:80]!r}; fix or delete the "
                                 f"line")
            if not isinstance(row, dict):
                raise JSONLError(f"{path}:{number}: a JSON {type(row).__name__}, not an object: {line[:80]!r}; "
                                 f"fix or delete the line")
            yield row


def output_file(path: str | Path) -> Path:
    """`path` as the file a run writes to; InputError before any work if it names a folder."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise InputError(f"{path} is a folder: give the path of the JSONL file to write")
    return path


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
