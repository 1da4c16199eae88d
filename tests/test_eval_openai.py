"""The OpenAI-compatible judge client against a scripted HTTP server on 127.0.0.1 (no network).

The server's behaviour is chosen by the first path segment of the base URL (/good/v1, /flaky/v1, ...); it
answers a bounded number of requests, then stops by itself, and the fixture stops it earlier.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

import pytest

from .chat_server import ChatServer, chat_answer
from hooked_av.eval.backends import JudgeBackend, OpenAICompatibleBackend
from hooked_av.eval.cli import add_subcommands
from hooked_av.eval.errors import JudgeBackendError
from hooked_av.eval.judge import Judge
from hooked_av.eval.rubric import AUDIO_FIDELITY
from hooked_av.eval.scores import load_scores, score_captions

GOOD_ANSWER = '{"reasoning": "the dog bark is described", "score": 0.75}'
SLOW_S = 1.5  # longer than the client timeout used below


def respond(scenario: str, body: dict, n: int):
    """Each scenario plays one kind of server."""
    if scenario == "flaky" and n == 1:
        return 500, {"error": "overloaded"}, 0.0
    if scenario == "down":
        return 503, {"error": "still loading"}, 0.0
    if scenario == "noschema" and "response_format" in body:
        return 400, {"error": "response_format is not supported"}, 0.0
    if scenario == "toolong":
        return 400, {"error": "prompt longer than the context"}, 0.0
    if scenario == "missing":
        return 404, {"error": "no such model"}, 0.0
    content = "I think the caption is great!" if scenario == "badjson" else GOOD_ANSWER
    if scenario == "hung":
        return 200, chat_answer(GOOD_ANSWER), 3.0  # answers long after any sensible check timeout
    return 200, chat_answer(content), SLOW_S if scenario == "slow" and n == 1 else 0.0


class ScriptedServer(ChatServer):
    def bodies(self, scenario: str) -> list[dict]:
        return [r["body"] for r in self.requests[scenario]]


@pytest.fixture
def server():
    srv = ScriptedServer(respond)
    yield srv
    srv.close()


def client(server: ScriptedServer, scenario: str, **kwargs) -> OpenAICompatibleBackend:
    kwargs = {"timeout": 0.5, "max_retries": 2, "backoff": 0.01, **kwargs}
    return OpenAICompatibleBackend(server.url(scenario), "judge-model", **kwargs)


def test_good_answer_and_request_body(server):
    backend = client(server, "good")
    assert isinstance(backend, JudgeBackend)
    answers = backend.complete(["p1", "p2", "p3"])
    assert answers == [GOOD_ANSWER] * 3
    bodies = server.bodies("good")
    assert sorted(b["messages"][0]["content"] for b in bodies) == ["p1", "p2", "p3"]
    body = bodies[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert body["messages"][0]["role"] == "user"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["reasoning", "score"]


def test_retries_after_a_500(server):
    assert client(server, "flaky").complete(["p"]) == [GOOD_ANSWER]
    assert len(server.bodies("flaky")) == 2


def test_retries_after_a_timeout(server):
    start = time.monotonic()
    assert client(server, "slow").complete(["p"]) == [GOOD_ANSWER]
    assert len(server.bodies("slow")) == 2
    assert time.monotonic() - start < SLOW_S  # the client gave up on the slow answer instead of waiting


def test_persistent_5xx_gives_up_after_the_retry_budget(server):
    with pytest.raises(JudgeBackendError, match="HTTP 503.*gave up after 3 attempts") as info:
        client(server, "down").complete(["p"])
    assert info.value.status == 503
    assert len(server.bodies("down")) == 3


def test_client_errors_are_not_retried(server):
    with pytest.raises(JudgeBackendError, match="HTTP 404.*no such model"):
        client(server, "missing").complete(["p"])
    assert len(server.bodies("missing")) == 1


def test_falls_back_without_response_format_when_the_server_rejects_it(server):
    backend = client(server, "noschema")
    assert backend.decoding == "json_schema"
    assert backend.complete(["p"]) == [GOOD_ANSWER]
    assert backend.decoding == "free"  # the judge caches these answers as free ones
    assert backend.complete(["q"]) == [GOOD_ANSWER]
    # rejected once, then plain requests only
    assert ["response_format" in b for b in server.bodies("noschema")] == [True, False, False]


def test_concurrent_requests_meet_the_refusal_once(server):
    backend = client(server, "noschema", max_concurrency=4)
    assert backend.complete(["p1", "p2", "p3", "p4"]) == [GOOD_ANSWER] * 4
    flags = ["response_format" in b for b in server.bodies("noschema")]
    assert flags[:2] == [True, False] and flags.count(True) == 1 and len(flags) == 5


def test_an_unrelated_400_keeps_structured_output_on(server):
    backend = client(server, "toolong")
    with pytest.raises(JudgeBackendError, match="HTTP 400.*longer than the context"):
        backend.complete(["p"])
    assert backend.json_schema  # the plain retry failed as well: the 400 was not about response_format
    assert ["response_format" in b for b in server.bodies("toolong")] == [True, False]


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
    prompts = [b["messages"][0]["content"] for b in server.bodies("badjson")]
    assert len(prompts) == 3
    assert "could not be used" not in prompts[0]
    assert all(p.startswith(prompts[0]) and "could not be used" in p for p in prompts[1:])


@pytest.mark.parametrize("free", [False, True], ids=["json_schema", "no_json_schema"])
def test_judge_cli_scores_a_captions_file_through_the_server(server, tmp_path, free):
    manifest, captions, out = tmp_path / "manifest.jsonl", tmp_path / "captions.jsonl", tmp_path / "scores.jsonl"
    manifest.write_text(json.dumps({"sample_id": "s1", "video": "s1.mp4", "audio": "video",
                                    "audio_captions": ["A dog barks"] * 5,
                                    "video_caption": "A dog in a yard", "counterfactual": False}) + "\n")
    captions.write_text(json.dumps({"sample_id": "s1", "prompt": "Describe what you hear.", "caption": "A dog.",
                                    "model": "omni", "counterfactual": False}) + "\n")
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["judge", "--manifest", str(manifest), "--captions", str(captions), "--out", str(out),
                              "--backend", "openai", "--model", "judge-model", "--base-url", server.url("good"),
                              "--no-think", *(["--no-json-schema"] if free else [])])
    assert args.func(args) == 0
    rows = load_scores(out)
    assert {(r["modality"], r["status"], r["score"], r["judge_model"]) for r in rows} == {
        ("audio", "ok", 0.75, "judge-model"), ("video", "ok", 0.75, "judge-model")}
    assert all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in server.bodies("good"))
    # the 1-token check request, then the two judge requests: constrained unless --no-json-schema
    assert ["response_format" in b for b in server.bodies("good")] == [False, not free, not free]
    assert (tmp_path / "scores.jsonl.cache.jsonl").exists()


def test_a_hung_server_is_found_by_a_short_check_before_the_run(server, tmp_path):
    manifest, captions = tmp_path / "manifest.jsonl", tmp_path / "captions.jsonl"
    manifest.write_text(json.dumps({"sample_id": "s1", "video": "s1.mp4", "audio": "video",
                                    "audio_captions": ["A dog barks"], "counterfactual": False}) + "\n")
    captions.write_text(json.dumps({"sample_id": "s1", "prompt": "p", "caption": "A dog."}) + "\n")
    backend = client(server, "hung", timeout=300.0, check_timeout=0.3, max_retries=0)
    start = time.monotonic()
    with pytest.raises(JudgeBackendError, match=r"failed a 1-token check request \(timeout 0.3 s\)"):
        score_captions(manifest, captions, tmp_path / "scores.jsonl", Judge(backend))
    assert time.monotonic() - start < 5
    assert [b["max_tokens"] for b in server.bodies("hung")] == [1]


def test_the_check_request_is_sent_once_and_only_when_there_is_work(server, tmp_path, capsys):
    manifest, captions = tmp_path / "manifest.jsonl", tmp_path / "captions.jsonl"
    manifest.write_text(json.dumps({"sample_id": "s1", "video": "s1.mp4", "audio": "video",
                                    "audio_captions": ["A dog barks"], "video_caption": "A dog",
                                    "counterfactual": False}) + "\n")
    captions.write_text("".join(json.dumps({"sample_id": "s1", "prompt": f"p{i}", "caption": "A dog."}) + "\n"
                                for i in range(3)))
    judge = Judge(client(server, "good"), batch_size=2)
    score_captions(manifest, captions, tmp_path / "scores.jsonl", judge, chunk_size=2)
    assert [b["max_tokens"] for b in server.bodies("good")] == [1] + [2048] * 6
    err = capsys.readouterr().err
    assert "judging: 100%" in err and "6/6" in err  # a progress bar over the requests
    score_captions(manifest, captions, tmp_path / "scores.jsonl", judge)  # nothing left to do: no request
    assert len(server.bodies("good")) == 7


def test_the_timeout_is_shown_in_the_help(capsys):
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):
        parser.parse_args(["judge", "--help"])
    assert "default: 300" in " ".join(capsys.readouterr().out.split())
