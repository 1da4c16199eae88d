"""The OpenAI-compatible judge client against a scripted HTTP server on 127.0.0.1 (no network).

The server's behaviour is chosen by the first path segment of the base URL (/good/v1, /flaky/v1, ...); it
answers a bounded number of requests, then stops by itself, and the fixture stops it earlier.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hooked_av.eval.backends import JudgeBackend, OpenAICompatibleBackend
from hooked_av.eval.cli import add_subcommands
from hooked_av.eval.errors import JudgeBackendError
from hooked_av.eval.judge import Judge
from hooked_av.eval.rubric import AUDIO_FIDELITY
from hooked_av.eval.scores import load_scores

GOOD_ANSWER = '{"reasoning": "the dog bark is described", "score": 0.75}'
MAX_REQUESTS = 200  # the server never serves more than this
SERVER_LIFETIME_S = 60
SLOW_S = 1.5  # longer than the client timeout used below


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.timeout = 0.05  # handle_request returns this often to check the stop conditions
        self.requests: dict[str, list[dict]] = defaultdict(list)
        self.stopped = threading.Event()
        self.served = 0

    def serve_bounded(self) -> None:
        deadline = time.monotonic() + SERVER_LIFETIME_S
        while not self.stopped.is_set() and self.served < MAX_REQUESTS and time.monotonic() < deadline:
            self.handle_request()

    def url(self, scenario: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{scenario}/v1"


class Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_POST(self) -> None:
        self.server.served += 1
        scenario = self.path.strip("/").split("/")[0]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        seen = self.server.requests[scenario]
        seen.append(body)
        n = len(seen)
        if scenario == "flaky" and n == 1:
            return self._send(500, {"error": "overloaded"})
        if scenario == "down":
            return self._send(503, {"error": "still loading"})
        if scenario == "slow" and n == 1:
            time.sleep(SLOW_S)
        if scenario == "noschema" and "response_format" in body:
            return self._send(400, {"error": "response_format is not supported"})
        if scenario == "toolong":
            return self._send(400, {"error": "prompt longer than the context"})
        if scenario == "missing":
            return self._send(404, {"error": "no such model"})
        content = "I think the caption is great!" if scenario == "badjson" else GOOD_ANSWER
        self._send(200, {"object": "chat.completion",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}]})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up (slow scenario)
            pass


@pytest.fixture
def server():
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_bounded, daemon=True)
    thread.start()
    yield srv
    srv.stopped.set()
    thread.join(timeout=5)
    srv.server_close()


def client(server: ScriptedServer, scenario: str, **kwargs) -> OpenAICompatibleBackend:
    kwargs = {"timeout": 0.5, "max_retries": 2, "backoff": 0.01, **kwargs}
    return OpenAICompatibleBackend(server.url(scenario), "judge-model", **kwargs)


def test_good_answer_and_request_body(server):
    backend = client(server, "good")
    assert isinstance(backend, JudgeBackend)
    answers = backend.complete(["p1", "p2", "p3"])
    assert answers == [GOOD_ANSWER] * 3
    bodies = server.requests["good"]
    assert sorted(b["messages"][0]["content"] for b in bodies) == ["p1", "p2", "p3"]
    body = bodies[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert body["messages"][0]["role"] == "user"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["reasoning", "score"]


def test_retries_after_a_500(server):
    assert client(server, "flaky").complete(["p"]) == [GOOD_ANSWER]
    assert len(server.requests["flaky"]) == 2


def test_retries_after_a_timeout(server):
    start = time.monotonic()
    assert client(server, "slow").complete(["p"]) == [GOOD_ANSWER]
    assert len(server.requests["slow"]) == 2
    assert time.monotonic() - start < SLOW_S  # the client gave up on the slow answer instead of waiting


def test_persistent_5xx_gives_up_after_the_retry_budget(server):
    with pytest.raises(JudgeBackendError, match="HTTP 503.*gave up after 3 attempts") as info:
        client(server, "down").complete(["p"])
    assert info.value.status == 503
    assert len(server.requests["down"]) == 3


def test_client_errors_are_not_retried(server):
    with pytest.raises(JudgeBackendError, match="HTTP 404.*no such model"):
        client(server, "missing").complete(["p"])
    assert len(server.requests["missing"]) == 1


def test_falls_back_without_response_format_when_the_server_rejects_it(server):
    backend = client(server, "noschema")
    assert backend.complete(["p"]) == [GOOD_ANSWER]
    assert backend.complete(["q"]) == [GOOD_ANSWER]
    # rejected once, then plain requests only
    assert ["response_format" in b for b in server.requests["noschema"]] == [True, False, False]


def test_an_unrelated_400_keeps_structured_output_on(server):
    backend = client(server, "toolong")
    with pytest.raises(JudgeBackendError, match="HTTP 400.*longer than the context"):
        backend.complete(["p"])
    assert backend.json_schema  # the plain retry failed as well: the 400 was not about response_format
    assert ["response_format" in b for b in server.requests["toolong"]] == [True, False]


def test_connection_refused_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{port}/v1", "m", timeout=0.5, max_retries=1, backoff=0.01)
    with pytest.raises(JudgeBackendError, match="(?s)refused.*gave up after 2 attempts.*vllm serve"):
        backend.complete(["p"])


def test_judge_reasks_then_records_the_failure(server):
    judge = Judge(client(server, "badjson"), max_attempts=3)
    result = judge.score(AUDIO_FIDELITY, ["A dog barks"], "A dog is barking.")
    assert result.status == "failed" and result.score is None and result.attempts == 3
    assert result.raw == "I think the caption is great!"
    assert "no JSON object" in result.error
    prompts = [b["messages"][0]["content"] for b in server.requests["badjson"]]
    assert len(prompts) == 3
    assert "could not be used" not in prompts[0]
    assert all(p.startswith(prompts[0]) and "could not be used" in p for p in prompts[1:])


def test_judge_cli_scores_a_captions_file_through_the_server(server, tmp_path):
    manifest, captions, out = tmp_path / "manifest.jsonl", tmp_path / "captions.jsonl", tmp_path / "scores.jsonl"
    manifest.write_text(json.dumps({"sample_id": "s1", "audio_captions": ["A dog barks"] * 5,
                                    "video_caption": "A dog in a yard", "counterfactual": False}) + "\n")
    captions.write_text(json.dumps({"sample_id": "s1", "prompt": "Describe what you hear.", "caption": "A dog.",
                                    "model": "omni", "counterfactual": False}) + "\n")
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["judge", "--manifest", str(manifest), "--captions", str(captions), "--out", str(out),
                              "--backend", "openai", "--model", "judge-model", "--base-url", server.url("good"),
                              "--no-think"])
    assert args.func(args) == 0
    rows = load_scores(out)
    assert {(r["modality"], r["status"], r["score"], r["judge_model"]) for r in rows} == {
        ("audio", "ok", 0.75, "judge-model"), ("video", "ok", 0.75, "judge-model")}
    assert all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in server.requests["good"])
    assert (tmp_path / "scores.jsonl.cache.jsonl").exists()
