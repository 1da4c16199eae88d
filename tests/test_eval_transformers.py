"""A real judge call through the transformers backend on the embedded SmolLM2-135M-Instruct GGUF (CPU, offline).

The 135M model is far too small to judge well: the end-to-end test checks that the pipeline runs and yields either
a score in [0, 1] or a failure record carrying the raw answer (24 tokens do not reach the end of the schema's
reasoning string); the constrained-decoding test gives the grammar a schema short enough to close in a few steps.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gguf", reason="the embedded judge needs the judge extra: pip install 'hooked_av[judge]'")

from hooked_av.eval.backends import (  # noqa: E402
    JudgeBackend,
    SchemaConstraint,
    TransformersBackend,
    default_judge_gguf,
)
from hooked_av.eval.errors import MissingDependencyError  # noqa: E402
from hooked_av.eval.judge import Judge  # noqa: E402
from hooked_av.eval.parse import parse_judgement  # noqa: E402
from hooked_av.eval.rubric import AUDIO_FIDELITY, JUDGEMENT_SCHEMA  # noqa: E402


@pytest.fixture(scope="module")
def smollm2():
    try:
        default_judge_gguf()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    # One intra-op thread: on a small shared CPU, OpenMP threads competing with other processes made generation
    # 10-30x slower than a single thread in our measurements.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # belt and braces: the backend only reads local files anyway
        yield TransformersBackend(max_new_tokens=24, batch_size=4)
    torch.set_num_threads(threads)


class CountingBackend:
    """Wraps a backend and counts the prompts it is asked to generate for."""

    def __init__(self, inner: JudgeBackend):
        self.inner, self.name, self.decoding, self.prompts = inner, inner.name, inner.decoding, 0

    def complete(self, prompts: list[str]) -> list[str]:
        self.prompts += len(prompts)
        return self.inner.complete(prompts)


def test_real_judge_call_end_to_end_then_from_the_cache(smollm2, tmp_path):
    assert smollm2.name.endswith(".gguf") and smollm2.tokenizer.padding_side == "left"
    counting = CountingBackend(smollm2)
    judge = Judge(counting, cache=tmp_path / "cache.jsonl", max_attempts=1)
    refs = ["A dog barks while a man talks", "A man speaks and a dog barks"]
    result = judge.score(AUDIO_FIDELITY, refs, "A man talks to his barking dog.")
    assert counting.prompts == 1
    assert result.judge_model == "SmolLM2-135M-Instruct.Q4_1.gguf" and result.attempts == 1
    # constrained by default: the answer opens the schema's object, in its property order, with fixed separators
    assert result.raw.startswith('{"reasoning": "')
    if result.status == "ok":
        assert 0.0 <= result.score <= 1.0 and result.error is None
    else:
        assert result.status == "failed" and result.score is None and result.error
    again = Judge(counting, cache=tmp_path / "cache.jsonl", max_attempts=1)  # a restart: cache read from disk
    assert again.score(AUDIO_FIDELITY, refs, "A man talks to his barking dog.") == result
    assert counting.prompts == 1  # the second call cost no generation
    cached = [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert [row["decoding"] for row in cached] == ["json_schema"]


def test_left_padded_batch_matches_one_by_one(smollm2):
    prompts = ["Say hello.", "What is the capital of France? Answer in one word, then explain why in detail."]
    smollm2.max_new_tokens = 6
    try:
        batched = smollm2.complete(prompts)
        single = [smollm2.complete([p])[0] for p in prompts]
    finally:
        smollm2.max_new_tokens = 24
    assert batched == single and all(batched)


def test_constrained_answer_parses_and_follows_the_schema(smollm2):
    # the judgement schema with a reasoning short enough to be closed within a few generation steps
    short = {**JUDGEMENT_SCHEMA, "properties": {**JUDGEMENT_SCHEMA["properties"],
                                                "reasoning": {"type": "string", "maxLength": 12}}}
    prompt = AUDIO_FIDELITY.prompt(["A dog barks while a man talks", "A man speaks and a dog barks"],
                                   "A cat meows.")
    default_constraint, max_new_tokens = smollm2.constraint, smollm2.max_new_tokens
    smollm2.constraint = SchemaConstraint(smollm2.tokenizer, smollm2.model.config.vocab_size, short)
    smollm2.max_new_tokens = 32
    try:
        [answer] = smollm2.complete([prompt])
    finally:
        smollm2.constraint, smollm2.max_new_tokens = default_constraint, max_new_tokens
    obj = json.loads(answer)  # the whole answer is one JSON object: no prose around it, nothing cut off
    assert set(obj) == {"reasoning", "score"} and isinstance(obj["reasoning"], str)
    assert len(obj["reasoning"]) <= 12 and isinstance(obj["score"], (int, float)) and 0 <= obj["score"] <= 1
    assert parse_judgement(answer).score == obj["score"]

