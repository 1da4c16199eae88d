# %% [markdown]
# # Fig. 5: what do the audio positions already say?
#
# The logit lens unembeds the residual stream at the audio positions after each layer. If the model has heard
# the sound, its word shows up as a top-1 token there, even when the answer names the picture's sound instead.
#
# By default this runs on the shipped model organism (a tiny Qwen2.5-Omni thinker trained with a planted visual
# bias) and a small held-out synthetic set, on CPU in seconds. On a real checkpoint (a GPU is needed then) set
# `HOOKED_AV_MODEL` (checkpoint folder) and `HOOKED_AV_DATA` (a manifest of factual and counterfactual rows, e.g.
# from `hooked-av build-counterfactuals`); `HOOKED_AV_SAMPLES` sets the sample count per setting.

# %%
from _common import SAMPLES, output_folder, print_inputs, print_numbers, run_step, tutorial_inputs

from hooked_av.plot.files import FIGURE_FILES, RESULT_FILES, figure5
from hooked_av.study import report
from hooked_av.study.run import StudyConfig

LAST_LAYERS = 3  # latent words from the last layers (the organism has 6)

inputs = tutorial_inputs()
out = output_folder("fig5")
print_inputs(inputs, out)

# %% [markdown]
# The study's `logit-lens` step decodes every layer at the audio positions (`hooked_av.analysis.logit_lens`),
# keeps the latent words of the last layers, and `judge` scores whether they name the sound played.

# %%
run_step(inputs, StudyConfig(steps=("logit-lens",), samples=SAMPLES, max_new_tokens=16, last_layers=LAST_LAYERS), out)

# %% [markdown]
# ## The figure and its numbers

# %%
png = figure5(out / RESULT_FILES["logit_lens"], out / FIGURE_FILES["fig5"])
print_numbers(report.fig5(out))
print("figure:", png)
