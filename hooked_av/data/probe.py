"""Media checks before work starts: does a manifest row's media open, have the streams the row claims, decode to
the end and state its duration? `audiocaps-import` keeps bad clips out of a manifest, `build-counterfactuals`
checks every row before writing anything, and `hooked-av check-manifest` reports every row's problems."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from hooked_av.data.manifest import ManifestError, ManifestRow, parse_row
from hooked_av.model.errors import InputError, MissingMediaError


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    has_video: bool
    has_audio: bool
    duration: float | None  # seconds of the first video stream (else of the file); None when nothing says


def probe_media(path: str | Path, decode: bool = True) -> MediaInfo:
    """Open a file with PyAV, list its streams and duration; with decode, decode the first video and audio streams
    to the end (a truncated or corrupt file fails here rather than half-way through a run).

    Raises MissingMediaError naming the file when it is absent, cannot be opened, or a stream does not decode.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MissingMediaError(f"media file not found: {path}")
    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            info = MediaInfo(path, video is not None, audio is not None, duration_of(container, video))
            if decode:
                check_decodes(container, [s for s in (video, audio) if s is not None], path)
    except av.error.FFmpegError as err:
        raise MissingMediaError(f"cannot decode {path}: {err}") from err
    return info


def duration_of(container, stream) -> float | None:
    if stream is not None and stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        import av

        return container.duration / av.time_base
    return None


def check_decodes(container, streams: Sequence, path: Path) -> None:
    decoded = {stream.index: 0 for stream in streams}
    for packet in container.demux(*streams):  # one pass over the packets of both streams
        decoded[packet.stream.index] += len(packet.decode())
    empty = [s.type for s in streams if not decoded[s.index]]
    if empty:
        raise MissingMediaError(f"{path}: the {' and '.join(empty)} stream holds no frames")


def media_problems(row: ManifestRow, decode: bool = True) -> list[str]:
    """What is wrong with a row's media (empty when nothing): files, claimed streams, decoding, duration."""
    problems = []
    try:
        video = probe_media(row.video, decode)
    except MissingMediaError as err:
        return [str(err)]
    if not video.has_video:
        problems.append(f"{row.video} has no video stream")
    if video.duration is None or video.duration <= 0:
        problems.append(f"{row.video}: the video states no duration")
    if row.audio_in_video:
        if not video.has_audio:
            problems.append(f"{row.video} has no audio stream, and the row's audio is \"video\" (its own track)")
        return problems
    try:
        if not probe_media(row.audio_path, decode).has_audio:
            problems.append(f"{row.audio_path} has no audio stream")
    except MissingMediaError as err:
        problems.append(str(err))
    return problems


def check_rows(rows: Sequence[ManifestRow], decode: bool = True) -> list[tuple[str, str]]:
    """(sample_id, problem) for every problem of every row's media."""
    return [(row.sample_id, problem) for row in tqdm(rows, desc="checking media", unit="sample")
            for problem in media_problems(row, decode)]


@dataclass(frozen=True)
class RowProblem:
    line: int
    sample_id: str | None  # None when the line could not be read as a row
    problem: str

    def __str__(self) -> str:
        return f"line {self.line}" + (f" ({self.sample_id})" if self.sample_id else "") + f": {self.problem}"


@dataclass
class ManifestCheck:
    lines: int                          # non-blank lines
    rows: list[ManifestRow]             # the lines that are valid rows (first of each sample_id)
    problems: list[RowProblem]          # in line order


def check_manifest(path: str | Path, decode: bool = True) -> ManifestCheck:
    """Every problem of a manifest: malformed lines and fields, duplicate sample_ids, media problems (where
    read_manifest stops at the first bad line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    report = ManifestCheck(0, [], [])
    first_line: dict[str, int] = {}
    numbers: list[int] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            report.lines += 1
            try:
                row = parse_row(line, path, number)
            except ManifestError as err:
                report.problems.append(RowProblem(number, sample_id_of(line),
                                                  str(err).removeprefix(f"{path}:{number}: ")))
                continue
            if row.sample_id in first_line:
                report.problems.append(RowProblem(number, row.sample_id, f"sample_id already used on line "
                                                                         f"{first_line[row.sample_id]}"))
                continue
            first_line[row.sample_id] = number
            report.rows.append(row)
            numbers.append(number)
    for number, row in zip(numbers, tqdm(report.rows, desc="checking media", unit="sample")):
        report.problems += [RowProblem(number, row.sample_id, p) for p in media_problems(row, decode)]
    report.problems.sort(key=lambda p: p.line)
    return report


def sample_id_of(line: str) -> str | None:
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    return data.get("sample_id") if isinstance(data, dict) and isinstance(data.get("sample_id"), str) else None
