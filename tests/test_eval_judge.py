"""Judge orchestration with a scripted backend: rubric prompts, re-asks, failure records, cache, resumable scoring."""

from __future__ import annotations

import hashlib
import json
import re
import threading

import pytest

from hooked_av.eval.cache import JudgeCache
from hooked_av.eval.errors import EvalDataError, JudgeBackendError
from hooked_av.eval.judge import Judge, JudgeRequest
from hooked_av import InputError
from hooked_av.data.jsonl import JSONLError, append_rows, iter_rows
from hooked_av.data.manifest import ManifestError
from hooked_av.eval.parse import parse_judgement
from hooked_av.eval.rubric import AUDIO_FIDELITY, LATENT_AUDIO, RUBRICS, VIDEO_FIDELITY
from hooked_av.eval.scores import load_scores, score_captions

CANDIDATE = re.compile(r"(?:Candidate caption|Decoded words): (.*)\nAnswer:$")


def candidate_of(prompt: str) -> str:
    """The case being scored: the candidate line right before the final 'Answer:' (reminders stripped)."""
    return CANDIDATE.search(prompt.split("\n\n(Your previous answer")[0]).group(1)


def length_score(prompt: str) -> str:
    """A deterministic well-formed answer: score = (len(candidate) % 10) / 10."""
    return json.dumps({"reasoning": "scripted", "score": len(candidate_of(prompt)) % 10 / 10})


class ScriptedBackend:
    name = "scripted-judge"

    def __init__(self, answer=length_score, fail_after_calls: int | None = None):
        self.answer = answer
        self.fail_after_calls = fail_after_calls
        self.calls: list[list[str]] = []

    def complete(self, prompts: list[str]) -> list[str]:
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise JudgeBackendError("simulated crash")
        self.calls.append(list(prompts))
        return [self.answer(p) for p in prompts]

    @property
    def prompts_sent(self) -> int:
        return sum(len(c) for c in self.calls)


# ------------------------------------------------------------------------------------------------------- rubric

def test_rubric_prompt_contains_the_case_last():
    prompt = AUDIO_FIDELITY.prompt(["A cat meows", "  ", "Meowing cat"], "A cat.")
    assert prompt.endswith("### Now evaluate\nReference audio captions:\n- A cat meows\n- Meowing cat\n"
                           "Candidate caption: A cat.\nAnswer:")
    for word in ("objects", "actions", "temporal order", "sound events"):
        assert word in prompt
    assert prompt.count("### Example") == len(AUDIO_FIDELITY.examples) >= 3
    assert VIDEO_FIDELITY.prompt(["v"], "   ").endswith("Candidate caption: (empty)\nAnswer:")
    with pytest.raises(EvalDataError, match="at least one non-empty reference"):
        AUDIO_FIDELITY.prompt(["", " "], "x")


@pytest.mark.parametrize("name", sorted(RUBRICS))
def test_few_shot_answers_are_valid_judgements_spanning_the_scale(name):
    scores = [parse_judgement(example.answer()).score for example in RUBRICS[name].examples]
    assert scores == [example.score for example in RUBRICS[name].examples]
    assert min(scores) == 0.0 and max(scores) >= 0.9  # calibration covers both ends of the scale


# -------------------------------------------------------------------------------------------------------- judge

def test_reasks_only_the_malformed_requests_in_batches():
    def answer(prompt: str) -> str:  # "bad" candidates answer prose until reminded once
        if candidate_of(prompt).startswith("bad") and "could not be used" not in prompt:
            return "Sure! The caption is fine."
        return length_score(prompt)

    backend = ScriptedBackend(answer)
    judge = Judge(backend, max_attempts=3, batch_size=2)
    candidates = ["good one", "bad one", "good two", "bad two", "good three"]
    results = judge.score_many([JudgeRequest(AUDIO_FIDELITY, ("ref",), c) for c in candidates])
    assert [r.score for r in results] == [len(c) % 10 / 10 for c in candidates]
    assert [r.attempts for r in results] == [1, 2, 1, 2, 1]
    assert [len(c) for c in backend.calls] == [2, 2, 1, 2]  # round 1 in batches of 2, round 2: the two bad ones
    assert all(r.status == "ok" and r.judge_model == "scripted-judge" for r in results)


