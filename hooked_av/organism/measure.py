"""The paper's figures measured on the organism, through the library's public analysis functions.

    python -m hooked_av.organism.measure [--model DIR] [--twin DIR] [--data MANIFEST] [--n 64] [--out FILE.json]

Defaults: the shipped organism and twin, and the held-out test set exported by Algorithm 1 to the cache
folder. Every score is the deterministic keyword scorer's (closed vocabulary), so every number is exact:
"audio fidelity" is the share of answers that name the sound actually played.

- Fig. 2: audio fidelity, factual vs counterfactual, under "Describe what you hear." and "Describe what you see
  and hear."; the share of answers naming the picture's sound instead; audio-only accuracy (no video).
- Fig. 4: attention share of the generated tokens by modality per layer (`attention_by_modality`).
- Fig. 5: logit lens at the audio positions (`logit_lens`): per layer, the share of samples with the true sound
  top-1 at one audio position at least, against a chance baseline (the same share for each other sound word,
  averaged; on counterfactuals the picture's sound is reported apart); controls: audio-only input, and the
  audio-visual input with audio positions blocked from attending to video (`Knockout` on the attention mask).
- Fig. 6: windowed knockout sweep (`knockout_sweep`) of generated -> video and generated -> audio, scored for
  audio fidelity; and the same blocks over all layers (`generate_with_knockout`).
- Fig. 7: token shift against the vision-only twin (`token_shift`): KL, unshifted / marginal / shifted shares,
  sound words vs the other (function) words.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hooked_av.analysis.attention import aggregate_attention, attention_by_modality
from hooked_av.analysis.knockout import Knockout, generate_with_knockout, knockout_hooks, knockout_sweep, load_sweep
from hooked_av.analysis.logit_lens import logit_lens
from hooked_av.analysis.token_shift import aggregate_shift, token_shift
from hooked_av.eval.keywords import keyword_score
from hooked_av.data.manifest import ManifestRow
from hooked_av.model.errors import InputError
from hooked_av.organism import shipped_organism, shipped_twin, world
from hooked_av.organism.testset import WorldSample, default_testset_dir, export_testset, load_manifest_samples

MAX_NEW_TOKENS = 12  # the longest answer is 11 tokens and <|im_end|>


def names_sound(text: str, sound: str) -> bool:
    """The keyword scorer against the one-word reference: 1.0 exactly when the answer names `sound`."""
    return keyword_score(text, [f"a {sound}"]).score == 1.0


def chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def prepare(model, samples: Sequence[WorldSample], prompt: str, *, video: bool = True, audio: bool = True):
    """A left-padded batch of one prompt over the samples; with both media the sound is interleaved into the video
    (use_audio_in_video), as the organism was trained."""
    n = len(samples)
    return model.prepare_inputs([prompt] * n, video=[s.frames for s in samples] if video else None,
                                audio=[s.audio for s in samples] if audio else None,
                                use_audio_in_video=video and audio, fps=world.FPS)


def generate_texts(model, samples: Sequence[WorldSample], prompt: str, batch_size: int = 32, **kwargs) -> list[str]:
    texts: list[str] = []
    for part in chunks(samples, batch_size):
        texts += model.generate(prepare(model, part, prompt, **kwargs), max_new_tokens=MAX_NEW_TOKENS).text
    return texts


def rate(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


# ---- Fig. 2 ------------------------------------------------------------------------------------------------------
def fig2(model, factual: Sequence[WorldSample], counterfactual: Sequence[WorldSample]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, prompt in (("hear", world.PROMPT_HEAR), ("both", world.PROMPT_BOTH)):
        fact = generate_texts(model, factual, prompt)
        cf = generate_texts(model, counterfactual, prompt)
        out[key] = {"factual_audio_fidelity": rate([names_sound(t, s.true_sound) for t, s in zip(fact, factual)]),
                    "cf_audio_fidelity": rate([names_sound(t, s.true_sound) for t, s in zip(cf, counterfactual)]),
                    "cf_picture_sound": rate([names_sound(t, s.picture_sound) for t, s in zip(cf, counterfactual)]),
                    "examples": [[s.sample_id, t] for s, t in list(zip(counterfactual, cf))[:3]]}
    see = generate_texts(model, counterfactual, world.PROMPT_SEE)
    out["see"] = {"cf_visual_fidelity": rate([keyword_score(t, [f"a {s.video_obj}"]).score == 1.0
                                              for t, s in zip(see, counterfactual)])}
    alone = generate_texts(model, counterfactual, world.PROMPT_HEAR, video=False)
    out["audio_only_accuracy"] = rate([names_sound(t, s.true_sound) for t, s in zip(alone, counterfactual)])
    return out


# ---- Fig. 4 ------------------------------------------------------------------------------------------------------
def fig4(model, samples: Sequence[WorldSample],
         prompts: Sequence[str] = (world.PROMPT_BOTH, world.PROMPT_HEAR)) -> dict[str, Any]:
    out = {}
    for prompt in prompts:
        results = [attention_by_modality(model, prepare(model, [s], prompt), max_new_tokens=MAX_NEW_TOKENS)
                   for s in samples]
        agg = aggregate_attention(results)
        out[prompt] = {"groups": agg.groups, "layers": agg.layers, "n_samples": agg.n_samples,
                       "mean": agg.mean.round(4).tolist(), "ci_low": agg.ci_low.round(4).tolist(),
                       "ci_high": agg.ci_high.round(4).tolist()}
    return out


# ---- Fig. 5 ------------------------------------------------------------------------------------------------------
def lens_rows(model, samples: Sequence[WorldSample], *, video: bool = True,
              block_audio_to_video: bool = False, batch_size: int = 16) -> list[list[set[str]]]:
    """Per sample, per layer: the set of top-1 logit-lens words over the audio positions."""
    out = []
    layers = list(range(model.cfg.n_layers))
    names = {f"blocks.{l}.hook_resid_post" for l in layers}
    for part in chunks(samples, batch_size):
        batch = prepare(model, part, world.PROMPT_HEAR, video=video)
        hooks = []
        if block_audio_to_video:
            prompt_map = model.modality_map(batch)
            ko = Knockout(sources=("video",), targets=("audio",), layers=tuple(layers))
            hooks = knockout_hooks(model, [ko], prompt_map, prompt_map.codes.shape[1])
        with model.hooks(fwd_hooks=hooks):
            _, cache = model.run_with_cache(batch, names_filter=lambda n: n in names)
        for lens in logit_lens(model, cache=cache, positions="audio", layers=layers, top_k=1, batch_index=None):
            out.append([{w.strip() for w in row} for row in lens.top1()])
    return out


def lens_shares(rows: list[list[set[str]]], samples: Sequence[WorldSample]) -> dict[str, list[float]]:
    """Per layer: share of samples whose audio positions decode (top-1) to the true sound; the chance baseline,
    the same share for the other sound words (neither the true sound nor the picture's), averaged; and on
    counterfactual samples the share for the picture's sound."""
    out: dict[str, list[float]] = {"true_sound": [], "other_sounds_mean": []}
    cf = [(r, s) for r, s in zip(rows, samples) if s.counterfactual]
    if cf:
        out["picture_sound"] = []
    for layer in range(len(rows[0])):
        out["true_sound"].append(rate([s.true_sound in r[layer] for r, s in zip(rows, samples)]))
        out["other_sounds_mean"].append(rate([
            np.mean([w in r[layer] for w in world.SOUNDS if w not in (s.true_sound, s.picture_sound)])
            for r, s in zip(rows, samples)]))
        if cf:
            out["picture_sound"].append(rate([s.picture_sound in r[layer] for r, s in cf]))
    return out


def fig5(model, counterfactual: Sequence[WorldSample], factual: Sequence[WorldSample]) -> dict[str, Any]:
    return {"cf": lens_shares(lens_rows(model, counterfactual), counterfactual),
            "factual": lens_shares(lens_rows(model, factual), factual),
            "cf_audio_only": lens_shares(lens_rows(model, counterfactual, video=False), counterfactual),
            "cf_audio_blocked_from_video": lens_shares(lens_rows(model, counterfactual, block_audio_to_video=True),
                                                       counterfactual)}


# ---- Fig. 6 ------------------------------------------------------------------------------------------------------
def sweep_rows(samples: Sequence[WorldSample]) -> list[ManifestRow]:
    """The manifest rows `knockout_sweep` runs over (it decodes each clip itself, as for any data set)."""
    if any(s.row is None for s in samples):
        raise InputError("the Fig. 6 sweep runs over a test set's manifest rows: load the samples with "
                         "load_manifest_samples, not in_memory")
    return [s.row for s in samples]


def fig6(model, counterfactual: Sequence[WorldSample], factual: Sequence[WorldSample], window: int = 3,
         workdir: Path | None = None) -> dict[str, Any]:
    """cf (and factual) audio fidelity under "Describe what you hear." per (blocked source, window centre)."""
    out: dict[str, Any] = {"window": window}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir or tmp)
        for setting, samples in (("cf", counterfactual), ("factual", factual)):
            path = folder / f"sweep_{setting}.jsonl"
            path.unlink(missing_ok=True)
            knockout_sweep(model, sweep_rows(samples), path, sources=("video", "audio"),
                           prompts=(world.PROMPT_HEAR,), window=window, max_new_tokens=MAX_NEW_TOKENS,
                           fps=world.FPS, sampling_rate=world.SAMPLING_RATE)
            table = load_sweep(path)
            truth = {s.sample_id: s for s in samples}
            table["audio_fidelity"] = [names_sound(t, truth[i].true_sound) for t, i in zip(table.text, table.sample_id)]
            table["picture_sound"] = [names_sound(t, truth[i].picture_sound)
                                      for t, i in zip(table.text, table.sample_id)]
            none = table[table.source == "none"]
            rows = {"none": float(none.audio_fidelity.mean())}
            for source in ("video", "audio"):
                part = table[table.source == source]
                by_centre = part.groupby("centre_layer").audio_fidelity.mean()
                rows[source] = {int(c): float(v) for c, v in by_centre.items()}
                rows[f"{source}_layers"] = {int(c): list(ls) for c, ls in
                                            part.groupby("centre_layer").layers.first().items()}
            if setting == "cf":
                rows["picture_sound_none"] = float(none.picture_sound.mean())
            out[setting] = rows
    out["all_layers"] = all_layer_knockouts(model, counterfactual)
    return out


