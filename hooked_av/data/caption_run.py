"""Greedy captions of every manifest sample under each prompt, written as they come and resumable after a kill."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from hooked_av.data.checkpoint import CheckpointInfo, describe_checkpoint
from hooked_av.data.jsonl import append_rows, iter_rows, output_file, read_done
from hooked_av.data.manifest import PAPER_PROMPTS, ManifestRow, load_sample
from hooked_av.data.media import load_video
from hooked_av.model.errors import HookedAVError, InputError

log = logging.getLogger(__name__)


class CaptionRunError(HookedAVError, RuntimeError):
    """A caption run that produced nothing: every sample failed (the errors file says why)."""


@dataclass
class CaptionRow:
    sample_id: str
    prompt: str
    caption: str
    counterfactual: bool
    # the checkpoint (hooked_av.data.checkpoint.CheckpointInfo) ...
    model: str
    model_hash: str
    family: str
    dtype: str
    hooked_av_version: str
    # ... and the generation settings (decoding is greedy)
    max_new_tokens: int
    fps: float
    use_audio: bool
    engine: str  # "hooked" (HookedAVModel.generate) or "vllm" (hooked_av.data.vllm_caption)


# the fields a resumed file must share with the run: same weights, same generation settings, same engine
RUN_FIELDS = ("model_hash", "max_new_tokens", "fps", "use_audio", "engine")
LEGACY_ROW = {"engine": "hooked"}  # rows written before a field existed: what they were made with


@dataclass(frozen=True)
class CaptionRequest:
    prompt: str
    frames: np.ndarray
    audio: np.ndarray | None
    fps: float
    use_audio_in_video: bool  # the sound is the video's own track, interleaved in the video block


class CaptionEngine(Protocol):
    """What writes captions: the hooked model here, vLLM in hooked_av.data.vllm_caption."""

    name: str  # the engine column of the rows
    info: CheckpointInfo
    has_audio: bool  # the family has an audio input
    batch_samples: int  # samples whose requests go to one captions() call (rows are written after each call)

    def captions(self, requests: list[CaptionRequest], max_new_tokens: int) -> list[str | HookedAVError]:
        """One greedy caption per request, in order, or the error that the model raised for it."""
        ...


class HookedCaptioner:
    """HookedAVModel.generate, one request at a time (what every analysis sees)."""

    name = "hooked"
    batch_samples = 1

    def __init__(self, model, checkpoint: str | None = None):
        self.model = model
        self.info = describe_checkpoint(model, checkpoint)
        self.has_audio = "audio" in model.adapter.spec.placeholders

    def captions(self, requests: list[CaptionRequest], max_new_tokens: int) -> list[str | HookedAVError]:
        return [self._caption(r, max_new_tokens) for r in requests]

    def _caption(self, request: CaptionRequest, max_new_tokens: int) -> str | HookedAVError:
        try:
            batch = self.model.prepare_inputs(request.prompt, video=request.frames, audio=request.audio,
                                              fps=request.fps, use_audio_in_video=request.use_audio_in_video)
            return self.model.generate(batch, max_new_tokens=max_new_tokens).text[0]
        except HookedAVError as err:
            return err


@dataclass
class CaptionRunReport:
    out_path: Path
    written: int                                   # rows added by this run
    already_done: int                              # (sample, prompt) rows found in the file and skipped
    errors: list[tuple[str, str | None, str]]      # (sample_id, prompt or None for the whole sample, message)


def caption_manifest(model, manifest_rows: Sequence[ManifestRow], out_path: str | Path, *,
                     prompts: Sequence[str] = PAPER_PROMPTS, max_new_tokens: int = 64, fps: float = 2.0,
                     sampling_rate: int = 16000, use_audio: bool = True,
                     checkpoint: str | None = None) -> CaptionRunReport:
    """One JSONL row per (sample, prompt): the model's greedy caption, written with flush + fsync as it is made.

    `model` is a HookedAVModel, or a CaptionEngine (e.g. hooked_av.data.vllm_caption.VLLMCaptioner, which
    records its own checkpoint). Every row records the checkpoint (`checkpoint`: its folder or name, default the
    HF config's name_or_path; the sha256 of its weights; dtype; hooked_av version), the generation settings and
    the engine. Rerunning on the same file skips the rows already there (a torn last line from a kill is cut
    first), so the file ends with each (sample, prompt) exactly once; resuming with other weights, settings or
    engine is refused. A sample whose media cannot be read, or that the model refuses, is logged, recorded in
    `<out>.errors.jsonl` and skipped; a rerun tries it again. The sound is interleaved in the video block
    (use_audio_in_video) when it is the video's own track (audio = "video"), else given as a separate audio
    input; use_audio=False captions frames only (vision-only models, Qwen2.5-VL).
    """
    engine = model if hasattr(model, "captions") else HookedCaptioner(model, checkpoint)
    out_path = output_file(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    errors_path = out_path.with_name(out_path.name + ".errors.jsonl")
    if use_audio and not engine.has_audio:
        raise InputError(f"{engine.info.family} has no audio input: caption its frames only (use_audio=False; "
                         f"on the command line --no-audio)")
    settings = {"max_new_tokens": max_new_tokens, "fps": float(fps), "use_audio": use_audio, "engine": engine.name}
    check_same_run(out_path, {"model_hash": engine.info.model_hash, **settings}, engine.info.model)
    done = read_done(out_path, lambda r: (r["sample_id"], r["prompt"]))
    report = CaptionRunReport(out_path, 0, 0, [])
    with tqdm(total=len(manifest_rows), desc="captioning", unit="sample") as bar:
        for start in range(0, len(manifest_rows), engine.batch_samples):
            chunk = manifest_rows[start:start + engine.batch_samples]
            keyed = list(requests_of(chunk, prompts, done, fps, sampling_rate, use_audio, errors_path, report))
            results = engine.captions([request for _, request in keyed], max_new_tokens) if keyed else []
            for (row, request), result in zip(keyed, results, strict=True):
                if isinstance(result, HookedAVError):
                    record_error(errors_path, report, row.sample_id, request.prompt, result)
                    continue
                append_rows(out_path, [asdict(CaptionRow(row.sample_id, request.prompt, result, row.counterfactual,
                                                         **asdict(engine.info), **settings))])
                done.add((row.sample_id, request.prompt))
                report.written += 1
            bar.update(len(chunk))
    return report


def requests_of(rows: Sequence[ManifestRow], prompts: Sequence[str], done: set, fps: float, sampling_rate: int,
                use_audio: bool, errors_path: Path,
                report: CaptionRunReport) -> Iterator[tuple[ManifestRow, CaptionRequest]]:
    """The (row, request) of every (sample, prompt) not done yet; media are read once per sample."""
    for row in rows:
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
            yield row, CaptionRequest(prompt, frames, audio, fps, use_audio and row.audio_in_video)


def load_media(row: ManifestRow, fps: float, sampling_rate: int,
               use_audio: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if not use_audio:
        return load_video(row.video, fps=fps), None  # a silent clip is fine for a vision-only model
    sample = load_sample(row, fps, sampling_rate)
    return sample.frames, sample.audio


def checkpoint_fields(model, out_path: Path) -> dict[str, str]:
    """`model` and `model_hash` for the rows of a generation file the judge scores (its score key holds the hash:
    knockout sweeps, logit-lens word sets), after refusing a file that another checkpoint wrote."""
    info = describe_checkpoint(model)
    check_same_run(out_path, {"engine": "hooked", "model_hash": info.model_hash}, info.model)
    return {"model": info.model, "model_hash": info.model_hash}


def check_same_run(out_path: Path, run: dict[str, Any], model: str) -> None:
    """Refuse to resume a file written by another checkpoint or with other generation settings: its rows would be
    skipped as done and the file would mix two runs. The weights hash decides, so a moved folder resumes."""
    for number, row in enumerate(iter_rows(out_path), start=1):
        written = {name: row.get(name, LEGACY_ROW.get(name)) for name in run}
        if written == run:
            continue
        if written["engine"] != run["engine"]:  # different kernels: the captions of one checkpoint differ too
            raise InputError(f"{out_path}:{number} holds captions written by the {written['engine']} engine, not "
                             f"{run['engine']}: write to another file")
        if written["model_hash"] is None:
            raise InputError(f"{out_path}:{number} holds captions without a checkpoint record (written by an "
                             f"older hooked_av), so a resume cannot tell whose they are: write to another file")
        if written["model_hash"] != run["model_hash"]:
            raise InputError(f"{out_path}:{number} holds captions of another checkpoint ({row.get('model')!r}, "
                             f"weights sha256 {str(written['model_hash'])[:12]}...) than {model!r} (sha256 "
                             f"{run['model_hash'][:12]}...): write to another file")
        name = next(n for n in run if written[n] != run[n])
        raise InputError(f"{out_path}:{number} holds captions made with {name} {written[name]}, not {run[name]}: "
                         f"rerun with the file's settings, or write to another file")


def record_error(errors_path: Path, report: CaptionRunReport, sample_id: str, prompt: str | None,
                 err: Exception) -> None:
    log.warning("skipping sample %s%s: %s", sample_id, f" / {prompt!r}" if prompt else "", err)
    report.errors.append((sample_id, prompt, str(err)))
    append_rows(errors_path, [{"sample_id": sample_id, "prompt": prompt, "error": type(err).__name__,
                               "message": str(err)}])
