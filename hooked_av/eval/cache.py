"""On-disk cache of judge answers, keyed by (judge model name, decoding mode, full prompt).

The cache stores the raw answer text, malformed or not: the answer of a greedy judge to a prompt is a fact about
that (model, decoding, prompt) triple, so a rerun replays it (and the same re-asks) without a single model call. It is an
append-only JSONL file (see jsonl.py: torn lines skipped, locked whole-line appends), so it survives restarts
and several scoring processes sharing it. When a key appears twice (two processes raced), the last line wins.

The decoding mode keeps a free answer from standing in for a schema-constrained one (and back): the same judge
answers the same prompt differently under a grammar. Free answers keep the key of caches written before the mode
was part of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from hooked_av.data.jsonl import append_rows, iter_rows


FREE = "free"  # decoding modes: FREE, or the name of the constraint (backends say "json_schema")


def cache_key(model: str, prompt: str, decoding: str = FREE) -> str:
    parts = [model, prompt] if decoding == FREE else [model, decoding, prompt]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


class JudgeCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._answers: dict[str, str] = {row["key"]: row["completion"] for row in iter_rows(self.path)
                                         if isinstance(row.get("key"), str) and isinstance(row.get("completion"), str)}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, model: str, prompt: str, decoding: str = FREE) -> str | None:
        return self._answers.get(cache_key(model, prompt, decoding))

    def put_many(self, model: str, answers: Iterable[tuple[str, str]], decoding: str = FREE) -> None:
        """Store (prompt, completion) pairs, in memory and on disk in one append."""
        rows = [{"key": cache_key(model, prompt, decoding), "model": model, "decoding": decoding,
                 "completion": completion} for prompt, completion in answers]
        append_rows(self.path, rows)
        self._answers.update((row["key"], row["completion"]) for row in rows)
