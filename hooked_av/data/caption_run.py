"""Greedy captions of every manifest sample under each prompt, written as they come and resumable after a kill."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hooked_av.analysis.knockout import PAPER_PROMPTS
from hooked_av.data.jsonl import append_rows, iter_rows, read_done
from hooked_av.data.manifest import ManifestRow, load_sample
from hooked_av.data.media import load_video
from hooked_av.model.errors import HookedAVError, InputError

log = logging.getLogger(__name__)


@dataclass
class CaptionRow:
    sample_id: str
    prompt: str
    caption: str
    family: str
    max_new_tokens: int
    counterfactual: bool


@dataclass
class CaptionRunReport:
    out_path: Path
    written: int                                   # rows added by this run
    already_done: int                              # (sample, prompt) rows found in the file and skipped
    errors: list[tuple[str, str | None, str]]      # (sample_id, prompt or None for the whole sample, message)


def caption_manifest(model, manifest_rows: Sequence[ManifestRow], out_path: str | Path, *,
                     prompts: Sequence[str] = PAPER_PROMPTS, max_new_tokens: int = 64, fps: float = 2.0,
                     sampling_rate: int = 16000, use_audio: bool = True) -> CaptionRunReport:
    """One JSONL row per (sample, prompt): the model's greedy caption, written with flush + fsync as it is made.

    Rerunning on the same file skips the rows already there (a torn last line from a kill is cut first), so the
    file ends with each (sample, prompt) exactly once. A sample whose media cannot be read, or that the model
    refuses, is logged, recorded in `<out>.errors.jsonl` and skipped; a rerun tries it again. The sound is
    interleaved in the video block (use_audio_in_video) when it is the video's own track (audio = "video"),
    else given as a separate audio input; use_audio=False captions frames only (vision-only models, Qwen2.5-VL).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    errors_path = out_path.with_name(out_path.name + ".errors.jsonl")
    family = model.cfg.family
    check_same_run(out_path, family, max_new_tokens)
    done = read_done(out_path, lambda r: (r["sample_id"], r["prompt"]))
    report = CaptionRunReport(out_path, 0, 0, [])
    for row in tqdm(manifest_rows, desc="captioning", unit="sample"):
        todo = [p for p in prompts if (row.sample_id, p) not in done]
        report.already_done += len(prompts) - len(todo)
        if not todo:
            continue
        try:
            frames, audio = load_media(row, fps, sampling_rate, use_audio)
        except (HookedAVError, OSError) as err:
            record_error(errors_path, report, row.sample_id, None, err)
            continue
        for prompt in todo:
            try:
                batch = model.prepare_inputs(prompt, video=frames, audio=audio, fps=fps,
                                             use_audio_in_video=use_audio and row.audio_in_video)
                text = model.generate(batch, max_new_tokens=max_new_tokens).text[0]
            except HookedAVError as err:
                record_error(errors_path, report, row.sample_id, prompt, err)
                continue
            append_rows(out_path, [asdict(CaptionRow(row.sample_id, prompt, text, family, max_new_tokens,
                                                     row.counterfactual))])
            done.add((row.sample_id, prompt))
            report.written += 1
    return report


def load_media(row: ManifestRow, fps: float, sampling_rate: int,
               use_audio: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if not use_audio:
        return load_video(row.video, fps=fps), None  # a silent clip is fine for a vision-only model
    sample = load_sample(row, fps, sampling_rate)
    return sample.frames, sample.audio


def check_same_run(out_path: Path, family: str, max_new_tokens: int) -> None:
    """Refuse to resume a file written by another model family or token budget: its rows would be skipped as done
    and the file would mix two settings."""
    first = next(iter_rows(out_path), None)
    if first is not None and (first.get("family"), first.get("max_new_tokens")) != (family, max_new_tokens):
        raise InputError(f"{out_path} holds captions of family {first.get('family')!r} with max_new_tokens="
                         f"{first.get('max_new_tokens')}, not {family!r} / {max_new_tokens}: write to another file")


def record_error(errors_path: Path, report: CaptionRunReport, sample_id: str, prompt: str | None,
                 err: Exception) -> None:
    log.warning("skipping sample %s%s: %s", sample_id, f" / {prompt!r}" if prompt else "", err)
    report.errors.append((sample_id, prompt, str(err)))
    append_rows(errors_path, [{"sample_id": sample_id, "prompt": prompt, "error": type(err).__name__,
                               "message": str(err)}])