def test_persistently_malformed_output_is_a_failure_record_never_a_zero():
    backend = ScriptedBackend(lambda p: '{"reasoning": "x", "score": 7}')
    result = Judge(backend, max_attempts=2).score(VIDEO_FIDELITY, ["A man walks"], "A man walks.")
    assert (result.status, result.score, result.reasoning, result.attempts) == ("failed", None, None, 2)
    assert "outside [0, 1]" in result.error and result.raw == '{"reasoning": "x", "score": 7}'
    assert backend.prompts_sent == 2


def test_latent_audio_understanding_scores_the_logit_lens_words():
    backend = ScriptedBackend()
    result = Judge(backend).latent_audio_understanding(["键盘", "typing"], ["Someone types on a keyboard"])
    assert result.score == len("键盘, typing") % 10 / 10
    prompt = backend.calls[0][0]
    assert prompt.startswith(LATENT_AUDIO.task)
    assert prompt.endswith("- Someone types on a keyboard\nDecoded words: 键盘, typing\nAnswer:")


def test_cache_survives_a_restart_and_makes_repeats_free(tmp_path):
    path = tmp_path / "cache.jsonl"
    requests = [JudgeRequest(AUDIO_FIDELITY, ("ref",), c) for c in ("a", "b", "a")]
    first = ScriptedBackend()
    results = Judge(first, cache=path).score_many(requests)
    assert first.prompts_sent == 2  # the repeated request was generated once
    second = ScriptedBackend()
    judge = Judge(second, cache=JudgeCache(path))  # a new process: the cache is read back from disk
    assert judge.score_many(requests) == results
    assert second.prompts_sent == 0 and judge.stats.cache_hits == 2


def test_cache_is_keyed_by_judge_model(tmp_path):
    path = tmp_path / "cache.jsonl"
    Judge(ScriptedBackend(), cache=path).score(AUDIO_FIDELITY, ["ref"], "x")
    other = ScriptedBackend()
    other.name = "another-judge"
    Judge(other, cache=path).score(AUDIO_FIDELITY, ["ref"], "x")
    assert other.prompts_sent == 1


def test_cache_keeps_free_and_schema_constrained_answers_apart(tmp_path):
    """A free answer (often malformed) must not be replayed for a constrained run of the same judge, nor back;
    free answers keep the key caches had before the decoding mode joined it."""
    path = tmp_path / "cache.jsonl"
    free = ScriptedBackend()
    Judge(free, cache=path).score(AUDIO_FIDELITY, ["ref"], "x")
    constrained = ScriptedBackend()
    constrained.decoding = "json_schema"
    Judge(constrained, cache=path).score(AUDIO_FIDELITY, ["ref"], "x")
    assert constrained.prompts_sent == 1
    again = ScriptedBackend()
    again.decoding = "json_schema"
    Judge(again, cache=path).score(AUDIO_FIDELITY, ["ref"], "x")
    assert again.prompts_sent == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["decoding"] for row in rows] == ["free", "json_schema"]
    prompt = free.calls[0][0]
    assert rows[0]["key"] == hashlib.sha256(json.dumps([free.name, prompt], ensure_ascii=False).encode()).hexdigest()


