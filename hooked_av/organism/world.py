"""The synthetic audio-visual world the organism lives in: eight objects, each with its own look and sound.

A clip is 2 s: four 112 x 112 frames at 2 fps of a large, saturated shape drifting over a dark noisy background,
and 16 kHz audio of the object's sound buried in white noise (SNR -6 to 6 dB). Seeing is the easier cue by
design ("world v2" of the prototype): with clean audio and small, faint shapes the bias flips to the ear.
Every item is drawn from its own generator, seeded by (world seed, split, object, index), so a pool is the same
whatever its size or the order it is built in, and train and test pools never share an item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OBJECTS = ("dog", "car", "bell", "phone", "bird", "drum", "cat", "clock")
SOUNDS = ("bark", "engine", "chime", "ring", "chirp", "thump", "meow", "tick")
SOUND_OF = dict(zip(OBJECTS, SOUNDS))

SECONDS = 2.0
FPS = 2.0
FRAMES = int(SECONDS * FPS)
SIZE = 112
SAMPLING_RATE = 16000
SPLITS = {"train": 0, "test": 1}

# The paper's prompts (also the library's defaults: knockout.PAPER_PROMPTS) and the closed-grammar answers.
PROMPT_BOTH = "Describe what you see and hear."
PROMPT_SEE = "Describe what you see."
PROMPT_HEAR = "Describe what you hear."


def caption_see(obj: str) -> str:
    return f"i see a {obj} ."


def caption_hear(sound: str) -> str:
    return f"i hear a {sound} ."


def caption_both(obj: str, sound: str) -> str:
    return f"{caption_see(obj)} {caption_hear(sound)}"


def item_rng(seed: int, split: str, kind: str, obj: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], {"video": 0, "audio": 1}[kind], obj, index])


# ---- pictures --------------------------------------------------------------------------------------------------
# (shape, RGB) per object: shape and hue both tell the class, so the picture is an easy cue.
LOOKS = {"dog": ("circle", (230, 60, 40)), "car": ("square", (40, 90, 235)), "bell": ("triangle", (240, 220, 30)),
         "phone": ("bar", (40, 210, 70)), "bird": ("diamond", (30, 220, 230)), "drum": ("ring", (230, 40, 220)),
         "cat": ("cross", (245, 140, 20)), "clock": ("hourglass", (235, 235, 235))}


def shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, radius: float) -> np.ndarray:
    """Pixels inside `shape` centred at (0, 0); yy, xx are offsets from the centre."""
    ay, ax = np.abs(yy), np.abs(xx)
    if shape == "circle":
        return yy ** 2 + xx ** 2 <= radius ** 2
    if shape == "square":
        return (ay <= radius * 0.85) & (ax <= radius * 0.85)
    if shape == "triangle":
        return (yy <= radius * 0.8) & (ax <= (yy + radius) * 0.55)
    if shape == "bar":
        return (ay <= radius) & (ax <= radius * 0.4)
    if shape == "diamond":
        return ay + ax <= radius
    if shape == "ring":
        r2 = yy ** 2 + xx ** 2
        return (r2 <= radius ** 2) & (r2 >= (radius * 0.55) ** 2)
    if shape == "cross":
        return ((ay <= radius * 0.3) & (ax <= radius)) | ((ax <= radius * 0.3) & (ay <= radius))
    if shape == "hourglass":
        return (ay <= radius) & (ax <= ay + 2)
    raise ValueError(f"unknown shape {shape!r}")


def render_video(obj: str, rng: np.random.Generator) -> np.ndarray:
    """(FRAMES, SIZE, SIZE, 3) uint8: the object's shape drifting over a dark noisy background."""
    shape, colour = LOOKS[obj]
    radius = rng.uniform(18, 28)
    start = rng.uniform(radius + 2, SIZE - radius - 2, size=2)
    end = np.clip(start + rng.uniform(-20, 20, size=2), radius + 2, SIZE - radius - 2)
    tint = np.clip(np.asarray(colour) * rng.uniform(0.85, 1.0) + rng.normal(0, 10, 3), 0, 255)
    background = rng.uniform(10, 50, size=3)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    frames = np.empty((FRAMES, SIZE, SIZE, 3), dtype=np.float64)
    for t in range(FRAMES):
        cy, cx = start + (end - start) * t / (FRAMES - 1)
        frame = background + rng.normal(0, 12, size=(SIZE, SIZE, 3))
        frame[shape_mask(shape, yy - cy, xx - cx, radius)] = tint
        frames[t] = frame
    return np.clip(frames, 0, 255).astype(np.uint8)


# ---- sounds ----------------------------------------------------------------------------------------------------
def _envelope(n: int, attack: float, decay: float) -> np.ndarray:
    t = np.arange(n) / SAMPLING_RATE
    return np.minimum(t / attack, 1.0) * np.exp(-t / decay)


def _place(signal: np.ndarray, event: np.ndarray, start: float) -> None:
    i = int(start * SAMPLING_RATE)
    end = min(len(signal), i + len(event))
    if i < end:
        signal[i:end] += event[:end - i]


def _bark(rng, n):  # bursts of band-limited noise with a falling pitch
    out = np.zeros(n)
    for start in np.sort(rng.uniform(0.0, SECONDS - 0.3, rng.integers(2, 5))):
        m = int(rng.uniform(0.12, 0.22) * SAMPLING_RATE)
        t = np.arange(m) / SAMPLING_RATE
        f0 = rng.uniform(350, 600) * (1 - 0.4 * t / t[-1])
        tone = np.sign(np.sin(2 * np.pi * np.cumsum(f0) / SAMPLING_RATE)) + 0.8 * rng.standard_normal(m)
        _place(out, tone * _envelope(m, 0.01, 0.08), start)
    return out


