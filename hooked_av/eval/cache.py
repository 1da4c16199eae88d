"""On-disk cache of judge answers, keyed by (judge model name, full prompt).

The cache stores the raw answer text, malformed or not: the answer of a greedy judge to a prompt is a fact about
that (model, prompt) pair, so a rerun replays it (and the same re-asks) without a single model call. It is an
append-only JSONL file (see jsonl.py: torn lines skipped, locked whole-line appends), so it survives restarts
and several scoring processes sharing it. When a key appears twice (two processes raced), the last line wins.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from hooked_av.data.jsonl import append_rows, iter_rows


def cache_key(model: str, prompt: str) -> str:
    return hashlib.sha256(json.dumps([model, prompt], ensure_ascii=False).encode("utf-8")).hexdigest()


class JudgeCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._answers: dict[str, str] = {row["key"]: row["completion"] for row in iter_rows(self.path)
                                         if isinstance(row.get("key"), str) and isinstance(row.get("completion"), str)}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, model: str, prompt: str) -> str | None:
        return self._answers.get(cache_key(model, prompt))

    def put_many(self, model: str, answers: Iterable[tuple[str, str]]) -> None:
        """Store (prompt, completion) pairs, in memory and on disk in one append."""
        rows = [{"key": cache_key(model, prompt), "model": model, "completion": completion}
                for prompt, completion in answers]
        append_rows(self.path, rows)
        self._answers.update((row["key"], row["completion"]) for row in rows)