def all_layer_knockouts(model, samples: Sequence[WorldSample]) -> dict[str, float]:
    layers = tuple(range(model.cfg.n_layers))
    out = {}
    for source in ("video", "audio"):
        ko = Knockout(sources=(source,), layers=layers)
        texts = []
        for part in chunks(samples, 32):
            texts += generate_with_knockout(model, prepare(model, part, world.PROMPT_HEAR), ko,
                                            max_new_tokens=MAX_NEW_TOKENS).text
        out[f"cf_audio_fidelity_{source}_blocked"] = rate([names_sound(t, s.true_sound)
                                                            for t, s in zip(texts, samples)])
    return out


# ---- Fig. 7 ------------------------------------------------------------------------------------------------------
def word_selector(words: Sequence[str]) -> Callable[[list[str]], list[bool]]:
    """Select tokens that are one of `words`. (`lexicon_selector` rebuilds words by joining the token strings,
    which suits byte-level vocabularies whose tokens carry their spaces; word-level tokens decode without them.)"""
    return lambda token_strings: [t.strip() in words for t in token_strings]


def with_selection(result, words: Sequence[str], invert: bool = False):
    """The result with its tokens selected by word (token strings are whole words in this vocabulary)."""
    picked = torch.tensor([(t.strip() in words) != invert for t in result.token_strings], dtype=torch.bool)
    return replace(result, selected=picked)