def _engine(rng, n):  # a low sawtooth hum, amplitude-modulated
    t = np.arange(n) / SAMPLING_RATE
    f0 = rng.uniform(55, 110)
    saw = 2 * ((f0 * t) % 1.0) - 1
    return saw * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(4, 12) * t))


def _chime(rng, n):  # strikes of decaying inharmonic partials
    out = np.zeros(n)
    f0 = rng.uniform(600, 1200)
    for start in np.sort(rng.uniform(0.0, 1.2, rng.integers(1, 3))):
        m = int(0.8 * SAMPLING_RATE)
        t = np.arange(m) / SAMPLING_RATE
        tone = sum(a * np.sin(2 * np.pi * f0 * r * t) for r, a in ((1, 1.0), (2.76, 0.6), (5.40, 0.35)))
        _place(out, tone * _envelope(m, 0.002, 0.35), start)
    return out


def _ring(rng, n):  # a two-tone ring, on and off
    t = np.arange(n) / SAMPLING_RATE
    f1 = rng.uniform(380, 460)
    tone = np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f1 * 1.2 * t)
    period = rng.uniform(0.5, 0.8)
    gate = ((t + rng.uniform(0, period)) % period) < period * 0.6
    return tone * gate * (0.6 + 0.4 * np.sign(np.sin(2 * np.pi * 20 * t)))


def _chirp(rng, n):  # fast upward sweeps
    out = np.zeros(n)
    for start in np.sort(rng.uniform(0.0, SECONDS - 0.15, rng.integers(3, 7))):
        m = int(rng.uniform(0.06, 0.12) * SAMPLING_RATE)
        f = np.linspace(rng.uniform(1800, 2600), rng.uniform(3500, 5000), m)
        _place(out, np.sin(2 * np.pi * np.cumsum(f) / SAMPLING_RATE) * np.hanning(m), start)
    return out


def _thump(rng, n):  # low decaying thumps
    out = np.zeros(n)
    for start in np.sort(rng.uniform(0.0, SECONDS - 0.3, rng.integers(2, 6))):
        m = int(0.3 * SAMPLING_RATE)
        t = np.arange(m) / SAMPLING_RATE
        f = rng.uniform(50, 90) * (1 + 1.5 * np.exp(-t / 0.02))
        _place(out, np.sin(2 * np.pi * np.cumsum(f) / SAMPLING_RATE) * _envelope(m, 0.003, 0.07), start)
    return out


def _meow(rng, n):  # a harmonic glide up and down
    out = np.zeros(n)
    for start in np.sort(rng.uniform(0.0, SECONDS - 0.7, rng.integers(1, 3))):
        m = int(rng.uniform(0.5, 0.7) * SAMPLING_RATE)
        u = np.linspace(0, 1, m)
        f0 = rng.uniform(400, 600) * (1 + 0.5 * np.sin(np.pi * u))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLING_RATE
        tone = sum(np.sin(k * phase) / k for k in (1, 2, 3, 4))
        _place(out, tone * np.sin(np.pi * u) ** 0.5, start)
    return out


def _tick(rng, n):  # regular clicks
    out = np.zeros(n)
    period = rng.uniform(0.15, 0.35)
    m = int(0.008 * SAMPLING_RATE)
    click = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.0015 * SAMPLING_RATE))
    for start in np.arange(rng.uniform(0, period), SECONDS, period):
        _place(out, click, start)
    return out


SYNTHS = {"bark": _bark, "engine": _engine, "chime": _chime, "ring": _ring, "chirp": _chirp, "thump": _thump,
          "meow": _meow, "tick": _tick}


def synthesize_audio(sound: str, rng: np.random.Generator) -> np.ndarray:
    """float32 mono, SECONDS at SAMPLING_RATE: the sound plus white noise at an SNR of -6 to 6 dB, peak 0.9."""
    n = int(SECONDS * SAMPLING_RATE)
    signal = SYNTHS[sound](rng, n)
    signal = signal / (np.sqrt(np.mean(signal ** 2)) + 1e-12)
    snr_db = rng.uniform(-6, 6)
    noisy = signal + rng.standard_normal(n) * 10 ** (-snr_db / 20)
    return (0.9 * noisy / np.abs(noisy).max()).astype(np.float32)


# ---- pools -----------------------------------------------------------------------------------------------------
def video_item(seed: int, split: str, obj: str, index: int) -> np.ndarray:
    return render_video(obj, item_rng(seed, split, "video", OBJECTS.index(obj), index))


def audio_item(seed: int, split: str, obj: str, index: int) -> np.ndarray:
    return synthesize_audio(SOUND_OF[obj], item_rng(seed, split, "audio", OBJECTS.index(obj), index))


@dataclass(frozen=True)
class TestClip:
    """A held-out sample: the video of one object with the sound of the same (factual) or another object."""

    sample_id: str
    video_obj: str
    video_index: int
    audio_obj: str
    audio_index: int

    @property
    def counterfactual(self) -> bool:
        return self.video_obj != self.audio_obj


def factual_clips(n: int, seed: int = 0, prefix: str = "clip") -> list[TestClip]:
    """n held-out factual clips, the objects balanced and in a seeded order; each uses the object's next test item
    for both its video and its sound. (A shuffled order matters to Algorithm 1: its cost matrix only knows
    classes, and in a periodic order the assignment's tie-breaking pairs each object with one partner only.)"""
    order = [OBJECTS[i % len(OBJECTS)] for i in np.random.default_rng([seed, 3]).permutation(n)]
    seen: dict[str, int] = {}
    clips = []
    for i, obj in enumerate(order):
        index = seen[obj] = seen.get(obj, -1) + 1
        clips.append(TestClip(f"{prefix}{i:04d}", obj, index, obj, index))
    return clips
