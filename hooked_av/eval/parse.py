"""Parse a judge answer into a score in [0, 1] and its reasoning, or fail loudly with the raw text.

Judges wrap their JSON in many ways: ```json fences, a <think>...</think> block first (Qwen3), prose before or
after, Python-style single quotes, trailing commas, a score written as "0.8", "80%" or "8/10", an answer cut
off by the token limit. The parser takes the last JSON object that has a "score" key (an echoed few-shot example
comes before the answer) and accepts those forms; anything else, and any score outside [0, 1], raises
MalformedJudgeOutput carrying the raw text. A score is never clipped or defaulted: a wrong scale (80 for 80%)
is a judge error to re-ask about, not a number to guess.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from hooked_av.eval.errors import MalformedJudgeOutput

THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
TRAILING_COMMA = re.compile(r",\s*([}\]])")
PERCENT = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))\s*%")
FRACTION = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))\s*/\s*(\d+\.?\d*)")


@dataclass(frozen=True)
class Judgement:
    score: float  # in [0, 1]
    reasoning: str


def strip_thinking(text: str) -> str:
    """The answer part of a reasoning model's output: <think> blocks removed, text after a lone </think>."""
    answer = THINK_BLOCK.sub("", text)
    if "</think>" in answer.lower():  # the chat template opened <think> in the prompt, only the close is here
        answer = answer[answer.lower().rindex("</think>") + len("</think>"):]
    if "<think>" in answer.lower():
        raise MalformedJudgeOutput("the judge output ends inside a <think> block (no answer after it): "
                                   "raise the token limit or disable thinking", text)
    return answer


def object_candidates(text: str) -> list[str]:
    """Every top-level {...} span, in order; braces inside quoted strings do not count.

    An object still open at the end of the text (the answer hit the token limit) is closed, so a score written
    before a cut-off reasoning survives.
    """
    spans: list[str] = []
    depth, start, quote, escaped = 0, 0, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif depth and ch in "\"'":
            quote = ch
        elif ch == "{":
            start = i if depth == 0 else start
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
    if depth:
        spans.append(text[start:] + quote + "}" * depth)
    return spans


def load_lenient(span: str) -> Any:
    """json.loads, then with trailing commas removed, then as a Python literal (single-quoted strings)."""
    repaired = TRAILING_COMMA.sub(r"\1", span)
    for attempt in (span, repaired):
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            pass
    try:
        return ast.literal_eval(repaired)  # evaluates literals only, never code
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise ValueError(f"not JSON: {span[:120]!r}") from e


def coerce_score(value: Any, raw: str) -> float:
    """A number in [0, 1] from a number, "0.8", "80%" or "8/10"; anything else raises."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MalformedJudgeOutput(f"score must be a number in [0, 1], got {value!r}", raw)
    if isinstance(value, str):
        text = value.strip()
        percent, fraction = PERCENT.fullmatch(text), FRACTION.fullmatch(text)
        try:
            if percent:
                value = float(percent.group(1)) / 100
            elif fraction and float(fraction.group(2)) > 0:
                value = float(fraction.group(1)) / float(fraction.group(2))
            else:
                value = float(text)
        except ValueError:
            raise MalformedJudgeOutput(f"score must be a number in [0, 1], got {value!r}", raw) from None
    score = float(value)
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise MalformedJudgeOutput(f"score {score!r} is outside [0, 1]", raw)
    return score


def parse_judgement(text: str) -> Judgement:
    """The judge's {"reasoning", "score"} answer; raises MalformedJudgeOutput (with .raw) when there is none."""
    answer = strip_thinking(text)
    for span in reversed(object_candidates(answer)):
        try:
            obj = load_lenient(span)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        fields = {str(k).strip().lower(): v for k, v in obj.items()}
        if "score" not in fields:
            continue
        reasoning = fields.get("reasoning", "")
        if not isinstance(reasoning, str):
            reasoning = json.dumps(reasoning, ensure_ascii=False)
        return Judgement(score=coerce_score(fields["score"], text), reasoning=reasoning.strip())
    raise MalformedJudgeOutput('no JSON object with a "score" key in the judge output', text)
