"""Token-distribution shift against the base vision-language model (paper Sec. 8, Fig. 7).

The AV model's greedy response to an instruction is teacher-forced through the AV model (video + audio) and
through its base VLM (the same video, no audio). Per response token: KL divergence between the two next-token
distributions, and the base rank η of the AV model's token under the base model, bucketed into unshifted
(η = 1), marginal (1 < η <= 3) and shifted (η > 3), following Lin et al.'s token-distribution analysis.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooked_av.analysis.samples import decoded_samples, per_sample_run
from hooked_av.data.jsonl import iter_rows
from hooked_av.data.manifest import ManifestRow, Sample, sample_inputs
from hooked_av.model.errors import InputError

# A default lexicon of sound sources and events (AudioCaps-style vocabulary); pass your own or a callback.
SOUND_EVENT_WORDS = frozenset("""
siren sirens thump thumps thumping alarm alarms bell bells ring ringing horn horns honk honking beep beeping buzz buzzing whistle
whistling engine engines motor motors revving rev idling accelerating car cars truck trucks vehicle vehicles
motorcycle train trains helicopter helicopters aircraft airplane plane jet drill drilling hammer hammering saw
sawing typing keyboard click clicking knock knocking door doors footsteps steps wind rain thunder water waves
splash splashing stream flowing pouring dripping bird birds chirp chirping tweet tweeting dog dogs bark barks
barking cat cats meow meowing horse horses neigh neighing cow moo sheep goat rooster crow crowing duck quack
frog croak insects buzzing speech speaking speaks talking talks talk voice voices man woman child children kid
baby crying cries cry laughing laugh laughter shouting shout yelling yell screaming scream singing sings song
music musical guitar piano drum drums violin humming clapping applause cheering crowd whispering cough
coughing sneeze sneezing breathing snoring gunshot gunshots explosion explosions fire crackling sizzling
frying boiling vacuum blender microwave clock ticking tick tock phone telephone ringtone radio television tv
noise noises sound sounds hum rumble rumbling roar roaring squeak squeaking squeal squealing screech
screeching rustle rustling splashes bang banging thud crash crashing chime chimes
""".split())


@dataclass
class TokenShiftResult:
    instruction: str
    response_ids: Int[Tensor, "tokens"]
    token_strings: list[str]
    kl_av_base: Float[Tensor, "tokens"]  # KL(P_av || P_base)
    kl_base_av: Float[Tensor, "tokens"]  # KL(P_base || P_av)
    base_rank: Int[Tensor, "tokens"]  # rank (1 = top) of the AV model's token under the base model
    selected: Tensor  # bool [tokens]: tokens the selector picked (e.g. describing sound events)
    sample_id: str | None = None  # set by token_shift_over_samples

    @property
    def buckets(self) -> list[str]:
        return [bucket(int(r)) for r in self.base_rank]

    def summary(self, selected_only: bool = False) -> ShiftSummary:
        return aggregate_shift([self], selected_only)

    def to_row(self) -> dict[str, Any]:
        """The result as a JSON object (what `token_shift_run` writes; `from_row` reads it back exactly)."""
        return {"instruction": self.instruction, "response_ids": self.response_ids.tolist(),
                "token_strings": self.token_strings, "kl_av_base": self.kl_av_base.tolist(),
                "kl_base_av": self.kl_base_av.tolist(), "base_rank": self.base_rank.tolist(),
                "selected": self.selected.tolist()}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TokenShiftResult:
        return cls(instruction=row["instruction"], response_ids=torch.tensor(row["response_ids"], dtype=torch.long),
                   token_strings=row["token_strings"], kl_av_base=torch.tensor(row["kl_av_base"]),
                   kl_base_av=torch.tensor(row["kl_base_av"]), base_rank=torch.tensor(row["base_rank"], dtype=torch.long),
                   selected=torch.tensor(row["selected"], dtype=torch.bool), sample_id=row.get("sample_id"))

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"sample_id": self.sample_id, "token_id": self.response_ids.tolist(),
                             "token": self.token_strings,
                             "kl_av_base": self.kl_av_base.tolist(), "kl_base_av": self.kl_base_av.tolist(),
                             "base_rank": self.base_rank.tolist(), "bucket": self.buckets,
                             "selected": self.selected.tolist()})


def bucket(rank: int) -> str:
    return "unshifted" if rank == 1 else "marginal" if rank <= 3 else "shifted"


def lexicon_selector(words: frozenset[str] = SOUND_EVENT_WORDS) -> Callable[[list[str]], list[bool]]:
    """Select tokens belonging to a word of the lexicon (words are rebuilt from the token strings).

    Byte-level BPE tokens carry their leading spaces, so joining them rebuilds the text; a word-level vocabulary's
    tokens carry none (no token starts with a space), so each token is a word of its own."""

    def select(token_strings: list[str]) -> list[bool]:
        sep = "" if any(s[:1].isspace() for s in token_strings) else " "
        text = sep.join(token_strings)
        selected_chars = [False] * len(text)
        for match in re.finditer(r"[^\W\d_]+", text):
            if match.group().lower() in words:
                selected_chars[match.start():match.end()] = [True] * (match.end() - match.start())
        out, start = [], 0
        for s in token_strings:
            out.append(any(selected_chars[start:start + len(s)]))
            start += len(s) + len(sep)
        return out

    return select


def check_tokenizers_agree(av_tokenizer, base_tokenizer, response_ids: list[int]) -> None:
    """Each response token id must name the same token in both vocabularies, or the comparison is void."""
    av_tokens = av_tokenizer.convert_ids_to_tokens(response_ids)
    base_tokens = base_tokenizer.convert_ids_to_tokens(response_ids)
    differ = [i for i, (a, b) in enumerate(zip(av_tokens, base_tokens)) if a != b]
    if differ:
        i = differ[0]
        raise InputError(
            f"the AV and base tokenizers disagree on {len(differ)} of {len(response_ids)} response tokens: "
            f"id {response_ids[i]} is {av_tokens[i]!r} for the AV model and {base_tokens[i]!r} for the base model; "
            "token-level comparison needs the same vocabulary (use the base model the AV model was built from)")


def teacher_forced_logprobs(model, batch: dict[str, Any], response: Tensor) -> Float[Tensor, "tokens vocab"]:
    """Log-probabilities of the next token before each response token, with the response appended to the prompt."""
    ids = batch["input_ids"]
    if ids.shape[0] != 1:
        raise InputError("token_shift takes one sample (a batch of 1)")
    forced = {**batch, "input_ids": torch.cat([ids, response[None].to(ids.device)], dim=1),
              "attention_mask": torch.ones(1, ids.shape[1] + response.numel(), dtype=ids.dtype, device=ids.device)}
    if "mm_token_type_ids" in batch:
        types = batch["mm_token_type_ids"]
        forced["mm_token_type_ids"] = torch.cat([types, types.new_zeros(1, response.numel())], dim=1)
    logits = model(forced)[0, ids.shape[1] - 1:-1]
    return logits.float().log_softmax(-1)


@torch.no_grad()
def token_shift(av_model, base_model, *, video: Any = None, audio: Any = None, image: Any = None,
                instruction: str = "Describe what you hear.", max_new_tokens: int = 64,
                response: Sequence[int] | None = None, base_gets_audio: bool = False,
                selector: Callable[[list[str]], list[bool]] | None = None,
                use_audio_in_video: bool = False, **prepare_kwargs: Any) -> TokenShiftResult:
    """Compare the AV model's response distribution with the base model's, token by token.

    The base model sees the same video (and image) without audio unless `base_gets_audio` (for a model compared
    with itself). The distributions are compared over the token ids both models have (the shorter vocabulary):
    ids beyond a tokenizer's vocabulary are padding rows of the embedding.
    """
    av_batch = av_model.prepare_inputs(instruction, video=video, audio=audio, image=image,
                                       use_audio_in_video=use_audio_in_video, **prepare_kwargs)
    if response is None:
        out = av_model.generate(av_batch, max_new_tokens=max_new_tokens)
        response = [t for t in out.new_tokens[0].tolist() if t != av_model.adapter.pad_token_id()]
    response_ids = torch.tensor(list(response), dtype=torch.long)
    check_tokenizers_agree(av_model.tokenizer, base_model.tokenizer, response_ids.tolist())
    base_batch = base_model.prepare_inputs(instruction, video=video, image=image,
                                           **({"audio": audio, "use_audio_in_video": use_audio_in_video}
                                              if base_gets_audio else {}), **prepare_kwargs)
    av_logp = teacher_forced_logprobs(av_model, av_batch, response_ids)
    base_logp = teacher_forced_logprobs(base_model, base_batch, response_ids)
    vocab = min(av_logp.shape[-1], base_logp.shape[-1])
    av_logp = av_logp[:, :vocab].log_softmax(-1)
    base_logp = base_logp[:, :vocab].log_softmax(-1).to(av_logp.device)
    kl_av_base = (av_logp.exp() * (av_logp - base_logp)).sum(-1)
    kl_base_av = (base_logp.exp() * (base_logp - av_logp)).sum(-1)
    chosen = base_logp.gather(-1, response_ids[:, None].to(base_logp.device))
    base_rank = (base_logp > chosen).sum(-1) + 1
    token_strings = [av_model.tokenizer.decode([t]) for t in response_ids.tolist()]
    picked = (selector or lexicon_selector())(token_strings)
    return TokenShiftResult(instruction, response_ids, token_strings, kl_av_base.clamp(min=0).cpu(),
                            kl_base_av.clamp(min=0).cpu(), base_rank.cpu(), torch.tensor(picked, dtype=torch.bool))


def token_shift_over_samples(av_model, base_model, rows: Iterable[ManifestRow], *,
                             instruction: str = "Describe what you hear.", fps: float = 2.0,
                             sampling_rate: int = 16000, **kwargs: Any) -> list[TokenShiftResult]:
    """`token_shift` for each manifest row (decoded once; the AV model hears the sound, interleaved into the video
    when it is the video's own track, the base model sees the frames), under a progress bar; unreadable samples are
    logged and left out. The results carry their sample_id and feed `aggregate_shift`. kwargs: max_new_tokens,
    selector, base_gets_audio."""
    results = []
    for sample in decoded_samples(rows, "token shift", fps, sampling_rate):
        result = token_shift(av_model, base_model, **sample_inputs(sample), instruction=instruction, fps=fps,
                             **kwargs)
        result.sample_id = sample.sample_id
        results.append(result)
    return results


def token_shift_run(av_model, base_model, rows: Iterable[ManifestRow], out_path: str | Path, *,
                    instruction: str = "Describe what you hear.", fps: float = 2.0, sampling_rate: int = 16000,
                    **kwargs: Any) -> Path:
    """`token_shift_over_samples` written to JSONL, one row per sample (`TokenShiftResult.to_row` with sample_id),
    resumable, unreadable samples in `<out>.errors.jsonl`; the step `run_sharded` shards over GPUs.
    `read_token_shift(out)` gives the results back for `aggregate_shift`. kwargs: max_new_tokens, selector,
    base_gets_audio (as `token_shift`; the selector's picks are stored in the row)."""

    def shift(sample: Sample) -> dict[str, Any]:
        result = token_shift(av_model, base_model, **sample_inputs(sample), instruction=instruction, fps=fps,
                             **kwargs)
        return {k: v for k, v in result.to_row().items() if k != "instruction"}

    return per_sample_run(rows, out_path, "token shift", shift, {"instruction": instruction}, fps, sampling_rate)


def read_token_shift(path: str | Path) -> list[TokenShiftResult]:
    return [TokenShiftResult.from_row(row) for row in iter_rows(path)]


class ShiftSummary(dict):
    """The pooled statistics of `aggregate_shift` (a dict: n_tokens, n_samples, kl_av_base, kl_base_av,
    median_base_rank, unshifted, marginal, shifted; only the counts when no token was pooled)."""

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([dict(self)])


def aggregate_shift(results: Sequence[TokenShiftResult], selected_only: bool = False) -> ShiftSummary:
    """Pooled over all tokens of all samples, as in the paper (mean KL, median rank, bucket fractions)."""
    keep = [r.selected if selected_only else torch.ones_like(r.selected) for r in results]
    ranks = torch.cat([r.base_rank[k] for r, k in zip(results, keep)]) if results else torch.zeros(0)
    counts = {"n_tokens": int(ranks.numel()), "n_samples": len(results)}
    if ranks.numel() == 0:
        return ShiftSummary(counts)
    kl_ab = torch.cat([r.kl_av_base[k] for r, k in zip(results, keep)])
    kl_ba = torch.cat([r.kl_base_av[k] for r, k in zip(results, keep)])
    return ShiftSummary(counts, kl_av_base=float(kl_ab.mean()), kl_base_av=float(kl_ba.mean()),
                        median_base_rank=float(ranks.float().median()),
                        unshifted=float((ranks == 1).float().mean()),
                        marginal=float(((ranks > 1) & (ranks <= 3)).float().mean()),
                        shifted=float((ranks > 3).float().mean()))
