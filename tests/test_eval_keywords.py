"""The deterministic keyword scorer on captions with known answers."""

from __future__ import annotations

import pytest

from hooked_av.eval.errors import EvalDataError
from hooked_av.eval.keywords import DEFAULT_SYNONYMS, keyword_score, stem

DOG_AND_MAN = ["A dog barks repeatedly while a man talks", "A man speaks as a dog barks nearby",
               "Dog barking and a male voice", "A man talking followed by a dog barking",
               "A barking dog and a person speaking"]


@pytest.mark.parametrize("family", [("bark", "barks", "barking", "barked"), ("engine", "engines"),
                                    ("type", "types", "typing", "typed"), ("rev", "revs", "revving", "revved"),
                                    ("bus", "buses"), ("fly", "flies"), ("clap", "claps", "clapping")])
def test_stemming_merges_a_word_family(family):
    assert len({stem(w) for w in family}) == 1


def test_stemming_leaves_short_and_double_s_words_alone():
    assert [stem(w) for w in ("used", "bus", "glass", "hiss")] == ["used", "bus", "glass", "hiss"]


@pytest.mark.parametrize("caption, score, missing", [
    ("A man talks to his dog, which barks.", 1.0, ()),
    ("Speech, Dog, Bark", 0.75, ("man",)),  # a closed-vocabulary caption (AudioSet-style labels)
    ("A puppy yaps.", 0.5, ("man", "speech")),  # synonyms reach the group head (puppy -> dog, yap -> bark)
    ("An engine idles on a quiet street.", 0.0, ("bark", "dog", "man", "speech")),
])
def test_keyword_recall_on_known_examples(caption, score, missing):
    result = keyword_score(caption, DOG_AND_MAN)
    # "person" (1 of 5 captions) and the stopwords ("while", "nearby", ...) are not keywords
    assert result.keywords == ("bark", "dog", "man", "speech")
    assert result.score == score and result.missing == missing


def test_min_support_and_custom_synonyms():
    refs = ["A hound howls", "A dog howls at night"]
    assert keyword_score("a dog howling", refs).keywords == ("howl",)  # only "howl" is in both captions
    assert keyword_score("a dog", refs, min_support=1).score == 1 / 4  # of hound, howl, dog, night
    merged = keyword_score("a dog", refs, min_support=2, synonyms={**DEFAULT_SYNONYMS, "hound": "dog"})
    assert merged.keywords == ("dog", "howl") and merged.score == 0.5
    assert keyword_score("howl", ["A dog howls"]).keywords == ("dog", "howl")  # one reference: support capped


def test_references_without_keywords_are_an_error():
    with pytest.raises(EvalDataError, match="no keyword"):
        keyword_score("anything", ["the", "", "a sound in the background"])
