"""Held-out test sets of the synthetic world, in memory or exported as an ordinary manifest with media files.

Factual clips pair test item i's video with the same object's test sound i. The counterfactual set is built by
the library's own Algorithm 1 (`hooked_av.data.counterfactual.build_counterfactuals`: Hungarian least-similar
assignment of sounds to videos, FFmpeg audio swap) over the exported factual clips. Its sentence embedder is
the world's closed-vocabulary one (`ClassEmbedder`): a caption's vector marks the objects it names, a sound
word counting for its source, so "least similar" means "a sound of another object", never the clip's own.

Captions are the closed vocabulary itself: video_caption "a dog", audio_captions ["a bark"], so the keyword
scorer (hooked_av.eval.keywords) gives exact scores: an answer names the sound or it does not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hooked_av.data.counterfactual import CounterfactualSet, build_counterfactuals
from hooked_av.data.ffmpeg import run_ffmpeg
from hooked_av.data.manifest import AUDIO_FROM_VIDEO, ManifestRow, load_sample, read_manifest, write_manifest
from hooked_av.model.errors import InputError
from hooked_av.organism import world

OBJECT_OF_WORD = {**{o: o for o in world.OBJECTS}, **{s: o for o, s in world.SOUND_OF.items()}}
MANIFEST = "manifest.jsonl"


class ClassEmbedder:
    """Caption -> unit vector over the world's objects named in it (object words and their sounds)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(world.OBJECTS)))
        for i, text in enumerate(texts):
            for word in text.lower().split():
                if word in OBJECT_OF_WORD:
                    out[i, world.OBJECTS.index(OBJECT_OF_WORD[word])] = 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InputError(f"a caption names no object of the world: {texts[int(np.argmin(norms[:, 0]))]!r}")
        return out / norms


@dataclass
class WorldSample:
    """A decoded test sample with its ground truth: the object seen and the object whose sound is heard."""

    sample_id: str
    frames: np.ndarray
    audio: np.ndarray
    video_obj: str
    audio_obj: str
    row: ManifestRow | None = None  # the manifest row it was decoded from (None: rendered in memory)

    @property
    def counterfactual(self) -> bool:
        return self.video_obj != self.audio_obj

    @property
    def true_sound(self) -> str:
        return world.SOUND_OF[self.audio_obj]

    @property
    def picture_sound(self) -> str:
        return world.SOUND_OF[self.video_obj]


def in_memory(clips: Sequence[world.TestClip], world_seed: int = 0) -> list[WorldSample]:
    """The clips rendered directly (no files)."""
    return [WorldSample(c.sample_id, world.video_item(world_seed, "test", c.video_obj, c.video_index),
                        world.audio_item(world_seed, "test", c.audio_obj, c.audio_index), c.video_obj, c.audio_obj)
            for c in clips]


def counterfactual_clips(n: int, world_seed: int = 0) -> list[world.TestClip]:
    """In memory, without Algorithm 1: factual clip i's video with the sound of test item i of another object."""
    rng = np.random.default_rng([world_seed, 2])
    clips = []
    for c in world.factual_clips(n, world_seed):
        other = [o for o in world.OBJECTS if o != c.video_obj][int(rng.integers(len(world.OBJECTS) - 1))]
        clips.append(world.TestClip(f"{c.sample_id}__audio_{other}", c.video_obj, c.video_index, other, c.audio_index))
    return clips


# ---- files -------------------------------------------------------------------------------------------------------
def write_clip(path: Path, frames: np.ndarray, audio: np.ndarray, fps: float = world.FPS,
               sampling_rate: int = world.SAMPLING_RATE) -> Path:
    """An MP4 of the frames (lossless RGB H.264: decoding gives the very pixels back) and the sound (AAC), written
    by FFmpeg, which records the AAC encoder delay so that decoders drop it and the sound starts on time."""
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    raw, wav = path.with_name(f".{path.stem}.rgb"), path.with_name(f".{path.stem}.wav")
    try:
        raw.write_bytes(np.ascontiguousarray(frames, dtype=np.uint8).tobytes())
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sampling_rate)
            w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
        run_ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{frames.shape[2]}x{frames.shape[1]}",
                    "-r", f"{fps:g}", "-i", str(raw), "-i", str(wav),
                    "-c:v", "libx264rgb", "-crf", "0", "-preset", "ultrafast", "-c:a", "aac", "-b:a", "128k",
                    "-t", f"{frames.shape[0] / fps:.6f}", "-movflags", "+faststart", str(tmp)])
    finally:
        raw.unlink(missing_ok=True)
        wav.unlink(missing_ok=True)
    os.replace(tmp, path)
    return path


def factual_rows(out_dir: Path, n: int, world_seed: int) -> list[ManifestRow]:
    rows = []
    for sample in in_memory(world.factual_clips(n, world_seed), world_seed):
        path = out_dir / "clips" / f"{sample.sample_id}.mp4"
        if not path.is_file():
            write_clip(path, sample.frames, sample.audio)
        rows.append(ManifestRow(sample.sample_id, path, AUDIO_FROM_VIDEO, [f"a {sample.true_sound}"],
                                f"a {sample.video_obj}"))
    return rows


def export_testset(out_dir: str | Path, n: int = 200, world_seed: int = 0) -> Path:
    """Write n factual clips and, by Algorithm 1, n counterfactual ones; returns `out_dir/set/manifest.jsonl`.

    The rendered factual clips go to `out_dir/source/` and the counterfactual set (self-contained: it links the
    factual clips in) to `out_dir/set/`. The folder is reused when it already holds the same set (its
    testset.json matches).
    """
    out_dir = Path(out_dir)
    stamp = {"n": n, "world_seed": world_seed, "version": 3}
    stamp_path = out_dir / "testset.json"
    manifest = out_dir / "set" / MANIFEST
    if manifest.is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return manifest
    rows = factual_rows(out_dir / "source", n, world_seed)
    write_manifest(out_dir / "source" / "factual.jsonl", rows)
    built: CounterfactualSet = build_counterfactuals(rows, k=n, out_dir=out_dir / "set", embedder=ClassEmbedder())
    stamp_path.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    return built.manifest


def default_testset_dir(n: int = 200, world_seed: int = 0) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "hooked_av" / "organism" / f"testset-w{world_seed}-n{n}"


def ground_truth(row: ManifestRow) -> tuple[str, str]:
    """(object seen, object heard) of a manifest row, read from its closed-vocabulary captions."""
    seen = ClassEmbedder().encode([row.video_caption or ""])[0]
    heard = ClassEmbedder().encode(row.audio_captions)[0]
    return world.OBJECTS[int(np.argmax(seen))], world.OBJECTS[int(np.argmax(heard))]


def load_manifest_samples(manifest: str | Path, limit: int | None = None,
                          counterfactual: bool | None = None) -> list[WorldSample]:
    """Decoded samples of an exported test set (optionally only the factual or counterfactual rows)."""
    rows = [r for r in read_manifest(manifest) if counterfactual is None or r.counterfactual == counterfactual]
    out = []
    for row in rows[:limit]:
        sample = load_sample(row, fps=world.FPS, sampling_rate=world.SAMPLING_RATE)
        video_obj, audio_obj = ground_truth(row)
        out.append(WorldSample(row.sample_id, sample.frames, sample.audio, video_obj, audio_obj, row))
    return out
