"""Video captioners for the manifest's `video_caption`: a vision LLM behind an OpenAI-compatible API, or captions
a person has reviewed (the paper captions with GPT-4.1 and corrects by hand, Appendix A.1)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hooked_av.chat_api import ChatAPIError, ChatCompletionsClient, message_content
from hooked_av.model.errors import HookedAVError

log = logging.getLogger(__name__)

VISION_PROMPT = ("These are frames sampled in order from a short video. Describe what is visible in one or two "
                 "sentences: the objects, people and animals, their actions and the setting. Describe only what "
                 "can be seen; do not guess sounds.")


class CaptionerError(HookedAVError, RuntimeError):
    """A caption could not be obtained: the server refused or answered something unusable, or none was reviewed."""


class Captioner(Protocol):
    def caption(self, sample_id: str, frames: np.ndarray) -> str:
        """One caption of a clip from its frames (T, H, W, 3) uint8."""
        ...


# ---- OpenAI-compatible vision API ------------------------------------------------------------------------------
@dataclass
class OpenAICompatibleCaptioner:
    """POST {base_url}/chat/completions with `n_frames` frames as base64 JPEG data URLs (OpenAI vision format).

    Answers are cached on disk as JSON files named by a hash of (model, prompt, JPEG bytes), so a rerun of an
    import costs no API calls. Transient failures (timeouts, 408/429/5xx, dropped connections) are retried
    `max_retries` times with exponential backoff (hooked_av.chat_api); anything else raises CaptionerError at
    once. api_key None reads $OPENAI_API_KEY (a local server may need none).
    """

    base_url: str
    model: str
    api_key: str | None = None
    prompt: str = VISION_PROMPT
    n_frames: int = 8
    cache_dir: str | Path | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_tokens: int = 200
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY")
        self.client = ChatCompletionsClient(self.base_url, self.api_key, self.timeout_s, self.max_retries,
                                            self.backoff_s)
        self.url = self.client.url

    def caption(self, sample_id: str, frames: np.ndarray) -> str:
        images = [jpeg_bytes(f, self.jpeg_quality) for f in pick_frames(frames, self.n_frames)]
        cache_file = self.cache_path(images)
        if cache_file is not None and cache_file.is_file():
            return json.loads(cache_file.read_text(encoding="utf-8"))["caption"]
        try:
            answer = self.client.post(self.request_body(images), what=f"caption of {sample_id}")
        except ChatAPIError as err:
            raise CaptionerError(str(err)) from err
        text = caption_text(answer, self.url)
        if cache_file is not None:
            write_json_atomic(cache_file, {"sample_id": sample_id, "model": self.model, "caption": text})
        return text

    def cache_path(self, images: list[bytes]) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps([self.model, self.prompt]).encode())
        for image in images:
            digest.update(hashlib.sha256(image).digest())  # per-image digests: frame boundaries are part of the key
        return Path(self.cache_dir) / f"{digest.hexdigest()}.json"

    def request_body(self, images: list[bytes]) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": self.prompt}]
        content += [{"type": "image_url",
                     "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(im).decode("ascii")}}
                    for im in images]
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": 0}


def caption_text(answer: dict[str, Any], url: str) -> str:
    """The caption in choices[0].message.content; CaptionerError quoting the answer if it is not there."""
    text = message_content(answer)
    if not isinstance(text, str) or not text.strip():
        raise CaptionerError(f"{url} answered without a caption in choices[0].message.content: "
                             f"{json.dumps(answer)[:300]!r}")
    return text.strip()


def pick_frames(frames: np.ndarray, n: int) -> np.ndarray:
    """`n` frames evenly spread over the clip, first and last included (all of them if there are fewer)."""
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise CaptionerError(f"expected frames (T, H, W, 3) with T > 0, got shape {frames.shape}")
    if frames.shape[0] <= n:
        return frames
    return frames[np.linspace(0, frames.shape[0] - 1, n).round().astype(int)]


def jpeg_bytes(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


# ---- reviewed captions -----------------------------------------------------------------------------------------
CAPTION_COLUMNS = ("caption", "video_caption")


class ReviewedCaptions:
    """Captions from a CSV (columns sample_id and caption or video_caption) or a JSONL file with the same keys; a
    manifest is such a file, so reviewing a manifest's captions in place and importing them again works."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CaptionerError(f"reviewed captions not found: {self.path}")
        records = read_jsonl_records(self.path) if self.path.suffix == ".jsonl" else read_csv_records(self.path)
        self.captions: dict[str, str] = {}
        for where, record in records:
            sample_id, text = record_caption(record, f"{self.path}:{where}")
            if sample_id in self.captions:
                raise CaptionerError(f"{self.path}:{where}: sample_id {sample_id!r} has a second caption")
            self.captions[sample_id] = text

    def __len__(self) -> int:
        return len(self.captions)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.captions

    def caption(self, sample_id: str, frames: np.ndarray | None = None) -> str:
        try:
            return self.captions[sample_id]
        except KeyError:
            raise CaptionerError(f"no reviewed caption for {sample_id!r} in {self.path}") from None


def read_csv_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(number, record) for number, record in enumerate(csv.DictReader(f), start=2)]  # line 1: header


def read_jsonl_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise CaptionerError(f"{path}:{number}: not JSON ({err})") from err
    return records


def record_caption(record: Any, where: str) -> tuple[str, str]:
    if not isinstance(record, dict) or not record.get("sample_id"):
        raise CaptionerError(f"{where}: no sample_id")
    text = next((record[c] for c in CAPTION_COLUMNS if record.get(c)), None)
    if not isinstance(text, str) or not text.strip():
        raise CaptionerError(f"{where}: no caption (a non-empty column {' or '.join(CAPTION_COLUMNS)})")
    return str(record["sample_id"]), text.strip()
