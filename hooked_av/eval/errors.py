"""Typed errors of the judge side: each names what is wrong and what to do about it."""

from __future__ import annotations

from hooked_av.model.errors import HookedAVError, MissingDependencyError  # noqa: F401 (re-exported)


class MalformedJudgeOutput(HookedAVError, ValueError):
    """A judge answer that does not contain a usable {"reasoning": ..., "score": <0..1>} object.

    `raw` keeps the judge's full text, so a failure record can show exactly what the model said.
    """

    def __init__(self, message: str, raw: str):
        super().__init__(message)
        self.raw = raw


class JudgeBackendError(HookedAVError, RuntimeError):
    """A judge backend that cannot answer: server unreachable after retries, HTTP error, bad response body.

    `status` is the HTTP status code when the server answered with an error, else None.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class EvalDataError(HookedAVError, ValueError):
    """A manifest, captions, scores or ratings file that is missing fields or does not match its partner file."""
