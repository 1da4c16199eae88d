"""The sample manifest: JSONL, one audio-visual sample per line (format in docs/data.md), and its media loader."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hooked_av.data.media import load_audio, load_video
from hooked_av.model.errors import HookedAVError, InputError

log = logging.getLogger(__name__)

AUDIO_FROM_VIDEO = "video"  # the `audio` value meaning "the sound track of the video file"
# The paper's instructions: audio-visual captioning, then the modality-specific prompts of Sections 7-8.
PAPER_PROMPTS = ("Describe what you see and hear.", "Describe what you see.", "Describe what you hear.")


class ManifestError(InputError):
    """A manifest line that is not a valid sample: the message names the file, the line and the field."""


@dataclass
class ManifestRow:
    """One sample. Counterfactual rows name the clips their video and audio come from and the captions' similarity.

    video / audio are absolute once read (relative paths in the file are resolved against the manifest's folder);
    audio is a path or AUDIO_FROM_VIDEO.
    """

    sample_id: str
    video: Path
    audio: Path | str = AUDIO_FROM_VIDEO
    audio_captions: list[str] = field(default_factory=list)
    video_caption: str | None = None
    counterfactual: bool = False
    video_source: str | None = None
    audio_source: str | None = None
    similarity: float | None = None

    def __post_init__(self) -> None:
        self.video = Path(self.video)
        if self.audio != AUDIO_FROM_VIDEO:
            self.audio = Path(self.audio)

    @property
    def audio_in_video(self) -> bool:
        return self.audio == AUDIO_FROM_VIDEO

    @property
    def audio_path(self) -> Path:
        """The file whose (first) audio stream is this sample's sound."""
        return self.video if self.audio_in_video else Path(self.audio)


@dataclass
class Sample:
    """A manifest row with its media decoded: frames (T, H, W, 3) uint8, audio float32 mono."""

    row: ManifestRow
    frames: np.ndarray
    audio: np.ndarray

    @property
    def sample_id(self) -> str:
        return self.row.sample_id


# ---- reading and writing ---------------------------------------------------------------------------------------
_REQUIRED = ("sample_id", "video", "audio", "audio_captions", "counterfactual")
_OPTIONAL = ("video_caption", "video_source", "audio_source", "similarity")
_PAIR_FIELDS = ("video_source", "audio_source", "similarity")


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """All rows of a manifest, validated; blank lines are allowed. Raises ManifestError on the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    rows: list[ManifestRow] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = parse_row(line, path, number)
            if row.sample_id in first_line:
                raise ManifestError(f"{path}:{number}: field 'sample_id': {row.sample_id!r} already used on line "
                                    f"{first_line[row.sample_id]}")
            first_line[row.sample_id] = number
            rows.append(row)
    return rows


def parse_row(line: str, path: Path, number: int) -> ManifestRow:
    where = f"{path}:{number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{where}: not a JSON object ({err})") from err
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: not a JSON object but {type(data).__name__}")
    check_fields(data, where)
    base = path.parent
    return ManifestRow(
        sample_id=data["sample_id"],
        video=resolve(base, data["video"]),
        audio=AUDIO_FROM_VIDEO if data["audio"] == AUDIO_FROM_VIDEO else resolve(base, data["audio"]),
        audio_captions=list(data["audio_captions"]),
        video_caption=data.get("video_caption"),
        counterfactual=data["counterfactual"],
        video_source=data.get("video_source"),
        audio_source=data.get("audio_source"),
        similarity=None if data.get("similarity") is None else float(data["similarity"]))


def check_fields(data: dict[str, Any], where: str) -> None:
    """Names, types and the factual / counterfactual consistency of one row's fields."""
    def bad(name: str, why: str) -> ManifestError:
        return ManifestError(f"{where}: field '{name}': {why}")

    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise bad(unknown[0], f"unknown field (known: {', '.join(_REQUIRED + _OPTIONAL)})")
    for name in _REQUIRED:
        if name not in data:
            raise bad(name, "missing")
    for name in ("sample_id", "video", "audio"):
        if not isinstance(data[name], str) or not data[name].strip():
            raise bad(name, f"must be a non-empty string, got {data[name]!r}")
    captions = data["audio_captions"]
    if not isinstance(captions, list) or not all(isinstance(c, str) and c.strip() for c in captions):
        raise bad("audio_captions", f"must be a list of non-empty strings, got {captions!r}")
    if not isinstance(data["counterfactual"], bool):
        raise bad("counterfactual", f"must be true or false, got {data['counterfactual']!r}")
    for name in ("video_caption", "video_source", "audio_source"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise bad(name, f"must be a string or null, got {data[name]!r}")
    similarity = data.get("similarity")
    if similarity is not None and (isinstance(similarity, bool) or not isinstance(similarity, (int, float))
                                   or not math.isfinite(similarity)):
        raise bad("similarity", f"must be a finite number or null, got {similarity!r}")
    for name in _PAIR_FIELDS:
        if data["counterfactual"] and data.get(name) is None:
            raise bad(name, "required on a counterfactual row")
        if not data["counterfactual"] and data.get(name) is not None:
            raise bad(name, "must be null on a factual row")


def resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> Path:
    """Write rows (replacing the file atomically); paths under the manifest's folder are stored relative to it,
    so a dataset folder can be moved as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row_to_json(row, base), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def row_to_json(row: ManifestRow, base: Path) -> dict[str, Any]:
    return {"sample_id": row.sample_id, "video": relative(base, Path(row.video)),
            "audio": AUDIO_FROM_VIDEO if row.audio_in_video else relative(base, Path(row.audio)),
            "audio_captions": list(row.audio_captions), "video_caption": row.video_caption,
            "counterfactual": row.counterfactual, "video_source": row.video_source,
            "audio_source": row.audio_source, "similarity": row.similarity}


def relative(base: Path, path: Path) -> str:
    path = path.resolve()
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)


# ---- media -----------------------------------------------------------------------------------------------------
def load_sample(row: ManifestRow, fps: float = 2.0, sampling_rate: int = 16000) -> Sample:
    """Frames sampled at `fps` and the sound as float32 mono at `sampling_rate`; MissingMediaError if unreadable."""
    frames = load_video(row.video, fps=fps)
    audio = load_audio(row.audio_path, sampling_rate)
    return Sample(row, frames, audio)


def iter_samples(rows: Iterable[ManifestRow], fps: float = 2.0, sampling_rate: int = 16000,
                 skipped: list[tuple[str, str]] | None = None) -> Iterator[Sample]:
    """Decoded samples; a row whose media is missing or broken is logged, appended to `skipped` as
    (sample_id, message) and passed over, so one bad clip does not end a run over hundreds."""
    for row in rows:
        try:
            yield load_sample(row, fps, sampling_rate)
        except (HookedAVError, OSError) as err:
            log.warning("skipping sample %s: %s", row.sample_id, err)
            if skipped is not None:
                skipped.append((row.sample_id, str(err)))


# ---- samples as analyses take them ------------------------------------------------------------------------------
def check_unique_ids(rows: Iterable[ManifestRow]) -> None:
    """Refuse rows that share a sample_id: results are keyed by it, so the second sample would be skipped as done."""
    seen: dict[str, int] = {}
    for row in rows:
        seen[row.sample_id] = seen.get(row.sample_id, 0) + 1
    duplicates = [sid for sid, n in seen.items() if n > 1]
    if duplicates:
        raise InputError(f"sample_id {duplicates[0]!r} is used by {seen[duplicates[0]]} samples"
                         + (f" ({len(duplicates)} ids in all)" if len(duplicates) > 1 else "")
                         + ": results are keyed by sample_id, give each sample its own")


def sample_inputs(sample: Sample) -> dict[str, Any]:
    """The media arguments of `model.prepare_inputs` for a decoded sample: the sound is interleaved into the video
    (use_audio_in_video) when it is the video's own track, else given as a separate audio input."""
    return {"video": sample.frames, "audio": sample.audio, "use_audio_in_video": sample.row.audio_in_video}