def fig7(model, twin, counterfactual: Sequence[WorldSample], factual: Sequence[WorldSample]) -> dict[str, Any]:
    """Token shift of the organism's "Describe what you hear." answers against the twin: all tokens, sound words,
    the other (function) words; on counterfactuals also the sound words that name the true sound (heard) and
    those that name the picture's sound (seen)."""
    out: dict[str, Any] = {}
    for setting, samples in (("cf", counterfactual), ("factual", factual)):
        if not samples:
            continue
        results = [token_shift(model, twin, video=s.frames, audio=s.audio, instruction=world.PROMPT_HEAR,
                               max_new_tokens=MAX_NEW_TOKENS, selector=word_selector(world.SOUNDS),
                               use_audio_in_video=True, fps=world.FPS)
                   for s in samples]
        out[setting] = {"all": aggregate_shift(results), "sound_words": aggregate_shift(results, selected_only=True),
                        "function_words": aggregate_shift([with_selection(r, world.SOUNDS, invert=True)
                                                           for r in results], selected_only=True)}
        if setting == "cf":
            out[setting]["true_sound_words"] = aggregate_shift(
                [with_selection(r, [s.true_sound]) for r, s in zip(results, samples)], selected_only=True)
            out[setting]["picture_sound_words"] = aggregate_shift(
                [with_selection(r, [s.picture_sound]) for r, s in zip(results, samples)], selected_only=True)
    return out


