"""Deterministic keyword scorer: a judge-free check for closed-vocabulary captions (and for judge sanity).

score = |reference keywords found in the caption| / |reference keywords|, a recall.

- Words: lower-cased (NFKC), split on anything that is not a letter; stopwords dropped (function words and
  generic words like "sound", "someone", "background" that every AudioCaps caption uses).
- Stemming: a light suffix stripper (-ing, -ed, -es after s/x/z/ch/sh, -s, -ies -> y, doubled final consonant,
  final e), applied to both sides, so bark/barks/barking/barked and engine/engines all meet.
- Synonyms: each word of a group maps to its group's head (talk, voice, speak -> speech; honk -> horn; ...),
  matched by stem so one base form covers its inflections. DEFAULT_SYNONYMS is the built-in map; pass your own
  (e.g. {**DEFAULT_SYNONYMS, "hound": "dog"}) to extend it.
- Reference keywords: stems that at least `min_support` reference captions use (capped at the number of
  references), so one annotator's idiosyncratic word does not become a requirement. With the five AudioCaps
  captions the default (2) keeps the events that annotators agree on.

Limitations: no multi-word terms ("gun shot" vs "gunshot"), no negation, English only (a Chinese word from the
logit lens never matches; the LLM judge handles those).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hooked_av.eval.errors import EvalDataError
from hooked_av.eval.judge import FAILED, OK, JudgeRequest, JudgeResult, JudgeStats

WORD = re.compile(r"[^\W\d_]+")
STOPWORDS = frozenset("""
a an the and or but nor of to in on at by for with from into onto over under near as than then while when
before after during until through across along around against up down out off away again also very
is are was were be been being am has have had having do does did can could will would may might shall should
it its this that these those there here he she they them his her their someone something somebody
one two three several some many much more most few other another each all both any
sound sounds noise noises background distance distant nearby loud loudly soft softly quiet quietly faint
followed continuously repeatedly briefly occasionally multiple various
""".split())
SYNONYM_GROUPS: dict[str, tuple[str, ...]] = {  # base forms suffice: lookups are by stem
    "speech": ("speak", "talk", "voice", "conversation", "narrate", "narrator", "say"),
    "man": ("men", "male", "guy"),
    "woman": ("women", "female", "lady"),
    "child": ("children", "kid"),
    "dog": ("puppy", "canine"),
    "bark": ("woof", "yap", "yelp"),
    "cat": ("kitten",),
    "car": ("automobile",),
    "engine": ("motor",),
    "motorcycle": ("motorbike",),
    "horn": ("honk", "beep"),
    "airplane": ("aircraft", "plane", "jet"),
    "train": ("locomotive",),
    "music": ("song", "melody", "tune"),
    "laugh": ("giggle", "chuckle"),
    "applause": ("applaud", "clap"),
    "chirp": ("tweet", "warble"),
    "wind": ("gust", "breeze"),
    "rain": ("drizzle", "downpour"),
    "gunshot": ("gunfire",),
}
DEFAULT_SYNONYMS: dict[str, str] = {word: head for head, words in SYNONYM_GROUPS.items() for word in words}
MIN_STEM = 3  # never strip a word below three letters ("bus" stays, "used" stays)


def stem(word: str) -> str:
    """Light English suffix stripping; the same word family always ends at the same stem."""
    if len(word) > MIN_STEM + 1 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) >= MIN_STEM + 3 and word.endswith("ing"):
        word = word[:-3]
    elif len(word) >= MIN_STEM + 2 and word.endswith("ed"):
        word = word[:-2]
    elif len(word) >= MIN_STEM + 2 and word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        word = word[:-2]
    elif len(word) > MIN_STEM and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > MIN_STEM and word[-1] == word[-2] and word[-1] not in "aeiouls":  # revving -> revv -> rev
        word = word[:-1]
    if len(word) > MIN_STEM and word.endswith("e"):  # typing/type, engines/engine meet at typ, engin
        word = word[:-1]
    return word


class KeywordNormalizer:
    """Text -> set of normalised terms: content words, stemmed, synonyms replaced by their group head."""

    def __init__(self, synonyms: Mapping[str, str], stopwords: frozenset[str] = STOPWORDS):
        # keyed by stem, so "talks", "talked" and "talking" all find the entry written as "talk"
        self.synonyms = {stem(word): stem(head) for word, head in synonyms.items()}
        self.stopwords = stopwords

    def terms(self, text: str) -> set[str]:
        words = WORD.findall(unicodedata.normalize("NFKC", text).lower())
        return {self.synonyms.get(stem(w), stem(w)) for w in words if w not in self.stopwords}


@dataclass(frozen=True)
class KeywordScore:
    score: float  # len(matched) / len(keywords)
    keywords: tuple[str, ...]  # reference keyword stems, sorted
    matched: tuple[str, ...]
    missing: tuple[str, ...]


def reference_keywords(references: Sequence[str], normalizer: KeywordNormalizer, min_support: int) -> set[str]:
    """Stems used by at least min(min_support, len(references)) of the reference captions."""
    support = Counter(term for ref in references for term in normalizer.terms(ref))
    needed = max(1, min(min_support, len(references)))
    return {term for term, count in support.items() if count >= needed}


def keyword_score(caption: str, references: Sequence[str], *, synonyms: Mapping[str, str] | None = None,
                  min_support: int = 2) -> KeywordScore:
    """Fraction of the reference keywords that the caption contains (see the module docstring)."""
    normalizer = KeywordNormalizer(DEFAULT_SYNONYMS if synonyms is None else synonyms)
    keywords = reference_keywords([r for r in references if r and r.strip()], normalizer, min_support)
    if not keywords:
        raise EvalDataError(f"the references have no keyword to score against: {list(references)!r}")
    found = normalizer.terms(caption)
    matched = sorted(keywords & found)
    return KeywordScore(score=len(matched) / len(keywords), keywords=tuple(sorted(keywords)),
                        matched=tuple(matched), missing=tuple(sorted(keywords - found)))


class KeywordJudge:
    """The keyword scorer in the place of an LLM judge (`score_captions(..., judge=KeywordJudge())`,
    `hooked-av judge --backend keywords`): each request's score is `keyword_score(candidate, references)`, its
    reasoning the matched and missing keywords. References with no keyword give a failure record, never a 0.
    Deterministic and offline; for closed-vocabulary captions (a synthetic world), not the paper's LLM judge."""

    model_name = "keywords"

    def __init__(self, synonyms: Mapping[str, str] | None = None, min_support: int = 2):
        self.synonyms, self.min_support = synonyms, min_support
        self.stats = JudgeStats()

    def check(self) -> None:
        """Nothing to reach: the scorer is local."""

    def score_many(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        results = []
        for request in requests:
            try:
                found = keyword_score(request.candidate, request.references, synonyms=self.synonyms,
                                      min_support=self.min_support)
            except EvalDataError as err:
                results.append(JudgeResult(FAILED, None, None, self.model_name, 1, error=str(err)))
                continue
            results.append(JudgeResult(OK, found.score, f"matched {list(found.matched)}, missing "
                                                         f"{list(found.missing)}", self.model_name, 1))
        return results
