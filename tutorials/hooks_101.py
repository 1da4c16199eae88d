# %% [markdown]
# # Hooks 101: caches, hooks, the modality map and hooks during generation
#
# `HookedAVModel` rebuilds the language decoder of an audio-visual LLM with TransformerLens hook points on the
# checkpoint's own weights. This notebook loads the shipped model organism (a tiny Qwen2.5-Omni thinker; set
# `HOOKED_AV_MODEL` to a real checkpoint folder and `HOOKED_AV_DATA` to a manifest to use yours, with a GPU),
# reads one counterfactual clip (the picture of one object with another object's sound) and walks through the API.

# %%
import os
from pathlib import Path

import torch
from _common import output_folder

from hooked_av import HookedAVModel
from hooked_av.analysis.logit_lens import logit_lens
from hooked_av.data.manifest import load_sample, read_manifest
from hooked_av.organism import shipped_organism
from hooked_av.organism.testset import default_testset_dir, export_testset
from hooked_av.plot import plot_logit_lens

FPS = 2.0
if "HOOKED_AV_MODEL" in os.environ:
    model = HookedAVModel.from_pretrained(os.environ["HOOKED_AV_MODEL"], device="cuda" if torch.cuda.is_available() else None)
    manifest = Path(os.environ["HOOKED_AV_DATA"])
else:
    model = HookedAVModel.from_pretrained(shipped_organism())
    manifest = export_testset(default_testset_dir(8), n=8)
out = output_folder("hooks_101")
print(model.cfg.family, model.cfg.n_layers, "layers, d_model", model.cfg.d_model)

row = next(r for r in read_manifest(manifest) if r.counterfactual)
sample = load_sample(row, fps=FPS)
batch = model.prepare_inputs("Describe what you hear.", video=sample.frames, audio=sample.audio,
                             use_audio_in_video=True, fps=FPS)
print(row.sample_id, "picture:", row.video_caption, "| sound:", row.audio_captions)

# %% [markdown]
# ## run_with_cache and the modality map
# The cache is TransformerLens' `ActivationCache` plus the batch's modality map: per position, which modality it
# holds (video, audio, prompt text, template, generated...), computed from the token ids.

# %%
logits, cache = model.run_with_cache(batch)
print("positions per modality:", cache.modality_map.counts())
audio = cache.modality_map.positions("audio")
video = cache.modality_map.positions("video")
print("resid_post of the last layer:", tuple(cache["resid_post", -1].shape))
print("next token:", repr(model.to_string(logits[0, -1].argmax())))

# %% [markdown]
# ## run_with_hooks: an intervention
# Zero the video positions of the residual stream after layer 0 and compare the logits of the sound played with
# and without the picture.

# %%
def zero_video(resid, hook):
    resid[:, video] = 0.0
    return resid


sound = row.audio_captions[0].split()[-1]
sound_id = model.to_single_token(sound)
ablated = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", zero_video)])
print(f"log-prob of {sound!r} over the prompt's last position: "
      f"{logits[0, -1].log_softmax(-1)[sound_id]:.2f} -> {ablated[0, -1].log_softmax(-1)[sound_id]:.2f} without video")

# %% [markdown]
# ## Hooks during generation
# `generate` fires `fwd_hooks` on the prefill and every decode step; `decode_fwd_hooks` only on decode steps,
# where an attention pattern is one row per head. Here: the attention share each generated token gives to video
# and to audio in the last layer.

# %%
shares = []


def record_share(pattern, hook):
    row = pattern[0, :, -1]  # heads x keys: the new token's attention
    shares.append((row[:, video].sum(-1).mean().item(), row[:, audio].sum(-1).mean().item()))


last = model.cfg.n_layers - 1
answer = model.generate(batch, max_new_tokens=12,
                        decode_fwd_hooks=[(f"blocks.{last}.attn.hook_pattern", record_share)])
print("answer:", repr(answer.text[0]))
for step, (v, a) in enumerate(shares):
    print(f"decode step {step}: video {v:.2f}, audio {a:.2f}")

# %% [markdown]
# ## TransformerLens utilities that work
# `accumulated_resid(apply_ln=True)` stacks the residual stream after each layer with the final norm applied;
# times `W_U` it is the logit lens. `tokens_to_residual_directions` and `logit_attrs` attribute a token's logit.

# %%
resid, labels = cache.accumulated_resid(apply_ln=True, return_labels=True, pos_slice=-1)
lens_top = (resid[:, 0] @ model.W_U).argmax(-1)
print("logit lens at the last position:", [(lab, model.to_string(t)) for lab, t in zip(labels, lens_top)])
with torch.no_grad():
    attrs = cache.logit_attrs(resid, tokens=sound_id, pos_slice=-1)
print(f"logit of {sound!r} after each layer:", [round(float(x), 2) for x in attrs[:, 0]])

# %% [markdown]
# ## The figure: the logit lens at the audio positions
# `hooked_av.analysis.logit_lens` decodes every layer at the audio positions from the cache (Fig. 5 of the
# paper asks whether the sound played shows up there even when the answer names the picture's sound).

# %%
lens = logit_lens(model, cache=cache, positions="audio", top_k=1)
png = plot_logit_lens(lens, out / "hooks_101_logit_lens.png")
for layer, words in enumerate(lens.top1()):
    print(f"layer {layer}: {sorted(set(w.strip() for w in words))}")
print(f"layers whose audio positions decode to {sound!r}:",
      [layer for layer, words in enumerate(lens.top1()) if sound in {w.strip() for w in words}])
print("figure:", png)
