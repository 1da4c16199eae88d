"""Media files decoded with PyAV into model inputs; prepare_inputs from files equals prepare_inputs from arrays."""

from __future__ import annotations

import av
import numpy as np
import pytest

from hooked_av import InputError, MissingMediaError
from hooked_av.data.media import load_audio, load_video


def write_clip(path, seconds=2.0, fps=10, sr=16000, size=(64, 48), with_audio=True):
    """A test clip: frame i is filled with gray level 10*i (mod 250); the audio is a 440 Hz sine."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = out.add_stream("aac", rate=sr, layout="mono") if with_audio else None
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), (10 * i) % 250, np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            t = np.arange(int(seconds * sr)) / sr
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, samples.size, 1024):
                frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="flt", layout="mono")
                frame.sample_rate = sr
                out.mux(audio.encode(frame))
            out.mux(audio.encode(None))


def test_frames_are_sampled_at_the_requested_fps(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path)
    frames = load_video(path, fps=2.0)
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    levels = frames.reshape(4, -1).mean(1)
    assert np.allclose(levels, [0, 50, 100, 150], atol=6)  # frames 0, 5, 10, 15 of a 10 fps clip


def test_audio_is_16khz_mono(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - 32000) < 2048
    spectrum = np.abs(np.fft.rfft(wave[4000:20000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) < 2


def test_missing_and_broken_files_are_typed_errors(tmp_path):
    with pytest.raises(MissingMediaError, match="not found"):
        load_video(tmp_path / "nope.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(MissingMediaError, match="broken.mp4"):
        load_video(broken)
    silent = tmp_path / "silent.mp4"
    write_clip(silent, with_audio=False)
    with pytest.raises(MissingMediaError, match="no audio stream"):
        load_audio(silent)


def test_prepare_inputs_reads_the_sound_track_of_a_video_file(omni, tmp_path):
    _, _, model = omni
    path = tmp_path / "clip.mp4"
    write_clip(path, seconds=4.0)
    from_file = model.prepare_inputs("What happens?", video=path, use_audio_in_video=True)
    from_arrays = model.prepare_inputs("What happens?", video=load_video(path, 2.0), audio=load_audio(path),
                                       use_audio_in_video=True)
    assert from_file["use_audio_in_video"] is True
    for key in ("input_ids", "pixel_values_videos", "input_features", "feature_attention_mask"):
        assert (from_file[key] == from_arrays[key]).all(), key
    runs = [r for r in model.modality_map(from_file).runs() if r[0] in ("video", "audio")]
    assert [name for name, _ in runs] == ["video", "audio", "video", "audio"]
    assert model(from_file).shape[1] == from_file["input_ids"].shape[1]


def write_png(path, size=(40, 30)):
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "rgb24"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((size[1], size[0], 3), np.uint8), format="rgb24")))
        out.mux(stream.encode(None))


def test_a_still_image_as_video_and_a_clip_as_image_are_refused(omni, tmp_path):
    from hooked_av.data.media import load_image
    from hooked_av.model.errors import MediaKindError

    _, _, model = omni
    png, clip = tmp_path / "still.png", tmp_path / "clip.mp4"
    write_png(png)
    write_clip(clip, seconds=1.0)
    assert load_image(png).shape == (30, 40, 3)
    with pytest.raises(MediaKindError, match="still.png is a still image .*image="):
        load_video(png)
    with pytest.raises(MediaKindError, match="clip.mp4 is a video .*video="):
        load_image(clip)
    with pytest.raises(MediaKindError, match="still.png"):
        model.prepare_inputs("What is this?", video=png)
    with pytest.raises(MediaKindError, match="clip.mp4"):
        model.prepare_inputs("What is this?", image=clip)


def test_use_audio_in_video_refuses_a_second_sound(omni, tmp_path):
    from hooked_av.testing.tiny import synthetic_audio

    _, _, model = omni
    clip = tmp_path / "clip.mp4"
    write_clip(clip, seconds=2.0)
    with pytest.raises(InputError, match="use_audio_in_video=True .*own sound track.*audio="):
        model.prepare_inputs("What happens?", video=clip, audio=synthetic_audio(2.0), use_audio_in_video=True)
    with pytest.raises(InputError, match="use_audio_in_video=True"):
        model.prepare_inputs("What happens?", video=clip, audio=clip, use_audio_in_video=True)


def test_aac_padding_is_cut_at_the_declared_duration(tmp_path):
    """AAC decodes to whole 1024-sample frames; the padding must not lengthen the clip (nor its audio tokens)."""
    import wave

    from hooked_av.data.ffmpeg import run_ffmpeg

    sr = 16000
    samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * sr) / sr) * 32767).astype("<i2")
    with wave.open(str(tmp_path / "tone.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(samples.tobytes())
    run_ffmpeg(["-i", str(tmp_path / "tone.wav"), "-c:a", "aac", str(tmp_path / "tone.m4a")])
    audio = load_audio(tmp_path / "tone.m4a", sr)
    assert audio.shape == (2 * sr,)
    assert np.corrcoef(audio, samples / 32767)[0, 1] > 0.99  # the encoder delay is dropped: no shift either