# ---- driver ------------------------------------------------------------------------------------------------------
def measure(model_dir: str | Path, twin_dir: str | Path | None, manifest: str | Path | None = None, n: int = 64,
            n_attention: int = 16, n_lens: int = 64, n_sweep: int = 32, n_shift: int = 32,
            figures: Sequence[str] = ("2", "4", "5", "6", "7"), set_size: int = 200,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """All figures' numbers on the first n factual and n counterfactual samples of the test set (by default the
    world's held-out set of `set_size` + `set_size` clips, exported once to the cache folder)."""
    from hooked_av import HookedAVModel

    torch.manual_seed(0)
    model = HookedAVModel.from_pretrained(model_dir)
    manifest = Path(manifest) if manifest else export_testset(default_testset_dir(set_size), n=set_size)
    biggest = max(n, n_lens, n_sweep, n_shift, n_attention)
    factual = load_manifest_samples(manifest, limit=biggest, counterfactual=False)
    cf = load_manifest_samples(manifest, limit=biggest, counterfactual=True)
    result: dict[str, Any] = {"model": str(model_dir), "twin": str(twin_dir) if twin_dir else None,
                              "manifest": str(manifest), "n": n, "seconds": {}}
    steps: dict[str, Callable[[], Any]] = {
        "2": lambda: fig2(model, factual[:n], cf[:n]),
        "4": lambda: fig4(model, cf[:n_attention]),
        "5": lambda: fig5(model, cf[:n_lens], factual[:n_lens]),
        "6": lambda: fig6(model, cf[:n_sweep], factual[:n_sweep]),
    }
    if twin_dir is not None:
        twin = HookedAVModel.from_pretrained(twin_dir)
        steps["7"] = lambda: fig7(model, twin, cf[:n_shift], factual[:n_shift])
    for fig in figures:
        if fig not in steps:
            continue
        start = time.time()
        result[f"fig{fig}"] = steps[fig]()
        result["seconds"][f"fig{fig}"] = round(time.time() - start, 1)
        log(f"fig{fig}: {result['seconds'][f'fig{fig}']} s")
    return result


def fmt(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def headline(result: dict[str, Any]) -> str:
    """The headline numbers as markdown lines (what docs/organism.md reports per seed)."""
    lines = []
    if "fig2" in result:
        f = result["fig2"]
        for key in ("hear", "both"):
            lines.append(f"- Fig. 2 ({key}): audio fidelity factual {f[key]['factual_audio_fidelity']:.3f} -> "
                         f"counterfactual {f[key]['cf_audio_fidelity']:.3f} (picture's sound named "
                         f"{f[key]['cf_picture_sound']:.3f})")
        lines.append(f"- Fig. 2: audio-only accuracy {f['audio_only_accuracy']:.3f}; cf visual fidelity "
                     f"{f['see']['cf_visual_fidelity']:.3f}")
    for prompt, f in result.get("fig4", {}).items():
        for g in ("video", "audio", "text", "other"):
            lines.append(f"- Fig. 4 ({prompt}) share to {g} per layer: "
                         f"{fmt([row[f['groups'].index(g)] for row in f['mean']])}")
    if "fig5" in result:
        for setting, f in result["fig5"].items():
            line = (f"- Fig. 5 {setting}: true sound top-1 per layer {fmt(f['true_sound'])} vs other sounds "
                    f"{fmt(f['other_sounds_mean'])}")
            if "picture_sound" in f:
                line += f"; picture's sound {fmt(f['picture_sound'])}"
            lines.append(line)
    if "fig6" in result:
        f = result["fig6"]
        for setting in ("cf", "factual"):
            r = f[setting]
            lines.append(f"- Fig. 6 {setting} audio fidelity: none {r['none']:.3f}; gen->video blocked, window "
                         f"{f['window']} by centre {fmt(r['video'].values())}; gen->audio blocked "
                         f"{fmt(r['audio'].values())}")
        lines.append("- Fig. 6 cf, all layers: " + ", ".join(f"{k} {v:.3f}" for k, v in f["all_layers"].items()))
    if "fig7" in result:
        for setting, f in result["fig7"].items():
            parts = [f"{part} (n={f[part].get('n_tokens', 0)}): KL {f[part].get('kl_av_base', float('nan')):.3f}, "
                     f"unshifted/marginal/shifted {f[part].get('unshifted', float('nan')):.3f}/"
                     f"{f[part].get('marginal', float('nan')):.3f}/{f[part].get('shifted', float('nan')):.3f}"
                     for part in ("sound_words", "function_words", "true_sound_words", "picture_sound_words")
                     if part in f]
            lines.append(f"- Fig. 7 {setting}: " + "; ".join(parts))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(shipped_organism()))
    parser.add_argument("--twin", default=str(shipped_twin()), help="the vision-only twin ('' to skip Fig. 7)")
    parser.add_argument("--data", default=None, help="manifest of the test set (default: exported to the cache)")
    parser.add_argument("--n", type=int, default=64, help="factual and counterfactual samples for Fig. 2")
    parser.add_argument("--n-attention", type=int, default=16)
    parser.add_argument("--n-lens", type=int, default=64)
    parser.add_argument("--n-sweep", type=int, default=32)
    parser.add_argument("--n-shift", type=int, default=32)
    parser.add_argument("--figures", default="2,4,5,6,7")
    parser.add_argument("--set-size", type=int, default=200, help="clips per half of the default test set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.model, args.twin or None, args.data, args.n, args.n_attention, args.n_lens, args.n_sweep,
                     args.n_shift, figures=args.figures.split(","), set_size=args.set_size)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(headline(result))


if __name__ == "__main__":
    main()