def test_cache_tolerates_a_torn_line_and_concurrent_appends(tmp_path):
    path = tmp_path / "cache.jsonl"
    JudgeCache(path).put_many("m", [("p0", "a0")])
    with path.open("a") as f:
        f.write('{"key": "abc", "model": "m", "compl')  # a writer killed mid-line
    writers = [JudgeCache(path) for _ in range(4)]
    threads = [threading.Thread(target=lambda c=c, w=w: [c.put_many("m", [(f"p{w}-{i}", f"a{w}-{i}")])
                                                       for i in range(25)])
               for w, c in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reloaded = JudgeCache(path)
    assert len(reloaded) == 1 + 4 * 25
    assert reloaded.get("m", "p3-24") == "a3-24" and reloaded.get("m", "p0") == "a0"


# ----------------------------------------------------------------------------------------------- score_captions

def write_inputs(tmp_path, n: int = 6):
    manifest, captions = tmp_path / "manifest.jsonl", tmp_path / "captions.jsonl"
    append_rows(manifest, [{"sample_id": f"s{i}", "video": f"v{i}.mp4", "audio": f"a{i}.wav",
                             "audio_captions": [f"sound {i} {k}" for k in range(5)],
                             "video_caption": None if i == 0 else f"scene {i}", "counterfactual": i % 2 == 1,
                             **({"video_source": "x", "audio_source": "y", "similarity": 0.1} if i % 2 else {})}
                            for i in range(n)])
    append_rows(captions, [{"sample_id": f"s{i}", "prompt": "Describe what you see and hear.",
                             "caption": "c" * (i + 1), "model": "omni-3b", "max_new_tokens": 64,
                             "counterfactual": i % 2 == 1} for i in range(n)])
    return manifest, captions


def test_score_captions_writes_one_row_per_sample_prompt_modality(tmp_path):
    manifest, captions = write_inputs(tmp_path)
    out = tmp_path / "scores.jsonl"
    summary = score_captions(manifest, captions, out, Judge(ScriptedBackend()))
    assert (summary.scored, summary.failed, summary.missing_reference) == (11, 0, 1)  # s0 has no video caption
    rows = list(iter_rows(out))
    assert len(rows) == 11
    row = next(r for r in rows if r["sample_id"] == "s3" and r["modality"] == "audio")
    assert row == {"sample_id": "s3", "prompt": "Describe what you see and hear.", "modality": "audio",
                   "caption_model": "omni-3b", "caption_model_hash": None, "counterfactual": True, "status": "ok",
                   "score": 0.4, "reasoning": "scripted", "attempts": 1, "judge_model": "scripted-judge", "error": None,
                   "raw": None}


def test_score_captions_resumes_after_a_crash_and_a_torn_line(tmp_path):
    manifest, captions = write_inputs(tmp_path)
    out, cache = tmp_path / "scores.jsonl", tmp_path / "cache.jsonl"
    crashing = ScriptedBackend(fail_after_calls=3)  # chunk 2 dies after its first batch
    with pytest.raises(JudgeBackendError, match="simulated crash"):
        score_captions(manifest, captions, out, Judge(crashing, cache=cache, batch_size=2), chunk_size=4)
    assert len(list(iter_rows(out))) == 4  # the first chunk was written before the crash
    with out.open("a") as f:
        f.write('{"sample_id": "s5", "prompt": "Describe what you see and hear.", "modality": "vi')
    backend = ScriptedBackend()
    judge = Judge(backend, cache=cache, batch_size=2)
    summary = score_captions(manifest, captions, out, judge, chunk_size=4)
    assert summary.skipped_existing == 4 and summary.scored == 7
    rows = list(iter_rows(out))
    keys = [(r["sample_id"], r["modality"]) for r in rows]
    assert len(keys) == len(set(keys)) == 11  # nothing lost, nothing duplicated, the torn line skipped
    assert judge.stats.cache_hits == 2  # the crashed chunk's first batch was answered (and cached) before the crash
    assert backend.prompts_sent == 5
    assert score_captions(manifest, captions, out, judge).skipped_existing == 11  # a third run does nothing


def test_failure_records_are_written_and_can_be_retried(tmp_path):
    manifest, captions = write_inputs(tmp_path, n=2)
    out = tmp_path / "scores.jsonl"
    garbage = ScriptedBackend(lambda p: "no idea" if candidate_of(p) == "cc" else length_score(p))
    summary = score_captions(manifest, captions, out, Judge(garbage, max_attempts=2), modalities=["audio"])
    assert (summary.scored, summary.failed) == (1, 1)
    failed = next(r for r in list(iter_rows(out)) if r["status"] == "failed")
    assert (failed["sample_id"], failed["score"], failed["raw"], failed["attempts"]) == ("s1", None, "no idea", 2)
    assert score_captions(manifest, captions, out, Judge(ScriptedBackend()), modalities=["audio"]).failed == 0
    summary = score_captions(manifest, captions, out, Judge(ScriptedBackend()), modalities=["audio"],
                             retry_failed=True)
    assert (summary.scored, summary.skipped_existing) == (1, 1)
    latest = {r["sample_id"]: r for r in load_scores(out)}
    assert latest["s1"]["status"] == "ok" and latest["s1"]["score"] == 0.2
    assert len(list(iter_rows(out))) == 3  # the failure record stays in the file, superseded


def test_score_captions_rejects_inconsistent_inputs(tmp_path):
    manifest, captions = write_inputs(tmp_path, n=2)
    append_rows(captions, [{"sample_id": "zzz", "prompt": "p", "caption": "c", "model": "m"}])
    with pytest.raises(EvalDataError, match="'zzz' is not in"):
        score_captions(manifest, captions, tmp_path / "o.jsonl", Judge(ScriptedBackend()))
    with pytest.raises(EvalDataError, match="unknown modalities"):
        score_captions(manifest, captions, tmp_path / "o.jsonl", Judge(ScriptedBackend()), modalities=["smell"])
    bad = tmp_path / "bad_captions.jsonl"
    append_rows(bad, [{"sample_id": "s0", "caption": "no prompt"}])
    with pytest.raises(EvalDataError, match=r"lacks \['prompt'\]"):
        score_captions(manifest, bad, tmp_path / "o.jsonl", Judge(ScriptedBackend()))


def test_a_malformed_captions_line_in_the_middle_is_an_error_not_skipped(tmp_path):
    manifest, captions = write_inputs(tmp_path, n=3)
    lines = captions.read_text().splitlines()
    captions.write_text("\n".join([lines[0], lines[1][:-5], lines[2]]) + "\n")
    with pytest.raises(JSONLError, match=r"captions.jsonl:2: "):
        score_captions(manifest, captions, tmp_path / "o.jsonl", Judge(ScriptedBackend()))


def test_the_manifest_is_validated_as_caption_and_build_do(tmp_path):
    manifest, captions = write_inputs(tmp_path, n=2)
    with manifest.open("a") as f:
        f.write(manifest.read_text().splitlines()[0] + "\n")  # s0 again
    with pytest.raises(ManifestError, match=r"manifest.jsonl:3: field 'sample_id': 's0' already used on line 1"):
        score_captions(manifest, captions, tmp_path / "o.jsonl", Judge(ScriptedBackend()))
    manifest.write_text('{"sample_id": "s0", "audio_captions": ["a dog"]}\n')
    with pytest.raises(ManifestError, match=r"manifest.jsonl:1: field 'video': missing"):
        score_captions(manifest, captions, tmp_path / "o.jsonl", Judge(ScriptedBackend()))
    with pytest.raises(InputError, match=r"manifest not found"):
        score_captions(tmp_path / "nope.jsonl", captions, tmp_path / "o.jsonl", Judge(ScriptedBackend()))


def test_captions_of_another_checkpoint_are_scored_not_taken_for_done(tmp_path):
    manifest, captions = write_inputs(tmp_path, n=3)
    out = tmp_path / "scores.jsonl"
    first = [{**row, "model_hash": "a" * 64} for row in iter_rows(captions)]
    second = tmp_path / "captions_b.jsonl"
    append_rows(second, [{**row, "model_hash": "b" * 64} for row in first])  # same name, other weights
    captions.write_text("")
    append_rows(captions, first)
    assert score_captions(manifest, captions, out, Judge(ScriptedBackend())).scored == 5
    summary = score_captions(manifest, second, out, Judge(ScriptedBackend()))
    assert (summary.scored, summary.skipped_existing) == (5, 0)
    rows = load_scores(out)
    assert len(rows) == 10
    assert {r["caption_model_hash"] for r in rows} == {"a" * 64, "b" * 64}


def test_the_judges_generation_shows_progress_over_its_batches(capsys):
    judge = Judge(ScriptedBackend(), batch_size=2)
    judge.score_many([JudgeRequest(AUDIO_FIDELITY, ("a dog barks",), "c" * i) for i in range(1, 7)])
    err = capsys.readouterr().err
    assert "judge scripted-judge" in err and "0/6" in err  # a bar over all 6 prompts (3 batches)
