"""AudioCaps -> manifest: group the CSV's captions per clip, find the clips on disk, caption what they show."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from hooked_av.data.captioner import Captioner
from hooked_av.data.jsonl import output_file
from hooked_av.data.manifest import AUDIO_FROM_VIDEO, ManifestRow, write_manifest
from hooked_av.data.media import load_video
from hooked_av.data.probe import media_problems
from hooked_av.model.errors import HookedAVError, InputError

log = logging.getLogger(__name__)

DEFAULT_PATTERN = "{youtube_id}_{start_time}.mp4"
CSV_COLUMNS = ("youtube_id", "start_time", "caption")  # AudioCaps also has audiocap_id: one per caption, unused


@dataclass
class AudioCapsClip:
    youtube_id: str
    start_time: str  # as written in the CSV, so that file names built from it match the downloader's
    captions: list[str] = field(default_factory=list)

    @property
    def sample_id(self) -> str:
        return f"{self.youtube_id}_{self.start_time}"


@dataclass
class ImportReport:
    """What an import wrote and what it could not: clips absent from the folder, clips left without a caption."""

    manifest: Path
    rows: list[ManifestRow]
    missing: list[tuple[str, Path]]          # (sample_id, the file that was looked for)
    bad_media: list[tuple[str, str]]         # (sample_id, problems): found but unusable, left out of the manifest
    caption_errors: list[tuple[str, str]]    # (sample_id, message)


def read_audiocaps_csv(paths: Sequence[str | Path]) -> list[AudioCapsClip]:
    """Clips in order of first appearance, each with all its captions (AudioCaps val/test: five per clip)."""
    clips: dict[tuple[str, str], AudioCapsClip] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise InputError(f"AudioCaps CSV not found: {path}")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            absent = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise InputError(f"{path}: missing column(s) {', '.join(absent)}; AudioCaps CSVs have "
                                 f"audiocap_id,youtube_id,start_time,caption")
            for number, record in enumerate(reader, start=2):  # line 1 is the header
                youtube_id, start, text = (str(record[c] or "").strip() for c in CSV_COLUMNS)
                if not (youtube_id and start and text):
                    raise InputError(f"{path}:{number}: empty youtube_id, start_time or caption")
                clips.setdefault((youtube_id, start), AudioCapsClip(youtube_id, start)).captions.append(text)
    return list(clips.values())


def clip_path(clips_dir: Path, clip: AudioCapsClip, pattern: str) -> Path:
    try:
        return clips_dir / pattern.format(youtube_id=clip.youtube_id, start_time=clip.start_time)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(f"file name pattern {pattern!r} may use only {{youtube_id}} and {{start_time}}") from err


def import_audiocaps(csv_paths: Sequence[str | Path], clips_dir: str | Path, out_manifest: str | Path, *,
                     pattern: str = DEFAULT_PATTERN, captioner: Captioner | None = None,
                     caption_fps: float = 1.0) -> ImportReport:
    """Write a manifest of factual rows (audio = the clip's own track) for the clips found in `clips_dir`.

    Missing clips are logged and returned, not fatal: AudioCaps is scraped from YouTube and some videos are gone.
    Every clip found is checked (hooked_av.data.probe): one that does not decode to the end, has no video or no
    audio stream (the sample's sound is its own track) or states no duration is logged, returned in `bad_media`
    and left out. With a captioner, each clip's frames sampled at `caption_fps` are captioned into
    `video_caption`; a clip the captioner fails on keeps a null caption and is reported. InputError when no clip
    is usable (no manifest is written).
    """
    clips_dir = Path(clips_dir)
    if not clips_dir.is_dir():
        raise InputError(f"clips folder not found: {clips_dir}")
    out_manifest = output_file(out_manifest)
    rows: list[ManifestRow] = []
    missing: list[tuple[str, Path]] = []
    bad_media: list[tuple[str, str]] = []
    caption_errors: list[tuple[str, str]] = []
    clips = read_audiocaps_csv(csv_paths)
    for clip in tqdm(clips, desc="audiocaps import", unit="clip"):
        path = clip_path(clips_dir, clip, pattern)
        if not path.is_file():
            log.warning("clip %s missing: %s", clip.sample_id, path)
            missing.append((clip.sample_id, path))
            continue
        row = ManifestRow(clip.sample_id, path.resolve(), AUDIO_FROM_VIDEO, list(clip.captions))
        problems = media_problems(row)
        if problems:
            log.warning("clip %s left out: %s", clip.sample_id, "; ".join(problems))
            bad_media.append((clip.sample_id, "; ".join(problems)))
            continue
        if captioner is not None:
            try:
                row.video_caption = captioner.caption(clip.sample_id, load_video(path, fps=caption_fps))
            except (HookedAVError, OSError) as err:
                log.warning("no video caption for %s: %s", clip.sample_id, err)
                caption_errors.append((clip.sample_id, str(err)))
        rows.append(row)
    if missing:
        log.warning("%d of %d AudioCaps clips are missing from %s", len(missing), len(clips), clips_dir)
    if not clips:
        raise InputError(f"the AudioCaps CSV(s) list no clips: {', '.join(map(str, csv_paths))}")
    if not rows:
        example = missing[0][1].name if missing else bad_media[0][1]
        raise InputError(f"none of the {len(clips)} clips of the CSV is usable: {len(missing)} not in {clips_dir}, "
                         f"{len(bad_media)} unusable (e.g. {example}): check --clips, and --pattern for the file "
                         f"naming")
    return ImportReport(write_manifest(out_manifest, rows), rows, missing, bad_media, caption_errors)
