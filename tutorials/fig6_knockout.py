# %% [markdown]
# # Fig. 6: which attention edges carry the bias?
#
# Attention knockout blocks the generated tokens from attending to video (or audio) in a window of layers and
# sweeps the window's centre over the depth. Blocking video should raise counterfactual audio fidelity; blocking
# audio should drop it.
#
# By default this runs on the shipped model organism (a tiny Qwen2.5-Omni thinker trained with a planted visual
# bias) and a small held-out synthetic set, on CPU in seconds. On a real checkpoint (a GPU is needed then) set
# `HOOKED_AV_MODEL` (checkpoint folder) and `HOOKED_AV_DATA` (a manifest of factual and counterfactual rows, e.g.
# from `hooked-av build-counterfactuals`); `HOOKED_AV_SAMPLES` sets the sample count per setting.

# %%
import os

from _common import SAMPLES, output_folder, print_inputs, print_numbers, run_step, tutorial_inputs

from hooked_av.plot.files import FIGURE_FILES, RESULT_FILES, figure6
from hooked_av.study import report
from hooked_av.study.run import ORGANISM_WINDOW, StudyConfig

WINDOW = ORGANISM_WINDOW if "HOOKED_AV_MODEL" not in os.environ else 9  # layers per knocked-out window

inputs = tutorial_inputs()
out = output_folder("fig6")
print_inputs(inputs, out)

# %% [markdown]
# The study's `knockout-sweep` step generates under each blocked window (`hooked_av.analysis.knockout`), and
# `judge` scores the answers for the task each prompt asks.

# %%
run_step(inputs, StudyConfig(steps=("knockout-sweep",), samples=SAMPLES, max_new_tokens=16, window=WINDOW), out)

# %% [markdown]
# ## The figure and its numbers

# %%
png = figure6(out / RESULT_FILES["knockout_scores"], out / FIGURE_FILES["fig6"], WINDOW)
print_numbers(report.fig6(out))
print("figure:", png)
