"""Rubric prompts of the LLM judge (paper Sec. 4, Fig. 3; Sec. 6 for the latent audio score).

Each rubric asks the judge to reason about objects, actions, temporal order and sound events before giving one
score in [0, 1], and calibrates the scale with few-shot examples (written for this library). Audio and video
fidelity are separate rubrics: a caption can describe the picture perfectly and the sound not at all, which is
the failure the counterfactual samples expose.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from hooked_av.eval.errors import EvalDataError

# What every backend is asked to produce and constrains decoding to (vLLM structured outputs, an OpenAI-compatible
# server's json_schema response_format, xgrammar in the transformers backend). The reasoning is capped at three
# times the longest few-shot answer: a small model under the constraint otherwise repeats itself until it runs out
# of tokens inside the string, and the answer never closes.
MAX_REASONING_CHARS = 400
JUDGEMENT_SCHEMA: dict = {
    "type": "object",
    "properties": {"reasoning": {"type": "string", "maxLength": MAX_REASONING_CHARS},
                   "score": {"type": "number", "minimum": 0, "maximum": 1}},
    "required": ["reasoning", "score"],
    "additionalProperties": False,
}
ANSWER_FORMAT = '{"reasoning": "<one or two sentences>", "score": <number between 0 and 1>}'
EMPTY_CANDIDATE = "(empty)"


@dataclass(frozen=True)
class FewShotExample:
    references: tuple[str, ...]
    candidate: str
    reasoning: str
    score: float

    def answer(self) -> str:
        return json.dumps({"reasoning": self.reasoning, "score": self.score}, ensure_ascii=False)


@dataclass(frozen=True)
class Rubric:
    name: str  # the modality column of score files: "audio", "video", "latent_audio"
    task: str
    criteria: tuple[str, ...]
    scale: tuple[str, ...]
    reference_label: str
    candidate_label: str
    examples: tuple[FewShotExample, ...]

    def prompt(self, references: Sequence[str], candidate: str) -> str:
        """The full judge prompt: task, criteria, scale, answer format, examples, then the case to score."""
        references = [r.strip() for r in references if r and r.strip()]
        if not references:
            raise EvalDataError(f"the {self.name} rubric needs at least one non-empty reference caption")
        parts = [self.task, "Before scoring, reason about:", *[f"- {c}" for c in self.criteria],
                 "Scale:", *[f"- {s}" for s in self.scale],
                 f"Answer with only one JSON object and nothing else: {ANSWER_FORMAT}"]
        for i, example in enumerate(self.examples, 1):
            parts += [f"\n### Example {i}", self._case(example.references, example.candidate),
                      f"Answer: {example.answer()}"]
        parts += ["\n### Now evaluate", self._case(references, candidate), "Answer:"]
        return "\n".join(parts)

    def _case(self, references: Sequence[str], candidate: str) -> str:
        lines = [f"{self.reference_label}:", *[f"- {r}" for r in references]]
        return "\n".join(lines + [f"{self.candidate_label}: {candidate.strip() or EMPTY_CANDIDATE}"])


def with_format_reminder(prompt: str, error: str) -> str:
    """The prompt re-asked after an unusable answer: the same case plus why the last answer failed."""
    return (f"{prompt}\n\n(Your previous answer to this request could not be used: {error[:200]}. "
            f"Reply with only one JSON object of the form {ANSWER_FORMAT}, with no other text.)")


AUDIO_FIDELITY = Rubric(
    name="audio",
    task=("You are an expert judge of audio-visual video captions. Rate how faithfully the CANDIDATE caption "
          "describes what can be HEARD in the clip, using the reference audio captions written by human "
          "annotators who only listened to the clip. Visual details in the candidate are neither rewarded nor "
          "penalised; sounds the candidate claims but the references do not contain are penalised."),
    criteria=("sound events: which reference sound events does the candidate mention, miss, or invent?",
              "sound sources and objects: are the things making the sounds right (a dog, a motorcycle, rain)?",
              "actions: are the actions producing the sounds right (barking, revving, typing)?",
              "temporal order: do the order and overlap of sounds ('then', 'while', 'followed by') agree?"),
    scale=("1.0: every main sound event and source is described, nothing contradicts the references",
           "0.7-0.9: the main sound events are right, a minor event or detail is missing or wrong",
           "0.4-0.6: some sound events are right, but an important one is missing, wrong or out of order",
           "0.1-0.3: at most a minor sound is right; the main events are missed or contradicted",
           "0.0: no reference sound is described, or only invented sounds"),
    reference_label="Reference audio captions",
    candidate_label="Candidate caption",
    examples=(
        FewShotExample(
            references=("A dog barks repeatedly while a man talks", "A man speaks as a dog barks nearby",
                        "Dog barking and a male voice", "A man talking followed by a dog barking",
                        "A barking dog and a person speaking"),
            candidate="A man in a backyard talks to his dog, which barks several times.",
            reasoning="Both sound events (male speech, dog barking) and their sources are present and overlap "
                      "as in the references.",
            score=0.95),
        FewShotExample(
            references=("A motorcycle engine revs and then speeds away", "An engine idles then accelerates loudly",
                        "A motorbike revving its engine before driving off", "Engine revving followed by a "
                        "vehicle passing", "A loud motor accelerates"),
            candidate="A motorcycle is parked on a street while its engine idles quietly.",
            reasoning="The source (motorcycle engine) and idling are right, but the revving and the departure, "
                      "the main events and their order, are missing.",
            score=0.5),
        FewShotExample(
            references=("Birds chirp while a stream of water trickles", "Water flowing and birds singing",
                        "A creek babbles as birds tweet", "Birds chirping over running water",
                        "Trickling water with bird calls"),
            candidate="Birds are singing in a park and a child laughs loudly.",
            reasoning="Bird song is right, but the flowing water is missed and the child laughing is invented.",
            score=0.35),
        FewShotExample(
            references=("Rain falls steadily on a roof as thunder rumbles", "Heavy rain and distant thunder",
                        "Thunder roars while rain pours", "Rain pattering with thunder claps",
                        "A thunderstorm with steady rain"),
            candidate="A woman plays the piano in a living room and soft music fills the room.",
            reasoning="Only piano music is described; the rain and thunder are absent and the music is not in "
                      "the references.",
            score=0.0),
    ),
)

VIDEO_FIDELITY = Rubric(
    name="video",
    task=("You are an expert judge of audio-visual video captions. Rate how faithfully the CANDIDATE caption "
          "describes what can be SEEN in the clip, using the reference video caption. Sounds in the candidate "
          "are neither rewarded nor penalised unless they claim something visible that the reference "
          "contradicts."),
    criteria=("objects and people: are the visible objects, people, animals and their attributes right?",
              "actions: are the actions and state changes right?",
              "scene: is the setting (indoor, street, forest, ...) right?",
              "temporal order: does the order of visual events agree with the reference?"),
    scale=("1.0: every main object, action and the setting are right, in the right order",
           "0.7-0.9: the main content is right, a minor attribute or detail is missing or wrong",
           "0.4-0.6: the setting or main subject is right, but key actions or objects are vague or missing",
           "0.1-0.3: only a small fragment matches; the subject or main action is wrong",
           "0.0: the candidate describes a different scene"),
    reference_label="Reference video caption",
    candidate_label="Candidate caption",
    examples=(
        FewShotExample(
            references=("A man in a red jacket rides a dirt bike along a muddy trail, then stops near a wooden "
                        "fence.",),
            candidate="A person on a motorbike rides through mud and comes to a stop by a fence as the engine "
                      "roars.",
            reasoning="Rider, dirt bike, muddy trail and the stop by the fence are right and in order; only the "
                      "red jacket is missing.",
            score=0.9),
        FewShotExample(
            references=("A woman chops vegetables at a kitchen counter, then puts them into a pot on the "
                        "stove.",),
            candidate="A woman is cooking in a kitchen.",
            reasoning="Person and setting are right, but chopping, the pot and the order of the actions are "
                      "missing.",
            score=0.5),
        FewShotExample(
            references=("A cat sits on a windowsill watching birds outside, then jumps down to the floor.",),
            candidate="A dog jumps off a couch onto the floor.",
            reasoning="Jumping down to the floor matches, but the animal, the windowsill and watching the birds "
                      "are wrong or missing.",
            score=0.2),
        FewShotExample(
            references=("Two children play on a swing set in a sunny playground while a dog runs across the "
                        "grass.",),
            candidate="A busy city street at night with cars and flashing police lights.",
            reasoning="A different scene: no children, swings, playground or dog.",
            score=0.0),
    ),
)

LATENT_AUDIO = Rubric(
    name="latent_audio",
    task=("You are an expert judge of what a model understood from the audio of a clip. The CANDIDATE is a set "
          "of words decoded from the model's internal audio representations (logit lens); it may mix languages "
          "(e.g. Chinese), contain word fragments and unrelated words. Rate how many of the main sound events "
          "and sound sources in the reference audio captions are expressed by some word in the set, in any "
          "language or by a close synonym. This is a recall: unrelated or junk words are NOT penalised."),
    criteria=("list the distinct main sound events and sources of the references",
              "for each, is there a word in the set naming it (any language, synonym, inflection)?",
              "actions (barking, typing) count as well as sources (dog, keyboard)"),
    scale=("the score is the fraction of the main reference sound events/sources expressed in the word set",
           "1.0: all of them; 0.5: about half; 0.0: none"),
    reference_label="Reference audio captions",
    candidate_label="Decoded words",
    examples=(
        FewShotExample(
            references=("Someone types on a computer keyboard", "Keyboard keys clicking rapidly",
                        "A person typing on a keyboard", "Fast typing on a keyboard", "Clicking of keyboard keys"),
            candidate="键盘, typing, click, office, 的, ing",
            reasoning="Keyboard (键盘), typing and clicking are all expressed.",
            score=1.0),
        FewShotExample(
            references=("A horse neighs while hooves clop on a road", "Horse trotting and neighing",
                        "Clip-clop of hooves and a horse whinny", "A horse walks on pavement and neighs",
                        "Hooves clopping followed by neighing"),
            candidate="马, horse, road, the, 跑, ation",
            reasoning="The horse is expressed (马, horse) and the road; the neighing and hoof clopping are not.",
            score=0.5),
        FewShotExample(
            references=("Water runs from a faucet and dishes clatter", "A tap running as plates clink",
                        "Running water and clanking dishes", "Dishes being washed under a faucet",
                        "Water flowing with dishes clattering"),
            candidate="水, water, sink, 车, ous",
            reasoning="Running water is expressed (水, water, sink); the clattering dishes are not.",
            score=0.5),
        FewShotExample(
            references=("A siren wails as an emergency vehicle passes, then a car horn honks",
                        "Sirens blaring followed by a honk", "An ambulance siren and a car horn",
                        "A police siren passes by and a horn beeps", "Emergency siren then honking"),
            candidate="music, 音乐, person, room, light",
            reasoning="Neither the siren, the emergency vehicle nor the horn is expressed.",
            score=0.0),
    ),
)

RUBRICS: dict[str, Rubric] = {r.name: r for r in (AUDIO_FIDELITY, VIDEO_FIDELITY, LATENT_AUDIO)}
