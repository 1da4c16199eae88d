"""Client of OpenAI-compatible /chat/completions endpoints (vLLM, SGLang, llama.cpp server, OpenAI, ...).

Shared by the video captioner (hooked_av.data.captioner) and the LLM judge (hooked_av.eval.backends): timeouts,
HTTP 408/429/5xx and connection failures are retried with exponential backoff; any other answer fails at once
with a typed error. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from hooked_av.model.errors import HookedAVError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class ChatAPIError(HookedAVError):
    """The endpoint could not give an answer; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class ChatCompletionsClient:
    base_url: str
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 1.0  # seconds before the first retry; doubled each time
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.base_url.rstrip("/") + "/chat/completions"

    def post(self, body: dict[str, Any], what: str = "request") -> dict[str, Any]:
        """The decoded JSON answer to `body`, retrying transient failures."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._post_once(body)
            except _Retryable as err:
                last = err
            if attempt + 1 < attempts:
                delay = self.backoff * 2 ** attempt
                log.warning("%s to %s: %s; retrying in %.1f s", what, self.url, last, delay)
                time.sleep(delay)
        raise ChatAPIError(f"{what} to {self.url}: {last} (gave up after {attempts} attempts)", status=last.status)

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:500].decode("utf-8", "replace")
            if err.code in RETRY_STATUSES:
                raise _Retryable(f"HTTP {err.code}: {detail}", err.code) from err
            raise ChatAPIError(f"{self.url} answered HTTP {err.code}: {detail}", status=err.code) from err
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
            # refused, reset, timed out, cut off mid-answer: the next attempt may well succeed
            raise _Retryable(f"no answer ({getattr(err, 'reason', err)!r})") from err
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ChatAPIError(f"{self.url} sent a body that is not JSON: "
                               f"{raw[:300].decode('utf-8', 'replace')!r}") from None


def message_content(response: Any) -> str | None:
    """choices[0].message.content of an answer, or None when the answer has no such field."""
    try:
        return response["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
