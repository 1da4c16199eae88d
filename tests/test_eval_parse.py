"""The judge-output parser against a battery of well-formed, messy and malformed answers."""

from __future__ import annotations

import pytest

from hooked_av.eval.errors import MalformedJudgeOutput
from hooked_av.eval.parse import parse_judgement

GOOD = {
    "plain": ('{"reasoning": "dog and speech present", "score": 0.9}', 0.9, "dog and speech present"),
    "fenced": ('```json\n{"reasoning": "ok", "score": 0.25}\n```', 0.25, "ok"),
    "qwen3 thinking with a decoy object": (
        '<think>Draft: {"score": 0.1}. The dog bark is there but {speech} is missing.</think>\n'
        '{"reasoning": "bark right, speech missing", "score": 0.6}', 0.6, "bark right, speech missing"),
    "lone closing think tag": ('The events match.</think>{"reasoning": "r", "score": 1}', 1.0, "r"),
    "single quotes": ("{'reasoning': 'the engine revs', 'score': 0.7}", 0.7, "the engine revs"),
    "trailing comma": ('{"reasoning": "x", "score": 0.4,}', 0.4, "x"),
    "score as string": ('{"reasoning": "x", "score": "0.8"}', 0.8, "x"),
    "score as percent": ('{"reasoning": "x", "score": "80%"}', 0.8, "x"),
    "score as fraction": ('{"reasoning": "x", "score": "3/4"}', 0.75, "x"),
    "integer zero, capitalised keys": ('{"Reasoning": "nothing matches", "Score": 0}', 0.0, "nothing matches"),
    "prose around, echoed example first": (
        'Example answer: {"reasoning": "example", "score": 0.95}\nMy answer: {"reasoning": "mine", "score": 0.3} '
        'Hope this helps!', 0.3, "mine"),
    "braces and apostrophes inside the reasoning": (
        '{"reasoning": "the dog\'s bark {loud} is there", "score": 0.5}', 0.5, "the dog's bark {loud} is there"),
    "cut off after the score": ('{"score": 0.65, "reasoning": "the siren is right but the ho', 0.65,
                                "the siren is right but the ho"),
    "no reasoning key": ('{"score": 0.2}', 0.2, ""),
}

BAD = {
    "empty": ("", "no JSON object"),
    "prose only": ("The caption is quite good, I would say 8 out of 10.", "no JSON object"),
    "no score key": ('{"reasoning": "fine", "rating": 0.8}', "no JSON object"),
    "out of range": ('{"reasoning": "x", "score": 1.5}', "outside [0, 1]"),
    "percent scale without %": ('{"reasoning": "x", "score": 80}', "outside [0, 1]"),
    "negative": ('{"reasoning": "x", "score": -0.1}', "outside [0, 1]"),
    "over 100%": ('{"reasoning": "x", "score": "150%"}', "outside [0, 1]"),
    "word score": ('{"reasoning": "x", "score": "high"}', "must be a number"),
    "boolean score": ('{"reasoning": "x", "score": true}', "must be a number"),
    "null score": ('{"reasoning": "x", "score": null}', "must be a number"),
    "nan": ('{"reasoning": "x", "score": NaN}', "outside [0, 1]"),
    "array, not object": ("[0.8]", "no JSON object"),
    "unterminated thinking": ('<think>The dog barks, so {"score": 0.9} maybe', "inside a <think>"),
    "broken JSON": ('{"reasoning": "x" "score": 0.5 oops', "no JSON object"),
}


@pytest.mark.parametrize("name", GOOD)
def test_parses_well_formed_and_messy_answers(name):
    text, score, reasoning = GOOD[name]
    judgement = parse_judgement(text)
    assert judgement.score == pytest.approx(score)
    assert judgement.reasoning == reasoning


@pytest.mark.parametrize("name", BAD)
def test_rejects_malformed_answers_with_the_raw_text(name):
    text, message = BAD[name]
    with pytest.raises(MalformedJudgeOutput, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        parse_judgement(text)
    assert info.value.raw == text  # the failure record must show exactly what the judge said
