"""Running an analysis over manifest rows: each clip decoded once, a progress bar, unreadable samples skipped."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hooked_av.data.jsonl import output_file, read_done
from hooked_av.data.manifest import ManifestRow, Sample, check_unique_ids, iter_samples


def decoded_samples(rows: Iterable[ManifestRow], desc: str, fps: float = 2.0,
                    sampling_rate: int = 16000) -> Iterator[Sample]:
    """The rows' samples decoded in order under a tqdm bar (with ETA); a row whose media cannot be read is logged
    (above the bar) and passed over. Sample ids must be unique."""
    rows = list(rows)
    check_unique_ids(rows)
    with logging_redirect_tqdm():
        yield from iter_samples(tqdm(rows, desc=desc, unit="sample"), fps, sampling_rate)


def todo_rows(rows: Iterable[ManifestRow], out_path: Path, prompt: str) -> list[ManifestRow]:
    """The rows whose (sample_id, prompt) result is not yet in `out_path` (a resumed run skips the others).
    Sample ids must be unique; `out_path` must not be a folder."""
    rows = list(rows)
    check_unique_ids(rows)
    done = read_done(output_file(out_path), key=lambda r: (r["sample_id"], r["prompt"]))
    return [row for row in rows if (row.sample_id, prompt) not in done]


def select_rows(rows: Iterable[ManifestRow], samples: int | None) -> list[ManifestRow]:
    """The first `samples` factual and the first `samples` counterfactual rows, in manifest order (all rows when
    None): a study's sample count, the same rows on every rerun."""
    rows = list(rows)
    if samples is None:
        return rows
    kept = {False: 0, True: 0}
    out = []
    for row in rows:
        if kept[row.counterfactual] < samples:
            kept[row.counterfactual] += 1
            out.append(row)
    return out
