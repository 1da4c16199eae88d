"""MiniCPM-o 2.6's processor, written without the checkpoint's remote code: the official `chat()` message
format in, the official token ids and encoder inputs out.

Messages are `{"role", "content"}` dicts whose content is a string or a list of strings, PIL images and float32
16 kHz waveforms. Each image becomes `<image_id>i</image_id><image>` + Q `<unk>` + `</image>` (+ a grid of
`<slice>` blocks), each audio `<|audio_start|>` + 25 `<unk>` per second + `<|audio_end|>` (1 s chunks). Any
audio switches to the TTS template (no default system prompt; the reply starts after four speech tokens).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hooked_av.families.minicpm_o.slicing import SliceSettings, slice_image, slice_grid
from hooked_av.model.errors import InputError, UnsupportedCheckpointError

IMAGE_TAG = "(<image>./</image>)"
AUDIO_TAG = "(<audio>./</audio>)"
# The official code splits on these patterns (the "." is a regex wildcard) and expands only exact tags.
TAG_PATTERN = re.compile(r"(\(<image>./</image>\)|\(<audio>./</audio>\))")
TTS_GENERATION_PROMPT = "<|im_start|>assistant\n<|spk_bos|><|spk|><|spk_eos|><|tts_bos|>"
OMNI_SYSTEM_PROMPT = ("You are a helpful assistant. You can accept video, audio and text input and output voice "
                      "and text. ")
ROLES = ("system", "user", "assistant")
MAX_SEGMENT_SECONDS = 30  # longer audio streams are encoded as separate 30 s segments
AUDIO_CHUNK_FRAMES = 100  # mel frames per 1 s placeholder chunk (the processor hard-codes 1 s)
POOL_STEP = 2  # the processor hard-codes the audio pooling step


@dataclass(frozen=True)
class Markers:
    """Marker strings of the image processor config (their ids come from the tokenizer)."""

    image_start: str = "<image>"
    image_end: str = "</image>"
    slice_start: str = "<slice>"
    slice_end: str = "</slice>"
    image_id_start: str = "<image_id>"
    image_id_end: str = "</image_id>"
    unk: str = "<unk>"
    audio_start: str = "<|audio_start|>"
    audio_end: str = "<|audio_end|>"
    spk_start: str = "<|spk_bos|>"
    spk_end: str = "<|spk_eos|>"
    unit: str = "<unit>"


def audio_token_count(n_samples: int, hop_length: int) -> int:
    """LLM tokens of one audio: mel frames -> stride-2 encoder frames -> 2x average pooling (25 per second)."""
    encoder = (math.ceil(n_samples / hop_length) - 1) // 2 + 1
    return (encoder - POOL_STEP) // POOL_STEP + 1


@dataclass
class Sample:
    """One conversation after the chat template, with its media in order."""

    text: str
    images: list[Image.Image]
    audios: list[np.ndarray]
    audio_parts: list[int]  # message index of each audio: audios of one message are one stream


class MiniCPMOProcessor:
    def __init__(self, tokenizer: Any, feature_extractor: Any, preprocessor: dict[str, Any]):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.query_num: int = preprocessor.get("image_feature_size", 64)
        self.use_image_id: bool = preprocessor.get("use_image_id", False)
        self.slice_mode: bool = preprocessor.get("slice_mode", True)
        self.slices = SliceSettings(preprocessor.get("scale_resolution", 448), preprocessor.get("patch_size", 14),
                                    preprocessor.get("max_slice_nums", 9))
        self.mean = torch.tensor(preprocessor.get("norm_mean", [0.5] * 3), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(preprocessor.get("norm_std", [0.5] * 3), dtype=torch.float32)[:, None, None]
        defaults = Markers()
        self.markers = Markers(**{f: preprocessor.get(key, getattr(defaults, f)) for f, key in (
            ("image_start", "im_start"), ("image_end", "im_end"), ("slice_start", "slice_start"),
            ("slice_end", "slice_end"), ("image_id_start", "im_id_start"), ("image_id_end", "im_id_end"),
            ("unk", "unk"))})

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MiniCPMOProcessor:
        from transformers import Qwen2Tokenizer, WhisperFeatureExtractor

        folder = Path(folder)
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            raise UnsupportedCheckpointError(f"{folder} has no preprocessor_config.json (MiniCPM-o image slicing "
                                             "and audio feature settings)")
        preprocessor = json.loads(path.read_text(encoding="utf-8"))
        # The explicit classes ignore the folder's auto_map: the checkpoint's own code is never run.
        tokenizer = Qwen2Tokenizer.from_pretrained(str(folder), local_files_only=True)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        return cls(tokenizer, feature_extractor, preprocessor)

    def token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise UnsupportedCheckpointError(f"the tokenizer has no {token!r} token, which MiniCPM-o needs")
        return token_id

    # ---- messages -> templated text ------------------------------------------------------------------------
    def template(self, messages: list[dict[str, Any]], omni_input: bool, use_tts_template: bool
                 ) -> tuple[Sample, bool]:
        """The chat-templated prompt of one conversation; returns whether the TTS template was used (audio
        switches it on, for this conversation and the ones after it in a batch, as the official chat())."""
        if not isinstance(messages, list) or not messages:
            raise InputError("messages must be a non-empty list of {'role', 'content'} dicts")
        images, audios, parts, rendered = [], [], [], []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise InputError(f"message {i} must be a dict with 'role' and 'content', got {message!r:.80}")
            role, content = message["role"], message["content"]
            if role not in ROLES or (i == 0 and role == "assistant"):
                raise InputError(f"message {i} has role {role!r}: roles are {ROLES}, and the first message is "
                                 "'user' or 'system'")
            items = [content] if isinstance(content, str) else content
            parts_text = []
            for item in items:
                if isinstance(item, Image.Image):
                    images.append(item)
                    parts_text.append(IMAGE_TAG)
                elif isinstance(item, np.ndarray):
                    if item.ndim != 1 or not item.size:
                        raise InputError(f"message {i} holds a numpy array of shape {item.shape}: arrays are audio "
                                         "(1-D float32 16 kHz waveforms); pass images as PIL images")
                    audios.append(item)
                    parts.append(i)
                    parts_text.append(AUDIO_TAG)
                    use_tts_template = True
                elif isinstance(item, str):
                    parts_text.append(item)
                else:
                    raise InputError(f"message {i} holds a {type(item).__name__}: content items are strings, PIL "
                                     "images and float32 16 kHz numpy waveforms")
            rendered.append({"role": role, "content": ("" if omni_input else "\n").join(parts_text)})
        if use_tts_template:
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in rendered)
            text += TTS_GENERATION_PROMPT
        else:
            text = self.tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
        return Sample(text, images, audios, parts), use_tts_template

    # ---- images ------------------------------------------------------------------------------------------
    def image_placeholder(self, image: Image.Image, index: int, max_slices: int, use_image_id: bool) -> str:
        m, q = self.markers, self.query_num
        text = f"{m.image_id_start}{index}{m.image_id_end}" if use_image_id else ""
        text += m.image_start + m.unk * q + m.image_end
        grid = slice_grid(image.size, self.slices, max_slices) if self.slice_mode else None
        if grid is not None:
            row = (m.slice_start + m.unk * q + m.slice_end) * grid[0]
            text += "\n".join([row] * grid[1])
        return text

    def pixel_strip(self, image: Image.Image) -> tuple[Tensor, tuple[int, int]]:
        """Normalised pixels as the official 1 x N strip of patches [3, patch, rows*cols*patch], and (rows, cols)."""
        p = self.slices.patch
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
        x = (x - self.mean) / self.std
        rows, cols = x.shape[1] // p, x.shape[2] // p
        strip = x.reshape(3, rows, p, cols, p).permute(0, 2, 1, 3, 4).reshape(3, p, rows * cols * p)
        return strip, (rows, cols)

    def encoder_images(self, image: Image.Image, max_slices: int) -> list[Image.Image]:
        image = image.convert("RGB")
        return slice_image(image, self.slices, max_slices)[0] if self.slice_mode else [image]

    # ---- audio -------------------------------------------------------------------------------------------
    def audio_placeholder(self, n_samples: int, chunk_input: bool) -> str:
        m = self.markers
        tokens = audio_token_count(n_samples, self.feature_extractor.hop_length)
        if not chunk_input:
            return m.audio_start + m.unk * tokens + m.audio_end
        per_chunk = audio_token_count(AUDIO_CHUNK_FRAMES * self.feature_extractor.hop_length,
                                      self.feature_extractor.hop_length)
        sizes = [min(per_chunk, tokens - start) for start in range(0, tokens, per_chunk)]
        return "".join(m.audio_start + m.unk * n + m.audio_end for n in sizes)

    def audio_segments(self, sample: Sample) -> list[np.ndarray]:
        """Consecutive audios of one message as one stream, cut into 30 s segments."""
        streams: list[np.ndarray] = []
        for k, audio in enumerate(sample.audios):
            audio = np.asarray(audio, dtype=np.float32)
            if k and sample.audio_parts[k] == sample.audio_parts[k - 1]:
                streams[-1] = np.concatenate([streams[-1], audio])
            else:
                streams.append(audio)
        limit = MAX_SEGMENT_SECONDS * self.feature_extractor.sampling_rate
        return [s[i:i + limit] for s in streams for i in range(0, len(s), limit)]

    def audio_features(self, segments: list[np.ndarray]) -> tuple[list[Tensor], Tensor]:
        """Log-mel features of each segment, computed on the zero-padded 30 s window, cut to the real length."""
        fe = self.feature_extractor
        out = fe(segments, sampling_rate=fe.sampling_rate, return_attention_mask=True, padding="max_length",
                 return_tensors="pt")
        lengths = out["attention_mask"].sum(dim=1)
        return [f[:, :n] for f, n in zip(out["input_features"], lengths.tolist())], lengths

    # ---- the batch ---------------------------------------------------------------------------------------
    def __call__(self, messages: list[dict[str, Any]] | list[list[dict[str, Any]]], omni_input: bool = False,
                 use_tts_template: bool | None = None, max_slice_nums: int | None = None,
                 use_image_id: bool | None = None, chunk_input: bool = True, max_inp_length: int = 32768
                 ) -> dict[str, Any]:
        """A left-padded batch (pad id 0) for one conversation or a list of them, with the official ids."""
        batched = isinstance(messages, list) and bool(messages) and isinstance(messages[0], list)
        conversations = messages if batched else [messages]
        max_slices = self.slices.max_slices if max_slice_nums is None else int(max_slice_nums)
        if max_slices < 1:
            raise InputError(f"max_slice_nums must be at least 1, got {max_slice_nums}")
        use_image_id = self.use_image_id if use_image_id is None else bool(use_image_id)
        tts = bool(use_tts_template)
        rows, pixel_values, tgt_sizes, lens_per_row, all_features = [], [], [], [], []
        for conversation in conversations:
            sample, tts = self.template(conversation, omni_input, tts)
            text = self.expand(sample, max_slices, use_image_id, chunk_input)
            rows.append(torch.tensor(self.tokenizer.encode(text)[:max_inp_length], dtype=torch.long))
            strips = [self.pixel_strip(im) for image in sample.images for im in self.encoder_images(image, max_slices)]
            pixel_values.append([s for s, _ in strips])
            tgt_sizes.append(torch.tensor([size for _, size in strips], dtype=torch.long).reshape(-1, 2))
            segments = self.audio_segments(sample) if sample.audios else []
            features, lengths = self.audio_features(segments) if segments else ([], torch.zeros(0, dtype=torch.long))
            all_features.extend(features)
            lens_per_row.append(lengths)
        batch = self.pad(rows)
        batch.update(pixel_values=pixel_values, tgt_sizes=tgt_sizes, audio_feature_lens=lens_per_row,
                     **self.bounds(batch["input_ids"]))
        if all_features:
            batch["audio_features"] = torch.nn.utils.rnn.pad_sequence(
                [f.T for f in all_features], batch_first=True).transpose(1, 2)
        return batch

    def expand(self, sample: Sample, max_slices: int, use_image_id: bool, chunk_input: bool) -> str:
        """The prompt with every image / audio tag replaced by its placeholder tokens."""
        chunks = TAG_PATTERN.split(sample.text)
        n_images, n_audios = chunks.count(IMAGE_TAG), chunks.count(AUDIO_TAG)
        if n_images != len(sample.images) or n_audios != len(sample.audios):
            raise InputError(f"the prompt holds {n_images} image and {n_audios} audio tags for {len(sample.images)} "
                             f"images and {len(sample.audios)} audios: do not write {IMAGE_TAG} / {AUDIO_TAG} in text")
        images, audios = iter(enumerate(sample.images)), iter(sample.audios)
        for i, chunk in enumerate(chunks):
            if chunk == IMAGE_TAG:
                index, image = next(images)
                chunks[i] = self.image_placeholder(image, index, max_slices, use_image_id)
            elif chunk == AUDIO_TAG:
                chunks[i] = self.audio_placeholder(len(next(audios)), chunk_input)
        return "".join(chunks)

    @staticmethod
    def pad(rows: list[Tensor]) -> dict[str, Tensor]:
        width = max(len(r) for r in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, width - len(row):] = row
            attention_mask[b, width - len(row):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def bounds(self, input_ids: Tensor) -> dict[str, list[Tensor]]:
        """[start, end) of every image/slice, audio and speaker span per row (start after the opening marker)."""
        m = self.markers
        kinds = {"image_bound": ((m.image_start, m.slice_start), (m.image_end, m.slice_end)),
                 "audio_bounds": ((m.audio_start,), (m.audio_end,)),
                 "spk_bounds": ((m.spk_start,), (m.spk_end,))}
        out: dict[str, list[Tensor]] = {k: [] for k in kinds}
        for row in input_ids:
            for key, (opens, closes) in kinds.items():
                out[key].append(marker_spans(row, [self.token_id(t) for t in opens], [self.token_id(t) for t in closes]))
        return out


def marker_spans(row: Tensor, opens: list[int], closes: list[int]) -> Tensor:
    """[n, 2] spans [index after an opening marker, index of the matching closing marker), paired in order."""
    starts = torch.nonzero(torch.isin(row, torch.tensor(opens, device=row.device))).flatten() + 1
    ends = torch.nonzero(torch.isin(row, torch.tensor(closes, device=row.device))).flatten()
    n = min(len(starts), len(ends))
    return torch.stack([starts[:n], ends[:n]], dim=1).long()
