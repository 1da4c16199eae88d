# %% [markdown]
# # Fig. 7: what did the audio-visual training change?
#
# Token shift compares, token by token along the audio-visual model's answer, its next-token distribution with
# the base vision model's on the same text: KL, and how many tokens the base model would also have ranked first
# (unshifted), second or third (marginal), or lower (shifted); sound words against the rest. On the organism the
# base model is its vision-only twin, a tiny Qwen2.5-VL; on a real checkpoint set `HOOKED_AV_BASE_MODEL`.
#
# By default this runs on the shipped model organism (a tiny Qwen2.5-Omni thinker trained with a planted visual
# bias) and a small held-out synthetic set, on CPU in seconds. On a real checkpoint (a GPU is needed then) set
# `HOOKED_AV_MODEL` (checkpoint folder) and `HOOKED_AV_DATA` (a manifest of factual and counterfactual rows, e.g.
# from `hooked-av build-counterfactuals`); `HOOKED_AV_SAMPLES` sets the sample count per setting.

# %%
from _common import SAMPLES, output_folder, print_inputs, print_numbers, run_step, tutorial_inputs

from hooked_av.plot.files import FIGURE_FILES, RESULT_FILES, figure7
from hooked_av.study import report
from hooked_av.study.run import StudyConfig

inputs = tutorial_inputs()
if inputs.base_model is None:
    raise SystemExit("token shift needs a base model: set HOOKED_AV_BASE_MODEL")
out = output_folder("fig7")
print_inputs(inputs, out)

# %% [markdown]
# The study's `token-shift` step generates with the audio-visual model under "Describe what you hear." and
# scores each answer token under both models (`hooked_av.analysis.token_shift`).

# %%
run_step(inputs, StudyConfig(steps=("token-shift",), samples=SAMPLES, max_new_tokens=16), out)

# %% [markdown]
# ## The figure and its numbers

# %%
png = figure7(out / RESULT_FILES["token_shift"], out / FIGURE_FILES["fig7"])
print_numbers(report.fig7(out))
print("figure:", png)
