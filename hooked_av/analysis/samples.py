"""Running an analysis over manifest rows: each clip decoded once, a progress bar, unreadable samples skipped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hooked_av.data.jsonl import append_rows, output_file, read_done
from hooked_av.data.manifest import ManifestRow, Sample, check_unique_ids, iter_samples, load_sample
from hooked_av.model.errors import HookedAVError

log = logging.getLogger(__name__)


def decoded_samples(rows: Iterable[ManifestRow], desc: str, fps: float = 2.0,
                    sampling_rate: int = 16000) -> Iterator[Sample]:
    """The rows' samples decoded in order under a tqdm bar (with ETA); a row whose media cannot be read is logged
    (above the bar) and passed over. Sample ids must be unique."""
    rows = list(rows)
    check_unique_ids(rows)
    with logging_redirect_tqdm():
        yield from iter_samples(tqdm(rows, desc=desc, unit="sample"), fps, sampling_rate)


def per_sample_run(rows: Iterable[ManifestRow], out_path: str | Path, desc: str,
                   compute: Callable[[Sample], dict[str, Any]], fields: Mapping[str, Any], fps: float = 2.0,
                   sampling_rate: int = 16000) -> Path:
    """One JSONL row per sample, `{"sample_id", **fields, **compute(sample)}`, appended as soon as it is made.

    Resumable: a sample whose row (same sample_id and `fields`, e.g. the prompt) is in the file is skipped. A
    sample whose media cannot be read, or that the model refuses (a HookedAVError), is logged, recorded in
    `<out>.errors.jsonl` and skipped; a rerun tries it again. Sample ids must be unique.
    """
    rows = list(rows)
    check_unique_ids(rows)
    out_path = output_file(out_path)
    done = read_done(out_path, key=lambda r: (r["sample_id"], *(r.get(k) for k in fields)))
    with logging_redirect_tqdm():
        for row in tqdm(rows, desc=desc, unit="sample"):
            if (row.sample_id, *fields.values()) in done:
                continue
            try:
                result = compute(load_sample(row, fps, sampling_rate))
            except (HookedAVError, OSError) as err:
                log.warning("skipping sample %s: %s", row.sample_id, err)
                append_rows(out_path.with_name(out_path.name + ".errors.jsonl"),
                            [{"sample_id": row.sample_id, "error": type(err).__name__, "message": str(err)}])
                continue
            append_rows(out_path, [{"sample_id": row.sample_id, **fields, **result}])
    return out_path


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
