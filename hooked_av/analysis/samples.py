"""Running an analysis over manifest rows: each clip decoded once, a progress bar, unreadable samples skipped."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hooked_av.data.manifest import ManifestRow, Sample, check_unique_ids, iter_samples


def decoded_samples(rows: Iterable[ManifestRow], desc: str, fps: float = 2.0,
                    sampling_rate: int = 16000) -> Iterator[Sample]:
    """The rows' samples decoded in order under a tqdm bar (with ETA); a row whose media cannot be read is logged
    (above the bar) and passed over. Sample ids must be unique."""
    rows = list(rows)
    check_unique_ids(rows)
    with logging_redirect_tqdm():
        yield from iter_samples(tqdm(rows, desc=desc, unit="sample"), fps, sampling_rate)
