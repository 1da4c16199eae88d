"""Captioners: the OpenAI-compatible client against a scripted local server (127.0.0.1 only), reviewed captions."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from .chat_server import ChatServer, chat_answer
from hooked_av.data.captioner import CaptionerError, OpenAICompatibleCaptioner, ReviewedCaptions, pick_frames


def ok(text: str) -> tuple[int, dict, float]:
    return 200, chat_answer(text), 0.0


class ScriptedServer(ChatServer):
    """Answers each POST with the next scripted (status, payload, delay)."""

    def __init__(self):
        self.script: list[tuple[int, bytes | dict, float]] = []
        super().__init__(lambda scenario, body, n: self.script.pop(0) if self.script else (500, b"exhausted", 0))
        self.base_url = self.url()

    @property
    def all_requests(self) -> list[dict]:
        return self.requests[""]


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


def frames(n=12, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, 24, 32, 3), dtype=np.uint8)


def captioner(server, tmp_path, **kwargs):
    kwargs = {"backoff_s": 0.01, "timeout_s": 5, **kwargs}
    return OpenAICompatibleCaptioner(server.base_url, "vision-model", api_key="sk-test", n_frames=4,
                                     cache_dir=tmp_path / "cache", **kwargs)


def test_request_is_openai_vision_format_and_answer_is_returned(server, tmp_path):
    server.script = [ok("  A dog runs across a lawn.\n")]
    text = captioner(server, tmp_path).caption("clip1", frames())
    assert text == "A dog runs across a lawn."
    (request,) = server.all_requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "vision-model" and body["temperature"] == 0
    content = body["messages"][0]["content"]
    assert content[0]["type"] == "text"
    urls = [c["image_url"]["url"] for c in content[1:]]
    assert len(urls) == 4 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    image = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    assert image.format == "JPEG" and image.size == (32, 24)


def test_pick_frames_spreads_over_the_clip():
    clip = np.arange(12)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    assert pick_frames(clip, 4)[:, 0, 0, 0].tolist() == [0, 4, 7, 11]
    assert len(pick_frames(clip[:3], 4)) == 3


def test_server_error_is_retried_then_succeeds(server, tmp_path):
    server.script = [(500, b'{"error": "overloaded"}', 0), (503, b"busy", 0), ok("A cat sleeps.")]
    assert captioner(server, tmp_path).caption("clip1", frames()) == "A cat sleeps."
    assert len(server.all_requests) == 3


def test_timeout_is_retried(server, tmp_path):
    server.script = [(200, b"{}", 1.0), ok("A car passes.")]
    c = captioner(server, tmp_path, timeout_s=0.3)
    assert c.caption("clip1", frames()) == "A car passes."
    assert len(server.all_requests) == 2


def test_persistent_server_errors_give_up_after_the_retries(server, tmp_path):
    server.script = [(502, b"bad gateway", 0)] * 3
    with pytest.raises(CaptionerError, match=r"caption of clip1 .*HTTP 502.*gave up after 3 attempts"):
        captioner(server, tmp_path, max_retries=2).caption("clip1", frames())
    assert len(server.all_requests) == 3


def test_client_errors_are_not_retried(server, tmp_path):
    server.script = [(401, b'{"error": "invalid api key"}', 0)]
    with pytest.raises(CaptionerError, match=r"HTTP 401.*invalid api key"):
        captioner(server, tmp_path).caption("clip1", frames())
    assert len(server.all_requests) == 1


@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"choices": []}', b'{"choices": [{"message": {}}]}'])
def test_malformed_answer_is_a_clear_error(server, tmp_path, body):
    server.script = [(200, body, 0)]
    with pytest.raises(CaptionerError, match=r"not JSON|without a caption in choices\[0\]\.message\.content"):
        captioner(server, tmp_path).caption("clip1", frames())
    assert len(server.all_requests) == 1  # a malformed answer is not retried


def test_cache_hit_skips_the_server_and_other_frames_miss(server, tmp_path):
    server.script = [ok("first"), ok("second")]
    assert captioner(server, tmp_path).caption("clip1", frames(seed=0)) == "first"
    assert captioner(server, tmp_path).caption("clip1", frames(seed=0)) == "first"  # a new instance: from disk
    assert len(server.all_requests) == 1
    assert captioner(server, tmp_path).caption("clip2", frames(seed=1)) == "second"
    assert len(server.all_requests) == 2
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_unreachable_server_is_a_clear_error(tmp_path):
    s = ScriptedServer()
    url = s.base_url
    s.close()  # nothing listens on that port any more
    c = OpenAICompatibleCaptioner(url, "m", api_key="", n_frames=2, backoff_s=0.01, timeout_s=2, max_retries=1)
    with pytest.raises(CaptionerError, match=r"(?i)no answer .*refused.*gave up after 2 attempts"):
        c.caption("clip1", frames())


def test_reviewed_captions_from_csv_and_from_a_manifest(tmp_path):
    csv_path = tmp_path / "reviewed.csv"
    csv_path.write_text('sample_id,caption\nclip1,"A dog, then a cat."\nclip2,A red car.\n')
    reviewed = ReviewedCaptions(csv_path)
    assert len(reviewed) == 2 and reviewed.caption("clip1", frames()) == "A dog, then a cat."
    with pytest.raises(CaptionerError, match="no reviewed caption for 'clip3'"):
        reviewed.caption("clip3", frames())
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"sample_id": "clip1", "video_caption": "A dog.", "audio_captions": []}) + "\n")
    assert ReviewedCaptions(manifest).caption("clip1") == "A dog."


def test_reviewed_captions_reject_duplicates_and_blanks(tmp_path):
    path = tmp_path / "reviewed.csv"
    path.write_text("sample_id,caption\nclip1,A dog.\nclip1,A cat.\n")
    with pytest.raises(CaptionerError, match=r"reviewed.csv:3: sample_id 'clip1' has a second caption"):
        ReviewedCaptions(path)
    path.write_text("sample_id,caption\nclip1,\n")
    with pytest.raises(CaptionerError, match=r"reviewed.csv:2: no caption"):
        ReviewedCaptions(path)
