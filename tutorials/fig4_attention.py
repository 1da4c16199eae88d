# %% [markdown]
# # Fig. 4: where do the generated tokens look?
#
# For each layer, the attention of the generated tokens summed over the positions of each modality (video,
# audio, prompt text, generated), averaged over heads, tokens and samples. The paper saw audio take 40-50% in
# early layers and video rise to 20-40% in deep layers.
#
# By default this runs on the shipped model organism (a tiny Qwen2.5-Omni thinker trained with a planted visual
# bias) and a small held-out synthetic set, on CPU in seconds. On a real checkpoint (a GPU is needed then) set
# `HOOKED_AV_MODEL` (checkpoint folder) and `HOOKED_AV_DATA` (a manifest of factual and counterfactual rows, e.g.
# from `hooked-av build-counterfactuals`); `HOOKED_AV_SAMPLES` sets the sample count per setting.

# %%
from _common import SAMPLES, output_folder, print_inputs, print_numbers, run_step, tutorial_inputs

from hooked_av.plot.files import FIGURE_FILES, RESULT_FILES, figure4
from hooked_av.study import report
from hooked_av.study.run import StudyConfig

inputs = tutorial_inputs()
out = output_folder("fig4")
print_inputs(inputs, out)

# %% [markdown]
# The study's `attention` step generates an answer per sample and records, per layer, the attention share of
# the generated tokens by modality (`hooked_av.analysis.attention.attention_by_modality`).

# %%
run_step(inputs, StudyConfig(steps=("attention",), samples=SAMPLES, max_new_tokens=16), out)

# %% [markdown]
# ## The figure and its numbers

# %%
png = figure4(out / RESULT_FILES["attention"], out / FIGURE_FILES["fig4"])
print_numbers(report.fig4(out))
print("figure:", png)
