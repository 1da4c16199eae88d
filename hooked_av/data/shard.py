"""Data-parallel runs over samples under `torchrun`: one model replica per process, one JSONL per rank, merged.

Every hooked step of the study walks manifest rows and appends JSONL rows keyed by sample (`knockout_sweep`,
`latent_words_run`, `attention_run`, `token_shift_run`), and runs sharded through `run_sharded`:

- rank r of N takes rows r, r + N, r + 2N, ... of the manifest (a disjoint, deterministic share: the same
  manifest and N give every rank the same share on every launch);
- it writes `<stem>.rank<r>-of-<N><suffix>` next to the output (and the step's side files, `.errors.jsonl`,
  `.skipped.jsonl`, beside it), so a restarted rank resumes from its own file, as a single-process run does;
- when every rank is done (a barrier), rank 0 merges the rank files, and whatever the output already held, into
  the output, in manifest order, each row once (by key); the rank files stay until the merge has replaced the
  output.

Without torchrun (no WORLD_SIZE in the environment) `run_sharded` calls the step on all rows and the output
itself: the single-process path, unchanged. `merge_shards` can also be called by hand, e.g. after a launch that
died before its merge.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from hooked_av.data.jsonl import iter_rows, output_file
from hooked_av.data.manifest import ManifestRow, check_unique_ids
from hooked_av.model.errors import InputError

T = TypeVar("T")
Key = Callable[[dict[str, Any]], Hashable]

# A rank that finishes its share waits at the barrier for the slowest one: hours on a real study, far beyond
# torch.distributed's default 30 minutes.
MERGE_WAIT = timedelta(days=7)


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel run: rank `rank` of `world_size` (0 of 1: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise InputError(f"rank {self.rank} of world size {self.world_size}: need 0 <= rank < world_size")

    @classmethod
    def from_env(cls) -> Shard:
        """The shard torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); a single process without them."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def is_sharded(self) -> bool:
        return self.world_size > 1

    def device(self) -> str:
        """Where this rank's model replica goes: its own GPU (cuda:LOCAL_RANK), else the CPU."""
        return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"

    def rows(self, rows: Sequence[T]) -> list[T]:
        """This rank's share: every world_size-th row, starting at its rank (balanced to within one row)."""
        return list(rows[self.rank::self.world_size])

    def path(self, out_path: str | Path) -> Path:
        """This rank's output file (the output itself for a single process)."""
        out_path = Path(out_path)
        if not self.is_sharded:
            return out_path
        return out_path.with_name(f"{out_path.stem}.rank{self.rank}-of-{self.world_size}{out_path.suffix}")


def rank_files(out_path: Path, world_size: int) -> dict[str, list[Path]]:
    """The rank files of a run, grouped by what follows the rank file's name: "" for the rows themselves,
    ".errors.jsonl", ".skipped.jsonl", ... for the step's side files."""
    groups: dict[str, list[Path]] = {}
    for rank in range(world_size):
        main = Shard(rank, world_size).path(out_path)
        for path in sorted(main.parent.glob(glob.escape(main.name) + "*")):
            groups.setdefault(path.name[len(main.name):], []).append(path)
    return groups


def whole_row(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def merge_jsonl(sources: Iterable[Path], out_path: Path, key: Key = whole_row,
                order: Sequence[str] | None = None) -> int:
    """Merge JSONL files (the output's own rows first) into `out_path`: each key once, the first row kept, sorted
    stably by the position of the row's sample_id in `order` (rows of unknown samples last). The output is
    replaced atomically (written aside, then renamed), so a kill mid-merge leaves the old output and every rank
    file intact. Returns the number of rows written."""
    rank = {sid: i for i, sid in enumerate(order or ())}
    seen: set = set()
    rows: list[dict[str, Any]] = []
    for path in [out_path, *sources]:
        for row in iter_rows(path):
            k = key(row)
            if k not in seen:
                seen.add(k)
                rows.append(row)
    rows.sort(key=lambda row: rank.get(row.get("sample_id"), len(rank)))
    tmp = out_path.with_name(out_path.name + ".merging")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_path)
    return len(rows)


def merge_shards(out_path: str | Path, world_size: int, key: Key = whole_row,
                 order: Sequence[str] | None = None) -> Path:
    """Merge the rank files of an N-rank run (and their side files) into the output and its side files; the
    rows of the output file use `key`, side files whole rows. `order`: the manifest's sample ids."""
    out_path = output_file(out_path)
    for suffix, paths in rank_files(out_path, world_size).items():
        target = out_path.with_name(out_path.name + suffix)
        merge_jsonl(paths, target, key if suffix == "" else whole_row, order)
    return out_path


def barrier() -> None:
    """Wait for every rank; joins torchrun's rendezvous (gloo, CPU only) unless the caller set up a group."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=MERGE_WAIT)
    dist.barrier()


def run_sharded(step: Callable[[list[ManifestRow], Path], Any], rows: Iterable[ManifestRow], out_path: str | Path,
                key: Key = whole_row, shard: Shard | None = None) -> Path:
    """Run `step(rows, out_path)` on this rank's share of the rows, into this rank's file, then merge.

    step: a study step with its model and settings bound, e.g. `functools.partial(knockout_sweep, model,
    prompts=...)`; it must append its rows with a sample_id and skip the ones already in its output (every step
    of the study does). key: what identifies a row of the output (`sweep_key` for the knockout sweep); rows with
    the same key from two files are one row. shard: default `Shard.from_env()`.
    """
    rows = list(rows)
    check_unique_ids(rows)  # on every rank, before any work: a duplicate would break the shares' disjointness
    out_path = output_file(out_path)
    shard = shard or Shard.from_env()
    if not shard.is_sharded:
        step(rows, out_path)
        return out_path
    step(shard.rows(rows), shard.path(out_path))
    barrier()
    if shard.rank == 0:
        merge_shards(out_path, shard.world_size, key, [row.sample_id for row in rows])
    barrier()  # nobody reads the output before it is merged
    return out_path
