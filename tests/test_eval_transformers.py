"""A real judge call through the transformers backend on the embedded SmolLM2-135M-Instruct GGUF (CPU, offline).

The 135M model is far too small to judge well and may answer without usable JSON: the test checks that the
pipeline runs end to end and yields either a score in [0, 1] or a failure record carrying the raw answer.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf", reason="the embedded judge needs the judge extra: pip install 'hooked_av[judge]'")

from hooked_av.eval.backends import JudgeBackend, TransformersBackend, default_judge_gguf  # noqa: E402
from hooked_av.eval.errors import MissingDependencyError  # noqa: E402
from hooked_av.eval.judge import Judge  # noqa: E402
from hooked_av.eval.rubric import AUDIO_FIDELITY  # noqa: E402


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
        self.inner, self.name, self.prompts = inner, inner.name, 0

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
    assert isinstance(result.raw, str) and result.raw.strip()  # the model did generate text
    if result.status == "ok":
        assert 0.0 <= result.score <= 1.0 and result.error is None
    else:
        assert result.status == "failed" and result.score is None and result.error
    again = Judge(counting, cache=tmp_path / "cache.jsonl", max_attempts=1)  # a restart: cache read from disk
    assert again.score(AUDIO_FIDELITY, refs, "A man talks to his barking dog.") == result
    assert counting.prompts == 1  # the second call cost no generation


def test_left_padded_batch_matches_one_by_one(smollm2):
    prompts = ["Say hello.", "What is the capital of France? Answer in one word, then explain why in detail."]
    smollm2.max_new_tokens = 6
    try:
        batched = smollm2.complete(prompts)
        single = [smollm2.complete([p])[0] for p in prompts]
    finally:
        smollm2.max_new_tokens = 24
    assert batched == single and all(batched)
